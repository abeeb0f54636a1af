"""The receive stage: the SCP (pynetdicom) that acknowledges each C-STORE only once the instance is
durable in the spool and recorded in the job store (services/receiver.accept decides).

Incoming datasets are written straight to files in storage/incoming/ by IncomingFiles, which
answers a full disk with Out of Resources on the same association instead of aborting it.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)
from pynetdicom.transport import AssociationSocket

from dicomcr.config import UNKNOWN_AE_POLICY, UNKNOWN_SITE
from dicomcr.jobs import DiskReserve
from dicomcr.outputs import is_disk_full

from ..receiver import Receipt, Verdict, accept, no_space, write_or_give_back
from .context import Loop, NodeContext

log = logging.getLogger("dicomcr.node")

ONE_READ_LIMIT = 4 * 2**20  # PDUs up to this size are read into one buffer (see _read_whole)

STORAGE_CLASSES = (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
)
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K,
)


def record_receipt(ctx: NodeContext, verdict: Verdict, seconds: float, what: str) -> None:
    """After a verdict on an incoming instance (C-STORE or STOW-RS): the metrics, the transcode
    loop woken for a stored one, the log line for a refused one (`what` names it)."""
    ctx.metrics.observe("receive", seconds)
    ctx.metrics.count("received" if verdict.stored else "rejected")
    if verdict.stored:
        ctx.wake(Loop.TRANSCODE)
        return
    if verdict.receipt is Receipt.NO_SPACE:
        ctx.metrics.count("out_of_space")
    log.warning("%s answered 0x%04X: %s", what, verdict.status, verdict.reason)


class HandshakeInAssociation:
    """The server's SSLContext, handing pynetdicom sockets whose TLS handshake happens in the
    association's own thread, within the network timeout.

    pynetdicom wraps each accepted socket in its one acceptor thread (`get_request`), where a
    handshake would block every association behind a client that connects and sends nothing
    (accepted sockets block without a timeout): one idle TCP connection stopped the SCP. Here
    the handshake is left to the first read, in the thread that serves the association."""

    def __init__(self, context: ssl.SSLContext, timeout: float) -> None:
        self.context, self.timeout = context, timeout

    def wrap_socket(self, sock: socket.socket, server_side: bool = False, **_) -> ssl.SSLSocket:
        sock.settimeout(self.timeout)
        return self.context.wrap_socket(sock, server_side=server_side,
                                        do_handshake_on_connect=False)

    def __getattr__(self, name: str):
        return getattr(self.context, name)


_pynetdicom_recv = AssociationSocket.recv


def _read_whole(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv reading a PDU into one buffer of its size with recv_into, instead of
    pynetdicom's 4096-byte recv calls appended one by one: the receive stage's largest cost after
    the fsync (profiled: a 26 MiB image is 6,700 recv calls and as many appends). A length above
    ONE_READ_LIMIT (a peer that ignores the maximum PDU size the node announced) is read
    pynetdicom's way, so a length a peer merely claims never allocates that much at once."""
    if nr_bytes > ONE_READ_LIMIT:
        return _pynetdicom_recv(self, nr_bytes)
    buffer = bytearray(nr_bytes)
    with memoryview(buffer) as view:
        read = 0
        while read < nr_bytes:
            count = self.socket.recv_into(view[read:])
            if not count:  # the connection closed: what arrived, as pynetdicom returns it
                break
            read += count
    if read < nr_bytes:
        del buffer[read:]
    return buffer


class _IncomingFile:
    """The file one arriving dataset is written into; see IncomingFiles."""

    def __init__(self, folder: Path, dropped: str | None,
                 on_full: Callable[[BaseException], None]) -> None:
        self.dropped = dropped  # why the dataset is not being kept, or None
        self._on_full = on_full
        self.file = self  # pynetdicom flushes through `.file`
        try:
            self._fd, self.name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        except OSError as exc:  # not even an empty file fits: a name, and nothing kept
            if not is_disk_full(exc):
                raise
            self._fd, self.name = -1, str(folder / f"unwritten-{os.urandom(8).hex()}.dcm")
            self.dropped = f"the disk is full ({exc.strerror})"
            on_full(exc)

    def write(self, data: bytes) -> int:
        if self.dropped is None and (full := write_or_give_back(self._fd, data)) is not None:
            self.dropped = f"the disk filled up while the instance arrived ({full.strerror})"
            self._on_full(full)
        return len(data)

    def flush(self) -> None:  # unbuffered: every write is already the file's
        pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # an association aborted mid-instance never closes it
        self.close()


class IncomingFiles:
    """What pynetdicom writes each arriving C-STORE dataset into: a file in storage/incoming/.

    It takes the place of pynetdicom's NamedTemporaryFile because a write that fails there
    aborts the association, so that a full disk left every later instance without an answer.
    Here a write that meets a full disk drops the rest of that dataset instead, and a dataset
    that begins while free space is below the reserve is not written at all; the C-STORE handler
    asks `dropped` and answers Out of Resources on the same association."""

    def __init__(self, folder: Path, disk: DiskReserve,
                 on_full: Callable[[BaseException], None]) -> None:
        self.folder, self.disk, self._on_full = folder, disk, on_full
        self._lock = threading.Lock()
        self._files: weakref.WeakValueDictionary[str, _IncomingFile] = \
            weakref.WeakValueDictionary()

    def __call__(self, *_: object, **__: object) -> _IncomingFile:
        """pynetdicom's call: NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")."""
        space = self.disk.space()
        dropped = str(space) if space.low else None
        incoming = _IncomingFile(self.folder, dropped, self._on_full)
        with self._lock:
            self._files[incoming.name] = incoming
        return incoming

    def dropped(self, path: Path) -> str | None:
        """Why the dataset at `path` was not kept, or None when it arrived whole."""
        with self._lock:
            incoming = self._files.get(str(path))
        return incoming.dropped if incoming is not None else None


class ReceiveStage:
    """The SCP: `start` listens, `stop` stops accepting and lets running associations finish."""

    def __init__(self, ctx: NodeContext, disk: DiskReserve,
                 skipped: Callable[[str], str | None] = lambda site: None) -> None:
        """`skipped(site)`: why a site's studies have no inference to wait for, or None."""
        self.ctx, self.disk, self.skipped = ctx, disk, skipped
        self.incoming: IncomingFiles | None = None
        self._server = None

    def ae(self) -> AE:
        """The application entity with the node's timeouts, AE checks and contexts."""
        config = self.ctx.config
        node = config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu
        ae.acse_timeout, ae.dimse_timeout = node.acse_timeout, node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.require_called_aet = True
        if not config.accepts_any_ae:
            ae.require_calling_aet = [t for s in config.sites for t in s.calling_ae]
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        site = self.ctx.config.site_for(calling)
        if site is None:  # accepted as unknown (accept_unknown_ae): the built-in default, CR 20
            site_name, policy = UNKNOWN_SITE, UNKNOWN_AE_POLICY
        else:
            site_name, policy = site.name, site.policy
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        start = time.perf_counter()
        received = Path(event.dataset_path)
        dropped = self.incoming.dropped(received) if self.incoming else None
        if dropped is not None:
            received.unlink(missing_ok=True)
            verdict: Verdict = no_space(dropped)
        else:
            verdict = accept(
                received, sop_class_uid=str(request.AffectedSOPClassUID), sop_instance_uid=uid,
                calling_ae=calling, site=site_name, policy=policy, storage=self.ctx.storage,
                store=self.ctx.store, max_bytes=int(self.ctx.config.node.max_instance_mb * 2**20),
                disk=self.disk, skipped=self.skipped(site_name), locks=self.ctx.uid_locks)
        record_receipt(self.ctx, verdict, time.perf_counter() - start,
                       f"instance {uid} from {calling}")
        return verdict.status

    def _receive_into_files(self) -> None:
        """Have pynetdicom write each incoming dataset straight to a file in storage/incoming/
        (no copy of the image in memory; the spool rename moves no bytes), through
        IncomingFiles, which answers a full disk instead of aborting the association."""
        self.ctx.storage.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.ctx.storage.incoming.glob("*.dcm"):  # never acknowledged: the peer resends
            stale.unlink()
        _config.STORE_RECV_CHUNKED_DATASET = True
        AssociationSocket.recv = _read_whole
        self.incoming = IncomingFiles(self.ctx.storage.incoming, self.disk, self.ctx.note_disk_full)
        if hasattr(dimse_messages, "NamedTemporaryFile"):
            dimse_messages.NamedTemporaryFile = self.incoming
        else:  # another pynetdicom: its own temporary files, and a full disk aborts associations
            log.warning("pynetdicom %s writes incoming datasets its own way: a full disk will "
                        "abort associations", getattr(dimse_messages, "__version__", ""))
            tempfile.tempdir = str(self.ctx.storage.incoming)

    def start(self) -> None:
        """Listen on the configured host and port (TLS when configured), without blocking."""
        node = self.ctx.config.node
        self._receive_into_files()
        self._server = self.ae().start_server(
            (node.host, node.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            ssl_context=self._tls())

    def _tls(self) -> HandshakeInAssociation | None:
        """The server's TLS context (DICOM TLS profile: TLS 1.2 or later), when configured."""
        tls = self.ctx.config.node.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert, tls.key)
        if tls.ca is not None:  # client certificates required, checked against this CA
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(tls.ca)
        return HandshakeInAssociation(context, self.ctx.config.node.network_timeout)

    def stop(self) -> None:
        """No new associations; the running ones finish (up to the network timeout), the rest
        are aborted."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        deadline = time.monotonic() + self.ctx.config.node.network_timeout

        def running() -> list:  # released or rejected ones may linger until a timer ends
            return [a for a in server.active_associations if a.is_established]

        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:  # stalled past the timeout, or finished
            assoc.abort()
