"""Short-lived tokens for browsers: JWTs this server signs (HS256, through PyJWT) for a key's holder.

A backend holds the API key and asks `POST /v1/tokens` for a token per user; the page gets only
the token, which names the key it came from, the models it may use, its own limits and an expiry.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass

import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator

AUDIENCE = "livegen"
ALGORITHM = "HS256"
MAX_SECONDS = 86400.0


class TokenLimits(BaseModel):
    """Limits of the token's own, on top of the server's per-key ones (`limits` rate strings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs_per_session: str | None = None
    pixels: str | None = None
    speech_chars: str | None = None
    exports: str | None = None

    @field_validator("inputs_per_session", "pixels", "speech_chars", "exports")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        from limits import parse

        if value is not None:
            parse(value)
        return value


class TokenRequest(BaseModel):
    """The body of `POST /v1/tokens`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] | None = Field(default=None, max_length=64, description="Models the token may use; all if absent.")
    seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS,
                                  description="Lifetime; the server's default (10 minutes) if absent.")
    limits: TokenLimits | None = None


class Minted(BaseModel):
    """The answer to `POST /v1/tokens`."""

    token: str | None = Field(description="Null from /v1/playground/token when the server asks for no credential.")
    expires_at: float | None = Field(description="Unix seconds.")
    models: list[str] | None = None


class TokenError(Exception):
    def __init__(self, expired: bool, message: str):
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class Claims:
    subject: str  # the key's id, or "playground"
    token_id: str
    expires_at: float
    models: frozenset[str] | None
    limits: TokenLimits | None


class Tokens:
    def __init__(self, secret: str | None, default_seconds: float):
        # A random secret per process unless given: its tokens die with it, which a restart may.
        self.secret = secret or secrets.token_urlsafe(32)
        self.default_seconds = default_seconds

    def mint(self, subject: str, request: TokenRequest) -> Minted:
        now = time.time()
        expires_at = now + (request.seconds or self.default_seconds)
        claims = {"sub": subject, "aud": AUDIENCE, "iat": int(now), "exp": expires_at, "jti": uuid.uuid4().hex}
        if request.models is not None:
            claims["models"] = request.models
        if request.limits is not None:
            claims["limits"] = request.limits.model_dump(exclude_none=True)
        return Minted(token=jwt.encode(claims, self.secret, algorithm=ALGORITHM), expires_at=expires_at,
                      models=request.models)

    def read(self, token: str) -> Claims:
        try:
            claims = jwt.decode(token, self.secret, algorithms=[ALGORITHM], audience=AUDIENCE,
                                options={"require": ["sub", "exp", "jti"]})
            models = claims.get("models")
            return Claims(subject=str(claims["sub"]), token_id=str(claims["jti"]), expires_at=float(claims["exp"]),
                          models=None if models is None else frozenset(map(str, models)),
                          limits=TokenLimits(**claims["limits"]) if "limits" in claims else None)
        except jwt.ExpiredSignatureError as exc:
            raise TokenError(True, "the token has expired; get a new one") from exc
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise TokenError(False, f"the token is not valid here: {exc}") from exc
