"""Cron schedules in the SDK: create, list, pause, resume and delete them.

The calls are plain async functions over a `ValkaClient`; `ScheduleMethods` and
`ScheduleSyncMethods` bind them as methods of `ValkaClient` and `ValkaSyncClient`
(`client.create_schedule(...)`).

A schedule creates one task per fire time of its cron expression, in its queue, even across
server restarts and leader changes. Fire times that pass while no server leads are handled
by its `missed_policy`: SKIP creates nothing for them, RUN_ONCE one task for all of them.
"""

from __future__ import annotations

import enum
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc.aio
import msgspec

from valka.core.errors import InvalidArgument
from valka.sdk import _convert
from valka.sdk.models import TaskSpec
from valka.v1 import api_pb2

if TYPE_CHECKING:
    from valka.sdk.client import ValkaClient
    from valka.v1.api_pb2_grpc import ApiServiceAsyncStub

__all__ = [
    "MissedPolicy",
    "ScheduleInfo",
    "ScheduleMethods",
    "ScheduleSyncMethods",
    "create_schedule",
    "delete_schedule",
    "list_schedules",
    "pause_schedule",
    "resume_schedule",
    "schedule_from_proto",
]

_T = TypeVar("_T")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class _Client(Protocol):
    """What the calls need of a client: ValkaClient's stub and its error-mapping call."""

    def _api(self) -> ApiServiceAsyncStub: ...

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
                    request: _Req) -> _Resp: ...


class MissedPolicy(enum.StrEnum):
    """What fire times that passed while no server led turn into."""

    SKIP = "skip"
    RUN_ONCE = "run_once"


_POLICY_TO_PROTO = {
    MissedPolicy.SKIP: api_pb2.MISSED_POLICY_SKIP,
    MissedPolicy.RUN_ONCE: api_pb2.MISSED_POLICY_RUN_ONCE,
}
_POLICY_FROM_PROTO = {v: k for k, v in _POLICY_TO_PROTO.items()}


class ScheduleInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    cron: str
    timezone: str
    # The task template.
    queue: str
    task_name: str
    input: Any
    priority: int
    # None: the server's default at each fire.
    max_retries: int | None
    timeout_seconds: int | None
    metadata: dict[str, Any]
    missed_policy: MissedPolicy
    paused: bool
    # None while paused (or when the expression has no fire time left).
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_task_id: str | None
    created_at: datetime | None


def schedule_from_proto(s: api_pb2.Schedule) -> ScheduleInfo:
    t = s.task
    metadata = _convert.decode_json(t.metadata)
    return ScheduleInfo(
        id=s.id, name=s.name, cron=s.cron, timezone=s.timezone, queue=t.queue_name,
        task_name=t.task_name, input=_convert.decode_json(t.input), priority=t.priority,
        max_retries=t.max_retries if t.HasField("max_retries") else None,
        timeout_seconds=t.timeout_seconds if t.HasField("timeout_seconds") else None,
        metadata=metadata if isinstance(metadata, dict) else {},
        # A newer server's policy this SDK does not know is shown as the default.
        missed_policy=_POLICY_FROM_PROTO.get(s.missed_policy, MissedPolicy.RUN_ONCE),
        paused=s.paused, next_fire_at=_convert.ms_to_datetime(s.next_fire_at_ms),
        last_fire_at=_convert.ms_to_datetime(s.last_fire_at_ms),
        last_task_id=s.last_task_id or None,
        created_at=_convert.ms_to_datetime(s.created_at_ms))


def _policy(value: MissedPolicy | str) -> api_pb2.MissedPolicy.ValueType:
    try:
        return _POLICY_TO_PROTO[MissedPolicy(str(value).lower().replace("-", "_"))]
    except ValueError:
        raise InvalidArgument(f"missed_policy: {value!r} is not one of skip, run_once",
                              field="missed_policy") from None


async def create_schedule(
    client: _Client,
    name: str,
    cron: str,
    queue: str,
    task_name: str,
    input: Any = None,
    *,
    timezone: str = "UTC",
    priority: int = 0,
    max_retries: int | None = None,
    timeout_seconds: int | None = None,
    metadata: dict[str, Any] | None = None,
    missed_policy: MissedPolicy | str = MissedPolicy.RUN_ONCE,
    paused: bool = False,
) -> ScheduleInfo:
    """Create a schedule, or replace the definition of the one named `name`.

    `cron` has five fields (minute hour day-of-month month day-of-week), six with seconds
    first, or is a macro such as "@daily"; it is read on `timezone`'s wall clock (an IANA
    name). Each fire time creates the task `task_name` in `queue` with this input.
    """
    task = _convert.spec_to_proto(TaskSpec(
        queue=queue, name=task_name, input=input, priority=priority, max_retries=max_retries,
        timeout_seconds=timeout_seconds, metadata=metadata))
    request = api_pb2.CreateScheduleRequest(name=name, cron=cron, timezone=timezone, task=task,
                                            missed_policy=_policy(missed_policy), paused=paused)
    return schedule_from_proto(await client._call(client._api().CreateSchedule, request))


async def list_schedules(client: _Client) -> list[ScheduleInfo]:
    response = await client._call(client._api().ListSchedules, api_pb2.ListSchedulesRequest())
    return [schedule_from_proto(s) for s in response.schedules]


async def pause_schedule(client: _Client, name: str) -> ScheduleInfo:
    """Stop a schedule firing (pausing a paused schedule changes nothing)."""
    return schedule_from_proto(
        await client._call(client._api().PauseSchedule, api_pb2.ScheduleRequest(name=name)))


async def resume_schedule(client: _Client, name: str) -> ScheduleInfo:
    """Fire again from the next future fire time; the paused period is not caught up."""
    return schedule_from_proto(
        await client._call(client._api().ResumeSchedule, api_pb2.ScheduleRequest(name=name)))


async def delete_schedule(client: _Client, name: str) -> bool:
    """Delete a schedule (the tasks it created stay). Raises NotFound for an unknown name."""
    response = await client._call(client._api().DeleteSchedule,
                                  api_pb2.ScheduleRequest(name=name))
    return bool(response.deleted)


class ScheduleMethods:
    """The schedule calls as methods of ValkaClient."""

    if TYPE_CHECKING:
        def _api(self) -> ApiServiceAsyncStub: ...

        async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
                        request: _Req) -> _Resp: ...

    async def create_schedule(
        self,
        name: str,
        cron: str,
        queue: str,
        task_name: str,
        input: Any = None,
        *,
        timezone: str = "UTC",
        priority: int = 0,
        max_retries: int | None = None,
        timeout_seconds: int | None = None,
        metadata: dict[str, Any] | None = None,
        missed_policy: MissedPolicy | str = MissedPolicy.RUN_ONCE,
        paused: bool = False,
    ) -> ScheduleInfo:
        """See `valka.sdk.schedules.create_schedule`."""
        return await create_schedule(
            self, name, cron, queue, task_name, input, timezone=timezone,
            priority=priority, max_retries=max_retries, timeout_seconds=timeout_seconds,
            metadata=metadata, missed_policy=missed_policy, paused=paused)

    async def list_schedules(self) -> list[ScheduleInfo]:
        return await list_schedules(self)

    async def pause_schedule(self, name: str) -> ScheduleInfo:
        return await pause_schedule(self, name)

    async def resume_schedule(self, name: str) -> ScheduleInfo:
        return await resume_schedule(self, name)

    async def delete_schedule(self, name: str) -> bool:
        return await delete_schedule(self, name)


class ScheduleSyncMethods:
    """The schedule calls as methods of ValkaSyncClient (same arguments, blocking)."""

    if TYPE_CHECKING:
        _client: ValkaClient

        def _run(self, coro: Coroutine[Any, Any, _T]) -> _T: ...

    def create_schedule(
        self,
        name: str,
        cron: str,
        queue: str,
        task_name: str,
        input: Any = None,
        *,
        timezone: str = "UTC",
        priority: int = 0,
        max_retries: int | None = None,
        timeout_seconds: int | None = None,
        metadata: dict[str, Any] | None = None,
        missed_policy: MissedPolicy | str = MissedPolicy.RUN_ONCE,
        paused: bool = False,
    ) -> ScheduleInfo:
        return self._run(create_schedule(
            self._client, name, cron, queue, task_name, input, timezone=timezone,
            priority=priority, max_retries=max_retries, timeout_seconds=timeout_seconds,
            metadata=metadata, missed_policy=missed_policy, paused=paused))

    def list_schedules(self) -> list[ScheduleInfo]:
        return self._run(list_schedules(self._client))

    def pause_schedule(self, name: str) -> ScheduleInfo:
        return self._run(pause_schedule(self._client, name))

    def resume_schedule(self, name: str) -> ScheduleInfo:
        return self._run(resume_schedule(self._client, name))

    def delete_schedule(self, name: str) -> bool:
        return self._run(delete_schedule(self._client, name))
