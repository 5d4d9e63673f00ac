"""Exceptions a task handler raises to say how its task should end.

Any other exception is a retryable failure; these two make the intent explicit.
"""

from __future__ import annotations

__all__ = ["Fail", "Retry"]


class Retry(Exception):
    """Fail this attempt and run the task again (counts against max_retries).

    `delay` is the wait in seconds before the next attempt; None lets the server pick its
    backoff.
    """

    def __init__(self, delay: float | None = None, message: str = "") -> None:
        if delay is not None and not delay >= 0:  # also rejects NaN
            raise ValueError("Retry delay must be a number of seconds >= 0")
        self.delay = delay
        self.message = message
        super().__init__(message or "retry requested")


class Fail(Exception):
    """Fail the task for good: it is not retried, whatever its max_retries."""

    def __init__(self, message: str = "") -> None:
        self.message = message
        super().__init__(message or "failed by handler")
