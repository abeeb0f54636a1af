"""High compression ratios genuinely destroy small calcifications, as in real mammograms."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import openjpeg
from openjpeg.utils import encode_array

from dicomcr.phantom import Difficulty, generate_study
from dicomcr.phantom.params import PHYSICAL


def _j2k_roundtrip(pixels: np.ndarray, bits_stored: int, cr: float) -> tuple[np.ndarray, float]:
    """Encode at the paper's CR (uncompressed 16-bit bytes / codestream bytes) and decode."""
    rate = cr * bits_stored / 16  # OpenJPEG's rate counts BitsStored, the paper's CR 16 bits
    stream = encode_array(pixels, bits_stored=bits_stored, photometric_interpretation=2,
                          compression_ratios=[rate])
    return openjpeg.decode(stream), pixels.size * 2 / len(stream)


def test_calcifications_survive_cr_20_and_vanish_at_cr_5000() -> None:
    """Full-resolution GE view (0.1 mm): how much of the calcifications' signal is retained.

    At the default difficulty, the physics alone: the claim is about calcifications of real size
    and density."""
    assert Difficulty() == PHYSICAL
    args = dict(seed=5, index=0, finding="malignant", vendor="ge", size="full",
                photometric="MONOCHROME2", lesion_kinds=("pleomorphic_calcifications",))
    study = generate_study(**args)
    twin = generate_study(**args, difficulty=replace(Difficulty(), calc_contrast=1e-6))  # none
    view, plain = next((v, t) for v, t in zip(study.views, twin.views, strict=True)
                       if v.lesion_mask.any())
    signal = view.pixels.astype(float) - plain.pixels
    spots = np.abs(signal) > 0.5
    assert spots.sum() > 20  # the calcifications themselves, a few hundred pixels
    retained = {}
    for cr in (20, 5000):
        decoded, achieved = _j2k_roundtrip(view.pixels, study.detector.bits_stored, cr)
        # OpenJPEG's rate control overshoots at high CRs (the transcoder corrects that).
        assert 0.98 < achieved / cr < 1.25, achieved
        kept = (decoded.astype(float) - plain.pixels)[spots]
        retained[cr] = float(kept @ signal[spots] / (signal[spots] @ signal[spots]))
    print(retained)
    assert retained[20] > 0.9, retained
    assert retained[5000] < 0.2, retained
