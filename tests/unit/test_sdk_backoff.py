"""Reconnect backoff: exponential ceiling, cap, full jitter."""

from __future__ import annotations

import random

import pytest

from valka.sdk import Backoff
from valka.sdk._backoff import ceiling


def test_ceiling_doubles_from_the_base_and_stops_at_the_cap() -> None:
    assert [ceiling(n, 0.1, 2.0, 30.0) for n in range(4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert ceiling(8, 0.1, 2.0, 30.0) == 25.6
    assert ceiling(9, 0.1, 2.0, 30.0) == 30.0
    # Far past the cap: no float overflow from factor ** attempt.
    assert ceiling(100_000, 0.1, 2.0, 30.0) == 30.0


def test_delays_stay_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(random_fn=random.Random(7).random)
    for attempt in range(40):
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling(attempt, 0.1, 2.0, 30.0)
    assert backoff.attempt == 40


def test_full_jitter_uses_the_whole_window() -> None:
    draws = iter([0.0, 1.0, 0.5])
    backoff = Backoff(base=1.0, factor=2.0, cap=100.0, random_fn=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 2.0, 2.0]


def test_jitter_spreads_delays_at_the_cap() -> None:
    rng = random.Random(1)
    delays = []
    for _ in range(500):
        backoff = Backoff(random_fn=rng.random)
        for _ in range(20):
            delay = backoff.next_delay()
        delays.append(delay)
    assert max(delays) <= 30.0
    # Uniform over [0, 30]: both halves of the window are used, and the mean is near 15.
    assert min(delays) < 5.0 and max(delays) > 25.0
    assert 12.0 < sum(delays) / len(delays) < 18.0


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(random_fn=lambda: 1.0)
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 0.1


@pytest.mark.parametrize(("base", "factor", "cap"), [(0, 2, 1), (1, 2, 0.5), (0.1, 0.5, 1)])
def test_nonsense_settings_are_refused(base: float, factor: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, factor, cap)
