"""UIDs: the implementation's identity and deterministic UIDs derived from named parts."""

from __future__ import annotations

import re

from pydicom.uid import UID, generate_uid

from dicomcr import __version__

IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["dicomcr", "implementation-class"])
IMPLEMENTATION_VERSION_NAME = f"DICOMCR_{__version__.replace('.', '')}"[:16]


_UID_FORM = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def derived_uid(*parts: object) -> UID:
    """A UID that is a pure function of `parts` (pydicom's root + a hash), for reproducible output."""
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def check_uid(value: str, name: str) -> UID:
    """Return `value` as a UID, or raise ValueError naming the argument if it is not a valid one."""
    if not isinstance(value, str) or len(value) > 64 or not _UID_FORM.fullmatch(value):
        raise ValueError(f"{name} is not a valid DICOM UID: {value!r}")
    return UID(value)
