"""Rate limits through the `limits` library: sliding-window counters in this process's memory.

A sliding window of N per T lets about N through in any span of T: bursts up to N, the average
held at N/T, as a token bucket does. Counters, not one entry per unit spent, so a spend of a
512x512 frame's pixels costs what a spend of one message does; the asyncio storage expires keys
on the event loop, where the threaded one started a timer thread for every paced spend.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from livegen.protocol import ProtocolError


class Rates:
    def __init__(self) -> None:
        self._window = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._parsed: dict[str, RateLimitItem] = {}

    async def take(self, limit: str, rate: str, who: str, cost: int = 1, msg_id: str | None = None) -> None:
        """Spend `cost` of `who`'s `rate` (e.g. "60/second") for `limit`, or raise `rate_limited`."""
        item = self._parsed.get(rate) or self._parsed.setdefault(rate, parse(rate))
        if cost > item.amount:
            raise ProtocolError("rate_limited", f"{limit}: this asks for {cost}, more than its whole limit of "
                                f"{item}", msg_id)
        if not await self._window.hit(item, limit, who, cost=cost):
            # The counters' bound: the whole spend fits again by then at the latest.
            reset_at = (await self._window.get_window_stats(item, limit, who)).reset_time
            wait_ms = max(1, math.ceil((reset_at - time.time()) * 1000))
            raise ProtocolError("rate_limited", f"{limit}: at its limit of {item}; retry in {wait_ms} ms",
                                msg_id, retry_after_ms=wait_ms)
