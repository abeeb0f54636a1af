"""One synthetic screening study: a patient, two breasts, four views, their lesions and truth.

A study is a pure function of (seed, index, finding, vendor, size, difficulty): the same arguments
give the same pixels, UIDs and dates, on any machine and in any order of generation. Its UIDs also
name the vendor, size, difficulty and tissue constants: other pixels, other instances (a cache keyed
by SOP Instance UID never mistakes one for the other).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from highdicom import LateralityValues, PatientSexValues, PhotometricInterpretationValues
from scipy import ndimage

from ..dicom.mammography import MammographyImage
from ..dicom.uids import derived_uid
from .anatomy import BreastShape, BreastTissue, Pectoral, breast_fields
from .detector import log_signal, presentation_curve, registered_range, to_pixels, voi_window
from .lesions import BENIGN_KINDS, MALIGNANT_KINDS, Canvas, Lesion, draw_lesion, render_lesion
from .params import DETECTORS, SIZE_CHOICES, SMALL_FACTOR, Detector, Difficulty, Tissue

VIEWS: tuple[tuple[str, str], ...] = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
FINDINGS = ("normal", "benign", "malignant")
DENSITY_CATEGORIES = {"a": 0.12, "b": 0.26, "c": 0.42, "d": 0.58}  # mean glandular fraction
DENSITY_SHARES = (0.10, 0.40, 0.40, 0.10)
LOW_RES_SPACING_MM = 0.28  # anatomy is rendered on this grid, lesions and noise at full resolution


@dataclass
class PhantomView:
    """One rendered view: stored pixels (in the study's photometric polarity) and ground truth."""

    laterality: str
    view: str
    pixels: np.ndarray  # uint16, as stored in Pixel Data
    lesion_mask: np.ndarray  # bool, same grid as pixels
    breast_mask: np.ndarray  # bool, same grid as pixels
    window_center: float
    window_width: float
    shape: BreastShape  # geometry in the canonical (chest wall left) frame

    @property
    def name(self) -> str:
        return f"{self.laterality}{self.view}"


@dataclass(frozen=True)
class BreastTruth:
    laterality: str
    finding: str
    lesions: tuple[Lesion, ...]


@dataclass
class PhantomStudy:
    """A generated study with everything needed to write it and to check it."""

    seed: int
    index: int
    finding: str
    detector: Detector
    photometric: str
    patient_id: str
    patient_name: str
    birth_date: dt.date
    study_date: dt.date
    study_time: dt.time
    density: str
    thickness_mm: dict[str, float]
    breasts: dict[str, BreastTruth]
    views: list[PhantomView]
    variant: str = ""  # what else shapes the pixels: vendor, size, difficulty, tissue constants

    def uid(self, part: str) -> str:
        """The study's, series' or a view's UID: a pure function of what made its pixels."""
        return derived_uid("dicomcr-phantom", self.seed, self.index, self.variant, part)

    @property
    def study_uid(self) -> str:
        return self.uid("study")

    @property
    def series_uid(self) -> str:
        return self.uid("series")

    @property
    def age_years(self) -> int:
        d, b = self.study_date, self.birth_date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))

    def dataset(self, view: PhantomView, instance_number: int) -> MammographyImage:
        """The DICOM object of one view."""
        return MammographyImage(
            view.pixels,
            photometric_interpretation=PhotometricInterpretationValues(self.photometric),
            bits_stored=self.detector.bits_stored,
            pixel_spacing_mm=self.detector.pixel_spacing_mm,
            laterality=LateralityValues(view.laterality),
            view=view.view,
            patient_id=self.patient_id,
            patient_name=self.patient_name,
            patient_birth_date=self.birth_date,
            patient_sex=PatientSexValues.F,
            patient_age_years=self.age_years,
            study_instance_uid=self.study_uid,
            study_date=self.study_date,
            study_time=self.study_time,
            study_id=f"{self.index + 1}",
            accession_number=f"PH{self.seed % 10000:04d}{self.index:06d}",
            series_instance_uid=self.series_uid,
            series_number=1,
            sop_instance_uid=self.uid(view.name),
            instance_number=instance_number,
            manufacturer=self.detector.manufacturer,
            manufacturer_model_name=self.detector.model_name,
            institution_name="DICOMCR PHANTOM",
            detector_type=self.detector.detector_type,
            window_center=view.window_center,
            window_width=view.window_width,
            voi_lut_function=self.detector.voi_lut_function,
            body_part_thickness_mm=self.thickness_mm[view.name],
            compression_force_n=80.0 + (4.0 * self.index) % 60,
            kvp=28.0 if self.detector.key == "hologic" else 29.0,
            exposure_mas=0.9 * self.thickness_mm[view.name] + 40.0,
        )


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, stream)))


def _shapes(detector: Detector, rng: np.random.Generator) -> tuple[BreastShape, BreastShape]:
    """CC and MLO outlines of one breast, sized to the detector's field of view."""
    width = detector.columns * detector.pixel_spacing_mm
    height = detector.rows * detector.pixel_spacing_mm
    depth = width * rng.uniform(0.42, 0.68)
    thickness = rng.uniform(38.0, 68.0)

    def wobble() -> tuple[tuple[float, float], ...]:
        return tuple((rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)) for _ in range(4))

    cc = BreastShape(
        view="CC",
        depth_mm=depth,
        center_y_mm=height * rng.uniform(0.46, 0.54),
        half_height_up_mm=height * rng.uniform(0.32, 0.44),
        half_height_down_mm=height * rng.uniform(0.32, 0.44),
        thickness_mm=thickness,
        wobble=wobble(),
        pectoral=None,
    )
    mlo_depth = depth * rng.uniform(1.0, 1.12)
    center = height * rng.uniform(0.54, 0.62)
    mlo = BreastShape(
        view="MLO",
        depth_mm=mlo_depth,
        center_y_mm=center,
        half_height_up_mm=height * rng.uniform(0.66, 0.80),
        half_height_down_mm=min(height * rng.uniform(0.28, 0.36), 0.97 * height - center),
        thickness_mm=thickness + rng.uniform(2.0, 8.0),
        wobble=wobble(),
        pectoral=Pectoral(
            top_mm=mlo_depth * rng.uniform(0.30, 0.55),
            side_mm=height * rng.uniform(0.35, 0.62),
            bulge=rng.uniform(0.0, 0.35),
        ),
    )
    return cc, mlo


MALIGNANT_PRESENTATIONS = (("spiculated_mass",), ("pleomorphic_calcifications",),
                           ("spiculated_mass", "pleomorphic_calcifications"))
MALIGNANT_SHARES = (0.45, 0.35, 0.20)
BENIGN_PRESENTATIONS = (("circumscribed_mass",), ("coarse_calcifications",),
                        ("scattered_calcifications",))
BENIGN_SHARES = (0.50, 0.25, 0.25)


def _lesions(finding: str, shapes: tuple[BreastShape, BreastShape], difficulty: Difficulty,
             rng: np.random.Generator, kinds: tuple[str, ...] | None = None
             ) -> tuple[Lesion, ...]:
    """The lesions of a breast with `finding`, placed where both views see them inside the breast."""
    if finding == "normal":
        return ()
    if finding == "malignant":
        drawn = MALIGNANT_PRESENTATIONS[rng.choice(3, p=MALIGNANT_SHARES)]
    else:
        drawn = BENIGN_PRESENTATIONS[rng.choice(3, p=BENIGN_SHARES)]
    kinds = kinds or drawn
    position = _place(shapes, rng)
    lesions = []
    for kind in kinds:
        lesions.append(draw_lesion(kind, position, difficulty, rng))
        # calcifications associated with a mass sit at its edge
        u, m, s = position
        position = (u + rng.uniform(-0.03, 0.03), m + rng.uniform(-0.05, 0.05), s)
    return tuple(lesions)


def _place(shapes: tuple[BreastShape, BreastShape], rng: np.random.Generator
           ) -> tuple[float, float, float]:
    for _ in range(1000):
        u, m, s = rng.uniform(0.15, 0.8), rng.uniform(-0.75, 0.75), rng.uniform(-0.75, 0.75)
        if all(shape.holds(*shape.project(u, m, s), margin=0.72) for shape in shapes):
            return float(u), float(m), float(s)
    raise RuntimeError("could not place a lesion inside both views of the breast")


def generate_study(
    seed: int, index: int, finding: str, vendor: str = "hologic", size: str = "full",
    difficulty: Difficulty | None = None, physics: Tissue | None = None,
    photometric: str | None = None, lesion_kinds: tuple[str, ...] | None = None,
) -> PhantomStudy:
    """Render the four views of study `index` of the cohort drawn with `seed`.

    `finding` is the study's ground truth: for benign and malignant studies one breast carries the
    lesion, the other is normal. `photometric` forces MONOCHROME1/2 (default: the vendor's habit);
    `lesion_kinds` forces the lesions of the affected breast (default: drawn as the cohort's mix).
    """
    if finding not in FINDINGS:
        raise ValueError(f"finding must be one of {FINDINGS}, got {finding!r}")
    if vendor not in DETECTORS:
        raise ValueError(f"vendor must be one of {sorted(DETECTORS)}, got {vendor!r}")
    if size not in SIZE_CHOICES:
        raise ValueError(f"size must be one of {SIZE_CHOICES}, got {size!r}")
    if photometric not in (None, "MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if lesion_kinds is not None:
        allowed = MALIGNANT_KINDS if finding == "malignant" else BENIGN_KINDS
        if finding == "normal" or not lesion_kinds or not set(lesion_kinds) <= set(allowed):
            raise ValueError(f"lesion_kinds {lesion_kinds} do not fit a {finding} finding; "
                             f"choose from {allowed}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    difficulty = difficulty or Difficulty()
    physics = physics or Tissue()
    forced = f"{photometric or ''}:{','.join(lesion_kinds or ())}"  # what a caller imposed
    detector = DETECTORS[vendor]
    if size == "small":
        detector = detector.scaled_down(SMALL_FACTOR)

    rng = _rng(seed, index, 0)
    density = str(rng.choice(list(DENSITY_CATEGORIES), p=DENSITY_SHARES))
    if photometric is None:
        photometric = "MONOCHROME1" if rng.uniform() < detector.monochrome1_fraction else "MONOCHROME2"
    else:
        rng.uniform()  # keep the stream identical whichever polarity is forced
    study_date = dt.date(2018, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3 * 365)))
    age_days = int(rng.integers(40 * 365, 75 * 365))
    birth_date = study_date - dt.timedelta(days=age_days)
    study_time = dt.time(int(rng.integers(8, 18)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    lesion_side = "L" if rng.uniform() < 0.5 else "R"

    breasts: dict[str, BreastTruth] = {}
    shapes: dict[str, BreastShape] = {}
    tissues: dict[str, BreastTissue] = {}
    base_density = DENSITY_CATEGORIES[density] * rng.uniform(0.85, 1.15)
    for side in ("L", "R"):
        side_rng = _rng(seed, index, 1 if side == "L" else 2)
        cc, mlo = _shapes(detector, side_rng)
        shapes[f"{side}CC"], shapes[f"{side}MLO"] = cc, mlo
        tissues[side] = BreastTissue(
            density=base_density * side_rng.uniform(0.92, 1.08),
            texture_amplitude=rng.uniform(0.4, 0.7),
            patchiness=rng.uniform(0.6, 1.2),
            subcutaneous_fat_mm=side_rng.uniform(3.0, 10.0),
            retromammary_fat_mm=side_rng.uniform(4.0, 14.0),
        )
        side_finding = finding if side == lesion_side else "normal"
        lesions = _lesions(side_finding, (cc, mlo), difficulty, side_rng, lesion_kinds)
        breasts[side] = BreastTruth(side, side_finding, lesions)

    factor = max(1, round(LOW_RES_SPACING_MM / detector.pixel_spacing_mm))
    canvas = Canvas(detector.rows, detector.columns, detector.pixel_spacing_mm)
    views = []
    for stream, (side, view) in enumerate(VIEWS, start=10):
        view_rng = _rng(seed, index, stream)
        shape = shapes[f"{side}{view}"]
        views.append(_render_view(side, view, shape, tissues[side], breasts[side].lesions, canvas,
                                  factor, detector, physics, difficulty, photometric, view_rng))
    return PhantomStudy(
        seed=seed, index=index, finding=finding, detector=detector, photometric=photometric,
        patient_id=f"PH{seed}-{index:05d}", patient_name=f"PHANTOM^S{seed}N{index:05d}",
        birth_date=birth_date, study_date=study_date, study_time=study_time, density=density,
        thickness_mm={k: round(s.thickness_mm, 1) for k, s in shapes.items()},
        breasts=breasts, views=views,
        # Everything that shapes the pixels names the UIDs: two cohorts of one seed whose mixes
        # give study `index` another finding (or a forced lesion kind or polarity) must never
        # share a UID, since caches key crops by SOP Instance UID.
        variant=f"{vendor}/{size}/{difficulty}/{physics}/{finding}/{forced}",
    )


def _render_view(side: str, view: str, shape: BreastShape, tissue: BreastTissue,
                 lesions: tuple[Lesion, ...], canvas: Canvas, factor: int, detector: Detector,
                 physics: Tissue, difficulty: Difficulty, photometric: str,
                 rng: np.random.Generator) -> PhantomView:
    low_spacing = canvas.spacing_mm * factor
    grid = (-(-canvas.rows // factor), -(-canvas.columns // factor))
    fields = breast_fields(shape, tissue, physics, grid, low_spacing, rng)
    delta = np.zeros((canvas.rows, canvas.columns), dtype=np.float32)
    mask = np.zeros((canvas.rows, canvas.columns), dtype=bool)

    def background_mu(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        where = np.stack([y.ravel() / low_spacing - 0.5, x.ravel() / low_spacing - 0.5])
        g = ndimage.map_coordinates(fields.gland, where, order=1, mode="nearest")
        return (physics.fat + (physics.gland - physics.fat) * g).reshape(x.shape)

    for lesion in lesions:
        render_lesion(lesion, shape, canvas, background_mu, physics, difficulty, delta, mask, rng)
    signal, breast = log_signal(fields, delta, factor, detector, physics, difficulty, rng)
    del delta
    mask &= breast
    curve = presentation_curve(fields, registered_range(fields, detector, physics))
    pixels = to_pixels(signal, curve, detector)
    del signal
    if side == "R":  # mirror: the right breast's chest wall is the image's right edge
        pixels, mask, breast = pixels[:, ::-1], mask[:, ::-1], breast[:, ::-1]
    center, width = voi_window(pixels, breast)
    if photometric == "MONOCHROME1":
        pixels = detector.max_value - pixels
        center = detector.max_value - center
    return PhantomView(side, view, np.ascontiguousarray(pixels), np.ascontiguousarray(mask),
                       np.ascontiguousarray(breast), center, width, shape)
