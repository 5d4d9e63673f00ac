"""The main job with real processes: a server, two workers, 2,000 tasks, each done once."""

from __future__ import annotations

import psycopg
import pytest

from tests.e2e.procs import Procs
from valka._build import compiled
from valka.core.status import TaskStatus
from valka.sdk import ValkaClient
from valka.sdk.models import TaskSpec

pytestmark = pytest.mark.e2e


async def test_two_thousand_tasks_two_workers_each_exactly_once(server_proc: Procs) -> None:
    server_proc.start_server()
    server_proc.start_worker("e2e", concurrency=16)
    server_proc.start_worker("e2e", concurrency=16)
    async with ValkaClient(server_proc.address) as client:
        created = await client.create_tasks(
            [TaskSpec(queue="e2e", name="noop", input=i) for i in range(2000)])
        assert len({t.id for t in created}) == 2000
        done = await client.wait_for_tasks([t.id for t in created], timeout=120)
    bad = [t for t in done if t.status != TaskStatus.COMPLETED]
    assert not bad, (bad[:3], server_proc.logs())
    assert sorted(t.output["echo"] for t in done) == list(range(2000))
    async with await psycopg.AsyncConnection.connect(server_proc.db_url) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT task_id), min(attempt), max(attempt),"
            " count(DISTINCT worker_id) FROM task_runs")
        runs, tasks, _, _, workers = await cur.fetchone()  # type: ignore[misc]
    assert runs == tasks == 2000  # one run each: nothing ran twice
    assert workers == 2  # both workers took part
    # The server process ran the same build as this test run.
    assert f"compiled core: {'yes' if compiled() else 'no'}" in server_proc.logs()
