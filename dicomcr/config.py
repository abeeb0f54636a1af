"""The node's configuration (YAML), validated at load: a bad file is refused naming the key.

The shape is the design card's: node, sites, destinations, forward, inference. With no file, the
built-in default runs on 127.0.0.1:11112 as DICOMCR, accepts any calling AE at CR 20, and archives
into a local folder.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 1-16 printable ASCII, no backslash
ANY_AE = "*"
# The name of an environment variable that holds a secret (node.http_token_env and the like).
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Compression(StrEnum):
    """What a site's policy does to an image: a lossy JPEG 2000 at an exact CR, lossless JPEG 2000,
    or nothing (pass-through: forwarded as received)."""

    CR = "cr"
    LOSSLESS = "lossless"
    PASS_THROUGH = "none"


@dataclass(frozen=True)
class Policy:
    """A site's compression policy as a value: `Policy.parse("20")`, `Policy.parse("lossless")`,
    `Policy.parse("none")`. `str(policy)` is the form the job store keeps and the audit prints
    ("20", "lossless", "none"), and `Policy.parse` reads it back."""

    kind: Compression
    cr: float | None = None  # the target compression ratio: only for Compression.CR, and > 1

    def __post_init__(self) -> None:
        try:
            kind = Compression(self.kind)
        except ValueError:
            raise ValueError(f"a policy's kind is one of {[k.value for k in Compression]}, "
                             f"not {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        if kind is not Compression.CR:
            if self.cr is not None:
                raise ValueError(f"a {kind.value!r} policy has no CR (got cr={self.cr!r})")
            return
        if isinstance(self.cr, bool) or not isinstance(self.cr, int | float):
            raise ValueError(f"a CR policy needs a number cr > 1 (got {self.cr!r})")
        if not (math.isfinite(self.cr) and self.cr > 1):
            raise ValueError(f"a CR policy's cr is a finite number > 1 (got {self.cr!r})")
        object.__setattr__(self, "cr", float(self.cr))

    @classmethod
    def parse(cls, value: str | float) -> Policy:
        """"20", 20 or 20.0 (a CR > 1), "lossless" or "none" (pass-through)."""
        if isinstance(value, Policy):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in (Compression.LOSSLESS, Compression.PASS_THROUGH):
                return cls(Compression(word))
            try:
                number = float(word)
            except ValueError:
                raise ValueError(f"a policy is a CR > 1 (e.g. 20), 'lossless' or 'none' "
                                 f"(pass-through), not {value!r}") from None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            raise ValueError(f"a policy is a CR > 1 (e.g. 20), 'lossless' or 'none' "
                             f"(pass-through), not {value!r}")
        if not (math.isfinite(number) and number > 1):
            raise ValueError(f"a policy's CR is a finite number > 1, not {value!r}")
        return cls(Compression.CR, number)

    def __str__(self) -> str:
        return f"{self.cr:g}" if self.kind is Compression.CR else self.kind.value

    @property
    def targets(self) -> tuple[float, ...]:
        """The lossy CRs to encode at: (cr,) for a CR policy, () otherwise."""
        return (self.cr,) if self.kind is Compression.CR else ()

    @property
    def lossless(self) -> bool:
        return self.kind is Compression.LOSSLESS

    @property
    def transcodes(self) -> bool:
        """False for pass-through: the image is forwarded as received."""
        return self.kind is not Compression.PASS_THROUGH


# What an unknown calling AE (or STOW-RS sender) gets when accept_unknown_ae lets it in, and the
# site name its instances are recorded under.
UNKNOWN_AE_POLICY = Policy(Compression.CR, 20.0)
UNKNOWN_SITE = "unknown"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names file, key and what was expected, one
    line per problem."""


class ReferenceProblem(ValueError):
    """A key whose value must name something elsewhere in the file (a destination, a calling AE
    of one site only): raised inside Config's validator, where pydantic knows no key, so that
    load_config can name `key` itself."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ae(value: str) -> str:
    if not AE_TITLE.match(value) or value.strip() != value.rstrip():
        raise ValueError("an AE title is 1-16 printable ASCII characters without '\\'")
    return value.strip()


def is_loopback(host: str) -> bool:
    """Whether listening on `host` reaches this machine only: localhost, 127.0.0.0/8 or ::1
    (a wildcard such as 0.0.0.0, and any other name, reaches beyond)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class TLS(Strict):
    cert: Path
    key: Path
    ca: Path | None = None  # when given, client certificates are required and checked against it


class NodeSection(Strict):
    ae_title: str = "DICOMCR"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 11112
    storage: Path = Path("./dicomcr-data")
    stable_seconds: Annotated[float, Field(gt=0)] = 30.0
    accept_unknown_ae: bool = False
    workers: int | Literal["auto"] = "auto"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080  # 0: no HTTP endpoint
    # Where the HTTP face (/healthz, /metrics, the operator page, STOW-RS) listens: loopback
    # unless said; beyond it, everything but /healthz and /metrics needs the bearer token.
    http_host: str = "127.0.0.1"
    # That token, from a file (mode 0600, or a systemd/compose secret) or an environment
    # variable, never inline: a node.yaml is copied, committed and pasted into tickets.
    http_token_file: Path | None = None
    http_token_env: EnvName | None = None
    # HTTPS with the node's certificate (node.tls); with its ca, a client certificate is checked
    # when one is presented (and names a site: sites[].dicomweb_client_cn).
    http_tls: bool = False
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    max_instance_mb: Annotated[float, Field(gt=0, le=4096)] = 512.0
    max_pdu: Annotated[int, Field(ge=0, le=2**32 - 1)] = 65536  # 0: unlimited
    acse_timeout: Annotated[float, Field(gt=0)] = 30.0
    dimse_timeout: Annotated[float, Field(gt=0)] = 60.0
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    tls: TLS | None = None
    # A job whose worker process dies this many times (it was in flight each time) is failed,
    # its source quarantined: one bad image must not take the pool down forever.
    max_worker_deaths: Annotated[int, Field(ge=1, le=100)] = 3
    # Free space the node keeps in `storage`: an instance that would leave less is answered Out of
    # Resources (0xA700). Make it hold your largest instance, its outputs and the job store's
    # growth; 0 turns the check off (a write that hits a full disk is still answered 0xA700).
    disk_reserve_mb: Annotated[float, Field(ge=0, le=2**20)] = 1024.0
    # How long the node keeps an object's files (the received original, its outputs, the SCs and
    # SR) after its destination answered Success, in days; unset (the default): forever, because
    # a C-STORE Success is no storage commitment and the node may hold the only original.
    # Nothing not yet delivered, nor anything failed, is ever deleted; the job store keeps a row.
    retention_days: Annotated[float, Field(gt=0)] | None = None
    # Where transcoding and inference run: "local" (process pools in the node) or a RabbitMQ URL,
    # amqp://user:password@host:port/vhost, whose `dicomcr worker` processes share `storage`.
    queue: str = "local"

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae(v)))

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> int | str:
        """'auto' or 1..256, checked before the union so that a bad value is one error, not one
        per member of `int | Literal["auto"]`."""
        if value == "auto":
            return value
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
            raise PydanticCustomError("workers", "expected 'auto' or a number of processes 1..256")
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if value != "local" and not re.match(r"^amqps?://[^/\s]+(/[^\s]*)?$", value):
            raise ValueError("queue is 'local' or a RabbitMQ URL, "
                             "amqp://user:password@host:port/vhost")
        return value

    @model_validator(mode="after")
    def _http(self) -> NodeSection:
        """The HTTP face's token and TLS: one source of the token, a token beyond loopback, and
        the node's certificate for HTTPS."""
        if self.http_token_file is not None and self.http_token_env is not None:
            raise ReferenceProblem("node.http_token_env", "give the token by file "
                                   "(node.http_token_file) or by environment variable, not both")
        if self.http_port and not is_loopback(self.http_host) and \
                self.http_token_file is None and self.http_token_env is None:
            raise ReferenceProblem("node.http_host", f"{self.http_host} is beyond loopback: set "
                                   "node.http_token_file or node.http_token_env (everything but "
                                   "/healthz and /metrics needs the token there)")
        if self.http_tls and self.tls is None:
            raise ReferenceProblem("node.http_tls", "HTTPS uses the node's certificate: set "
                                   "node.tls (cert, key)")
        return self


class Site(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    calling_ae: Annotated[list[str], Field(min_length=1)]
    cr: float | Literal["lossless", "none"]
    model: Path | None = None
    # STOW-RS in: the bearer token this site's senders present (a file or an environment
    # variable, never inline), or the Common Name of their client certificate (node.http_tls with
    # node.tls.ca); either picks this site's policy for what they send.
    dicomweb_token_file: Path | None = None
    dicomweb_token_env: EnvName | None = None
    dicomweb_client_cn: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @field_validator("calling_ae")
    @classmethod
    def _titles(cls, values: list[str]) -> list[str]:
        return [v if v == ANY_AE else _ae(v) for v in values]

    @field_validator("cr", mode="before")
    @classmethod
    def _cr(cls, value: object) -> float | str:
        """Read by Policy.parse, before the union, so that a bad value is one error, not one per
        member of `float | Literal["lossless", "none"]`."""
        try:
            policy = Policy.parse(value)
        except ValueError:
            raise PydanticCustomError(
                "policy", "expected a compression ratio > 1, 'lossless' or 'none' (pass-through)",
            ) from None
        return policy.cr if policy.kind is Compression.CR else policy.kind.value

    @property
    def policy(self) -> Policy:
        """The site's policy as a value (str() of it: "20", "lossless", "none")."""
        return Policy.parse(self.cr)


class DestinationTLS(Strict):
    """TLS to a DICOM destination: `ca` signed the peer's certificate (without it, one of the
    system's CAs did); `cert` and `key`, together, are the node's own, for a peer that asks.
    The files are read at each association (a renewed certificate needs no restart), not at
    load: a worker on another machine loads the same file without them."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify_hostname: bool = False  # check `host` against the peer's certificate too

    @model_validator(mode="after")
    def _pair(self) -> DestinationTLS:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both (the node's certificate and "
                             "its unencrypted key) or neither")
        return self


class DicomDestination(Strict):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    ae_title: str
    tls: DestinationTLS | None = None  # None: plain TCP

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae(v)))


class FolderDestination(Strict):
    folder: Path


class AuthScheme(StrEnum):
    """How a DICOMweb destination is logged in to (the HTTP Authorization header's scheme)."""

    BEARER = "bearer"
    BASIC = "basic"


class DestinationAuth(Strict):
    """Credentials for a DICOMweb destination: a bearer token (`token_file` or `token_env`), or
    HTTP basic authentication (`user` with `password_file` or `password_env`). The secret is read
    from its file or environment variable at each request (`read_secret`), never written in the
    YAML: a node.yaml is copied, committed and pasted into tickets."""

    token_file: Path | None = None
    token_env: EnvName | None = None
    user: Annotated[str, Field(min_length=1, pattern=r"^[^:\x00-\x1f]+$")] | None = None
    password_file: Path | None = None
    password_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DestinationAuth:
        token = (self.token_file, self.token_env)
        password = (self.password_file, self.password_env)
        for name, sources in (("token", token), ("password", password)):
            if None not in sources:
                raise ValueError(f"give the {name} by file ({name}_file) or by environment "
                                 f"variable ({name}_env), not both")
        has_token = token != (None, None)
        has_password = password != (None, None)
        if has_token and (self.user is not None or has_password):
            raise ValueError("a bearer token (token_file or token_env) or a user and password, "
                             "not both")
        if not has_token and (self.user is None or not has_password):
            raise ValueError("expected token_file or token_env (a bearer token), or user with "
                             "password_file or password_env (HTTP basic)")
        return self

    @property
    def scheme(self) -> AuthScheme:
        return AuthScheme.BASIC if self.user is not None else AuthScheme.BEARER


class HttpsTLS(DestinationTLS):
    """A DICOMweb destination's `tls:`, as a DICOM peer's, except that the URL's host is checked
    against the server's certificate unless `verify_hostname: false` (HTTPS servers are named by
    their certificates; DICOM peers often are not)."""

    verify_hostname: bool = True


class DicomWebDestination(Strict):
    """A DICOMweb service that takes STOW-RS: objects are POSTed to `{dicomweb}/studies`."""

    dicomweb: str  # the service's base URL, e.g. https://pacs.example.org/dicom-web
    auth: DestinationAuth | None = None
    tls: HttpsTLS | None = None  # None: plain HTTP, or HTTPS checked against the system's CAs

    @field_validator("dicomweb")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host, e.g. "
                             "https://pacs.example.org/dicom-web")
        if parts.username is not None or parts.password is not None:
            raise ValueError("no credentials in the URL: give them in auth (read from a file or "
                             "an environment variable)")
        if parts.query or parts.fragment:
            raise ValueError("expected the service's base URL, without a query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls_is_https(self) -> DicomWebDestination:
        if self.tls is not None and not self.dicomweb.lower().startswith("https://"):
            raise ValueError("tls applies to an https:// URL only")
        return self


DESTINATION_FORMS = ("a destination is a DICOM peer (host, port, ae_title), a folder (folder) or a "
                     "DICOMweb service (dicomweb)")


def _destination_kind(value: object) -> str | None:
    """Which kind of destination a value is meant to be: a folder or a DICOMweb service when it
    names one, else a DICOM peer."""
    if isinstance(value, dict):
        return "folder" if "folder" in value else "dicomweb" if "dicomweb" in value else "dicom"
    kinds = {DicomDestination: "dicom", FolderDestination: "folder",
             DicomWebDestination: "dicomweb"}
    return kinds.get(type(value))


# One kind per destination, chosen by its keys, so that a mistake is reported once, for that kind.
Destination = Annotated[
    Annotated[DicomDestination, Tag("dicom")] | Annotated[FolderDestination, Tag("folder")]
    | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind, custom_error_type="destination",
                  custom_error_message=DESTINATION_FORMS)]


class Forward(Strict):
    to: str
    retry_initial_seconds: Annotated[float, Field(gt=0)] = 2.0
    retry_max_seconds: Annotated[float, Field(gt=0)] = 300.0


class Inference(Strict):
    model: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    send_to: str | None = None


class Config(Strict):
    node: NodeSection = NodeSection()
    sites: list[Site] = [Site(name="default", calling_ae=[ANY_AE], cr=20)]
    destinations: dict[str, Destination] = {
        "archive": FolderDestination(folder=Path("./dicomcr-data/archive"))}
    forward: Forward = Forward(to="archive")
    inference: Inference | None = None

    @model_validator(mode="after")
    def _references(self) -> Config:
        destinations = f"expected one of the destinations {sorted(self.destinations)}"
        if self.forward.to not in self.destinations:
            raise ReferenceProblem("forward.to", f"{destinations} (got {self.forward.to!r})")
        send_to = self.inference.send_to if self.inference else None
        if send_to is not None and send_to not in self.destinations:
            raise ReferenceProblem("inference.send_to", f"{destinations} (got {send_to!r})")
        seen: dict[str, str] = {}
        for index, site in enumerate(self.sites):
            for title in site.calling_ae:
                if title in seen:
                    raise ReferenceProblem(f"sites.{index}.calling_ae", f"{title!r} is already a "
                                           f"calling AE of site {seen[title]!r}")
                seen[title] = site.name
        named: dict[str, str] = {}
        for index, site in enumerate(self.sites):
            if site.dicomweb_token_file is not None and site.dicomweb_token_env is not None:
                raise ReferenceProblem(f"sites.{index}.dicomweb_token_env", "give the token by "
                                       "file (dicomweb_token_file) or by environment variable, "
                                       "not both")
            common_name = site.dicomweb_client_cn
            if common_name is None:
                continue
            tls = self.node.tls
            if not self.node.http_tls or tls is None or tls.ca is None:
                raise ReferenceProblem(f"sites.{index}.dicomweb_client_cn", "a client certificate "
                                       "is checked only with node.http_tls and node.tls.ca (the CA "
                                       "that signs the senders' certificates)")
            if common_name in named:
                raise ReferenceProblem(f"sites.{index}.dicomweb_client_cn", f"{common_name!r} "
                                       f"already names site {named[common_name]!r}")
            named[common_name] = site.name
        return self

    def site_for(self, calling_ae: str) -> Site | None:
        """The policy of a calling AE: its own site, else a '*' site; None means reject."""
        calling_ae = calling_ae.strip()
        for site in self.sites:
            if calling_ae in site.calling_ae:
                return site
        for site in self.sites:
            if ANY_AE in site.calling_ae:
                return site
        return None

    def site_for_name(self, name: str) -> Site | None:
        return next((site for site in self.sites if site.name == name), None)

    def policy_of(self, site_name: str) -> Policy:
        """The policy of the site named so now (a name no longer configured, such as the
        unknown AEs' site: UNKNOWN_AE_POLICY)."""
        site = self.site_for_name(site_name)
        return site.policy if site is not None else UNKNOWN_AE_POLICY

    @property
    def accepts_any_ae(self) -> bool:
        return self.node.accept_unknown_ae or any(ANY_AE in s.calling_ae for s in self.sites)


def read_secret(file: Path | None, env: str | None, key: str) -> str | None:
    """The secret (a token) that a config names by file (`<key>_file`) or by environment variable
    (`<key>_env`), stripped; None when it names neither. Read when it is needed, not at load: a
    worker on another machine loads the same node.yaml without it. ValueError, one line naming
    the key, when the file cannot be read or the secret is empty."""
    if file is not None:
        try:
            value = Path(file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{key}_file: cannot read {file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc
        where = f"{key}_file: {file}"
    elif env is not None:
        value = os.environ.get(env, "").strip()
        where = f"{key}_env: the environment variable {env}"
    else:
        return None
    if not value:
        raise ValueError(f"{where} is empty or unset")
    return value


def load_config(path: Path | None) -> Config:
    """The built-in default (no path), or the validated YAML file at `path`."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}:{where} not valid YAML: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with node, sites, destinations, forward")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            reference = (error.get("ctx") or {}).get("error")
            if isinstance(reference, ReferenceProblem):  # raised where pydantic knows no key
                problems.append(f"{path}: {reference}")
                continue
            loc = list(error["loc"])
            hint = ""
            if loc[:1] == ["destinations"] and len(loc) > 2:
                del loc[2]  # the kind's tag: the user wrote no such key
                if error["type"] in ("missing", "extra_forbidden") and len(loc) == 3:
                    hint = f"; {DESTINATION_FORMS}"
                elif loc[2:3] == ["tls"] and error["type"] == "extra_forbidden":
                    hint = f"; a destination's tls takes {', '.join(DestinationTLS.model_fields)}"
                elif loc[2:3] == ["auth"] and error["type"] == "extra_forbidden":
                    hint = f"; a destination's auth takes {', '.join(DestinationAuth.model_fields)}"
            key = ".".join(str(part) for part in loc) or "(top level)"
            got = error.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            problems.append(f"{path}: {key}: {error['msg']}{shown}{hint}")
        raise ConfigError("\n".join(problems)) from exc
