"""Failure scenarios that need real processes: SIGKILLed workers and servers, SIGTERM
drains, and a PostgreSQL restart under load (see failures.md).

Workers run tests/e2e/failure_worker.py, which logs every execution to a file, so a test
counts executions across processes, not just the rows the server wrote.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.procs import HERE, Procs, free_port
from tests.pg_fixtures import new_embedded_data_dir
from tests.server_fixtures import wait_until
from valka.core.errors import Unavailable
from valka.core.status import TaskStatus
from valka.sdk import ValkaClient
from valka.sdk.models import TaskSpec

pytestmark = pytest.mark.e2e

LEASE_S = 2.0
REAPER_S = 0.2
FAST_ENV = {
    "VALKA_WORKER__LEASE_SECONDS": str(LEASE_S),
    "VALKA_SCHEDULER__REAPER_INTERVAL_S": str(REAPER_S),
    "VALKA_RETRY__BACKOFF_BASE_SECONDS": "0.05",
    "VALKA_WORKER__DISPATCH_TIMEOUT_SECONDS": "2",
}
# What a loaded 2-core CI machine may add to any bound on timing.
SLACK_S = 2.0


def start_worker(procs: Procs, queue: str, runs: Path, *, concurrency: int = 8,
                 worker_id: str | None = None, drain_timeout: float = 30.0
                 ) -> subprocess.Popen[bytes]:
    args = [str(HERE / "failure_worker.py"), procs.address, queue,
            "--concurrency", str(concurrency), "--drain-timeout", str(drain_timeout),
            "--runs-file", str(runs)]
    if worker_id is not None:
        args += ["--worker-id", worker_id]
    return procs.spawn(args, f"worker-{len(procs.procs)}.log")


def executions(runs: Path) -> list[tuple[str, int, int, int]]:
    """(task id, attempt, run count, pid) of every execution started, in order."""
    if not runs.exists():
        return []
    out = []
    for line in runs.read_text().splitlines():
        task_id, attempt, run_count, pid = line.split()
        out.append((task_id, int(attempt), int(run_count), int(pid)))
    return out


async def sql(db_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(query.encode(), params or None)
        return await cur.fetchall() if cur.description else []


async def statuses(db_url: str) -> collections.Counter[str]:
    rows = await sql(db_url, "SELECT status::text, count(*) FROM tasks GROUP BY 1")
    return collections.Counter({str(s): int(n) for s, n in rows})


async def wait_workers(client: ValkaClient, n: int) -> None:
    async def enough() -> bool:
        return len(await client.list_workers()) >= n

    await wait_until(enough, timeout=30, interval=0.05)


async def wait_all_terminal(db_url: str, n: int, timeout: float) -> None:
    async def all_terminal() -> bool:
        counts = await statuses(db_url)
        return counts["COMPLETED"] + counts["FAILED"] + counts["DEAD_LETTER"] == n

    try:
        await wait_until(all_terminal, timeout=timeout, interval=0.25)
    except AssertionError:
        raise AssertionError(f"not all {n} tasks finished within {timeout}s:"
                             f" {await _unfinished(db_url)}") from None


async def _unfinished(db_url: str) -> list[tuple[Any, ...]]:
    """Why tasks did not complete: status and error, with how many of each."""
    return await sql(db_url, "SELECT status::text, error_message, count(*) FROM tasks"
                             " WHERE status <> 'COMPLETED' GROUP BY 1, 2 ORDER BY 3 DESC")


async def completed_twice(db_url: str) -> list[tuple[Any, ...]]:
    return await sql(db_url, "SELECT task_id FROM task_runs WHERE status = 'COMPLETED'"
                             " GROUP BY task_id HAVING count(*) > 1")


# ---- 4: a worker restarted with the same id --------------------------------------------

async def test_f4_worker_restarted_with_same_id_gets_task_back_after_lease(
        server_proc: Procs, tmp_path: Path) -> None:
    server_proc.start_server(**FAST_ENV)
    runs = tmp_path / "runs"
    worker_id = str(uuid.uuid4())
    first = start_worker(server_proc, "f4", runs, concurrency=1, worker_id=worker_id)
    async with ValkaClient(server_proc.address) as client:
        await wait_workers(client, 1)
        task = await client.create_task("f4", "work", {"first": 3600}, max_retries=3)
        await wait_until(lambda: executions(runs), timeout=30)
        [(lease_at_kill, attempt)] = await sql(
            server_proc.db_url, "SELECT lease_expires_at, attempt FROM tasks WHERE id = %s",
            task.id)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        # The pod comes back under the same name before anything noticed the crash.
        second = start_worker(server_proc, "f4", runs, concurrency=1, worker_id=worker_id)
        [done] = await client.wait_for_tasks([task.id], timeout=30, poll_interval=0.05)
        elapsed = time.monotonic() - killed
    assert done.status == TaskStatus.COMPLETED, server_proc.logs()
    assert done.run_count == 2 and done.attempt > attempt
    assert [e[3] for e in executions(runs)] == [first.pid, second.pid]
    rows = await sql(server_proc.db_url,
                     "SELECT attempt, status::text, error_message, worker_id::text, finished_at"
                     " FROM task_runs WHERE task_id = %s ORDER BY started_at", task.id)
    assert [(r[0], r[1], r[3]) for r in rows] == [
        (attempt, "FAILED", worker_id), (done.attempt, "COMPLETED", worker_id)]
    assert "lease" in rows[0][2]
    assert rows[0][4] >= lease_at_kill  # taken back once its lease ran out, not before
    assert elapsed <= LEASE_S + 2 * REAPER_S + SLACK_S, f"took {elapsed:.2f}s"


# ---- 6: a SIGKILLed worker ----------------------------------------------------------------

async def test_f6_sigkilled_worker_task_redispatched_within_lease_plus_reaper_interval(
        server_proc: Procs, tmp_path: Path) -> None:
    server_proc.start_server(**FAST_ENV)
    runs = tmp_path / "runs"
    victim = start_worker(server_proc, "f6", runs, concurrency=1)
    async with ValkaClient(server_proc.address) as client:
        await wait_workers(client, 1)
        task = await client.create_task("f6", "work", {"first": 3600}, max_retries=3)
        await wait_until(lambda: executions(runs), timeout=30)
        [(first_attempt,)] = await sql(server_proc.db_url,
                                       "SELECT attempt FROM tasks WHERE id = %s", task.id)
        rescuer = start_worker(server_proc, "f6", runs, concurrency=1)
        await wait_workers(client, 2)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        await wait_until(lambda: len(executions(runs)) >= 2, timeout=LEASE_S + 30,
                         interval=0.01)
        redispatched = time.monotonic() - killed
        [done] = await client.wait_for_tasks([task.id], timeout=30, poll_interval=0.05)
    assert done.status == TaskStatus.COMPLETED, server_proc.logs()
    # Requeued within the lease plus a sweep (the next sweep promotes the shortest retry).
    assert redispatched <= LEASE_S + 2 * REAPER_S + SLACK_S, f"took {redispatched:.2f}s"
    assert done.attempt > first_attempt and done.run_count == 2
    assert [e[3] for e in executions(runs)] == [victim.pid, rescuer.pid]


# ---- graceful shutdown -------------------------------------------------------------------

async def test_graceful_shutdown_sigterm_loses_no_work(server_proc: Procs,
                                                       tmp_path: Path) -> None:
    lease = 60.0  # anything that waited for a lease would blow every deadline below
    drain = 2.0
    server_proc.start_server(**{**FAST_ENV, "VALKA_WORKER__LEASE_SECONDS": str(lease)})
    runs = tmp_path / "runs"
    victim = start_worker(server_proc, "drain", runs, concurrency=4, drain_timeout=drain)
    async with ValkaClient(server_proc.address) as client:
        await wait_workers(client, 1)
        short = await client.create_tasks(
            [TaskSpec(queue="drain", name="work", input={"seconds": 1.0}) for _ in range(2)])
        long = await client.create_tasks(
            [TaskSpec(queue="drain", name="work", input={"first": 600}) for _ in range(2)])
        await wait_until(lambda: len(executions(runs)) == 4, timeout=30)
        queued = await client.create_tasks(
            [TaskSpec(queue="drain", name="work", input={"seconds": 0.01}) for _ in range(10)])
        stopped = time.monotonic()
        victim.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(victim.wait, drain + 20)
        drained = time.monotonic() - stopped
        assert code == 0, server_proc.logs()
        assert drained <= drain + SLACK_S + 1.0, f"drain took {drained:.2f}s"
        # Nothing is left held by the stopped worker.
        held = await sql(server_proc.db_url, "SELECT count(*) FROM tasks"
                                             " WHERE status IN ('DISPATCHING', 'RUNNING')")
        assert held == [(0,)], server_proc.logs()
        start_worker(server_proc, "drain", runs, concurrency=4)
        ids = [t.id for t in (*short, *long, *queued)]
        done = {t.id: t for t in await client.wait_for_tasks(ids, timeout=30,
                                                              poll_interval=0.05)}
        finished = time.monotonic() - stopped
    assert all(t.status == TaskStatus.COMPLETED for t in done.values()), server_proc.logs()
    assert finished < lease / 2, f"took {finished:.1f}s: something waited for a lease"
    assert [done[t.id].run_count for t in short] == [1, 1]  # finished during the drain
    assert [done[t.id].run_count for t in queued] == [1] * 10  # never handed to the victim
    assert [done[t.id].run_count for t in long] == [2, 2]  # handed back, then run again
    handed_back = await sql(server_proc.db_url,
                            "SELECT error_message FROM task_runs WHERE task_id = ANY(%s::uuid[])"
                            " AND status = 'FAILED'", [t.id for t in long])
    assert len(handed_back) == 2 and all("shut down" in r[0] for r in handed_back)
    victim_pid = victim.pid
    assert sum(1 for e in executions(runs) if e[3] == victim_pid) == 4


# ---- the server SIGKILLed with 10,000 tasks in flight -------------------------------------

async def test_server_sigkill_with_10000_tasks_in_flight_then_restart(
        server_proc: Procs, tmp_path: Path) -> None:
    n, concurrency = 10_000, 100
    env = {**FAST_ENV, "VALKA_WORKER__LEASE_SECONDS": "5"}
    port = free_port()
    server = server_proc.start_server(port, **env)
    runs = tmp_path / "runs"
    workers = [start_worker(server_proc, "bulk", runs, concurrency=concurrency)
               for _ in range(2)]
    # Mostly short tasks, and some long ones that are still running across the restart.
    specs = [TaskSpec(queue="bulk", name="work", max_retries=5,
                      input={"seconds": 3.0 if i % 100 == 0 else 0.002}) for i in range(n)]
    async with ValkaClient(server_proc.address, timeout=60) as client:
        await wait_workers(client, 2)
        ids = [t.id for t in await client.create_tasks(specs)]
        assert len(set(ids)) == n

        async def some_done() -> bool:
            return (await statuses(server_proc.db_url))["COMPLETED"] >= n // 4

        await wait_until(some_done, timeout=120, interval=0.1)
        server.send_signal(signal.SIGKILL)
        server.wait()
        at_kill = await statuses(server_proc.db_url)
        await asyncio.to_thread(server_proc.start_server, port, **env)
        await wait_all_terminal(server_proc.db_url, n, timeout=120)
    final = await statuses(server_proc.db_url)
    assert final == {"COMPLETED": n}, (at_kill, final, await _unfinished(server_proc.db_url))
    assert await completed_twice(server_proc.db_url) == []
    executed = collections.Counter(e[0] for e in executions(runs))
    assert set(executed) == set(ids)
    # Only work in flight at the kill may have run again (its result lost with the server).
    again = [t for t, c in executed.items() if c > 1]
    assert len(again) <= 2 * 2 * concurrency, (len(again), at_kill)
    assert all(w.poll() is None for w in workers), server_proc.logs()


# ---- PostgreSQL restarted under load -----------------------------------------------------

class PrivatePostgres:
    """An embedded PostgreSQL owned by tests/e2e/pg_controller.py, restarted on request."""

    def __init__(self, data_dir: Path, tmp: Path) -> None:
        with (tmp / "pg-controller.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "pg_controller.py"), str(data_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=Procs("", tmp).env(), cwd=tmp, start_new_session=True)

    async def _answer(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line, "the PostgreSQL controller exited"
        return line.decode().strip()

    async def start(self) -> str:
        return await self._answer()

    async def restart(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"restart\n")
        self.proc.stdin.flush()
        assert await self._answer() == "restarted"

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # end of input: the controller stops PostgreSQL
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def test_postgres_restart_under_load_nothing_lost(tmp_path: Path) -> None:
    n_before, n_after = 3000, 500
    # A private PostgreSQL: restarting the shared one would break every other test run.
    data_dir = new_embedded_data_dir()
    pg = PrivatePostgres(data_dir, tmp_path)
    try:
        url = await pg.start()
        procs = Procs(url, tmp_path)
        try:
            await _load_through_restart(procs, pg, n_before, n_after)
        finally:
            procs.stop_all()
    finally:
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _load_through_restart(procs: Procs, pg: PrivatePostgres, n_before: int,
                                n_after: int) -> None:
    url = procs.db_url
    server = procs.start_server(**{**FAST_ENV, "VALKA_WORKER__LEASE_SECONDS": "5"})
    runs = procs.tmp / "runs"
    workers = [start_worker(procs, "pg", runs, concurrency=50) for _ in range(2)]
    async with ValkaClient(procs.address, timeout=30) as client:
        await wait_workers(client, 2)
        # Some tasks are still running while the database is away.
        before = [t.id for t in await client.create_tasks(
            [TaskSpec(queue="pg", name="work", max_retries=5,
                      input={"seconds": 2.0 if i % 100 == 0 else 0.005})
             for i in range(n_before)])]

        async def under_way() -> bool:
            return (await statuses(url))["COMPLETED"] >= n_before // 10

        await wait_until(under_way, timeout=60, interval=0.05)
        at_stop = await statuses(url)
        await pg.restart()
        after = await _create_through_recovery(client, n_after)
        every = before + after
        await wait_all_terminal(url, len(every), timeout=90)
    assert at_stop["COMPLETED"] < n_before, at_stop  # restarted with work under way
    final = await statuses(url)
    assert final == {"COMPLETED": n_before + n_after}, (final, await _unfinished(url))
    assert await completed_twice(url) == []
    assert set(e[0] for e in executions(runs)) == set(every)
    # Nobody was restarted: the server and the workers recovered by themselves.
    assert server.poll() is None and all(w.poll() is None for w in workers)


async def _create_through_recovery(client: ValkaClient, n: int) -> list[str]:
    """Create n tasks while the server is reconnecting to its database. Idempotency keys
    make a retried call safe: it returns the task the first call may have made."""
    specs = [TaskSpec(queue="pg", name="work", input={"seconds": 0.005}, max_retries=5,
                      idempotency_key=f"after-{i}") for i in range(n)]
    deadline = time.monotonic() + 60
    while True:
        try:
            return [t.id for t in await client.create_tasks(specs)]
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
