"""Conversions between protobuf messages and the SDK's Python values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from valka.core.errors import InvalidArgument
from valka.core.status import TaskStatus, status_from_name
from valka.sdk.models import (
    DeadLetter,
    QueueInfo,
    TaskInfo,
    TaskRun,
    TaskSignal,
    TaskSpec,
    WorkerInfo,
)
from valka.v1 import api_pb2, common_pb2, worker_pb2

__all__ = [
    "datetime_to_ms",
    "decode_json",
    "delay_to_ms",
    "encode_json",
    "log_level",
    "ms_to_datetime",
    "run_from_proto",
    "signal_from_proto",
    "spec_to_proto",
    "status_to_proto",
    "task_from_proto",
    "worker_from_proto",
]

_INT32_MAX: Final = 2**31 - 1

_LOG_LEVELS: Final[dict[str, common_pb2.LogLevel.ValueType]] = {
    "debug": common_pb2.LOG_LEVEL_DEBUG,
    "info": common_pb2.LOG_LEVEL_INFO,
    "warn": common_pb2.LOG_LEVEL_WARN,
    "warning": common_pb2.LOG_LEVEL_WARN,
    "error": common_pb2.LOG_LEVEL_ERROR,
}


def ms_to_datetime(ms: int) -> datetime | None:
    """Unix milliseconds to an aware UTC datetime; 0 means unset."""
    if ms == 0:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: datetime, field: str) -> int:
    # A naive datetime is ambiguous (local time? UTC?), and guessing wrong shifts a schedule
    # by hours without any error, so it is refused.
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{field}: needs a timezone-aware datetime", field=field)
    return math.floor(value.timestamp() * 1000)


def delay_to_ms(value: float | timedelta, field: str = "delay") -> int:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{field}: must be a finite number of seconds >= 0", field=field)
    return round(seconds * 1000)


def encode_json(value: Any, field: str) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"{field}: not JSON-serialisable: {exc}", field=field) from None


def decode_json(text: str) -> Any:
    """Parse JSON text sent by the server; empty text is null.

    The server validated the payload when it was stored, so text that does not parse is
    handed back as it is rather than making a whole listing fail.
    """
    if not text:
        return None
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _object(text: str) -> dict[str, Any]:
    value = decode_json(text)
    return value if isinstance(value, dict) else {}


def _opt(text: str) -> str | None:
    return text or None


def _status(value: int) -> TaskStatus:
    try:
        return TaskStatus(value)
    except ValueError:
        # A newer server may know states this SDK does not.
        return TaskStatus.UNSPECIFIED


def status_to_proto(status: TaskStatus | str | None) -> common_pb2.TaskStatus.ValueType:
    if status is None:
        return common_pb2.TASK_STATUS_UNSPECIFIED
    if isinstance(status, str):
        status = status_from_name(status)
    return common_pb2.TaskStatus.ValueType(int(status))


def log_level(level: str) -> common_pb2.LogLevel.ValueType:
    found = _LOG_LEVELS.get(level.lower())
    if found is None:
        raise ValueError(f"unknown log level {level!r}; expected debug, info, warn or error")
    return found


def task_from_proto(task: common_pb2.Task) -> TaskInfo:
    return TaskInfo(
        id=task.id,
        queue=task.queue_name,
        name=task.task_name,
        status=_status(task.status),
        priority=task.priority,
        input=decode_json(task.input),
        output=decode_json(task.output),
        error=_opt(task.error_message),
        attempt=task.attempt,
        run_count=task.run_count,
        max_retries=task.max_retries,
        timeout_seconds=task.timeout_seconds or None,
        idempotency_key=_opt(task.idempotency_key),
        metadata=_object(task.metadata),
        created_at=ms_to_datetime(task.created_at_ms),
        updated_at=ms_to_datetime(task.updated_at_ms),
        started_at=ms_to_datetime(task.started_at_ms),
        completed_at=ms_to_datetime(task.completed_at_ms),
        scheduled_at=ms_to_datetime(task.scheduled_at_ms),
        worker_id=_opt(task.worker_id),
    )


def run_from_proto(run: common_pb2.TaskRun) -> TaskRun:
    return TaskRun(
        id=run.id,
        task_id=run.task_id,
        attempt=run.attempt,
        worker_id=_opt(run.worker_id),
        node_id=_opt(run.node_id),
        status=_status(run.status),
        output=decode_json(run.output),
        error=_opt(run.error_message),
        started_at=ms_to_datetime(run.started_at_ms),
        finished_at=ms_to_datetime(run.finished_at_ms),
        lease_expires_at=ms_to_datetime(run.lease_expires_at_ms),
        last_heartbeat_at=ms_to_datetime(run.last_heartbeat_ms),
    )


def worker_from_proto(worker: common_pb2.WorkerInfo) -> WorkerInfo:
    return WorkerInfo(
        id=worker.id,
        name=worker.name,
        node_id=_opt(worker.node_id),
        queues=list(worker.queues),
        concurrency=worker.concurrency,
        active_tasks=worker.active_tasks,
        status=worker.status,
        labels=_object(worker.labels),
        connected_at=ms_to_datetime(worker.connected_at_ms),
        last_seen_at=ms_to_datetime(worker.last_seen_ms),
        sdk_version=worker.sdk_version,
    )


def signal_from_proto(signal: worker_pb2.Signal) -> TaskSignal:
    return TaskSignal(
        id=signal.signal_id,
        task_id=signal.task_id,
        name=signal.name,
        payload=decode_json(signal.payload),
        sent_at=ms_to_datetime(signal.timestamp_ms),
    )


def _int32(value: int | None, field: str, minimum: int) -> int:
    # bool is an int subclass; True as a priority is almost surely a mistake.
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field}: must be an integer", field=field)
    if not minimum <= value <= _INT32_MAX:
        raise InvalidArgument(f"{field}: must be between {minimum} and {_INT32_MAX}", field=field)
    return value


def spec_to_proto(spec: TaskSpec) -> api_pb2.CreateTaskRequest:
    """Build the request for one task, checking what can be checked without the server."""
    if not isinstance(spec.queue, str) or not spec.queue:
        raise InvalidArgument("queue: must be a non-empty string", field="queue")
    if not isinstance(spec.name, str) or not spec.name:
        raise InvalidArgument("name: must be a non-empty string", field="name")
    request = api_pb2.CreateTaskRequest(
        queue_name=spec.queue,
        task_name=spec.name,
        input="" if spec.input is None else encode_json(spec.input, "input"),
        priority=_int32(spec.priority, "priority", -_INT32_MAX - 1),
        idempotency_key=spec.idempotency_key or "",
    )
    if spec.max_retries is not None:
        request.max_retries = _int32(spec.max_retries, "max_retries", 0)
    if spec.timeout_seconds is not None:
        request.timeout_seconds = _int32(spec.timeout_seconds, "timeout_seconds", 0)
    if spec.metadata is not None:
        if not isinstance(spec.metadata, Mapping):
            raise InvalidArgument("metadata: must be a mapping (JSON object)", field="metadata")
        request.metadata = encode_json(spec.metadata, "metadata")
    if spec.scheduled_at is not None and spec.delay is not None:
        raise InvalidArgument("give either scheduled_at or delay, not both", field="delay")
    if spec.scheduled_at is not None:
        request.scheduled_at_ms = datetime_to_ms(spec.scheduled_at, "scheduled_at")
    if spec.delay is not None:
        request.delay_ms = delay_to_ms(spec.delay)
    return request


def dead_letter_from_proto(d: common_pb2.DeadLetter) -> DeadLetter:
    return DeadLetter(
        id=d.id, task_id=d.task_id, queue=d.queue_name, name=d.task_name,
        input=decode_json(d.input), metadata=_object(d.metadata), error=_opt(d.error_message),
        run_count=d.run_count, created_at=ms_to_datetime(d.created_at_ms))


def queue_from_proto(q: api_pb2.QueueInfo) -> QueueInfo:
    return QueueInfo(name=q.name, paused=q.paused, max_concurrency=q.max_concurrency,
                     rate_per_second=q.rate_per_second, counts=dict(q.counts))
