"""Graceful shutdown: creates refused, workers told, in-flight results still accepted."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.server_fixtures import RunningNode, make_config, wait_until
from valka.server.app import Node
from valka.v1 import api_pb2, worker_pb2


async def test_server_drain_accepts_in_flight_results(db_url: str) -> None:
    n = Node(make_config(db_url))
    await n.start()
    node = RunningNode(n, db_url)
    try:
        task = (await node.api.CreateTask(api_pb2.CreateTaskRequest(
            queue_name="d", task_name="t"))).task
        unacked = (await node.api.CreateTask(api_pb2.CreateTaskRequest(
            queue_name="d", task_name="t"))).task
        w = await node.worker(["d"], concurrency=2)
        got = {a.task_id: a for a in await w.assignments(2)}
        a = got[task.id]
        await w.send(acks=[worker_pb2.Ack(task_id=a.task_id, attempt=a.attempt)])
        await wait_until(lambda: n.engine is not None and task.id in next(
            iter(n.engine.sessions.values())).running)
        stopping = asyncio.create_task(n.stop(drain_s=10))
        frame = await w.read_until(lambda f: f.HasField("draining"))
        assert frame.draining.drain_ms == 10_000
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="d", task_name="t"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The running task's result still lands; the unacknowledged one goes back to PENDING.
        await w.send(results=[worker_pb2.Result(task_id=a.task_id, attempt=a.attempt,
                                                success=True, output='"done"')])
        [ra] = await w.result_acks(1)
        assert ra.accepted
        await w.close()
        await asyncio.wait_for(stopping, 30)
        rows = dict(await node.sql("SELECT id::text, status::text FROM tasks"))
        assert rows == {task.id: "COMPLETED", unacked.id: "PENDING"}
    finally:
        try:
            await node.close()
        finally:
            await n.stop(drain_s=0.1)
