"""Dataset readers: the phantom's labels, a generic CSV, RSNA and VinDr layouts; problems reported."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from dicomcr.data.dataset import (
    PHANTOM_DICOM,
    ColumnMap,
    Finding,
    load_dataset,
    mask_beside,
    read_phantom_labels,
)


def _images(cohort: Path) -> list[dict]:
    """One row per image of the phantom cohort: patient, side, view, file, breast label."""
    rows = []
    for b in read_phantom_labels(cohort):
        for view, path in (("CC", b.cc), ("MLO", b.mlo)):
            rows.append({"patient": b.patient_id, "side": b.laterality, "view": view,
                         "path": path, "malignant": b.malignant, "finding": b.finding.value})
    return rows


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_generic_csv_pairs_views_and_reports_what_it_leaves_out(small_cohort: Path,
                                                                  tmp_path: Path) -> None:
    images = _images(small_cohort)
    rows = [[r["patient"], {"L": "left", "R": "right"}[r["side"]], r["view"].lower(),
             os.path.relpath(r["path"], small_cohort), "yes" if r["malignant"] else "no"]
            for r in images]
    dropped = rows.pop(1)  # the first breast loses its MLO
    rows.append([rows[2][0], rows[2][1], "cc", rows[2][3], rows[2][4]])  # a second CC, same file
    rows.append([rows[0][0], rows[0][1], "ML", rows[0][3], "no"])  # a projection not used
    rows.append([rows[0][0], "B", "cc", rows[0][3], "no"])  # a laterality that means nothing
    table = _write(tmp_path / "labels.csv", ["pid", "side", "proj", "file", "cancer"], rows)
    dataset = load_dataset(small_cohort, "csv", table,
                           "patient=pid,laterality=side,view=proj,label=cancer,path={file},"
                           "positive=yes")
    expected = {(b.patient_id, b.laterality): b for b in read_phantom_labels(small_cohort)}
    assert len(dataset.breasts) == len(expected) - 1
    for b in dataset.breasts:
        truth = expected[(b.patient_id, b.laterality)]
        assert (b.cc, b.mlo, b.malignant) == (truth.cc, truth.mlo, truth.malignant)
        assert (b.cc_mask, b.mlo_mask) == (truth.cc_mask, truth.mlo_mask)  # found in masks/
    text = "\n".join(dataset.problems)
    assert f"{dropped[0]} L: no MLO view; breast left out" in text
    assert "2 CC images" in text and "'B' is not L or R" in text


def test_a_label_column_with_no_positive_value_is_refused(small_cohort: Path,
                                                         tmp_path: Path) -> None:
    """yes/no labels read with the default positive value ("1") would be all benign: refused,
    naming the values the column holds and how to name the malignant one."""
    rows = [[r["patient"], r["side"], r["view"], os.path.relpath(r["path"], small_cohort),
             "yes" if r["malignant"] else "no"] for r in _images(small_cohort)]
    table = _write(tmp_path / "t.csv", ["p", "s", "v", "f", "cancer"], rows)
    columns = "patient=p,laterality=s,view=v,label=cancer,path={f}"
    with pytest.raises(ValueError) as refused:
        load_dataset(small_cohort, "csv", table, columns)
    assert str(refused.value) == (
        f"{table}: no row's cancer is '1', the value(s) that mean malignant (the column holds "
        "'no', 'yes'); with --format csv, name yours: --columns ...,positive=VALUE")
    named = load_dataset(small_cohort, "csv", table, columns + ",positive= yes ")
    assert sum(b.malignant for b in named.breasts) == sum(
        b.malignant for b in read_phantom_labels(small_cohort)) > 0


def test_rsna_and_vindr_layouts(small_cohort: Path, tmp_path: Path) -> None:
    images = _images(small_cohort)
    rsna = tmp_path / "rsna" / "train_images"
    rows = []
    for i, r in enumerate(images):
        (rsna / r["patient"]).mkdir(parents=True, exist_ok=True)
        os.link(r["path"], rsna / r["patient"] / f"{1000 + i}.dcm")
        rows.append([1, r["patient"], 1000 + i, r["side"], r["view"], 60, r["malignant"]])
    table = _write(tmp_path / "rsna" / "train.csv",
                   ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer"], rows)
    dataset = load_dataset(rsna, "rsna", table)
    assert dataset.problems == []
    truth = {b.key: b.malignant for b in read_phantom_labels(small_cohort)}
    assert {b.key: b.malignant for b in dataset.breasts} == truth
    assert {b.finding for b in dataset.breasts} == {None}  # RSNA's train.csv names no finding

    vindr = tmp_path / "vindr" / "images"
    rows = []
    for i, r in enumerate(images):
        study = f"s{r['patient']}"
        (vindr / study).mkdir(parents=True, exist_ok=True)
        os.link(r["path"], vindr / study / f"img{i}.dicom")
        birads = "BI-RADS 5" if r["malignant"] else "BI-RADS 2"
        rows.append([study, "ser", f"img{i}", r["side"], r["view"], birads, "DENSITY B"])
    table = _write(tmp_path / "vindr" / "breast-level_annotations.csv",
                   ["study_id", "series_id", "image_id", "laterality", "view_position",
                    "breast_birads", "breast_density"], rows)
    dataset = load_dataset(vindr, "vindr", table)
    assert {b.key: b.malignant for b in dataset.breasts} == {f"s{k}": v for k, v in truth.items()}
    assert {b.finding for b in dataset.breasts} == {None}  # the breast level names none


def test_vindr_finding_annotations_give_each_breast_its_finding(small_cohort: Path,
                                                                tmp_path: Path) -> None:
    """finding_annotations.csv: one row per finding (bounding box), 'No Finding' for an image
    without; the categories of a breast's rows make its Finding, each image is read once."""
    breasts = read_phantom_labels(small_cohort)
    categories = {  # what a VinDr reader would have annotated on the phantom's lesions
        Finding.NORMAL: [["No Finding"]],
        Finding.MASS: [["Mass"]],
        Finding.CALCIFICATION: [["Suspicious Calcification"]],
        Finding.MASS_CALCIFICATION: [["Mass", "Suspicious Calcification"], ["Mass"]],
    }
    images = tmp_path / "vindr" / "images"
    rows = []
    for i, b in enumerate(breasts):
        study = f"s{b.patient_id}"
        (images / study).mkdir(parents=True, exist_ok=True)
        birads = "BI-RADS 5" if b.malignant else "BI-RADS 2" if b.finding != "normal" else "BI-RADS 1"
        for view, path in (("CC", b.cc), ("MLO", b.mlo)):
            os.link(path, images / study / f"img{i}{view}.dicom")
            for found in categories[b.finding]:  # one row per finding on the image
                rows.append([study, "ser", f"img{i}{view}", b.laterality, view, birads,
                             "DENSITY B", str(found), "", "", "", "", "", "training"])
    table = _write(tmp_path / "vindr" / "finding_annotations.csv",
                   ["study_id", "series_id", "image_id", "laterality", "view_position",
                    "breast_birads", "breast_density", "finding_categories", "finding_birads",
                    "xmin", "ymin", "xmax", "ymax", "split"], rows)
    dataset = load_dataset(tmp_path / "vindr" / "images", "vindr", table)
    assert dataset.problems == []  # a file listed once per finding is one image, not several
    assert {b.key: (b.malignant, b.finding) for b in dataset.breasts} == {
        f"s{b.key}": (b.malignant, b.finding) for b in breasts}
    assert {b.finding for b in breasts} >= {Finding.NORMAL}
    assert len({b.finding for b in breasts}) > 1  # the cohort has lesions to name


def test_a_generic_csv_may_name_a_finding_column(small_cohort: Path, tmp_path: Path) -> None:
    rows = [[r["patient"], r["side"], r["view"], os.path.relpath(r["path"], small_cohort),
             r["malignant"], r["finding"]] for r in _images(small_cohort)]
    table = _write(tmp_path / "t.csv", ["p", "s", "v", "f", "y", "type"], rows)
    columns = "patient=p,laterality=s,view=v,label=y,path={f}"
    plain = load_dataset(small_cohort, "csv", table, columns)
    assert {b.finding for b in plain.breasts} == {None}
    named = load_dataset(small_cohort, "csv", table, columns + ",finding=type")
    assert {b.key: b.finding for b in named.breasts} == {
        b.key: b.finding for b in read_phantom_labels(small_cohort)}
    with pytest.raises(ValueError, match="no column kind"):
        load_dataset(small_cohort, "csv", table, columns + ",finding=kind")


@pytest.mark.parametrize(("names", "finding"), [
    ([], Finding.NORMAL),
    (["", "No Finding", "nan"], Finding.NORMAL),
    (["['No Finding']"], Finding.NORMAL),
    (["Mass"], Finding.MASS),
    (["circumscribed_mass"], Finding.MASS),
    (["['Suspicious Calcification']", "['Global Asymmetry']"], Finding.CALCIFICATION),
    (["['Mass', 'Suspicious Calcification']"], Finding.MASS_CALCIFICATION),
    (["spiculated_mass;pleomorphic_calcifications".replace(";", "|")], Finding.MASS_CALCIFICATION),
    (["Architectural Distortion", "Focal Asymmetry"], Finding.OTHER),
    *[([f.value], f) for f in Finding],  # the values read back as themselves
])
def test_finding_categories_map_onto_the_finding(names: list[str], finding: Finding) -> None:
    assert Finding.of(names) is finding


@pytest.mark.parametrize(("layout", "labels", "columns", "message"), [
    ("excel", None, None, "unknown dataset format"),
    ("csv", None, None, "needs --labels"),
    ("csv", "labels.csv", None, "needs --columns"),
    ("csv", "labels.csv", "patient=a,view=b", "misses"),
    ("csv", "labels.csv", "patient=a,laterality=b,view=c,label=d,path={a},colour=x", "name=value"),
    ("csv", "labels.csv", "patient=nope,laterality=b,view=c,label=d,path={a}", "no column nope"),
    ("rsna", "labels.csv", "patient=a", "--columns is for --format csv"),
    ("phantom", "labels.csv", None, "are for --format csv"),
])
def test_bad_dataset_arguments_say_what_is_wrong(tmp_path: Path, layout, labels, columns,
                                                 message) -> None:
    _write(tmp_path / "labels.csv", ["a", "b", "c", "d"], [["1", "L", "CC", "0"]])
    with pytest.raises(ValueError, match=message):
        load_dataset(tmp_path, layout, tmp_path / labels if labels else None, columns)


def test_a_table_with_no_complete_breast_is_refused(small_cohort: Path, tmp_path: Path) -> None:
    cc_only = [[r["patient"], r["side"], "CC", os.path.relpath(r["path"], small_cohort), 0]
               for r in _images(small_cohort) if r["view"] == "CC"]
    table = _write(tmp_path / "t.csv", ["p", "s", "v", "f", "y"], cc_only)
    with pytest.raises(ValueError, match="no breast with both a CC and an MLO"):
        load_dataset(small_cohort, "csv", table, "patient=p,laterality=s,view=v,label=y,path={f}")
    assert ColumnMap.parse("patient=p,laterality=s,view=v,label=y,path={f},positive=1|2"
                           ).positive == ("1", "2")


def test_a_cohort_in_the_old_layout_still_reads(small_cohort: Path, tmp_path: Path) -> None:
    """Cohorts written before the DICOM tree was split out (OUT/<patient>/<view>.dcm, the mask
    beside it as <view>_mask.png) read as before; the DICOM tree alone is refused, saying why."""
    old = tmp_path / "old"
    with open(small_cohort / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    for row in rows:
        for view in ("cc", "mlo"):
            image = Path(row[f"{view}_image"])
            moved = Path(image.parent.name, image.name)
            mask = moved.with_name(f"{image.stem}_mask.png")
            (old / moved.parent).mkdir(parents=True, exist_ok=True)
            os.link(small_cohort / image, old / moved)
            os.link(small_cohort / row[f"{view}_mask"], old / mask)
            row[f"{view}_image"], row[f"{view}_mask"] = str(moved), str(mask)
    _write(old / "labels.csv", list(header), [[row[k] for k in header] for row in rows])
    for new, before in zip(read_phantom_labels(small_cohort), read_phantom_labels(old),
                           strict=True):
        assert (new.key, new.malignant) == (before.key, before.malignant)
        assert before.cc == old / new.cc.relative_to(small_cohort / PHANTOM_DICOM)
        assert before.mlo_mask.read_bytes() == new.mlo_mask.read_bytes()
        assert mask_beside(before.cc) == before.cc_mask
    with pytest.raises(FileNotFoundError, match="DICOM tree of a phantom cohort"):
        load_dataset(small_cohort / PHANTOM_DICOM)
