"""Write a phantom cohort to disk: four DICOM views per study, their lesion masks, labels.csv.

Layout of OUT (the names are `dicomcr.data.dataset`'s, which reads it back):
    OUT/dicom/<patient_id>/LCC.dcm   ... LMLO, RCC, RMLO; this tree holds DICOM files only, so
                                     `storescu +sd +r` or a PACS's folder import sends it whole
    OUT/masks/<patient_id>/LCC.png   the ground-truth lesion mask of that view (255 = lesion)
    OUT/labels.csv                   one row per breast (see LABEL_COLUMNS), paths relative to OUT
    OUT/phantom.json                 the parameters that reproduce the cohort, the tissue constants
OUT must be empty (or absent): with `force`, a cohort already there is replaced.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image

from dicomcr import __version__
from dicomcr.data.dataset import PHANTOM_DICOM, PHANTOM_MASKS, Finding
from dicomcr.outputs import output_folder

from .params import DETECTORS, CohortMix, Difficulty, Tissue
from .study import PhantomStudy, PhantomView, generate_study

LABEL_COLUMNS = (
    "patient_id", "study_instance_uid", "laterality", "finding", "malignant", "lesion_types",
    "density", "vendor", "photometric", "cc_image", "mlo_image", "cc_mask", "mlo_mask",
)
"""`finding` is what the breast shows (a `Finding` value: normal, mass, calcification,
mass_calcification), `malignant` its label (1 or 0), `lesion_types` the phantom's lesion kinds."""
COHORT_FILES = (PHANTOM_DICOM, PHANTOM_MASKS, "labels.csv", "phantom.json")
"""What `write_cohort` writes into OUT, and all that `force` removes from it."""


class Vendor(StrEnum):
    """Whose detector images a cohort: one vendor's, or both alternating (MIXED)."""

    HOLOGIC = "hologic"
    GE = "ge"
    MIXED = "mixed"


class Size(StrEnum):
    """The views' size: the detectors' own (FULL) or a quarter of it (SMALL, for tests)."""

    FULL = "full"
    SMALL = "small"


class DifficultyName(StrEnum):
    """The named lesion difficulties (`params.DIFFICULTIES`), as `--difficulty` takes them;
    `Difficulty.named` gives the parameters."""

    PHYSICAL = "physical"
    CONSPICUOUS = "conspicuous"

    @classmethod
    def _missing_(cls, value: object) -> DifficultyName | None:
        """A name in any case, with spaces around, as `Difficulty.named` reads it."""
        text = value.strip().lower() if isinstance(value, str) else None
        return next((member for member in cls if member.value == text), None)


SPEC_KEYS = ("studies", "seed", "size", "vendor", "difficulty", "mix")
SPEC_FORM = ("phantom:studies=N[,seed=S][,size=full|small][,vendor=hologic|ge|mixed]"
             "[,difficulty=physical|conspicuous][,mix=NORMAL/BENIGN/MALIGNANT]")
"""A cohort spec in one word (`CohortSpec.parse`): the knobs of `dicomcr phantom`, its defaults,
and the shares of the finding mix (default 0.62/0.19/0.19)."""


@dataclass(frozen=True)
class CohortSpec:
    """Everything that determines a cohort: the same spec always writes the same bytes."""

    n_studies: int
    seed: int = 0
    size: Size = Size.FULL
    vendor: Vendor = Vendor.MIXED
    difficulty: Difficulty = field(default_factory=Difficulty)
    mix: CohortMix = field(default_factory=CohortMix)
    physics: Tissue = field(default_factory=Tissue)

    def __post_init__(self) -> None:
        if not isinstance(self.n_studies, int) or self.n_studies <= 0:
            raise ValueError(f"the number of studies must be a positive integer, got {self.n_studies}")
        if self.seed < 0:
            raise ValueError(f"the seed must be non-negative, got {self.seed}")
        for name, kind in (("vendor", Vendor), ("size", Size)):
            value = getattr(self, name)
            if value not in tuple(kind):
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(kind)}")
            object.__setattr__(self, name, kind(value))  # a plain "ge" becomes Vendor.GE

    @classmethod
    def parse(cls, text: str) -> CohortSpec:
        """The spec named by `SPEC_FORM`, e.g. 'phantom:studies=1500,seed=2026,size=small';
        ValueError, in one line that shows the form, for anything else."""
        def bad(reason: str) -> ValueError:
            return ValueError(f"{text}: {reason}; a phantom specification reads {SPEC_FORM}")

        kind, _, body = text.partition(":")
        if kind.strip().lower() != "phantom":
            raise bad("not a phantom specification")
        values: dict[str, str] = {}
        for part in (p.strip() for p in body.split(",") if p.strip()):
            name, sep, value = (x.strip() for x in part.partition("="))
            if not sep or name not in SPEC_KEYS or name in values:
                raise bad(f"{part!r} is not name=value with name one of {', '.join(SPEC_KEYS)}, "
                          f"each once")
            values[name] = value
        if "studies" not in values:
            raise bad("the number of studies is missing")
        try:
            numbers = {k: int(values[k]) for k in ("studies", "seed") if k in values}
        except ValueError:
            raise bad("studies and seed are whole numbers") from None
        try:
            mix = tuple(float(v) for v in values["mix"].split("/")) if "mix" in values else None
        except ValueError:
            mix = ()
        if mix is not None and len(mix) != 3:
            raise bad("mix is three shares, normal/benign/malignant, e.g. 0.62/0.19/0.19")
        try:
            return cls(numbers["studies"], numbers.get("seed", 0),
                       values.get("size", Size.FULL.value).lower(),  # checked by the spec
                       values.get("vendor", Vendor.MIXED.value).lower(),
                       Difficulty.named(values.get("difficulty", DifficultyName.PHYSICAL.value)),
                       CohortMix(*mix) if mix is not None else CohortMix())
        except ValueError as exc:
            raise bad(str(exc)) from None

    @classmethod
    def read(cls, path: Path) -> CohortSpec:
        """The spec a cohort's phantom.json records (`document`); ValueError in one line."""
        try:
            document = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from exc
        try:
            difficulty = {k: v for k, v in document["difficulty"].items() if k != "name"}
            tissue = {k: v for k, v in document["tissue"].items() if k != "units"}
            return cls(document["n_studies"], document["seed"], document["size"],
                       document["vendor"], Difficulty(**difficulty), CohortMix(**document["mix"]),
                       Tissue(**tissue))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path} is not a phantom cohort's phantom.json ({type(exc).__name__}: "
                             f"{exc})") from exc

    def document(self) -> dict:
        """What phantom.json records: the spec (all that reproduces the cohort), the tissue
        constants and the constants of its detectors at full size."""
        vendors = dict.fromkeys(self.vendor_of(i) for i in range(self.n_studies))
        return {
            "generator": f"dicomcr {__version__}",
            "n_studies": self.n_studies, "seed": self.seed, "size": self.size.value,
            "vendor": self.vendor.value,
            "difficulty": {"name": self.difficulty.name, **asdict(self.difficulty)},
            "mix": asdict(self.mix),
            "tissue": {"units": "attenuation in 1/mm near 20 keV, thickness in mm, fluence in "
                                "photons per mm^2 behind the breast", **asdict(self.physics)},
            "detectors": {v: asdict(DETECTORS[v]) for v in vendors},  # at full size
        }

    @property
    def key(self) -> str:
        """A readable name unique to the spec (its numbers, a hash of everything)."""
        document = {k: v for k, v in self.document().items() if k != "generator"}
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.n_studies}-{self.size.value}-{self.vendor.value}-seed{self.seed}-{digest}"

    def study(self, index: int, finding: str) -> PhantomStudy:
        """Study `index` of the cohort, whose finding is `finding` (`findings()[index]`)."""
        return generate_study(self.seed, index, finding, self.vendor_of(index), self.size.value,
                              self.difficulty, self.physics)

    def findings(self) -> list[str]:
        """The finding of each study: exact counts from the mix, in a seeded random order."""
        counts = self.mix.counts(self.n_studies)
        findings = [f for f, n in counts.items() for _ in range(n)]
        order = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2**31,)))
        return [findings[i] for i in order.permutation(len(findings))]

    def vendor_of(self, index: int) -> str:
        """The detector of study `index`: the spec's vendor, or alternately Hologic and GE."""
        if self.vendor is not Vendor.MIXED:
            return self.vendor.value
        return (Vendor.HOLOGIC.value, Vendor.GE.value)[index % 2]


@dataclass(frozen=True)
class StudyRecord:
    """What was written for one study."""

    patient_id: str  # also the study's folder name
    finding: str
    vendor: str
    photometric: str
    seconds: float
    rows: tuple[dict[str, str], ...]


def write_study(spec: CohortSpec, index: int, finding: str, out: Path) -> StudyRecord:
    """Generate study `index` and write its DICOM files and masks into the cohort folder `out`."""
    start = time.perf_counter()
    study = spec.study(index, finding)
    dicom = out / PHANTOM_DICOM / study.patient_id
    dicom.mkdir(parents=True, exist_ok=True)
    for number, view in enumerate(study.views, start=1):
        study.dataset(view, number).save_as(dicom / f"{view.name}.dcm", enforce_file_format=True)
        save_mask(view, out / PHANTOM_MASKS / study.patient_id)
    return StudyRecord(study.patient_id, finding, spec.vendor_of(index), study.photometric,
                       time.perf_counter() - start, label_rows(study))


def save_mask(view: PhantomView, folder: Path, compress_level: int = 1) -> None:
    """The view's lesion mask as folder/<view>.png (255 = lesion, the view's grid); level 1 is
    fast, 9 a quarter of the bytes (60 and 13 KB for a full-size Hologic view)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(view.lesion_mask.astype(np.uint8) * 255).save(
        folder / f"{view.name}.png", optimize=False, compress_level=compress_level)


def write_labels(path: Path, rows: Iterable[dict[str, str]]) -> None:
    """labels.csv: a header of LABEL_COLUMNS, then `rows`."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def label_rows(study: PhantomStudy) -> tuple[dict[str, str], ...]:
    """The two rows of labels.csv of a study, one per breast, paths relative to the cohort."""
    rows = []
    for side in ("L", "R"):
        truth = study.breasts[side]
        rows.append({
            "patient_id": study.patient_id,
            "study_instance_uid": study.study_uid,
            "laterality": side,
            "finding": Finding.of(lesion.kind for lesion in truth.lesions).value,
            "malignant": str(int(truth.finding == "malignant")),
            "lesion_types": ";".join(lesion.kind for lesion in truth.lesions),
            "density": study.density,
            "vendor": study.detector.key,
            "photometric": study.photometric,
            "cc_image": f"{PHANTOM_DICOM}/{study.patient_id}/{side}CC.dcm",
            "mlo_image": f"{PHANTOM_DICOM}/{study.patient_id}/{side}MLO.dcm",
            "cc_mask": f"{PHANTOM_MASKS}/{study.patient_id}/{side}CC.png",
            "mlo_mask": f"{PHANTOM_MASKS}/{study.patient_id}/{side}MLO.png",
        })
    return tuple(rows)


def _init_worker() -> None:
    # One core per worker: the parallelism is across studies.
    os.environ["OMP_NUM_THREADS"] = "1"


def iter_cohort(spec: CohortSpec, out: Path, workers: int = 1) -> Iterator[StudyRecord]:
    """Write every study of `spec` under `out` with `workers` processes (at most one per study),
    yielding each record as its study is done."""
    findings = spec.findings()
    if workers <= 1:
        for index, finding in enumerate(findings):
            yield write_study(spec, index, finding, out)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(findings)),
                             initializer=_init_worker) as pool:
        futures = [pool.submit(write_study, spec, i, f, out) for i, f in enumerate(findings)]
        for future in futures:
            yield future.result()


@dataclass
class CohortSummary:
    out: Path
    studies: int
    images: int
    findings: dict[str, int]
    vendors: dict[str, int]
    photometric: dict[str, int]
    seconds: float
    seconds_per_study: float
    bytes_written: int
    workers: int = 1  # processes that wrote it

    @property
    def dicom(self) -> Path:
        """The folder tree of the DICOM files alone: what is sent to a peer."""
        return self.out / PHANTOM_DICOM

    @property
    def masks(self) -> Path:
        return self.out / PHANTOM_MASKS

    def facts(self) -> list[tuple[str, str]]:
        """(label, text) of what was written, and how fast."""
        def counts(found: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(found.items()))

        return [("folder", str(self.out)), ("studies / images", f"{self.studies} / {self.images}"),
                ("findings", counts(self.findings)), ("vendors", counts(self.vendors)),
                ("photometric", counts(self.photometric)),
                ("size on disk", f"{self.bytes_written / 2**20:.1f} MiB"),
                ("time", f"{self.seconds:.1f} s ({self.seconds_per_study:.2f} s per study, "
                         f"{self.workers} worker{'s' if self.workers > 1 else ''})"),
                ("DICOM", f"{self.dicom} (DICOM files only: send this folder)"),
                ("lesion masks", str(self.masks)), ("labels", str(self.out / "labels.csv"))]


def write_cohort(
    spec: CohortSpec, out: Path, workers: int = 1,
    progress: Callable[[int, int], None] | None = None, force: bool = False,
) -> CohortSummary:
    """Write the whole cohort, labels.csv and phantom.json into `out` with `workers` processes (at
    most one per study), calling `progress(studies done, studies)`; return what was written.

    `out` must be empty or absent, so that labels.csv lists every patient folder beside it;
    `force` first removes a cohort written there before (COHORT_FILES, nothing else).
    """
    out = Path(out)
    _check_writable(out, force)
    start = time.perf_counter()
    records = []
    for record in iter_cohort(spec, out, workers):
        records.append(record)
        if progress is not None:
            progress(len(records), spec.n_studies)
    records.sort(key=lambda r: r.patient_id)
    write_labels(out / "labels.csv", (row for record in records for row in record.rows))
    (out / "phantom.json").write_text(json.dumps(spec.document(), indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    elapsed = time.perf_counter() - start
    return CohortSummary(
        out=out, studies=len(records), images=4 * len(records),
        findings=dict(Counter(r.finding for r in records)),
        vendors=dict(Counter(r.vendor for r in records)),
        photometric=dict(Counter(r.photometric for r in records)),
        seconds=elapsed, seconds_per_study=sum(r.seconds for r in records) / len(records),
        bytes_written=size, workers=max(1, min(workers, spec.n_studies)),
    )


def _check_writable(out: Path, force: bool) -> None:
    """Fail early, with the path, when OUT cannot be created or written, or is not empty."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ValueError(f"{out} is not empty: write the cohort into a new folder, or force "
                             f"it to replace the cohort there ({', '.join(COHORT_FILES)})")
        for name in COHORT_FILES:
            old = out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
    output_folder(out)
