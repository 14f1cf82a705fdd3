"""The streaming endpoint: one WebSocket per client, one engine session per WebSocket.

Before any session exists the upgrade is checked: the page's Origin, then the credential (an
API key or a token); a refusal is an HTTP answer with a typed `error` body. The receive loop
turns each message into a submit (or a typed error) once access allows it; a send loop writes
the session's outcomes in the codec the client last used; a watch closes the session when its
credential is revoked or expires, or when the client falls silent. Nothing here blocks on the
model. When the client leaves, a send fails, a drain or the watch ends the session, it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from livegen.access.gate import Access, Denied, Grant
from livegen.engine import Engine, EngineBusy
from livegen.protocol import (
    ClientRequest, Codec, Error, Hello, Ping, Pong, ProtocolError, Refresh, Refreshed, Upkeep, encode,
    parse_client_message,
)
from livegen.server.guard import SUBPROTOCOL, admit, client_address, denial, websocket_credential

log = logging.getLogger(__name__)
router = APIRouter()
CODECS = ("msgpack", "json")
WATCH_SECONDS = 1.0  # how often an open session's credential and silence are checked
POLICY_VIOLATION = 1008  # the close code for a revoked key or an expired token: reconnecting will not help


async def _send(websocket: WebSocket, data: bytes | str) -> None:
    if isinstance(data, bytes):
        await websocket.send_bytes(data)
    else:
        await websocket.send_text(data)


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    access: Access = websocket.app.state.access
    origin = websocket.headers.get("origin")
    try:
        if not access.origin_allowed(origin, websocket.headers.get("host")):
            raise access.refuse_origin(origin or "")
        grant = access.authenticate(websocket_credential(websocket), client_address(websocket))
        access.open_session(grant)
    except Denied as denied:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(denial(denied))
        else:  # a server without the denial extension: a bare 403
            await websocket.close(code=POLICY_VIOLATION, reason=denied.code)
        return
    try:
        await _serve(websocket, engine, access, grant)
    finally:
        access.close_session(grant)


async def _serve(websocket: WebSocket, engine: Engine, access: Access, grant: Grant) -> None:
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
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

    heard_at = time.monotonic()

    async def receive_inputs() -> None:
        nonlocal codec, heard_at, grant
        limit = engine.settings.max_message_bytes
        while True:
            await session.wait_for_room()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            heard_at = time.monotonic()
            data = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            codec = "json" if isinstance(data, str) else "msgpack"
            size = len(data.encode(errors="surrogatepass") if isinstance(data, str) else data)
            if size > limit:
                engine.reject(session, ProtocolError("message_too_large", f"message is {size} bytes; at most {limit}"))
                continue
            try:
                request = await _read(data, access, grant, session.id)
                if isinstance(request, Ping):
                    session.send(Pong())
                elif isinstance(request, Refresh):
                    grant = access.refresh(grant, request.token)
                    session.send(Refreshed(expires_at=grant.expires_at or 0.0))
                else:
                    await admit(access, grant, engine, request)
                    await engine.submit(session, request)
            except ProtocolError as error:
                engine.reject(session, error)
            except Denied as denied:  # a refresh refused: the session goes on until the old token expires
                engine.reject(session, ProtocolError(denied.code, denied.message))
            except Exception as exc:  # a bug must cost one message its answer, never the session
                engine.fail(session, exc)

    async def watch() -> tuple[Error, int]:
        """Returns why the session must end: a revoked key, an expired token, or silence."""
        idle = access.config.limits.idle_seconds
        while True:
            await asyncio.sleep(min(WATCH_SECONDS, idle / 4) if idle else WATCH_SECONDS)
            if (denied := access.check(grant)) is not None:
                return denied.to_message(), POLICY_VIOLATION
            if idle and time.monotonic() - heard_at > idle:
                access.refused("idle")
                return Error(code="idle_timeout", message=f"nothing was heard for {idle:g} s; clients send "
                             "`ping` to keep a quiet session"), 1000

    # Whichever ends first ends the session: the client leaving, a send that fails (the socket is
    # gone), or the server ending it (a drain). The others are cancelled, and the session closed.
    tasks: list[asyncio.Task] = []
    try:
        speech = engine.speech.info() if engine.speech else None
        hello = Hello(session=session.id, ready=engine.ready,
                      models=[info for info in engine.models() if grant.allows(info.name)],
                      speech=speech if speech and grant.allows(speech.name) else None,
                      max_message_bytes=engine.settings.max_message_bytes,
                      max_prompt_chars=engine.settings.max_prompt_chars,
                      expires_at=grant.expires_at, idle_seconds=access.config.limits.idle_seconds or None)
        await _send(websocket, encode(hello, codec))
        watching = asyncio.create_task(watch())
        tasks = [watching, *(asyncio.create_task(coroutine) for coroutine in
                             (receive_inputs(), send_outcomes(), session.ended.wait()))]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None and not _gone(exc):
                log.error("session %s ended on an unexpected error", session.id, exc_info=exc)
        if session.ended.is_set():
            with contextlib.suppress(Exception):
                await websocket.close(code=1001, reason="server shutting down")
        elif watching in done and watching.exception() is None:
            error, close_code = watching.result()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # the sender stops before the last word
            with contextlib.suppress(Exception):
                await _send(websocket, encode(error, codec))
                await websocket.close(code=close_code, reason=error.code)
    except Exception as exc:
        if not _gone(exc):
            raise
    finally:
        engine.close_session(session)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read(data: bytes | str, access: Access, grant: Grant, session_id: str) -> ClientRequest | Upkeep:
    """Parse one message; every message, readable or not, counts against the session's input rate."""
    try:
        request = parse_client_message(data)
    except ProtocolError as error:
        await access.spend(grant, "inputs_per_session", 1, error.id, who=session_id)
        raise
    await access.spend(grant, "inputs_per_session", 1, getattr(request, "id", None), who=session_id)
    return request


def _gone(exc: BaseException) -> bool:
    """The client's socket closed under a send or a receive: an ending, not a failure."""
    return isinstance(exc, WebSocketDisconnect | OSError | RuntimeError)
