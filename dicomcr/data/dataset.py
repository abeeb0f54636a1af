"""A dataset: breasts (CC + MLO of one side of one patient) with a malignant label.

Reader here: the phantom's labels.csv. The generic CSV, RSNA and VinDr readers arrive with the
experiments issue; they all produce the same `Breast` records.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Breast:
    """One classification input: the CC and MLO files of one breast, and its label."""

    patient_id: str
    laterality: str
    cc: Path
    mlo: Path
    malignant: int

    @property
    def key(self) -> str:
        return f"{self.patient_id}/{self.laterality}"


def read_phantom_labels(folder: Path) -> list[Breast]:
    """The breasts of a cohort written by `dicomcr phantom` (folder/labels.csv)."""
    folder = Path(folder)
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: is {folder} a dicomcr phantom cohort?")
    breasts = []
    with open(labels, newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                breast = Breast(row["patient_id"], row["laterality"], folder / row["cc_image"],
                                folder / row["mlo_image"], int(row["malignant"]))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{labels}:{number}: bad row ({exc})") from exc
            for view in (breast.cc, breast.mlo):
                if not view.is_file():
                    raise FileNotFoundError(f"{labels}:{number}: missing view {view}")
            breasts.append(breast)
    if not breasts:
        raise ValueError(f"{labels} lists no breasts")
    return breasts


def fingerprint(breasts: list[Breast]) -> str:
    """A short hash of which breasts, with which labels, a model was trained on."""
    digest = hashlib.sha256()
    for b in sorted(breasts, key=lambda b: b.key):
        digest.update(f"{b.key}:{b.cc.name}:{b.mlo.name}:{b.malignant}\n".encode())
    return digest.hexdigest()[:16]
