"""Signals: delivered to the worker running the task, or with its next start; acknowledged."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import pytest

from tests.server_fixtures import RunningNode, wait_until
from valka.v1 import api_pb2, worker_pb2


async def test_signal_to_running_task_is_pushed_and_acknowledged(node: RunningNode) -> None:
    task = (await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="s",
                                                                task_name="t"))).task
    w = await node.worker(["s"])
    [a] = await w.assignments(1)
    await w.send(acks=[worker_pb2.Ack(task_id=a.task_id, attempt=a.attempt)])
    await wait_until(lambda: node.sql("SELECT 1 FROM tasks WHERE status = 'RUNNING'"))
    sent = await node.api.SendSignal(api_pb2.SendSignalRequest(
        task_id=task.id, signal_name="approve", payload='{"by": "ann"}'))
    assert sent.delivered
    frame = await w.read_until(lambda f: bool(f.signals))
    [sig] = frame.signals
    assert (sig.signal_id, sig.name, json.loads(sig.payload)) == (sent.signal_id, "approve",
                                                                  {"by": "ann"})
    await w.send(signal_acks=[worker_pb2.SignalAck(signal_id=sig.signal_id)])

    async def acknowledged() -> bool:
        listed = await node.api.ListSignals(api_pb2.ListSignalsRequest(task_id=task.id))
        return [s.status for s in listed.signals] == ["ACKNOWLEDGED"]
    await wait_until(acknowledged)
    await w.close()


async def test_signal_to_pending_task_arrives_with_its_start(node: RunningNode) -> None:
    task = (await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="s2",
                                                                task_name="t"))).task
    sent = await node.api.SendSignal(api_pb2.SendSignalRequest(task_id=task.id,
                                                               signal_name="go"))
    assert not sent.delivered
    w = await node.worker(["s2"])
    [a] = await w.assignments(1)
    await w.send(acks=[worker_pb2.Ack(task_id=a.task_id, attempt=a.attempt)])
    frame = await w.read_until(lambda f: bool(f.signals))
    assert [s.name for s in frame.signals] == ["go"]
    listed = await node.api.ListSignals(api_pb2.ListSignalsRequest(task_id=task.id))
    assert [s.status for s in listed.signals] == ["DELIVERED"]
    await w.close()


async def test_signal_bad_input_and_finished_task(node: RunningNode) -> None:
    task = (await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="s3",
                                                                task_name="t"))).task
    await node.api.CancelTask(api_pb2.CancelTaskRequest(task_id=task.id))
    cases = [
        (api_pb2.SendSignalRequest(task_id=task.id, signal_name="x"),
         grpc.StatusCode.FAILED_PRECONDITION, "finished"),
        (api_pb2.SendSignalRequest(task_id=task.id, signal_name=""),
         grpc.StatusCode.INVALID_ARGUMENT, "signal_name"),
        (api_pb2.SendSignalRequest(task_id=task.id, signal_name="x", payload="{bad"),
         grpc.StatusCode.INVALID_ARGUMENT, "payload"),
        (api_pb2.SendSignalRequest(task_id="01a23d00-0000-7000-8000-000000000000",
                                   signal_name="x"), grpc.StatusCode.NOT_FOUND, "task_id"),
    ]
    for req, code, needle in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await node.api.SendSignal(req)
        assert info.value.code() == code
        assert needle in (info.value.details() or "")
    assert await node.sql("SELECT count(*) FROM task_signals") == [(0,)]


def both_running(node: RunningNode) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        rows = await node.sql("SELECT count(*) FROM tasks WHERE status = 'RUNNING'")
        return bool(rows[0][0] == 2)
    return check


async def test_handlers_wait_for_a_named_signal(node: RunningNode) -> None:
    from tests.integration.test_failures import sdk_worker
    from valka.sdk import TaskContext, ValkaClient

    async def approval(ctx: TaskContext) -> Any:
        signal = await ctx.wait_for_signal("approve", timeout=30)
        return {"by": signal.payload["by"] if signal else None}

    def blocking(ctx: TaskContext) -> Any:
        signal = ctx.wait_signal("go", timeout=30)
        return {"got": signal.name if signal else None}

    async with (sdk_worker(node.address, "sig", {"approval": approval, "blocking": blocking}),
                ValkaClient(node.address) as client):
        a = await client.create_task("sig", "approval")
        b = await client.create_task("sig", "blocking")
        await wait_until(both_running(node))
        await client.send_signal(a.id, "other", {"by": "nobody"})
        await client.send_signal(a.id, "approve", {"by": "ann"})
        await client.send_signal(b.id, "go")
        done = {t.id: t for t in await client.wait_for_tasks([a.id, b.id], timeout=30)}
    assert done[a.id].output == {"by": "ann"}
    assert done[b.id].output == {"got": "go"}
