"""ValkaWorker: holds one stream to a server, runs the tasks pushed on it, reports results.

Life of a task here: Assignment -> Ack at once -> handler runs (on the loop if async, in
the thread pool otherwise) -> Result -> kept until the server's ResultAck, and sent again
on the next stream if this one breaks first. The server fences results by task, attempt
and worker, so a duplicate is harmless and a stale one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
import grpc.aio
import msgspec

from valka.core import errors
from valka.sdk import _convert, _handler
from valka.sdk._backoff import Backoff
from valka.sdk._channel import (
    SDK_VERSION,
    call_metadata,
    error_for_code,
    map_rpc_error,
    open_channel,
    resolve_server,
    resolve_token,
)
from valka.sdk._handler import Handler
from valka.sdk._outbox import Outbox
from valka.sdk.context import TaskContext
from valka.sdk.errors import Fail, Retry
from valka.v1 import common_pb2, worker_pb2, worker_pb2_grpc

if TYPE_CHECKING:
    from valka.v1.worker_pb2_grpc import WorkerServiceAsyncStub

__all__ = ["Handler", "ValkaWorker"]

_H = TypeVar("_H", bound=Handler)
_Key = tuple[str, int]
_Call = grpc.aio.StreamStreamCall[worker_pb2.WorkerFrame, worker_pb2.ServerFrame]

log = logging.getLogger("valka.sdk.worker")

# How long the server may take to answer Hello with Welcome.
WELCOME_TIMEOUT: Final = 30.0
# A session that held this long resets the reconnect backoff.
STABLE_SESSION: Final = 10.0
# After the drain timeout, how long to keep trying to get the last results confirmed.
RESULT_ACK_GRACE: Final = 10.0
# After half-closing, how long the server may take to end the stream.
CLOSE_GRACE: Final = 5.0
# How long a result may wait for others while handlers are still running.
RESULT_LINGER: Final = 0.005
# Burst mode: stop after this long with nothing assigned and nothing running.
BURST_IDLE: Final = 0.5
_DEFAULT_HEARTBEAT_S: Final = 10.0
_DEFAULT_MAX_MESSAGE: Final = 4 * 1024 * 1024
# Statuses that reconnecting cannot fix when the server refuses the session at once.
_FATAL_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class _Fatal(Exception):
    def __init__(self, error: errors.ValkaError) -> None:
        super().__init__(error.message)
        self.error = error


class _SessionEnded(Exception):
    """The session stopped without a grpc status worth raising (protocol error, silence)."""


class _Notifier:
    """Wakes every waiter when worker state changes; waiters re-check their condition."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            self._waiters.discard(waiter)
            waiter.cancel()


class _Running:
    __slots__ = ("ctx", "future", "key", "retry_on_cancel", "supervisor", "timer")

    def __init__(self, key: _Key, ctx: TaskContext) -> None:
        self.key = key
        self.ctx = ctx
        self.future: asyncio.Future[str] | None = None
        self.supervisor: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.retry_on_cancel = False


class ValkaWorker:
    """Runs handlers for tasks of `queues` pushed by a Valka server.

    ```
    worker = ValkaWorker(queues=["files"], concurrency=16)

    @worker.task("file_stats")
    def file_stats(ctx: TaskContext) -> dict[str, int]: ...

    asyncio.run(worker.run())
    ```

    Async handlers run on the event loop, plain functions in a thread pool of
    `thread_pool_size` (default: `concurrency`) threads. A handler's return value is the
    task's output (JSON). Raise `Retry(delay=...)` to retry, `Fail(...)` to fail for good;
    exceptions of the `non_retryable` types also fail for good, any other exception is
    retried by the server while the task has retries left.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        queues: Sequence[str],
        concurrency: int = 8,
        name: str | None = None,
        worker_id: str | None = None,
        token: str | None = None,
        labels: dict[str, Any] | None = None,
        drain_timeout: float = 30.0,
        non_retryable: tuple[type[BaseException], ...] = (),
        thread_pool_size: int | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        queue_list = [queues] if isinstance(queues, str) else list(queues)
        if not queue_list or not all(isinstance(q, str) and q for q in queue_list):
            raise ValueError("queues must be a non-empty list of non-empty queue names")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if drain_timeout < 0:
            raise ValueError("drain_timeout must be >= 0")
        if thread_pool_size is not None and thread_pool_size < 1:
            raise ValueError("thread_pool_size must be >= 1")
        self.server = resolve_server(server)
        self.queues = queue_list
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # One id per worker object (a process, usually) so that after a reconnect the
        # server recognises the results of the tasks it gave this worker before.
        self.worker_id = worker_id or str(uuid.uuid4())
        self.labels = dict(labels or {})
        self.drain_timeout = drain_timeout
        self.non_retryable = tuple(non_retryable)
        self.thread_pool_size = thread_pool_size or concurrency
        self._labels_json = _convert.encode_json(self.labels, "labels")
        self._metadata = call_metadata(resolve_token(token))
        self._backoff = backoff or Backoff()
        self._handlers: dict[str, Handler] = {}
        self._stop_early = False
        self._reset_state()

    def _reset_state(self) -> None:
        self._running: dict[_Key, _Running] = {}
        # Results sent or waiting to be sent, until the server's ResultAck.
        self._unconfirmed: dict[_Key, worker_pb2.Result] = {}
        # Tasks stopped by the server (cancelled, lost): a refused result is no surprise.
        self._cancelled_keys: set[_Key] = set()
        self._outbox = Outbox()
        self._changed = _Notifier()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._give_up = False
        self._drain_deadline = 0.0
        self._server_draining = False
        self._welcomed = False
        self._session_id = ""
        self._heartbeat_s = _DEFAULT_HEARTBEAT_S
        self._liveness_s = 3 * _DEFAULT_HEARTBEAT_S
        self._max_message = _DEFAULT_MAX_MESSAGE
        self._max_output = 0
        self._last_received = 0.0
        self._last_activity = 0.0
        self._abort_session = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    # -- registration ------------------------------------------------------------------

    def register(self, name: str, fn: Handler) -> None:
        """Run `fn(ctx)` for tasks named `name`."""
        if not isinstance(name, str) or not name:
            raise ValueError("a task name must be a non-empty string")
        if name in self._handlers:
            raise ValueError(f"a handler for task {name!r} is already registered")
        if not callable(fn):
            raise TypeError(f"handler for task {name!r} is not callable")
        self._handlers[name] = fn

    def task(self, name: str) -> Callable[[_H], _H]:
        """Decorator form of `register`."""

        def decorate(fn: _H) -> _H:
            self.register(name, fn)
            return fn

        return decorate

    # -- public state ------------------------------------------------------------------

    @property
    def handlers(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return len(self._running)

    @property
    def session_id(self) -> str:
        """The current session's id, "" when not connected."""
        return self._session_id

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- lifecycle ---------------------------------------------------------------------

    async def run(
        self, *, burst: bool = False, install_signal_handlers: bool | None = None
    ) -> None:
        """Connect and run tasks until `stop()` (or SIGTERM/SIGINT) and the drain is done.

        Signal handlers are installed by default when running on the main thread: the
        first signal drains, a second one cancels the running handlers at once.
        `burst=True` stops by itself once nothing has been assigned for a short while.
        Raises the matching `valka.core.errors` class when the server refuses the worker
        outright (bad token, invalid hello).
        """
        if self._loop is not None:
            raise RuntimeError("this worker is already running")
        self._reset_state()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._executor = ThreadPoolExecutor(self.thread_pool_size, "valka-handler")
        if install_signal_handlers is None:
            install_signal_handlers = threading.current_thread() is threading.main_thread()
        installed = self._install_signal_handlers(loop) if install_signal_handlers else []
        if burst:
            self._spawn(self._burst_watch())
        if self._stop_early:
            self._stop_early = False
            self.stop("stopped before it started")
        channel = open_channel(self.server)
        try:
            await self._connect_loop(worker_pb2_grpc.WorkerServiceStub(channel))
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self._shutdown()
            await channel.close()
            self._loop = None

    def stop(self, reason: str = "stop requested") -> None:
        """Start a graceful drain: take no new tasks, finish the running ones (up to
        `drain_timeout`), deliver their results, then make `run()` return.

        Safe to call from any thread and more than once.
        """
        loop = self._loop
        if loop is None:
            self._stop_early = True
            return
        if threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.stop, reason)
            return
        if self._stopping:
            return
        self._stopping = True
        self._drain_deadline = time.monotonic() + self.drain_timeout
        log.info(
            "draining (%s): %d running task(s), waiting up to %.0f s",
            reason,
            len(self._running),
            self.drain_timeout,
        )
        self._outbox.set_drain(reason)
        self._spawn(self._drain_watch())
        self._poke()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_os_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(signum)
        return installed

    def _on_os_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._stopping:
            self.stop(f"{name} received")
            return
        log.warning("%s received again: cancelling %d running task(s)", name, len(self._running))
        self._cancel_all("worker stopped before the task finished", retryable=True)
        self._drain_deadline = time.monotonic()
        self._poke()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _poke(self) -> None:
        self._outbox.ready.set()
        self._changed.notify()

    def _idle(self) -> bool:
        return not self._running and not self._unconfirmed

    async def _wait_until(self, predicate: Callable[[], bool], deadline: float | None) -> bool:
        while not predicate():
            if deadline is None:
                await self._changed.wait(None)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self._changed.wait(left)
        return True

    async def _drain_watch(self) -> None:
        if not await self._wait_until(lambda: not self._running, self._drain_deadline):
            log.warning(
                "drain timeout: %d task(s) still running after %.0f s; reporting them as failed "
                "(retryable)",
                len(self._running),
                self.drain_timeout,
            )
            self._cancel_all("worker shut down before the task finished", retryable=True)
        give_up_at = max(self._drain_deadline, time.monotonic()) + RESULT_ACK_GRACE
        if not await self._wait_until(self._idle, give_up_at):
            log.error(
                "giving up: %d result(s) were not confirmed by the server; their tasks will be "
                "retried when their lease expires",
                len(self._unconfirmed),
            )
            self._give_up = True
            self._abort_session.set()
            self._poke()

    async def _burst_watch(self) -> None:
        while not self._stopping:
            if self._welcomed and self._idle() and self._outbox.empty():
                left = self._last_activity + BURST_IDLE - time.monotonic()
                if left <= 0:
                    self.stop("burst mode: no more work")
                    return
                await self._changed.wait(left)
            else:
                await self._changed.wait(None)

    async def _shutdown(self) -> None:
        for task in list(self._background):
            task.cancel()
        running = [r.supervisor for r in self._running.values() if r.supervisor is not None]
        for r in self._running.values():
            r.ctx._cancel("worker stopped")
            if r.timer is not None:
                r.timer.cancel()
        for supervisor in running:
            supervisor.cancel()
        await asyncio.gather(*running, *self._background, return_exceptions=True)
        if self._executor is not None:
            # A plain-function handler cannot be interrupted; its thread is left to finish
            # (it sees ctx.cancelled) instead of blocking the shutdown.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._unconfirmed:
            log.warning("stopped with %d unconfirmed result(s)", len(self._unconfirmed))
        log.info("worker %s stopped", self.worker_id)

    # -- connection --------------------------------------------------------------------

    def _finished(self) -> bool:
        return self._stopping and (self._give_up or self._idle())

    async def _connect_loop(self, stub: WorkerServiceAsyncStub) -> None:
        while not self._finished():
            started = time.monotonic()
            problem = ""
            try:
                await self._session(stub)
            except _Fatal as fatal:
                raise fatal.error from None
            except grpc.aio.AioRpcError as exc:
                problem = f"{exc.code().name}: {exc.details() or ''}".rstrip(": ")
            except _SessionEnded as exc:
                problem = str(exc)
            except (asyncio.InvalidStateError, grpc.aio.UsageError, OSError) as exc:
                problem = _handler.describe(exc)
            finally:
                lasted = time.monotonic() - started if self._welcomed else 0.0
                self._welcomed = False
                self._session_id = ""
                self._server_draining = False
                self._abort_session.clear()
            if self._finished():
                return
            if lasted >= STABLE_SESSION:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.warning(
                "connection to %s %s; reconnecting in %.2f s (attempt %d)",
                self.server,
                f"lost ({problem})" if problem else "closed",
                delay,
                self._backoff.attempt,
            )
            deadline = time.monotonic() + delay
            # Wake early only to exit: a drain that completes while disconnected.
            await self._wait_until(self._finished, deadline)

    def _hello(self) -> worker_pb2.WorkerFrame:
        return worker_pb2.WorkerFrame(
            hello=worker_pb2.Hello(
                worker_id=self.worker_id,
                worker_name=self.name,
                queues=self.queues,
                concurrency=self.concurrency,
                labels=self._labels_json,
                sdk_version=SDK_VERSION,
                # After a reconnect: what this process still holds from its earlier
                # session, so the server keeps those leases and counts those slots.
                in_flight=[
                    worker_pb2.TaskRef(task_id=task_id, attempt=attempt)
                    for task_id, attempt in {*self._running, *self._unconfirmed}
                ],
            )
        )

    async def _session(self, stub: WorkerServiceAsyncStub) -> None:
        call: _Call = stub.Session(metadata=self._metadata)
        tasks: set[asyncio.Task[None]] = set()
        try:
            await call.write(self._hello())
            await self._await_welcome(call)
            reader = asyncio.create_task(self._read_loop(call))
            sender = asyncio.create_task(self._send_loop(call))
            ticker = asyncio.create_task(self._tick_loop())
            aborter = asyncio.create_task(self._wait_abort())
            tasks = {reader, sender, ticker, aborter}
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if sender in done and reader not in done and _succeeded(sender):
                # Half-closed after a drain: the server now closes its side.
                more, _ = await asyncio.wait(
                    {reader, aborter}, timeout=CLOSE_GRACE, return_when=asyncio.FIRST_COMPLETED
                )
                done |= more
            for task in (reader, sender):
                if task in done and not task.cancelled():
                    problem = task.exception()
                    if problem is not None:
                        raise problem
            if reader in done:
                return
            if aborter in done:
                raise _SessionEnded("session abandoned")
            if ticker in done:
                raise _SessionEnded(f"no message from the server for {self._liveness_s:.0f} s")
            raise _SessionEnded("the server did not close the stream after the drain")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()

    async def _await_welcome(self, call: _Call) -> None:
        try:
            first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
        except TimeoutError:
            raise _SessionEnded(f"no welcome within {WELCOME_TIMEOUT:.0f} s") from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _FATAL_CODES:
                raise _Fatal(map_rpc_error(exc)) from None
            raise
        if not isinstance(first, worker_pb2.ServerFrame):
            code = await call.code()
            raise _SessionEnded(f"the server closed the stream before welcome ({code.name})")
        if first.error or not first.HasField("welcome"):
            message = first.error or "the first message from the server was not a welcome"
            code = await _final_code(call)
            if code in _FATAL_CODES:
                raise _Fatal(error_for_code(code, f"the server refused the worker: {message}"))
            raise _SessionEnded(f"refused: {message}")
        self._on_welcome(first.welcome)
        self._on_frame(first)

    def _on_welcome(self, welcome: worker_pb2.Welcome) -> None:
        self._welcomed = True
        self._session_id = welcome.session_id
        self._last_received = self._last_activity = time.monotonic()
        if welcome.heartbeat_interval_ms > 0:
            self._heartbeat_s = welcome.heartbeat_interval_ms / 1000
        # A stream that shows no sign of life for a whole lease is dead, even if TCP says
        # otherwise: the server answers every heartbeat.
        self._liveness_s = max(welcome.lease_ms / 1000, 3 * self._heartbeat_s)
        self._max_message = welcome.max_message_bytes or _DEFAULT_MAX_MESSAGE
        self._max_output = welcome.max_output_bytes
        self._outbox.start_session(self._unconfirmed.values())
        if self._stopping:
            self._outbox.set_drain("stop requested")
        if self._running:
            self._outbox.request_heartbeat()
        log.info(
            "connected to %s as worker %s (session %s, queues %s, concurrency %d%s)",
            self.server,
            self.worker_id,
            welcome.session_id,
            ",".join(self.queues),
            self.concurrency,
            f", resending {len(self._unconfirmed)} result(s)" if self._unconfirmed else "",
        )
        self._poke()

    async def _wait_abort(self) -> None:
        await self._abort_session.wait()

    async def _read_loop(self, call: _Call) -> None:
        while True:
            frame = await call.read()
            if not isinstance(frame, worker_pb2.ServerFrame):
                return
            self._last_received = time.monotonic()
            self._on_frame(frame)

    async def _send_loop(self, call: _Call) -> None:
        outbox = self._outbox
        while True:
            await outbox.ready.wait()
            if self._running and not outbox.urgent():
                # Handlers in threads finish one by one; a short wait lets results that
                # come close together share a frame, a server round trip and a commit.
                await asyncio.sleep(RESULT_LINGER)
            else:
                # Let everything that becomes ready in this turn of the loop join the frame.
                await asyncio.sleep(0)
            outbox.ready.clear()
            while (frame := outbox.take(self._max_message, self._running)) is not None:
                await call.write(frame)
            if outbox.dropped_logs:
                log.warning("dropped %d log line(s): too many waiting", outbox.dropped_logs)
                outbox.dropped_logs = 0
            if self._may_close():
                await call.done_writing()
                return

    def _may_close(self) -> bool:
        return (
            (self._stopping or self._server_draining)
            and not self._running
            and not self._unconfirmed
            and self._outbox.empty()
        )

    async def _tick_loop(self) -> None:
        """Heartbeats, and the end of a session whose server went silent."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if time.monotonic() - self._last_received > self._liveness_s:
                return
            self._outbox.request_heartbeat()

    # -- server frames -----------------------------------------------------------------

    def _on_frame(self, frame: worker_pb2.ServerFrame) -> None:
        for ack in frame.result_acks:
            self._on_result_ack(ack)
        for cancel in frame.cancels:
            self._cancel((cancel.task_id, cancel.attempt), "cancelled", retryable=False)
        if frame.HasField("heartbeat_ack"):
            for ref in frame.heartbeat_ack.lost:
                key = (ref.task_id, ref.attempt)
                if key in self._running:
                    log.warning("task %s attempt %d lost: cancelling it", *key)
                    self._cancel(key, "lost: the task is no longer assigned to this worker")
        for sig in frame.signals:
            self._on_signal(sig)
        if frame.HasField("draining") and not self._server_draining:
            self._server_draining = True
            log.info(
                "server is draining (%s): finishing %d running task(s), then reconnecting",
                frame.draining.reason or "no reason given",
                len(self._running),
            )
        for assignment in frame.assignments:
            self._on_assignment(assignment)
        if frame.error:
            log.error("server reported a protocol error: %s", frame.error)
        self._poke()

    def _on_result_ack(self, ack: worker_pb2.ResultAck) -> None:
        key = (ack.task_id, ack.attempt)
        result = self._unconfirmed.pop(key, None)
        stopped_by_server = key in self._cancelled_keys
        self._cancelled_keys.discard(key)
        if result is None or ack.accepted:
            return
        # Refusing the result of a cancelled or lost task is the expected end of the story.
        expected = stopped_by_server and not result.success
        log.log(
            logging.INFO if expected else logging.WARNING,
            "result of task %s attempt %d refused: %s",
            ack.task_id,
            ack.attempt,
            ack.reason or "no reason given",
        )

    def _on_signal(self, sig: worker_pb2.Signal) -> None:
        for running in self._running.values():
            if running.ctx.task_id == sig.task_id:
                running.ctx._deliver_signal(_convert.signal_from_proto(sig))
                self._outbox.add_signal_ack(sig.signal_id)
                return

    def _on_assignment(self, assignment: worker_pb2.Assignment) -> None:
        key = (assignment.task_id, assignment.attempt)
        self._last_activity = time.monotonic()
        if self._stopping or self._server_draining:
            # Not acknowledged, so the server puts the task back for another worker.
            self._outbox.add_credit()
            return
        self._outbox.add_ack(*key)
        if key in self._running or key in self._unconfirmed:
            return  # delivered again after a reconnect: it already runs (or ran) here
        try:
            ctx = self._context(assignment)
        except ValueError as exc:
            self._report(key, _handler.failure(*key, str(exc), retryable=False))
            return
        running = _Running(key, ctx)
        self._running[key] = running
        running.supervisor = asyncio.create_task(self._supervise(running, assignment.task_name))
        if assignment.timeout_seconds > 0:
            loop = asyncio.get_running_loop()
            running.timer = loop.call_later(
                assignment.timeout_seconds,
                functools.partial(
                    self._cancel,
                    key,
                    f"timeout after {assignment.timeout_seconds}s",
                    retryable=True,
                ),
            )

    def _context(self, a: worker_pb2.Assignment) -> TaskContext:
        try:
            payload = msgspec.json.decode(a.input) if a.input else None
        except msgspec.DecodeError as exc:
            raise ValueError(f"input is not valid JSON: {exc}") from None
        meta = _convert.decode_json(a.metadata)
        return TaskContext(
            task_id=a.task_id,
            attempt=a.attempt,
            task_run_id=a.task_run_id,
            run_count=a.run_count,
            max_retries=a.max_retries,
            queue=a.queue_name,
            name=a.task_name,
            input=payload,
            metadata=meta if isinstance(meta, dict) else {},
            timeout_seconds=a.timeout_seconds or None,
            priority=a.priority,
            created_at=_convert.ms_to_datetime(a.created_at_ms),
            worker_id=self.worker_id,
            emit_log=self._emit_log,
        )

    # -- running handlers --------------------------------------------------------------

    def _emit_log(self, entry: common_pb2.LogEntry) -> None:
        if threading.get_ident() == self._loop_thread:
            self._outbox.add_log(entry)
            return
        loop = self._loop
        if loop is None:
            return
        # A closed loop means the worker has stopped: the line has nowhere to go.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._outbox.add_log, entry)

    def _cancel(self, key: _Key, reason: str, *, retryable: bool = False) -> None:
        running = self._running.get(key)
        if running is None or running.ctx.cancelled:
            return
        running.retry_on_cancel = retryable
        if not retryable:
            self._cancelled_keys.add(key)
        running.ctx._cancel(reason)
        if running.future is not None:
            running.future.cancel()

    def _cancel_all(self, reason: str, *, retryable: bool) -> None:
        for key in list(self._running):
            self._cancel(key, reason, retryable=retryable)

    async def _supervise(self, running: _Running, task_name: str) -> None:
        key = running.key
        result = await self._execute(running, task_name)
        if self._running.pop(key, None) is None:
            return
        if running.timer is not None:
            running.timer.cancel()
        self._report(key, result)

    def _report(self, key: _Key, result: worker_pb2.Result) -> None:
        self._unconfirmed[key] = result
        self._outbox.add_result(result)
        self._last_activity = time.monotonic()
        self._poke()

    def _cancelled_result(self, running: _Running) -> worker_pb2.Result:
        return _handler.failure(
            *running.key,
            running.ctx.cancel_reason or "cancelled",
            retryable=running.retry_on_cancel,
        )

    async def _execute(self, running: _Running, task_name: str) -> worker_pb2.Result:
        key = running.key
        ctx = running.ctx
        fn = self._handlers.get(task_name)
        if fn is None:
            return _handler.failure(*key, f"no handler for task {task_name!r}", retryable=False)
        if ctx.cancelled:
            return self._cancelled_result(running)
        max_output = self._max_output
        if _handler.is_async(fn):
            running.future = asyncio.ensure_future(_handler.call_async(fn, ctx, max_output))
        else:
            assert self._executor is not None
            loop = asyncio.get_running_loop()
            running.future = loop.run_in_executor(
                self._executor, _handler.call_sync, fn, ctx, max_output, loop
            )
        try:
            output = await running.future
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if ctx.cancel_reason is None or (current is not None and current.cancelling()):
                raise
            return self._cancelled_result(running)
        except BaseException as exc:
            if ctx.cancel_reason is not None:
                return self._cancelled_result(running)
            if not isinstance(exc, Exception):
                log.warning("handler of %s raised %s", task_name, _handler.describe(exc))
            if not isinstance(exc, Retry | Fail | _handler.OutputError):
                # The error text names the exception; the task's log keeps where it came from.
                ctx.log(_handler.format_traceback(exc), level="error")
            return _handler.exception_result(*key, exc, self.non_retryable)
        return _handler.success(*key, output)


def _succeeded(task: asyncio.Task[None]) -> bool:
    return not task.cancelled() and task.exception() is None


async def _final_code(call: _Call) -> grpc.StatusCode:
    try:
        return await asyncio.wait_for(call.code(), CLOSE_GRACE)
    except TimeoutError:
        return grpc.StatusCode.UNKNOWN
