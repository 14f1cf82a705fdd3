"""uvicorn with a drain: the first SIGTERM (or Ctrl+C) drains the engine before uvicorn shuts down.

uvicorn alone would close every WebSocket at once (1012) and drop the frames being computed.
Here /readyz turns 503 at once, new sessions are refused, waiting inputs are answered
`shutting_down`, running batches finish and go out, and sockets close with 1001; then uvicorn
shuts down as usual. A second signal shuts down at once.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn

from livegen.engine import Engine


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Engine):
        super().__init__(config)
        self.engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self.engine.drain(self.engine.settings.drain_seconds)
        finally:
            self.should_exit = True
