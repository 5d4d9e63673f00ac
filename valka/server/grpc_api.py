"""ApiService: validate, call the engine or the database, translate. Nothing else."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from valka.core.config import Config
from valka.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from valka.core.ids import parse_id
from valka.core.status import TaskStatus
from valka.db import misc as db_misc
from valka.db import tasks as db_tasks
from valka.dispatcher.engine import Engine
from valka.server.convert import (
    dead_letter_to_proto,
    ms,
    run_to_proto,
    task_to_proto,
    worker_to_proto,
)
from valka.server.grpc_errors import grpc_errors
from valka.server.grpc_schedules import ScheduleRpcs
from valka.server.validation import check_json, check_name, validate_create
from valka.v1 import api_pb2, api_pb2_grpc, common_pb2, events_pb2

__all__ = ["ApiServicer"]

Ctx = grpc.aio.ServicerContext[Any, Any]


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _decode_token(token: str, field: str) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        return parse_id(raw, field)
    except (binascii.Error, UnicodeDecodeError, ValueError, InvalidArgument):
        raise InvalidArgument(f"{field}: not a page token from this server",
                              field=field) from None


class ApiServicer(ScheduleRpcs, api_pb2_grpc.ApiServiceServicer):
    def __init__(self, cfg: Config, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.pool = engine.pool

    def _page_size(self, page: common_pb2.PageRequest, field: str) -> int:
        size = page.page_size or 100
        limit = self.cfg.limits.max_page_size
        if not 1 <= size <= limit:
            raise InvalidArgument(f"{field}: {size} is outside 1..{limit}", field=field)
        return size

    @grpc_errors
    async def CreateTask(self, request: api_pb2.CreateTaskRequest, context: Ctx
                         ) -> api_pb2.CreateTaskResponse:
        draft = validate_create(request, self.cfg.limits, self.cfg.tasks)
        [(row, created)] = await self.engine.create_tasks([draft])
        return api_pb2.CreateTaskResponse(task=task_to_proto(row), created=created)

    @grpc_errors
    async def CreateTasks(self, request: api_pb2.CreateTasksRequest, context: Ctx
                          ) -> api_pb2.CreateTasksResponse:
        limit = self.cfg.limits.max_batch_create
        if not request.tasks:
            raise InvalidArgument("tasks: must not be empty", field="tasks")
        if len(request.tasks) > limit:
            raise ResourceExhausted(f"tasks: {len(request.tasks)} tasks, the limit is {limit}",
                                    field="tasks")
        drafts = [validate_create(t, self.cfg.limits, self.cfg.tasks, prefix=f"tasks[{i}].")
                  for i, t in enumerate(request.tasks)]
        keys = [(d.queue_name, d.idempotency_key) for d in drafts if d.idempotency_key]
        if len(set(keys)) != len(keys):
            raise InvalidArgument("tasks: an idempotency key appears twice in one request",
                                  field="tasks")
        rows = await self.engine.create_tasks(drafts)
        by_id = {str(r["id"]): (r, c) for r, c in rows}
        by_key = {(r["queue_name"], r["idempotency_key"]): (r, c) for r, c in rows
                  if r["idempotency_key"]}
        results = []
        for d in drafts:
            hit = by_id.get(d.id) or by_key.get((d.queue_name, d.idempotency_key))
            if hit is None:  # the task holding the key was deleted in between
                raise NotFound("tasks: a task disappeared while being created")
            results.append(api_pb2.CreateTaskResponse(task=task_to_proto(hit[0]),
                                                      created=hit[1]))
        return api_pb2.CreateTasksResponse(results=results)

    @grpc_errors
    async def GetTask(self, request: api_pb2.GetTaskRequest, context: Ctx
                      ) -> api_pb2.GetTaskResponse:
        task_id = parse_id(request.task_id, "task_id")
        row = await db_tasks.get(self.pool, task_id)
        if row is None:
            raise NotFound(f"task_id: no task {task_id}", field="task_id")
        return api_pb2.GetTaskResponse(task=task_to_proto(row))

    @grpc_errors
    async def GetTasks(self, request: api_pb2.GetTasksRequest, context: Ctx
                       ) -> api_pb2.GetTasksResponse:
        limit = self.cfg.limits.max_page_size
        if len(request.task_ids) > limit:
            raise ResourceExhausted(
                f"task_ids: {len(request.task_ids)} ids, the limit is {limit}", field="task_ids")
        ids = [parse_id(t, f"task_ids[{i}]") for i, t in enumerate(request.task_ids)]
        rows = await db_tasks.get_many(self.pool, ids) if ids else []
        return api_pb2.GetTasksResponse(tasks=[task_to_proto(r) for r in rows])

    @grpc_errors
    async def ListTasks(self, request: api_pb2.ListTasksRequest, context: Ctx
                        ) -> api_pb2.ListTasksResponse:
        size = self._page_size(request.page, "page.page_size")
        after = _decode_token(request.page.page_token, "page.page_token")
        status = None
        if request.status:
            try:
                status = TaskStatus(request.status).name
            except ValueError:
                raise InvalidArgument(f"status: unknown value {request.status}",
                                      field="status") from None
        queue = (check_name(request.queue_name, "queue_name", self.cfg.limits.max_name_length,
                            queue=True) if request.queue_name else None)
        rows = await db_tasks.list_page(
            self.pool, queue_name=queue, status=status, task_name=request.task_name or None,
            after_id=after, limit=size + 1)
        token = _encode_token(str(rows[size - 1]["id"])) if len(rows) > size else ""
        return api_pb2.ListTasksResponse(tasks=[task_to_proto(r) for r in rows[:size]],
                                         next_page_token=token)

    @grpc_errors
    async def CancelTask(self, request: api_pb2.CancelTaskRequest, context: Ctx
                         ) -> api_pb2.CancelTaskResponse:
        task_id = parse_id(request.task_id, "task_id")
        if len(request.reason) > 1000:
            raise InvalidArgument("reason: longer than 1000 characters", field="reason")
        row, cancelled = await self.engine.cancel_task(task_id,
                                                       request.reason.replace("\x00", ""))
        return api_pb2.CancelTaskResponse(task=task_to_proto(row), cancelled=cancelled)

    @grpc_errors
    async def ListTaskRuns(self, request: api_pb2.ListTaskRunsRequest, context: Ctx
                           ) -> api_pb2.ListTaskRunsResponse:
        task_id = parse_id(request.task_id, "task_id")
        rows = await db_misc.task_run_list(self.pool, task_id)
        if not rows and await db_tasks.get(self.pool, task_id) is None:
            raise NotFound(f"task_id: no task {task_id}", field="task_id")
        return api_pb2.ListTaskRunsResponse(runs=[run_to_proto(r) for r in rows])

    @grpc_errors
    async def ListWorkers(self, request: api_pb2.ListWorkersRequest, context: Ctx
                          ) -> api_pb2.ListWorkersResponse:
        rows = await db_misc.worker_list(self.pool,
                                         include_disconnected=request.include_disconnected,
                                         limit=self.cfg.limits.max_page_size,
                                         stale_s=3 * self.cfg.worker.lease_seconds)
        active = {s.worker_id: s.held for s in self.engine.sessions.values()}
        return api_pb2.ListWorkersResponse(
            workers=[worker_to_proto(r, active.get(r["id"], 0)) for r in rows])

    @grpc_errors
    async def ListDeadLetters(self, request: api_pb2.ListDeadLettersRequest, context: Ctx
                              ) -> api_pb2.ListDeadLettersResponse:
        size = self._page_size(request.page, "page.page_size")
        after = _decode_token(request.page.page_token, "page.page_token")
        rows = await db_misc.dead_letter_list(self.pool, queue_name=request.queue_name or None,
                                              after_id=after, limit=size + 1)
        token = _encode_token(rows[size - 1]["id"]) if len(rows) > size else ""
        return api_pb2.ListDeadLettersResponse(
            dead_letters=[dead_letter_to_proto(r) for r in rows[:size]],
            next_page_token=token)

    @grpc_errors
    async def SendSignal(self, request: api_pb2.SendSignalRequest, context: Ctx
                         ) -> api_pb2.SendSignalResponse:
        task_id = parse_id(request.task_id, "task_id")
        name = check_name(request.signal_name, "signal_name", self.cfg.limits.max_name_length)
        payload = (check_json(request.payload, "payload", self.cfg.limits.max_metadata_bytes)
                   if request.payload else None)
        signal_id, delivered = await self.engine.send_signal(task_id, name, payload)
        return api_pb2.SendSignalResponse(signal_id=signal_id, delivered=delivered)

    @grpc_errors
    async def ListSignals(self, request: api_pb2.ListSignalsRequest, context: Ctx
                          ) -> api_pb2.ListSignalsResponse:
        task_id = parse_id(request.task_id, "task_id")
        rows = await db_misc.signal_list(self.pool, task_id)
        return api_pb2.ListSignalsResponse(signals=[common_pb2.TaskSignal(
            id=r["id"], task_id=r["task_id"], name=r["name"], payload=r["payload"] or "",
            status=r["status"], created_at_ms=ms(r["created_at"]),
            delivered_at_ms=ms(r["delivered_at"]), acknowledged_at_ms=ms(r["acknowledged_at"]))
            for r in rows])

    # Live streams come with the event bus and the log ingester (issue 5); until then the
    # calls say so rather than hang.
    async def SubscribeEvents(self, request: events_pb2.SubscribeEventsRequest, context: Ctx
                              ) -> AsyncIterator[events_pb2.TaskEvent]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "SubscribeEvents is not available in this version")
        yield events_pb2.TaskEvent()  # type: ignore[unreachable]  # abort raises

    async def SubscribeLogs(self, request: events_pb2.SubscribeLogsRequest, context: Ctx
                            ) -> AsyncIterator[common_pb2.LogEntry]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "SubscribeLogs is not available in this version")
        yield common_pb2.LogEntry()  # type: ignore[unreachable]  # abort raises

    @grpc_errors
    async def RetryTask(self, request: api_pb2.RetryTaskRequest, context: Ctx
                        ) -> api_pb2.RetryTaskResponse:
        task_id = parse_id(request.task_id, "task_id")
        moved = await db_tasks.retry(self.pool, [task_id])
        row = await db_tasks.get(self.pool, task_id)
        if row is None:
            raise NotFound(f"task_id: no task {task_id}", field="task_id")
        if not moved:
            raise FailedPrecondition(
                f"task_id: task {task_id} is {row['status']}; only FAILED or DEAD_LETTER "
                "tasks can be retried", field="task_id")
        return api_pb2.RetryTaskResponse(task=task_to_proto(row))

    def _dead_letter_filter(self, task_ids: Sequence[str], queue_name: str, all_: bool
                            ) -> tuple[list[str], str | None]:
        ids = [parse_id(t, f"task_ids[{i}]") for i, t in enumerate(task_ids)]
        if len(ids) > self.cfg.limits.max_page_size:
            raise ResourceExhausted(f"task_ids: {len(ids)} ids, the limit is "
                                    f"{self.cfg.limits.max_page_size}", field="task_ids")
        if not ids and not all_:
            raise InvalidArgument("task_ids: give task ids, or set all (with an optional "
                                  "queue_name filter)", field="task_ids")
        queue = (check_name(queue_name, "queue_name", self.cfg.limits.max_name_length,
                            queue=True) if queue_name else None)
        return ids, queue

    @grpc_errors
    async def RequeueDeadLetters(self, request: api_pb2.RequeueDeadLettersRequest,
                                 context: Ctx) -> api_pb2.RequeueDeadLettersResponse:
        ids, queue = self._dead_letter_filter(request.task_ids, request.queue_name,
                                              request.all)
        picked = await db_misc.dead_letter_task_ids(self.pool, ids=ids, all=request.all,
                                                    queue_name=queue)
        moved: list[str] = []
        for start in range(0, len(picked), 1000):
            moved += await db_tasks.retry(self.pool, picked[start:start + 1000])
        return api_pb2.RequeueDeadLettersResponse(task_ids=moved)

    @grpc_errors
    async def PurgeDeadLetters(self, request: api_pb2.PurgeDeadLettersRequest,
                               context: Ctx) -> api_pb2.PurgeDeadLettersResponse:
        ids, queue = self._dead_letter_filter(request.task_ids, request.queue_name,
                                              request.all)
        if request.older_than_ms < 0:
            raise InvalidArgument("older_than_ms: must not be negative", field="older_than_ms")
        older = (datetime.fromtimestamp(request.older_than_ms / 1000, UTC)
                 if request.older_than_ms else None)
        purged = await db_misc.dead_letter_purge(self.pool, ids=ids, all=request.all,
                                                 queue_name=queue, older_than=older)
        return api_pb2.PurgeDeadLettersResponse(purged=purged)

    def _queue_info(self, name: str, counts: dict[str, int] | None = None
                    ) -> api_pb2.QueueInfo:
        paused, max_concurrency, rate = self.engine.controls.settings(name)
        return api_pb2.QueueInfo(name=name, paused=paused, max_concurrency=max_concurrency,
                                 rate_per_second=rate, counts=counts or {})

    @grpc_errors
    async def ListQueues(self, request: api_pb2.ListQueuesRequest, context: Ctx
                         ) -> api_pb2.ListQueuesResponse:
        counts: dict[str, dict[str, int]] = {}
        for r in await db_misc.queue_counts(self.pool):
            counts.setdefault(r["queue_name"], {})[r["status"]] = r["n"]
        for r in await db_misc.queue_settings_all(self.pool):
            counts.setdefault(r["queue_name"], {})
        return api_pb2.ListQueuesResponse(
            queues=[self._queue_info(q, counts[q]) for q in sorted(counts)])

    async def _set_queue(self, queue_name: str, *, paused: bool | None = None,
                         max_concurrency: int | None = None,
                         rate_per_second: float | None = None) -> api_pb2.QueueInfo:
        queue = check_name(queue_name, "queue_name", self.cfg.limits.max_name_length,
                           queue=True)
        row = await db_misc.queue_settings_upsert(
            self.pool, queue, paused=paused, max_concurrency=max_concurrency,
            rate_per_second=rate_per_second)
        # This node applies it now; the others hear it through the notification.
        await self.engine.apply_settings(row)
        return self._queue_info(queue)

    @grpc_errors
    async def PauseQueue(self, request: api_pb2.QueueRequest, context: Ctx
                         ) -> api_pb2.QueueInfo:
        return await self._set_queue(request.queue_name, paused=True)

    @grpc_errors
    async def ResumeQueue(self, request: api_pb2.QueueRequest, context: Ctx
                          ) -> api_pb2.QueueInfo:
        return await self._set_queue(request.queue_name, paused=False)

    @grpc_errors
    async def SetQueueLimits(self, request: api_pb2.SetQueueLimitsRequest, context: Ctx
                             ) -> api_pb2.QueueInfo:
        concurrency = rate = None
        if request.HasField("max_concurrency"):
            concurrency = request.max_concurrency
            if not 0 <= concurrency <= 1_000_000:
                raise InvalidArgument(f"max_concurrency: {concurrency} is outside 0..1000000",
                                      field="max_concurrency")
        if request.HasField("rate_per_second"):
            rate = request.rate_per_second
            if not (math.isfinite(rate) and 0 <= rate <= 1_000_000):
                raise InvalidArgument(f"rate_per_second: {rate} is outside 0..1000000",
                                      field="rate_per_second")
        return await self._set_queue(request.queue_name, max_concurrency=concurrency,
                                     rate_per_second=rate)
