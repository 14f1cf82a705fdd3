"""Watches each runner's serving loop: answers what a dead loop had in hand, restarts it, or gives up.

No runner loop is a fire-and-forget task: when one raises or is cancelled from outside, its
supervisor logs the traceback under an incident id, answers the tasks it held (`internal`),
marks the runner unready, and restarts the loop after a short backoff. A loop that keeps dying
(MAX_DEATHS within DEATH_WINDOW_S) stays down, and the runner stays unready with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time

from livegen.engine.metrics import EngineMetrics
from livegen.engine.runner import Runner

log = logging.getLogger(__name__)

MAX_DEATHS = 5
DEATH_WINDOW_S = 60.0
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 5.0


class Supervisor:
    def __init__(self, metrics: EngineMetrics):
        self.metrics = metrics
        self._watchers: list[asyncio.Task] = []
        self.loops: dict[str, asyncio.Task] = {}  # runner name -> its serving loop now

    def watch(self, runner: Runner) -> None:
        self._watchers.append(asyncio.create_task(self._watch(runner), name=f"supervise-{runner.name}"))

    async def _watch(self, runner: Runner) -> None:
        deaths: list[float] = []
        while True:
            loop = self.loops[runner.name] = asyncio.create_task(runner.serve(), name=f"runner-{runner.name}")
            await asyncio.wait([loop])  # a cancel of the watcher itself (shutdown) propagates from here
            exc = asyncio.CancelledError("the loop was cancelled") if loop.cancelled() else loop.exception()
            if exc is None:
                exc = RuntimeError("the loop returned")
            incident_id = runner.fail(runner.in_hand(), exc, "its serving loop died")
            self.metrics.runner_restarts.labels(runner.name).inc()
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < DEATH_WINDOW_S] + [now]
            if len(deaths) >= MAX_DEATHS:
                runner.failed = (f"its loop died {len(deaths)} times in {DEATH_WINDOW_S:.0f} s, last as incident "
                                 f"{incident_id} ({type(exc).__name__}); restart the server")
                log.error("%s: %s", runner.name, runner.failed)
                return
            runner.failed = f"its loop died (incident {incident_id}) and is restarting"
            await asyncio.sleep(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (len(deaths) - 1)))
            runner.failed = None

    async def stop(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        for loop in self.loops.values():
            loop.cancel()
        await asyncio.gather(*self._watchers, *self.loops.values(), return_exceptions=True)
