"""An accepted input as runners see it: what to compute, and the ledger that owes its outcome.

Runners know tasks, never sessions: a task's owner is seen only through `Owner`, and a session's
latest-wins slot only through `Slot`. That keeps the arrows one way (session -> task <- runner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from livegen.protocol import Outcome


class Owner(Protocol):
    """Who owes the task's client its outcome: its session's ledger."""

    closed: bool

    def answer(self, task: Task, outcome: Outcome, final: bool = True) -> bool:
        """Send `outcome` for `task` if it is still owed; `final` ends what is owed."""

    def owes(self, task: Task) -> bool: ...

    def accept(self, task: Task) -> None: ...


class Waker(Protocol):
    def wake(self, slot: Slot) -> None:
        """The slot has an input for it, or can take one again."""


class Slot(Owner, Protocol):
    """A session's latest-wins slot, as the image runner picks from it."""

    last_input_at: float
    pending: Task | None

    @property
    def eligible(self) -> bool: ...

    def take(self) -> Task: ...

    def drop_pending(self, code: str, message: str) -> Task | None: ...


@dataclass(eq=False, kw_only=True)
class Task:
    """One accepted input: its id, when it arrived, who is owed its outcome and which runner computes it."""

    id: str
    received_at: float
    owner: Owner
    runner: Waker
    timings: dict[str, float] = field(default_factory=dict)
