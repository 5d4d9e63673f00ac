"""Calling a task handler, and turning what it did (returned, raised) into a Result."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Callable
from typing import Any, Final

import msgspec

from valka.sdk.context import TaskContext
from valka.sdk.errors import Fail, Retry
from valka.v1 import worker_pb2

__all__ = [
    "Handler",
    "OutputError",
    "call_async",
    "call_sync",
    "describe",
    "encode_output",
    "exception_result",
    "failure",
    "format_traceback",
    "is_async",
    "success",
]

Handler = Callable[[TaskContext], Any]

# Error texts are for people; past this they are cut (the log keeps the full traceback).
MAX_ERROR_CHARS: Final = 4_000


class OutputError(Exception):
    """The handler's return value cannot be stored as the task's output."""


def encode_output(value: Any, max_bytes: int) -> str:
    """JSON text of a handler's return value, or OutputError naming the problem."""
    try:
        data = msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OutputError(f"output is not JSON-serialisable: {exc}") from None
    if max_bytes and len(data) > max_bytes:
        raise OutputError(
            f"output is {len(data)} bytes of JSON, over the server's limit of {max_bytes} bytes"
        )
    return data.decode()


def _cut(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[:MAX_ERROR_CHARS] + "..."


def success(task_id: str, attempt: int, output: str) -> worker_pb2.Result:
    return worker_pb2.Result(task_id=task_id, attempt=attempt, success=True, output=output)


def failure(
    task_id: str, attempt: int, error: str, *, retryable: bool, retry_delay_ms: int = 0
) -> worker_pb2.Result:
    return worker_pb2.Result(
        task_id=task_id,
        attempt=attempt,
        success=False,
        retryable=retryable,
        error_message=_cut(error),
        retry_delay_ms=retry_delay_ms,
    )


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


def exception_result(
    task_id: str,
    attempt: int,
    exc: BaseException,
    non_retryable: tuple[type[BaseException], ...],
) -> worker_pb2.Result:
    """The Result for a handler that raised `exc` (not a cancellation)."""
    if isinstance(exc, Retry):
        # 0 means "the server's backoff" on the wire, so an explicit zero becomes 1 ms.
        delay_ms = 0 if exc.delay is None else max(1, round(exc.delay * 1000))
        return failure(
            task_id,
            attempt,
            exc.message or "retry requested",
            retryable=True,
            retry_delay_ms=delay_ms,
        )
    if isinstance(exc, Fail):
        return failure(task_id, attempt, exc.message or "failed by handler", retryable=False)
    if isinstance(exc, OutputError):
        return failure(task_id, attempt, str(exc), retryable=False)
    retryable = not (non_retryable and isinstance(exc, non_retryable))
    return failure(task_id, attempt, describe(exc), retryable=retryable)


def is_async(fn: Handler) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    return inspect.iscoroutinefunction(call)


async def call_async(fn: Handler, ctx: TaskContext, max_output: int) -> str:
    value = await fn(ctx)
    return encode_output(value, max_output)


def call_sync(
    fn: Handler, ctx: TaskContext, max_output: int, loop: asyncio.AbstractEventLoop
) -> str:
    value = fn(ctx)
    if inspect.iscoroutine(value):
        # A plain function that returned a coroutine (a wrapper around an async function):
        # run it on the worker's loop and wait here, in the handler's thread.
        value = asyncio.run_coroutine_threadsafe(value, loop).result()
    return encode_output(value, max_output)
