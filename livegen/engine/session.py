"""A client's session: one latest-wins slot, the outcomes waiting to be sent, and its own seed."""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict

from livegen.engine.runner import Task
from livegen.protocol import MAX_SEED, Frame, Outcome, Superseded

# Outcomes not yet taken by the sender before the session stops reading new inputs.
OUTBOX_LIMIT = 64
EXPORTABLE_FRAMES = 8  # the session's latest frames that `export` can still sign


class Session:
    """Holds at most one waiting input: a newer one replaces it and the older is `superseded`.

    A session also has at most one input being computed or waiting to go out on the wire: its
    next input only becomes eligible once the sender has taken the previous frame, so a slow
    client gets fewer frames, never a growing buffer.
    """

    def __init__(self, session_id: str | None = None):
        self.id = session_id or secrets.token_hex(8)
        self.seed = secrets.randbelow(MAX_SEED)  # fixed noise for inputs that name no seed
        self.closed = False
        self.last_input_at = 0.0
        self.pending: Task | None = None
        self.last_accepted: Task | None = None  # the similarity filter compares new inputs with it
        self.running: Task | None = None
        self.recent: OrderedDict[str, tuple[Frame, dict]] = OrderedDict()  # frame id -> frame, what made it
        self._outbox: asyncio.Queue[tuple[Outcome, Task | None]] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()

    @property
    def eligible(self) -> bool:
        return not self.closed and self.running is None and self.pending is not None

    def offer(self, task: Task) -> Task | None:
        """Put a new input in the slot; return the input it replaced (already answered)."""
        replaced, self.pending = self.pending, task
        self.last_accepted = task
        if replaced is not None:
            self.emit(Superseded(id=replaced.id, by=task.id))
        task.runner.wake(self)
        return replaced

    def take(self) -> Task:
        """The runner starts on the waiting input."""
        assert self.pending is not None and self.running is None
        self.running, self.pending = self.pending, None
        return self.running

    def remember(self, frame: Frame, generation: dict) -> None:
        """Keep a sent frame, with what made it, for `export`; only the latest few."""
        self.recent[frame.id] = (frame, generation)
        self.recent.move_to_end(frame.id)
        while len(self.recent) > EXPORTABLE_FRAMES:
            self.recent.popitem(last=False)

    def emit(self, outcome: Outcome, finishes: Task | None = None) -> None:
        if self.closed:
            return
        self._outbox.put_nowait((outcome, finishes))
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            self._room.clear()

    async def next_outcome(self) -> Outcome:
        outcome, finishes = await self._outbox.get()
        if self._outbox.qsize() < OUTBOX_LIMIT:
            self._room.set()
        if finishes is not None and finishes is self.running:
            self.running = None
            if self.pending is not None:
                self.pending.runner.wake(self)
        return outcome

    async def wait_for_room(self) -> None:
        """Called before reading the next input: a client that never reads is not buffered."""
        await self._room.wait()

    def close(self) -> None:
        self.closed = True
        self.pending = None
        self.last_accepted = None
        self.recent.clear()
        self._room.set()

