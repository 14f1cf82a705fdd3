"""The FastAPI application: lifespan (load and warm), health, metrics, one-shot HTTP, tokens, schema."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from livegen import __version__
from livegen.access.gate import LOOPBACK_NAMES, Access, Denied, is_loopback
from livegen.access.tokens import Minted, TokenRequest
from livegen.engine import Engine, EngineBusy
from livegen.engine.images import MEDIA_TYPES
from livegen.protocol import Blocked, Error, Frame, Generate, ProtocolError, decode_map, json_schema, parse_generate
from livegen.server.guard import PLAYGROUND_HEADERS, admit, client_address, denial, forwarded, http_grant
from livegen.server.websocket import router as websocket_router

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"

HTTP_STATUS = {
    "not_ready": 503, "too_many_sessions": 503, "shutting_down": 503, "unknown_model": 404, "internal": 500,
    "timeout": 504,
    "message_too_large": 413, "malformed": 400, "nesting_too_deep": 400,
    "unauthorized": 401, "token_expired": 401, "forbidden": 403, "rate_limited": 429, "unsupported_media_type": 415,
}
OTHER_ERROR_STATUS = 422  # `invalid` and every code not named above
TOKEN_BODY_BYTES = 16 * 1024


def _error_response(error: Error) -> JSONResponse:
    headers = {"Retry-After": str(-(-error.retry_after_ms // 1000))} if error.retry_after_ms else None
    return JSONResponse(error.model_dump(), status_code=HTTP_STATUS.get(error.code, OTHER_ERROR_STATUS),
                        headers=headers)


def _json_only(request: Request) -> None:
    """A browser sends a cross-site POST without asking first only for form and text types: JSON needs CORS."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ProtocolError("unsupported_media_type", f"the body must be application/json, not {media_type or 'untyped'}")


def _allowed_hosts(engine: Engine) -> list[str]:
    """Host headers answered: bound to loopback, only loopback names (a DNS-rebinding page gets 400)."""
    configured = engine.settings.access.allowed_hosts
    if configured is not None:
        return configured
    return [*LOOPBACK_NAMES, "*.localhost"] if is_loopback(engine.settings.host) else ["*"]


async def _read_json_body(request: Request, limit: int) -> bytes:
    """A JSON body as it streams in, refused by its declared length, its type, or as soon as it passes
    `limit`: never held whole before the check."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ProtocolError("message_too_large", f"body is {declared} bytes; at most {limit}")
    _json_only(request)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ProtocolError("message_too_large", f"body is over {limit} bytes, the most this server takes")
    except ClientDisconnect as exc:
        raise ProtocolError("malformed", "the client left before the body ended") from exc
    return bytes(body)


def _parse_body(raw: bytes) -> Generate:
    """A /v1/generate body: the fields of a `generate` message; `type` and `id` may be left out."""
    body = decode_map(raw, "json")
    body.setdefault("type", "generate")
    body.setdefault("id", "http")
    return parse_generate(body)


def _body_schema() -> dict:
    """What `_parse_body` takes, for the OpenAPI document: `type` and `id` optional, `image` base64 text."""
    schema = Generate.model_json_schema()
    schema["required"] = ["prompt"]
    schema["properties"]["image"]["anyOf"] = [{"type": "string", "contentEncoding": "base64"}, {"type": "null"}]
    return schema


def _error_responses() -> dict[int, dict]:
    """For the OpenAPI document: each failure status of /v1/generate is an `error` message with these codes."""
    codes: dict[int, list[str]] = {OTHER_ERROR_STATUS: ["`invalid` and any code not listed elsewhere"]}
    for code, status in HTTP_STATUS.items():
        codes.setdefault(status, []).append(f"`{code}`")
    return {status: {"model": Error, "description": "An `error` message: " + ", ".join(names)}
            for status, names in sorted(codes.items())}


def create_app(engine: Engine, start_engine: bool = True) -> FastAPI:
    """`start_engine=False`: the caller has started the engine (a Ray Serve replica warms it before
    Ray routes anything to it); the app still stops it when it shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load and warm in the background: /livez answers at once, /readyz once warm.
        async def start() -> None:
            try:
                await engine.start()
            except Exception:
                log.exception("start-up failed; /readyz will report it")

        starting = asyncio.create_task(start()) if start_engine else None
        yield
        if starting is not None:
            starting.cancel()
        await engine.stop()

    app = FastAPI(title="livegen", version=__version__, lifespan=lifespan,
                  description="Real-time generation: warm few-step models streamed over WebSocket.")
    app.state.engine = engine
    app.state.access = access = Access(engine.settings.access, engine.metrics.registry)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=_allowed_hosts(engine))
    if engine.settings.access.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=engine.settings.access.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-Livegen-Timings", "X-Livegen-Seed", "X-Livegen-Model", "X-Livegen-Drawn", "Retry-After"])
    app.include_router(websocket_router)

    @app.exception_handler(Denied)
    async def denied(request: Request, refusal: Denied) -> JSONResponse:
        return denial(refusal)

    def may_see_details(request: Request) -> bool:
        """Operational details (file paths, counters) are for key holders, when the server has keys."""
        if not access.required:
            return True
        try:
            http_grant(request, access, key_only=True)
        except Denied:
            return False
        return True

    @app.get("/livez")
    async def livez() -> dict:
        """The event loop runs (this answer is proof); a loop stuck past --loop-stall-seconds ends the process."""
        return {"status": "ok", "event_loop_lag_ms": round(engine.watchdog.lag_s * 1000, 3)}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """200 only while every model is warm and serving: 503 with the reasons while loading, while a
        runner is dead or stalled, and from the moment a drain begins. The status alone is public;
        the details need an API key when the server has keys."""
        reasons = engine.unready_reasons()
        if not may_see_details(request):
            return JSONResponse({"ready": not reasons}, status_code=200 if not reasons else 503)
        body = {
            "ready": not reasons,
            "models": {runner.name: runner.ready for runner in engine.all_runners},
            "reasons": reasons,
            "error": engine.start_error or reasons.get("server"),
            "speech_error": engine.speech_error,
            "safety": engine.safety(),
            "acceleration": engine.acceleration(),
        }
        return JSONResponse(body, status_code=200 if not reasons else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not may_see_details(request):
            raise Denied("unauthorized", "/metrics needs an API key on this server")
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> list[dict]:
        grant = http_grant(request, access)
        return [m.model_dump() for m in engine.models() if grant.allows(m.name)]

    @app.post("/v1/tokens", response_model=Minted,
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": TokenRequest.model_json_schema()}}}},
              responses={401: {"model": Error}, 403: {"model": Error}, 415: {"model": Error}, 422: {"model": Error}})
    async def tokens(request: Request) -> Response:
        """A short-lived token for a browser, minted with an API key (docs/security.md)."""
        grant = http_grant(request, access, key_only=True)
        try:
            raw = await _read_json_body(request, TOKEN_BODY_BYTES)
            body = TokenRequest.model_validate(decode_map(raw, "json") if raw.strip() else {})
        except ProtocolError as error:
            return _error_response(error.to_message())
        except ValidationError as exc:
            return _error_response(Error(code="invalid", message=str(exc.errors(include_url=False, include_input=False))))
        return JSONResponse(access.mint(grant, body).model_dump())

    @app.post("/v1/playground/token", response_model=Minted, responses={403: {"model": Error}})
    async def playground_token(request: Request) -> Response:
        """The playground's token: only for a page this server served to a browser on this machine;
        `token` is null when the server asks for no credential."""
        minted = access.playground_token(client_address(request), request.headers.get("host"),
                                         request.headers.get("origin"), forwarded(request))
        return JSONResponse(minted.model_dump())

    @app.get("/v1/protocol.schema.json")
    async def protocol_schema() -> dict:
        return json_schema()

    @app.post(
        "/v1/generate",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _body_schema()}}}},
        responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()},
                         "description": "The image, with signed Content Credentials; timings in the "
                                                "X-Livegen-Timings header."},
                   403: {"model": Blocked, "description": "A `blocked` message: safety stopped the input."},
                   **_error_responses()},
    )
    async def generate(request: Request) -> Response:
        """One image per request: the same engine and checks as the stream, without a socket."""
        grant = http_grant(request, access)
        try:
            request_body = await _read_json_body(request, engine.settings.max_message_bytes)
            generate = _parse_body(request_body)
            await admit(access, grant, engine, generate)
            outcome = await engine.generate(generate)
        except (ProtocolError, EngineBusy) as exc:
            busy = "shutting_down" if engine.draining else "too_many_sessions"
            error = exc if isinstance(exc, ProtocolError) else ProtocolError(busy, str(exc))
            engine.metrics.errors.labels(error.code).inc()
            return _error_response(error.to_message())
        if isinstance(outcome, Error):
            return _error_response(outcome)
        if isinstance(outcome, Blocked):
            return JSONResponse(outcome.model_dump(), status_code=403)
        assert isinstance(outcome, Frame)  # a one-input session is never superseded
        headers = {
            "X-Livegen-Timings": json.dumps(outcome.timings),
            "X-Livegen-Seed": str(outcome.seed),
            "X-Livegen-Model": outcome.model,
        }
        if outcome.drawn is not None:
            headers["X-Livegen-Drawn"] = json.dumps(outcome.drawn)  # a JSON string: ASCII, as headers must be
        return Response(outcome.image, media_type=MEDIA_TYPES[outcome.format], headers=headers)

    @app.get("/v1")
    async def about() -> dict:
        return {"name": "livegen", "version": __version__, "playground": "/", "stream": "/v1/stream",
                "generate": "/v1/generate", "tokens": "/v1/tokens", "docs": "/docs", "schema": "/v1/protocol.schema.json",
                "credentials_required": access.required}

    # The playground: every script and style it needs is served from here, nothing from a CDN.
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PLAYGROUND_HEADERS)

    return app
