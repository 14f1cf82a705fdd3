"""The server's side of access control: credentials read from requests, the checks each input
passes before the engine sees it, and the headers that keep the playground in its own page."""

from __future__ import annotations

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse

from livegen.access.gate import Access, Denied, Grant, bearer
from livegen.engine import Engine
from livegen.protocol import ClientRequest, Export, Generate, Speak

SUBPROTOCOL = "livegen"
TOKEN_SUBPROTOCOL = "bearer."  # browsers cannot set headers on a WebSocket: `bearer.<token>` beside `livegen`
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
# The playground loads only its own scripts, styles and images, connects only back to this server,
# and may not be framed by another page (clickjacking).
PLAYGROUND_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def denial(denied: Denied) -> JSONResponse:
    return JSONResponse(denied.to_message().model_dump(), status_code=denied.status)


def client_address(connection: Request | WebSocket) -> str:
    return connection.client.host if connection.client else "unknown"


def websocket_credential(websocket: WebSocket) -> str | None:
    """The header (scripts), a `bearer.` subprotocol (browsers), or `?token=` (anything else)."""
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(TOKEN_SUBPROTOCOL):
            return offered.removeprefix(TOKEN_SUBPROTOCOL)
    return bearer(websocket.headers.get("authorization")) or websocket.query_params.get("token")


def http_grant(request: Request, access: Access, key_only: bool = False) -> Grant:
    """The grant of an HTTP request's `Authorization: Bearer`; `key_only`: an API key, not a token."""
    grant = access.authenticate(bearer(request.headers.get("authorization")), client_address(request))
    if key_only and grant.token_id is not None:
        raise Denied("forbidden", "this needs an API key; tokens are for sessions and /v1/generate")
    return grant


def forwarded(request: Request) -> bool:
    return any(name in request.headers for name in FORWARDING_HEADERS)


async def admit(access: Access, grant: Grant, engine: Engine, request: ClientRequest) -> None:
    """What this grant may ask for and how much: `forbidden` or `rate_limited` before any work."""
    if isinstance(request, Generate):
        model = request.model or engine.default_model or ""
        access.forbid_model(grant, model, request.id)
        pixels = request.width * request.height or _default_pixels(engine, model)
        if pixels:
            await access.spend(grant, "pixels_per_key", pixels, request.id)
    elif isinstance(request, Speak):
        access.forbid_model(grant, engine.speech.name if engine.speech else "speech", request.id)
        if request.text:
            await access.spend(grant, "speech_chars_per_key", len(request.text), request.id)
    elif isinstance(request, Export):
        await access.spend(grant, "exports_per_key", 1, request.id)


def _default_pixels(engine: Engine, model: str) -> int:
    """An input that names no size gets its model's first one."""
    for info in engine.models():
        if info.name == model:
            width, height = info.sizes[0]
            return width * height
    return 0
