"""The streaming endpoint: one WebSocket per client, one engine session per WebSocket.

The receive loop turns each message into a submit (or a typed error); a send loop writes the
session's outcomes in the codec the client last used. Nothing here blocks on the model. When
the client leaves, a send fails, or a drain ends the session, the session closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from livegen.engine import Engine, EngineBusy
from livegen.protocol import Codec, Error, Hello, ProtocolError, encode, parse_client_message

log = logging.getLogger(__name__)
router = APIRouter()
CODECS = ("msgpack", "json")


async def _send(websocket: WebSocket, data: bytes | str) -> None:
    if isinstance(data, bytes):
        await websocket.send_bytes(data)
    else:
        await websocket.send_text(data)


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    await websocket.accept()
    # Until the client sends, the server writes in the codec the URL asks for (?codec=json for
    # browsers without a msgpack library), msgpack by default.
    requested = websocket.query_params.get("codec", "msgpack")
    codec: Codec = "json" if requested == "json" else "msgpack"
    if requested not in CODECS:
        await _send(websocket, encode(Error(code="invalid", message=f"codec must be one of {CODECS}"), codec))
        await websocket.close(code=1008)
        return
    try:
        session = engine.open_session()
    except EngineBusy as exc:
        code = "shutting_down" if engine.draining else "too_many_sessions"
        engine.metrics.errors.labels(code).inc()
        await _send(websocket, encode(Error(code=code, message=str(exc)), codec))
        await websocket.close(code=1001 if engine.draining else 1013)
        return

    async def send_outcomes() -> None:
        while True:
            outcome = await session.next_outcome()
            await _send(websocket, encode(outcome, codec))

    async def receive_inputs() -> None:
        nonlocal codec
        limit = engine.settings.max_message_bytes
        while True:
            await session.wait_for_room()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            codec = "json" if isinstance(data, str) else "msgpack"
            size = len(data.encode(errors="surrogatepass") if isinstance(data, str) else data)
            if size > limit:
                engine.reject(session, ProtocolError("message_too_large", f"message is {size} bytes; at most {limit}"))
                continue
            try:
                await engine.submit(session, parse_client_message(data))
            except ProtocolError as error:
                engine.reject(session, error)
            except Exception as exc:  # a bug must cost one message its answer, never the session
                engine.fail(session, exc)

    # Whichever ends first ends the session: the client leaving, a send that fails (the socket is
    # gone), or the server ending it (a drain). The others are cancelled, and the session closed.
    tasks: list[asyncio.Task] = []
    try:
        hello = Hello(session=session.id, ready=engine.ready, models=engine.models(),
                      speech=engine.speech.info() if engine.speech else None,
                      max_message_bytes=engine.settings.max_message_bytes,
                      max_prompt_chars=engine.settings.max_prompt_chars)
        await _send(websocket, encode(hello, codec))
        tasks = [asyncio.create_task(coroutine) for coroutine in
                 (receive_inputs(), send_outcomes(), session.ended.wait())]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None and not _gone(exc):
                log.error("session %s ended on an unexpected error", session.id, exc_info=exc)
        if session.ended.is_set():
            with contextlib.suppress(Exception):
                await websocket.close(code=1001, reason="server shutting down")
    except Exception as exc:
        if not _gone(exc):
            raise
    finally:
        engine.close_session(session)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _gone(exc: BaseException) -> bool:
    """The client's socket closed under a send or a receive: an ending, not a failure."""
    return isinstance(exc, WebSocketDisconnect | OSError | RuntimeError)
