"""The SCU side: C-ECHO and C-STORE to a peer, with every failure said in words.

Used by `dicomcr echo` and `dicomcr send`, and by the node's forwarder. Datasets are read without
their pixels decoded; each is offered in its own transfer syntax, plus the uncompressed ones the
peer may prefer when the file itself is uncompressed. With a `ClientTLS` the association runs over
TLS 1.2 or later; a failed handshake, and TLS on one side only, are said as such. A file whose SOP
class and transfer syntax the peer accepted no presentation context for is reported by their names.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ..dicom.source import InputError, read_dicom

MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8)
UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


class NetworkError(ConnectionError):
    """The peer could not be reached, refused the association or aborted it."""


@dataclass(frozen=True)
class ClientTLS:
    """TLS for the SCU side (the DICOM Basic TLS Secure Transport Connection Profile, TLS >= 1.2).

    `ca`: the peer's certificate must be signed by it (without it, by one of the system's CAs).
    `cert` and `key`, together: our certificate, for a peer that asks for one. The host name is
    not checked against the certificate unless `verify_hostname` (DICOM peers are often addressed
    by IP, and their certificates name an AE or a device).
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify_hostname: bool = False

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if (self.cert is None) != (self.key is None):
            raise ValueError("a TLS client certificate and its key go together: give both or "
                             f"neither (got cert={self.cert}, key={self.key})")

    def context(self) -> ssl.SSLContext:
        """The client context; ValueError naming the file when one cannot be read or used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = self.verify_hostname
        try:
            if self.ca is not None:
                context.load_verify_locations(cafile=self.ca)
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use the TLS CA file {self.ca}: {_ssl_reason(exc)}") from exc
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key, password=_no_password)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ValueError(f"cannot use the TLS certificate {self.cert} with the key "
                                 f"{self.key}: {_ssl_reason(exc)}") from exc
        return context


def _no_password() -> bytes:
    raise ValueError("the key is encrypted: give one without a passphrase")


def _ssl_reason(exc: BaseException) -> str:
    """An SSL or socket error in words: 'certificate verify failed: self-signed certificate'."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    text = str(exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else exc)
    text = re.sub(r"^\[[A-Z0-9_]+(: [A-Z0-9_]+)?\]\s*", "", text)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text) or type(exc).__name__


@dataclass(frozen=True)
class Peer:
    """Where to send: host, port, called AE title; and who we say we are."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = "DICOMCR"
    timeout: float = 30.0
    tls: ClientTLS | None = None  # None: plain TCP

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        for name in ("called_aet", "calling_aet"):
            value = getattr(self, name)
            if not value or len(value) > 16 or "\\" in value or not value.isascii():
                raise ValueError(f"{name} must be 1-16 ASCII characters, got {value!r}")

    @classmethod
    def parse(cls, address: str, called_aet: str, calling_aet: str = "DICOMCR",
              tls: ClientTLS | None = None) -> Peer:
        """From 'HOST:PORT'."""
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        return cls(host.strip("[]"), int(port), called_aet, calling_aet, tls=tls)

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


def _ae(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout
    ae.connection_timeout = peer.timeout
    return ae


def _associate(ae: AE, peer: Peer):
    context = peer.tls.context() if peer.tls else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_aet,
                         tls_args=(context, peer.host) if context else None)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise NetworkError(f"{peer} rejected the association from {peer.calling_aet}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:  # pynetdicom aborts then
        refused: dict[str, dict[str, int | None]] = {}
        for (sop, syntax), result in _refused(assoc).items():
            refused.setdefault(sop, {})[syntax] = result
        said = "; ".join(_context_refusal(sop, list(results), 0x03 if set(results.values())
                                          == {0x03} else None)
                         for sop, results in refused.items())
        raise NetworkError(f"{peer} accepted no presentation context of those offered: {said}")
    try:  # pynetdicom reports a failed TCP connection as an abort: tell the two apart
        socket.create_connection((peer.host, peer.port), timeout=peer.timeout).close()
    except OSError as exc:
        raise NetworkError(f"cannot connect to {peer.host}:{peer.port}: "
                           f"{exc.strerror or exc}") from exc
    # pynetdicom logs a failed TLS handshake and reports an abort too: try one ourselves
    where = f"{peer.host}:{peer.port}"
    if context is not None:
        problem = _tls_problem(peer, context)
        if problem:
            raise NetworkError(f"TLS handshake with {where} failed: {problem}")
    elif _speaks_tls(peer):
        raise NetworkError(f"{where} speaks TLS and this association was plain TCP: connect "
                           f"with TLS (the peer's CA, and a client certificate and key if it "
                           f"asks for one)")
    raise NetworkError(f"{peer} aborted the association")


PLAIN_PEER = "does it speak TLS on this port?"
ALERT_HINTS = {  # what the peer's TLS alert means for the user
    "certificate required": "the peer requires a client certificate: give a certificate and key",
    "handshake failure": "the peer may require a client certificate, or share no cipher with us",
    "unknown ca": "the peer does not trust the CA of our certificate",
    "bad certificate": "the peer does not accept our certificate",
    "certificate expired": "our certificate has expired",
    "protocol version": "the peer speaks no TLS version >= 1.2 with us",
}


def _tls_problem(peer: Peer, context: ssl.SSLContext) -> str | None:
    """Why a TLS handshake with the peer fails, or None when it succeeds and the peer waits."""
    address = (peer.host, peer.port)
    try:
        with socket.create_connection(address, timeout=peer.timeout) as raw, \
                context.wrap_socket(raw, server_hostname=peer.host) as tls:
            # TLS 1.3 ends the client's handshake before the server has checked our
            # certificate: a refusal comes as an alert on the first read.
            tls.settimeout(min(peer.timeout, 3.0))
            try:
                if not tls.recv(1):
                    return ("the peer closed the connection after the handshake "
                            "(did it accept our certificate?)")
            except TimeoutError:
                pass  # it waits for our A-ASSOCIATE-RQ: the handshake was fine
    except ssl.SSLCertVerificationError as exc:
        reason = _ssl_reason(exc)
        if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return reason
        ca = peer.tls.ca if peer.tls else None
        return (f"{reason} (is {ca} the CA that signed the peer's certificate?)" if ca else
                f"{reason} (with no CA file given, one of the system's CAs must have signed it)")
    except ssl.SSLError as exc:  # an alert came from a TLS peer; anything else, maybe not
        reason = _ssl_reason(exc)
        hint = next((h for words, h in ALERT_HINTS.items() if words in reason.lower()),
                    "" if "alert" in reason.lower() else PLAIN_PEER)
        return f"{reason} ({hint})" if hint else reason
    except OSError as exc:
        return f"{_ssl_reason(exc)} ({PLAIN_PEER})"
    return None


def _speaks_tls(peer: Peer) -> bool:
    """Whether the peer answers a TLS client hello in TLS (its certificate not checked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((peer.host, peer.port), timeout=min(peer.timeout, 5.0)) \
                as raw, context.wrap_socket(raw, server_hostname=peer.host):
            return True
    except ssl.SSLError as exc:  # an alert is TLS: e.g. it wants a client certificate
        return "alert" in _ssl_reason(exc).lower()
    except OSError:
        return False


def _refused(assoc) -> dict[tuple[str, str], int | None]:
    """(SOP class, transfer syntax) -> the peer's result, for each context it did not accept.

    The syntaxes are the ones we offered (one per context): the peer's answer to a rejected
    context carries none that counts (PS3.8 9.3.3.2)."""
    offered = {cx.context_id: cx for cx in assoc.requestor.requested_contexts}
    return {(str(offered[cx.context_id].abstract_syntax),
             str(offered[cx.context_id].transfer_syntax[0])): cx.result
            for cx in assoc.rejected_contexts if cx.context_id in offered}


def _context_refusal(sop_class: str, syntaxes: list[str], result: int | None = None) -> str:
    """'Digital Mammography X-Ray Image Storage - For Presentation in JPEG 2000 Image Compression:
    it may not accept compressed images (...)', from the UIDs and the peer's result (PS3.8)."""
    names = [UID(ts).name for ts in sorted(syntaxes)]
    what = f"{UID(sop_class).name} in {' or '.join(names)}"
    if result == 0x03:  # abstract syntax not supported
        return f"{what}: it does not accept this SOP class"
    if all(UID(ts).is_compressed for ts in syntaxes):
        return (f"{what}: it may not accept compressed images (DCMTK's storescp accepts them "
                f"with +xa)")
    return what


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
            offered |= UNCOMPRESSED
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
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts}
    refused = _refused(assoc)
    try:
        for path, ds in headers:
            sop_class, syntax = str(ds.SOPClassUID), ds.file_meta.TransferSyntaxUID
            usable = {syntax} | (set() if syntax.is_compressed else UNCOMPRESSED)
            if not any((sop_class, str(ts)) in accepted for ts in usable):
                error = ("the peer accepted no presentation context for "
                         + _context_refusal(sop_class, [syntax], refused.get((sop_class, syntax))))
                result = SendResult(path, str(ds.SOPInstanceUID), None, error)
                if progress:
                    progress(result)
                yield result
                continue
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
