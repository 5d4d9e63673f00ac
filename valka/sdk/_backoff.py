"""Reconnect delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw between zero and the exponential ceiling) spreads a fleet of
workers that lost the same server over the whole window, instead of having them all
reconnect at the same instants and knock it over again.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff", "ceiling"]


def ceiling(attempt: int, base: float, factor: float, cap: float) -> float:
    """The largest delay allowed before reconnect attempt `attempt` (0-based)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # Stop multiplying once past the cap: factor**attempt overflows a float for large attempts.
    delay = base
    for _ in range(attempt):
        delay *= factor
        if delay >= cap:
            return cap
    return min(delay, cap)


class Backoff:
    """Delays for successive reconnect attempts; `reset()` after a connection that held."""

    __slots__ = ("_attempt", "_random", "base", "cap", "factor")

    def __init__(
        self,
        base: float = 0.1,
        factor: float = 2.0,
        cap: float = 30.0,
        *,
        random_fn: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("backoff needs 0 < base <= cap and factor >= 1")
        self.base = base
        self.factor = factor
        self.cap = cap
        self._random = random_fn
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        top = ceiling(self._attempt, self.base, self.factor, self.cap)
        self._attempt += 1
        return top * self._random()

    def reset(self) -> None:
        self._attempt = 0
