"""Typed functions over workers, task runs and dead letters (read paths and session rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from psycopg.rows import dict_row

from valka.db.pool import Pool
from valka.db.sqlfile import load_queries

__all__ = ["dead_letter_list", "dead_letter_purge", "dead_letter_task_ids", "queue_counts",
           "queue_settings_all", "queue_settings_get", "queue_settings_upsert",
           "signal_acknowledge", "signal_insert", "signal_list",
           "signal_mark_delivered", "task_run_list", "worker_connect", "worker_disconnect",
           "worker_disconnect_node", "worker_list", "worker_touch"]

_W: Final = load_queries("valka.db", "sql/workers.sql")
_R: Final = load_queries("valka.db", "sql/task_runs.sql")
_D: Final = load_queries("valka.db", "sql/dead_letter_queue.sql")

Row = dict[str, Any]


async def worker_connect(pool: Pool, *, id: str, name: str, node_id: str, queues: list[str],
                         concurrency: int, labels: str, sdk_version: str) -> datetime:
    """Returns the database's connected_at, which the disconnect must match."""
    async with pool.connection() as conn:
        cur = await conn.execute(_W["worker_connect"], {
            "id": id, "name": name, "node_id": node_id, "queues": queues,
            "concurrency": concurrency, "labels": labels, "sdk_version": sdk_version})
        row = await cur.fetchone()
        assert row is not None
        connected_at: datetime = row[0]
        return connected_at


async def worker_disconnect(pool: Pool, *, id: str, node_id: str, connected_at: datetime
                            ) -> None:
    async with pool.connection() as conn:
        await conn.execute(_W["worker_disconnect"],
                           {"id": id, "node_id": node_id, "connected_at": connected_at})


async def worker_disconnect_node(pool: Pool, node_id: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(_W["worker_disconnect_node"], {"node_id": node_id})


async def _fetch(pool: Pool, sql: Any, params: dict[str, Any]) -> list[Row]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def worker_touch(pool: Pool, id: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(_W["worker_touch"], {"id": id})


async def worker_list(pool: Pool, *, include_disconnected: bool, limit: int, stale_s: float
                      ) -> list[Row]:
    return await _fetch(pool, _W["worker_list"], {
        "include_disconnected": include_disconnected, "limit": limit, "stale_s": stale_s})


async def task_run_list(pool: Pool, task_id: str) -> list[Row]:
    return await _fetch(pool, _R["task_run_list"], {"task_id": task_id})


async def dead_letter_list(pool: Pool, *, queue_name: str | None, after_id: str | None,
                           limit: int) -> list[Row]:
    return await _fetch(pool, _D["dead_letter_list"],
                        {"queue_name": queue_name, "after_id": after_id, "limit": limit})


_S: Final = load_queries("valka.db", "sql/task_signals.sql")


async def signal_insert(pool: Pool, *, id: str, task_id: str, name: str, payload: str | None
                        ) -> Row | None:
    rows = await _fetch(pool, _S["signal_insert"],
                        {"id": id, "task_id": task_id, "name": name, "payload": payload})
    return rows[0] if rows else None


async def signal_mark_delivered(pool: Pool, ids: list[str]) -> None:
    async with pool.connection() as conn:
        await conn.execute(_S["signal_mark_delivered"], {"ids": ids})


async def signal_acknowledge(pool: Pool, ids: list[str], worker_id: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(_S["signal_acknowledge"], {"ids": ids, "worker_id": worker_id})


async def signal_list(pool: Pool, task_id: str) -> list[Row]:
    return await _fetch(pool, _S["signal_list"], {"task_id": task_id})


_QS: Final = load_queries("valka.db", "sql/queue_settings.sql")


async def queue_settings_all(pool: Pool) -> list[Row]:
    return await _fetch(pool, _QS["queue_settings_all"], {})


async def queue_settings_get(pool: Pool, queue_name: str) -> Row | None:
    rows = await _fetch(pool, _QS["queue_settings_get"], {"queue_name": queue_name})
    return rows[0] if rows else None


async def queue_settings_upsert(pool: Pool, queue_name: str, *, paused: bool | None = None,
                                max_concurrency: int | None = None,
                                rate_per_second: float | None = None) -> Row:
    rows = await _fetch(pool, _QS["queue_settings_upsert"], {
        "queue_name": queue_name, "paused": paused, "max_concurrency": max_concurrency,
        "rate_per_second": rate_per_second})
    return rows[0]


async def queue_counts(pool: Pool) -> list[Row]:
    return await _fetch(pool, _QS["queue_counts"], {})


async def dead_letter_task_ids(pool: Pool, *, ids: list[str], all: bool,
                               queue_name: str | None) -> list[str]:
    rows = await _fetch(pool, _D["dead_letter_task_ids"],
                        {"ids": ids, "all": all, "queue_name": queue_name})
    return [r["task_id"] for r in rows]


async def dead_letter_purge(pool: Pool, *, ids: list[str], all: bool, queue_name: str | None,
                            older_than: datetime | None) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(_D["dead_letter_purge"], {
            "ids": ids, "all": all, "queue_name": queue_name, "older_than": older_than})
        return cur.rowcount
