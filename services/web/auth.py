"""Who is asking: the node's bearer token (the operator), a site's token or client certificate (a
STOW-RS sender), or nobody; and what each may reach.

    /healthz, /metrics        anyone (probes and Prometheus carry no token)
    /dicomweb/studies[/...]   a sender (its site's policy applies); where a '*' site or
                              accept_unknown_ae takes unknown senders, also the operator, and
                              nobody while no node token is configured
    everything else           the operator; nobody, too, while no node token is configured
    (without a node token: only requests whose Host names this machine, against DNS rebinding)

The node's token is required as soon as one is configured, and a node that listens beyond
loopback must have one (dicomcr.config refuses the file otherwise). A token that matches nothing,
or a request without the one it needs, is answered 401 with the same line whatever was wrong.
Tokens are compared through their SHA-256 digests with hmac.compare_digest, every one each
time, so the time taken says nothing of how much of a token was right, nor of which matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomcr.config import Config, is_loopback, read_secret

MIN_TOKEN_CHARS = 16  # shorter ones are guessable; `openssl rand -hex 32` makes a good one
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})
STOW_PATH = "/dicomweb/studies"
PRINCIPAL = "principal"  # the key of the Principal in each request's state (request.state)
PEER_CN = "peer_cn"  # the key of the verified client certificate's Common Name, if any


class TokenError(ValueError):
    """A token that cannot be used (unreadable, empty, too short, given twice); one line naming
    the key."""


class Role(StrEnum):
    """What a request's credentials make of it."""

    ANONYMOUS = "anonymous"  # no credentials
    OPERATOR = "operator"  # the node's token (node.http_token_*)
    SENDER = "sender"  # a site's token or client certificate: STOW-RS only


@dataclass(frozen=True)
class Principal:
    """Who a request comes from; `site` for a sender."""

    role: Role
    site: str | None = None

    def may(self, path: str, token_required: bool) -> bool:
        """Whether this principal may reach `path` (the public paths are let through before)."""
        if self.role is Role.OPERATOR:
            return True
        if self.role is Role.SENDER:
            return path == STOW_PATH or path.startswith(STOW_PATH + "/")
        return not token_required


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _token(file: Path | None, env: str | None, key: str) -> str | None:
    """A configured token, checked for its length; TokenError naming `key` when unusable."""
    try:
        token = read_secret(file, env, key)
    except ValueError as exc:
        raise TokenError(str(exc)) from exc
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        where = f"{key}_file" if file is not None else f"{key}_env"
        raise TokenError(f"{where}: the token has {len(token)} characters, at least "
                         f"{MIN_TOKEN_CHARS} are needed (e.g. `openssl rand -hex 32`)")
    return token


def common_name(certificate: Mapping | None) -> str | None:
    """The Common Name of a certificate's subject, as ssl's getpeercert() gives it; None for
    no (or no verified) certificate."""
    if not certificate:
        return None
    names = [value for rdn in certificate.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    return names[-1] if names else None


@dataclass(frozen=True)
class Credentials:
    """The node's token and each site's, as digests, and the client certificate names of the
    sites that have one. Built by `load` when the node starts (the files and variables are read
    then, not when the config is loaded)."""

    operator: bytes | None = None
    senders: tuple[tuple[bytes, str], ...] = ()  # (token digest, site name)
    common_names: tuple[tuple[str, str], ...] = ()  # (client certificate CN, site name)

    @classmethod
    def load(cls, config: Config) -> Credentials:
        """Read the tokens the config names; TokenError, one line naming the key, when one is
        unreadable, empty, short, or the same as another (who would it be?)."""
        node = config.node
        operator = _token(node.http_token_file, node.http_token_env, "node.http_token")
        seen: dict[bytes, str] = {} if operator is None else {_digest(operator): "node.http_token"}
        senders = []
        for index, site in enumerate(config.sites):
            key = f"sites.{index}.dicomweb_token"
            token = _token(site.dicomweb_token_file, site.dicomweb_token_env, key)
            if token is None:
                continue
            digest = _digest(token)
            if digest in seen:
                raise TokenError(f"{key}: the same token as {seen[digest]}: give each its own")
            seen[digest] = key
            senders.append((digest, site.name))
        names = tuple((site.dicomweb_client_cn, site.name) for site in config.sites
                      if site.dicomweb_client_cn is not None)
        return cls(None if operator is None else _digest(operator), tuple(senders), names)

    @property
    def token_required(self) -> bool:
        """Whether every path but the public ones needs a token (one is configured)."""
        return self.operator is not None

    def identify(self, authorization: str | None, peer_cn: str | None = None) -> Principal | None:
        """Who presents `authorization` (the header's value) over a connection whose verified
        client certificate is named `peer_cn`; None when what is presented matches nothing."""
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            given = _digest(token.strip())
            found: Principal | None = None
            if self.operator is not None and hmac.compare_digest(given, self.operator):
                found = Principal(Role.OPERATOR)
            for digest, site in self.senders:  # every one: the time says nothing of which
                if hmac.compare_digest(given, digest):
                    found = Principal(Role.SENDER, site)
            return found
        if peer_cn is not None:
            for name, site in self.common_names:
                if name == peer_cn:
                    return Principal(Role.SENDER, site)
        return Principal(Role.ANONYMOUS)


def host_is_local(scope: Scope, configured: str) -> bool:
    """Whether the Host header names this machine: localhost, a loopback address or the
    configured node.http_host (without the port)."""
    host = Headers(scope=scope).get("host", "").strip()
    if host.startswith("["):  # [::1]:8080
        name = host[1:].split("]", 1)[0]
    else:  # 127.0.0.1:8080, localhost
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return is_loopback(name) or name.lower() == configured.strip().lower()


def unauthorized() -> PlainTextResponse:
    """The one answer to missing or wrong credentials: no hint of which."""
    return PlainTextResponse("unauthorized\n", 401, headers={
        "WWW-Authenticate": 'Bearer realm="dicomcr"', "Connection": "close"})


class Authentication:
    """ASGI middleware: identify each request (its Principal in request.state.principal) and
    answer 401 when it may not reach its path. The public paths pass untouched. A node without a
    token (loopback only) answers a request without credentials only when its Host header names
    this machine (403 otherwise): a web page whose host name an attacker makes resolve to 127.0.0.1 (DNS
    rebinding) must not reach the page, Retry or STOW-RS from a browser on this machine."""

    def __init__(self, app: ASGIApp, credentials: Credentials, http_host: str = "127.0.0.1"
                 ) -> None:
        self.app, self.credentials, self.http_host = app, credentials, http_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        principal = self.credentials.identify(Headers(scope=scope).get("authorization"),
                                              state.get(PEER_CN))
        if principal is not None and principal.role is Role.ANONYMOUS and \
                not self.credentials.token_required and not host_is_local(scope, self.http_host):
            host = Headers(scope=scope).get("host", "")
            await PlainTextResponse(f"refused: the host name {host!r} is not this node's: use "
                                    "its loopback address\n", 403)(scope, receive, send)
            return
        if principal is None or not principal.may(scope["path"], self.credentials.token_required):
            await unauthorized()(scope, receive, send)
            return
        state[PRINCIPAL] = principal
        await self.app(scope, receive, send)
