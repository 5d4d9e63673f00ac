"""Cron schedules on a real node: the RPCs, bad input, firing, missed fire times, the SDK
and the CLI.

The node's scheduler leader runs the schedule runner, so tests wait for what it does; where
a test needs "the leader looked and found nothing to do", it runs a pass itself
(`run_once`), which is what the runner's loop calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from tests.server_fixtures import RunningNode, wait_until
from valka.cli.schedules import add_schedule_commands
from valka.core.errors import InvalidArgument, NotFound
from valka.scheduler.cron import ScheduleRunner, fire_key
from valka.sdk import ValkaClient
from valka.sdk import schedules as sdk
from valka.v1 import api_pb2

SECOND_MS = 1000


def template(**fields: Any) -> api_pb2.CreateTaskRequest:
    base: dict[str, Any] = {"queue_name": "cron", "task_name": "tick"}
    base.update(fields)
    return api_pb2.CreateTaskRequest(**base)


def request(name: str = "nightly", cron: str = "0 3 * * *", **fields: Any
            ) -> api_pb2.CreateScheduleRequest:
    fields.setdefault("task", template())
    return api_pb2.CreateScheduleRequest(name=name, cron=cron, **fields)


def runner(node: RunningNode) -> ScheduleRunner:
    assert node.node.schedules is not None
    return node.node.schedules


async def is_leader(node: RunningNode) -> bool:
    return node.node.leader is not None and node.node.leader.is_leader


async def schedule_tasks(node: RunningNode, schedule_id: str) -> list[tuple[str, str]]:
    """(idempotency key, id) of the tasks a schedule created, by key."""
    rows = await node.sql("SELECT idempotency_key, id::text FROM tasks "
                          "WHERE idempotency_key LIKE %s ORDER BY idempotency_key",
                          f"schedule:{schedule_id}:%")
    return [(r[0], r[1]) for r in rows]


def fire_ms(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


async def db_now(node: RunningNode) -> datetime:
    value: datetime = (await node.sql("SELECT now()"))[0][0]
    return value


# ---- the RPCs --------------------------------------------------------------------------


async def test_create_list_pause_resume_delete(node: RunningNode) -> None:
    before = await db_now(node)
    created = await node.api.CreateSchedule(request(
        cron="0 3 * * *", timezone="Europe/Paris", missed_policy=api_pb2.MISSED_POLICY_SKIP,
        task=template(input='{"report": "daily"}', priority=4, max_retries=2,
                      metadata='{"team": "ops"}')))
    assert created.id and created.name == "nightly"
    assert (created.cron, created.timezone) == ("0 3 * * *", "Europe/Paris")
    assert created.missed_policy == api_pb2.MISSED_POLICY_SKIP
    assert json.loads(created.task.input) == {"report": "daily"}
    assert (created.task.priority, created.task.max_retries) == (4, 2)
    assert not created.task.HasField("timeout_seconds")  # the server default, at each fire
    assert json.loads(created.task.metadata) == {"team": "ops"}
    next_fire = datetime.fromtimestamp(created.next_fire_at_ms / 1000, UTC)
    assert before < next_fire <= before + timedelta(days=1)
    assert next_fire.astimezone(ZoneInfo("Europe/Paris")).hour == 3
    assert created.last_fire_at_ms == 0 and created.last_task_id == ""

    listed = (await node.api.ListSchedules(api_pb2.ListSchedulesRequest())).schedules
    assert [s.id for s in listed] == [created.id]

    paused = await node.api.PauseSchedule(api_pb2.ScheduleRequest(name="nightly"))
    assert paused.paused and paused.next_fire_at_ms == 0
    again = await node.api.PauseSchedule(api_pb2.ScheduleRequest(name="nightly"))
    assert again.paused  # pausing twice is fine

    resumed = await node.api.ResumeSchedule(api_pb2.ScheduleRequest(name="nightly"))
    assert not resumed.paused and resumed.next_fire_at_ms == created.next_fire_at_ms
    unchanged = await node.api.ResumeSchedule(api_pb2.ScheduleRequest(name="nightly"))
    assert unchanged == resumed

    deleted = await node.api.DeleteSchedule(api_pb2.ScheduleRequest(name="nightly"))
    assert deleted.deleted
    assert not (await node.api.ListSchedules(api_pb2.ListSchedulesRequest())).schedules


async def test_create_with_an_existing_name_replaces_it_keeping_its_id(
        node: RunningNode) -> None:
    first = await node.api.CreateSchedule(request(cron="0 * * * *"))
    same = await node.api.CreateSchedule(request(cron="0 * * * *", task=template(priority=9)))
    assert same.id == first.id and same.task.priority == 9
    assert same.next_fire_at_ms == first.next_fire_at_ms  # re-applied, not rescheduled
    other = await node.api.CreateSchedule(request(cron="0 3 * * *"))
    assert other.id == first.id and other.next_fire_at_ms != first.next_fire_at_ms
    assert len((await node.api.ListSchedules(api_pb2.ListSchedulesRequest())).schedules) == 1


BAD_CREATES: list[tuple[str, api_pb2.CreateScheduleRequest, grpc.StatusCode, str]] = [
    ("empty name", request(name=""), grpc.StatusCode.INVALID_ARGUMENT, "name:"),
    ("long name", request(name="n" * 201), grpc.StatusCode.INVALID_ARGUMENT, "name:"),
    ("control name", request(name="a\x01b"), grpc.StatusCode.INVALID_ARGUMENT, "name:"),
    ("empty cron", request(cron=""), grpc.StatusCode.INVALID_ARGUMENT, "cron:"),
    ("garbage cron", request(cron="every day"), grpc.StatusCode.INVALID_ARGUMENT, "cron:"),
    ("minute 61", request(cron="61 * * * *"), grpc.StatusCode.INVALID_ARGUMENT, "cron:"),
    ("seven fields", request(cron="* * * * * * *"), grpc.StatusCode.INVALID_ARGUMENT,
     "cron:"),
    ("random field", request(cron="R * * * *"), grpc.StatusCode.INVALID_ARGUMENT, "cron:"),
    ("never fires", request(cron="0 0 30 2 *"), grpc.StatusCode.INVALID_ARGUMENT,
     "cron: '0 0 30 2 *' never fires"),
    ("unknown zone", request(timezone="Mars/Olympus"), grpc.StatusCode.INVALID_ARGUMENT,
     "timezone:"),
    ("path zone", request(timezone="../../etc/passwd"), grpc.StatusCode.INVALID_ARGUMENT,
     "timezone:"),
    ("no task", api_pb2.CreateScheduleRequest(name="x", cron="* * * * *"),
     grpc.StatusCode.INVALID_ARGUMENT, "task:"),
    ("no queue", request(task=template(queue_name="")), grpc.StatusCode.INVALID_ARGUMENT,
     "task.queue_name:"),
    ("bad queue", request(task=template(queue_name="a b")), grpc.StatusCode.INVALID_ARGUMENT,
     "task.queue_name:"),
    ("bad input", request(task=template(input="{oops")), grpc.StatusCode.INVALID_ARGUMENT,
     "task.input:"),
    ("nul input", request(task=template(input='"\\u0000"')),
     grpc.StatusCode.INVALID_ARGUMENT, "task.input:"),
    ("list metadata", request(task=template(metadata="[1]")),
     grpc.StatusCode.INVALID_ARGUMENT, "task.metadata:"),
    ("negative retries", request(task=template(max_retries=-1)),
     grpc.StatusCode.INVALID_ARGUMENT, "task.max_retries:"),
    ("zero timeout", request(task=template(timeout_seconds=0)),
     grpc.StatusCode.INVALID_ARGUMENT, "task.timeout_seconds:"),
    ("own key", request(task=template(idempotency_key="k")),
     grpc.StatusCode.INVALID_ARGUMENT, "task.idempotency_key:"),
    ("delay", request(task=template(delay_ms=5)), grpc.StatusCode.INVALID_ARGUMENT,
     "task.delay_ms:"),
    ("due time", request(task=template(scheduled_at_ms=1)), grpc.StatusCode.INVALID_ARGUMENT,
     "task.scheduled_at_ms:"),
    ("huge input", request(task=template(input='"' + "x" * (1 << 20) + '"')),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "task.input:"),
    ("unknown policy", request(missed_policy=7), grpc.StatusCode.INVALID_ARGUMENT,
     "missed_policy:"),
]


@pytest.mark.parametrize(("case", "bad", "code", "prefix"), BAD_CREATES,
                         ids=[c[0] for c in BAD_CREATES])
async def test_bad_create_names_the_field_and_changes_nothing(
        node: RunningNode, case: str, bad: api_pb2.CreateScheduleRequest,
        code: grpc.StatusCode, prefix: str) -> None:
    # Most bad requests try to replace this one.
    existing = await node.api.CreateSchedule(request(name="nightly", cron="0 * * * *"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.api.CreateSchedule(bad)
    assert info.value.code() == code, info.value.details()
    assert (info.value.details() or "").startswith(prefix), info.value.details()
    listed = (await node.api.ListSchedules(api_pb2.ListSchedulesRequest())).schedules
    assert list(listed) == [existing]


@pytest.mark.parametrize("rpc", ["PauseSchedule", "ResumeSchedule", "DeleteSchedule"])
async def test_unknown_or_empty_names(node: RunningNode, rpc: str) -> None:
    kept = await node.api.CreateSchedule(request(name="kept"))
    call = getattr(node.api, rpc)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(api_pb2.ScheduleRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "name: no schedule named 'nope'"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(api_pb2.ScheduleRequest(name=""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("name:")
    assert list((await node.api.ListSchedules(api_pb2.ListSchedulesRequest())).schedules) \
        == [kept]


# ---- firing ----------------------------------------------------------------------------


async def test_every_second_one_task_per_fire_time(node: RunningNode) -> None:
    created = await node.api.CreateSchedule(request(
        name="ticker", cron="* * * * * *", task=template(input='{"n": 1}', priority=3)))
    first_fire_ms = created.next_fire_at_ms
    assert first_fire_ms % SECOND_MS == 0
    await wait_until(lambda: _at_least(node, created.id, 4), timeout=15)
    await node.api.PauseSchedule(api_pb2.ScheduleRequest(name="ticker"))
    tasks = await schedule_tasks(node, created.id)
    fires = sorted(fire_ms(k) for k, _ in tasks)
    assert len(set(fires)) == len(fires) == len(tasks)
    # One task for every second from the first fire time to the last: none lost, none twice.
    assert fires == list(range(first_fire_ms, fires[-1] + 1, SECOND_MS))
    rows = await node.sql("SELECT queue_name, task_name, input::text, priority, max_retries "
                          "FROM tasks WHERE idempotency_key = %s", tasks[0][0])
    assert rows == [("cron", "tick", '{"n": 1}', 3, 3)]
    [schedule] = (await node.api.ListSchedules(api_pb2.ListSchedulesRequest())).schedules
    assert schedule.last_fire_at_ms == fires[-1]
    assert schedule.last_task_id == dict(tasks)[fire_key(created.id, _dt(fires[-1]))]


async def _at_least(node: RunningNode, schedule_id: str, n: int) -> bool:
    return len(await schedule_tasks(node, schedule_id)) >= n


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def missed_for_five_hours(node: RunningNode, policy: api_pb2.MissedPolicy.ValueType
                                ) -> tuple[api_pb2.Schedule, datetime]:
    """An hourly schedule whose leader was 'down' for five and a half hours."""
    created = await node.api.CreateSchedule(request(name="hourly", cron="0 * * * *",
                                                    missed_policy=policy))
    [(stale,)] = await node.sql(
        "UPDATE schedules SET next_fire_at = date_trunc('hour', now()) - interval '5 hours' "
        "WHERE id = %s RETURNING next_fire_at", created.id)
    await node.sql("NOTIFY valka_schedules")
    await wait_until(lambda: _advanced_past_now(node, created.id), timeout=10)
    return created, stale


async def _advanced_past_now(node: RunningNode, schedule_id: str) -> bool:
    [(ok,)] = await node.sql("SELECT next_fire_at > now() FROM schedules WHERE id = %s",
                             schedule_id)
    return bool(ok)


async def test_missed_skip_creates_nothing_and_moves_to_the_next_future_time(
        node: RunningNode) -> None:
    created, _ = await missed_for_five_hours(node, api_pb2.MISSED_POLICY_SKIP)
    assert await schedule_tasks(node, created.id) == []
    [(next_fire, expected)] = await node.sql(
        "SELECT next_fire_at, date_trunc('hour', now()) + interval '1 hour' FROM schedules "
        "WHERE id = %s", created.id)
    assert next_fire == expected


async def test_missed_run_once_creates_exactly_one_task(node: RunningNode) -> None:
    created, stale = await missed_for_five_hours(node, api_pb2.MISSED_POLICY_RUN_ONCE)
    tasks = await schedule_tasks(node, created.id)
    assert [k for k, _ in tasks] == [fire_key(created.id, stale)]
    [(next_fire, expected, last_task)] = await node.sql(
        "SELECT next_fire_at, date_trunc('hour', now()) + interval '1 hour', last_task_id::text"
        " FROM schedules WHERE id = %s", created.id)
    assert next_fire == expected
    assert last_task == tasks[0][1]
    # The leader looking again changes nothing.
    await runner(node).run_once()
    assert await schedule_tasks(node, created.id) == tasks


async def test_a_fire_repeated_after_a_lost_advance_creates_no_second_task(
        node: RunningNode) -> None:
    """A leader that dies between creating the task and advancing the schedule: the next
    one computes the same fire time, and the same key finds the task already there."""
    created, stale = await missed_for_five_hours(node, api_pb2.MISSED_POLICY_RUN_ONCE)
    tasks = await schedule_tasks(node, created.id)
    assert len(tasks) == 1
    duplicates = runner(node).duplicates
    await node.sql("UPDATE schedules SET next_fire_at = %s WHERE id = %s", stale, created.id)
    await runner(node).run_once()
    assert await schedule_tasks(node, created.id) == tasks
    assert runner(node).duplicates == duplicates + 1
    assert await _advanced_past_now(node, created.id)


async def test_paused_schedules_do_not_fire_and_resume_does_not_catch_up(
        node: RunningNode) -> None:
    created = await node.api.CreateSchedule(request(name="hourly", cron="0 * * * *",
                                                    paused=True))
    assert created.paused and created.next_fire_at_ms == 0
    # A stale fire time on a paused schedule (a pause racing a fire) is ignored.
    await node.sql("UPDATE schedules SET next_fire_at = now() - interval '5 hours' "
                   "WHERE id = %s", created.id)
    await runner(node).run_once()
    assert await schedule_tasks(node, created.id) == []
    resumed = await node.api.ResumeSchedule(api_pb2.ScheduleRequest(name="hourly"))
    now = await db_now(node)
    next_fire = _dt(resumed.next_fire_at_ms)
    assert now < next_fire <= now + timedelta(hours=1) and next_fire.minute == 0
    await runner(node).run_once()
    assert await schedule_tasks(node, created.id) == []


async def test_a_schedule_broken_by_hand_does_not_stop_the_others(node: RunningNode) -> None:
    good, _ = await missed_for_five_hours(node, api_pb2.MISSED_POLICY_RUN_ONCE)
    await node.sql(
        "INSERT INTO schedules (id, name, cron, queue_name, task_name, next_fire_at) "
        "VALUES (gen_random_uuid(), 'broken', 'not a cron', 'q', 't', now() - interval '1h')")
    await node.sql("UPDATE schedules SET next_fire_at = date_trunc('hour', now()) "
                   "- interval '1 hour' WHERE id = %s", good.id)
    wait = await runner(node).run_once()
    assert wait == 1.0  # looks again after the longest wait, not at once
    assert len(await schedule_tasks(node, good.id)) == 2
    assert await _advanced_past_now(node, good.id)


async def test_a_change_on_any_node_wakes_the_leader(node: RunningNode) -> None:
    """The runner sleeps until the earliest fire time; a new, earlier schedule must not
    wait for that. (The notification is what wakes it: its wait is capped at 1 s anyway,
    so this checks the fire comes well within a second of its time.)"""
    await node.api.CreateSchedule(request(name="far", cron="0 0 1 1 *"))
    await wait_until(lambda: is_leader(node))
    created = await node.api.CreateSchedule(request(name="soon", cron="* * * * * *"))
    await wait_until(lambda: _at_least(node, created.id, 1), timeout=5)
    [(lag,)] = await node.sql(
        "SELECT extract(epoch FROM t.created_at) * 1000 - %s FROM tasks t "
        "WHERE idempotency_key = %s", created.next_fire_at_ms,
        fire_key(created.id, _dt(created.next_fire_at_ms)))
    assert 0 <= float(lag) < 500


# ---- SDK and CLI -----------------------------------------------------------------------


class _Client(ValkaClient, sdk.ScheduleMethods):
    """ValkaClient with the schedule methods, whether or not it already has them."""


async def test_sdk_round_trip(node: RunningNode) -> None:
    async with _Client(node.address) as client:
        info = await client.create_schedule(
            "reports", "0 9 * * 1-5", "reports", "build", {"kind": "weekly"},
            timezone="Europe/Paris", priority=2, metadata={"team": "ops"},
            missed_policy="skip")
        assert info.missed_policy is sdk.MissedPolicy.SKIP
        assert (info.queue, info.task_name, info.input) == ("reports", "build",
                                                            {"kind": "weekly"})
        assert info.max_retries is None and info.metadata == {"team": "ops"}
        assert info.next_fire_at is not None and info.next_fire_at.tzinfo is not None
        assert [s.name for s in await client.list_schedules()] == ["reports"]
        assert (await client.pause_schedule("reports")).paused
        assert not (await client.resume_schedule("reports")).paused
        assert await client.delete_schedule("reports")
        with pytest.raises(NotFound):
            await client.delete_schedule("reports")
        with pytest.raises(InvalidArgument, match=r"^cron:"):
            await client.create_schedule("bad", "not cron", "q", "t")
        with pytest.raises(InvalidArgument, match=r"^missed_policy:"):
            await client.create_schedule("bad", "* * * * *", "q", "t", missed_policy="often")
        assert await sdk.list_schedules(client) == []


def _cli(address: str, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="valka")
    parser.add_argument("--server", default=address)
    parser.add_argument("--token")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    add_schedule_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


async def test_cli(node: RunningNode, capsys: pytest.CaptureFixture[str]) -> None:
    async def cli(*argv: str) -> str:
        assert await asyncio.to_thread(_cli, node.address, *argv) == 0
        return capsys.readouterr().out

    out = await cli("schedule", "create", "nightly", "--cron", "0 3 * * *", "--queue", "q",
                    "--task", "t", "--input", '{"a": 1}', "--missed", "skip")
    assert "name: nightly" in out and "missed_policy: skip" in out
    table = await cli("schedule", "list")
    header, row = table.splitlines()
    assert header.split()[:3] == ["NAME", "CRON", "TIMEZONE"]
    assert row.split()[0] == "nightly" and "active" in row
    listed = json.loads(await cli("--json", "schedule", "list"))
    assert listed[0]["name"] == "nightly" and listed[0]["input"] == {"a": 1}
    assert "paused: True" in await cli("schedule", "pause", "nightly")
    assert json.loads(await cli("--json", "schedule", "resume", "nightly"))["paused"] is False
    assert await cli("schedule", "delete", "nightly") == "deleted schedule nightly\n"
    with pytest.raises(NotFound):
        await asyncio.to_thread(_cli, node.address, "schedule", "delete", "nightly")
    with pytest.raises(InvalidArgument, match="--input"):
        await asyncio.to_thread(_cli, node.address, "schedule", "create", "x", "--cron",
                                "* * * * *", "--queue", "q", "--task", "t", "--input", "{")
