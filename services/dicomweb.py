"""STOW-RS out (PS3.18 10.5): how the forwarder stores objects at a `dicomweb:` destination.

httpx, not dicomweb-client: dicomweb-client's `store_instances` takes pydicom Datasets, encodes
them again and builds the whole multipart body in memory, and raises on a 4xx/5xx without the
per-instance answer; here the files go as they are, streamed. Each request is
`POST {dicomweb}/studies`, `multipart/related; type="application/dicom"`, one part per file read
in CHUNK_BYTES pieces (never a whole file, nor a whole body, in memory), with its Content-Length
computed beforehand (no chunked transfer encoding, which some servers refuse). A batch goes in
requests of at most REQUEST_BYTES (a larger file alone), and an object that failed before goes
in a request of its own: Orthanc 1.10 stops storing a request's parts at one its Lua filter
raises on, and a bad instance must not hold the others back.

Every answer is read, whatever its status, for the Store Instances Response (DICOM JSON):
    named in FailedSOPSequence        failed, with its Failure Reason (retried by the forwarder)
    named in ReferencedSOPSequence    stored (with or without a Warning Reason)
    named in neither                  failed: not stored (Orthanc 1.10 answers 200 and leaves
                                      out the parts after one that its Lua filter raised on)
Without such a body: a 200 with no body at all is every part stored (PS3.18); anything else (a
200 with an HTML page, any other status) fails every part, said with the status and the start of
the body (the credentials are never shown). A connection that fails or times out raises
NetworkError: the forwarder retries the parts not yet answered, as for a DICOM peer that is down.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from dicomcr.config import AuthScheme, DicomWebDestination, read_secret
from dicomcr.dicom.source import InputError, read_dicom
from dicomcr.net.scu import ClientTLS, NetworkError, SendResult

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
CHUNK_BYTES = 1 << 20  # read from a file and handed to the socket at a time
REQUEST_BYTES = 64 << 20  # a request carries files up to this many bytes (a larger one alone)
ANSWER_BYTES = 4 << 20  # the most of an answer read (a Store Instances Response is kilobytes)
EXCERPT_CHARS = 200  # of a body that is no Store Instances Response, quoted in the error

# Store Instances Response attributes (PS3.18 Annex I), as DICOM JSON keys.
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"

# PS3.18 Table I.2-2 where it says more than the C-STORE status of the same code.
_REASONS = {0xC122: "Referenced Transfer Syntax not supported"}


def reason_text(code: int) -> str:
    """A Failure or Warning Reason in words: "0xC000 (Cannot Understand)"."""
    meaning = _REASONS.get(code) or STORAGE_SERVICE_CLASS_STATUS.get(code, ("", "unknown"))[1]
    return f"0x{code:04X} ({meaning})"


@dataclass(frozen=True)
class Part:
    """One file to store: its SOP Instance UID (how the answer names it) and size."""

    path: Path
    sop_instance_uid: str
    size: int


def read_part(path: Path) -> Part:
    """The file as a part; InputError when it is not a DICOM file (Part 10, with a transfer
    syntax in its meta header) with a SOP Instance UID, which no server could store."""
    ds = read_dicom(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    if "TransferSyntaxUID" not in ds.file_meta or not ds.get("SOPInstanceUID"):
        raise InputError("no Transfer Syntax UID or no SOP Instance UID")
    return Part(Path(path), str(ds.SOPInstanceUID), Path(path).stat().st_size)


def requests_of(parts: Sequence[Part], alone: Collection[Path] = ()) -> list[list[Part]]:
    """The parts grouped into requests: up to REQUEST_BYTES each, in order, and each part of
    `alone` (those that failed before) in a request of its own."""
    groups: list[list[Part]] = []
    current: list[Part] = []
    for part in parts:
        if part.path in alone:
            groups.append([part])
            continue
        if current and sum(p.size for p in current) + part.size > REQUEST_BYTES:
            groups.append(current)
            current = []
        current.append(part)
    if current:
        groups.append(current)
    return groups


def _value(item: object, tag: str) -> object:
    """The first value of `tag` in a DICOM JSON object, or None."""
    element = item.get(tag) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _reason(item: object, tag: str) -> int | None:
    value = _value(item, tag)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class StoreAnswer:
    """What a Store Instances Response says, by SOP Instance UID."""

    failed: dict[str, int | None]  # Failure Reason of each failed instance (None: not given)
    stored: frozenset[str]  # the instances stored (with or without a Warning Reason)

    @classmethod
    def parse(cls, body: bytes) -> StoreAnswer | None:
        """The answer in a DICOM JSON body, or None when the body is no Store Instances
        Response (whatever its Content-Type says: Orthanc's 400 carries none)."""
        try:
            answer = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(answer, dict) or not {FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE} & \
                answer.keys():
            return None

        def items(tag: str) -> list:
            element = answer.get(tag)
            values = element.get("Value") if isinstance(element, dict) else None
            return values if isinstance(values, list) else []

        failed = {str(uid): _reason(item, FAILURE_REASON) for item in items(FAILED_SOP_SEQUENCE)
                  if (uid := _value(item, REFERENCED_SOP_INSTANCE_UID))}
        stored = frozenset(str(uid) for item in items(REFERENCED_SOP_SEQUENCE)
                           if (uid := _value(item, REFERENCED_SOP_INSTANCE_UID)))
        return cls(failed, stored)


def excerpt(body: bytes) -> str:
    """The start of a body, on one line, for an error message."""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if not text:
        return "(no body)"
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def results_of(parts: Sequence[Part], status: int, phrase: str, body: bytes,
               url: str) -> list[SendResult]:
    """What one request's answer (`status`, its reason `phrase`, its `body`) says of each part."""
    said = f"{url} answered {status}{f' {phrase}' if phrase else ''}"
    answer = StoreAnswer.parse(body)
    results = []
    for part in parts:
        uid = part.sop_instance_uid
        if answer is None:
            # A bare 200 is every instance stored (PS3.18); a 200 with another body (a login
            # page, a proxy's) is not taken for one.
            ok = status == 200 and not body.strip()
            error = "" if ok else f"{said}: {excerpt(body)}"
            results.append(SendResult(part.path, uid, 0 if ok else None, error))
        elif uid in answer.failed:
            reason = answer.failed[uid]
            why = "no Failure Reason given" if reason is None else \
                f"Failure Reason {reason_text(reason)}"
            results.append(SendResult(part.path, uid, None, f"{said}: failed, {why}"))
        elif uid in answer.stored:
            results.append(SendResult(part.path, uid, 0))
        else:
            results.append(SendResult(part.path, uid, None,
                                      f"{said} without naming it: not stored"))
    return results


def _stream(parts: Sequence[Part], boundary: str) -> tuple[int, Iterator[bytes]]:
    """The multipart body's length and its bytes, read from the files as they are sent."""
    heads = [f"--{boundary}\r\nContent-Type: {DICOM}\r\nContent-Length: {part.size}\r\n\r\n"
             .encode() for part in parts]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(head) + part.size + 2 for head, part in zip(heads, parts, strict=True))
    length += len(tail)

    def body() -> Iterator[bytes]:
        for head, part in zip(heads, parts, strict=True):
            yield head
            with open(part.path, "rb") as file:
                sent = 0
                while sent < part.size and (chunk := file.read(min(CHUNK_BYTES,
                                                                   part.size - sent))):
                    sent += len(chunk)
                    yield chunk
            if sent != part.size:  # the file shrank since it was measured: the length is wrong
                raise OSError(f"{part.path} changed while it was sent")
            yield b"\r\n"
        yield tail

    return length, body()


class StowClient:
    """STOW-RS to one `dicomweb:` destination, for one round of the forwarder (its connections
    reused between requests; close it, or use `with`). `name`: the destination's key, which
    errors about its credentials name. The credentials and TLS files are read here, at each
    round: a renewed token or certificate needs no restart."""

    def __init__(self, destination: DicomWebDestination, name: str, timeout: float) -> None:
        self.url = f"{destination.dicomweb}/studies"
        self.headers = {"Accept": DICOM_JSON}
        auth = destination.auth
        if auth is not None:
            key = f"destinations.{name}.auth"
            if auth.scheme is AuthScheme.BEARER:
                self.headers["Authorization"] = \
                    f"Bearer {read_secret(auth.token_file, auth.token_env, f'{key}.token')}"
            else:
                password = read_secret(auth.password_file, auth.password_env, f"{key}.password")
                login = base64.b64encode(f"{auth.user}:{password}".encode()).decode()
                self.headers["Authorization"] = f"Basic {login}"
        verify: object = True
        if destination.dicomweb.lower().startswith("https://"):
            tls = destination.tls
            verify = (ClientTLS(verify_hostname=True) if tls is None else
                      ClientTLS(tls.ca, tls.cert, tls.key, tls.verify_hostname)).context()
        self.timeout = timeout
        self.http = httpx.Client(verify=verify, timeout=timeout, follow_redirects=False)

    def __enter__(self) -> StowClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, paths: Sequence[Path], alone: Collection[Path] = ()) -> Iterator[SendResult]:
        """Store every file; yield a result per file as its request is answered. A file that is
        no DICOM file is reported and not sent. NetworkError when the destination cannot be
        reached or does not answer in time (the files of the results yielded before are done)."""
        parts = []
        for path in paths:
            try:
                parts.append(read_part(path))
            except (InputError, OSError) as exc:
                yield SendResult(Path(path), "", None, f"not sent: {exc}")
        for group in requests_of(parts, alone):
            yield from self._post(group)

    def _post(self, parts: Sequence[Part]) -> list[SendResult]:
        boundary = secrets.token_hex(16)
        length, body = _stream(parts, boundary)
        headers = {**self.headers, "Content-Length": str(length),
                   "Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}'}
        try:
            with self.http.stream("POST", self.url, content=body, headers=headers) as response:
                answer = b""
                for chunk in response.iter_bytes():
                    answer += chunk[:ANSWER_BYTES - len(answer)]
                    if len(answer) >= ANSWER_BYTES:
                        break
        except httpx.TimeoutException as exc:
            raise NetworkError(f"{self.url} did not answer within {self.timeout:g} s "
                               f"({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise NetworkError(f"cannot store at {self.url}: {exc or type(exc).__name__}") from exc
        return results_of(parts, response.status_code, response.reason_phrase, answer, self.url)
