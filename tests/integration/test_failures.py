"""The failure scenarios of the research notes (failures.md), each against a real node.

Each test is named after its scenario (f1..f12, then the further ones). Leases, sweeps and
backoffs are shortened by configuration so the scenarios play out in seconds; nothing here
sleeps to wait for something: every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import psycopg
import pytest

from tests.server_fixtures import RawWorker, RunningNode, make_config, wait_until
from valka.core.errors import ResourceExhausted
from valka.core.status import TaskStatus
from valka.sdk import Fail, TaskContext, ValkaClient, ValkaWorker
from valka.server import validation
from valka.server.app import Node
from valka.v1 import api_pb2, worker_pb2

LEASE_S = 2.0
FAST_BACKOFF = 0.05
# Short enough for seconds-long scenarios, long enough for a loaded 2-core CI machine.
FAST: dict[str, object] = {
    "worker.lease_seconds": LEASE_S,
    "worker.dispatch_timeout_seconds": 5.0,
    "scheduler.reaper_interval_s": 0.1,
    "retry.backoff_base_seconds": FAST_BACKOFF,
}
# What a loaded CI machine may add to any bound on timing.
SLACK_S = 1.5


@contextlib.asynccontextmanager
async def fast_node(db_url: str, **overrides: object) -> AsyncIterator[RunningNode]:
    settings = dict(FAST)
    settings.update(overrides)
    node = Node(make_config(db_url, **settings))
    await node.start()
    running = RunningNode(node, db_url)
    try:
        yield running
    finally:
        await running.channel.close()
        await node.stop(drain_s=0.5)


@contextlib.asynccontextmanager
async def sdk_worker(address: str, queue: str, handlers: dict[str, Callable[..., Any]],
                     **options: Any) -> AsyncIterator[ValkaWorker]:
    """A real SDK worker on this event loop; stopped (drained) on exit."""
    options.setdefault("drain_timeout", 1.0)
    worker = ValkaWorker(address, queues=[queue], **options)
    for name, fn in handlers.items():
        worker.register(name, fn)
    runner = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        await wait_until(lambda: worker.session_id or runner.done(), timeout=10)
        assert not runner.done(), runner
        yield worker
    finally:
        worker.stop("test over")
        await asyncio.wait_for(runner, 30)


async def create(node: RunningNode, queue: str = "q", **fields: Any) -> str:
    r = await node.api.CreateTask(
        api_pb2.CreateTaskRequest(queue_name=queue, task_name="t", **fields))
    return r.task.id


async def create_many(node: RunningNode, n: int, queue: str = "q", **fields: Any) -> list[str]:
    r = await node.api.CreateTasks(api_pb2.CreateTasksRequest(tasks=[
        api_pb2.CreateTaskRequest(queue_name=queue, task_name="t", **fields)
        for _ in range(n)]))
    return [x.task.id for x in r.results]


async def task_row(node: RunningNode, task_id: str) -> dict[str, Any]:
    rows = await node.sql(
        "SELECT status::text, attempt, run_count, error_message, lease_expires_at,"
        " scheduled_at, started_at, now() FROM tasks WHERE id = %s", task_id)
    keys = ("status", "attempt", "run_count", "error", "lease_expires_at", "scheduled_at",
            "started_at", "now")
    return dict(zip(keys, rows[0], strict=True))


async def runs_of(node: RunningNode, task_id: str) -> list[tuple[int, str, str | None]]:
    rows = await node.sql(
        "SELECT attempt, status::text, error_message FROM task_runs WHERE task_id = %s"
        " ORDER BY started_at", task_id)
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def status_is(node: RunningNode, status: str, *task_ids: str
              ) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        rows = await node.sql(
            "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND status::text = %s",
            list(task_ids), status)
        return int(rows[0][0]) == len(task_ids)

    return check


def ack(a: worker_pb2.Assignment) -> worker_pb2.Ack:
    return worker_pb2.Ack(task_id=a.task_id, attempt=a.attempt)


def ok(a: worker_pb2.Assignment) -> worker_pb2.Result:
    return worker_pb2.Result(task_id=a.task_id, attempt=a.attempt, success=True,
                             output='{"ok": true}')


def retryable_failure(a: worker_pb2.Assignment) -> worker_pb2.Result:
    return worker_pb2.Result(task_id=a.task_id, attempt=a.attempt, success=False,
                             retryable=True, error_message="boom")


async def running_on(node: RunningNode, w: RawWorker, n: int) -> list[worker_pb2.Assignment]:
    """Take n assignments on `w`, acknowledge them and wait until all are RUNNING."""
    got = await w.assignments(n)
    await w.send(acks=[ack(a) for a in got])
    await wait_until(status_is(node, "RUNNING", *(a.task_id for a in got)), timeout=10)
    return got


# ---- 1: a rescuer with a stale view -----------------------------------------------------

# Holds a completion's row lock for a while before it commits: the window in which a
# rescuer has already seen the row as an expired RUNNING task.
_SLOW_COMPLETION = """
CREATE FUNCTION test_slow_completion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(1.0); RETURN NEW; END $$;
CREATE TRIGGER test_slow_completion BEFORE UPDATE ON tasks FOR EACH ROW
    WHEN (NEW.status = 'COMPLETED') EXECUTE FUNCTION test_slow_completion();
"""


async def test_f1_stale_rescuer_cannot_overwrite_completed(db_url: str) -> None:
    # A long backoff: a task the rescuer did take would sit in RETRY, easy to see.
    async with fast_node(db_url, **{"retry.backoff_base_seconds": 60.0}) as node:
        maintenance = node.node.maintenance
        assert maintenance is not None
        await maintenance.close()  # the test drives the rescuer by hand
        task_id = await create(node)
        w = await node.worker(["q"], concurrency=1)
        [a] = await running_on(node, w, 1)
        # The lease runs out while the worker is finishing.
        await node.sql("UPDATE tasks SET lease_expires_at = now() - interval '1 second'"
                       " WHERE id = %s", task_id)
        await node.sql(_SLOW_COMPLETION)
        await w.send(results=[ok(a)])
        await wait_until(lambda: _sleeping_backends(node), timeout=5)
        # The rescuer's snapshot shows an expired RUNNING task; the completion is mid-commit.
        await maintenance.run_once()
        [result_ack] = await w.result_acks(1)
        assert result_ack.accepted, result_ack
        await maintenance.run_once()
        assert maintenance.reaped_running == 0
        # A stale writer that still believes attempt N is running changes nothing either.
        await node.sql("UPDATE tasks SET lease_expires_at = now() - interval '1 second'"
                       " WHERE id = %s", task_id)
        await maintenance.run_once()
        row = await task_row(node, task_id)
        assert (row["status"], row["attempt"], row["run_count"]) == ("COMPLETED", a.attempt, 1)
        assert await runs_of(node, task_id) == [(a.attempt, "COMPLETED", None)]
        assert maintenance.reaped_running == 0 and maintenance.promoted == 0
        await w.close()


async def _sleeping_backends(node: RunningNode) -> bool:
    rows = await node.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                          " AND datname = current_database()")
    return int(rows[0][0]) > 0


async def test_f1_rescuer_racing_results_keeps_completed_tasks_completed(db_url: str) -> None:
    n = 80
    async with fast_node(db_url, **{"retry.backoff_base_seconds": 60.0,
                                    "scheduler.reaper_interval_s": 0.01}) as node:
        maintenance = node.node.maintenance
        assert maintenance is not None
        await create_many(node, n)
        w = await node.worker(["q"], concurrency=n)
        got = await running_on(node, w, n)

        async def send_results() -> None:
            for i in range(0, n, 2):
                await w.send(results=[ok(a) for a in got[i:i + 2]])
                await asyncio.sleep(0.001)

        async def expire_and_rescue() -> None:
            # Leases run out while results are arriving; rescuers sweep at the same time.
            await node.sql("UPDATE tasks SET lease_expires_at = now() - interval '1 ms'")
            await asyncio.gather(*(maintenance.run_once() for _ in range(4)))

        await asyncio.gather(send_results(), expire_and_rescue())
        acks = {r.task_id: r.accepted for r in await w.result_acks(n)}
        await maintenance.run_once()
        rows = await node.sql("SELECT id::text, status::text, attempt, run_count FROM tasks")
        runs = await node.sql("SELECT task_id::text, status::text FROM task_runs")
        by_task: dict[str, list[str]] = {}
        for task_id, status in runs:
            by_task.setdefault(task_id, []).append(status)
        for task_id, status, _attempt, run_count in rows:
            accepted = acks[task_id]
            # The result was accepted exactly when the task is COMPLETED; the reaper won
            # otherwise, and then the result was refused. A reaped task may already be due
            # again (full jitter can draw a delay near zero) and be offered anew, unacked.
            assert accepted == (status == "COMPLETED"), (task_id, status, accepted)
            assert status in ("COMPLETED", "RETRY", "PENDING", "DISPATCHING"), status
            assert run_count == 1
            assert by_task[task_id] == ["COMPLETED" if accepted else "FAILED"]
        await w.close()


# ---- 2 and 3: heartbeats keep a healthy task's lease -----------------------------------

async def test_f2_heartbeat_keeps_short_lease_alive(db_url: str) -> None:
    async with fast_node(db_url, **{"worker.lease_seconds": 2.0}) as node:
        probe = await node.worker(["probe"])
        assert probe.welcome is not None
        # The server tells workers to beat at least three times per lease.
        assert 0 < probe.welcome.heartbeat_interval_ms <= probe.welcome.lease_ms / 3
        await probe.close()
        executions: list[int] = []

        async def six_seconds(ctx: TaskContext) -> dict[str, bool]:
            executions.append(ctx.attempt)
            await asyncio.sleep(6.0)
            return {"ok": True}

        async with (sdk_worker(node.address, "q", {"long": six_seconds}),
                    ValkaClient(node.address) as client):
            task = await client.create_task("q", "long", max_retries=3)
            [done] = await client.wait_for_tasks([task.id], timeout=30)
        assert done.status == TaskStatus.COMPLETED, done
        assert (done.attempt, done.run_count) == (1, 1)
        assert executions == [1]
        assert await runs_of(node, task.id) == [(1, "COMPLETED", None)]


async def test_f3_heartbeating_long_task_not_redispatched(db_url: str) -> None:
    # Rescue after 3 s of silence, a task of 10 s, and an idle second worker ready to take
    # the task the moment it were rescued.
    async with fast_node(db_url, **{"worker.lease_seconds": 3.0}) as node:
        executions: list[tuple[str, int]] = []

        async def ten_seconds(ctx: TaskContext) -> dict[str, bool]:
            executions.append((ctx.worker_id, ctx.attempt))
            await asyncio.sleep(10.0)
            return {"ok": True}

        async with (sdk_worker(node.address, "q", {"long": ten_seconds}, concurrency=1),
                    sdk_worker(node.address, "q", {"long": ten_seconds}, concurrency=1),
                    ValkaClient(node.address) as client):
            task = await client.create_task("q", "long", max_retries=3)
            [done] = await client.wait_for_tasks([task.id], timeout=40)
        assert done.status == TaskStatus.COMPLETED, done
        assert (done.attempt, done.run_count) == (1, 1)
        assert len(executions) == 1, executions
        assert await runs_of(node, task.id) == [(1, "COMPLETED", None)]


# ---- 4: the worker's identity is pruned -----------------------------------------------------

async def test_f4_worker_row_deleted_task_still_recovered_after_lease(db_url: str) -> None:
    async with fast_node(db_url) as node:
        task_id = await create(node, max_retries=3)
        w1 = await node.worker(["q"], concurrency=1)
        [a] = await running_on(node, w1, 1)
        await w1.close()
        # Pruned before stalled-task detection runs: recovery must not need the row.
        await node.sql("DELETE FROM workers")
        w2 = await node.worker(["q"], concurrency=1)
        [b] = await w2.assignments(1, timeout=LEASE_S + 10)
        assert b.task_id == task_id and b.attempt > a.attempt
        await w2.send(acks=[ack(b)], results=[ok(b)])
        assert (await w2.result_acks(1))[0].accepted
        assert [r[:2] for r in await runs_of(node, task_id)] == [
            (a.attempt, "FAILED"), (b.attempt, "COMPLETED")]
        await w2.close()


# ---- 6: a dropped stream ------------------------------------------------------------------

async def test_f6_dropped_stream_task_requeued_within_lease_plus_sweep(db_url: str) -> None:
    lease, sweep = 2.0, 0.1
    async with fast_node(db_url, **{"worker.lease_seconds": lease,
                                    "scheduler.reaper_interval_s": sweep}) as node:
        task_id = await create(node, max_retries=3)
        w1 = await node.worker(["q"], concurrency=1)
        [a] = await running_on(node, w1, 1)
        lease_at_drop = (await task_row(node, task_id))["lease_expires_at"]
        dropped = time.monotonic()
        await w1.close()
        w2 = await node.worker(["q"], concurrency=1)
        [b] = await w2.assignments(1, timeout=lease + 10)
        elapsed = time.monotonic() - dropped
        assert b.task_id == task_id and b.attempt > a.attempt and b.run_count == 1
        # One sweep takes it back, the next promotes its (shortest) retry.
        assert elapsed <= lease + 2 * sweep + FAST_BACKOFF + SLACK_S, f"took {elapsed:.2f}s"
        reaped = await node.sql("SELECT finished_at FROM task_runs WHERE task_id = %s"
                                " AND attempt = %s", task_id, a.attempt)
        assert reaped[0][0] >= lease_at_drop  # never taken back before its lease ran out
        await w2.send(acks=[ack(b)], results=[ok(b)])
        assert (await w2.result_acks(1))[0].accepted
        row = await task_row(node, task_id)
        assert (row["status"], row["run_count"]) == ("COMPLETED", 2)
        assert [r[:2] for r in await runs_of(node, task_id)] == [
            (a.attempt, "FAILED"), (b.attempt, "COMPLETED")]
        await w2.close()


class StreamCutter:
    """A TCP proxy in front of the node whose connections the test can cut at will, as a
    network failure or a load balancer would; new connections go through again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    def cut(self) -> None:
        self.cuts += 1
        for w in list(self._writers):
            w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_f6_sdk_worker_stream_dropped_mid_task_task_still_completes(db_url: str) -> None:
    async with fast_node(db_url) as node:
        cutter = StreamCutter(node.node.grpc_port)
        await cutter.start()
        executions: list[int] = []

        async def three_seconds(ctx: TaskContext) -> dict[str, bool]:
            executions.append(ctx.attempt)
            await asyncio.sleep(3.0)
            return {"ok": True}

        try:
            async with (sdk_worker(f"127.0.0.1:{cutter.port}", "q", {"long": three_seconds}),
                        ValkaClient(node.address) as client):
                task = await client.create_task("q", "long", max_retries=3)
                await wait_until(lambda: executions, timeout=10)
                await wait_until(status_is(node, "RUNNING", task.id))
                cutter.cut()
                [done] = await client.wait_for_tasks([task.id], timeout=30)
        finally:
            await cutter.close()
        # Kept by the reconnected worker, or taken back after its lease and run again:
        # either way it completes, and never fails because the stream broke.
        assert done.status == TaskStatus.COMPLETED, (done, await runs_of(node, task.id))
        assert len(executions) == done.run_count


# ---- 7: the stream breaks between assignment and ack ------------------------------------

async def test_f7_stream_break_before_ack_returns_task_at_once(db_url: str) -> None:
    dispatch_timeout = 10.0
    async with fast_node(db_url, **{"worker.dispatch_timeout_seconds": dispatch_timeout}
                         ) as node:
        w1 = await node.worker(["q"], concurrency=1)
        task_id = await create(node)
        [a] = await w1.assignments(1)
        broke = time.monotonic()
        await w1.close()  # never acknowledged
        await wait_until(status_is(node, "PENDING", task_id), timeout=dispatch_timeout)
        assert time.monotonic() - broke < SLACK_S  # at once, not after the dispatch timeout
        row = await task_row(node, task_id)
        assert row["run_count"] == 0  # an unacknowledged delivery is not charged
        w2 = await node.worker(["q"], concurrency=1)
        [b] = await w2.assignments(1)
        assert b.task_id == task_id and b.attempt > a.attempt and b.run_count == 0
        await w2.send(acks=[ack(b)], results=[ok(b)])
        assert (await w2.result_acks(1))[0].accepted
        assert (await task_row(node, task_id))["run_count"] == 1
        await w2.close()


async def test_f7_unacknowledged_assignment_requeued_after_dispatch_timeout(
        db_url: str) -> None:
    dispatch_timeout = 1.0
    async with fast_node(db_url, **{"worker.dispatch_timeout_seconds": dispatch_timeout}
                         ) as node:
        silent = await node.worker(["q"], concurrency=1)
        task_id = await create(node)
        [a] = await silent.assignments(1)  # the stream stays open; the ack never comes
        sent = time.monotonic()
        healthy = await node.worker(["q"], concurrency=1)
        [b] = await healthy.assignments(1, timeout=dispatch_timeout + 10)
        elapsed = time.monotonic() - sent
        assert b.task_id == task_id and b.attempt > a.attempt
        assert elapsed <= dispatch_timeout + 0.1 + SLACK_S, f"took {elapsed:.2f}s"
        # The silent worker's late ack is refused: it is told not to run the task.
        await silent.send(acks=[ack(a)])
        frame = await silent.read_until(lambda f: bool(f.cancels))
        assert (frame.cancels[0].task_id, frame.cancels[0].attempt) == (task_id, a.attempt)
        await healthy.send(acks=[ack(b)], results=[ok(b)])
        assert (await healthy.result_acks(1))[0].accepted
        row = await task_row(node, task_id)
        assert (row["status"], row["run_count"]) == ("COMPLETED", 1)
        assert await runs_of(node, task_id) == [(b.attempt, "COMPLETED", None)]
        await silent.close()
        await healthy.close()


# ---- 8: NUL bytes ---------------------------------------------------------------------

async def test_f8_nul_in_input_rejected_and_nul_in_result_fails_task(db_url: str) -> None:
    async with fast_node(db_url) as node:
        bad_requests = [
            api_pb2.CreateTaskRequest(queue_name="q", task_name="t", input='{"s":"\\u0000"}'),
            api_pb2.CreateTaskRequest(queue_name="q", task_name="t",
                                      metadata='{"m":"\\u0000"}'),
            api_pb2.CreateTaskRequest(queue_name="q", task_name="t\x00"),
        ]
        for request in bad_requests:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await node.api.CreateTask(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details() or ""
            assert "u0000" in details or "control characters" in details, details
        with pytest.raises(grpc.aio.AioRpcError) as batch:
            await node.api.CreateTasks(api_pb2.CreateTasksRequest(tasks=[
                api_pb2.CreateTaskRequest(queue_name="q", task_name="t", input="1"),
                bad_requests[0]]))
        assert batch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tasks[1].input" in (batch.value.details() or "")
        assert await node.sql("SELECT count(*) FROM tasks") == [(0,)]  # nothing stored

        async def nul_output(ctx: TaskContext) -> dict[str, str]:
            return {"s": "before\x00after"}

        async def nul_error(ctx: TaskContext) -> None:
            raise Fail("bad \x00 byte")

        async with (sdk_worker(node.address, "q", {"nul_output": nul_output,
                                                   "nul_error": nul_error}),
                    ValkaClient(node.address) as client):
            out = await client.create_task("q", "nul_output", max_retries=3)
            err = await client.create_task("q", "nul_error", max_retries=3)
            done = await client.wait_for_tasks([out.id, err.id], timeout=20)
        by_id = {t.id: t for t in done}
        assert by_id[out.id].status == TaskStatus.FAILED, by_id[out.id]
        assert "\\u0000" in (by_id[out.id].error or "") and by_id[out.id].run_count == 1
        assert by_id[err.id].status == TaskStatus.FAILED, by_id[err.id]
        assert "bad \\u0000 byte" in (by_id[err.id].error or "")
        still = await node.sql("SELECT count(*) FROM tasks WHERE status = 'RUNNING'")
        assert still == [(0,)]


# ---- 9: NOTIFY carries the queue name only ----------------------------------------------

async def test_f9_one_megabyte_payload_enqueues_and_notify_stays_small(db_url: str) -> None:
    async with fast_node(db_url) as node:
        limit = node.node.cfg.limits.max_input_bytes
        payload = '"' + "x" * (limit - 2) + '"'  # exactly the 1 MiB limit, as JSON text
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listen:
            await listen.execute("LISTEN valka_ready")
            task_id = await create(node, queue="big", input=payload)
            got = [n async for n in listen.notifies(timeout=10.0, stop_after=1)]
        assert [n.payload for n in got] == ["big"]
        w = await node.worker(["big"], concurrency=1)
        [a] = await w.assignments(1)
        assert a.task_id == task_id and len(a.input) == limit
        await w.send(acks=[ack(a)], results=[ok(a)])
        assert (await w.result_acks(1))[0].accepted
        await w.close()


# ---- 10: oversized messages --------------------------------------------------------------

async def test_f10_oversized_request_fails_fast_naming_the_limit(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = validation.validate_create

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("valka.server.grpc_api.validate_create", counting)
    async with fast_node(db_url) as node, ValkaClient(node.address) as client:
        limits = node.node.cfg.limits
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as over_input:
            await client.create_task("q", "t", "x" * (5 * 1024 * 1024))
        assert time.monotonic() - started < 2 * SLACK_S
        assert str(limits.max_input_bytes) in over_input.value.message
        assert calls == [1]  # one call reached the server: the SDK did not retry
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as over_frame:
            await client.create_task("q", "t", "x" * (limits.max_grpc_message_bytes + 1024))
        assert time.monotonic() - started < 2 * SLACK_S
        assert str(limits.max_grpc_message_bytes) in over_frame.value.message
        assert calls == [1]  # refused by the transport, before any handler
        assert await node.sql("SELECT count(*) FROM tasks") == [(0,)]


async def test_f10_oversized_result_fails_the_task_once(db_url: str) -> None:
    async with fast_node(db_url) as node:
        executions: list[int] = []

        async def huge(ctx: TaskContext) -> str:
            executions.append(ctx.attempt)
            return "x" * (5 * 1024 * 1024)

        async with (sdk_worker(node.address, "q", {"huge": huge}),
                    ValkaClient(node.address) as client):
            task = await client.create_task("q", "huge", max_retries=3)
            [done] = await client.wait_for_tasks([task.id], timeout=20)
        limit = node.node.cfg.limits.max_output_bytes
        assert done.status == TaskStatus.FAILED, done
        assert str(limit) in (done.error or ""), done.error
        assert executions == [1] and done.run_count == 1  # failed for good, not retried


# ---- 11: a delay longer than the lease ---------------------------------------------------

async def test_f11_delay_longer_than_lease_runs_once_when_due(db_url: str) -> None:
    delay, lease = 10.0, 2.0
    async with fast_node(db_url, **{"worker.lease_seconds": lease}) as node:
        started: list[float] = []

        async def record(ctx: TaskContext) -> dict[str, bool]:
            started.append(time.time())
            return {"ok": True}

        # An idle worker is connected the whole time: the hot path must not take the task.
        async with (sdk_worker(node.address, "q", {"delayed": record}),
                    ValkaClient(node.address) as client):
            created = time.time()
            task = await client.create_task("q", "delayed", delay=delay, max_retries=3)

            async def due_and_done() -> bool:
                row = await task_row(node, task.id)
                if row["now"] < row["scheduled_at"]:
                    # Never leased, never touched before it is due.
                    assert (row["status"], row["attempt"]) == ("PENDING", 0), row
                return bool(row["status"] == "COMPLETED")

            await wait_until(due_and_done, timeout=delay + 20, interval=0.1)
        row = await task_row(node, task.id)
        assert row["run_count"] == 1 and row["started_at"] >= row["scheduled_at"]
        assert len(started) == 1 and started[0] >= created + delay - 0.05
        assert len(await runs_of(node, task.id)) == 1


# ---- 12: an idempotent insert racing a transaction that rolls back -------------------------

async def test_f12_idempotent_create_race_with_rollback_returns_live_task(db_url: str) -> None:
    racers = 6
    async with fast_node(db_url) as node:
        for outcome in ("rollback", "commit"):
            key = f"key-{outcome}"
            held_id = str(uuid.uuid4())
            async with await psycopg.AsyncConnection.connect(db_url) as other:
                await other.execute(
                    "INSERT INTO tasks (id, queue_name, task_name, partition_id, max_retries,"
                    " timeout_seconds, idempotency_key) VALUES (%s, 'q', 't', 0, 0, 30, %s)",
                    (held_id, key))
                calls = [asyncio.ensure_future(node.api.CreateTask(api_pb2.CreateTaskRequest(
                    queue_name="q", task_name="t", idempotency_key=key, input=str(i))))
                    for i in range(racers)]
                # Every racer is blocked on the other transaction's uncommitted key.
                await wait_until(lambda: _lock_waiters(node, racers), timeout=10)
                if outcome == "rollback":
                    await other.rollback()
                else:
                    await other.commit()
            responses = await asyncio.gather(*calls)
            rows = await node.sql("SELECT id::text FROM tasks WHERE idempotency_key = %s", key)
            assert len(rows) == 1, rows
            live = rows[0][0]
            assert {r.task.id for r in responses} == {live}
            if outcome == "rollback":
                assert live != held_id
                assert sum(r.created for r in responses) == 1
            else:
                assert live == held_id
                assert not any(r.created for r in responses)


async def _lock_waiters(node: RunningNode, n: int) -> bool:
    rows = await node.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                          " AND datname = current_database()")
    return int(rows[0][0]) >= n


# ---- cancel races completion -------------------------------------------------------------

async def test_cancel_racing_completion_first_commit_stands(db_url: str) -> None:
    n = 40
    async with fast_node(db_url, **{"retry.backoff_base_seconds": 60.0}) as node:
        maintenance = node.node.maintenance
        assert maintenance is not None
        await create_many(node, n, max_retries=5)
        w = await node.worker(["q"], concurrency=n)
        got = await running_on(node, w, n)
        succeed = {a.task_id for a in got[: n // 2]}

        writing = asyncio.Lock()  # one write at a time on a grpc stream

        async def report(a: worker_pb2.Assignment) -> None:
            async with writing:
                await w.send(results=[ok(a) if a.task_id in succeed else retryable_failure(a)])

        async def cancel(a: worker_pb2.Assignment) -> api_pb2.CancelTaskResponse:
            r: api_pb2.CancelTaskResponse = await node.api.CancelTask(
                api_pb2.CancelTaskRequest(task_id=a.task_id, reason="race"))
            return r

        outcomes = await asyncio.gather(*(asyncio.gather(report(a), cancel(a)) for a in got))
        cancels = {a.task_id: c for a, (_, c) in zip(got, outcomes, strict=True)}
        accepted = {r.task_id: r.accepted for r in await w.result_acks(n)}
        # Whatever was due is promoted and whatever lease ran out is reaped, now.
        await node.sql("UPDATE tasks SET scheduled_at = now() WHERE status = 'RETRY'")
        await maintenance.run_once()
        await maintenance.run_once()
        rows = await node.sql("SELECT id::text, status::text, attempt FROM tasks")
        for task_id, status, attempt in rows:
            [a] = [x for x in got if x.task_id == task_id]
            assert attempt == a.attempt, "a cancelled or completed task was dispatched again"
            if task_id in succeed:
                # Exactly one of the two won.
                assert status in ("COMPLETED", "CANCELLED")
                assert accepted[task_id] == (status == "COMPLETED")
                assert cancels[task_id].cancelled == (status == "CANCELLED")
            else:
                # A retryable failure first leaves RETRY, which the cancel then ends.
                assert status == "CANCELLED", (task_id, status)
                assert cancels[task_id].cancelled
        await w.close()


# ---- a retry storm -------------------------------------------------------------------------

async def test_retry_storm_spreads_retries_over_the_backoff_window(db_url: str) -> None:
    n, base = 1000, 60.0
    async with fast_node(db_url, **{"retry.backoff_base_seconds": base}) as node:
        # 1,000 failures reported in one frame...
        await create_many(node, n, queue="storm", max_retries=5)
        w = await node.worker(["storm"], concurrency=n)
        got = await running_on(node, w, n)
        await w.send(results=[retryable_failure(a) for a in got])
        assert all(r.accepted for r in await w.result_acks(n, timeout=30))
        _assert_spread(await _retry_offsets(node, "storm"), base)
        # ...and 1,000 leases running out in the same instant (a worker that died).
        await create_many(node, n, queue="storm2", max_retries=5)
        w2 = await node.worker(["storm2"], concurrency=n)
        await running_on(node, w2, n)
        await w2.close()
        await node.sql("UPDATE tasks SET lease_expires_at = now() WHERE queue_name = 'storm2'")
        await wait_until(lambda: _all_failed_once(node, "storm2", n), timeout=10)
        _assert_spread(await _retry_offsets(node, "storm2"), base)
        await w.close()


async def _all_failed_once(node: RunningNode, queue: str, n: int) -> bool:
    rows = await node.sql("SELECT count(*) FROM task_runs r JOIN tasks t ON t.id = r.task_id"
                          " WHERE t.queue_name = %s AND r.status = 'FAILED'", queue)
    return int(rows[0][0]) == n


async def _retry_offsets(node: RunningNode, queue: str) -> list[float]:
    """Seconds from each failure to its retry; also checks the failures were simultaneous.

    The failure time is the run's end: the task's own updated_at moves again when an early
    retry is promoted meanwhile.
    """
    rows = await node.sql(
        "SELECT extract(epoch FROM t.scheduled_at - r.finished_at)::float8,"
        " extract(epoch FROM r.finished_at)::float8"
        " FROM tasks t JOIN task_runs r ON r.task_id = t.id AND r.status = 'FAILED'"
        " WHERE t.queue_name = %s", queue)
    failed_at = [r[1] for r in rows]
    assert max(failed_at) - min(failed_at) < 2.0, "the failures were not simultaneous"
    return [r[0] for r in rows]


def _assert_spread(offsets: list[float], window: float) -> None:
    """Full jitter: uniform over [0, window]. Bounds are far in the tails (p < 1e-6)."""
    n = len(offsets)
    assert all(0.0 <= x <= window for x in offsets), (min(offsets), max(offsets))
    # Not all due together: at most a few percent fall in any one second.
    per_second: dict[int, int] = {}
    for x in offsets:
        per_second[int(x)] = per_second.get(int(x), 0) + 1
    assert max(per_second.values()) <= 3 * n / window + 20, max(per_second.values())
    # Kolmogorov-Smirnov distance to the uniform distribution.
    ordered = sorted(x / window for x in offsets)
    d = max(max((i + 1) / n - u, u - i / n) for i, u in enumerate(ordered))
    assert d < 2.5 / math.sqrt(n), f"KS distance {d:.3f}: not uniform over the window"
