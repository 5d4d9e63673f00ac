"""Dispatch, completion, failure and retry bookkeeping, and the compare-and-set fences."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import pytest

from tests.server_fixtures import RunningNode, make_config, wait_until
from valka.core.status import TaskStatus
from valka.server.app import Node
from valka.v1 import api_pb2, worker_pb2, worker_pb2_grpc


async def create(node: RunningNode, queue: str = "q", **fields: Any) -> str:
    r = await node.api.CreateTask(
        api_pb2.CreateTaskRequest(queue_name=queue, task_name="t", **fields)
    )
    return r.task.id


async def status_of(node: RunningNode, task_id: str) -> tuple[str, int, int]:
    rows = await node.sql(
        "SELECT status::text, attempt, run_count FROM tasks WHERE id = %s", task_id
    )
    status, attempt, runs = rows[0]
    return str(status), int(attempt), int(runs)


def ack(a: worker_pb2.Assignment) -> worker_pb2.Ack:
    return worker_pb2.Ack(task_id=a.task_id, attempt=a.attempt)


def ok(a: worker_pb2.Assignment, output: str = '{"ok": true}') -> worker_pb2.Result:
    return worker_pb2.Result(task_id=a.task_id, attempt=a.attempt, success=True, output=output)


async def test_cold_path_backlog_then_worker(node: RunningNode) -> None:
    ids = [await create(node, input=str(i)) for i in range(5)]
    w = await node.worker(["q"], concurrency=10)
    got = await w.assignments(5)
    assert sorted(a.task_id for a in got) == sorted(ids)
    await w.send(acks=[ack(a) for a in got], results=[ok(a) for a in got])
    acks = await w.result_acks(5)
    assert all(a.accepted for a in acks)
    for task_id in ids:
        assert await status_of(node, task_id) == ("COMPLETED", 1, 1)
    runs = await node.sql("SELECT count(*), min(status::text) FROM task_runs")
    assert runs[0] == (5, "COMPLETED")
    await w.close()


async def test_hot_path_goes_straight_to_the_idle_worker(node: RunningNode) -> None:
    w = await node.worker(["q"], concurrency=1)
    r = await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="q", task_name="t"))
    assert TaskStatus(r.task.status) == TaskStatus.DISPATCHING
    [a] = await w.assignments(1)
    assert a.task_id == r.task.id
    await w.send(acks=[ack(a)])
    await wait_until(lambda: status_of(node, a.task_id), timeout=5)
    await wait_until(async_eq(node, a.task_id, "RUNNING"))
    await w.send(results=[ok(a, '{"sum": 3}')])
    [ra] = await w.result_acks(1)
    assert ra.accepted
    t = (await node.api.GetTask(api_pb2.GetTaskRequest(task_id=a.task_id))).task
    assert TaskStatus(t.status) == TaskStatus.COMPLETED and json.loads(t.output) == {"sum": 3}
    await w.close()


def async_eq(node: RunningNode, task_id: str, status: str
             ) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return (await status_of(node, task_id))[0] == status

    return check


async def test_never_more_than_concurrency(node: RunningNode) -> None:
    for i in range(6):
        await create(node, input=str(i))
    w = await node.worker(["q"], concurrency=2)
    first = await w.assignments(2)
    assert len(first) == 2
    await w.send(acks=[ack(a) for a in first])
    # Nothing more arrives until a slot frees.
    with pytest.raises(TimeoutError):
        await w.assignments(1, timeout=0.5)
    await w.send(results=[ok(first[0])])
    more = await w.assignments(1)
    assert len(more) == 1
    await w.close()


async def test_retryable_failure_then_dead_letter(node: RunningNode) -> None:
    task_id = await create(node, max_retries=1)
    await node.sql("UPDATE tasks SET scheduled_at = now()")
    w = await node.worker(["q"], concurrency=1)
    [a] = await w.assignments(1)
    await w.send(
        acks=[ack(a)],
        results=[
            worker_pb2.Result(
                task_id=a.task_id,
                attempt=a.attempt,
                success=False,
                retryable=True,
                error_message="boom",
                retry_delay_ms=1,
            )
        ],
    )
    await w.result_acks(1)
    status, attempt, runs = await status_of(node, task_id)
    assert (status, runs) == ("RETRY", 1)
    # Promoted when due (the maintenance pass runs every second), dispatched again.
    [b] = await w.assignments(1, timeout=10)
    assert b.task_id == task_id and b.attempt == attempt + 1 and b.run_count == 1
    await w.send(
        acks=[ack(b)],
        results=[
            worker_pb2.Result(
                task_id=b.task_id,
                attempt=b.attempt,
                success=False,
                retryable=True,
                error_message="boom again",
            )
        ],
    )
    await w.result_acks(1)
    assert (await status_of(node, task_id))[0] == "DEAD_LETTER"
    dlq = await node.sql(
        "SELECT error_message, run_count FROM dead_letter_queue WHERE task_id = %s", task_id
    )
    assert dlq == [("boom again", 2)]
    runs_rows = await node.sql(
        "SELECT attempt, status::text, error_message FROM task_runs "
        "WHERE task_id = %s ORDER BY attempt",
        task_id,
    )
    assert [r[1:] for r in runs_rows] == [("FAILED", "boom"), ("FAILED", "boom again")]
    await w.close()


async def test_non_retryable_failure_is_failed(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"])
    [a] = await w.assignments(1)
    await w.send(
        acks=[ack(a)],
        results=[
            worker_pb2.Result(
                task_id=a.task_id,
                attempt=a.attempt,
                success=False,
                retryable=False,
                error_message="bad input",
            )
        ],
    )
    await w.result_acks(1)
    assert (await status_of(node, task_id))[0] == "FAILED"
    await w.close()


async def test_retry_backoff_is_jittered(node: RunningNode) -> None:
    ids = [await create(node, max_retries=5) for _ in range(40)]
    w = await node.worker(["q"], concurrency=40)
    got = await w.assignments(40)
    await w.send(
        acks=[ack(a) for a in got],
        results=[
            worker_pb2.Result(
                task_id=a.task_id,
                attempt=a.attempt,
                success=False,
                retryable=True,
                error_message="x",
            )
            for a in got
        ],
    )
    await w.result_acks(40)
    rows = await node.sql("SELECT scheduled_at FROM tasks WHERE id = ANY(%s::uuid[])", ids)
    assert len({r[0] for r in rows}) > 30  # spread out, not all due at one instant
    await w.close()


async def test_late_result_of_old_attempt_changes_nothing(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"])
    [a] = await w.assignments(1)
    await w.send(acks=[ack(a)])
    await wait_until(async_eq(node, task_id, "RUNNING"))
    stale = worker_pb2.Result(
        task_id=task_id,
        attempt=a.attempt - 1 if a.attempt > 1 else 99,
        success=True,
        output='"stale"',
    )
    await w.send(results=[stale])
    [ra] = await w.result_acks(1)
    assert not ra.accepted
    assert (await status_of(node, task_id))[0] == "RUNNING"
    await w.close()


async def test_cancelled_task_cannot_complete(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"])
    [a] = await w.assignments(1)
    await w.send(acks=[ack(a)])
    await wait_until(async_eq(node, task_id, "RUNNING"))
    res = await node.api.CancelTask(api_pb2.CancelTaskRequest(task_id=task_id))
    assert res.cancelled
    frame = await w.read_until(lambda f: bool(f.cancels))
    assert frame.cancels[0].task_id == task_id
    await w.send(results=[ok(a)])
    [ra] = await w.result_acks(1)
    assert not ra.accepted
    assert (await status_of(node, task_id))[0] == "CANCELLED"
    assert (await node.sql("SELECT status::text FROM task_runs WHERE task_id = %s", task_id)) == [
        ("CANCELLED",)
    ]
    await w.close()


async def test_result_for_a_task_the_worker_does_not_hold(node: RunningNode) -> None:
    task_id = await create(node)
    holder = await node.worker(["q"])
    [a] = await holder.assignments(1)
    await holder.send(acks=[ack(a)])
    await wait_until(async_eq(node, task_id, "RUNNING"))
    intruder = await node.worker(["other"])
    await intruder.send(results=[ok(a)])
    [ra] = await intruder.result_acks(1)
    assert not ra.accepted
    assert (await status_of(node, task_id))[0] == "RUNNING"
    await holder.close()
    await intruder.close()


async def test_output_with_nul_fails_the_task_clearly(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"])
    [a] = await w.assignments(1)
    await w.send(acks=[ack(a)], results=[ok(a, '{"s": "\\u0000"}')])
    [ra] = await w.result_acks(1)
    assert ra.accepted
    row = await node.sql("SELECT status::text, error_message FROM tasks WHERE id = %s", task_id)
    assert row[0][0] == "FAILED" and "\\u0000" in row[0][1]
    await w.close()


async def test_disconnect_returns_unacknowledged_at_once(node: RunningNode) -> None:
    ids = [await create(node) for _ in range(3)]
    w = await node.worker(["q"], concurrency=3)
    await w.assignments(3)
    await w.close()
    for task_id in ids:
        await wait_until(async_eq(node, task_id, "PENDING"), timeout=5)
    other = await node.worker(["q"], concurrency=3)
    again = await other.assignments(3)
    assert sorted(a.task_id for a in again) == sorted(ids)
    assert all(a.run_count == 0 for a in again)  # not charged
    await other.close()


async def test_heartbeat_extends_lease_and_reports_lost(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"])
    [a] = await w.assignments(1)
    await w.send(acks=[ack(a)])
    await wait_until(async_eq(node, task_id, "RUNNING"))
    await node.sql("UPDATE tasks SET lease_expires_at = now() + interval '2 seconds'")
    ghost = worker_pb2.TaskRef(task_id="01a23d00-0000-7000-8000-000000000000", attempt=1)
    await w.send(
        heartbeat=worker_pb2.Heartbeat(
            tasks=[worker_pb2.TaskRef(task_id=task_id, attempt=a.attempt), ghost]
        )
    )
    frame = await w.read_until(lambda f: f.HasField("heartbeat_ack"))
    assert [t.task_id for t in frame.heartbeat_ack.lost] == [ghost.task_id]
    left = await node.sql("SELECT lease_expires_at - now() > interval '20 seconds' FROM tasks")
    assert left == [(True,)]
    await w.close()


async def test_first_frame_without_hello_is_refused(node: RunningNode) -> None:
    call: Any = worker_pb2_grpc.WorkerServiceStub(node.channel).Session()
    await call.write(worker_pb2.WorkerFrame(acks=[worker_pb2.Ack(task_id="x", attempt=1)]))
    frame = await call.read()
    assert "hello" in frame.error
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_reconnect_adopts_running_tasks(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"], concurrency=1)
    [a] = await w.assignments(1)
    await w.send(acks=[ack(a)])
    await wait_until(async_eq(node, task_id, "RUNNING"))
    await w.close()
    again = await node.worker(
        ["q"],
        concurrency=1,
        worker_id=w.worker_id,
        in_flight=[worker_pb2.TaskRef(task_id=task_id, attempt=a.attempt)],
    )
    await again.send(results=[ok(a)])
    [ra] = await again.result_acks(1)
    assert ra.accepted
    assert (await status_of(node, task_id))[0] == "COMPLETED"
    await again.close()


async def test_task_inserted_by_plain_sql_is_picked_up(db_url: str) -> None:
    # An idle poll far beyond the wait below: only the notification can wake the reader.
    n = Node(make_config(db_url, **{"matching.idle_poll_interval_s": 60.0}))
    await n.start()
    node = RunningNode(n, db_url)
    try:
        w = await node.worker(["sqlq"], concurrency=1)
        # Let the reader's first look (at worker registration) find nothing.
        await wait_until(lambda: n.engine is not None and n.engine.demand("sqlq", 2) > 0)
        await node.sql(
            "INSERT INTO tasks (id, queue_name, task_name, partition_id, max_retries,"
            " timeout_seconds) VALUES (gen_random_uuid(), 'sqlq', 't', 2, 0, 30)")
        [a] = await w.assignments(1, timeout=5)
        assert a.queue_name == "sqlq"
        await w.close()
    finally:
        try:
            await node.close()
        finally:
            await n.stop(drain_s=0.5)


async def test_heartbeat_after_reconnect_adopts_the_running_task(node: RunningNode) -> None:
    # A worker that reconnects without naming its tasks in hello still owns them.
    task_id = await create(node)
    w = await node.worker(["q"], concurrency=1)
    [a] = await w.assignments(1)
    await w.send(acks=[ack(a)])
    await wait_until(async_eq(node, task_id, "RUNNING"))
    await w.close()
    again = await node.worker(["q"], concurrency=1, worker_id=w.worker_id)
    await again.send(heartbeat=worker_pb2.Heartbeat(tasks=[
        worker_pb2.TaskRef(task_id=task_id, attempt=a.attempt)]))
    frame = await again.read_until(lambda f: f.HasField("heartbeat_ack"))
    assert list(frame.heartbeat_ack.lost) == []
    await again.send(results=[ok(a)])
    [ra] = await again.result_acks(1)
    assert ra.accepted
    assert (await status_of(node, task_id))[0] == "COMPLETED"
    await again.close()


async def test_malformed_result_is_refused_alone(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"])
    [a] = await w.assignments(1)
    bad = worker_pb2.Result(task_id="not-a-uuid", attempt=1, success=True)
    huge = worker_pb2.Heartbeat(tasks=[worker_pb2.TaskRef(task_id="nope", attempt=1)])
    await w.send(acks=[ack(a)], results=[bad, ok(a)], heartbeat=huge)
    acks = {r.task_id: r for r in await w.result_acks(2)}
    assert not acks["not-a-uuid"].accepted and "task_id" in acks["not-a-uuid"].reason
    assert acks[task_id].accepted
    assert (await status_of(node, task_id))[0] == "COMPLETED"
    await w.close()


async def test_disconnected_worker_is_listed_as_disconnected(node: RunningNode) -> None:
    w = await node.worker(["q"])
    await w.close()

    async def disconnected() -> bool:
        rows = await node.sql("SELECT status FROM workers WHERE id = %s", w.worker_id)
        return rows == [("DISCONNECTED",)]
    await wait_until(disconnected)

