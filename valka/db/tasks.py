"""Typed functions over the named queries in `sql/tasks.sql`.

Every write is a compare-and-set on (status, attempt) and, where a worker is involved, the
worker's id: a write that lost its race changes nothing and simply returns fewer rows. Each
function takes many rows at once (parallel arrays unnested in SQL), so the callers can batch.
JSON and UUID columns are loaded as text: they travel on as text (protobuf strings), so
parsing them into Python objects here would only be undone a moment later.
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
    "NewTask",
    "Row",
    "cancel",
    "claim_pending",
    "complete_many",
    "extend_leases",
    "fail_many",
    "get",
    "get_by_idempotency_keys",
    "get_many",
    "insert_many",
    "list_page",
    "mark_running_many",
    "pending_queues",
    "promote_due",
    "reap_expired_dispatching",
    "reap_expired_running",
    "release_dispatching_many",
    "retry",
]

Q: Final = load_queries("valka.db", "sql/tasks.sql")

Row = dict[str, Any]


class NewTask(msgspec.Struct, kw_only=True):
    """A validated task ready to insert; `worker_id` set means it goes out on the hot path."""

    id: str
    queue_name: str
    task_name: str
    partition_id: int
    priority: int
    input: str | None
    metadata: str
    max_retries: int
    timeout_seconds: int
    idempotency_key: str | None
    scheduled_at: datetime | None = None
    delay_ms: int = 0
    worker_id: str | None = None


def _text_loaders(conn: psycopg.AsyncConnection[Any]) -> None:
    # A dict insert per checkout; cheaper than wiring a custom pool configure for it.
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("uuid", TextLoader)


async def _rows(pool: Pool, name: str, params: dict[str, Any], *, prepare: bool | None = None
                ) -> list[Row]:
    async with pool.connection() as conn:
        _text_loaders(conn)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(Q[name], params, prepare=prepare)
            return await cur.fetchall() if cur.description else []


async def insert_many(pool: Pool, tasks: Sequence[NewTask], *, node_id: str,
                      dispatch_lease_s: float) -> list[Row]:
    """Insert tasks in one statement; returns the rows inserted (duplicates are left out)."""
    return await _rows(pool, "task_insert_many", {
        "ids": [t.id for t in tasks],
        "queue_names": [t.queue_name for t in tasks],
        "task_names": [t.task_name for t in tasks],
        "partition_ids": [t.partition_id for t in tasks],
        "statuses": ["DISPATCHING" if t.worker_id else "PENDING" for t in tasks],
        "priorities": [t.priority for t in tasks],
        "inputs": [t.input for t in tasks],
        "metadatas": [t.metadata for t in tasks],
        "max_retries": [t.max_retries for t in tasks],
        "timeouts": [t.timeout_seconds for t in tasks],
        "idempotency_keys": [t.idempotency_key for t in tasks],
        "worker_ids": [t.worker_id for t in tasks],
        "scheduled_ats": [t.scheduled_at for t in tasks],
        "delays_ms": [t.delay_ms for t in tasks],
        "node_id": node_id,
        "dispatch_lease_s": dispatch_lease_s,
    })


async def get_by_idempotency_keys(pool: Pool, keys: Sequence[tuple[str, str]]) -> list[Row]:
    return await _rows(pool, "task_get_by_idempotency_keys", {
        "queue_names": [q for q, _ in keys], "idempotency_keys": [k for _, k in keys]})


async def get(pool: Pool, task_id: str) -> Row | None:
    rows = await _rows(pool, "task_get", {"id": task_id})
    return rows[0] if rows else None


async def get_many(pool: Pool, task_ids: Sequence[str]) -> list[Row]:
    return await _rows(pool, "task_get_many", {"ids": list(task_ids)})


async def list_page(pool: Pool, *, queue_name: str | None, status: str | None,
                    task_name: str | None, after_id: str | None, limit: int) -> list[Row]:
    return await _rows(pool, "task_list", {
        "queue_name": queue_name, "status": status, "task_name": task_name,
        "after_id": after_id, "limit": limit})


async def claim_pending(pool: Pool, *, queue_name: str, partition_id: int, limit: int,
                        node_id: str, dispatch_lease_s: float) -> list[Row]:
    """Claim ready tasks of one partition, best first. Never prepared: see the query."""
    rows = await _rows(pool, "task_claim_pending", {
        "queue_name": queue_name, "partition_id": partition_id, "limit": limit,
        "node_id": node_id, "dispatch_lease_s": dispatch_lease_s}, prepare=False)
    # UPDATE ... RETURNING does not keep the subquery's order.
    rows.sort(key=lambda r: (-r["priority"], r["id"]))
    return rows


async def pending_queues(pool: Pool) -> list[str]:
    return [r["queue_name"] for r in await _rows(pool, "task_pending_queues", {})]


async def release_dispatching_many(pool: Pool, refs: Sequence[tuple[str, int]]) -> list[Row]:
    return await _rows(pool, "task_release_dispatching_many", {
        "ids": [i for i, _ in refs], "attempts": [a for _, a in refs]})


async def mark_running_many(pool: Pool, refs: Sequence[tuple[str, int, str]], *,
                            worker_id: str, node_id: str, lease_s: float) -> list[Row]:
    """refs: (task id, attempt, run id). Returns the rows that moved to RUNNING."""
    return await _rows(pool, "task_mark_running_many", {
        "ids": [r[0] for r in refs], "attempts": [r[1] for r in refs],
        "run_ids": [r[2] for r in refs], "worker_id": worker_id, "node_id": node_id,
        "lease_s": lease_s})


async def complete_many(pool: Pool, results: Sequence[tuple[str, int, str | None]], *,
                        worker_id: str) -> list[Row]:
    """results: (task id, attempt, output JSON). Returns the rows that completed."""
    return await _rows(pool, "task_complete_many", {
        "ids": [r[0] for r in results], "attempts": [r[1] for r in results],
        "outputs": [r[2] for r in results], "worker_id": worker_id})


async def fail_many(pool: Pool, failures: Sequence[tuple[str, int, str, bool, int]], *,
                    worker_id: str, backoff_base_s: float, backoff_cap_s: float) -> list[Row]:
    """failures: (task id, attempt, error, retryable, retry delay ms)."""
    return await _rows(pool, "task_fail_many", {
        "ids": [f[0] for f in failures], "attempts": [f[1] for f in failures],
        "errors": [f[2] for f in failures], "retryables": [f[3] for f in failures],
        "delays_ms": [f[4] for f in failures], "worker_id": worker_id,
        "backoff_base_s": backoff_base_s, "backoff_cap_s": backoff_cap_s})


async def extend_leases(pool: Pool, refs: Sequence[tuple[str, int]], *, worker_id: str,
                        lease_s: float) -> list[Row]:
    return await _rows(pool, "task_extend_leases", {
        "ids": [i for i, _ in refs], "attempts": [a for _, a in refs],
        "worker_id": worker_id, "lease_s": lease_s})


async def cancel(pool: Pool, task_id: str, reason: str) -> Row | None:
    """Cancel a non-terminal task; the row carries `previous_status`. None: already final."""
    async with pool.connection() as conn:
        _text_loaders(conn)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(Q["task_cancel"], {"id": task_id, "reason": reason})
            row = await cur.fetchone()
            if row is not None:
                await cur.execute(Q["task_run_cancel"],
                                  {"task_id": task_id, "attempt": row["attempt"]})
            return row


async def reap_expired_dispatching(pool: Pool, limit: int) -> list[Row]:
    return await _rows(pool, "task_reap_expired_dispatching", {"limit": limit})


async def reap_expired_running(pool: Pool, limit: int, *, backoff_base_s: float,
                               backoff_cap_s: float) -> list[Row]:
    return await _rows(pool, "task_reap_expired_running", {
        "limit": limit, "backoff_base_s": backoff_base_s, "backoff_cap_s": backoff_cap_s})


async def promote_due(pool: Pool, limit: int) -> list[Row]:
    return await _rows(pool, "task_promote_due", {"limit": limit})


async def retry(pool: Pool, task_ids: Sequence[str]) -> list[str]:
    """FAILED or DEAD_LETTER -> PENDING; returns the ids that moved."""
    return [r["id"] for r in await _rows(pool, "task_retry", {"ids": list(task_ids)})]
