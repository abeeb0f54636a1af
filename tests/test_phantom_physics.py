"""The default phantom is physically plausible: lesions the detector registers, never clipped."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicomcr.phantom import DETECTORS, Difficulty, PhantomStudy, Tissue, generate_study
from dicomcr.phantom.anatomy import ViewFields
from dicomcr.phantom.detector import log_signal, presentation_curve, registered_range
from dicomcr.phantom.params import DIFFICULTIES, PHYSICAL

SEED = 13  # densities of its first studies: c b a a b c ...; 20 a, 26 d, 34 d, 36 d
CASES = {  # vendor -> (study index, finding, lesion kinds); each vendor sees densities a to d
    "ge": [
        (26, "benign", ("coarse_calcifications",)),  # the densest lesion over dense tissue
        (2, "benign", ("circumscribed_mass",)),  # the largest mass, in a fatty breast
        (3, "malignant", ("spiculated_mass",)),
        (0, "malignant", ("spiculated_mass", "pleomorphic_calcifications")),
        (34, "malignant", ("pleomorphic_calcifications",)),
        (1, "benign", ("scattered_calcifications",)),
    ],
    "hologic": [
        (36, "benign", ("coarse_calcifications",)),
        (20, "benign", ("circumscribed_mass",)),
        (1, "malignant", ("spiculated_mass", "pleomorphic_calcifications")),
        (0, "benign", ("scattered_calcifications",)),
    ],
}


def _lesion_views(study: PhantomStudy):
    return [v for v in study.views if v.lesion_mask.any()]


def _monochrome2(study: PhantomStudy, pixels: np.ndarray) -> np.ndarray:
    top = study.detector.max_value
    return top - pixels.astype(int) if study.photometric == "MONOCHROME1" else pixels.astype(int)


@pytest.mark.parametrize("vendor", sorted(CASES))
def test_no_lesion_pixel_reaches_the_detectors_range_at_the_default(vendor: str) -> None:
    """Full size, the default difficulty, every lesion type, densities a to d: no pixel inside a
    lesion mask is stored at 0 or at 2^BitsStored - 1, and masses are brighter in their centre
    than at their margin (the chord of an ellipsoid), not flat-topped."""
    densities = set()
    for index, finding, kinds in CASES[vendor]:
        study = generate_study(SEED, index, finding, vendor, "full", lesion_kinds=kinds)
        densities.add(study.density)
        top = study.detector.max_value
        for view in _lesion_views(study):
            inside = view.pixels[view.lesion_mask]
            assert inside.min() > 0 and inside.max() < top, (kinds, study.density, view.name)
            if "mass" not in kinds[0]:
                continue
            pixels = _monochrome2(study, view.pixels)
            depth = ndimage.distance_transform_edt(view.lesion_mask)
            core = pixels[depth > 0.6 * depth.max()]
            rim = pixels[(depth > 0) & (depth < 0.2 * depth.max())]
            assert core.mean() > rim.mean() + 0.02 * top, (kinds, view.name)
            assert len(np.unique(core)) > 50, (kinds, view.name)  # a profile, not a plateau
    assert densities == {"a", "b", "c", "d"}


def test_the_default_is_the_physics_and_conspicuous_lesions_are_beyond_the_detector() -> None:
    """The check above bites: the old default's coarse calcifications (eight times calcium's
    attenuation, twice the size) lie beyond the detector's range and are stored at its maximum."""
    assert Difficulty() == PHYSICAL == Difficulty.named("physical")
    assert PHYSICAL.name == "physical" and Difficulty(mass_contrast=2.0).name is None
    conspicuous = Difficulty.named("Conspicuous")
    assert conspicuous == DIFFICULTIES["conspicuous"] == Difficulty(3.0, 8.0, 2.0)
    study = generate_study(SEED, 26, "benign", "ge", "full", conspicuous,
                           photometric="MONOCHROME2", lesion_kinds=("coarse_calcifications",))
    view = _lesion_views(study)[0]
    assert (view.pixels[view.lesion_mask] == study.detector.max_value).mean() > 0.05
    with pytest.raises(ValueError, match="unknown difficulty 'hard'; choose one of physical"):
        Difficulty.named("hard")


def test_pixels_behind_a_lesion_are_noisier() -> None:
    """Fewer photons reach the detector behind a lesion: N exp(-delta), so its quantum noise grows
    by exp(delta / 2); and the detector registers up to ln(N x heel / read noise) above the
    reference, which the tone curve maps to the stored maximum."""
    detector, physics = DETECTORS["ge"], Tissue()
    shape = (200, 200)
    fields = ViewFields(attenuation=np.full(shape, 3.0, np.float32),
                        equalization=np.zeros(shape, np.float32), breast=np.ones(shape, bool),
                        gland=np.zeros(shape, np.float32), reference_attenuation=3.0)
    delta = np.zeros(shape, np.float32)
    delta[:, 100:] = 2.0
    signal, _ = log_signal(fields, delta, 1, detector, physics, PHYSICAL, np.random.default_rng(0))
    n0 = physics.detector_fluence_per_mm2 * detector.pixel_spacing_mm**2
    n = n0 * (1.0 - 0.25 * (np.arange(200) + 0.5) / 200)  # the heel effect across the columns
    n[100:] *= np.exp(-2.0)
    variance = 1.0 / n + (detector.electronic_noise / n) ** 2
    assert signal[:, :100].var() == pytest.approx(variance[:100].mean(), rel=0.05)
    assert signal[:, 100:].var() == pytest.approx(variance[100:].mean(), rel=0.05)  # e^2 larger
    n = n0 * 0.75
    assert registered_range(fields, detector, physics) == pytest.approx(
        3.0 + np.log(n / detector.electronic_noise))
    xs, ys = presentation_curve(fields, registered_range(fields, detector, physics))
    assert xs[-1] == pytest.approx(registered_range(fields, detector, physics), rel=1e-5)
    assert ys[-1] == 1.0 and (np.diff(ys) > 0).all() and (np.diff(xs) > 0).all()
