"""What the engine needs of any warm runner, whatever it computes (images, speech).

A runner loads and warms one model, then serves tasks in a loop that its supervisor watches.
Its computation runs on one worker thread, under a deadline: a batch that runs past it is
answered `timeout`, and the runner reports itself unready until that computation returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from livegen.engine.task import Slot, Task
from livegen.protocol import Error

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_DEADLINE_S = 5.0
DEADLINE_WARM_MULTIPLE = 10  # a batch may take this many times its slowest warm-up before it is a hang


class ComputeTimeout(Exception):
    """A computation ran past its deadline; it goes on in its thread, its tasks are answered `timeout`."""

    def __init__(self, deadline_s: float):
        super().__init__(f"a computation has run past its {deadline_s:.1f} s deadline")
        self.deadline_s = deadline_s


def incident(exc: BaseException, what: str) -> str:
    """Log an unexpected failure with its traceback under a short id the client is told."""
    incident_id = secrets.token_hex(4)
    log.error("incident %s: %s", incident_id, what, exc_info=exc)
    return incident_id


def internal_error(id: str | None, incident_id: str) -> Error:
    return Error(id=id, code="internal",
                 message=f"the server failed on this input (incident {incident_id}; its log has the details)")


class Runner(ABC):
    """Owns one model: loads and warms it before ready, then serves its tasks until stopped."""

    name: str
    kind: str
    # Shared by the runners computing on the CPU (Engine.start): each holds it while it computes.
    # Run at once, their thread pools (torch's, onnxruntime's) would contend for the same cores,
    # each slowed by the other's spinning threads; in turn, a phrase of speech waits at most for
    # the image batch under way, then has every core.
    cpu_turn: asyncio.Lock | None = None

    def __init__(self, name: str, deadline_s: float | None):
        self.name = name
        self.deadline_s = deadline_s  # None: DEADLINE_WARM_MULTIPLE x the slowest warm-up, at least MIN_DEADLINE_S
        self.warm = False
        self.stalled: str | None = None  # why it cannot serve now: a computation past its deadline
        self.failed: str | None = None  # set by the supervisor when its loop keeps dying
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"runner-{name}")
        self._stalled_on: asyncio.Future | None = None

    def turn(self) -> contextlib.AbstractAsyncContextManager:
        return self.cpu_turn or contextlib.nullcontext()

    @property
    def ready(self) -> bool:
        return self.unready_reason is None

    @property
    def unready_reason(self) -> str | None:
        if self.failed:
            return self.failed
        if self.stalled:
            return self.stalled
        return None if self.warm else "loading and warming up"

    @property
    @abstractmethod
    def on_cpu(self) -> bool:
        """Whether it computes on the CPU (known once started)."""

    async def start(self) -> None:
        """Load and warm up on the worker thread; return once a real generation has run at every shape."""
        slowest = await asyncio.get_running_loop().run_in_executor(self._executor, self.load_and_warm)
        if self.deadline_s is None:
            self.deadline_s = max(MIN_DEADLINE_S, DEADLINE_WARM_MULTIPLE * slowest)
        log.info("%s: a computation past %.1f s is a hang", self.name, self.deadline_s)
        self.warm = True

    @abstractmethod
    def load_and_warm(self) -> float:
        """(worker thread) Load the model and warm every shape; the slowest warm computation, in seconds."""

    async def stop(self) -> None:
        self.warm = False
        self._executor.shutdown(wait=False, cancel_futures=True)

    @abstractmethod
    async def serve(self) -> None:
        """Serve tasks until cancelled. The supervisor restarts it if it raises."""

    @abstractmethod
    def in_hand(self) -> list[Task]:
        """The tasks it is computing now: what a crash owes an answer."""

    @abstractmethod
    def wake(self, slot: Slot) -> None:
        """A session has a new input for this runner, or can take one again."""

    @abstractmethod
    def drain(self, code: str, message: str) -> None:
        """Answer every task waiting for this runner (not the ones in hand) with an error."""

    async def compute(self, fn: Callable[..., T], *args: Any, deadline_s: float | None = None) -> T:
        """Run `fn` on the worker thread under the deadline (the runner's, unless given); ComputeTimeout past it."""
        deadline_s = deadline_s or self.deadline_s
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), deadline_s)
        except TimeoutError:
            timeout = ComputeTimeout(deadline_s)  # type: ignore[arg-type]
            self.stalled = str(timeout)
            log.error("%s: %s; unready until it returns", self.name, self.stalled)
            self._stalled_on = future
            raise timeout from None

    async def recover(self) -> None:
        """After a timeout: wait for the stalled computation to return, then serve again."""
        if self._stalled_on is not None:
            with contextlib.suppress(Exception):
                await self._stalled_on
            self._stalled_on = None
        if self.stalled:
            log.warning("%s: the stalled computation returned; serving again", self.name)
        self.stalled = None

    def fail(self, tasks: list[Task], exc: BaseException, what: str) -> str:
        """An unexpected exception while computing `tasks`: answer each `internal`, under one incident (returned)."""
        incident_id = incident(exc, f"{self.name}: {what}")
        for task in tasks:
            task.owner.answer(task, internal_error(task.id, incident_id))
        return incident_id



def timeout_error(task: Task, timeout: ComputeTimeout) -> Error:
    return Error(id=task.id, code="timeout", message=f"{timeout}; the model is unready until it recovers")
