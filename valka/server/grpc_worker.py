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
        inbox = _Inbox(self.engine, session)
        try:
            await self._read_loop(session, context, inbox)
        finally:
            # grpc cancels this handler when the stream breaks; the clean-up (frames already
            # read are still processed, then unacked work goes back to PENDING) runs in its
            # own task so a second cancel cannot cut it short.
            cleanup = asyncio.create_task(self._close(session, writer, inbox))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(cleanup)

    async def _close(self, session: WorkerSession, writer: asyncio.Task[None],
                     inbox: _Inbox) -> None:
        try:
            await inbox.finish()
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

    async def _read_loop(self, session: WorkerSession, context: Ctx,
                         inbox: _Inbox) -> None:
        while not inbox.failed:
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
            inbox.put(frame)

    async def _write_loop(self, session: WorkerSession, context: Ctx) -> None:
        try:
            while frames := await session.next_frames():
                for frame in frames:
                    await context.write(frame)
        except Exception as exc:  # the stream broke: grpc raises several unrelated types
            log.debug("writer for %s ended: %r", session.worker_id, exc)


class _Inbox:
    """Frames read but not yet processed, handled in order by one task per session.

    Reading never waits for the database: while one batch is being written, the frames that
    arrive meanwhile pile up here and go into the next batch as one merged frame, so a
    worker whose handlers finish one by one still costs one statement per batch, not per
    task. Merging keeps every ack ahead of every result, which is the only order that
    matters (a worker acknowledges a task before reporting it).
    """

    def __init__(self, engine: Engine, session: WorkerSession) -> None:
        self._engine = engine
        self._session = session
        self._frames: list[worker_pb2.WorkerFrame] = []
        self._ready = asyncio.Event()
        self._closing = False
        self.failed = False
        self._task = asyncio.create_task(self._run())

    def put(self, frame: worker_pb2.WorkerFrame) -> None:
        self._frames.append(frame)
        self._ready.set()

    async def finish(self) -> None:
        self._closing = True
        self._ready.set()
        await self._task

    async def _run(self) -> None:
        while True:
            while not self._frames:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
            frames, self._frames = self._frames, []
            try:
                await self._engine.handle_frame(self._session, merge_frames(frames))
            except Exception:
                # The stream cannot go on with lost writes; the worker reconnects and
                # resends what was not acknowledged.
                log.exception("processing frames of worker %s failed", self._session.worker_id)
                self.failed = True
                self._session.send_frame(worker_pb2.ServerFrame(
                    error="internal error while processing your frames; reconnect"))
                return


def merge_frames(frames: list[worker_pb2.WorkerFrame]) -> worker_pb2.WorkerFrame:
    """One frame with the items of all; the latest heartbeat stands for the earlier ones."""
    if len(frames) == 1:
        return frames[0]
    out = worker_pb2.WorkerFrame()
    for f in frames:
        out.acks.extend(f.acks)
        out.results.extend(f.results)
        out.logs.extend(f.logs)
        out.signal_acks.extend(f.signal_acks)
        if f.HasField("heartbeat"):
            out.heartbeat.CopyFrom(f.heartbeat)
        if f.HasField("drain"):
            out.drain.CopyFrom(f.drain)
        out.credits += f.credits
    return out
