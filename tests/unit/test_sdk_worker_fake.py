"""ValkaWorker against a fake WorkerService played by the test (in-process grpc.aio server).

The fake checks the worker's side of the protocol: Hello first, acks and results
coalesced into frames, results resent until acknowledged, cancellation, drain.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import msgspec
import pytest

from valka.core.errors import Unauthenticated
from valka.sdk import Backoff, Fail, Retry, TaskContext, ValkaWorker
from valka.v1 import common_pb2, worker_pb2, worker_pb2_grpc

WAIT = 10.0  # deadline for anything the worker should do "soon"


class _End:
    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        self.code = code
        self.details = details


class FakeSession:
    def __init__(
        self, number: int, hello: worker_pb2.Hello, metadata: dict[str, str], *, auto_ack: bool
    ) -> None:
        self.number = number
        self.auto_ack = auto_ack
        self.hello = hello
        self.metadata = metadata
        self.frames: asyncio.Queue[worker_pb2.WorkerFrame] = asyncio.Queue()
        self.outgoing: asyncio.Queue[worker_pb2.ServerFrame | _End] = asyncio.Queue()
        self.half_closed = asyncio.Event()
        self.ended = asyncio.Event()

    def send(self, frame: worker_pb2.ServerFrame) -> None:
        self.outgoing.put_nowait(frame)

    def assign(self, *assignments: worker_pb2.Assignment) -> None:
        self.send(worker_pb2.ServerFrame(assignments=assignments))

    def end(self, code: grpc.StatusCode | None = None, details: str = "") -> None:
        self.outgoing.put_nowait(_End(code, details))

    async def frame(self, *, heartbeats: bool = False) -> worker_pb2.WorkerFrame:
        """The next frame from the worker; heartbeat-only frames are skipped unless asked."""
        while True:
            frame = await asyncio.wait_for(self.frames.get(), WAIT)
            if heartbeats or _has_content(frame):
                return frame

    async def results(self, count: int) -> list[worker_pb2.Result]:
        found: list[worker_pb2.Result] = []
        while len(found) < count:
            found.extend((await self.frame()).results)
        return found


def _has_content(frame: worker_pb2.WorkerFrame) -> bool:
    return bool(
        frame.acks
        or frame.results
        or frame.logs
        or frame.signal_acks
        or frame.credits
        or frame.HasField("drain")
        or frame.HasField("hello")
    )


class FakeServer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self) -> None:
        self.sessions: asyncio.Queue[FakeSession] = asyncio.Queue()
        self.count = 0
        self.welcome = worker_pb2.Welcome(
            heartbeat_interval_ms=60_000,
            lease_ms=180_000,
            max_message_bytes=4 * 1024 * 1024,
            max_output_bytes=1024,
        )
        self.refuse: grpc.StatusCode | None = None
        # Acknowledge every result on receipt, as a healthy server does.
        self.auto_ack = True

    async def next_session(self) -> FakeSession:
        return await asyncio.wait_for(self.sessions.get(), WAIT)

    async def Session(  # type: ignore[override]
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[worker_pb2.WorkerFrame, worker_pb2.ServerFrame],
    ) -> None:
        first = await context.read()
        assert isinstance(first, worker_pb2.WorkerFrame)
        if self.refuse is not None:
            await context.abort(self.refuse, "refused by the fake")
        if not first.HasField("hello"):
            await context.write(worker_pb2.ServerFrame(error="first frame must carry hello"))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first frame must carry hello")
        self.count += 1
        metadata = {key: str(value) for key, value in (context.invocation_metadata() or ())}
        session = FakeSession(self.count, first.hello, metadata, auto_ack=self.auto_ack)
        welcome = worker_pb2.Welcome()
        welcome.CopyFrom(self.welcome)
        welcome.session_id = f"session-{self.count}"
        welcome.worker_id = first.hello.worker_id
        await context.write(worker_pb2.ServerFrame(welcome=welcome))
        self.sessions.put_nowait(session)
        reader = asyncio.create_task(self._read(context, session))
        try:
            while True:
                item = await session.outgoing.get()
                if isinstance(item, _End):
                    if item.code is None:
                        return
                    await context.abort(item.code, item.details)
                await context.write(item)
        finally:
            session.ended.set()
            reader.cancel()

    async def _read(
        self,
        context: grpc.aio.ServicerContext[worker_pb2.WorkerFrame, worker_pb2.ServerFrame],
        session: FakeSession,
    ) -> None:
        while True:
            # The stubs say read() returns a request; at the end it returns grpc.aio.EOF.
            frame: object = await context.read()
            if not isinstance(frame, worker_pb2.WorkerFrame):
                # The worker half-closed after its drain: end the stream as the server would.
                session.half_closed.set()
                session.end()
                return
            session.frames.put_nowait(frame)
            if session.auto_ack and frame.results:
                session.send(
                    worker_pb2.ServerFrame(
                        result_acks=[
                            worker_pb2.ResultAck(
                                task_id=r.task_id, attempt=r.attempt, accepted=True
                            )
                            for r in frame.results
                        ]
                    )
                )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeServer, str]]:
    server = grpc.aio.server()
    servicer = FakeServer()
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


class Running:
    """A worker's run() in the background, stopped and awaited at the end of the test."""

    def __init__(self, worker: ValkaWorker, *, burst: bool = False) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run(burst=burst, install_signal_handlers=False))

    async def finish(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, WAIT)


@pytest.fixture
async def start(
    fake: tuple[FakeServer, str],
) -> AsyncIterator[Callable[..., Running]]:
    _, address = fake
    started: list[Running] = []

    def make(*, burst: bool = False, **options: Any) -> Running:
        handlers = options.pop("handlers", {})
        options.setdefault("backoff", Backoff(base=0.01, cap=0.05))
        worker = ValkaWorker(address, queues=options.pop("queues", ["q"]), **options)
        for name, fn in handlers.items():
            worker.register(name, fn)
        running = Running(worker, burst=burst)
        started.append(running)
        return running

    yield make
    for running in started:
        if not running.task.done():
            running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)


def assignment(
    task_id: str, name: str = "echo", *, attempt: int = 1, timeout: int = 0, input: Any = None
) -> worker_pb2.Assignment:
    return worker_pb2.Assignment(
        task_id=task_id,
        attempt=attempt,
        task_run_id=f"run-{task_id}",
        queue_name="q",
        task_name=name,
        input=msgspec.json.encode(input).decode() if input is not None else "",
        timeout_seconds=timeout,
    )


def result_ack(task_id: str, attempt: int = 1, accepted: bool = True) -> worker_pb2.ServerFrame:
    return worker_pb2.ServerFrame(
        result_acks=[worker_pb2.ResultAck(task_id=task_id, attempt=attempt, accepted=accepted)]
    )


def gated(gate: asyncio.Event, value: Any = "done") -> Callable[[TaskContext], Any]:
    async def handler(ctx: TaskContext) -> Any:
        await gate.wait()
        return value

    return handler


async def test_hello_is_first_and_welcome_opens_the_session(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    running = start(
        queues=["q", "r"], concurrency=3, name="w1", labels={"zone": "a"}, token="s3cret"
    )
    session = await server.next_session()
    assert session.hello.worker_id == running.worker.worker_id
    assert session.hello.worker_name == "w1"
    assert list(session.hello.queues) == ["q", "r"]
    assert session.hello.concurrency == 3
    assert msgspec.json.decode(session.hello.labels) == {"zone": "a"}
    assert session.hello.sdk_version.startswith("valka-python/")
    assert session.metadata["authorization"] == "Bearer s3cret"
    await running.finish()
    assert session.half_closed.is_set()


async def test_acks_and_results_are_coalesced(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    gate = asyncio.Event()
    running = start(handlers={"echo": gated(gate)})
    session = await server.next_session()
    session.assign(assignment("t1"), assignment("t2"), assignment("t3"))
    acks = (await session.frame()).acks
    assert [(a.task_id, a.attempt) for a in acks] == [("t1", 1), ("t2", 1), ("t3", 1)]
    assert running.worker.in_flight == 3
    gate.set()
    frame = await session.frame()
    assert sorted(r.task_id for r in frame.results) == ["t1", "t2", "t3"]
    assert all(r.success and msgspec.json.decode(r.output) == "done" for r in frame.results)
    await running.finish()


async def test_unconfirmed_result_is_resent_after_a_break_until_acknowledged(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    server.auto_ack = False

    def echo(ctx: TaskContext) -> Any:
        return ctx.input

    running = start(handlers={"echo": echo})
    first = await server.next_session()
    first.assign(assignment("t1", input={"n": 1}))
    (sent,) = await first.results(1)
    assert sent.success and msgspec.json.decode(sent.output) == {"n": 1}
    first.end(grpc.StatusCode.UNAVAILABLE, "going away without acknowledging")

    second = await server.next_session()
    assert second.hello.worker_id == first.hello.worker_id
    (again,) = await second.results(1)
    assert again == sent
    second.send(result_ack("t1"))
    # Once acknowledged, nothing is resent: the next session only sees heartbeats.
    server.welcome.heartbeat_interval_ms = 20
    second.end(grpc.StatusCode.UNAVAILABLE, "another break")
    third = await server.next_session()
    frame = await third.frame(heartbeats=True)
    assert frame.HasField("heartbeat") and not frame.results
    await running.finish()


async def test_cancel_stops_an_async_handler(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    started = asyncio.Event()
    seen: list[str] = []

    async def forever(ctx: TaskContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(f"cancelled={ctx.cancelled}")
            raise

    running = start(handlers={"forever": forever})
    session = await server.next_session()
    session.assign(assignment("t1", "forever"))
    await asyncio.wait_for(started.wait(), WAIT)
    session.send(worker_pb2.ServerFrame(cancels=[worker_pb2.Cancel(task_id="t1", attempt=1)]))
    (result,) = await session.results(1)
    assert (result.success, result.retryable, result.error_message) == (False, False, "cancelled")
    assert seen == ["cancelled=True"]
    await running.finish()


async def test_cancel_is_seen_by_a_plain_handler(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    started = threading.Event()
    saw_cancel = threading.Event()

    def blocking(ctx: TaskContext) -> None:
        started.set()
        if ctx.wait_cancelled(WAIT) and ctx.cancelled:
            saw_cancel.set()

    running = start(handlers={"blocking": blocking})
    session = await server.next_session()
    session.assign(assignment("t1", "blocking"))
    assert await asyncio.to_thread(started.wait, WAIT)
    session.send(worker_pb2.ServerFrame(cancels=[worker_pb2.Cancel(task_id="t1", attempt=1)]))
    (result,) = await session.results(1)
    assert (result.success, result.retryable, result.error_message) == (False, False, "cancelled")
    assert await asyncio.to_thread(saw_cancel.wait, WAIT)
    await running.finish()


class Strange:
    pass


def _raise(exc: BaseException) -> Callable[[TaskContext], Any]:
    def handler(ctx: TaskContext) -> Any:
        raise exc

    return handler


async def _async_raise_retry(ctx: TaskContext) -> Any:
    raise Retry(delay=2.5, message="later")


async def _never(ctx: TaskContext) -> Any:
    await asyncio.Event().wait()


OUTCOMES: list[tuple[str, Callable[[TaskContext], Any], int, tuple[bool, bool, str, int]]] = [
    ("ok", lambda ctx: {"a": [1, 2]}, 0, (True, False, "", 0)),
    ("retry", _async_raise_retry, 0, (False, True, "later", 2500)),
    ("retry-now", _raise(Retry(delay=0)), 0, (False, True, "retry requested", 1)),
    ("fail", _raise(Fail("bad input")), 0, (False, False, "bad input", 0)),
    ("error", _raise(ValueError("boom")), 0, (False, True, "ValueError: boom", 0)),
    ("permanent", _raise(KeyError("k")), 0, (False, False, "KeyError: 'k'", 0)),
    (
        "strange",
        lambda ctx: Strange(),
        0,
        (False, False, "output is not JSON-serialisable: Encoding objects of type Strange", 0),
    ),
    ("big", lambda ctx: "x" * 2000, 0, (False, False, "output is 2002 bytes of JSON", 0)),
    ("slow", _never, 1, (False, True, "timeout after 1s", 0)),
]


@pytest.mark.parametrize(("name", "handler", "timeout", "expected"), OUTCOMES)
async def test_handler_outcomes_become_result_fields(
    fake: tuple[FakeServer, str],
    start: Callable[..., Running],
    name: str,
    handler: Callable[[TaskContext], Any],
    timeout: int,
    expected: tuple[bool, bool, str, int],
) -> None:
    server, _ = fake
    running = start(handlers={name: handler}, non_retryable=(KeyError,))
    session = await server.next_session()
    session.assign(assignment("t1", name, timeout=timeout))
    (result,) = await session.results(1)
    success, retryable, error, delay_ms = expected
    assert result.success is success
    assert result.retryable is retryable
    assert result.error_message.startswith(error)
    assert result.retry_delay_ms == delay_ms
    if success:
        assert msgspec.json.decode(result.output) == {"a": [1, 2]}
    await running.finish()


async def test_unknown_task_name_is_acked_then_failed_for_good(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    running = start(handlers={"echo": lambda ctx: None})
    session = await server.next_session()
    session.assign(assignment("t1", "nope"))
    frames = [await session.frame()]
    while not frames[-1].results:
        frames.append(await session.frame())
    assert [a.task_id for f in frames for a in f.acks] == ["t1"]
    (result,) = frames[-1].results
    assert (result.success, result.retryable) == (False, False)
    assert result.error_message == "no handler for task 'nope'"
    await running.finish()


async def test_logs_travel_in_batches_with_the_run(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake

    def chatty(ctx: TaskContext) -> int:
        for i in range(3):
            ctx.log(f"line {i}", level="warn", step=i)
        return 3

    running = start(handlers={"chatty": chatty})
    session = await server.next_session()
    session.assign(assignment("t1", "chatty"))
    logs: list[common_pb2.LogEntry] = []
    while len(logs) < 3:
        logs.extend((await session.frame()).logs)
    assert [entry.message for entry in logs] == ["line 0", "line 1", "line 2"]
    assert {entry.task_run_id for entry in logs} == {"run-t1"}
    assert msgspec.json.decode(logs[2].metadata) == {"step": 2}
    assert logs[0].level == common_pb2.LOG_LEVEL_WARN
    await running.finish()


async def test_drain_returns_new_assignments_and_waits_for_running_ones(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    server.auto_ack = False
    gate = asyncio.Event()
    running = start(handlers={"echo": gated(gate)})
    session = await server.next_session()
    session.assign(assignment("t1"))
    assert [a.task_id for a in (await session.frame()).acks] == ["t1"]

    running.worker.stop()
    assert (await session.frame()).HasField("drain")
    session.assign(assignment("t2"))
    frame = await session.frame()
    assert frame.credits == 1 and not frame.acks
    assert not running.task.done()

    gate.set()
    (result,) = await session.results(1)
    assert result.task_id == "t1" and result.success
    assert not running.task.done()  # still waiting for the ResultAck
    session.send(result_ack("t1"))
    await asyncio.wait_for(session.half_closed.wait(), WAIT)
    await asyncio.wait_for(running.task, WAIT)
    assert running.worker.in_flight == 0


async def test_server_draining_finishes_work_then_reconnects(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    server.auto_ack = False
    gate = asyncio.Event()
    running = start(handlers={"echo": gated(gate)})
    session = await server.next_session()
    session.assign(assignment("t1"))
    await session.frame()
    session.send(worker_pb2.ServerFrame(draining=worker_pb2.ServerDraining(reason="restart")))
    session.assign(assignment("t2"))
    assert (await session.frame()).credits == 1
    gate.set()
    (result,) = await session.results(1)
    assert result.task_id == "t1"
    session.send(result_ack("t1"))
    await asyncio.wait_for(session.half_closed.wait(), WAIT)
    second = await server.next_session()
    assert second.hello.worker_id == session.hello.worker_id
    await running.finish()


async def test_heartbeats_list_running_tasks_and_lost_ones_are_cancelled(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    server.welcome.heartbeat_interval_ms = 20
    running = start(handlers={"forever": _never})
    session = await server.next_session()
    session.assign(assignment("t1", "forever", attempt=4))
    while True:
        frame = await session.frame(heartbeats=True)
        if frame.heartbeat.tasks:
            break
    assert [(t.task_id, t.attempt) for t in frame.heartbeat.tasks] == [("t1", 4)]
    session.send(
        worker_pb2.ServerFrame(
            heartbeat_ack=worker_pb2.HeartbeatAck(
                lost=[worker_pb2.TaskRef(task_id="t1", attempt=4)]
            )
        )
    )
    (result,) = await session.results(1)
    assert result.error_message.startswith("lost") and not result.success
    await running.finish()


async def test_a_silent_server_is_left_for_a_new_session(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    server.welcome.heartbeat_interval_ms = 20
    server.welcome.lease_ms = 60
    running = start(handlers={})
    first = await server.next_session()
    second = await server.next_session()  # the fake never answers heartbeats
    assert second.number == first.number + 1
    await running.finish()


async def test_signals_reach_the_running_handler_and_are_acknowledged(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    gate = asyncio.Event()

    async def listen(ctx: TaskContext) -> list[Any]:
        await gate.wait()
        return [(s.name, s.payload) for s in ctx.signals()]

    running = start(handlers={"listen": listen})
    session = await server.next_session()
    session.assign(assignment("t1", "listen"))
    await session.frame()
    signal = worker_pb2.Signal(signal_id="s1", task_id="t1", name="poke", payload='{"x":1}')
    session.send(worker_pb2.ServerFrame(signals=[signal]))
    assert [a.signal_id for a in (await session.frame()).signal_acks] == ["s1"]
    gate.set()
    (result,) = await session.results(1)
    assert msgspec.json.decode(result.output) == [["poke", {"x": 1}]]
    await running.finish()


async def test_burst_mode_stops_once_idle(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    server.auto_ack = False
    running = start(burst=True, handlers={"echo": lambda ctx: 1})
    session = await server.next_session()
    session.assign(assignment("t1"))
    (result,) = await session.results(1)
    session.send(result_ack("t1"))
    await asyncio.wait_for(running.task, WAIT)
    assert result.success and session.half_closed.is_set()


async def test_refused_credentials_end_run_with_an_error(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    server.refuse = grpc.StatusCode.UNAUTHENTICATED
    running = start(handlers={})
    with pytest.raises(Unauthenticated, match="refused by the fake"):
        await asyncio.wait_for(running.task, WAIT)


async def test_stop_from_another_thread_drains(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    running = start(handlers={})
    session = await server.next_session()
    await asyncio.to_thread(running.worker.stop)
    await asyncio.wait_for(running.task, WAIT)
    assert session.half_closed.is_set()


def test_register_rejects_duplicates_and_bad_names() -> None:
    worker = ValkaWorker("127.0.0.1:1", queues=["q"])

    @worker.task("a")
    def a(ctx: TaskContext) -> None:
        return None

    with pytest.raises(ValueError, match="already registered"):
        worker.register("a", a)
    with pytest.raises(ValueError, match="non-empty"):
        worker.register("", a)
    with pytest.raises(ValueError, match="queues"):
        ValkaWorker("127.0.0.1:1", queues=[])
    assert worker.handlers == ["a"]


async def test_work_running_across_a_break_is_reported_on_the_new_session(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    gate = asyncio.Event()
    running = start(handlers={"echo": gated(gate)})
    first = await server.next_session()
    first.assign(assignment("t1", attempt=2))
    await first.frame()
    first.end(grpc.StatusCode.UNAVAILABLE, "network trouble")
    second = await server.next_session()
    # The new session first refreshes the lease of what still runs here.
    frame = await second.frame(heartbeats=True)
    assert [(t.task_id, t.attempt) for t in frame.heartbeat.tasks] == [("t1", 2)]
    gate.set()
    (result,) = await second.results(1)
    assert (result.task_id, result.attempt, result.success) == ("t1", 2, True)
    await running.finish()


async def test_drain_timeout_reports_unfinished_work_as_retryable(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    running = start(handlers={"forever": _never}, drain_timeout=0.2)
    session = await server.next_session()
    session.assign(assignment("t1", "forever"))
    await session.frame()
    running.worker.stop()
    (result,) = await session.results(1)
    assert (result.success, result.retryable) == (False, True)
    assert result.error_message == "worker shut down before the task finished"
    await asyncio.wait_for(running.task, WAIT)
    assert session.half_closed.is_set()


async def test_input_that_is_not_json_fails_for_good(
    fake: tuple[FakeServer, str], start: Callable[..., Running]
) -> None:
    server, _ = fake
    running = start(handlers={"echo": lambda ctx: None})
    session = await server.next_session()
    broken = assignment("t1")
    broken.input = "{not json"
    session.assign(broken)
    (result,) = await session.results(1)
    assert (result.success, result.retryable) == (False, False)
    assert result.error_message.startswith("input is not valid JSON")
    await running.finish()
