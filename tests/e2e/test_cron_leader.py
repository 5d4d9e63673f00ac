"""A cron schedule firing every second, across a SIGKILL of the leading server process.

Two servers share one database; the one holding the leader lock fires the schedule. It is
killed without warning; the other takes over. The tasks, counted per fire-time key, must be
one per second: none twice, and none lost unless the takeover outlasted the grace after
which fire times count as missed (then RUN_ONCE allows one task for the missed stretch).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import psycopg
import pytest

from tests.e2e.procs import Procs
from valka.db.sqlfile import load_queries
from valka.scheduler.cron import MISSED_AFTER
from valka.scheduler.leader import LEADER_LOCK_KEY
from valka.v1 import api_pb2, api_pb2_grpc

pytestmark = pytest.mark.e2e

# Who holds the leader lock: the product's own query.
_LEADER_SQL = load_queries("valka.db", "sql/leader.sql")["leader_current"]
_T = TypeVar("_T")


async def eventually(check: Callable[[], Awaitable[_T | None]], timeout: float,
                     what: str, procs: Procs) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout}s\n{procs.logs()}"
        await asyncio.sleep(0.05)


async def test_one_task_per_fire_time_across_a_leader_kill(server_proc: Procs) -> None:
    servers: dict[str, tuple[int, str]] = {}
    for node_id in ("cron-a", "cron-b"):
        proc = server_proc.start_server(VALKA_NODE_ID=node_id)
        servers[node_id] = (proc.pid, server_proc.address)
    procs = {p.pid: p for p in server_proc.procs}

    async with await psycopg.AsyncConnection.connect(server_proc.db_url,
                                                     autocommit=True) as db:
        async def leader() -> str | None:
            cur = await db.execute(_LEADER_SQL, {"key": LEADER_LOCK_KEY})
            row = await cur.fetchone()
            name = str(row[0]) if row else ""
            return name.removeprefix("valka-leader:") if name.startswith("valka-") else None

        async def fire_times(schedule_id: str) -> list[int]:
            cur = await db.execute(
                "SELECT idempotency_key FROM tasks WHERE idempotency_key LIKE %s",
                (f"schedule:{schedule_id}:%",))
            return sorted(int(str(r[0]).rsplit(":", 1)[1]) for r in await cur.fetchall())

        first_leader = await eventually(leader, 30, "a leader", server_proc)
        [survivor] = [n for n in servers if n != first_leader]
        async with grpc.aio.insecure_channel(servers[survivor][1]) as channel:
            api = api_pb2_grpc.ApiServiceStub(channel)
            created = await api.CreateSchedule(api_pb2.CreateScheduleRequest(
                name="tick", cron="* * * * * *", missed_policy=api_pb2.MISSED_POLICY_RUN_ONCE,
                task=api_pb2.CreateTaskRequest(queue_name="cron", task_name="tick")))

            async def fired(n: int) -> list[int] | None:
                times = await fire_times(created.id)
                return times if len(times) >= n else None

            await eventually(lambda: fired(3), 15, "three fires by the first leader",
                             server_proc)
            killed_at = time.monotonic()
            victim = procs[servers[first_leader][0]]
            victim.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.wait)

            async def survivor_leads() -> bool:
                return await leader() == survivor

            await eventually(survivor_leads, 15, f"{survivor} to take over", server_proc)
            takeover_s = time.monotonic() - killed_at

            async def ten_seconds() -> list[int] | None:
                times = await fire_times(created.id)
                return times if times and times[-1] >= created.next_fire_at_ms + 10_000 \
                    else None

            await eventually(ten_seconds, 30, "ten seconds of fire times", server_proc)
            await api.PauseSchedule(api_pb2.ScheduleRequest(name="tick"))
        fires = await fire_times(created.id)

    assert fires[0] == created.next_fire_at_ms
    assert all(f % 1000 == 0 for f in fires)
    assert len(set(fires)) == len(fires), "a fire time has two tasks"
    gaps = [(a, b) for a, b in itertools.pairwise(fires) if b - a != 1000]
    if takeover_s < MISSED_AFTER.total_seconds() - 1:
        # The new leader came in time to fire every second the old one left.
        assert gaps == [], f"lost fire times {gaps} (takeover took {takeover_s:.1f}s)"
    else:
        # Missed seconds, collapsed by RUN_ONCE into the task at the first of them.
        assert len(gaps) <= 1, f"{gaps} (takeover took {takeover_s:.1f}s)"
