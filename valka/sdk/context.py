"""What a task handler receives: the task's data, its cancellation state, and a log."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from valka.sdk import _convert
from valka.sdk.models import TaskSignal
from valka.v1 import common_pb2

__all__ = ["TaskContext"]

# Longer log messages are cut; a log line is not the place for a payload.
MAX_LOG_CHARS: Final = 16_000

_echo = logging.getLogger("valka.sdk.task")
_PY_LEVELS: Final = {
    common_pb2.LOG_LEVEL_DEBUG: logging.DEBUG,
    common_pb2.LOG_LEVEL_INFO: logging.INFO,
    common_pb2.LOG_LEVEL_WARN: logging.WARNING,
    common_pb2.LOG_LEVEL_ERROR: logging.ERROR,
}


class TaskContext:
    """One attempt of one task, as its handler sees it.

    An async handler is cancelled (CancelledError) when the task is cancelled, times out or
    is lost; a plain function runs in a thread that cannot be interrupted, so it should
    check `cancelled` (or call `wait_cancelled` instead of sleeping) in long loops.
    Every method is safe to call from the handler's thread.
    """

    __slots__ = (
        "_cancel_reason",
        "_cancelled",
        "_emit",
        "_lock",
        "_signal_arrived",
        "_signal_waiters",
        "_signals",
        "attempt",
        "created_at",
        "input",
        "max_retries",
        "metadata",
        "name",
        "priority",
        "queue",
        "run_count",
        "task_id",
        "task_run_id",
        "timeout_seconds",
        "worker_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        attempt: int,
        task_run_id: str,
        run_count: int,
        max_retries: int,
        queue: str,
        name: str,
        input: Any,
        metadata: dict[str, Any],
        timeout_seconds: int | None,
        priority: int,
        created_at: datetime | None,
        worker_id: str,
        emit_log: Callable[[common_pb2.LogEntry], None],
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.task_run_id = task_run_id
        self.run_count = run_count
        self.max_retries = max_retries
        self.queue = queue
        self.name = name
        self.input = input
        self.metadata = metadata
        self.timeout_seconds = timeout_seconds
        self.priority = priority
        self.created_at = created_at
        self.worker_id = worker_id
        self._emit = emit_log
        self._cancelled = threading.Event()
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()
        self._signals: list[TaskSignal] = []
        self._signal_arrived = threading.Condition(self._lock)
        # Async handlers waiting for a signal by name: (name, future).
        self._signal_waiters: list[tuple[str, asyncio.Future[TaskSignal]]] = []

    def __repr__(self) -> str:
        return f"TaskContext(task_id={self.task_id!r}, name={self.name!r}, attempt={self.attempt})"

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled, timed out, was lost, or the worker gave up
        waiting for it while shutting down."""
        return self._cancelled.is_set()

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel_reason

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to `timeout` seconds until the task is cancelled; True if it was.

        For plain-function handlers: a sleep that ends early on cancellation.
        """
        return self._cancelled.wait(timeout)

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        """Record a log line for this run; the worker sends them in batches.

        `level` is debug, info, warn or error; keyword `fields` travel as JSON metadata.
        """
        code = _convert.log_level(level)
        text = str(message)
        if len(text) > MAX_LOG_CHARS:
            text = text[:MAX_LOG_CHARS] + f"... [{len(text) - MAX_LOG_CHARS} chars cut]"
        extra = _convert.encode_json(fields, "fields") if fields else ""
        _echo.log(_PY_LEVELS[code], "%s [%s] %s", self.name, self.task_id, text)
        self._emit(
            common_pb2.LogEntry(
                task_run_id=self.task_run_id,
                task_id=self.task_id,
                timestamp_ms=time.time_ns() // 1_000_000,
                level=code,
                message=text,
                metadata=extra,
            )
        )

    def signals(self) -> list[TaskSignal]:
        """The signals received since the last call, oldest first."""
        with self._lock:
            received, self._signals = self._signals, []
        return received

    def wait_signal(self, name: str, timeout: float | None = None) -> TaskSignal | None:
        """Block until a signal called `name` arrives and take it; None after `timeout`.

        For plain-function handlers; async handlers use `await wait_for_signal(...)`.
        """
        with self._signal_arrived:
            found: list[TaskSignal] = []
            self._signal_arrived.wait_for(lambda: self._take(name, found), timeout)
            return found[0] if found else None

    async def wait_for_signal(self, name: str, timeout: float | None = None
                              ) -> TaskSignal | None:
        """Wait until a signal called `name` arrives and take it; None after `timeout`."""
        with self._lock:
            found: list[TaskSignal] = []
            if self._take(name, found):
                return found[0]
            future: asyncio.Future[TaskSignal] = asyncio.get_running_loop().create_future()
            waiter = (name, future)
            self._signal_waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            with self._lock:
                if waiter in self._signal_waiters:
                    self._signal_waiters.remove(waiter)

    def _take(self, name: str, found: list[TaskSignal]) -> bool:
        for i, signal in enumerate(self._signals):
            if signal.name == name:
                found.append(self._signals.pop(i))
                return True
        return False

    def _deliver_signal(self, signal: TaskSignal) -> None:
        # Called on the worker's event loop: an async waiter is woken right here.
        with self._signal_arrived:
            for waiter in self._signal_waiters:
                name, future = waiter
                if name == signal.name and not future.done():
                    self._signal_waiters.remove(waiter)
                    future.set_result(signal)
                    return
            self._signals.append(signal)
            self._signal_arrived.notify_all()

    def _cancel(self, reason: str) -> None:
        # The first reason wins: a timeout that fires after a cancel does not relabel it.
        with self._lock:
            if self._cancel_reason is None:
                self._cancel_reason = reason
        self._cancelled.set()
