"""A blocking client for code without an event loop (scripts, WSGI apps, notebooks).

Each instance runs one private event loop in a daemon thread and hands every call to it,
so the gRPC channel and its connections are reused across calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from valka.core.status import TaskStatus
from valka.sdk.client import DEFAULT_BATCH_SIZE, ValkaClient
from valka.sdk.models import (
    DeadLetterPage,
    QueueInfo,
    SignalSent,
    TaskInfo,
    TaskPage,
    TaskRun,
    TaskSpec,
    WorkerInfo,
)
from valka.sdk.schedules import ScheduleSyncMethods

__all__ = ["ValkaSyncClient"]

_T = TypeVar("_T")


class ValkaSyncClient(ScheduleSyncMethods):
    """The blocking twin of `ValkaClient`: same methods, same arguments, same errors."""

    def __init__(
        self,
        server: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self._client = ValkaClient(server, token=token, timeout=timeout, batch_size=batch_size)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="valka-sync-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def server(self) -> str:
        return self._client.server

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise RuntimeError("this ValkaSyncClient is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a ValkaSyncClient cannot be called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def create_task(
        self,
        queue: str,
        name: str,
        input: Any = None,
        *,
        priority: int = 0,
        max_retries: int | None = None,
        timeout_seconds: int | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        scheduled_at: datetime | None = None,
        delay: float | timedelta | None = None,
    ) -> TaskInfo:
        return self._run(
            self._client.create_task(
                queue,
                name,
                input,
                priority=priority,
                max_retries=max_retries,
                timeout_seconds=timeout_seconds,
                idempotency_key=idempotency_key,
                metadata=metadata,
                scheduled_at=scheduled_at,
                delay=delay,
            )
        )

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[TaskInfo]:
        return self._run(self._client.create_tasks(specs))

    def get_task(self, task_id: str) -> TaskInfo:
        return self._run(self._client.get_task(task_id))

    def get_tasks(self, task_ids: Sequence[str]) -> list[TaskInfo]:
        return self._run(self._client.get_tasks(task_ids))

    def list_tasks(
        self,
        queue: str | None = None,
        status: TaskStatus | str | None = None,
        task_name: str | None = None,
        page_size: int = 100,
        page_token: str = "",
    ) -> TaskPage:
        return self._run(self._client.list_tasks(queue, status, task_name, page_size, page_token))

    def iter_tasks(
        self,
        queue: str | None = None,
        status: TaskStatus | str | None = None,
        task_name: str | None = None,
        page_size: int = 100,
    ) -> Iterator[TaskInfo]:
        token = ""
        while True:
            page = self.list_tasks(queue, status, task_name, page_size, token)
            yield from page.tasks
            if not page.next_page_token:
                return
            token = page.next_page_token

    def cancel_task(self, task_id: str, reason: str = "") -> TaskInfo:
        return self._run(self._client.cancel_task(task_id, reason))

    def list_runs(self, task_id: str) -> list[TaskRun]:
        return self._run(self._client.list_runs(task_id))

    def send_signal(self, task_id: str, name: str, payload: Any = None) -> SignalSent:
        return self._run(self._client.send_signal(task_id, name, payload))

    def list_workers(self, *, include_disconnected: bool = False) -> list[WorkerInfo]:
        return self._run(self._client.list_workers(include_disconnected=include_disconnected))

    def retry_task(self, task_id: str) -> TaskInfo:
        return self._run(self._client.retry_task(task_id))

    def list_dead_letters(self, queue: str | None = None, page_size: int = 100,
                          page_token: str = "") -> DeadLetterPage:
        return self._run(self._client.list_dead_letters(queue, page_size, page_token))

    def requeue_dead_letters(self, task_ids: Sequence[str] = (), *, queue: str | None = None,
                             all: bool = False) -> list[str]:
        return self._run(self._client.requeue_dead_letters(task_ids, queue=queue, all=all))

    def purge_dead_letters(self, task_ids: Sequence[str] = (), *, queue: str | None = None,
                           all: bool = False, older_than: datetime | None = None) -> int:
        return self._run(self._client.purge_dead_letters(task_ids, queue=queue, all=all,
                                                         older_than=older_than))

    def list_queues(self) -> list[QueueInfo]:
        return self._run(self._client.list_queues())

    def pause_queue(self, queue: str) -> QueueInfo:
        return self._run(self._client.pause_queue(queue))

    def resume_queue(self, queue: str) -> QueueInfo:
        return self._run(self._client.resume_queue(queue))

    def set_queue_limits(self, queue: str, *, max_concurrency: int | None = None,
                         rate_per_second: float | None = None) -> QueueInfo:
        return self._run(self._client.set_queue_limits(
            queue, max_concurrency=max_concurrency, rate_per_second=rate_per_second))

    def wait_for_tasks(
        self,
        task_ids: Sequence[str],
        timeout: float | None = None,
        poll_interval: float = 0.1,
    ) -> list[TaskInfo]:
        return self._run(self._client.wait_for_tasks(task_ids, timeout, poll_interval))
