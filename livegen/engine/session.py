"""A client's session: the ledger of its accepted inputs, its latest-wins slot and its outbox."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict

from livegen.engine.task import Task
from livegen.protocol import MAX_SEED, Audio, Error, Frame, Outcome, SpeechEnd, Superseded

log = logging.getLogger(__name__)

# Outcomes not yet taken by the sender before the session stops reading new inputs.
OUTBOX_LIMIT = 64
EXPORTABLE_FRAMES = 8  # the session's latest frames that `export` can still sign
EXPORTABLE_UTTERANCES = 2  # and its latest spoken replies


def _keep(kept: OrderedDict, key: str, value: object, limit: int) -> None:
    """Keep `value` as the newest of at most `limit`, the oldest dropped."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > limit:
        kept.popitem(last=False)


class Session:
    """Owes every accepted input exactly one outcome, and answers them all through `answer`.

    The ledger (`accept`, `answer`, `owes`) is the one place that decides what a client is
    still owed: a second final outcome for an input is dropped, so whoever notices an ending
    (a crash, a hang, a drain) may answer what is owed without counting who answered before.

    The slot holds at most one waiting input: a newer one replaces it and the older is
    `superseded`. A session also has at most one input being computed or waiting to go out on
    the wire: its next input only becomes eligible once the sender has taken the previous
    outcome, so a slow client gets fewer frames, never a growing buffer.
    """

    def __init__(self, session_id: str | None = None):
        self.id = session_id or secrets.token_hex(8)
        self.seed = secrets.randbelow(MAX_SEED)  # fixed noise for inputs that name no seed
        self.closed = False
        self.last_input_at = 0.0
        self.pending: Task | None = None
        self.running: Task | None = None
        self.last_framed: Task | None = None  # the input of the latest frame: the similarity filter's reference
        self.recent: OrderedDict[str, tuple[Frame, Task]] = OrderedDict()  # frame id -> frame, its input
        self.spoken: OrderedDict[str, tuple[SpeechEnd, bytes]] = OrderedDict()  # utterance id -> its end, PCM
        self._speaking: dict[Task, list[bytes]] = {}  # the PCM sent so far of utterances still speaking
        self._owed: dict[Task, None] = {}  # accepted, not yet finally answered; in order of arrival
        self._outbox: asyncio.Queue[tuple[Outcome, Task | None]] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self.ended = asyncio.Event()  # set when the server is done with the session (a drain): its socket closes

    # ------------------------------------------------------------------ the ledger

    def accept(self, task: Task) -> None:
        self._owed[task] = None

    def owes(self, task: Task) -> bool:
        return task in self._owed

    @property
    def owed(self) -> list[Task]:
        return list(self._owed)

    def answer(self, task: Task, outcome: Outcome, final: bool = True) -> bool:
        """Send an outcome of an accepted input, unless it was already answered; True if sent."""
        if task not in self._owed:
            log.debug("dropped %s for %r: already answered", outcome.type, task.id)
            return False
        if isinstance(outcome, Audio):
            self._speaking.setdefault(task, []).append(outcome.pcm)
        if final:
            del self._owed[task]
            if isinstance(outcome, Frame):
                self._remember(outcome, task)
            chunks = self._speaking.pop(task, [])
            if isinstance(outcome, SpeechEnd):
                _keep(self.spoken, outcome.id, (outcome, b"".join(chunks)), EXPORTABLE_UTTERANCES)
        self._put(outcome, task if final else None)
        return True

    def send(self, outcome: Outcome) -> None:
        """An answer to a message that was never accepted as an input: an error, an export."""
        self._put(outcome, None)

    # ------------------------------------------------------------------ the slot

    @property
    def eligible(self) -> bool:
        return not self.closed and self.running is None and self.pending is not None

    def offer(self, task: Task) -> Task | None:
        """Accept a new input into the slot; return the input it replaced (answered `superseded`)."""
        self.accept(task)
        replaced, self.pending = self.pending, task
        if replaced is not None:
            self.answer(replaced, Superseded(id=replaced.id, by=task.id))
        task.runner.wake(self)
        return replaced

    def take(self) -> Task:
        """The runner starts on the waiting input."""
        assert self.pending is not None and self.running is None
        self.running, self.pending = self.pending, None
        return self.running

    def drop_pending(self, code: str, message: str) -> Task | None:
        """Answer the waiting input with an error instead of computing it."""
        task, self.pending = self.pending, None
        if task is not None:
            self.answer(task, Error(id=task.id, code=code, message=message))
        return task

    def _remember(self, frame: Frame, task: Task) -> None:
        """Keep a frame, with the input that made it, for `export` and the similarity filter."""
        self.last_framed = task
        _keep(self.recent, frame.id, (frame, task), EXPORTABLE_FRAMES)

    # ------------------------------------------------------------------ the outbox

    def _put(self, outcome: Outcome, finishes: Task | None) -> None:
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

    @property
    def settled(self) -> bool:
        """Nothing owed, nothing waiting to go out."""
        return not self._owed and self._outbox.empty()

    def end(self) -> None:
        self.ended.set()

    def close(self) -> None:
        """The client left: nothing more is sent, and nothing is owed any more."""
        self.closed = True
        self.pending = None
        self.last_framed = None
        self._owed.clear()
        self.recent.clear()
        self.spoken.clear()
        self._speaking.clear()
        self._room.set()
