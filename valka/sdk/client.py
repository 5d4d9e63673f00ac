"""The async client: create, inspect and cancel tasks over the gRPC API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import grpc.aio

from valka.core.errors import InvalidArgument, NotFound, Unavailable
from valka.core.ids import parse_id
from valka.core.status import TERMINAL, TaskStatus
from valka.sdk import _convert
from valka.sdk._backoff import Backoff
from valka.sdk._channel import (
    call_metadata,
    map_rpc_error,
    open_channel,
    resolve_server,
    resolve_token,
)
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
from valka.sdk.schedules import ScheduleMethods
from valka.v1 import api_pb2, api_pb2_grpc, common_pb2

if TYPE_CHECKING:
    from valka.v1.api_pb2_grpc import ApiServiceAsyncStub

__all__ = ["ValkaClient"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

# Ids and task specs per GetTasks / CreateTasks call.
DEFAULT_BATCH_SIZE: Final = 500
# How long wait_for_tasks keeps polling through an unreachable server.
UNAVAILABLE_PATIENCE: Final = 60.0


class ValkaClient(ScheduleMethods):
    """Async client of a Valka server; use it as `async with ValkaClient() as client:`.

    `server` defaults to $VALKA_SERVER, then 127.0.0.1:50051; `token` to $VALKA_TOKEN.
    `timeout` bounds each call in seconds. Failed calls raise the matching
    `valka.core.errors` class (InvalidArgument, NotFound, ...) with the server's message.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.server = resolve_server(server)
        self.timeout = timeout
        self.batch_size = batch_size
        self._metadata = call_metadata(resolve_token(token))
        self._channel: grpc.aio.Channel | None = None
        self._stub: ApiServiceAsyncStub | None = None

    async def __aenter__(self) -> Self:
        self._api()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def _api(self) -> ApiServiceAsyncStub:
        # The channel is made on first use because a grpc.aio channel belongs to the event
        # loop that is running when it is created.
        if self._stub is None:
            self._channel = open_channel(self.server)
            self._stub = api_pb2_grpc.ApiServiceStub(self._channel)
        return self._stub

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req
    ) -> _Resp:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from None

    async def create_task(
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
        """Create one task. With an idempotency key already used, the existing task is
        returned instead of a new one."""
        request = _convert.spec_to_proto(
            TaskSpec(
                queue=queue,
                name=name,
                input=input,
                priority=priority,
                max_retries=max_retries,
                timeout_seconds=timeout_seconds,
                idempotency_key=idempotency_key,
                metadata=metadata,
                scheduled_at=scheduled_at,
                delay=delay,
            )
        )
        response = await self._call(self._api().CreateTask, request)
        return _convert.task_from_proto(response.task)

    async def create_tasks(self, specs: Sequence[TaskSpec]) -> list[TaskInfo]:
        """Create many tasks, `batch_size` per call; results are in the order of `specs`.

        Each call is all-or-nothing on the server; when a later call fails, the tasks of
        the earlier calls stay created.
        """
        requests = [_convert.spec_to_proto(spec) for spec in specs]
        api = self._api()
        created: list[TaskInfo] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            response = await self._call(api.CreateTasks, api_pb2.CreateTasksRequest(tasks=chunk))
            created.extend(_convert.task_from_proto(r.task) for r in response.results)
        return created

    async def get_task(self, task_id: str) -> TaskInfo:
        response = await self._call(self._api().GetTask, api_pb2.GetTaskRequest(task_id=task_id))
        return _convert.task_from_proto(response.task)

    async def get_tasks(self, task_ids: Sequence[str]) -> list[TaskInfo]:
        """The tasks with these ids, `batch_size` per call; unknown ids are left out."""
        api = self._api()
        found: list[TaskInfo] = []
        for start in range(0, len(task_ids), self.batch_size):
            chunk = task_ids[start : start + self.batch_size]
            response = await self._call(api.GetTasks, api_pb2.GetTasksRequest(task_ids=chunk))
            found.extend(_convert.task_from_proto(t) for t in response.tasks)
        return found

    async def list_tasks(
        self,
        queue: str | None = None,
        status: TaskStatus | str | None = None,
        task_name: str | None = None,
        page_size: int = 100,
        page_token: str = "",
    ) -> TaskPage:
        request = api_pb2.ListTasksRequest(
            queue_name=queue or "",
            status=_convert.status_to_proto(status),
            task_name=task_name or "",
            page=common_pb2.PageRequest(page_size=page_size, page_token=page_token),
        )
        response = await self._call(self._api().ListTasks, request)
        return TaskPage(
            [_convert.task_from_proto(t) for t in response.tasks], response.next_page_token
        )

    async def iter_tasks(
        self,
        queue: str | None = None,
        status: TaskStatus | str | None = None,
        task_name: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[TaskInfo]:
        """Every task matching the filters, fetching one page at a time."""
        token = ""
        while True:
            page = await self.list_tasks(queue, status, task_name, page_size, token)
            for task in page.tasks:
                yield task
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def cancel_task(self, task_id: str, reason: str = "") -> TaskInfo:
        """Cancel a task; a task already finished is returned unchanged."""
        response = await self._call(
            self._api().CancelTask, api_pb2.CancelTaskRequest(task_id=task_id, reason=reason)
        )
        return _convert.task_from_proto(response.task)

    async def list_runs(self, task_id: str) -> list[TaskRun]:
        response = await self._call(
            self._api().ListTaskRuns, api_pb2.ListTaskRunsRequest(task_id=task_id)
        )
        return [_convert.run_from_proto(r) for r in response.runs]

    async def send_signal(self, task_id: str, name: str, payload: Any = None) -> SignalSent:
        """Send a named signal with a JSON payload to a task's running handler."""
        request = api_pb2.SendSignalRequest(
            task_id=task_id,
            signal_name=name,
            payload="" if payload is None else _convert.encode_json(payload, "payload"),
        )
        response = await self._call(self._api().SendSignal, request)
        return SignalSent(response.signal_id, response.delivered)

    async def list_workers(self, *, include_disconnected: bool = False) -> list[WorkerInfo]:
        response = await self._call(
            self._api().ListWorkers,
            api_pb2.ListWorkersRequest(include_disconnected=include_disconnected),
        )
        return [_convert.worker_from_proto(w) for w in response.workers]

    async def retry_task(self, task_id: str) -> TaskInfo:
        """Run a FAILED or DEAD_LETTER task again, with a fresh set of retries."""
        response = await self._call(self._api().RetryTask,
                                    api_pb2.RetryTaskRequest(task_id=task_id))
        return _convert.task_from_proto(response.task)

    async def list_dead_letters(self, queue: str | None = None, page_size: int = 100,
                                page_token: str = "") -> DeadLetterPage:
        request = api_pb2.ListDeadLettersRequest(
            queue_name=queue or "",
            page=common_pb2.PageRequest(page_size=page_size, page_token=page_token))
        response = await self._call(self._api().ListDeadLetters, request)
        return DeadLetterPage([_convert.dead_letter_from_proto(d)
                               for d in response.dead_letters], response.next_page_token)

    async def requeue_dead_letters(self, task_ids: Sequence[str] = (), *,
                                   queue: str | None = None, all: bool = False) -> list[str]:
        """Re-queue dead letters by task id, or all of them (of one queue, if given)."""
        request = api_pb2.RequeueDeadLettersRequest(task_ids=list(task_ids),
                                                    queue_name=queue or "", all=all)
        return list((await self._call(self._api().RequeueDeadLetters, request)).task_ids)

    async def purge_dead_letters(self, task_ids: Sequence[str] = (), *,
                                 queue: str | None = None, all: bool = False,
                                 older_than: datetime | None = None) -> int:
        """Delete dead letters (their tasks stay DEAD_LETTER); returns how many."""
        request = api_pb2.PurgeDeadLettersRequest(
            task_ids=list(task_ids), queue_name=queue or "", all=all,
            older_than_ms=(_convert.datetime_to_ms(older_than, "older_than")
                           if older_than else 0))
        return (await self._call(self._api().PurgeDeadLetters, request)).purged

    async def list_queues(self) -> list[QueueInfo]:
        response = await self._call(self._api().ListQueues, api_pb2.ListQueuesRequest())
        return [_convert.queue_from_proto(q) for q in response.queues]

    async def pause_queue(self, queue: str) -> QueueInfo:
        return _convert.queue_from_proto(await self._call(
            self._api().PauseQueue, api_pb2.QueueRequest(queue_name=queue)))

    async def resume_queue(self, queue: str) -> QueueInfo:
        return _convert.queue_from_proto(await self._call(
            self._api().ResumeQueue, api_pb2.QueueRequest(queue_name=queue)))

    async def set_queue_limits(self, queue: str, *, max_concurrency: int | None = None,
                               rate_per_second: float | None = None) -> QueueInfo:
        """Set a queue's limits; None leaves one as it is, 0 removes it."""
        request = api_pb2.SetQueueLimitsRequest(queue_name=queue)
        if max_concurrency is not None:
            request.max_concurrency = max_concurrency
        if rate_per_second is not None:
            request.rate_per_second = rate_per_second
        return _convert.queue_from_proto(await self._call(self._api().SetQueueLimits,
                                                          request))

    async def wait_for_tasks(
        self,
        task_ids: Sequence[str],
        timeout: float | None = None,
        poll_interval: float = 0.1,
    ) -> list[TaskInfo]:
        """Poll until every task is terminal (COMPLETED, FAILED, DEAD_LETTER or CANCELLED)
        and return them in the order of `task_ids`.

        Raises TimeoutError after `timeout` seconds, NotFound for an id the server does not
        know. An unreachable server (a restart) is polled again for up to a minute before
        its Unavailable error is raised.
        """
        if poll_interval <= 0:
            raise InvalidArgument("poll_interval: must be > 0", field="poll_interval")
        deadline = None if timeout is None else time.monotonic() + timeout
        # The server answers with canonical ids; the caller's spelling may differ in case.
        wanted = [parse_id(task_id, "task_ids") for task_id in task_ids]
        done: dict[str, TaskInfo] = {}
        waiting = list(dict.fromkeys(wanted))
        outage_started: float | None = None
        retry = Backoff(base=poll_interval, cap=max(poll_interval, 2.0))
        while True:
            try:
                found = {task.id: task for task in await self.get_tasks(waiting)}
            except Unavailable:
                # A server restart should not end a long wait; a long outage does.
                now = time.monotonic()
                outage_started = outage_started or now
                if now - outage_started > UNAVAILABLE_PATIENCE or (
                    deadline is not None and now + retry.base > deadline
                ):
                    raise
                await asyncio.sleep(retry.next_delay())
                continue
            outage_started = None
            retry.reset()
            missing = [task_id for task_id in waiting if task_id not in found]
            if missing:
                raise NotFound(f"task not found: {missing[0]}" + _more(len(missing)))
            for task in found.values():
                if task.status in TERMINAL:
                    done[task.id] = task
            waiting = [task_id for task_id in waiting if task_id not in done]
            if not waiting:
                return [done[task_id] for task_id in wanted]
            pause = poll_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(waiting)} of {len(done) + len(waiting)} tasks not finished "
                        f"after {timeout} s"
                    )
                pause = min(pause, left)
            await asyncio.sleep(pause)


def _more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""
