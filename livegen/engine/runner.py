"""What the engine needs of any warm runner, whatever it computes (images now, speech later)."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livegen.engine.session import Session


@dataclass(eq=False)
class Task:
    """One accepted input waiting in a session's slot for its runner."""

    id: str
    runner: Runner
    received_at: float
    session: Session | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Runner(ABC):
    """Owns one model: loads and warms it before ready, then serves sessions' latest inputs."""

    name: str
    kind: str
    # Shared by the runners computing on the CPU (Engine.start): each holds it while it computes.
    # Run at once, their thread pools (torch's, onnxruntime's) would contend for the same cores,
    # each slowed by the other's spinning threads; in turn, a phrase of speech waits at most for
    # the image batch under way, then has every core.
    cpu_turn: asyncio.Lock | None = None

    def turn(self) -> contextlib.AbstractAsyncContextManager:
        return self.cpu_turn or contextlib.nullcontext()

    @property
    @abstractmethod
    def ready(self) -> bool: ...

    @property
    @abstractmethod
    def on_cpu(self) -> bool:
        """Whether it computes on the CPU (known once started)."""

    @abstractmethod
    async def start(self) -> None:
        """Load and warm up; return once a real generation has run at every served size."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def wake(self, session: Session) -> None:
        """The session has a new input for this runner, or can take one again."""
