"""A dataset: breasts (CC + MLO of one side of one patient) with a malignant label.

Readers, all producing the same `Breast` records and a list of problems (never guesses):
- the phantom's labels.csv (`read_phantom_labels`);
- any per-image CSV, with the column names given (`read_image_table` with a `ColumnMap`);
- the RSNA Screening Mammography train.csv and VinDr-Mammo's breast-level annotations, which are
  per-image CSVs with known columns and folder layouts (`RSNA`, `VINDR`).
Images are grouped by patient and laterality; a breast lacking its CC or its MLO is reported and
left out, and a breast with several images of one view uses the first by file name (reported).
A breast may also carry what it shows (`Finding`), for metrics per finding type.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path


class DatasetFormat(StrEnum):
    """How a dataset's images are labelled (`load_dataset`)."""

    PHANTOM = "phantom"  # a phantom cohort's own labels.csv
    CSV = "csv"  # any per-image CSV, its columns named
    RSNA = "rsna"  # RSNA Screening Mammography's train.csv
    VINDR = "vindr"  # VinDr-Mammo's breast-level_annotations.csv


FORMATS = tuple(f.value for f in DatasetFormat)
# A phantom cohort (`dicomcr phantom OUT`): OUT/labels.csv and OUT/phantom.json, the DICOM files in
# OUT/dicom/<patient>/<view>.dcm (a tree of DICOM files only, which `storescu +sd +r` sends whole)
# and the lesion masks in OUT/masks/<patient>/<view>.png.
PHANTOM_DICOM = "dicom"
PHANTOM_MASKS = "masks"


class Finding(StrEnum):
    """What a breast shows, whatever its label: malignancy is `Breast.malignant`, so a benign mass
    is (MASS, 0) and a cancer seen as a calcification cluster (CALCIFICATION, 1).

    The phantom draws MASS (spiculated if malignant, circumscribed if benign), CALCIFICATION
    (a pleomorphic cluster if malignant, coarse or scattered if benign) and MASS_CALCIFICATION
    (a spiculated mass with its cluster); OTHER is for what datasets annotate beside masses and
    calcifications (asymmetries, architectural distortion, ...).
    """

    NORMAL = "normal"
    MASS = "mass"
    CALCIFICATION = "calcification"
    MASS_CALCIFICATION = "mass_calcification"
    OTHER = "other"

    @classmethod
    def of(cls, categories: Iterable[str]) -> Finding:
        """The finding of a breast from the category names annotated on its images.

        Each name may itself be a list ("['Mass', 'Suspicious Calcification']", "a;b", "a|b").
        Case-insensitive: a name containing "mass" is a mass, one containing "calc" a
        calcification; "", "normal", "none", "no finding" and "nan" name nothing; any other name
        is OTHER. A mass and a calcification make MASS_CALCIFICATION; either one outranks OTHER.
        This reads the enum's own values back, VinDr-Mammo's finding_categories, CBIS-DDSM's
        abnormality type ("mass", "calcification") and the phantom's lesion kinds.
        """
        names = {n.strip(" '\"").lower() for c in categories for n in re.split(r"[,;|\[\]]", c)}
        names -= {"", "normal", "none", "no finding", "nan"}
        mass = any("mass" in n for n in names)
        calc = any("calc" in n for n in names)
        if mass and calc:
            return cls.MASS_CALCIFICATION
        if mass or calc:
            return cls.MASS if mass else cls.CALCIFICATION
        return cls.OTHER if names else cls.NORMAL


@dataclass(frozen=True)
class ViewHeader:
    """What the preprocessing cache reads from a view's header: the SOP Instance UID that keys its
    crops, and the bytes of its uncompressed Pixel Data (the CRs it can reach). Given with a
    breast whose files are never written (a streamed phantom cohort, `dicomcr.phantom.stream`)."""

    sop_instance_uid: str
    raw_bytes: int


@dataclass(frozen=True)
class Breast:
    """One classification input: the CC and MLO files of one breast, its label and its finding."""

    patient_id: str
    laterality: str
    cc: Path
    mlo: Path
    malignant: int
    cc_mask: Path | None = None  # lesion masks (PNG, the view's size) when the dataset has them
    mlo_mask: Path | None = None
    finding: Finding | None = None  # None: the dataset does not say
    # (CC, MLO) headers of a streamed breast: its views exist only in the cache, `cc` and `mlo`
    # name where a stored cohort keeps them; None: read from the files
    headers: tuple[ViewHeader, ViewHeader] | None = None

    @property
    def key(self) -> str:
        return f"{self.patient_id}/{self.laterality}"


@dataclass
class Dataset:
    """The breasts a reader found, and what it had to leave out (one line per problem)."""

    breasts: list[Breast]
    problems: list[str] = field(default_factory=list)
    source: str = ""

    def notes(self, limit: int = 10) -> list[str]:
        """The first `limit` problems, and how many more there are."""
        more = len(self.problems) - limit
        return [*self.problems[:limit], *([f"... and {more} more problems"] if more > 0 else [])]

    def summary(self) -> str:
        """How many breasts of how many patients, how many malignant, read from where."""
        return (f"{len(self.breasts)} breasts of {len({b.patient_id for b in self.breasts})} "
                f"patients ({sum(b.malignant for b in self.breasts)} malignant) from {self.source}")


@dataclass(frozen=True)
class ColumnMap:
    """Which CSV column holds what, and how a row's image file is found.

    `path` is a template over the row's columns, relative to the image root, e.g.
    "{patient_id}/{image_id}.dcm"; `positive` lists the label values that mean malignant
    (default "1"; a table where no row has one is refused, not read as all benign); `finding`,
    optional, names the column of finding categories (read by `Finding.of`, over all the rows of
    a breast).
    """

    patient: str
    laterality: str
    view: str
    label: str
    path: str
    positive: tuple[str, ...] = ("1",)
    view_names: dict[str, str] = field(default_factory=lambda: {"CC": "CC", "MLO": "MLO"})
    finding: str | None = None

    def __post_init__(self) -> None:
        for name in ("patient", "laterality", "view", "label", "path"):
            if not getattr(self, name):
                raise ValueError(f"the column map needs {name!r}")
        if not self.positive:
            raise ValueError("the column map needs at least one positive label value")

    @classmethod
    def parse(cls, text: str) -> ColumnMap:
        """'patient=PID,laterality=SIDE,view=VIEW,label=CANCER,path={PID}/{IMG}.dcm[,positive=1|2]
        [,finding=TYPE]'."""
        names = ("patient", "laterality", "view", "label", "path", "positive", "finding")
        fields: dict[str, object] = {}
        for part in (p for p in text.split(",") if p.strip()):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in names:
                raise ValueError(f"--columns: expected name=value with name one of "
                                 f"{', '.join(names)}; got {part!r}")
            fields[name] = (tuple(v.strip() for v in value.split("|")) if name == "positive"
                            else value.strip())
        missing = {"patient", "laterality", "view", "label", "path"} - fields.keys()
        if missing:
            raise ValueError(f"--columns misses {', '.join(sorted(missing))}")
        return cls(**fields)  # type: ignore[arg-type]


# RSNA Screening Mammography Breast Cancer Detection: train.csv, train_images/<patient>/<image>.dcm
RSNA = ColumnMap(patient="patient_id", laterality="laterality", view="view", label="cancer",
                 path="{patient_id}/{image_id}.dcm")
# VinDr-Mammo: breast-level_annotations.csv, images/<study>/<image>.dicom. It holds no biopsy
# result: BI-RADS 4 and 5 (suspicious, highly suggestive) stand for malignant, as is usual.
# Given finding_annotations.csv instead (the same columns, one row per finding, "No Finding" for
# an image without), the breasts also carry their finding, from its finding_categories.
VINDR = ColumnMap(patient="study_id", laterality="laterality", view="view_position",
                  label="breast_birads", path="{study_id}/{image_id}.dicom",
                  positive=("BI-RADS 4", "BI-RADS 5"))
VINDR_FINDINGS = replace(VINDR, finding="finding_categories")
LAYOUTS = {"rsna": RSNA, "vindr": VINDR}


def mask_beside(image: Path) -> Path | None:
    """The lesion mask of an image, if there is one: <stem>_mask.png beside it (how a dataset
    brings its own masks, and where older phantom cohorts kept them), or, for a phantom image
    OUT/dicom/<patient>/<view>.dcm, OUT/masks/<patient>/<view>.png."""
    image = Path(image)
    candidates = [image.with_name(f"{image.stem}_mask.png")]
    study = image.absolute().parent
    if study.parent.name == PHANTOM_DICOM:
        candidates.append(study.parent.parent / PHANTOM_MASKS / study.name / f"{image.stem}.png")
    return next((mask for mask in candidates if mask.is_file()), None)


def phantom_breast(folder: Path, row: dict[str, str],
                   headers: tuple[ViewHeader, ViewHeader] | None = None) -> Breast:
    """The breast of one row of a phantom cohort's labels.csv, paths relative to `folder`
    (KeyError, ValueError for a bad row); `headers` for a streamed cohort's."""
    masks = [folder / row[k] if row.get(k) else None for k in ("cc_mask", "mlo_mask")]
    # From the lesion kinds, which every cohort has (`finding` held the class before).
    return Breast(row["patient_id"], row["laterality"], folder / row["cc_image"],
                  folder / row["mlo_image"], int(row["malignant"]), *masks,
                  finding=Finding.of(row["lesion_types"].split(";")), headers=headers)


def read_phantom_labels(folder: Path) -> list[Breast]:
    """The breasts of a cohort written by `dicomcr phantom` (folder/labels.csv)."""
    folder = Path(folder)
    labels = folder / "labels.csv"
    if not labels.is_file():
        if folder.name == PHANTOM_DICOM and (folder.parent / "labels.csv").is_file():
            raise FileNotFoundError(f"{folder} is the DICOM tree of a phantom cohort: give the "
                                    f"cohort's folder, {folder.parent}")
        raise FileNotFoundError(f"{labels} not found: is {folder} a dicomcr phantom cohort?")
    breasts = []
    with open(labels, newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                breast = phantom_breast(folder, row)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{labels}:{number}: bad row ({exc})") from exc
            for view in (breast.cc, breast.mlo):
                if not view.is_file():
                    raise FileNotFoundError(f"{labels}:{number}: missing view {view}")
            breasts.append(breast)
    if not breasts:
        raise ValueError(f"{labels} lists no breasts")
    return breasts


def read_image_table(table: Path, images: Path, columns: ColumnMap) -> Dataset:
    """Breasts from a per-image CSV: rows grouped by patient and laterality, CC and MLO paired."""
    table, images = Path(table), Path(images)
    if not table.is_file():
        raise FileNotFoundError(f"labels file {table} not found")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} not found")
    problems: list[str] = []
    views: dict[tuple[str, str], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    labels: dict[tuple[str, str], int] = {}
    categories: dict[tuple[str, str], list[str]] = defaultdict(list)
    values: Counter[str] = Counter()  # of the label column, to refuse one with no positive
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {columns.patient, columns.laterality, columns.view, columns.label}
        needed |= {columns.finding} if columns.finding else set()
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{table}: no column {', '.join(sorted(missing))} "
                             f"(columns: {', '.join(reader.fieldnames or ())})")
        for number, row in enumerate(reader, start=2):
            values[(row[columns.label] or "").strip()] += 1
            side = row[columns.laterality].strip().upper()[:1]
            view = columns.view_names.get(row[columns.view].strip().upper())
            if side not in ("L", "R"):
                problems.append(f"{table}:{number}: laterality {row[columns.laterality]!r} "
                                f"is not L or R; row skipped")
                continue
            if view is None:
                continue  # other projections (ML, LM, XCCL ...) are not the paper's input
            try:
                path = images / columns.path.format(**row)
            except (KeyError, IndexError) as exc:
                raise ValueError(f"--columns path {columns.path!r} names no column {exc}") from exc
            if not path.is_file():
                problems.append(f"{table}:{number}: image {path} not found; row skipped")
                continue
            key = (row[columns.patient].strip(), side)
            if path not in views[key][view]:  # a file listed once per finding is one image
                views[key][view].append(path)
            positive = int(row[columns.label].strip() in columns.positive)
            labels[key] = max(labels.get(key, 0), positive)
            if columns.finding:
                categories[key].append(row[columns.finding])
    breasts = []
    for (patient, side), found in sorted(views.items()):
        lacking = [v for v in ("CC", "MLO") if not found.get(v)]
        if lacking:
            problems.append(f"{patient} {side}: no {' and no '.join(lacking)} view; breast left out")
            continue
        chosen = {}
        for view in ("CC", "MLO"):
            paths = sorted(found[view])
            if len(paths) > 1:
                problems.append(f"{patient} {side}: {len(paths)} {view} images, using {paths[0].name}")
            chosen[view] = paths[0]
        masks = [mask_beside(chosen[v]) for v in ("CC", "MLO")]
        finding = Finding.of(categories[(patient, side)]) if columns.finding else None
        breasts.append(Breast(patient, side, chosen["CC"], chosen["MLO"], labels[(patient, side)],
                              *masks, finding=finding))
    if not breasts:
        raise ValueError(f"{table}: no breast with both a CC and an MLO image"
                         + (f" ({problems[0]} ...)" if problems else ""))
    if not any(v in columns.positive for v in values):
        wanted = " or ".join(repr(v) for v in columns.positive)
        shown = ", ".join(repr(v) for v, _ in values.most_common(5))
        raise ValueError(f"{table}: no row's {columns.label} is {wanted}, the value(s) that mean "
                         f"malignant (the column holds {shown}); with --format csv, name "
                         f"yours: --columns ...,positive=VALUE")
    return Dataset(breasts, problems, str(table))


def load_dataset(data: Path, layout: DatasetFormat | str = DatasetFormat.PHANTOM,
                 labels: Path | None = None, columns: str | None = None) -> Dataset:
    """The one entry point of the commands: DATA is the image folder; `labels` its CSV."""
    data = Path(data)
    if layout not in FORMATS:
        raise ValueError(f"unknown dataset format {layout!r}; choose one of {', '.join(FORMATS)}")
    if layout == "phantom":
        if labels is not None or columns is not None:
            raise ValueError("--labels and --columns are for --format csv, rsna or vindr")
        return Dataset(read_phantom_labels(data), [], str(data / "labels.csv"))
    if labels is None:
        raise ValueError(f"--format {layout} needs --labels (the CSV that labels the images)")
    if layout == "csv":
        if columns is None:
            raise ValueError("--format csv needs --columns patient=...,laterality=...,view=...,"
                             "label=...,path=...")
        column_map = ColumnMap.parse(columns)
    else:
        if columns is not None:
            raise ValueError(f"--columns is for --format csv; {layout} has known columns")
        column_map = LAYOUTS[layout]
        if layout == "vindr" and _has_column(labels, VINDR_FINDINGS.finding):
            column_map = VINDR_FINDINGS
    return read_image_table(labels, data, column_map)


def _has_column(table: Path, name: str | None) -> bool:
    with open(table, newline="") as handle:
        return name in next(csv.reader(handle), [])


def fingerprint(breasts: list[Breast]) -> str:
    """A short hash of which breasts, with which labels, a model was trained on."""
    digest = hashlib.sha256()
    for b in sorted(breasts, key=lambda b: b.key):
        digest.update(f"{b.key}:{b.cc.name}:{b.mlo.name}:{b.malignant}\n".encode())
    return digest.hexdigest()[:16]
