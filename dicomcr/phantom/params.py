"""The phantom's knobs in one place: detectors, tissue physics, lesion difficulty and cohort mix.

Every number that shapes the synthetic cohort lives here, so that the ML issues can tune the
task's difficulty without touching the rendering code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SMALL_FACTOR = 4
"""`--size small` divides rows and columns by this factor (and multiplies the pixel spacing)."""


@dataclass(frozen=True)
class Detector:
    """A full-field digital mammography detector as the paper's two vendors build them."""

    key: str
    manufacturer: str
    model_name: str
    rows: int
    columns: int
    pixel_spacing_mm: float
    bits_stored: int
    detector_type: str  # DICOM (0018,7004): DIRECT (a-Se) or SCINTILLATOR (CsI)
    voi_lut_function: str  # DICOM (0028,1056)
    monochrome1_fraction: float  # share of studies written as MONOCHROME1
    electronic_noise: float  # detector read noise, in X-ray quanta per pixel (1 sd)

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1

    def scaled_down(self, factor: int) -> Detector:
        """The same detector binned by `factor`: fewer, larger pixels, same field of view."""
        if factor < 1:
            raise ValueError(f"scale factor must be >= 1, got {factor}")
        return replace(
            self,
            rows=round(self.rows / factor),
            columns=round(self.columns / factor),
            pixel_spacing_mm=self.pixel_spacing_mm * factor,
        )


DETECTORS: dict[str, Detector] = {
    # Hologic Selenia Dimensions: 3328 columns x 4096 rows at 70 um, a-Se, 12 bits.
    "hologic": Detector(
        key="hologic",
        manufacturer="HOLOGIC, Inc.",
        model_name="Selenia Dimensions",
        rows=4096,
        columns=3328,
        pixel_spacing_mm=0.07,
        bits_stored=12,
        detector_type="DIRECT",
        voi_lut_function="LINEAR",
        monochrome1_fraction=0.0,
        electronic_noise=3.0,
    ),
    # GE Senographe DS: 1914 columns x 2294 rows at 100 um, CsI scintillator, 14 bits.
    "ge": Detector(
        key="ge",
        manufacturer="GE MEDICAL SYSTEMS",
        model_name="Senographe DS",
        rows=2294,
        columns=1914,
        pixel_spacing_mm=0.1,
        bits_stored=14,
        detector_type="SCINTILLATOR",
        voi_lut_function="SIGMOID",
        monochrome1_fraction=0.5,
        electronic_noise=6.0,
    ),
}
VENDOR_CHOICES = ("hologic", "ge", "mixed")
SIZE_CHOICES = ("full", "small")


@dataclass(frozen=True)
class Tissue:
    """Linear attenuation coefficients (1/mm) near 20 keV (Johns & Yaffe 1987; Hubbell & Seltzer)."""

    fat: float = 0.0456
    gland: float = 0.0802
    skin: float = 0.0800
    muscle: float = 0.0850
    carcinoma: float = 0.0880
    benign_mass: float = 0.0840
    calcification: float = 1.20  # calcium oxalate-like, conservative next to hydroxyapatite
    skin_thickness_mm: float = 1.5
    texture_beta: float = 3.0  # power-law exponent of the fibroglandular texture (Burgess 2001)
    # Photons per mm^2 reaching the detector behind the breast, held constant by the AEC.
    detector_fluence_per_mm2: float = 2.5e5


@dataclass(frozen=True)
class Difficulty:
    """How hard the lesions are to see: the task's difficulty is a parameter, not an accident.

    Contrasts multiply the physical attenuation difference of the lesion against the tissue it
    replaces; sizes multiply the lesion dimensions in millimetres; noise multiplies the quantum
    and read noise. The default, all 1.0 (`PHYSICAL`), is the physics alone: lesions of real size
    and attenuation, which the detector registers without reaching the ends of its range, so that
    what a model sees, and what compression erases, is what it would be on real mammograms.
    """

    mass_contrast: float = 1.0
    calc_contrast: float = 1.0
    size_scale: float = 1.0
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mass_contrast", "calc_contrast", "size_scale", "noise_scale"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Difficulty.{name} must be > 0, got {value}")

    @classmethod
    def named(cls, name: str) -> Difficulty:
        """The difficulty called `name` (see DIFFICULTIES), e.g. from `dicomcr phantom --difficulty`."""
        try:
            return DIFFICULTIES[name.strip().lower()]
        except KeyError:
            raise ValueError(f"unknown difficulty {name!r}; choose one of "
                             f"{', '.join(DIFFICULTIES)}") from None

    @property
    def name(self) -> str | None:
        """The name of this difficulty in DIFFICULTIES, if it has one."""
        return next((k for k, v in DIFFICULTIES.items() if v == self), None)


PHYSICAL = Difficulty()
"""The physics alone: the default."""

DIFFICULTIES: dict[str, Difficulty] = {
    "physical": PHYSICAL,
    # The default before issue 13, tuned for CNN3 on a 256 x 256 input with a few hundred studies
    # on a CPU (README, "How the defaults were chosen"); kept to compare with those runs. Its
    # masses are three times as attenuating as tissue allows and its calcifications eight times:
    # many of their pixels lie beyond the detector's registered range and are stored at its maximum.
    "conspicuous": Difficulty(mass_contrast=3.0, calc_contrast=8.0, size_scale=2.0),
}


@dataclass(frozen=True)
class CohortMix:
    """Share of studies per finding; the default is the paper's cohort (5672 / 1686 / 1754)."""

    normal: float = 0.62
    benign: float = 0.19
    malignant: float = 0.19

    def __post_init__(self) -> None:
        shares = (self.normal, self.benign, self.malignant)
        if any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"cohort mix must be non-negative and sum to 1, got {shares}")

    def counts(self, n_studies: int) -> dict[str, int]:
        """Exact finding counts for n studies (largest remainder), so small cohorts keep the mix."""
        shares = {"normal": self.normal, "benign": self.benign, "malignant": self.malignant}
        raw = {k: v * n_studies for k, v in shares.items()}
        counts = {k: int(v) for k, v in raw.items()}
        left = n_studies - sum(counts.values())
        for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:left]:
            counts[k] += 1
        return counts
