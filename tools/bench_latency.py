"""Dispatch latency with idle workers: create call -> handler start, in separate processes.

    python tools/bench_latency.py [--tasks 500] [--database-url URL]

Starts a server (embedded PostgreSQL in a temporary folder unless --database-url is given)
and one worker process whose handler records the wall-clock time it started; then creates
tasks one at a time, a few milliseconds apart so the worker is idle each time, and reports
percentiles of (handler start - create call start) and (handler start - create call return).
All processes run on this machine, so their clocks agree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = """
import asyncio, sys, time
from valka.sdk import ValkaWorker
w = ValkaWorker(sys.argv[1], queues=["latency"], concurrency=4)
@w.task("stamp")
async def stamp(ctx):
    return {"started_ns": time.time_ns()}
asyncio.run(w.run())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(address: str, n: int, gap_s: float) -> tuple[list[float], list[float]]:
    from valka.core.errors import Unavailable
    from valka.sdk import ValkaClient
    from valka.sdk.models import TaskInfo

    async with ValkaClient(address) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                if await client.list_workers():
                    break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)
        stamps: list[tuple[str, int, int]] = []
        for i in range(n + 20):
            t0 = time.time_ns()
            task = await client.create_task("latency", "stamp", i)
            t1 = time.time_ns()
            if i >= 20:  # warm-up: connections, plans, caches
                stamps.append((task.id, t0, t1))
            await asyncio.sleep(gap_s)
        done: list[TaskInfo] = await client.wait_for_tasks([s[0] for s in stamps], timeout=60)
    by_id = {t.id: t.output["started_ns"] for t in done}
    from_start = [(by_id[i] - t0) / 1e6 for i, t0, _ in stamps]
    from_return = [(by_id[i] - t1) / 1e6 for i, _, t1 in stamps]
    return from_start, from_return


def report(label: str, values: list[float]) -> None:
    print(f"{label}: p50={pct(values, 50):.2f} ms  p95={pct(values, 95):.2f} ms  "
          f"p99={pct(values, 99):.2f} ms  max={max(values):.2f} ms  "
          f"mean={statistics.fmean(values):.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--database-url", default=os.environ.get("VALKA_DATABASE_URL", ""))
    args = parser.parse_args()
    address = f"127.0.0.1:{free_port()}"
    tmp = Path(tempfile.mkdtemp(prefix="valka-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALKA_")}
    env.update(VALKA_GRPC_ADDR=address, VALKA_DATA_DIR=str(tmp / "data"),
               VALKA_LOG_LEVEL="WARNING")
    if args.database_url:
        env["VALKA_DATABASE_URL"] = args.database_url
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "valka.server"], env=env))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, address], env=env))
        from_start, from_return = asyncio.run(measure(address, args.tasks, args.gap_ms / 1000))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"{args.tasks} tasks, one at a time, {args.gap_ms:g} ms apart, idle worker")
    report("create call start -> handler start ", from_start)
    report("create call return -> handler start", from_return)
    return 0


if __name__ == "__main__":
    sys.exit(main())
