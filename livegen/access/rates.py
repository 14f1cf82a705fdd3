"""Rate limits through the `limits` library: moving windows kept in this process's memory.

A moving window with N per T lets a burst of N through and then holds the average at N/T, as a
token bucket does; a refusal says when the same cost would pass again.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from livegen.protocol import ProtocolError


class Rates:
    def __init__(self) -> None:
        self._window = MovingWindowRateLimiter(MemoryStorage())
        self._parsed: dict[str, RateLimitItem] = {}

    def take(self, limit: str, rate: str, who: str, cost: int = 1, msg_id: str | None = None) -> None:
        """Spend `cost` of `who`'s `rate` (e.g. "60/second") for `limit`, or raise `rate_limited`."""
        item = self._parsed.get(rate) or self._parsed.setdefault(rate, parse(rate))
        if cost > item.amount:
            raise ProtocolError("rate_limited", f"{limit}: this asks for {cost}, more than its whole limit of "
                                f"{item}", msg_id)
        if not self._window.hit(item, limit, who, cost=cost):
            reset_at = self._window.get_window_stats(item, limit, who).reset_time
            wait_ms = max(1, math.ceil((reset_at - time.time()) * 1000))
            raise ProtocolError("rate_limited", f"{limit}: at its limit of {item}; retry in {wait_ms} ms",
                                msg_id, retry_after_ms=wait_ms)
