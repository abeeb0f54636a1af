"""JPEG 2000 at exact compression ratios, as the paper defines them, and the CR ladder.

CR = uncompressed Pixel Data bytes (Rows x Columns x Samples x BitsAllocated / 8) / codestream bytes.
OpenJPEG's rate counts BitsStored, so it is asked for CR x BitsStored / BitsAllocated; the achieved
CR is then measured on the codestream, never assumed. Every CR of a ladder comes from one encode
with a quality layer per CR (three from CR 1000 up) cut after any packet (see codestream); a target
that no cut reaches within `tolerance` gets single-layer encodes searching the asked rate, and the
closest codestream is kept. PSNR is measured only on request: it decodes every output.

How close a target can be reached is bounded by OpenJPEG's rate allocation: it keeps whole coding
passes of 64 x 64 code-blocks, chosen by one slope threshold, and at CR 5000 and above one pass of
the LL band can be 15-20 % of a 1-2 KB codestream (a full-size GE view), leaving no size near the
target.
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
TOLERANCE = 0.02  # the achieved CR is within 2 % of the target up to HIGH_CR,
HIGH_CR = 5000
HIGH_CR_TOLERANCE = 0.08  # and within 8 % above (see `tolerance`)
# Which encoder made a codestream: raised whenever a change makes the same image and target give
# other bytes, so that caches of decoded images and experiment folds made before are redone.
# 2: one layered encode, cuts at any packet boundary, no PLT marker in the output (issue 14).
CODEC_REVISION = 2
MIN_CODESTREAM_BYTES = 256  # below this a target CR is out of reach: headers alone take ~100 bytes
LOSSLESS_PSNR = 100.0  # the paper's label for a perfect reconstruction


@dataclass(frozen=True)
class Encoded:
    """One output image: its codestream and what it achieved."""

    codestream: bytes
    target_cr: float | None  # None for lossless
    achieved_cr: float  # measured on the codestream, never assumed
    psnr_db: float | None = None  # only when asked for: it costs a decode

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


def encode_lossless(pixels: np.ndarray, bits_stored: int, bits_allocated: int = 16, *,
                    psnr: bool = False) -> Encoded:
    """Reversible JPEG 2000 (5/3 wavelet), for transfer syntax 1.2.840.10008.1.2.4.90.

    With `psnr`, psnr_db is the paper's label for a perfect copy (no decode is needed)."""
    pixels = _pixels_for_codec(pixels, bits_stored)
    stream = encode_array(pixels, bits_stored=bits_stored, photometric_interpretation=2)
    return Encoded(stream, None, uncompressed_bytes(pixels, bits_allocated) / len(stream),
                   LOSSLESS_PSNR if psnr else None)


def tolerance(cr: float) -> float:
    """How far the achieved CR may lie from a target: 2 % up to CR 5000, 8 % above (at 10K and
    11K a full-size GE image is under 2 KB, and OpenJPEG's coding passes are too coarse there)."""
    return TOLERANCE if cr <= HIGH_CR else HIGH_CR_TOLERANCE


def encode_ladder(
    pixels: np.ndarray, bits_stored: int, targets: Sequence[float], bits_allocated: int = 16, *,
    psnr: bool = False,
) -> list[Encoded]:
    """Lossy JPEG 2000 at every target CR, from one layered encode (plus searches if needed).

    Returns one Encoded per distinct target, highest CR first; each codestream is standalone and
    its achieved CR measured. Each is within `tolerance` of its target where OpenJPEG's coding
    passes allow it, else the closest found. psnr_db is None unless `psnr` (which decodes every
    output).
    """
    pixels = _pixels_for_codec(pixels, bits_stored)
    raw = uncompressed_bytes(pixels, bits_allocated)
    wanted = check_targets(targets, raw)
    best: dict[float, bytes] = {}

    def keep(cr: float, stream: bytes) -> None:
        if cr not in best or abs(raw / len(stream) - cr) < abs(raw / len(best[cr]) - cr):
            best[cr] = stream

    def missed(cr: float) -> bool:
        return abs(raw / len(best[cr]) / cr - 1) > tolerance(cr)

    # Pass 1: one encode, a layer per target, bracketed from CR 1000 up, where OpenJPEG's rate
    # control jumps (one coding pass there can be 10-20 % of the codestream). Every packet
    # boundary is a cut: denser candidates than the layers alone.
    stream = _encode(pixels, bits_stored, bits_allocated,
                     [cr * f for cr in wanted for f in _factors(cr)], plt=True)
    layout = parse(stream)
    sizes = np.array(layout.cut_sizes())
    for cr in wanted:
        keep(cr, layout.cut(int(np.argmin(np.abs(raw / sizes - cr))) + 1))
    del stream, layout
    # Pass 2, only for targets still missed (a few high CRs, more often on small images): the
    # achieved CR is a step function of the asked one, so single-layer encodes search it, the
    # asked rate corrected by what the last one achieved until the target is bracketed, then
    # bisected, until one lies within the tolerance.
    for cr in [cr for cr in wanted if missed(cr)]:
        asked, below, above = cr, None, None  # asked rates that achieved below / above cr
        for _ in range(SEARCH_STEPS):
            if below and above and above / below < 1 + GAP:
                break  # a gap in OpenJPEG's reachable sizes: the closest side is kept
            stream = _encode(pixels, bits_stored, bits_allocated, [asked])
            keep(cr, stream)
            if not missed(cr):
                break
            achieved = raw / len(stream)
            if achieved < cr:
                below = asked
            else:
                above = asked
            asked = (below * above) ** 0.5 if below and above else asked * cr / achieved
    return [Encoded(best[cr], cr, raw / len(best[cr]),
                    _psnr_of(pixels, best[cr]) if psnr else None) for cr in wanted]


def _encode(pixels: np.ndarray, bits_stored: int, bits_allocated: int, crs: list[float],
            plt: bool = False) -> bytes:
    """One lossy encode with a quality layer per CR (the paper's CRs, any order)."""
    rates = _strictly_decreasing([cr * bits_stored / bits_allocated
                                  for cr in sorted(crs, reverse=True)])
    return encode_array(pixels, bits_stored=bits_stored, photometric_interpretation=2,
                        compression_ratios=rates, add_plt=plt)


def _psnr_of(pixels: np.ndarray, codestream: bytes) -> float:
    return psnr(pixels, decode(codestream))


BRACKET = (1.03, 1.0, 0.97)
BRACKET_FROM_CR = 1000
SEARCH_STEPS = 6  # single-layer encodes at most per target missed by the layered encode
GAP = 0.01  # asked rates this close that achieve both sides of a target: a gap, stop there


def _factors(cr: float) -> tuple[float, ...]:
    """The layers asked for one target in the layered encode, as factors of its CR (each layer
    costs OpenJPEG a rate search: 18 layers for the paper's ladder, about 15 % of the encode)."""
    return BRACKET if cr >= BRACKET_FROM_CR else (1.0,)


def _strictly_decreasing(rates: list[float]) -> list[float]:
    """OpenJPEG wants strictly decreasing layer rates of at least 1."""
    out: list[float] = []
    for rate in rates:
        if out and rate >= out[-1]:
            rate = out[-1] * 0.999
        out.append(max(rate, 1.0 + 1e-3 * (len(rates) - len(out))))
    return out
