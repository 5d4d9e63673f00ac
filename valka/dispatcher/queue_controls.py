"""Per-queue controls on this node: pause, concurrency limit, rate limit (token bucket).

The engine asks `allowance(queue)` before it starts work of a queue (hot path or claim) and
reports what it started (`took`) and what finished (`done`). Limits are node-local: with one
node they hold across all its workers; across several nodes each node enforces the whole
limit on its own share (stated in the closing notes of the multi-node work).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

__all__ = ["UNLIMITED", "QueueControls"]

UNLIMITED: Final = 1 << 30


class _Settings:
    __slots__ = ("last", "max_concurrency", "paused", "rate", "tokens")

    def __init__(self) -> None:
        self.paused = False
        self.max_concurrency = 0
        self.rate = 0.0
        self.tokens = 0.0
        self.last = 0.0


class QueueControls:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._settings: dict[str, _Settings] = {}
        # Tasks started (assigned, running or claimed into memory) and not finished.
        self.inflight: dict[str, int] = {}

    def apply(self, queue: str, *, paused: bool, max_concurrency: int,
              rate_per_second: float) -> None:
        s = self._settings.setdefault(queue, _Settings())
        if rate_per_second != s.rate:
            # A new rate starts with one second's worth (at least one task) in the bucket.
            s.tokens = max(rate_per_second, 1.0) if rate_per_second > 0 else 0.0
            s.last = self._clock()
        s.paused, s.max_concurrency, s.rate = paused, max_concurrency, rate_per_second

    def paused(self, queue: str) -> bool:
        s = self._settings.get(queue)
        return s is not None and s.paused

    def _refill(self, s: _Settings) -> None:
        now = self._clock()
        s.tokens = min(max(s.rate, 1.0), s.tokens + (now - s.last) * s.rate)
        s.last = now

    def allowance(self, queue: str) -> int:
        """How many tasks of `queue` may start now."""
        s = self._settings.get(queue)
        if s is None:
            return UNLIMITED
        if s.paused:
            return 0
        room = UNLIMITED
        if s.max_concurrency > 0:
            room = max(s.max_concurrency - self.inflight.get(queue, 0), 0)
        if s.rate > 0:
            self._refill(s)
            room = min(room, int(s.tokens))
        return room

    def next_token_in(self, queue: str) -> float | None:
        """Seconds until the rate limit lets one more task start; None if it is not the cap."""
        s = self._settings.get(queue)
        if s is None or s.rate <= 0 or s.paused:
            return None
        self._refill(s)
        return None if s.tokens >= 1 else (1 - s.tokens) / s.rate

    def took(self, queue: str, n: int) -> None:
        self.inflight[queue] = self.inflight.get(queue, 0) + n
        s = self._settings.get(queue)
        if s is not None and s.rate > 0:
            s.tokens -= n

    def done(self, queue: str, n: int) -> None:
        left = self.inflight.get(queue, 0) - n
        if left > 0:
            self.inflight[queue] = left
        else:
            self.inflight.pop(queue, None)

    def settings(self, queue: str) -> tuple[bool, int, float]:
        s = self._settings.get(queue)
        return (False, 0, 0.0) if s is None else (s.paused, s.max_concurrency, s.rate)
