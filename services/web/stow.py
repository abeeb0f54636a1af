"""STOW-RS in: POST /dicomweb/studies and /dicomweb/studies/{StudyInstanceUID} (PS3.18 10.5, read
in the 2024d edition), `multipart/related; type="application/dicom"`, one instance per part.

Each part is streamed into storage/incoming/ as it arrives (services/web/multipart.py: never a
whole body, nor a whole part, in memory), then decided by services/receiver.accept exactly as a
C-STORE is: the same checks, durable in the spool and recorded in the job store before the
answer, quarantined with its reason when bad, Out of Resources on a full disk; the transcode loop
is woken the same way. What C-STORE takes from its request (SOP Class and Instance UID) comes
here from the part's own dataset, its header read alone (a part is taken for application/dicom
whatever its own Content-Type says: accept refuses what is not); a SOP Class or Transfer Syntax
that the DICOM port would not negotiate, or a Study Instance UID other than the URL's, fails
that part (nothing kept, as a context the SCP rejects sends nothing).

The sender's site comes from its credentials (services/web/auth.py): a site's token or client
certificate. Anyone else is an unknown sender and, like an unknown calling AE, is taken only by a
'*' site or accept_unknown_ae; otherwise refused: 401 (its credentials name no sender), or 403
for the operator's token (known, but not a sender).

Answers (PS3.18 Table 10.5.3-1), in application/dicom+json with ReferencedSOPSequence and
FailedSOPSequence (each failed item's Failure Reason as in Table I.2-2):
    200 every part stored           202 some stored, some failed     409 none stored
    400 not a multipart body, or a bad Study Instance UID in the URL (one line of text)
    415 not multipart/related; type="application/dicom"              401/403 see above
    408 the client sent nothing for node.network_timeout: what it held is freed, the part it
        was sending dropped, the connection closed (one line of text: the parts it finished
        before are stored, but not listed: send them again, a re-sent instance replaces itself)
    503 the node is stopping
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dicomcr.config import UNKNOWN_AE_POLICY, UNKNOWN_SITE, Config, Policy
from dicomcr.dicom.uids import check_uid
from dicomcr.jobs import DiskReserve
from dicomcr.outputs import is_disk_full

from ..receiver import CANNOT_UNDERSTAND, Receipt, Verdict, accept, no_space, write_or_give_back
from ..stages.receive import STORAGE_CLASSES, TRANSFER_SYNTAXES, record_receipt
from .auth import PRINCIPAL, Principal, Role, unauthorized
from .context import WebContext
from .multipart import MultipartError, MultipartScanner, PartEnd, PartStart

log = logging.getLogger("dicomcr.node")

STOW_CALLER = "STOW-RS"  # the job store's calling_ae of an instance that came over STOW-RS
SUFFIX = ".stow"  # parts being received (not *.dcm: the DICOM receiver clears those at start)
DICOM_JSON = "application/dicom+json"
MEDIA_TYPE = "application/dicom"
# Failure Reasons (0008,1197) besides the receiver's C-STORE statuses (PS3.18 Table I.2-2).
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
# A part of another study than the URL's: in the A9xx range (the data set does not match what
# was asked), the value Azure's DICOM service answers for it.
STUDY_MISMATCH = 0xA901

_SUPPORTED_CLASSES = frozenset(str(uid) for uid in STORAGE_CLASSES)
_SUPPORTED_SYNTAXES = frozenset(str(uid) for uid in TRANSFER_SYNTAXES)


class SlowClient(Exception):
    """The client sent nothing for node.network_timeout in the middle of its body."""


class Disconnected(Exception):
    """The client went away in the middle of its body."""


@dataclass(frozen=True)
class Sender:
    """The site whose policy applies to what a STOW-RS request brings."""

    site: str
    policy: Policy


def sender_of(principal: Principal, config: Config) -> Sender | None:
    """The site of a request's principal: its own for a sender; for anyone else the site that
    takes any calling AE ('*'), or the built-in default under accept_unknown_ae; None: refused."""
    if principal.role is Role.SENDER and principal.site is not None:
        site = config.site_for_name(principal.site)
        return Sender(site.name, site.policy) if site is not None else None
    site = config.site_for("")  # no AE title: only a '*' site matches
    if site is not None:
        return Sender(site.name, site.policy)
    return Sender(UNKNOWN_SITE, UNKNOWN_AE_POLICY) if config.node.accept_unknown_ae else None


@dataclass(frozen=True)
class Header:
    """What a part's dataset says of itself, read without its pixels."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    transfer_syntax: str | None


def read_header(path: Path) -> Header | None:
    """The identifying attributes of the DICOM file at `path`; None when it is not one, or says
    no SOP Class and Instance (accept then refuses it, as it refuses such a C-STORE)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        syntax = ds.file_meta.get("TransferSyntaxUID")
        header = Header(str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                        str(ds.get("StudyInstanceUID", "")), None if syntax is None else str(syntax))
    except Exception:  # a peer's bytes: whatever pydicom makes of them, it is not a header
        return None
    return header if header.sop_class_uid and header.sop_instance_uid else None


@dataclass(frozen=True)
class PartResult:
    """What became of one part: its status (SUCCESS, else the Failure Reason), why, and the
    instance it held when its header could be read."""

    status: int
    receipt: Receipt
    reason: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""

    @property
    def stored(self) -> bool:
        return self.receipt is Receipt.STORED


class IncomingPart:
    """One part as it arrives, written into storage/incoming/ up to one byte past the size limit
    (accept refuses it then, as it refuses such a C-STORE); below the disk reserve when it began,
    or once a write met a full disk, the rest is dropped and the part answered Out of
    Resources. Written from the event loop: each write is a chunk into the page cache, and the
    fsync comes later, in accept, in a worker thread."""

    def __init__(self, folder: Path, limit: int, disk: DiskReserve,
                 on_full: Callable[[BaseException], None]) -> None:
        self.limit, self.size, self._on_full = limit, 0, on_full
        self.dropped: str | None = None  # why the part is not being kept
        self.path: Path | None = None
        self._fd = -1
        space = disk.space()
        if space.low:
            self.dropped = str(space)
            return
        try:
            self._fd, name = tempfile.mkstemp(suffix=SUFFIX, dir=folder)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.dropped = f"the disk is full ({exc.strerror})"
            on_full(exc)
            return
        self.path = Path(name)

    def write(self, data: bytes) -> None:
        room = self.limit + 1 - self.size
        self.size += len(data)
        if self._fd < 0 or self.dropped is not None or room <= 0:
            return
        if (full := write_or_give_back(self._fd, memoryview(data)[:room])) is not None:
            self.dropped = f"the disk filled up while the part arrived ({full.strerror})"
            self._on_full(full)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Close and delete what was written: never acknowledged, the sender still has it."""
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class StowReceiver:
    """The node's STOW-RS receiving: opens each part's file, decides each complete part (in a
    worker thread: it fsyncs and commits) and records it as the C-STORE handler does."""

    def __init__(self, web: WebContext) -> None:
        self.web = web
        self.folder = web.ctx.storage.incoming
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f"*{SUFFIX}"):  # never acknowledged: the sender resends
            stale.unlink()

    @property
    def stopping(self) -> bool:
        return self.web.ctx.stopping.is_set()

    @property
    def timeout(self) -> float:
        return self.web.ctx.config.node.network_timeout

    def sender(self, principal: Principal) -> Sender | None:
        return sender_of(principal, self.web.ctx.config)

    @property
    def max_bytes(self) -> int:
        """The largest instance kept (node.max_instance_mb), in bytes."""
        return int(self.web.ctx.config.node.max_instance_mb * 2**20)

    def open_part(self) -> IncomingPart:
        return IncomingPart(self.folder, self.max_bytes, self.web.disk,
                            self.web.ctx.note_disk_full)

    def finish(self, part: IncomingPart, sender: Sender, study_uid: str | None) -> PartResult:
        """Decide a complete part (blocking: run it in a worker thread) and record it."""
        start = time.perf_counter()
        part.close()
        try:
            result = self._decide(part, sender, study_uid)
        finally:
            part.discard()  # whatever accept did not move into the spool or the quarantine
        self._record(result, sender, time.perf_counter() - start)
        return result

    def abandon(self, part: IncomingPart, sender: Sender, reason: str) -> PartResult:
        """A part the body ended inside (blocking): dropped, never acknowledged; its failure
        names the instance when the header had arrived."""
        part.close()
        header = read_header(part.path) if part.path is not None else None
        part.discard()
        uids = (header.sop_class_uid, header.sop_instance_uid) if header else ("", "")
        result = PartResult(CANNOT_UNDERSTAND, Receipt.REFUSED, reason, *uids)
        self._record(result, sender, 0.0)
        return result

    def _decide(self, part: IncomingPart, sender: Sender, study_uid: str | None) -> PartResult:
        if part.dropped is not None or part.path is None:
            verdict = no_space(part.dropped or "the disk is full")
            return PartResult(verdict.status, verdict.receipt, verdict.reason)
        header = read_header(part.path)
        uids = (header.sop_class_uid, header.sop_instance_uid) if header else ("", "")
        if header is not None:
            if header.sop_class_uid not in _SUPPORTED_CLASSES:
                return PartResult(SOP_CLASS_NOT_SUPPORTED, Receipt.REFUSED, f"SOP Class "
                                  f"{header.sop_class_uid or '(none)'} is not stored here", *uids)
            if header.transfer_syntax not in _SUPPORTED_SYNTAXES:
                return PartResult(TRANSFER_SYNTAX_NOT_SUPPORTED, Receipt.REFUSED, "Transfer "
                                  f"Syntax {header.transfer_syntax} is not stored here", *uids)
            if study_uid is not None and header.study_uid != study_uid:
                return PartResult(STUDY_MISMATCH, Receipt.REFUSED, f"Study Instance UID "
                                  f"{header.study_uid} is not the URL's {study_uid}", *uids)
        verdict = accept(
            part.path, sop_class_uid=uids[0], sop_instance_uid=uids[1], calling_ae=STOW_CALLER,
            site=sender.site, policy=sender.policy, storage=self.web.ctx.storage,
            store=self.web.ctx.store, max_bytes=self.max_bytes, disk=self.web.disk,
            skipped=self.web.skipped(sender.site), locks=self.web.ctx.uid_locks)
        return PartResult(verdict.status, verdict.receipt, verdict.reason, *uids)

    def _record(self, result: PartResult, sender: Sender, seconds: float) -> None:
        """Metrics, waking the transcode loop and the log line, as for a C-STORE."""
        record_receipt(self.web.ctx, Verdict(result.status, result.receipt, result.reason),
                       seconds, f"STOW-RS instance {result.sop_instance_uid or '(unknown)'} for "
                       f"site {sender.site}")


def store_response(results: list[PartResult]) -> dict:
    """The Store Instances Response Module (PS3.18 Annex I) as DICOM JSON. Retrieve URL is type 2
    and left empty: the node offers no WADO-RS to retrieve from."""
    ds = Dataset()
    ds.RetrieveURL = None
    stored = [r for r in results if r.stored]
    failed = [r for r in results if not r.stored]
    if failed:
        ds.FailedSOPSequence = [_reference(r, FailureReason=r.status) for r in failed]
    if stored:
        ds.ReferencedSOPSequence = [_reference(r, RetrieveURL=None) for r in stored]
    return ds.to_json_dict()


def _reference(result: PartResult, **more: object) -> Dataset:
    item = Dataset()
    if result.sop_instance_uid:  # unknown for a part that is no DICOM: the reason alone
        item.ReferencedSOPClassUID = result.sop_class_uid
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
    for keyword, value in more.items():
        setattr(item, keyword, value)
    return item


def http_status(results: list[PartResult]) -> int:
    """200 every part stored, 202 some, 409 none (PS3.18 Table 10.5.3-1)."""
    stored = sum(r.stored for r in results)
    return 200 if stored == len(results) else 202 if stored else 409


def refusal(status: int, line: str, **headers: str) -> PlainTextResponse:
    """A request refused as a whole: its status and one line; the connection closes (a body
    may still be on its way)."""
    return PlainTextResponse(line + "\n", status, headers={"Connection": "close", **headers})


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """A Content-Type's media type (lower case) and parameters (quotes removed)."""
    message = email.message.Message()
    message["content-type"] = header or ""
    if not header or "/" not in header:
        return "", {}
    params = {k.lower(): v for k, v in (message.get_params() or [])[1:]}
    return message.get_content_type(), params


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


def _refused(request: Request, status: int, line: str, **headers: str) -> PlainTextResponse:
    """`refusal`, said in the node's log too."""
    log.warning("STOW-RS from %s refused with %d: %s", _client(request), status, line)
    return refusal(status, line, **headers)


async def _chunks(request: Request, timeout: float) -> AsyncIterator[bytes]:
    """The request's body as it arrives; SlowClient when nothing came for `timeout` seconds,
    Disconnected when the client went away."""
    while True:
        try:
            async with asyncio.timeout(timeout):
                message = await request.receive()
        except TimeoutError:
            raise SlowClient from None
        if message["type"] == "http.disconnect":
            raise Disconnected
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


def _admit(request: Request, receiver: StowReceiver
           ) -> tuple[Sender, str | None, MultipartScanner] | Response:
    """The sender, the URL's Study Instance UID and the body's reader of a request that may go
    on; else the answer that refuses it as a whole."""
    principal: Principal = request.scope["state"][PRINCIPAL]
    sender = receiver.sender(principal)
    if sender is None:
        log.warning("STOW-RS from %s refused: its credentials name no site, and no site takes "
                    "unknown senders", _client(request))
        return unauthorized() if principal.role is not Role.OPERATOR else \
            refusal(403, "forbidden: the node's token names no site to store for")
    if receiver.stopping:
        return _refused(request, 503, "the node is stopping: send again later",
                        **{"Retry-After": "30"})
    study = request.path_params.get("study")
    if study is not None:
        try:
            check_uid(study, "the Study Instance UID in the URL")
        except ValueError as exc:
            return _refused(request, 400, str(exc))
    header = request.headers.get("content-type")
    kind, params = media_type(header)
    if kind != "multipart/related" or params.get("type", MEDIA_TYPE).lower() != MEDIA_TYPE:
        return _refused(request, 415, f'expected Content-Type multipart/related; '
                                      f'type="{MEDIA_TYPE}", got {header or "none"}')
    try:
        return sender, study, MultipartScanner(params.get("boundary", ""))
    except MultipartError as exc:
        return _refused(request, 400, str(exc))


async def store_instances(request: Request) -> Response:
    """POST /dicomweb/studies[/{study}]: each part stored as it completes, the answer for all."""
    receiver: StowReceiver = request.app.state.stow
    admitted = _admit(request, receiver)
    if isinstance(admitted, Response):
        return admitted
    sender, study, scanner = admitted
    results: list[PartResult] = []
    part: IncomingPart | None = None
    try:
        async for chunk in _chunks(request, receiver.timeout):
            for event in scanner.feed(chunk):
                if isinstance(event, PartStart):
                    part = receiver.open_part()
                elif isinstance(event, PartEnd):
                    done, part = part, None
                    assert done is not None
                    results.append(await run_in_threadpool(receiver.finish, done, sender, study))
                else:
                    assert part is not None
                    part.write(event)
        scanner.close()
    except MultipartError as exc:
        if part is not None:
            done, part = part, None
            results.append(await run_in_threadpool(receiver.abandon, done, sender, str(exc)))
        if not any(r.stored for r in results):
            return _refused(request, 400, f"not a multipart/related body: {exc}")
    except SlowClient:
        return _refused(request, 408, f"nothing arrived for {receiver.timeout:g} s: the part "
                                      "being sent was dropped")
    except Disconnected:
        log.warning("STOW-RS from %s: the client went away in the middle of its body; the part "
                    "it was sending was dropped", _client(request))
        return Response(status_code=400)  # nobody is left to read it
    finally:
        if part is not None:
            part.discard()
    if not results:
        return _refused(request, 400, "a multipart body without parts")
    return Response(json.dumps(store_response(results)), http_status(results),
                    media_type=DICOM_JSON)
