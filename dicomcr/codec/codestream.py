"""JPEG 2000 codestream surgery: read the layer structure, cut a standalone codestream after a layer.

A lossy encode with one quality layer per target CR, LRCP progression and PLT markers (packet
lengths) lets every CR of a ladder be taken from one encode: the packets of layer k are contiguous,
so the codestream truncated after them, with the layer count in COD and the tile-part length in SOT
rewritten, the PLT dropped (or rewritten) and EOC appended, is a valid codestream of k + 1 layers
(ISO 15444-1 A.4-A.7).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOC, SOT, SOD, EOC = 0xFF4F, 0xFF90, 0xFF93, 0xFFD9
SIZ, COD, PLT = 0xFF51, 0xFF52, 0xFF58


class CodestreamError(ValueError):
    """The bytes are not a JPEG 2000 codestream this module can read."""


@dataclass(frozen=True)
class Layout:
    """Where things are in a single-tile, single-tile-part, LRCP codestream with PLT markers."""

    main_header: bytes  # SOC .. up to the SOT, COD included
    cod_layers_offset: int  # byte offset of COD's 16-bit layer count inside main_header
    layers: int
    progression: int  # 0 = LRCP
    tile_index: int
    packet_lengths: tuple[int, ...]
    data: bytes  # the tile-part's packet data (after SOD)

    @property
    def packets_per_layer(self) -> int:
        return len(self.packet_lengths) // self.layers

    def truncated(self, layer: int) -> bytes:
        """A standalone codestream holding layers 0..`layer`."""
        if not 0 <= layer < self.layers:
            raise ValueError(f"layer must be in 0..{self.layers - 1}, got {layer}")
        return self.cut((layer + 1) * self.packets_per_layer)

    def _cut_plan(self, packets: int) -> tuple[int, list[int]]:
        if not 0 < packets <= len(self.packet_lengths):
            raise ValueError(f"packets must be in 1..{len(self.packet_lengths)}, got {packets}")
        per_layer = self.packets_per_layer
        layers = -(-packets // per_layer)
        # The rest of a partly kept layer becomes empty packets (one 0x00 byte each): a valid
        # packet that includes no code-block, so the cut can fall between any two packets.
        padding = layers * per_layer - packets
        return layers, list(self.packet_lengths[:packets]) + [1] * padding

    def cut_sizes(self) -> list[int]:
        """Bytes of `cut(n)` for n = 1 .. every packet, exact (a cut carries no PLT)."""
        fixed = len(self.main_header) + 12 + 2 + 2  # main header, SOT, SOD, EOC
        per_layer = self.packets_per_layer
        sizes, data = [], 0
        for n, length in enumerate(self.packet_lengths, 1):
            data += length
            sizes.append(fixed + data + (-n) % per_layer)  # the padding's empty packets
        return sizes

    def cut_size(self, packets: int, plt: bool = False) -> int:
        """Bytes of `cut(packets, plt)` without building it: exact without PLT, within a few
        bytes with a PLT that needs several marker segments (over 64 KiB of lengths)."""
        _, lengths = self._cut_plan(packets)
        size = len(self.main_header) + 12 + 2 + sum(lengths) + 2
        if plt:
            lengths_bytes = sum(len(_encode_length(v)) for v in lengths)
            size += lengths_bytes + 5 * (1 + lengths_bytes // 0xFFF0)  # segment headers
        return size

    def cut(self, packets: int, plt: bool = False) -> bytes:
        """A standalone codestream holding the first `packets` packets (LRCP order); with `plt`,
        a PLT marker lists their lengths (optional in ISO 15444-1: outputs go without it, a few
        bytes saved where a whole image is 1-2 KB)."""
        layers, lengths = self._cut_plan(packets)
        header = bytearray(self.main_header)
        struct.pack_into(">H", header, self.cod_layers_offset, layers)
        markers = _plt_segments(lengths) if plt else b""
        body = self.data[: sum(self.packet_lengths[:packets])]
        body += b"\x00" * (len(lengths) - packets)
        psot = 12 + len(markers) + 2 + len(body)  # SOT segment, PLT, SOD, data
        sot = struct.pack(">HHHIBB", SOT, 10, self.tile_index, psot, 0, 1)
        return (bytes(header) + sot + markers + struct.pack(">H", SOD) + body
                + struct.pack(">H", EOC))


def _read_plt(payload: bytes) -> list[int]:
    values, current = [], 0
    for byte in payload:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            values.append(current)
            current = 0
    if current:
        raise CodestreamError("PLT ends inside a packet length")
    return values


def _encode_length(value: int) -> bytes:
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def _plt_segments(lengths: tuple[int, ...] | list[int]) -> bytes:
    """PLT marker segments (each at most 65535 bytes long) listing `lengths`."""
    out, chunk, index = bytearray(), bytearray(), 0
    for value in lengths:
        encoded = _encode_length(value)
        if 3 + len(chunk) + len(encoded) > 0xFFFF:
            out += struct.pack(">HHB", PLT, 3 + len(chunk), index) + chunk
            chunk, index = bytearray(), index + 1
        chunk += encoded
    out += struct.pack(">HHB", PLT, 3 + len(chunk), index) + chunk
    return bytes(out)


def _main_header(cs: bytes) -> tuple[int, int, int, int]:
    """(end of the main header, COD's layer-count offset, layers, progression)."""
    if len(cs) < 4 or struct.unpack_from(">H", cs, 0)[0] != SOC:
        raise CodestreamError("not a JPEG 2000 codestream (no SOC marker)")
    pos, cod_offset, layers, progression = 2, None, None, None
    while True:
        if pos + 4 > len(cs):
            raise CodestreamError("codestream ends inside its main header")
        marker, length = struct.unpack_from(">HH", cs, pos)
        if marker == SOT:
            break
        if marker & 0xFF00 != 0xFF00 or length < 2:
            raise CodestreamError(f"corrupt main header at byte {pos}")
        if marker == COD:
            progression = cs[pos + 5]
            layers = struct.unpack_from(">H", cs, pos + 6)[0]
            cod_offset = pos + 6
        pos += 2 + length
    if cod_offset is None or layers is None or progression is None:
        raise CodestreamError("codestream has no COD marker")
    return pos, cod_offset, layers, progression


def coding_style(codestream: bytes) -> tuple[int, int]:
    """(progression order, quality layers) from the COD marker; 0 is LRCP."""
    _, _, layers, progression = _main_header(bytes(codestream))
    return progression, layers


def parse(codestream: bytes) -> Layout:
    """Read the layer layout of a codestream written with PLT markers (see j2k)."""
    cs = bytes(codestream)
    pos, cod_offset, layers, progression = _main_header(cs)
    main_header = cs[:pos]
    _, lsot, tile, psot, tpsot, tnsot = struct.unpack_from(">HHHIBB", cs, pos)
    if tpsot != 0 or tnsot not in (0, 1):
        raise CodestreamError("only single tile-part codestreams can be cut into layers")
    tile_start, pos = pos, pos + 2 + lsot
    lengths: list[int] = []
    while True:
        if pos + 2 > len(cs):
            raise CodestreamError("codestream ends inside a tile-part header")
        marker = struct.unpack_from(">H", cs, pos)[0]
        if marker == SOD:
            pos += 2
            break
        seg = struct.unpack_from(">H", cs, pos + 2)[0]
        if marker == PLT:
            lengths += _read_plt(cs[pos + 5: pos + 2 + seg])
        pos += 2 + seg
    end = tile_start + psot if psot else len(cs) - 2
    data = cs[pos:end]
    if not lengths:
        raise CodestreamError("codestream has no PLT marker: packet boundaries are unknown")
    if len(lengths) % layers or sum(lengths) != len(data):
        raise CodestreamError("PLT packet lengths do not match the tile-part's data")
    return Layout(main_header, cod_offset, layers, progression, tile, tuple(lengths), data)
