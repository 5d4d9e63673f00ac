"""Schedule RPCs of ApiService (cron): validate, store, translate.

Mixed into ApiServicer, whose `cfg` and `pool` they use. Every check runs before anything is
written, and each failure names its field (`name`, `cron`, `timezone`, `task.<field>`,
`missed_policy`), so a bad request changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import grpc

from valka.core.config import Config
from valka.core.errors import InvalidArgument, NotFound
from valka.core.ids import new_id
from valka.db import schedules as db_schedules
from valka.db.pool import Pool
from valka.scheduler.cron import Cron, MissedPolicy, parse_cron
from valka.server.convert import ms
from valka.server.grpc_errors import grpc_errors
from valka.server.validation import check_name, validate_create
from valka.v1 import api_pb2

__all__ = ["ScheduleRpcs", "schedule_to_proto"]

Ctx = grpc.aio.ServicerContext[Any, Any]

# The default keeps what a leader outage would otherwise lose: one late run.
_POLICY_FROM_PROTO: Final[dict[int, MissedPolicy]] = {
    api_pb2.MISSED_POLICY_UNSPECIFIED: MissedPolicy.RUN_ONCE,
    api_pb2.MISSED_POLICY_SKIP: MissedPolicy.SKIP,
    api_pb2.MISSED_POLICY_RUN_ONCE: MissedPolicy.RUN_ONCE,
}
_POLICY_TO_PROTO: Final[dict[str, api_pb2.MissedPolicy.ValueType]] = {
    "SKIP": api_pb2.MISSED_POLICY_SKIP,
    "RUN_ONCE": api_pb2.MISSED_POLICY_RUN_ONCE,
}


def schedule_to_proto(row: dict[str, Any]) -> api_pb2.Schedule:
    task = api_pb2.CreateTaskRequest(
        queue_name=row["queue_name"], task_name=row["task_name"], input=row["input"] or "",
        priority=row["priority"], metadata=row["metadata"] or "{}")
    if row["max_retries"] is not None:
        task.max_retries = row["max_retries"]
    if row["timeout_seconds"] is not None:
        task.timeout_seconds = row["timeout_seconds"]
    return api_pb2.Schedule(
        id=str(row["id"]), name=row["name"], cron=row["cron"], timezone=row["timezone"],
        task=task, missed_policy=_POLICY_TO_PROTO[row["missed_policy"]],
        paused=row["paused"], next_fire_at_ms=ms(row["next_fire_at"]),
        last_fire_at_ms=ms(row["last_fire_at"]), last_task_id=str(row["last_task_id"] or ""),
        created_at_ms=ms(row["created_at"]))


def _first_fire(cron: Cron, now: datetime) -> datetime:
    first = cron.next_after(now)
    if first is None:
        raise InvalidArgument(f"cron: {cron.expression!r} never fires after {now.isoformat()}",
                              field="cron")
    return first


class ScheduleRpcs:
    cfg: Config
    pool: Pool

    def _schedule_name(self, name: str) -> str:
        return check_name(name, "name", self.cfg.limits.max_name_length)

    def _validate_schedule(self, request: api_pb2.CreateScheduleRequest
                           ) -> tuple[Cron, db_schedules.NewSchedule]:
        name = self._schedule_name(request.name)
        cron = parse_cron(request.cron, request.timezone or "UTC")
        if not request.HasField("task"):
            raise InvalidArgument("task: the task to create at each fire time is required",
                                  field="task")
        t = request.task
        # The schedule keys each task by its fire time, and fires it when due.
        for field, value in (("idempotency_key", t.idempotency_key),
                             ("scheduled_at_ms", t.scheduled_at_ms),
                             ("delay_ms", t.delay_ms)):
            if value:
                raise InvalidArgument(
                    f"task.{field}: not allowed in a schedule's task (the schedule sets it)",
                    field=f"task.{field}")
        draft = validate_create(t, self.cfg.limits, self.cfg.tasks, prefix="task.")
        policy = _POLICY_FROM_PROTO.get(request.missed_policy)
        if policy is None:
            raise InvalidArgument(f"missed_policy: unknown value {request.missed_policy}",
                                  field="missed_policy")
        return cron, db_schedules.NewSchedule(
            id=new_id(), name=name, cron=cron.expression, timezone=cron.timezone,
            queue_name=draft.queue_name, task_name=draft.task_name, input=draft.input,
            priority=draft.priority,
            max_retries=t.max_retries if t.HasField("max_retries") else None,
            timeout_seconds=t.timeout_seconds if t.HasField("timeout_seconds") else None,
            metadata=draft.metadata, missed_policy=policy.value, paused=request.paused,
            next_fire_at=None)

    @grpc_errors
    async def CreateSchedule(self, request: api_pb2.CreateScheduleRequest, context: Ctx
                             ) -> api_pb2.Schedule:
        cron, schedule = self._validate_schedule(request)
        first = _first_fire(cron, await db_schedules.db_now(self.pool))
        if not schedule.paused:
            schedule.next_fire_at = first
        return schedule_to_proto(await db_schedules.upsert(self.pool, schedule))

    @grpc_errors
    async def ListSchedules(self, request: api_pb2.ListSchedulesRequest, context: Ctx
                            ) -> api_pb2.ListSchedulesResponse:
        rows = await db_schedules.list_all(self.pool)
        return api_pb2.ListSchedulesResponse(schedules=[schedule_to_proto(r) for r in rows])

    @grpc_errors
    async def PauseSchedule(self, request: api_pb2.ScheduleRequest, context: Ctx
                            ) -> api_pb2.Schedule:
        name = self._schedule_name(request.name)
        row = await db_schedules.pause(self.pool, name)
        if row is None:
            raise _not_found(name)
        return schedule_to_proto(row)

    @grpc_errors
    async def ResumeSchedule(self, request: api_pb2.ScheduleRequest, context: Ctx
                             ) -> api_pb2.Schedule:
        """Resume at the next future fire time: the paused period is not caught up."""
        name = self._schedule_name(request.name)
        row = await db_schedules.get(self.pool, name)
        if row is None:
            raise _not_found(name)
        if not row["paused"]:
            return schedule_to_proto(row)
        cron = parse_cron(row["cron"], row["timezone"])
        resumed = await db_schedules.resume(self.pool, name, cron.next_after(row["db_now"]))
        if resumed is None:  # resumed or deleted meanwhile
            resumed = await db_schedules.get(self.pool, name)
            if resumed is None:
                raise _not_found(name)
        return schedule_to_proto(resumed)

    @grpc_errors
    async def DeleteSchedule(self, request: api_pb2.ScheduleRequest, context: Ctx
                             ) -> api_pb2.DeleteScheduleResponse:
        name = self._schedule_name(request.name)
        if not await db_schedules.delete(self.pool, name):
            raise _not_found(name)
        return api_pb2.DeleteScheduleResponse(deleted=True)


def _not_found(name: str) -> NotFound:
    return NotFound(f"name: no schedule named {name!r}", field="name")
