"""The DICOM Conformance Statement (PS3.2 layout), generated from the node's own contexts.

Generated, never written by hand: `dicomcr conformance` prints it from the presentation contexts
the SCP actually registers and the limits the configuration actually defaults to, and a test fails
when the committed conformance/CONFORMANCE.md differs from what the code would generate.
"""

from __future__ import annotations

from pydicom.uid import UID

from dicomcr import __version__
from dicomcr.config import NodeSection
from dicomcr.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

from .receiver import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES
from .stages.receive import STORAGE_CLASSES, TRANSFER_SYNTAXES
from .web.stow import (
    DICOM_JSON,
    MEDIA_TYPE,
    SOP_CLASS_NOT_SUPPORTED,
    STUDY_MISMATCH,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
)

VERIFICATION = UID("1.2.840.10008.1.1")


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def statement() -> str:
    """The whole statement as Markdown."""
    defaults = NodeSection()
    syntaxes = [_row(UID(ts).name, str(ts)) for ts in TRANSFER_SYNTAXES]
    scp_classes = [_row(VERIFICATION.name, str(VERIFICATION), "SCP")] + [
        _row(UID(c).name, str(c), "SCP") for c in STORAGE_CLASSES]
    lines = [
        "# DICOM Conformance Statement: dicomcr",
        "",
        f"dicomcr {__version__}. Implementation Class UID {IMPLEMENTATION_CLASS_UID}, "
        f"Implementation Version Name {IMPLEMENTATION_VERSION_NAME}.",
        "Generated from the code by `dicomcr conformance`; do not edit by hand.",
        "",
        "## 1. Overview",
        "",
        "dicomcr is a DICOM node between modalities (or a PACS) and an archive. It receives images "
        "with the Storage Service Class, rewrites them as JPEG 2000 at the compression ratio the "
        "sending site's policy names, and forwards them with the Storage Service Class.",
        "",
        "| Network service | User of service (SCU) | Provider of service (SCP) |",
        "|---|---|---|",
        "| Verification | Yes (`dicomcr echo`) | Yes |",
        "| Storage | Yes (forwarder, `dicomcr send`) | Yes |",
        "| DICOMweb STOW-RS | Yes (forwarder, `dicomweb:` destination) | Yes |",
        "",
        "## 2. Application Entity specification",
        "",
        "One Application Entity, title `DICOMCR` by default (`node.ae_title`). It accepts an "
        "association only when the Called AE Title is its own, and when the Calling AE Title belongs "
        "to a configured site (or a site with calling AE `*`, or `node.accept_unknown_ae`); else it "
        "rejects the association (rejected permanent, calling or called AE title not recognized).",
        "",
        "### 2.1 Association policies",
        "",
        "| Policy | Default | Configuration key |",
        "|---|---|---|",
        _row("Maximum simultaneous associations", str(defaults.max_associations),
             "`node.max_associations`"),
        _row("Maximum PDU size received", f"{defaults.max_pdu} bytes (0 = unlimited)",
             "`node.max_pdu`"),
        _row("ACSE timeout", f"{defaults.acse_timeout:g} s", "`node.acse_timeout`"),
        _row("DIMSE timeout", f"{defaults.dimse_timeout:g} s", "`node.dimse_timeout`"),
        _row("Network timeout", f"{defaults.network_timeout:g} s", "`node.network_timeout`"),
        _row("Maximum instance size", f"{defaults.max_instance_mb:g} MiB",
             "`node.max_instance_mb`"),
        _row("Free disk space kept (reserve)", f"{defaults.disk_reserve_mb:g} MiB",
             "`node.disk_reserve_mb`"),
        "",
        "### 2.2 SOP classes as SCP",
        "",
        "| SOP class | UID | Role |",
        "|---|---|---|",
        *scp_classes,
        "",
        "Each storage SOP class is accepted in any of these transfer syntaxes:",
        "",
        "| Transfer syntax | UID |",
        "|---|---|",
        *syntaxes,
        "",
        "### 2.3 Storage SCP behaviour",
        "",
        "A C-STORE is answered Success only after the received dataset, as encoded, is written to "
        "the spool, fsynced, and its job committed to the node's SQLite job store. Pixel data are "
        "not decoded on the receive path. A dataset that cannot be parsed, lacks Pixel Data or, "
        "in a native transfer syntax, holds another Pixel Data length than Rows x Columns x "
        "Samples per Pixel x Frames x Bits Allocated / 8 (padded to even) is answered "
        f"0x{CANNOT_UNDERSTAND:04X} (cannot understand); one whose SOP Class or Instance UID "
        "differs from the request, or whose Image Pixel module is inconsistent (Bits Allocated "
        "neither 1 nor a multiple of 8, Bits Stored above Bits Allocated, High Bit other than "
        "Bits Stored - 1, Samples per Pixel that do not fit the Photometric Interpretation, a "
        f"type 1 attribute missing) 0x{DATASET_DOES_NOT_MATCH_SOP_CLASS:04X} (data set does not "
        f"match SOP class); one above the size limit 0x{OUT_OF_RESOURCES:04X} (out of resources). "
        "Refused datasets are quarantined with the reason.",
        "",
        f"When the disk is full, or accepting a dataset would leave less free space than the "
        f"reserve, the dataset is answered 0x{OUT_OF_RESOURCES:04X} (out of resources) and not "
        "kept; the association stays open and later datasets are answered in turn. Every "
        "dataset answered Success is forwarded once space allows.",
        "",
        "Per the sending site's policy the image is then re-encoded as JPEG 2000 "
        "(1.2.840.10008.1.2.4.91) at the site's compression ratio with a new SOP Instance UID and "
        "Series Instance UID, ImageType DERIVED, Lossy Image Compression 01, the measured ratio "
        "appended to Lossy Image Compression Ratio, ISO_15444_1 appended to Lossy Image "
        "Compression Method and a Source Image Sequence to the original; or as JPEG 2000 lossless "
        "(1.2.840.10008.1.2.4.90) keeping its UIDs; or passed through unchanged.",
        "",
        "### 2.4 SOP classes as SCU",
        "",
        "The forwarder and `dicomcr send` propose, for each SOP class among the images they send, "
        "the image's own transfer syntax and, for uncompressed images, Explicit and Implicit VR "
        "Little Endian. Forwarded JPEG 2000 images are therefore proposed in JPEG 2000 only. "
        "Verification is proposed by `dicomcr echo`. A Warning status (0xB000, 0xB006, 0xB007) "
        "counts as stored; any other non-Success status is retried with exponential back-off. An "
        "image whose SOP class and transfer syntax the peer accepted no presentation context for "
        "is not sent; the failure names both, and the forwarder retries it like a failed store.",
        "",
        "With inference configured (a site's `model` or `inference.model`), the node also creates "
        "and sends, for each study, one Secondary Capture Image (1.2.840.10008.5.1.4.1.1.7, RGB, "
        "Explicit VR Little Endian) per classified view, with the Grad-CAM map and 'AI saliency - "
        "not for diagnostic use' burned in, and one Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33,"
        " TID 1500 Measurement Report) with the probability of cancer (DCM 111047) per breast and "
        "for the study; both in the study of the images, in new series, with Contributing "
        "Equipment naming the model. They go to `inference.send_to`, else to `forward.to`, with "
        "the same retries.",
        "",
        "### 2.5 DICOMweb (PS3.18)",
        "",
        "STOW-RS as origin server: `POST /dicomweb/studies` and "
        "`/dicomweb/studies/{StudyInstanceUID}` with `multipart/related; "
        f"type=\"{MEDIA_TYPE}\"`, on `node.http_host`:`node.http_port` (default "
        f"{defaults.http_host}:{defaults.http_port}). The SOP classes and transfer syntaxes of "
        "2.2 are accepted; each part is checked, made durable and recorded exactly as a C-STORE "
        "(2.3), then transcoded and forwarded the same way. The sending site is named by its "
        "bearer token or client certificate. The response is "
        f"`{DICOM_JSON}` with Referenced SOP Sequence (0008,1199) and Failed SOP Sequence "
        "(0008,1198), each failure's Failure Reason (0008,1197) the status a C-STORE would get, "
        f"or 0x{SOP_CLASS_NOT_SUPPORTED:04X} (SOP class not supported), "
        f"0x{TRANSFER_SYNTAX_NOT_SUPPORTED:04X} (transfer syntax not supported), "
        f"0x{STUDY_MISMATCH:04X} (Study Instance UID other than the URL's); HTTP 200 when every "
        "instance was stored, 202 when some failed, 409 when none was stored, 400 for a body that "
        "is not multipart, 415 for another media type, 401 for an unknown sender.",
        "",
        "STOW-RS as user agent: a destination `dicomweb:` is stored to with `POST {url}/studies`; "
        "an instance in the Failed SOP Sequence, or one the response does not name, is retried "
        "with back-off, as a failed C-STORE.",
        "",
        "## 3. Communication profiles",
        "",
        "TCP/IP, on the host and port of `node.host` and `node.port` (default 127.0.0.1:11112); "
        "HTTP/1.1 (HTTPS with `node.http_tls`) on `node.http_host` and `node.http_port`.",
        "",
        "## 4. Security",
        "",
        "With `node.tls` (certificate and key), the SCP speaks the Basic TLS Secure Transport "
        "Connection Profile (TLS 1.2 or later) on its port; with `node.tls.ca` as well, clients "
        "must present a certificate signed by that CA. Without it the port is plain TCP. As SCU, "
        "the forwarder speaks TLS 1.2 or later to a destination with `tls`: the peer's "
        "certificate must be signed by `tls.ca` (else by one of the system's CAs), the node "
        "presents `tls.cert` and `tls.key` when given, and the host name is checked only with "
        "`tls.verify_hostname`. No user identity negotiation; AE title checks are not "
        "authentication.",
        "",
        "## 5. Character sets",
        "",
        "Datasets are stored and forwarded with the Specific Character Set they arrived with.",
        "",
    ]
    return "\n".join(lines)
