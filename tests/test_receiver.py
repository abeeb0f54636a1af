"""The receiver's policy for one instance, without a network: durable, checked, quarantined."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from services.receiver import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    Spool,
    accept,
)
from services.store import JobStore


@pytest.fixture
def setup(tmp_path: Path):
    return Spool(tmp_path / "node"), JobStore(tmp_path / "jobs.sqlite")


def _encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _one(small_cohort: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(small_cohort.glob("*/LCC.dcm"))[0])


def _accept(data: bytes, ds: pydicom.Dataset, spool: Spool, store: JobStore, **changes) -> int:
    """As the network layer does: the bytes in a file in incoming/, then accept decides."""
    spool.incoming.mkdir(parents=True, exist_ok=True)
    received = spool.incoming / f"{len(list(spool.incoming.iterdir()))}.dcm"
    received.write_bytes(data)
    args = dict(sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
                calling_ae="MG_A", site="a", policy="20", spool=spool, store=store,
                max_bytes=2**30)
    status = accept(received, **{**args, **changes})
    assert not received.exists()  # moved into the spool or into quarantine, never left behind
    return status


def test_a_good_instance_is_spooled_and_recorded(small_cohort: Path, setup) -> None:
    spool, store = setup
    ds = _one(small_cohort)
    data = _encoded(ds)
    assert _accept(data, ds, spool, store) == SUCCESS
    path = spool.spool / f"{ds.SOPInstanceUID}.dcm"
    assert path.read_bytes() == data
    (job,) = store.to_transcode(10)
    assert job.sop_instance_uid == ds.SOPInstanceUID and job.spool_path == path
    assert _accept(data, ds, spool, store) == SUCCESS  # a re-send replaces, never duplicates
    assert len(store.to_transcode(10)) == 1
    assert store.counts() == {"a": {"received": 1, "transcoded": 0, "done": 0, "failed": 0}}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom on the hostile UID
def test_bad_instances_get_a_status_and_a_quarantine_reason(small_cohort: Path, setup) -> None:
    spool, store = setup
    ds = _one(small_cohort)
    cases = []
    hostile = pydicom.dcmread(io.BytesIO(_encoded(ds)))
    hostile.SOPInstanceUID = "../../../etc/passwd"
    cases.append((_encoded(hostile), {"sop_instance_uid": "../../../etc/passwd"},
                  CANNOT_UNDERSTAND, "SOP Instance UID"))
    cases.append((_encoded(ds), {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.7"},
                  DATASET_DOES_NOT_MATCH_SOP_CLASS, "differ"))
    nopixels = pydicom.dcmread(io.BytesIO(_encoded(ds)))
    del nopixels.PixelData
    cases.append((_encoded(nopixels), {}, CANNOT_UNDERSTAND, "no Pixel Data"))
    short = pydicom.dcmread(io.BytesIO(_encoded(ds)))
    short.PixelData = short.PixelData[:100]
    cases.append((_encoded(short), {}, CANNOT_UNDERSTAND, "expected"))
    cases.append((b"\x00" * 300, {}, CANNOT_UNDERSTAND, "cannot understand"))
    cases.append((_encoded(ds), {"max_bytes": 1000}, OUT_OF_RESOURCES, "limit"))
    for number, (data, changes, status, reason) in enumerate(cases, start=1):
        assert _accept(data, ds, spool, store, **changes) == status, reason
        reasons = sorted(spool.quarantine.glob("*.reason.txt"))
        assert len(reasons) == number
        assert any(reason in p.read_text() for p in reasons), reason
    assert not spool.spool.exists() or not list(spool.spool.iterdir())
    assert store.to_transcode(10) == []
    assert all(p.resolve().is_relative_to(spool.root.resolve()) for p in spool.root.rglob("*"))
