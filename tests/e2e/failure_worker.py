"""A worker process for the failure-scenario tests.

`work` records each execution (one line per start: task id, attempt, run count, pid) in the
file given by --runs-file, so a test can count executions across processes, then sleeps
`seconds` from its input (`first` instead on a task's first execution) and returns.
`noop` returns at once. The sleep is asyncio's, so a drain timeout can cut it short.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from valka.sdk import ValkaWorker
from valka.sdk.context import TaskContext


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("queue")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--runs-file", default=None)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    worker = ValkaWorker(args.address, queues=[args.queue], concurrency=args.concurrency,
                         worker_id=args.worker_id, drain_timeout=args.drain_timeout)
    runs_fd = (os.open(args.runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
               if args.runs_file else None)
    pid = os.getpid()

    @worker.task("work")
    async def work(ctx: TaskContext) -> Any:
        if runs_fd is not None:
            # One write per line with O_APPEND: lines from several processes never mix.
            os.write(runs_fd, f"{ctx.task_id} {ctx.attempt} {ctx.run_count} {pid}\n".encode())
        spec = ctx.input if isinstance(ctx.input, dict) else {}
        seconds = float(spec.get("seconds", 0))
        if ctx.run_count == 0 and "first" in spec:
            seconds = float(spec["first"])
        if seconds > 0:
            await asyncio.sleep(seconds)
        return {"attempt": ctx.attempt}

    @worker.task("noop")
    async def noop(ctx: TaskContext) -> Any:
        return {"echo": ctx.input}

    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
