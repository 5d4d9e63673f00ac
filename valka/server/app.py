"""Assembly and lifecycle of one Valka node: database, engine, readers, gRPC, shutdown."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import grpc

from valka._build import compiled
from valka.core.config import Config
from valka.core.errors import ConfigError
from valka.core.ids import new_id
from valka.db import misc as db_misc
from valka.db import tasks as db_tasks
from valka.db.embedded import EmbeddedPostgres
from valka.db.migrate import apply_migrations
from valka.db.pool import Pool, describe_conninfo, open_pool
from valka.dispatcher.engine import Engine
from valka.matching.listener import ReadyListener
from valka.matching.reader import ReaderSet
from valka.scheduler.cron import ScheduleRunner
from valka.scheduler.leader import LeaderElection
from valka.scheduler.maintenance import Maintenance
from valka.server.grpc_api import ApiServicer
from valka.server.grpc_worker import WorkerServicer
from valka.v1 import api_pb2_grpc, worker_pb2_grpc

__all__ = ["Node", "run_server"]

_STOP_STEP_S: Final = 15.0

log = logging.getLogger("valka.server")


class Node:
    """A running node. `start()` brings everything up; `stop()` drains and tears down."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id or f"{socket.gethostname()}-{new_id()[-8:]}"
        self.embedded: EmbeddedPostgres | None = None
        self.database_url = cfg.database_url
        self.pool: Pool | None = None
        self.engine: Engine | None = None
        self.readers: ReaderSet | None = None
        self.listener: ReadyListener | None = None
        self.maintenance: Maintenance | None = None
        self.leader: LeaderElection | None = None
        self.schedules: ScheduleRunner | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.worker_servicer: WorkerServicer | None = None
        self.grpc_port = 0

    async def prepare_database(self) -> str:
        """Start the embedded PostgreSQL if no URL is configured, then migrate."""
        if not self.database_url:
            data_dir = self.cfg.resolved_data_dir()
            self.embedded = EmbeddedPostgres(data_dir)
            log.info("no database_url configured: starting embedded PostgreSQL in %s", data_dir)
            self.database_url = await asyncio.to_thread(self.embedded.start)
        applied = await apply_migrations(self.database_url)
        for name in applied:
            log.info("applied migration %s", name)
        return self.database_url

    async def start(self) -> None:
        """Bring the node up; if any part fails, what was started is stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop(drain_s=0)
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        url = await self.prepare_database()
        self.pool = await open_pool(url, cfg.database.min_connections,
                                    cfg.database.max_connections, name="pool",
                                    statement_timeout_ms=cfg.database.statement_timeout_ms,
                                    connect_timeout_s=cfg.database.connect_timeout_s)
        await db_misc.worker_disconnect_node(self.pool, self.node_id)
        self.engine = Engine(cfg, self.pool, self.node_id)
        self.readers = ReaderSet(self.engine, cfg.matching.num_partitions,
                                 cfg.matching.reader_batch_size,
                                 cfg.matching.idle_poll_interval_s)
        self.engine.wake_queue = self.readers.wake
        self.engine.wake_partition = self.readers.wake_partition
        engine = self.engine
        await engine.load_queue_settings()
        self._background: set[asyncio.Task[None]] = set()

        def spawn(coro: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(coro)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        def reconnected() -> None:
            readers.wake_all()
            spawn(engine.load_queue_settings())

        readers = self.readers
        self.listener = ReadyListener(
            url, readers.wake, reconnected,
            others={"valka_queue_settings": lambda q: spawn(engine.reload_queue(q))})
        self.listener.start()
        self.maintenance = Maintenance(cfg, self.pool)
        maintenance = self.maintenance
        schedules = self.schedules = ScheduleRunner(cfg, engine, url)

        async def elected() -> None:
            maintenance.start()
            schedules.start()

        async def deposed() -> None:
            await maintenance.close()
            await schedules.close()

        self.leader = LeaderElection(url, self.node_id, on_elected=elected,
                                     on_deposed=deposed)
        self.leader.start()
        for queue in await db_tasks.pending_queues(self.pool):
            self.readers.wake(queue)
        self.grpc_server = self._grpc_server()
        self.worker_servicer = WorkerServicer(cfg, self.engine)
        api_pb2_grpc.add_ApiServiceServicer_to_server(ApiServicer(cfg, self.engine),
                                                      self.grpc_server)
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(self.worker_servicer,
                                                            self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port(cfg.grpc_addr)
        if self.grpc_port == 0:
            raise ConfigError(f"grpc_addr: cannot listen on {cfg.grpc_addr}",
                              field="grpc_addr")
        await self.grpc_server.start()
        await asyncio.wait_for(self.listener.connected.wait(), cfg.database.connect_timeout_s)
        host = cfg.grpc_addr.rsplit(":", 1)[0]
        log.info("valka node %s ready: grpc=%s:%d database=%s compiled core: %s",
                 self.node_id, host, self.grpc_port, describe_conninfo(url),
                 "yes" if compiled() else "no")

    def _grpc_server(self) -> grpc.aio.Server:
        limit = self.cfg.limits.max_grpc_message_bytes
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        return grpc.aio.server(options=options)

    async def stop(self, drain_s: float = 10.0) -> None:
        """Drain workers (results still accepted), hand claimed work back, shut down.

        Every step is bounded: a stuck step is logged with the stacks of all tasks and the
        shutdown goes on, because a server that cannot exit is worse than one that exits
        leaving leases to expire.
        """
        if self.worker_servicer is not None:
            self.worker_servicer.accepting = False
        if self.leader is not None:
            # Leadership goes first, so another node runs the scheduler during our drain.
            try:
                await asyncio.wait_for(self.leader.close(), _STOP_STEP_S)
            except TimeoutError:
                log.error("giving up leadership took over %ss; going on", _STOP_STEP_S)
        if self.engine is not None:
            self.engine.announce_drain(int(drain_s * 1000))
            if not await self.engine.wait_idle(drain_s):
                log.warning("drain timed out; running tasks keep their leases")
        steps: list[tuple[str, Callable[[], Awaitable[object]] | None]] = [
            ("readers", self.readers.close if self.readers else None),
            ("claimed tasks", self.engine.release_claimed if self.engine else None),
            ("grpc", self._stop_grpc if self.grpc_server else None),
            ("sessions", self.worker_servicer.wait_closed if self.worker_servicer else None),
            ("listener", self.listener.close if self.listener else None),
            ("maintenance", self.maintenance.close if self.maintenance else None),
            ("pool", self.pool.close if self.pool else None),
        ]
        for name, step in steps:
            if step is None:
                continue
            try:
                await asyncio.wait_for(step(), _STOP_STEP_S)
            except TimeoutError:
                log.error("shutdown step %r took over %ss; going on", name, _STOP_STEP_S)
                _log_task_stacks()
            except Exception:
                log.exception("shutdown step %r failed; going on", name)
        self.stop_database()

    async def _stop_grpc(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1.0)

    def stop_database(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


async def run_server(cfg: Config, *, migrate_only: bool = False) -> None:
    node = Node(cfg)
    if migrate_only:
        try:
            await node.prepare_database()
            log.info("migrations are up to date")
        finally:
            node.stop_database()
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        await node.stop()
        log.info("stopped")


def _log_task_stacks() -> None:
    buffer = io.StringIO()
    for task in asyncio.all_tasks():
        try:
            task.print_stack(limit=8, file=buffer)
        except Exception as exc:  # a frame of compiled code can lack a line number
            print(f"{task!r}: no stack ({exc!r})", file=buffer)
    log.error("tasks at the stuck step:\n%s", buffer.getvalue())
