"""A worker process for the end-to-end tests: `noop` echoes its input, `sleep` waits."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from valka.sdk import ValkaWorker
from valka.sdk.context import TaskContext


def main() -> None:
    server, queue, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    worker = ValkaWorker(server, queues=[queue], concurrency=concurrency)

    @worker.task("noop")
    async def noop(ctx: TaskContext) -> Any:
        return {"echo": ctx.input}

    @worker.task("sleep")
    def sleep(ctx: TaskContext) -> Any:
        time.sleep(float(ctx.input))
        return {"slept": ctx.input}

    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
