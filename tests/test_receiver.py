"""The receiver's policy for one instance, without a network: durable, checked, quarantined."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from dicomcr.config import Policy
from dicomcr.jobs import DiskReserve, JobStore
from dicomcr.jobs import Storage as Spool
from services.receiver import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    Receipt,
    accept,
)


@pytest.fixture
def setup(tmp_path: Path):
    return Spool(tmp_path / "node"), JobStore(tmp_path / "jobs.sqlite")


def _encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _one(small_cohort: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(small_cohort.rglob("LCC.dcm"))[0])


def _accept(data: bytes, ds: pydicom.Dataset, spool: Spool, store: JobStore, **changes) -> int:
    """As the network layer does: the bytes in a file in incoming/, then accept decides; the
    status it answers."""
    spool.incoming.mkdir(parents=True, exist_ok=True)
    received = spool.incoming / f"{len(list(spool.incoming.iterdir()))}.dcm"
    received.write_bytes(data)
    args = dict(sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
                calling_ae="MG_A", site="a", policy=Policy.parse("20"), storage=spool, store=store,
                max_bytes=2**30)
    verdict = accept(received, **{**args, **changes})
    assert not received.exists()  # moved into the spool or into quarantine, never left behind
    assert (verdict.receipt is Receipt.STORED) == (verdict.status == SUCCESS)
    return verdict.status


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
    assert store.counts() == {"a": {"image": {"received": 1, "queued": 0, "transcoded": 0,
                                              "done": 0, "failed": 0}}}


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


def _changed(ds: pydicom.Dataset, **values: object) -> pydicom.Dataset:
    changed = pydicom.dcmread(io.BytesIO(_encoded(ds)))
    for keyword, value in values.items():
        if value is None:
            delattr(changed, keyword)
        else:
            setattr(changed, keyword, value)
    return changed


def test_an_inconsistent_image_pixel_module_is_refused_at_receive(small_cohort: Path,
                                                                   setup) -> None:
    spool, store = setup
    ds = _one(small_cohort)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    pixels = bytes(ds.PixelData)
    cases = [
        (_changed(ds, BitsAllocated=7), "BitsAllocated 7 is neither 1 nor a multiple of 8"),
        (_changed(ds, BitsStored=17, HighBit=16), "BitsStored 17 is not within"),
        (_changed(ds, BitsStored=0), "BitsStored 0"),
        (_changed(ds, HighBit=15), "HighBit 15 is not BitsStored - 1 (11)"),
        (_changed(ds, SamplesPerPixel=3), "SamplesPerPixel 3 does not fit"),
        (_changed(ds, PhotometricInterpretation="RGB"), "does not fit PhotometricInterpretation"),
        (_changed(ds, PhotometricInterpretation="MONOCHROME3"), "unknown PhotometricInterpretation"),
        (_changed(ds, Rows=0), "Rows 0"),
        (_changed(ds, BitsStored=None), "BitsStored missing"),
    ]
    for number, (bad, reason) in enumerate(cases, start=1):
        assert _accept(_encoded(bad), ds, spool, store) == DATASET_DOES_NOT_MATCH_SOP_CLASS, reason
        texts = [p.read_text() for p in spool.quarantine.glob("*.reason.txt")]
        assert len(texts) == number and any(reason in t for t in texts), (reason, texts)
    lengths = [(_changed(ds, PixelData=pixels + b"\0\0"), "expected"),  # longer than declared
               (_changed(ds, Rows=ds.Rows + 1), "expected")]  # rows that the data lack
    for bad, reason in lengths:
        assert _accept(_encoded(bad), ds, spool, store) == CANNOT_UNDERSTAND, reason
    assert store.to_transcode(10) == []
    # the odd length of a 1-bit image is padded to even: accepted
    bits = _changed(ds, BitsAllocated=1, BitsStored=1, HighBit=0, PixelRepresentation=0,
                    Rows=3, Columns=5, PixelData=b"\xff\x7f")  # 15 bits: 2 bytes
    assert _accept(_encoded(bits), ds, spool, store) == SUCCESS
    odd = _changed(ds, BitsAllocated=8, BitsStored=8, HighBit=7, Rows=3, Columns=5,
                   PixelData=bytes(15) + b"\0")  # 15 bytes, padded to 16
    assert _accept(_encoded(odd), ds, spool, store) == SUCCESS


def test_below_the_disk_reserve_an_instance_is_answered_out_of_resources(small_cohort: Path,
                                                                         setup) -> None:
    spool, store = setup
    ds = _one(small_cohort)
    spool.root.mkdir(parents=True, exist_ok=True)
    full = DiskReserve(spool.root, reserve_bytes=2**62)  # more than any disk has free
    assert full.space().low
    assert _accept(_encoded(ds), ds, spool, store, disk=full) == OUT_OF_RESOURCES
    assert not spool.quarantine.exists()  # nothing wrong with the instance: dropped, not kept
    assert store.to_transcode(10) == []
    roomy = DiskReserve(spool.root, reserve_bytes=1)
    assert _accept(_encoded(ds), ds, spool, store, disk=roomy) == SUCCESS


def test_a_file_cut_inside_its_pixel_data_is_refused(small_cohort: Path, setup) -> None:
    """A dataset whose bytes end inside native Pixel Data still declares the full length: the
    length the file can hold is what counts (it used to be stored and fail at transcode)."""
    spool, store = setup
    ds = _one(small_cohort)
    data = _encoded(ds)
    assert _accept(data[: len(data) // 2], ds, spool, store) == CANNOT_UNDERSTAND
    (reason,) = spool.quarantine.glob("*.reason.txt")
    assert "Pixel Data holds" in reason.read_text()
    assert store.to_transcode(10) == []


def test_a_dataset_without_a_sop_class_is_refused_not_crashed_on(small_cohort: Path,
                                                                  setup) -> None:
    spool, store = setup
    ds = _one(small_cohort)
    headless = pydicom.dcmread(io.BytesIO(_encoded(ds)))
    del headless.SOPClassUID
    assert _accept(_encoded(headless), ds, spool, store) == CANNOT_UNDERSTAND
    (reason,) = spool.quarantine.glob("*.reason.txt")
    assert "SOP Class UID" in reason.read_text()
