"""The paper's preprocessing keeps the breast, pairs the views and normalises both polarities."""

from __future__ import annotations

import numpy as np
import pytest

from dicomcr.data.preprocess import Preprocessing, breast_input, normalise, resize_and_crop
from dicomcr.phantom import generate_study


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


def test_a_breast_input_is_cc_then_mlo_at_the_fixed_size() -> None:
    p = Preprocessing(input_size=(128, 160))
    cc = np.zeros((100, 40), dtype=np.float32)
    mlo = np.ones((90, 40), dtype=np.float32)
    x = breast_input(cc, mlo, p)
    assert x.shape == (128, 160) and x.dtype == np.float32
    assert x[:, :60].mean() < 0.05 and x[:, -60:].mean() > 0.95


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
    with pytest.raises(ValueError, match="laterality"):
        resize_and_crop(np.zeros((10, 10)), "B", "CC", Preprocessing())
    with pytest.raises(ValueError, match="photometric"):
        normalise(np.zeros((2, 2), dtype=np.uint16), 12, "RGB")
