"""Database rows to protobuf messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from valka.core.status import TaskStatus
from valka.v1 import common_pb2

__all__ = [
    "dead_letter_to_proto",
    "ms",
    "run_to_proto",
    "status_value",
    "task_to_proto",
    "worker_to_proto",
]


def ms(value: datetime | None) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


def status_value(name: str) -> common_pb2.TaskStatus.ValueType:
    return common_pb2.TaskStatus.ValueType(TaskStatus[name].value)


def task_to_proto(row: dict[str, Any]) -> common_pb2.Task:
    return common_pb2.Task(
        id=str(row["id"]), queue_name=row["queue_name"], task_name=row["task_name"],
        status=status_value(str(row["status"])), priority=row["priority"],
        max_retries=row["max_retries"], attempt=row["attempt"], run_count=row["run_count"],
        timeout_seconds=row["timeout_seconds"],
        idempotency_key=row["idempotency_key"] or "", input=row["input"] or "",
        metadata=row["metadata"] or "{}", output=row["output"] or "",
        error_message=row["error_message"] or "",
        scheduled_at_ms=ms(row["scheduled_at"]), created_at_ms=ms(row["created_at"]),
        updated_at_ms=ms(row["updated_at"]), started_at_ms=ms(row["started_at"]),
        completed_at_ms=ms(row["completed_at"]), partition_id=row["partition_id"],
        worker_id=str(row["worker_id"] or ""))


def run_to_proto(row: dict[str, Any]) -> common_pb2.TaskRun:
    return common_pb2.TaskRun(
        id=row["id"], task_id=row["task_id"], attempt=row["attempt"],
        worker_id=row["worker_id"] or "", node_id=row["node_id"] or "",
        status=status_value(row["status"]), output=row["output"] or "",
        error_message=row["error_message"] or "", started_at_ms=ms(row["started_at"]),
        finished_at_ms=ms(row["finished_at"]), last_heartbeat_ms=ms(row["last_heartbeat_at"]))


def worker_to_proto(row: dict[str, Any], active: int) -> common_pb2.WorkerInfo:
    return common_pb2.WorkerInfo(
        id=row["id"], name=row["name"], node_id=row["node_id"], queues=row["queues"],
        concurrency=row["concurrency"], active_tasks=active, status=row["status"],
        labels=row["labels"], connected_at_ms=ms(row["connected_at"]),
        last_seen_ms=ms(row["last_seen_at"]), sdk_version=row["sdk_version"])


def dead_letter_to_proto(row: dict[str, Any]) -> common_pb2.DeadLetter:
    return common_pb2.DeadLetter(
        id=row["id"], task_id=row["task_id"], queue_name=row["queue_name"],
        task_name=row["task_name"], input=row["input"] or "", metadata=row["metadata"] or "{}",
        error_message=row["error_message"] or "", run_count=row["run_count"],
        created_at_ms=ms(row["created_at"]))
