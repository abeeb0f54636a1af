"""The phantom looks like a mammogram where it matters: layout, lesions, polarity, texture, mix."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from dicomcr.phantom import CohortMix, CohortSpec, Difficulty, PhantomStudy, generate_study

LESION_CASES = [  # (index, finding, lesion kinds): every lesion type of the phantom
    (0, "malignant", ("spiculated_mass",)),
    (1, "malignant", ("pleomorphic_calcifications",)),
    (2, "malignant", ("spiculated_mass", "pleomorphic_calcifications")),
    (3, "benign", ("circumscribed_mass",)),
    (4, "benign", ("coarse_calcifications",)),
    (5, "benign", ("scattered_calcifications",)),
]


@cache
def _study(index: int, finding: str, kinds: tuple[str, ...] | None, vendor: str = "hologic",
           contrast: float = 1.0, photometric: str | None = "MONOCHROME2") -> PhantomStudy:
    difficulty = Difficulty(mass_contrast=contrast, calc_contrast=contrast)
    return generate_study(21, index, finding, vendor, "small", difficulty,
                          photometric=photometric, lesion_kinds=kinds)


def test_breast_lies_against_the_chest_wall_edge_the_paper_keeps() -> None:
    """Left views: breast on the left; right views: on the right (the paper's crop keeps it)."""
    for vendor in ("hologic", "ge"):
        study = _study(7, "normal", None, vendor)
        for view in study.views:
            breast = view.breast_mask
            half = breast.shape[1] // 2
            kept = breast[:, :half] if view.laterality == "L" else breast[:, half:]
            assert kept.sum() / breast.sum() > 0.9, view.name
            wall = breast[:, 0] if view.laterality == "L" else breast[:, -1]
            assert wall.mean() > 0.5, view.name  # the breast meets the chest-wall edge
            far = breast[:, -1] if view.laterality == "L" else breast[:, 0]
            assert far.mean() == 0.0, view.name  # and never the opposite edge
            assert not view.lesion_mask.any()


def test_pectoral_muscle_is_bright_in_the_upper_chest_wall_corner_of_mlo_only() -> None:
    study = _study(7, "normal", None)
    for view in study.views:
        pixels = view.pixels.astype(float)
        rows, cols = pixels.shape
        corner = pixels[: rows // 12, : cols // 12]
        if view.laterality == "R":
            corner = pixels[: rows // 12, -cols // 12:]
        breast = np.median(pixels[view.breast_mask])
        if view.view == "MLO":
            assert corner.mean() > breast, view.name
        else:
            assert corner.mean() < breast, view.name  # air or thin tissue, no muscle in CC


@pytest.mark.parametrize(("index", "finding", "kinds"), LESION_CASES)
def test_lesion_in_both_views_of_its_breast_inside_the_breast(index, finding, kinds) -> None:
    study = _study(index, finding, kinds)
    twin = _study(index, finding, kinds, contrast=1e-6)  # same anatomy, lesion invisible
    side = next(s for s, b in study.breasts.items() if b.lesions)
    assert study.breasts[side].finding == finding
    assert tuple(lesion.kind for lesion in study.breasts[side].lesions) == kinds
    for view, plain in zip(study.views, twin.views, strict=True):
        mask = view.lesion_mask
        if view.laterality != side:
            assert not mask.any(), view.name
            assert np.array_equal(view.pixels, plain.pixels)
            continue
        assert mask.any(), view.name
        assert (mask & ~view.breast_mask).sum() == 0, view.name
        added = view.pixels.astype(float) - plain.pixels.astype(float)
        # The lesion makes its pixels brighter, and nothing changes away from it.
        assert added[mask].max() > 50 and added[mask].mean() > 1, view.name
        outside = ~ndimage.binary_dilation(mask, iterations=6)
        assert np.abs(added[outside]).max() <= 1, view.name


@pytest.mark.parametrize(("index", "finding", "kinds"), LESION_CASES)
def test_both_views_agree_on_the_lesions_distance_from_the_chest_wall(index, finding, kinds):
    """CC and MLO see a lesion at the same fraction of the nipple distance (triangulation)."""
    study = _study(index, finding, kinds)
    side = next(s for s, b in study.breasts.items() if b.lesions)
    depth_fraction = {}
    for view in study.views:
        if view.laterality != side:
            continue
        cols = np.nonzero(view.lesion_mask)[1]
        breast_cols = np.nonzero(view.breast_mask)[1]
        if side == "L":
            from_wall, depth = cols.mean(), breast_cols.max()
        else:
            width = view.breast_mask.shape[1]
            from_wall, depth = width - 1 - cols.mean(), width - 1 - breast_cols.min()
        depth_fraction[view.view] = from_wall / depth
    assert abs(depth_fraction["CC"] - depth_fraction["MLO"]) < 0.12, depth_fraction


def test_difficulty_scales_lesion_conspicuity() -> None:
    kinds = ("pleomorphic_calcifications",)
    plain = _study(1, "malignant", kinds, contrast=1e-6)
    added = {}
    for contrast in (0.5, 1.0):
        study = _study(1, "malignant", kinds, contrast=contrast)
        view = next(v for v in study.views if v.lesion_mask.any())
        twin = next(v for v in plain.views if v.name == view.name)
        added[contrast] = (view.pixels.astype(float) - twin.pixels)[view.lesion_mask].sum()
    assert 1.6 < added[1.0] / added[0.5] < 2.4, added
    with pytest.raises(ValueError, match="mass_contrast"):
        Difficulty(mass_contrast=0)


def test_monochrome1_is_the_same_anatomy_inverted() -> None:
    mono2 = _study(8, "malignant", None, "ge", photometric="MONOCHROME2")
    mono1 = _study(8, "malignant", None, "ge", photometric="MONOCHROME1")
    top = 2**14 - 1
    for v1, v2 in zip(mono1.views, mono2.views, strict=True):
        np.testing.assert_array_equal(v1.pixels.astype(int), top - v2.pixels.astype(int))
        np.testing.assert_array_equal(v1.lesion_mask, v2.lesion_mask)
        assert v1.window_center == top - v2.window_center
        assert v1.window_width == v2.window_width
        # In MONOCHROME1 dense tissue has low stored values: the breast is darker than the air.
        assert v1.pixels[v1.breast_mask].mean() < v1.pixels[~v1.breast_mask].mean()


def test_ge_writes_part_of_its_studies_as_monochrome1_and_hologic_none() -> None:
    ge = {generate_study(3, i, "normal", "ge", "small").photometric for i in range(6)}
    assert ge == {"MONOCHROME1", "MONOCHROME2"}
    hologic = {generate_study(3, i, "normal", "hologic", "small").photometric for i in range(3)}
    assert hologic == {"MONOCHROME2"}


def _power_law_exponent(image: np.ndarray, spacing_mm: float) -> float:
    """Slope of the radially averaged power spectrum between 0.1 and 0.8 cycles/mm."""
    n = image.shape[0]
    window = np.hanning(n)[:, None] * np.hanning(n)[None, :]
    power = np.abs(np.fft.fft2((image - image.mean()) * window)) ** 2
    f = np.fft.fftfreq(n, d=spacing_mm)
    radius = np.hypot(f[:, None], f[None, :])
    edges = np.logspace(np.log10(0.1), np.log10(0.8), 12)
    xs, ys = [], []
    for lo, hi in itertools.pairwise(edges):
        ring = (radius >= lo) & (radius < hi)
        xs.append(np.log(radius[ring].mean()))
        ys.append(np.log(power[ring].mean()))
    return -float(np.polyfit(xs, ys, 1)[0])


def test_texture_has_a_mammographic_power_law_spectrum() -> None:
    """beta about 3, as measured on real mammograms (Burgess et al. 2001)."""
    for index, vendor in ((0, "hologic"), (1, "ge"), (2, "hologic")):
        study = generate_study(9, index, "normal", vendor, "small")
        view = study.views[0]  # LCC
        spacing = study.detector.pixel_spacing_mm
        n = int(40 / spacing) // 2 * 2  # a 40 mm square inside the breast
        rows, cols = np.nonzero(view.breast_mask)
        cy, cx = int(rows.mean()), int(np.percentile(cols, 30))
        patch = view.pixels[cy - n // 2: cy + n // 2, cx - n // 2: cx + n // 2].astype(float)
        assert view.breast_mask[cy - n // 2: cy + n // 2, cx - n // 2: cx + n // 2].all()
        assert 2.5 < _power_law_exponent(patch, spacing) < 3.5


def test_noise_is_present_and_seeded() -> None:
    a = _study(7, "normal", None)
    b = generate_study(21, 7, "normal", "hologic", "small", photometric="MONOCHROME2")
    np.testing.assert_array_equal(a.views[0].pixels, b.views[0].pixels)
    other = generate_study(22, 7, "normal", "hologic", "small", photometric="MONOCHROME2")
    assert not np.array_equal(a.views[0].pixels, other.views[0].pixels)
    # Pixel-to-pixel differences inside the breast: quantum noise, not a smooth rendering.
    view = a.views[0]
    diff = np.diff(view.pixels.astype(float), axis=1)[view.breast_mask[:, 1:]]
    assert diff.std() > 3


def test_label_mix_follows_the_papers_cohort() -> None:
    assert CohortMix().counts(100) == {"normal": 62, "benign": 19, "malignant": 19}
    assert CohortMix().counts(4) == {"normal": 2, "benign": 1, "malignant": 1}
    findings = CohortSpec(n_studies=9111, seed=1).findings()
    shares = {f: findings.count(f) / len(findings) for f in ("normal", "benign", "malignant")}
    assert shares == pytest.approx({"normal": 0.62, "benign": 0.19, "malignant": 0.19}, abs=1e-3)
    assert findings != CohortSpec(n_studies=9111, seed=2).findings()  # shuffled by the seed
    with pytest.raises(ValueError, match="sum to 1"):
        CohortMix(normal=0.5, benign=0.5, malignant=0.5)


def test_malignant_and_benign_studies_draw_every_lesion_type() -> None:
    """Without forcing, the mix of presentations covers every kind of the issue's list."""
    kinds = set()
    for index in range(12):
        for finding in ("malignant", "benign"):
            study = generate_study(5, index, finding, "ge", "small")
            kinds |= {lesion.kind for b in study.breasts.values() for lesion in b.lesions}
    assert kinds == {"spiculated_mass", "pleomorphic_calcifications", "circumscribed_mass",
                     "coarse_calcifications", "scattered_calcifications"}


def test_generate_study_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="finding"):
        generate_study(0, 0, "suspicious")
    with pytest.raises(ValueError, match="vendor"):
        generate_study(0, 0, "normal", vendor="siemens")
    with pytest.raises(ValueError, match="size"):
        generate_study(0, 0, "normal", size="huge")
    with pytest.raises(ValueError, match="lesion_kinds"):
        generate_study(0, 0, "benign", lesion_kinds=("spiculated_mass",))
