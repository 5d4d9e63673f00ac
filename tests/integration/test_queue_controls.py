"""Operator controls: retry, dead letters (list, re-queue, purge), queue pause and limits."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tests.server_fixtures import RawWorker, RunningNode, wait_until
from valka.core.status import TaskStatus
from valka.v1 import api_pb2, worker_pb2


async def create(node: RunningNode, queue: str = "q", **fields: Any) -> str:
    r = await node.api.CreateTask(api_pb2.CreateTaskRequest(
        queue_name=queue, task_name="t", **fields))
    return r.task.id


async def status(node: RunningNode, task_id: str) -> TaskStatus:
    t = (await node.api.GetTask(api_pb2.GetTaskRequest(task_id=task_id))).task
    return TaskStatus(t.status)


async def fail_all(w: RawWorker, n: int, retryable: bool = True) -> list[str]:
    got = await w.assignments(n)
    await w.send(acks=[worker_pb2.Ack(task_id=a.task_id, attempt=a.attempt) for a in got],
                 results=[worker_pb2.Result(task_id=a.task_id, attempt=a.attempt,
                                            success=False, retryable=retryable,
                                            error_message="boom") for a in got])
    await w.result_acks(n)
    return [a.task_id for a in got]


async def test_retry_failed_task_runs_again(node: RunningNode) -> None:
    task_id = await create(node)
    w = await node.worker(["q"])
    await fail_all(w, 1, retryable=False)
    assert await status(node, task_id) == TaskStatus.FAILED
    r = await node.api.RetryTask(api_pb2.RetryTaskRequest(task_id=task_id))
    assert TaskStatus(r.task.status) == TaskStatus.PENDING and r.task.run_count == 0
    [again] = await w.assignments(1)
    assert again.task_id == task_id
    await w.close()


async def test_retry_refuses_other_states_and_unknown(node: RunningNode) -> None:
    task_id = await create(node)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.api.RetryTask(api_pb2.RetryTaskRequest(task_id=task_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PENDING" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.api.RetryTask(api_pb2.RetryTaskRequest(
            task_id="01a23d00-0000-7000-8000-000000000000"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_dead_letters_list_requeue_purge(node: RunningNode) -> None:
    ids = [await create(node, "dq", max_retries=0) for _ in range(4)]
    w = await node.worker(["dq"], concurrency=4)
    await fail_all(w, 4)
    dead = await node.api.ListDeadLetters(api_pb2.ListDeadLettersRequest(queue_name="dq"))
    assert sorted(d.task_id for d in dead.dead_letters) == sorted(ids)
    assert all(d.error_message == "boom" and d.run_count == 1 for d in dead.dead_letters)
    # One by id: it runs again with a fresh set of retries.
    one = await node.api.RequeueDeadLetters(api_pb2.RequeueDeadLettersRequest(
        task_ids=[ids[0]]))
    assert list(one.task_ids) == [ids[0]]
    [again] = await w.assignments(1)
    assert again.task_id == ids[0] and again.run_count == 0
    # Purge one, then re-queue all that is left in the queue.
    purged = await node.api.PurgeDeadLetters(api_pb2.PurgeDeadLettersRequest(
        task_ids=[ids[1]]))
    assert purged.purged == 1
    assert await status(node, ids[1]) == TaskStatus.DEAD_LETTER  # the task stays, as history
    rest = await node.api.RequeueDeadLetters(api_pb2.RequeueDeadLettersRequest(
        queue_name="dq", all=True))
    assert sorted(rest.task_ids) == sorted(ids[2:])
    left = await node.api.ListDeadLetters(api_pb2.ListDeadLettersRequest(queue_name="dq"))
    assert list(left.dead_letters) == []
    await w.close()


async def test_dead_letter_calls_need_ids_or_all(node: RunningNode) -> None:
    for call in (node.api.RequeueDeadLetters(api_pb2.RequeueDeadLettersRequest()),
                 node.api.PurgeDeadLetters(api_pb2.PurgeDeadLettersRequest()),
                 node.api.PurgeDeadLetters(api_pb2.PurgeDeadLettersRequest(
                     task_ids=["nope"]))):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "task_ids" in (info.value.details() or "")


async def test_paused_queue_keeps_tasks_until_resumed(node: RunningNode) -> None:
    await node.api.PauseQueue(api_pb2.QueueRequest(queue_name="pq"))
    w = await node.worker(["pq"], concurrency=2)
    task_id = await create(node, "pq")
    assert await status(node, task_id) == TaskStatus.PENDING
    with pytest.raises(TimeoutError):
        await w.assignments(1, timeout=1.5)  # past the reader's idle poll
    info = await node.api.ResumeQueue(api_pb2.QueueRequest(queue_name="pq"))
    assert not info.paused
    [a] = await w.assignments(1)
    assert a.task_id == task_id
    await w.close()


async def test_concurrency_limit_holds_across_workers(node: RunningNode) -> None:
    await node.api.SetQueueLimits(api_pb2.SetQueueLimitsRequest(queue_name="cq",
                                                                 max_concurrency=2))
    w1 = await node.worker(["cq"], concurrency=5)
    w2 = await node.worker(["cq"], concurrency=5)
    for _ in range(6):
        await create(node, "cq")
    got: list[tuple[RawWorker, worker_pb2.Assignment]] = []

    async def collect(w: RawWorker) -> None:
        with_timeout = await w.assignments(1, timeout=3)
        got.extend((w, a) for a in with_timeout)

    await asyncio.gather(*(collect(w) for w in (w1, w2)), return_exceptions=True)
    await wait_until(lambda: len(got) >= 2)
    running = await node.sql("SELECT count(*) FROM tasks WHERE status IN "
                             "('DISPATCHING', 'RUNNING')")
    assert running == [(2,)]
    w, a = got[0]
    await w.send(acks=[worker_pb2.Ack(task_id=a.task_id, attempt=a.attempt)],
                 results=[worker_pb2.Result(task_id=a.task_id, attempt=a.attempt,
                                            success=True)])
    await wait_until(lambda: node.sql("SELECT count(*) FROM tasks WHERE status = 'COMPLETED'"))
    await wait_until(async_count(node, "('DISPATCHING', 'RUNNING')", 2))
    await w1.close()
    await w2.close()


def async_count(node: RunningNode, statuses: str, n: int) -> Any:
    async def check() -> bool:
        rows = await node.sql(f"SELECT count(*) FROM tasks WHERE status IN {statuses}")
        return bool(rows[0][0] == n)
    return check


async def test_rate_limit_spreads_dispatch(node: RunningNode) -> None:
    await node.api.SetQueueLimits(api_pb2.SetQueueLimitsRequest(queue_name="rq",
                                                                 rate_per_second=4))
    ids = [await create(node, "rq") for _ in range(8)]
    w = await node.worker(["rq"], concurrency=8)
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = await w.assignments(8, timeout=10)
    elapsed = loop.time() - start
    assert sorted(a.task_id for a in got) == sorted(ids)
    # A full bucket holds one second's worth (4); the other 4 need about a second more.
    assert elapsed >= 0.7, elapsed
    await w.close()


async def test_list_queues_with_counts_and_settings(node: RunningNode) -> None:
    await create(node, "lq1")
    await create(node, "lq1")
    await create(node, "lq2")
    await node.api.PauseQueue(api_pb2.QueueRequest(queue_name="lq3"))
    queues = {q.name: q for q in (await node.api.ListQueues(
        api_pb2.ListQueuesRequest())).queues}
    assert dict(queues["lq1"].counts) == {"PENDING": 2}
    assert dict(queues["lq2"].counts) == {"PENDING": 1}
    assert queues["lq3"].paused and dict(queues["lq3"].counts) == {}


async def test_queue_limit_bad_input(node: RunningNode) -> None:
    for req, field in ((api_pb2.SetQueueLimitsRequest(queue_name="", max_concurrency=1),
                        "queue_name"),
                       (api_pb2.SetQueueLimitsRequest(queue_name="q", max_concurrency=-1),
                        "max_concurrency"),
                       (api_pb2.SetQueueLimitsRequest(queue_name="q",
                                                      rate_per_second=float("nan")),
                        "rate_per_second")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await node.api.SetQueueLimits(req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (info.value.details() or "")
    assert await node.sql("SELECT count(*) FROM queue_settings") == [(0,)]
