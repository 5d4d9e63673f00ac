"""WorkerService.Session: one bidirectional stream per worker process.

The reading side runs frames through the engine in order (acks before the results that may
follow them); the writing side sends whatever the engine queued for the session, several
items to a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import msgspec

from valka.core.config import Config
from valka.core.errors import InvalidArgument, ValkaError
from valka.core.ids import parse_id
from valka.dispatcher.engine import Engine
from valka.dispatcher.session import WorkerSession
from valka.server.grpc_errors import abort_with
from valka.server.validation import check_json, check_name
from valka.v1 import worker_pb2, worker_pb2_grpc

__all__ = ["WorkerServicer"]

log = logging.getLogger("valka.worker")

Ctx = grpc.aio.ServicerContext[Any, Any]


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, cfg: Config, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.accepting = True
        self._cleanups: set[asyncio.Task[None]] = set()

    def _check_hello(self, hello: worker_pb2.Hello) -> None:
        limits = self.cfg.limits
        parse_id(hello.worker_id, "hello.worker_id")
        if len(hello.worker_name) > limits.max_name_length:
            raise InvalidArgument(f"hello.worker_name: longer than {limits.max_name_length}",
                                  field="hello.worker_name")
        if not hello.queues:
            raise InvalidArgument("hello.queues: must name at least one queue",
                                  field="hello.queues")
        for i, q in enumerate(hello.queues):
            check_name(q, f"hello.queues[{i}]", limits.max_name_length, queue=True)
        top = self.cfg.worker.max_concurrency
        if not 1 <= hello.concurrency <= top:
            raise InvalidArgument(f"hello.concurrency: {hello.concurrency} is outside 1..{top}",
                                  field="hello.concurrency")
        if hello.labels:
            check_json(hello.labels, "hello.labels", limits.max_metadata_bytes,
                       object_only=True)

    async def Session(self, request_iterator: Any, context: Ctx  # type: ignore[override]
                      ) -> None:
        # Written with context.read()/write() rather than as a generator, so that reading
        # and writing run side by side.
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        assert isinstance(first, worker_pb2.WorkerFrame)
        if not first.HasField("hello"):
            message = "the first frame of a session must carry hello"
            await context.write(worker_pb2.ServerFrame(error=message))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        if not self.accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is draining")
        try:
            self._check_hello(first.hello)
        except ValkaError as exc:
            await context.write(worker_pb2.ServerFrame(error=exc.message))
            await abort_with(context, exc)
        session = await self.engine.open_session(first.hello)
        log.info("worker %s (%s) connected: queues=%s concurrency=%d", session.name,
                 session.worker_id, ",".join(session.queues), session.concurrency)
        wcfg = self.cfg.worker
        await context.write(worker_pb2.ServerFrame(welcome=worker_pb2.Welcome(
            session_id=session.session_id, worker_id=session.worker_id,
            node_id=self.engine.node_id,
            heartbeat_interval_ms=int(wcfg.heartbeat_interval_seconds * 1000),
            lease_ms=int(wcfg.lease_seconds * 1000),
            max_message_bytes=self.cfg.limits.max_grpc_message_bytes,
            max_output_bytes=self.cfg.limits.max_output_bytes)))
        writer = asyncio.create_task(self._write_loop(session, context))
        try:
            await self._read_loop(session, context)
        finally:
            # grpc cancels this handler when the stream breaks; the clean-up (unacked work
            # back to PENDING) runs in its own task so a second cancel cannot cut it short.
            cleanup = asyncio.create_task(self._close(session, writer))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(cleanup)

    async def _close(self, session: WorkerSession, writer: asyncio.Task[None]) -> None:
        try:
            await self.engine.close_session(session)
        except Exception:
            log.exception("closing the session of worker %s failed", session.worker_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer), 1.0)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        log.info("worker %s (%s) disconnected", session.name, session.worker_id)

    async def wait_closed(self) -> None:
        """Wait for the clean-up of sessions that have ended."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    async def _read_loop(self, session: WorkerSession, context: Ctx) -> None:
        while True:
            try:
                frame = await context.read()
            except (grpc.aio.AioRpcError, asyncio.CancelledError, msgspec.DecodeError):
                return
            if frame is grpc.aio.EOF:
                return
            assert isinstance(frame, worker_pb2.WorkerFrame)
            if frame.HasField("hello"):
                message = "hello may only be sent once, on the first frame"
                session.send_frame(worker_pb2.ServerFrame(error=message))
                return
            await self.engine.handle_frame(session, frame)

    async def _write_loop(self, session: WorkerSession, context: Ctx) -> None:
        try:
            while frames := await session.next_frames():
                for frame in frames:
                    await context.write(frame)
        except (grpc.aio.AioRpcError, RuntimeError) as exc:
            log.debug("writer for %s ended: %s", session.worker_id, exc)
