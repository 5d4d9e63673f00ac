"""Typed functions over the named queries in `sql/schedules.sql`.

JSON and UUID columns are loaded as text, as in `valka.db.tasks`: the template's input and
metadata travel on as text (into protobuf strings and task rows) without a parse.
Every change a client makes also notifies `valka_schedules`, which wakes the leader's runner
wherever it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from valka.db.pool import Pool
from valka.db.sqlfile import load_queries

__all__ = [
    "CHANNEL",
    "Advance",
    "NewSchedule",
    "Row",
    "advance_many",
    "db_now",
    "delete",
    "due",
    "get",
    "list_all",
    "pause",
    "peek",
    "resume",
    "upsert",
]

Q: Final = load_queries("valka.db", "sql/schedules.sql")

# The notification channel the schedule queries signal on.
CHANNEL: Final = "valka_schedules"

Row = dict[str, Any]


class NewSchedule(msgspec.Struct, kw_only=True):
    """A validated schedule definition; `next_fire_at` is None when paused."""

    id: str
    name: str
    cron: str
    timezone: str
    queue_name: str
    task_name: str
    input: str | None
    priority: int
    max_retries: int | None
    timeout_seconds: int | None
    metadata: str
    missed_policy: str
    paused: bool
    next_fire_at: datetime | None


class Advance(msgspec.Struct, frozen=True):
    """Move schedule `id` from fire time `expected` to `next_fire_at` (None: no more)."""

    id: str
    expected: datetime
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_task_id: str | None


def _text_loaders(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("uuid", TextLoader)


async def _rows(pool: Pool, name: str, params: dict[str, Any], *, notify: bool = False
                ) -> list[Row]:
    async with pool.connection() as conn:
        _text_loaders(conn)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(Q[name], params)
            rows = await cur.fetchall() if cur.description else []
            if notify and rows:
                await cur.execute(Q["schedule_notify"])
            return rows


async def db_now(pool: Pool) -> datetime:
    [row] = await _rows(pool, "schedule_now", {})
    value: datetime = row["db_now"]
    return value


async def upsert(pool: Pool, s: NewSchedule) -> Row:
    [row] = await _rows(pool, "schedule_upsert", msgspec.structs.asdict(s), notify=True)
    return row


async def get(pool: Pool, name: str) -> Row | None:
    """The schedule with its `db_now`, or None."""
    rows = await _rows(pool, "schedule_get", {"name": name})
    return rows[0] if rows else None


async def list_all(pool: Pool) -> list[Row]:
    return await _rows(pool, "schedule_list", {})


async def pause(pool: Pool, name: str) -> Row | None:
    rows = await _rows(pool, "schedule_pause", {"name": name}, notify=True)
    return rows[0] if rows else None


async def resume(pool: Pool, name: str, next_fire_at: datetime | None) -> Row | None:
    """None when no paused schedule has this name (unknown, or not paused)."""
    rows = await _rows(pool, "schedule_resume", {"name": name, "next_fire_at": next_fire_at},
                       notify=True)
    return rows[0] if rows else None


async def delete(pool: Pool, name: str) -> bool:
    return bool(await _rows(pool, "schedule_delete", {"name": name}, notify=True))


async def peek(pool: Pool) -> tuple[datetime | None, datetime]:
    """(earliest pending fire time or None, the database clock)."""
    [row] = await _rows(pool, "schedule_peek", {})
    return row["next_fire_at"], row["db_now"]


async def due(pool: Pool, limit: int) -> list[Row]:
    """Schedules due now, earliest first; each row carries the `db_now` it was read at."""
    return await _rows(pool, "schedule_due", {"limit": limit})


async def advance_many(pool: Pool, advances: Sequence[Advance]) -> set[str]:
    """Compare-and-set each schedule's next fire time; returns the ids that moved."""
    rows = await _rows(pool, "schedule_advance_many", {
        "ids": [a.id for a in advances],
        "expected": [a.expected for a in advances],
        "next_fire_ats": [a.next_fire_at for a in advances],
        "last_fire_ats": [a.last_fire_at for a in advances],
        "last_task_ids": [a.last_task_id for a in advances],
    })
    return {str(r["id"]) for r in rows}
