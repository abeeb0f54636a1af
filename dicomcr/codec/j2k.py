"""JPEG 2000 at exact compression ratios, as the paper defines them, and the CR ladder.

CR = uncompressed Pixel Data bytes (Rows x Columns x Samples x BitsAllocated / 8) / codestream bytes.
OpenJPEG's rate counts BitsStored, so it is asked for CR x BitsStored / BitsAllocated; the achieved
CR is then measured, never assumed. Every CR of a ladder comes from one encode with one quality layer
per CR (see codestream); where OpenJPEG's rate control misses a target by more than the tolerance
(it does at high CRs), the missed layers are asked again with corrected rates and the closest cut
from any pass is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import openjpeg
from openjpeg.utils import encode_array

from .codestream import parse

PAPER_LADDER: tuple[int, ...] = (15, 20, 25, 50, 100, 500, 1000, 5000, 10000, 11000)
PAPER_CRS: tuple[float, ...] = (1.0, *map(float, PAPER_LADDER))  # the paper's table: 1 + ten lossy
CRS_SYNTAX = "CRs are 'paper' (1 and the paper's ten lossy CRs), '1,20,1000' or a range '1-11000'"
TOLERANCE = 0.02  # the achieved CR is within 2 % of the target
MIN_CODESTREAM_BYTES = 256  # below this a target CR is out of reach: headers alone take ~100 bytes
LOSSLESS_PSNR = 100.0  # the paper's label for a perfect reconstruction


@dataclass(frozen=True)
class Encoded:
    """One output image: its codestream and what it achieved."""

    codestream: bytes
    target_cr: float | None  # None for lossless
    achieved_cr: float
    psnr_db: float

    @property
    def lossless(self) -> bool:
        return self.target_cr is None

    @property
    def error(self) -> float:
        """Relative error of the achieved CR against the target (0 for lossless)."""
        return 0.0 if self.target_cr is None else self.achieved_cr / self.target_cr - 1.0


def uncompressed_bytes(pixels: np.ndarray, bits_allocated: int) -> int:
    """Rows x Columns x Samples x BitsAllocated / 8: the numerator of the paper's CR."""
    return int(pixels.size * bits_allocated // 8)


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """The paper's Eq. 1: 10 log10(MAX^2 / MSE) with MAX = 2^16 - 1; 100 for a perfect copy."""
    if original.shape != decoded.shape:
        raise ValueError(f"shapes differ: {original.shape} and {decoded.shape}")
    # Row blocks in integers: exact, and no full-size float copies of a 27 MB image.
    squared = 0
    step = max(1, (1 << 20) // max(original.shape[-1], 1))
    for start in range(0, original.shape[0], step):
        diff = original[start:start + step].astype(np.int64) - decoded[start:start + step]
        squared += int(np.einsum("ij,ij->", diff, diff))
    mse = squared / original.size
    if mse == 0.0:
        return LOSSLESS_PSNR
    return float(10.0 * np.log10((2**16 - 1) ** 2 / mse))


def decode(codestream: bytes) -> np.ndarray:
    """Decode a JPEG 2000 codestream with OpenJPEG (via pylibjpeg-openjpeg)."""
    return openjpeg.decode(codestream)


def cr_short(cr: float) -> str:
    """11000 -> 11K, 20 -> 20: the paper's way of writing CRs (figures, tables)."""
    return f"{cr / 1000:g}K" if cr >= 1000 else f"{cr:g}"


def check_ratio(cr: float) -> float:
    """A target CR as a float, or ValueError: it must be finite and above 1."""
    cr = float(cr)
    if not np.isfinite(cr) or cr <= 1.0:
        raise ValueError(f"compression ratio must be > 1 (use lossless for 1), got {cr:g}")
    return cr


def parse_crs(values: Sequence[str]) -> list[float]:
    """The CRs that one or more `--cr` values name, sorted and each once; ValueError if bad.

    Each value is a CR ('20'), a comma list ('1,20,1000'), a range of the paper's CRs ('1-11000',
    both ends included) or 'paper' (1 and the paper's ten lossy CRs). 1 stands for the original
    image; every other CR must pass `check_ratio`. Repeated values add up, none is dropped."""
    crs: list[float] = []
    for value in values:
        text = value.strip()
        try:
            if text == "paper":
                named = list(PAPER_CRS)
            elif "-" in text.lstrip("-"):
                lo, hi = (float(v) for v in text.split("-", 1))
                named = [c for c in PAPER_CRS if lo <= c <= hi]
            else:
                named = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{CRS_SYNTAX}, got {value!r}") from None
        if not named:
            raise ValueError(f"{value!r} names no CR ({CRS_SYNTAX})")
        crs += [c if c == 1.0 else check_ratio(c) for c in named]
    if not crs:
        raise ValueError(f"no CR given ({CRS_SYNTAX})")
    return sorted(set(crs))


def highest_ratio(raw_bytes: int) -> int:
    """The highest CR an image of `raw_bytes` uncompressed bytes can be written at: its
    codestream keeps at least MIN_CODESTREAM_BYTES."""
    return raw_bytes // MIN_CODESTREAM_BYTES


def target_problems(targets: Sequence[float], raw_bytes: int) -> dict[float, str]:
    """{target: why it cannot be made} for the targets an image of `raw_bytes` cannot reach
    (not above 1, or beyond `highest_ratio`); each target is judged on its own."""
    problems: dict[float, str] = {}
    for target in targets:
        try:
            cr = check_ratio(target)
        except ValueError as exc:
            problems[float(target)] = str(exc)
            continue
        if cr > highest_ratio(raw_bytes):
            problems[cr] = (
                f"compression ratio {cr:g} is out of reach for this image: its {raw_bytes} bytes "
                f"would become {raw_bytes / cr:.0f}, below the {MIN_CODESTREAM_BYTES} bytes of a "
                f"minimal codestream (highest possible here: {highest_ratio(raw_bytes)})")
    return problems


def check_targets(targets: Sequence[float], raw_bytes: int) -> list[float]:
    """Validate target CRs for an image of `raw_bytes`; return them sorted, highest first.
    ValueError names the first target that cannot be made (`target_problems` judges each)."""
    if not targets:
        raise ValueError("no target compression ratio given")
    problems = target_problems(targets, raw_bytes)
    if problems:
        raise ValueError(next(iter(problems.values())))
    return sorted({float(cr) for cr in targets}, reverse=True)


def _pixels_for_codec(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    if pixels.ndim != 2:
        raise ValueError(f"expected a single-frame monochrome image, got shape {pixels.shape}")
    if pixels.dtype.kind not in "ui" or pixels.dtype.itemsize > 2:
        raise ValueError(f"expected 8- or 16-bit integer pixels, got {pixels.dtype}")
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 1..16, got {bits_stored}")
    return np.ascontiguousarray(pixels)


def encode_lossless(pixels: np.ndarray, bits_stored: int, bits_allocated: int = 16) -> Encoded:
    """Reversible JPEG 2000 (5/3 wavelet), for transfer syntax 1.2.840.10008.1.2.4.90."""
    pixels = _pixels_for_codec(pixels, bits_stored)
    stream = encode_array(pixels, bits_stored=bits_stored, photometric_interpretation=2)
    return Encoded(stream, None, uncompressed_bytes(pixels, bits_allocated) / len(stream),
                   LOSSLESS_PSNR)


def encode_ladder(
    pixels: np.ndarray, bits_stored: int, targets: Sequence[float], bits_allocated: int = 16,
    tolerance: float = TOLERANCE, with_psnr: bool = True,
) -> list[Encoded]:
    """Lossy JPEG 2000 at every target CR from one layered encode (plus corrections if needed).

    Returns one Encoded per distinct target, highest CR first. Each codestream is standalone.
    """
    pixels = _pixels_for_codec(pixels, bits_stored)
    raw = uncompressed_bytes(pixels, bits_allocated)
    wanted = check_targets(targets, raw)
    best: dict[float, bytes] = {}

    def encode(asked: list[float], todo: list[float]) -> float:
        """One encode with a layer per asked CR; keep, per target, the closest cut so far.
        Returns the CR of the whole codestream (that of its last layer)."""
        rates = _strictly_decreasing([cr * bits_stored / bits_allocated
                                      for cr in sorted(asked, reverse=True)])
        stream = encode_array(pixels, bits_stored=bits_stored, photometric_interpretation=2,
                              compression_ratios=rates, add_plt=True)
        layout = parse(stream)
        # Every packet boundary is a cut: far denser candidates than the layers alone.
        sizes = np.array([layout.cut_size(n) for n in range(1, len(layout.packet_lengths) + 1)])
        for cr in todo:
            n = int(np.argmin(np.abs(raw / sizes - cr))) + 1
            if cr not in best or abs(raw / sizes[n - 1] - cr) < abs(raw / len(best[cr]) - cr):
                best[cr] = layout.cut(n)
        return raw / len(stream)

    def missed(todo: list[float]) -> list[float]:
        return [cr for cr in todo if abs(raw / len(best[cr]) / cr - 1) > tolerance / 2]

    # Pass 1: a layer per target, bracketed where OpenJPEG's rate control is erratic.
    # Pass 2, only for targets still missed: a dense sweep of layers around each of them.
    todo = list(wanted)
    for sweep in (False, True):
        encode([cr * f for cr in todo for f in _factors(cr, sweep)], todo)
        todo = missed(todo)
        if not todo:
            break
    # Pass 3, for what is still missed (a few high CRs of small images, where the layers of a
    # many-layer encode jump past the target): single-layer encodes, the asked rate corrected by
    # what the last one achieved until the target is bracketed, then bisected.
    for cr in todo:
        asked, below, above = cr, None, None  # asked rates that achieved below / above cr
        for _ in range(SEARCH_STEPS):
            achieved = encode([asked], [cr])
            if not missed([cr]):
                break
            if achieved < cr:
                below = asked
            else:
                above = asked
            asked = (below * above) ** 0.5 if below and above else asked * cr / achieved
    out = []
    for cr in wanted:
        stream = best[cr]
        quality = psnr(pixels, decode(stream)) if with_psnr else float("nan")
        out.append(Encoded(stream, cr, raw / len(stream), quality))
    return out


BRACKET = (1.1, 1.05, 1.0, 0.95, 0.9)
SWEEP = tuple(float(f) for f in np.geomspace(1.4, 0.7, 20))
BRACKET_FROM_CR = 1000
SEARCH_STEPS = 8  # single-layer encodes at most per target still missed after the sweep


def _factors(cr: float, sweep: bool) -> tuple[float, ...]:
    if sweep:
        return SWEEP
    return BRACKET if cr >= BRACKET_FROM_CR else (1.0,)


def _strictly_decreasing(rates: list[float]) -> list[float]:
    """OpenJPEG wants strictly decreasing layer rates of at least 1."""
    out: list[float] = []
    for rate in rates:
        if out and rate >= out[-1]:
            rate = out[-1] * 0.999
        out.append(max(rate, 1.0 + 1e-3 * (len(rates) - len(out))))
    return out
