"""An in-process Valka node on a per-test database, and a raw protocol-level worker.

The raw worker speaks WorkerService frames directly, so tests can send what a correct SDK
never would (stale attempts, results for tasks it does not hold, a first frame without
hello).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import psycopg
import pytest

from valka.core.config import Config, load_config
from valka.server.app import Node
from valka.v1 import api_pb2_grpc, worker_pb2, worker_pb2_grpc

__all__ = ["RawWorker", "make_config", "node", "wait_until"]


def make_config(db_url: str, **overrides: object) -> Config:
    base: dict[str, object] = {"database_url": db_url, "grpc_addr": "127.0.0.1:0",
                               "node_id": "test-node"}
    base.update(overrides)
    return load_config(env={}, overrides=base)


class RunningNode:
    def __init__(self, node: Node, db_url: str) -> None:
        self.node = node
        self.db_url = db_url
        self.address = f"127.0.0.1:{node.grpc_port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.api = api_pb2_grpc.ApiServiceStub(self.channel)
        self.workers: list[RawWorker] = []

    async def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as c:
            cur = await c.execute(query.encode(), params or None)
            return await cur.fetchall() if cur.description else []

    async def worker(self, queues: list[str], concurrency: int = 4,
                     worker_id: str | None = None,
                     in_flight: list[worker_pb2.TaskRef] | None = None) -> RawWorker:
        w = RawWorker(self.channel, queues, concurrency, worker_id, in_flight)
        # Closed at teardown even when the test fails first: a stream left open keeps grpc
        # objects alive past their event loop.
        self.workers.append(w)
        await w.start()
        return w

    async def close(self) -> None:
        for w in self.workers:
            await w.close()
        await self.channel.close()


@pytest.fixture
async def node(db_url: str, caplog: pytest.LogCaptureFixture) -> AsyncIterator[RunningNode]:
    n = Node(make_config(db_url))
    await n.start()
    running = RunningNode(n, db_url)
    try:
        yield running
    finally:
        try:
            await running.close()
        finally:
            await n.stop(drain_s=0.5)
    stuck = [r.getMessage() for r in caplog.records if "shutdown step" in r.getMessage()
             or "tasks at the stuck step" in r.getMessage()]
    assert not stuck, "\n".join(stuck)


async def wait_until(check: Callable[[], Any], timeout: float = 10.0,
                     interval: float = 0.02) -> Any:
    """Poll `check` (sync or async) until it returns something truthy, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class RawWorker:
    def __init__(self, channel: grpc.aio.Channel, queues: list[str], concurrency: int,
                 worker_id: str | None, in_flight: list[worker_pb2.TaskRef] | None) -> None:
        self.stub = worker_pb2_grpc.WorkerServiceStub(channel)
        self.worker_id = worker_id or str(uuid.uuid4())
        self.hello = worker_pb2.Hello(worker_id=self.worker_id, worker_name="raw",
                                      queues=queues, concurrency=concurrency,
                                      in_flight=in_flight or [])
        self.call: Any = None
        self.frames: list[worker_pb2.ServerFrame] = []
        # A background reader: cancelling a grpc read mid-way breaks the call, so waits with
        # a deadline wait on this queue instead.
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.welcome: worker_pb2.Welcome | None = None

    async def start(self) -> None:
        self.call = self.stub.Session()
        await self.call.write(worker_pb2.WorkerFrame(hello=self.hello))
        first = await self.call.read()
        assert first.HasField("welcome"), first
        self.welcome = first.welcome
        self._reader = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        try:
            while True:
                frame = await self.call.read()
                await self._inbox.put(frame)
                if frame is grpc.aio.EOF:
                    return
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            await self._inbox.put(exc)

    async def send(self, **fields: Any) -> None:
        await self.call.write(worker_pb2.WorkerFrame(**fields))

    async def read_until(self, predicate: Callable[[worker_pb2.ServerFrame], bool],
                         timeout: float = 10.0) -> worker_pb2.ServerFrame:
        async def loop() -> worker_pb2.ServerFrame:
            while True:
                frame = await self._inbox.get()
                if frame is grpc.aio.EOF or isinstance(frame, BaseException):
                    raise AssertionError(f"stream ended: {frame!r}")
                self.frames.append(frame)
                if predicate(frame):
                    return frame  # type: ignore[no-any-return]
        return await asyncio.wait_for(loop(), timeout)

    async def assignments(self, n: int, timeout: float = 10.0) -> list[worker_pb2.Assignment]:
        got: list[worker_pb2.Assignment] = []

        def enough(frame: worker_pb2.ServerFrame) -> bool:
            got.extend(frame.assignments)
            return len(got) >= n
        await self.read_until(enough, timeout)
        return got

    async def result_acks(self, n: int, timeout: float = 10.0) -> list[worker_pb2.ResultAck]:
        got: list[worker_pb2.ResultAck] = []

        def enough(frame: worker_pb2.ServerFrame) -> bool:
            got.extend(frame.result_acks)
            return len(got) >= n
        await self.read_until(enough, timeout)
        return got

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
