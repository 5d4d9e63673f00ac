"""ValkaError -> gRPC status, at the edge and nowhere else."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import psycopg

from valka.core.errors import ValkaError

__all__ = ["abort_with", "grpc_errors"]

log = logging.getLogger("valka.grpc")

T = TypeVar("T")


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: ValkaError) -> None:
    await context.abort(getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL),
                        exc.message)


def grpc_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map Valka errors to their status; a database outage is UNAVAILABLE, not INTERNAL."""
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
                      ) -> T:
        try:
            return await fn(self, request, context)
        except ValkaError as exc:
            await abort_with(context, exc)
        except psycopg.OperationalError as exc:
            log.warning("database unavailable in %s: %s", fn.__name__, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"database unavailable: {exc}")
        raise AssertionError("unreachable: abort raises")
    return wrapper
