"""The event loop's health: its lag as a histogram, and an exit when it is stuck.

A heartbeat task measures how late each short sleep wakes (the lag every socket feels). A
thread outside the loop watches the heartbeat: when the loop has not run for `stall_s`, it
logs every thread's stack and ends the process, so that an orchestrator (or systemd) restarts
it; a stuck loop could not answer /livez to say so itself.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from livegen.engine.metrics import EngineMetrics

log = logging.getLogger(__name__)

BEAT_S = 0.05


def exit_process(stuck_s: float) -> None:
    os._exit(70)  # EX_SOFTWARE: no clean shutdown can run on a stuck loop


class LoopWatchdog:
    def __init__(self, metrics: EngineMetrics, stall_s: float, on_stall: Callable[[float], None] = exit_process):
        self.metrics = metrics
        self.stall_s = stall_s
        self.on_stall = on_stall
        self.last_beat = time.monotonic()
        self.lag_s = 0.0  # the latest beat's
        self._beat_task: asyncio.Task | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        self.last_beat = time.monotonic()
        self._beat_task = asyncio.create_task(self._beat(), name="loop-heartbeat")
        if self.stall_s:
            threading.Thread(target=self._watch, name="loop-watchdog", daemon=True).start()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + BEAT_S
            await asyncio.sleep(BEAT_S)
            self.lag_s = max(0.0, loop.time() - expected)
            self.metrics.loop_lag.observe(self.lag_s)
            self.last_beat = time.monotonic()

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self.stall_s / 4)):
            stuck = time.monotonic() - self.last_beat
            if stuck > self.stall_s:
                log.critical("the event loop has not run for %.1f s; every thread's stack follows", stuck)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                self.on_stall(stuck)
                return

    def stop(self) -> None:
        self._stopped.set()
        if self._beat_task:
            self._beat_task.cancel()
