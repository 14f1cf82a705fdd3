"""The FastAPI application: lifespan (load and warm), health, metrics, one-shot HTTP, schema."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from livegen import __version__
from livegen.engine import Engine, EngineBusy
from livegen.engine.images import MEDIA_TYPES
from livegen.protocol import Blocked, Error, Frame, Generate, ProtocolError, json_schema, parse_generate
from livegen.server.websocket import router as websocket_router

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"

HTTP_STATUS = {
    "not_ready": 503, "too_many_sessions": 503, "unknown_model": 404, "internal": 500,
    "message_too_large": 413, "malformed": 400,
}


def _error_response(error: Error) -> JSONResponse:
    return JSONResponse(error.model_dump(), status_code=HTTP_STATUS.get(error.code, 422))


def _parse_body(raw: bytes, limit: int) -> Generate:
    """A /v1/generate body: the fields of a `generate` message; `type` and `id` may be left out."""
    if len(raw) > limit:
        raise ProtocolError("message_too_large", f"body is {len(raw)} bytes; at most {limit}")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError("malformed", f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("malformed", "body must be a JSON object")
    body.setdefault("type", "generate")
    body.setdefault("id", "http")
    return parse_generate(body)


def create_app(engine: Engine) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load and warm in the background: /livez answers at once, /readyz once warm.
        async def start() -> None:
            try:
                await engine.start()
            except Exception:
                log.exception("start-up failed; /readyz will report it")

        starting = asyncio.create_task(start())
        yield
        starting.cancel()
        await engine.stop()

    app = FastAPI(title="livegen", version=__version__, lifespan=lifespan,
                  description="Real-time generation: warm few-step models streamed over WebSocket.")
    app.state.engine = engine
    app.include_router(websocket_router)

    @app.get("/livez")
    async def livez() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body = {
            "ready": engine.ready,
            "models": {runner.name: runner.ready for runner in engine.all_runners},
            "error": engine.start_error,
            "speech_error": engine.speech_error,
            "safety": engine.safety(),
        }
        if not engine.all_runners:
            body["error"] = "no model configured: start with --model PATH"
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> list[dict]:
        return [m.model_dump() for m in engine.models()]

    @app.get("/v1/protocol.schema.json")
    async def protocol_schema() -> dict:
        return json_schema()

    @app.post(
        "/v1/generate",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": Generate.model_json_schema()}}}},
        responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()},
                         "description": "The image, with signed Content Credentials; timings in the "
                                                "X-Livegen-Timings header."},
                   403: {"description": "A `blocked` message: safety stopped the input."}},
    )
    async def generate(request: Request) -> Response:
        """One image per request: the same engine and checks as the stream, without a socket."""
        try:
            outcome = await engine.generate(_parse_body(await request.body(), engine.settings.max_message_bytes))
        except (ProtocolError, EngineBusy) as exc:
            error = exc if isinstance(exc, ProtocolError) else ProtocolError("too_many_sessions", str(exc))
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
        return Response(outcome.image, media_type=MEDIA_TYPES[outcome.format], headers=headers)

    @app.get("/v1")
    async def about() -> dict:
        return {"name": "livegen", "version": __version__, "playground": "/", "stream": "/v1/stream",
                "generate": "/v1/generate", "docs": "/docs", "schema": "/v1/protocol.schema.json"}

    # The playground: every script and style it needs is served from here, nothing from a CDN.
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
