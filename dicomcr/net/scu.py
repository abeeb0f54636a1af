"""The SCU side: C-ECHO and C-STORE to a peer, with every failure said in words.

Used by `dicomcr echo` and `dicomcr send`, and by the node's forwarder. Datasets are read without
their pixels decoded; each is offered in its own transfer syntax, plus the uncompressed ones the
peer may prefer when the file itself is uncompressed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ..dicom.source import InputError, read_dicom

MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8)


class NetworkError(ConnectionError):
    """The peer could not be reached, refused the association or aborted it."""


@dataclass(frozen=True)
class Peer:
    """Where to send: host, port, called AE title; and who we say we are."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = "DICOMCR"
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        for name in ("called_aet", "calling_aet"):
            value = getattr(self, name)
            if not value or len(value) > 16 or "\\" in value or not value.isascii():
                raise ValueError(f"{name} must be 1-16 ASCII characters, got {value!r}")

    @classmethod
    def parse(cls, address: str, called_aet: str, calling_aet: str = "DICOMCR") -> Peer:
        """From 'HOST:PORT'."""
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        return cls(host.strip("[]"), int(port), called_aet, calling_aet)

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


def _ae(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout
    ae.connection_timeout = peer.timeout
    return ae


def _associate(ae: AE, peer: Peer):
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_aet)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise NetworkError(f"{peer} rejected the association from {peer.calling_aet}")
    try:  # pynetdicom reports a failed TCP connection as an abort: tell the two apart
        socket.create_connection((peer.host, peer.port), timeout=peer.timeout).close()
    except OSError as exc:
        raise NetworkError(f"cannot connect to {peer.host}:{peer.port}: "
                           f"{exc.strerror or exc}") from exc
    raise NetworkError(f"{peer} aborted the association")


def echo(peer: Peer) -> int:
    """C-ECHO: the peer's status (0 = success), or NetworkError."""
    ae = _ae(peer)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, peer)
    try:
        status = assoc.send_c_echo()
        if not status:
            raise NetworkError(f"{peer} did not answer the C-ECHO")
        return int(status.Status)
    finally:
        assoc.release()


@dataclass(frozen=True)
class SendResult:
    """What happened to one file."""

    path: Path
    sop_instance_uid: str
    status: int | None  # the peer's C-STORE status; None when the file was not sent
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status in (0x0000, 0xB000, 0xB007, 0xB006)


def _contexts(headers: list[tuple[Path, pydicom.Dataset]]) -> dict[UID, set[UID]]:
    wanted: dict[UID, set[UID]] = {}
    for _, ds in headers:
        syntax = ds.file_meta.TransferSyntaxUID
        offered = wanted.setdefault(ds.SOPClassUID, set())
        offered.add(syntax)
        if not syntax.is_compressed:
            offered |= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    return wanted


def send(
    peer: Peer, paths: Iterable[Path], progress: Callable[[SendResult], None] | None = None,
) -> Iterator[SendResult]:
    """C-STORE every file to `peer` in one association; yield a result per file as it is sent.

    Files that are not DICOM, or lack a SOP class or instance, are reported and not sent.
    """
    headers: list[tuple[Path, pydicom.Dataset]] = []
    for path in paths:
        try:
            ds = read_dicom(path, stop_before_pixels=False, defer_size="1 KB")
            missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in ds]
            missing += [] if "TransferSyntaxUID" in ds.file_meta else ["TransferSyntaxUID"]
            if missing:
                raise InputError(f"no {' and no '.join(missing)}")
        except InputError as exc:  # an unreadable file is reported, the rest still go
            result = SendResult(Path(path), "", None, f"not sent: {exc}")
            if progress:
                progress(result)
            yield result
            continue
        headers.append((Path(path), ds))
    if not headers:
        return
    ae = _ae(peer)
    wanted = _contexts(headers)
    n_contexts = sum(len(v) for v in wanted.values())
    if n_contexts > MAX_CONTEXTS:
        raise ValueError(f"{n_contexts} presentation contexts needed, at most {MAX_CONTEXTS}: "
                         f"send fewer kinds of images at once")
    for sop_class, syntaxes in wanted.items():
        for syntax in sorted(syntaxes):
            ae.add_requested_context(sop_class, syntax)
    assoc = _associate(ae, peer)
    try:
        for path, ds in headers:
            try:
                try:
                    status = assoc.send_c_store(path)  # as encoded, when its syntax was accepted
                except ValueError:
                    if ds.file_meta.TransferSyntaxUID.is_compressed:
                        raise
                    status = assoc.send_c_store(pydicom.dcmread(path))  # re-encoded by pynetdicom
                code = int(status.Status) if status else None
                error = "" if status else "no answer from the peer (association lost)"
            except (ValueError, RuntimeError) as exc:  # e.g. no accepted context for this file
                code, error = None, str(exc)
            if code is not None and code not in (0x0000, 0xB000, 0xB007, 0xB006):
                error = f"peer answered status 0x{code:04X}"
            result = SendResult(path, str(ds.SOPInstanceUID), code, error)
            if progress:
                progress(result)
            yield result
            if not assoc.is_established:
                raise NetworkError(f"{peer} ended the association while sending")
    finally:
        if assoc.is_established:
            assoc.release()
