"""The paper's preprocessing keeps the breast, pairs the views and normalises both polarities."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import (
    GeometryError,
    Preprocessing,
    breast_input,
    normalise,
    resize_and_crop,
    to_view,
)
from dicomcr.experiments.run import preprocess
from dicomcr.models.modelfile import ModelInfo
from dicomcr.phantom import CohortSpec, generate_study, write_cohort


def test_the_crop_keeps_the_breast_and_the_lesion() -> None:
    p = Preprocessing()
    for vendor in ("hologic", "ge"):
        study = generate_study(12, 0, "malignant", vendor, "small")
        for view in study.views:
            breast = resize_and_crop(view.breast_mask.astype(np.float32), view.laterality,
                                     view.view, p)
            rows, cols = view.breast_mask.shape
            assert breast.shape == (round(round(rows * 0.3) * 0.8), round(cols * 0.3) // 2)
            # chest wall on the left of every crop (right views mirrored)
            assert breast[:, 0].mean() > 0.5 and breast[:, -1].mean() < breast[:, 0].mean()
            kept = breast.sum() * (1 / 0.3) ** 2
            assert kept / view.breast_mask.sum() > 0.75, view.name


def test_a_breast_input_pads_cc_and_mlo_onto_the_canvas_at_the_same_pitch() -> None:
    p = Preprocessing().with_canvas([(100, 40), (90, 40), (120, 50)])
    assert p.canvas == (120, 100) and p.model_input == (120, 100) and p.keeps_pitch
    cc = np.full((100, 40), 0.25, dtype=np.float32)
    mlo = np.full((90, 40), 0.75, dtype=np.float32)
    x = breast_input(cc, mlo, p)
    assert x.shape == (120, 100) and x.dtype == np.float32
    assert (x[:100, :40] == 0.25).all() and (x[:90, 50:90] == 0.75).all()  # not resized
    assert x[100:, :50].sum() == 0 and x[:, 40:50].sum() == 0 and x[90:, 50:].sum() == 0
    shrunk = breast_input(cc, mlo, Preprocessing(canvas=(120, 100), input_size=(60, 50)))
    assert shrunk.shape == (60, 50) and shrunk[:50, :20].mean() == pytest.approx(0.25)
    with pytest.raises(GeometryError, match="trained on smaller images"):
        breast_input(np.zeros((130, 40), dtype=np.float32), mlo, p)
    with pytest.raises(ValueError, match="derived from the data"):
        breast_input(cc, mlo, Preprocessing())


@pytest.mark.parametrize("size", [None, (64, 64)])
def test_a_map_goes_back_onto_its_view_exactly(size) -> None:
    """A spot on each view lands, through crop, mirror, pad (and shrink) and back, on itself,
    also for a smaller detector padded into a larger canvas."""
    p = Preprocessing().with_canvas([(246, 125)])  # the small Hologic's crops
    p = Preprocessing(canvas=p.canvas, input_size=size)
    for vendor in ("hologic", "ge"):
        study = generate_study(3, 0, "normal", vendor, "small")
        by = {(v.laterality, v.view): v for v in study.views}
        for side in "LR":
            spots, crops = {}, {}
            for name in ("CC", "MLO"):
                image = np.zeros(by[(side, name)].pixels.shape, dtype=np.float32)
                rows, cols = image.shape
                r, c = rows // 3, cols // 8 if side == "L" else cols - cols // 8
                image[r - 12:r + 12, c - 12:c + 12] = 1.0
                spots[name] = (r, c)
                crops[name] = resize_and_crop(image, side, name, p)
            x = breast_input(crops["CC"], crops["MLO"], p)
            for name in ("CC", "MLO"):
                back = to_view(x, by[(side, name)].pixels.shape, side, name, p)
                centre = ndimage.center_of_mass(back)  # of what came back, against the spot's
                tolerance = 2 if size is None else 6  # view pixels: 1 input pixel is 3.3 (or 13)
                assert abs(centre[0] - spots[name][0] + 0.5) <= tolerance, (vendor, side, name)
                assert abs(centre[1] - spots[name][1] + 0.5) <= tolerance, (vendor, side, name)


def test_the_default_on_a_full_size_study_is_the_30_percent_pitch(tmp_path) -> None:
    """Done when a model trained with defaults on a full-size phantom records an input at the
    30 % pitch: the defaults' preprocessing of a full-size Hologic study, as a model records it."""
    write_cohort(CohortSpec(n_studies=1, seed=0, size="full", vendor="hologic"), tmp_path)
    inputs = preprocess(read_phantom_labels(tmp_path), [1.0], Preprocessing(), tmp_path / "cache")
    p = inputs.preprocessing
    # 4096 x 3328 at 0.07 mm -> 30 %: 1229 x 998; crop 983 x 499 per view; CC + MLO: 983 x 998
    assert p.scale == 0.3 and p.canvas == (983, 998) and p.model_input == (983, 998)
    assert p.keeps_pitch and inputs[1.0].shape == (2, 983, 998) and inputs[1.0].dtype == np.float16
    recorded = ModelInfo("cnn3", {"input_size": [983, 998]}, p.as_dict(), [1.0], "x", 0.5)
    assert Preprocessing.from_dict(recorded.preprocessing) == p


def test_monochrome1_normalises_to_the_same_image() -> None:
    m2 = generate_study(8, 1, "normal", "ge", "small", photometric="MONOCHROME2").views[0]
    m1 = generate_study(8, 1, "normal", "ge", "small", photometric="MONOCHROME1").views[0]
    a = normalise(m2.pixels, 14, "MONOCHROME2")
    b = normalise(m1.pixels, 14, "MONOCHROME1")
    np.testing.assert_allclose(a, b, atol=1e-6)
    wa = normalise(m2.pixels, 14, "MONOCHROME2", (m2.window_center, m2.window_width))
    wb = normalise(m1.pixels, 14, "MONOCHROME1", (m1.window_center, m1.window_width))
    np.testing.assert_allclose(wa, wb, atol=1e-4)
    assert wa.min() >= 0.0 and wa.max() <= 1.0
    assert wa[m2.breast_mask].mean() > wa[~m2.breast_mask].mean()  # tissue bright


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="scale"):
        Preprocessing(scale=0)
    with pytest.raises(ValueError, match="input_size"):
        Preprocessing(input_size=(8, 8))
    with pytest.raises(ValueError, match="even"):
        Preprocessing(canvas=(100, 99))
    with pytest.raises(ValueError, match="laterality"):
        resize_and_crop(np.zeros((10, 10)), "B", "CC", Preprocessing())
    with pytest.raises(ValueError, match="photometric"):
        normalise(np.zeros((2, 2), dtype=np.uint16), 12, "RGB")
