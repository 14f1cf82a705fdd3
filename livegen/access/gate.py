"""Who may use the server, and how much: the one object the server asks before any work.

Credentials are API keys (servers, scripts) or tokens minted from one (browsers). Without any
key configured (a laptop on loopback) everyone is let in, still under the per-client limits,
which then count per address. Every refusal is typed and counted.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter as Tally
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter

from livegen.access.keys import KeyRing, key_id
from livegen.access.rates import Rates
from livegen.access.tokens import Claims, Minted, TokenError, TokenRequest, Tokens, TokenLimits
from livegen.config import AccessConfig
from livegen.protocol import Error, ProtocolError

PLAYGROUND = "playground"
KEY_CHECK_SECONDS = 1.0  # how stale the key file may be when an open session is checked
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
HTTP_STATUS = {"unauthorized": 401, "token_expired": 401, "forbidden": 403}


class Denied(Exception):
    """A refusal before any session or work exists: an HTTP status and an `error` message."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS[code]

    def to_message(self) -> Error:
        return Error(code=self.code, message=self.message)


@dataclass(frozen=True)
class Grant:
    """What one credential lets its holder do."""

    subject: str  # the key's id, "playground", or the client's address when the server has no keys
    token_id: str | None = None
    models: frozenset[str] | None = None  # None: every model
    expires_at: float | None = None
    limits: TokenLimits | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer(authorization: str | None) -> str | None:
    scheme, _, credential = (authorization or "").partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


class Access:
    def __init__(self, config: AccessConfig, registry: CollectorRegistry):
        self.config = config
        self.keys = KeyRing(config.keys_file, config.key_hashes)
        self.tokens = Tokens(config.token_secret, config.token_seconds)
        self.rates = Rates()
        self.sessions: Tally[str] = Tally()
        self._required = False
        self._keys_read_at = time.monotonic()
        self.refusals = Counter("livegen_access_refusals_total", "Credentials or origins refused, by error code.",
                                ["code"], registry=registry)
        self.limited = Counter("livegen_limit_refusals_total", "Inputs and sessions refused by a per-client "
                               "limit, by limit.", ["limit"], registry=registry)

    @property
    def required(self) -> bool:
        """Keys exist, or did since start: a key file deleted later never opens the server to everyone."""
        self._required = self._required or self.keys.configured
        return self._required

    # ------------------------------------------------------------------ credentials

    def authenticate(self, credential: str | None, address: str) -> Grant:
        """The grant a presented key or token gives, or Denied."""
        self._reload_keys(now=True)
        if credential is None:
            if self.required:
                raise self._deny("unauthorized", "this server needs a credential: an API key or a token, as "
                                 "`Authorization: Bearer ...`")
            return Grant(subject=f"address:{address}")
        if key_id(credential) is not None:
            key = self.keys.find(credential)
            if key is None:
                raise self._deny("unauthorized", "unknown API key")
            if key.revoked is not None:
                raise self._deny("unauthorized", f"API key {key.id} was revoked")
            return Grant(subject=key.id)
        return self._token_grant(self._read_token(credential))

    def mint(self, grant: Grant, request: TokenRequest) -> Minted:
        """A token for a key's holder; a token cannot mint another."""
        if grant.token_id is not None:
            raise self._deny("forbidden", "tokens are minted with an API key, not with another token")
        return self.tokens.mint(grant.subject, request)

    def playground_token(self, client: str, host: str | None, origin: str | None,
                         forwarded: bool) -> Minted:
        """A token for the playground this server serves, to a browser on this machine only."""
        if not self.required:
            return Minted(token=None, expires_at=None)
        if not self.config.playground_tokens:
            raise self._deny("forbidden", "playground tokens are off; mint one with an API key (POST /v1/tokens)")
        hostname = urlsplit(f"//{host}").hostname if host else None
        same_origin = origin is None or urlsplit(origin).hostname == hostname
        if forwarded or not is_loopback(client) or not is_loopback(hostname) or not same_origin:
            raise self._deny("forbidden", "playground tokens go only to the playground opened on this machine "
                             "(http://127.0.0.1 or localhost); other pages mint theirs through a backend")
        return self.tokens.mint(PLAYGROUND, TokenRequest())

    def refresh(self, grant: Grant, token: str) -> Grant:
        """The session's grant on a new token from the same key (or the playground's endpoint)."""
        claims = self._read_token(token)
        if claims.subject != grant.subject:
            raise self._deny("forbidden", "a refresh must carry a token of the same key as the session's")
        return self._token_grant(claims)

    def check(self, grant: Grant) -> Denied | None:
        """Why an open session's grant no longer holds (revoked key, expired token), or None."""
        self._reload_keys()
        if grant.expires_at is not None and time.time() >= grant.expires_at:
            return self._deny("token_expired", "the session's token expired; send `refresh` with a new one before "
                              "it does")
        if self.required and not grant.subject.startswith(("address:", PLAYGROUND)) and \
                not self.keys.active(grant.subject):
            return self._deny("unauthorized", f"API key {grant.subject} was revoked")
        return None

    def _read_token(self, token: str) -> Claims:
        try:
            return self.tokens.read(token)
        except TokenError as exc:
            raise self._deny("token_expired" if exc.expired else "unauthorized", str(exc)) from exc

    def _token_grant(self, claims: Claims) -> Grant:
        if claims.subject != PLAYGROUND and not self.keys.active(claims.subject):
            raise self._deny("unauthorized", f"the token's API key {claims.subject} was revoked")
        return Grant(subject=claims.subject, token_id=claims.token_id, models=claims.models,
                     expires_at=claims.expires_at, limits=claims.limits)

    def _reload_keys(self, now: bool = False) -> None:
        if now or time.monotonic() - self._keys_read_at >= KEY_CHECK_SECONDS:
            self.keys.reload()
            self._keys_read_at = time.monotonic()

    def _deny(self, code: str, message: str) -> Denied:
        self.refusals.labels(code).inc()
        return Denied(code, message)

    # ------------------------------------------------------------------ browsers

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """A page may open a session from loopback, this server's own origin, or a configured origin.

        No Origin header means no browser page is asking (scripts and servers send none).
        """
        if origin is None:
            return True
        allowed = self.config.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        parts = urlsplit(origin)
        return is_loopback(parts.hostname) or (host is not None and parts.netloc == host)

    def refuse_origin(self, origin: str) -> Denied:
        return self._deny("forbidden", f"pages from {origin} may not open sessions here (Origin allowlist)")

    # ------------------------------------------------------------------ limits

    def open_session(self, grant: Grant) -> None:
        if self.sessions[grant.subject] >= self.config.limits.sessions_per_key:
            self.limited.labels("sessions_per_key").inc()
            raise Denied("too_many_sessions", f"this key holds its limit of {self.config.limits.sessions_per_key} "
                         "open sessions", status=429)
        self.sessions[grant.subject] += 1

    def close_session(self, grant: Grant) -> None:
        self.sessions[grant.subject] -= 1
        if self.sessions[grant.subject] <= 0:
            del self.sessions[grant.subject]

    async def spend(self, grant: Grant, limit: str, cost: int = 1, msg_id: str | None = None,
                    who: str | None = None) -> None:
        """Spend from the server's limit (per key, or per `who`) and the token's own; `rate_limited` if either is out."""
        limits = self.config.limits
        own = {"inputs_per_session": limits.inputs_per_session, "pixels_per_key": limits.pixels_per_key,
               "speech_chars_per_key": limits.speech_chars_per_key, "exports_per_key": limits.exports_per_key}[limit]
        token_rate = None
        if grant.limits is not None:
            token_rate = getattr(grant.limits, limit.removesuffix("_per_key"))
        try:
            await self.rates.take(limit, own, who or grant.subject, cost, msg_id)
            if token_rate is not None:
                await self.rates.take(f"token {limit}", token_rate, f"{grant.token_id}:{who or ''}", cost, msg_id)
        except ProtocolError:
            self.limited.labels(limit).inc()
            raise

    def forbid_model(self, grant: Grant, model: str, msg_id: str | None) -> None:
        if not grant.allows(model):
            self.refusals.labels("forbidden").inc()
            raise ProtocolError("forbidden", f"this token may not use {model!r}; it may use {sorted(grant.models or ())}",
                                msg_id)

    def refused(self, limit: str) -> None:
        """Count a refusal by a limit enforced elsewhere (body size, idle timeout)."""
        self.limited.labels(limit).inc()
