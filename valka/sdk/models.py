"""The plain Python values the SDK hands out and takes in (msgspec Structs).

Times are timezone-aware UTC datetimes; JSON payloads are already parsed; an unset text
field is None rather than "" so that callers can test it with `is None`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from valka.core.status import TERMINAL, TaskStatus

__all__ = [
    "DeadLetter",
    "DeadLetterPage",
    "QueueInfo",
    "SignalSent",
    "TaskInfo",
    "TaskPage",
    "TaskRun",
    "TaskSignal",
    "TaskSpec",
    "WorkerInfo",
]


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    queue: str
    name: str
    status: TaskStatus
    priority: int
    input: Any
    output: Any
    error: str | None
    attempt: int
    run_count: int
    max_retries: int
    timeout_seconds: int | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    scheduled_at: datetime | None
    worker_id: str | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One task for `create_tasks`; the fields mean what `create_task`'s arguments mean."""

    queue: str
    name: str
    input: Any = None
    priority: int = 0
    max_retries: int | None = None
    timeout_seconds: int | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None
    scheduled_at: datetime | None = None
    delay: float | timedelta | None = None


class TaskPage(msgspec.Struct, frozen=True):
    tasks: list[TaskInfo]
    # Empty on the last page.
    next_page_token: str


class TaskRun(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    task_id: str
    attempt: int
    worker_id: str | None
    node_id: str | None
    status: TaskStatus
    output: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None
    last_heartbeat_at: datetime | None


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    node_id: str | None
    queues: list[str]
    concurrency: int
    active_tasks: int
    status: str
    labels: dict[str, Any]
    connected_at: datetime | None
    last_seen_at: datetime | None
    sdk_version: str


class SignalSent(msgspec.Struct, frozen=True):
    signal_id: str
    # True when a worker holding the task was sent the signal at once.
    delivered: bool


class TaskSignal(msgspec.Struct, frozen=True, kw_only=True):
    """A signal delivered to a running task's handler."""

    id: str
    task_id: str
    name: str
    payload: Any
    sent_at: datetime | None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    task_id: str
    queue: str
    name: str
    input: Any
    metadata: dict[str, Any]
    error: str | None
    run_count: int
    created_at: datetime | None


class DeadLetterPage(msgspec.Struct, frozen=True):
    dead_letters: list[DeadLetter]
    next_page_token: str


class QueueInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    paused: bool
    # 0 = no limit.
    max_concurrency: int
    rate_per_second: float
    counts: dict[str, int]
