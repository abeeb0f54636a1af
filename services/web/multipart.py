"""A streaming reader of multipart bodies (RFC 2046 5.1, as multipart/related uses it, RFC 2387):
fed the body chunk by chunk as it arrives, it says where each part begins (with its headers),
hands on the part's bytes, and says where it ends. It keeps no more than one chunk and a
delimiter's length of the body, whatever the size of a part: a 26 MB instance goes straight
from the socket to its file (services/web/stow.py).

Why not a library: the standard library's email parser wants the whole body in memory, and
python-multipart, which streams, is not a dependency of the project; a hundred lines around
`bytes.find` do the scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

MAX_PREAMBLE = 64 * 1024  # bytes before the first boundary: beyond this, not a multipart body
MAX_HEADERS = 16 * 1024  # the header block of one part
MAX_PADDING = 1024  # spaces and tabs allowed after a boundary, before its line ends
# RFC 2046 allows 70 characters; Orthanc's DICOMweb plugin sends 73 (two UUIDs): be liberal.
MAX_BOUNDARY = 256


class MultipartError(ValueError):
    """A body that is not the multipart body its Content-Type says; the message says what."""


@dataclass(frozen=True)
class PartStart:
    """A part begins; its header fields, names in lower case."""

    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartEnd:
    """The part that began last is complete (its closing delimiter arrived)."""


Event = PartStart | bytes | PartEnd  # bytes: the next piece of the current part's content


class _State(Enum):
    PREAMBLE = "preamble"  # before the first boundary
    DELIMITER = "delimiter"  # just after a boundary: "--" closes the body, CRLF opens a part
    HEADERS = "headers"  # a part's header block
    BODY = "body"  # a part's content
    EPILOGUE = "epilogue"  # after the closing boundary: ignored


def _pieces(lines: list[str]) -> dict[str, str]:
    """Header lines ("Name: value", a line that starts with a space continuing the one before)."""
    headers: dict[str, str] = {}
    name = None
    for line in lines:
        if line[:1] in (" ", "\t") and name is not None:
            headers[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"a part's header line is not 'Name: value': {line[:80]!r}")
        name = name.strip().lower()
        headers[name] = value.strip()
    return headers


class MultipartScanner:
    """Reads one multipart body: `feed` each chunk as it arrives and act on the events it returns,
    then `close` at the end of the body (MultipartError when the closing boundary never came).
    The content of a part comes as `bytes` events between its PartStart and its PartEnd."""

    def __init__(self, boundary: str) -> None:
        if not 1 <= len(boundary) <= MAX_BOUNDARY:
            raise MultipartError(f"a multipart boundary of {len(boundary)} characters: 1 to "
                                 f"{MAX_BOUNDARY} are read (RFC 2046 says 70)")
        self.boundary = boundary
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # The first boundary may open the body without the CRLF that precedes every later one:
        # with one in front, every boundary looks the same.
        self._buffer = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self._preamble = 0
        self.parts = 0  # parts begun so far

    @property
    def in_part(self) -> bool:
        """Whether the body has stopped inside a part (between its PartStart and PartEnd)."""
        return self._state in (_State.HEADERS, _State.BODY)

    def feed(self, data: bytes) -> list[Event]:
        """The events the body's next chunk completes."""
        self._buffer += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body has ended: MultipartError unless it ended with its closing boundary."""
        if self._state is _State.PREAMBLE:
            raise MultipartError(f"no boundary --{self.boundary} in the body: not a multipart body")
        if self._state is not _State.EPILOGUE:
            raise MultipartError(f"the body ended before its closing boundary --{self.boundary}--")

    # -- one step of the state machine: True when it moved on and may move again -------------
    def _step(self, events: list[Event]) -> bool:
        buffer = self._buffer
        if self._state is _State.PREAMBLE:
            found = buffer.find(self._delimiter)
            if found < 0:
                drop = len(buffer) - (len(self._delimiter) - 1)
                if drop > 0:
                    self._preamble += drop
                    del buffer[:drop]
                if self._preamble > MAX_PREAMBLE:
                    raise MultipartError(f"no boundary --{self.boundary} in the first "
                                         f"{MAX_PREAMBLE // 1024} KiB: not a multipart body")
                return False
            del buffer[:found + len(self._delimiter)]
            self._state = _State.DELIMITER
            return True
        if self._state is _State.DELIMITER:
            padding = 0
            while padding < len(buffer) and buffer[padding] in b" \t":
                padding += 1
            if padding > MAX_PADDING:
                raise MultipartError("a boundary line that does not end")
            if len(buffer) < padding + 2:
                return False
            after = bytes(buffer[padding:padding + 2])
            if after == b"--":
                buffer.clear()
                self._state = _State.EPILOGUE
                return False
            if after != b"\r\n":
                raise MultipartError(f"a boundary --{self.boundary} followed by neither a line "
                                     "end nor '--'")
            del buffer[:padding + 2]
            self._state = _State.HEADERS
            return True
        if self._state is _State.HEADERS:
            if buffer[:2] == b"\r\n":  # no header fields
                end, skip = 0, 2
            else:
                end, skip = buffer.find(b"\r\n\r\n"), 4
                if end < 0:
                    if len(buffer) > MAX_HEADERS:
                        raise MultipartError(f"a part's headers exceed {MAX_HEADERS // 1024} KiB")
                    return False
            lines = bytes(buffer[:end]).decode("latin-1").split("\r\n") if end else []
            del buffer[:end + skip]
            events.append(PartStart(_pieces(lines)))
            self.parts += 1
            self._state = _State.BODY
            return True
        if self._state is _State.BODY:
            found = buffer.find(self._delimiter)
            if found < 0:
                ready = len(buffer) - (len(self._delimiter) - 1)  # the rest may begin a delimiter
                if ready > 0:
                    with memoryview(buffer) as view:
                        events.append(bytes(view[:ready]))
                    del buffer[:ready]
                return False
            if found:
                with memoryview(buffer) as view:
                    events.append(bytes(view[:found]))
            del buffer[:found + len(self._delimiter)]
            events.append(PartEnd())
            self._state = _State.DELIMITER
            return True
        buffer.clear()  # the epilogue
        return False
