"""The cold path's database side: no cached claim plan, and a listener that comes back."""

from __future__ import annotations

from tests.server_fixtures import RunningNode, make_config, wait_until
from valka.db import tasks as db_tasks
from valka.db.pool import open_pool
from valka.server.app import Node


async def test_claim_is_never_prepared(db_url: str) -> None:
    # A plan prepared while the table is empty would keep scanning it sequentially.
    pool = await open_pool(db_url, 1, 1, name="t")
    try:
        for _ in range(10):
            await db_tasks.claim_pending(pool, queue_name="q", partition_id=0, limit=10,
                                         node_id="n", dispatch_lease_s=5)
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%SKIP LOCKED%'")
            row = await cur.fetchone()
        assert row == (0,)
    finally:
        await pool.close()


async def test_listener_reconnects_and_still_wakes_readers(db_url: str) -> None:
    n = Node(make_config(db_url, **{"matching.idle_poll_interval_s": 60.0}))
    await n.start()
    node = RunningNode(n, db_url)
    try:
        w = await node.worker(["lq"], concurrency=1)
        await wait_until(lambda: n.engine is not None and n.engine.demand("lq", 0) > 0)
        killed = await node.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE application_name = 'valka-listener'"
                                " AND datname = current_database()")
        assert killed == [(True,)]
        listener = n.listener
        assert listener is not None
        await wait_until(lambda: listener.connected.is_set() and listener.reconnects > 0)
        await node.sql(
            "INSERT INTO tasks (id, queue_name, task_name, partition_id, max_retries,"
            " timeout_seconds) VALUES (gen_random_uuid(), 'lq', 't', 1, 0, 30)")
        [a] = await w.assignments(1, timeout=5)
        assert a.queue_name == "lq"
        await w.close()
    finally:
        try:
            await node.close()
        finally:
            await n.stop(drain_s=0.5)
