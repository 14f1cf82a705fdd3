"""The streaming endpoint: one WebSocket per client, one engine session per WebSocket.

The receive loop turns each message into a submit (or a typed error); a send loop writes the
session's outcomes in the codec the client last used. Nothing here blocks on the model.
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
        engine.metrics.errors.labels("too_many_sessions").inc()
        await _send(websocket, encode(Error(code="too_many_sessions", message=str(exc)), codec))
        await websocket.close(code=1013)
        return

    hello = Hello(session=session.id, ready=engine.ready, models=engine.models(),
                  speech=engine.speech.info() if engine.speech else None,
                  max_message_bytes=engine.settings.max_message_bytes,
                  max_prompt_chars=engine.settings.max_prompt_chars)
    await _send(websocket, encode(hello, codec))

    async def send_outcomes() -> None:
        while True:
            outcome = await session.next_outcome()
            await _send(websocket, encode(outcome, codec))

    sender = asyncio.create_task(send_outcomes())
    limit = engine.settings.max_message_bytes
    try:
        while True:
            await session.wait_for_room()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            codec = "json" if isinstance(data, str) else "msgpack"
            size = len(data.encode() if isinstance(data, str) else data)
            if size > limit:
                engine.reject(session, ProtocolError(
                    "message_too_large", f"message is {size} bytes; at most {limit}"))
                continue
            try:
                request = parse_client_message(data)
            except ProtocolError as error:
                engine.reject(session, error)
                continue
            engine.submit(session, request)
    except WebSocketDisconnect:
        pass
    finally:
        engine.close_session(session)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
