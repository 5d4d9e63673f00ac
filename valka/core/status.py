"""Task states and the transitions between them (compiled with mypyc).

The numbers equal the protobuf enum `valka.v1.TaskStatus`; the names equal the labels of the
PostgreSQL enum `task_status`. docs/state_machine.md draws the same table, and a unit test
keeps the two equal.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from valka.core.errors import InvalidArgument

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "TaskStatus",
    "allowed_from",
    "can_transition",
    "is_terminal",
    "status_from_name",
]


class TaskStatus(IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    DISPATCHING = 2
    RUNNING = 3
    COMPLETED = 4
    FAILED = 5
    RETRY = 6
    DEAD_LETTER = 7
    CANCELLED = 8


_EMPTY: Final[frozenset[TaskStatus]] = frozenset()

TRANSITIONS: Final[dict[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.UNSPECIFIED: _EMPTY,
    TaskStatus.PENDING: frozenset({TaskStatus.DISPATCHING, TaskStatus.CANCELLED}),
    # Back to PENDING when the worker never acknowledged the assignment.
    TaskStatus.DISPATCHING: frozenset(
        {TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.CANCELLED}
    ),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.RETRY,
            TaskStatus.DEAD_LETTER,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.RETRY: frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED}),
    TaskStatus.COMPLETED: _EMPTY,
    TaskStatus.CANCELLED: _EMPTY,
    # Only an explicit operator re-queue leaves these two.
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.DEAD_LETTER: frozenset({TaskStatus.PENDING}),
}

TERMINAL: Final[frozenset[TaskStatus]] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DEAD_LETTER, TaskStatus.CANCELLED}
)

_BY_NAME: Final[dict[str, TaskStatus]] = {
    s.name: s for s in TaskStatus if s is not TaskStatus.UNSPECIFIED
}
_PROTO_PREFIX: Final = "TASK_STATUS_"


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    return new in TRANSITIONS[current]


def allowed_from(current: TaskStatus) -> frozenset[TaskStatus]:
    return TRANSITIONS[current]


def is_terminal(status: TaskStatus) -> bool:
    return status in TERMINAL


def status_from_name(name: str, field: str = "status") -> TaskStatus:
    """Parse a status name as users, the database and protobuf spell it.

    Accepts `RUNNING`, `running` and `TASK_STATUS_RUNNING`; rejects UNSPECIFIED because
    no task is ever in that state.
    """
    key = name.strip().upper()
    if key.startswith(_PROTO_PREFIX):
        key = key[len(_PROTO_PREFIX) :]
    status = _BY_NAME.get(key)
    if status is None:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise InvalidArgument(
            f"{field}: unknown task status {shown!r}; expected one of {', '.join(_BY_NAME)}",
            field=field,
        )
    return status
