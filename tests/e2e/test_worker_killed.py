"""A worker killed with SIGKILL while holding unacknowledged tasks loses them at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.procs import HERE, Procs
from valka.core.status import TaskStatus
from valka.sdk import ValkaClient
from valka.sdk.models import TaskSpec

pytestmark = pytest.mark.e2e


async def test_sigkilled_worker_tasks_reach_another_worker_within_a_second(
        server_proc: Procs) -> None:
    server_proc.start_server()
    async with ValkaClient(server_proc.address) as client:
        tasks = await client.create_tasks(
            [TaskSpec(queue="kill", name="noop", input=i) for i in range(5)])
        holder = subprocess.Popen(
            [sys.executable, str(HERE / "hold_worker.py"), server_proc.address, "kill", "5"],
            stdout=subprocess.PIPE, env=server_proc.env(), cwd=server_proc.tmp,
            start_new_session=True)
        server_proc.procs.append(holder)
        assert holder.stdout is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        assert line.startswith(b"holding 5"), line
        holder.stdout.close()
        server_proc.start_worker("kill", concurrency=5)
        # Wait until the healthy worker is connected (holding nothing: all five are held).
        deadline = time.monotonic() + 30
        while len(await client.list_workers()) < 2:
            assert time.monotonic() < deadline, server_proc.logs()
            await asyncio.sleep(0.05)
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        done = await client.wait_for_tasks([t.id for t in tasks], timeout=10,
                                           poll_interval=0.02)
        elapsed = time.monotonic() - killed_at
    assert all(t.status == TaskStatus.COMPLETED for t in done), server_proc.logs()
    assert all(t.run_count == 1 for t in done)  # the unacknowledged dispatch was not charged
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
