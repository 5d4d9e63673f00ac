"""ApiService against a real node and PostgreSQL: happy paths and bad input."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from tests.server_fixtures import RunningNode
from valka.core.status import TaskStatus
from valka.v1 import api_pb2, common_pb2


async def count_tasks(node: RunningNode) -> int:
    return int((await node.sql("SELECT count(*) FROM tasks"))[0][0])


async def test_create_get_roundtrip(node: RunningNode) -> None:
    created = await node.api.CreateTask(
        api_pb2.CreateTaskRequest(
            queue_name="emails",
            task_name="send",
            input='{"to": "a@example.com"}',
            priority=5,
            max_retries=7,
            timeout_seconds=60,
            metadata='{"tenant": "acme"}',
        )
    )
    assert created.created
    task = created.task
    assert TaskStatus(task.status) == TaskStatus.PENDING
    got = (await node.api.GetTask(api_pb2.GetTaskRequest(task_id=task.id))).task
    assert got.id == task.id
    assert json.loads(got.input) == {"to": "a@example.com"}
    assert json.loads(got.metadata) == {"tenant": "acme"}
    assert (got.priority, got.max_retries, got.timeout_seconds) == (5, 7, 60)
    assert got.created_at_ms > 0
    assert uuid.UUID(got.id).version == 7


async def test_defaults_come_from_config(node: RunningNode) -> None:
    task = (
        await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="q", task_name="t"))
    ).task
    assert (task.max_retries, task.timeout_seconds) == (3, 300)
    assert task.input == ""


async def test_list_paginates_with_cursor(node: RunningNode) -> None:
    ids = []
    for i in range(7):
        r = await node.api.CreateTask(
            api_pb2.CreateTaskRequest(queue_name="pages", task_name=f"t{i}")
        )
        ids.append(r.task.id)
    await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="other", task_name="x"))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await node.api.ListTasks(
            api_pb2.ListTasksRequest(
                queue_name="pages", page=common_pb2.PageRequest(page_size=3, page_token=token)
            )
        )
        seen.extend(t.id for t in page.tasks)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == sorted(ids, reverse=True)  # newest first, each exactly once


async def test_list_filters_by_status(node: RunningNode) -> None:
    a = (await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="f", task_name="a"))).task
    await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="f", task_name="b"))
    await node.api.CancelTask(api_pb2.CancelTaskRequest(task_id=a.id))
    page = await node.api.ListTasks(
        api_pb2.ListTasksRequest(queue_name="f", status=common_pb2.TASK_STATUS_CANCELLED)
    )
    assert [t.id for t in page.tasks] == [a.id]


async def test_get_tasks_batch_leaves_out_unknown(node: RunningNode) -> None:
    a = (await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="g", task_name="a"))).task
    got = await node.api.GetTasks(api_pb2.GetTasksRequest(task_ids=[a.id, str(uuid.uuid4())]))
    assert [t.id for t in got.tasks] == [a.id]


async def test_cancel_pending_then_again(node: RunningNode) -> None:
    task = (
        await node.api.CreateTask(api_pb2.CreateTaskRequest(queue_name="c", task_name="t"))
    ).task
    first = await node.api.CancelTask(api_pb2.CancelTaskRequest(task_id=task.id, reason="no"))
    assert first.cancelled and TaskStatus(first.task.status) == TaskStatus.CANCELLED
    second = await node.api.CancelTask(api_pb2.CancelTaskRequest(task_id=task.id))
    assert not second.cancelled and TaskStatus(second.task.status) == TaskStatus.CANCELLED


async def test_idempotency_key_returns_existing(node: RunningNode) -> None:
    req = api_pb2.CreateTaskRequest(queue_name="i", task_name="t", idempotency_key="k1")
    first = await node.api.CreateTask(req)
    second = await node.api.CreateTask(req)
    assert first.created and not second.created
    assert second.task.id == first.task.id
    assert await count_tasks(node) == 1


async def test_batch_create(node: RunningNode) -> None:
    reqs = [
        api_pb2.CreateTaskRequest(queue_name="b", task_name="t", input=str(i)) for i in range(50)
    ]
    res = await node.api.CreateTasks(api_pb2.CreateTasksRequest(tasks=reqs))
    assert [r.task.input for r in res.results] == [str(i) for i in range(50)]
    assert await count_tasks(node) == 50


LONG = "x" * 201


@pytest.mark.parametrize(
    ("fields", "code", "needle"),
    [
        ({"queue_name": "", "task_name": "t"}, grpc.StatusCode.INVALID_ARGUMENT, "queue_name"),
        ({"queue_name": LONG, "task_name": "t"}, grpc.StatusCode.INVALID_ARGUMENT, "limit is 200"),
        ({"queue_name": "a b", "task_name": "t"}, grpc.StatusCode.INVALID_ARGUMENT, "queue_name"),
        ({"queue_name": "q", "task_name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "task_name"),
        ({"queue_name": "q", "task_name": LONG}, grpc.StatusCode.INVALID_ARGUMENT, "task_name"),
        (
            {"queue_name": "q", "task_name": "t", "input": "{nope"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input: not valid JSON",
        ),
        (
            {"queue_name": "q", "task_name": "t", "input": '{"s": "\\u0000"}'},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input: contains \\u0000",
        ),
        ({"queue_name": "q", "task_name": "t\x00"}, grpc.StatusCode.INVALID_ARGUMENT, "task_name"),
        (
            {"queue_name": "q", "task_name": "t", "input": '"' + "a" * 1_048_600 + '"'},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "1048576",
        ),
        (
            {"queue_name": "q", "task_name": "t", "max_retries": -1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_retries",
        ),
        (
            {"queue_name": "q", "task_name": "t", "timeout_seconds": -5},
            grpc.StatusCode.INVALID_ARGUMENT,
            "timeout_seconds",
        ),
        (
            {"queue_name": "q", "task_name": "t", "metadata": "[1]"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "metadata: must be a JSON object",
        ),
    ],
)
async def test_create_rejects_bad_input(
    node: RunningNode, fields: dict[str, object], code: grpc.StatusCode, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.api.CreateTask(api_pb2.CreateTaskRequest(**fields))  # type: ignore[arg-type]
    assert info.value.code() == code
    assert needle in (info.value.details() or "")
    assert await count_tasks(node) == 0


async def test_batch_with_one_bad_task_stores_nothing(node: RunningNode) -> None:
    reqs = [
        api_pb2.CreateTaskRequest(queue_name="b", task_name="t"),
        api_pb2.CreateTaskRequest(queue_name="b", task_name=""),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.api.CreateTasks(api_pb2.CreateTasksRequest(tasks=reqs))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tasks[1].task_name" in (info.value.details() or "")
    assert await count_tasks(node) == 0


async def test_message_over_grpc_limit_is_refused_with_the_limit(node: RunningNode) -> None:
    big = '"' + "a" * 9_000_000 + '"'
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.api.CreateTask(
            api_pb2.CreateTaskRequest(queue_name="q", task_name="t", input=big)
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "8388608" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("task_id", "code"),
    [
        ("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_get_and_cancel_unknown_or_malformed_ids(
    node: RunningNode, task_id: str, code: grpc.StatusCode
) -> None:
    for call in (
        node.api.GetTask(api_pb2.GetTaskRequest(task_id=task_id)),
        node.api.CancelTask(api_pb2.CancelTaskRequest(task_id=task_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == code
        assert "task_id" in (info.value.details() or "")


async def test_bad_page_token_and_size(node: RunningNode) -> None:
    for page, needle in (
        (common_pb2.PageRequest(page_token="garbage!"), "page.page_token"),
        (common_pb2.PageRequest(page_size=5000), "page.page_size"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await node.api.ListTasks(api_pb2.ListTasksRequest(page=page))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (info.value.details() or "")


async def test_workers_of_a_dead_node_are_not_listed_as_connected(node: RunningNode) -> None:
    await node.sql(
        "INSERT INTO workers (id, name, node_id, queues, concurrency, last_seen_at)"
        " VALUES (gen_random_uuid(), 'ghost', 'gone-node', '{q}', 4,"
        " now() - interval '1 hour')")
    w = await node.worker(["q"])
    live = await node.api.ListWorkers(api_pb2.ListWorkersRequest())
    assert [x.id for x in live.workers] == [w.worker_id]
    everyone = await node.api.ListWorkers(api_pb2.ListWorkersRequest(include_disconnected=True))
    assert {(x.name, x.status) for x in everyone.workers} == {("raw", "CONNECTED"),
                                                              ("ghost", "LOST")}
    await w.close()
