"""Conversions between protobuf messages and the SDK's Python values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import grpc
import grpc.aio
import pytest

from valka.core import errors
from valka.core.status import TaskStatus
from valka.sdk import Fail, Retry, TaskSpec
from valka.sdk import _convert as convert
from valka.sdk import _handler as outcome
from valka.sdk._channel import call_metadata, map_rpc_error, resolve_server
from valka.v1 import common_pb2, worker_pb2


def test_task_from_proto_parses_json_and_times() -> None:
    task = convert.task_from_proto(
        common_pb2.Task(
            id="0190b6e0-0000-7000-8000-000000000001",
            queue_name="files",
            task_name="file_stats",
            status=common_pb2.TASK_STATUS_COMPLETED,
            priority=5,
            max_retries=3,
            attempt=2,
            run_count=1,
            input='{"path": "/tmp/x"}',
            output="[1, 2]",
            metadata='{"k": "v"}',
            created_at_ms=1_700_000_000_123,
            completed_at_ms=1_700_000_001_000,
            worker_id="w1",
        )
    )
    assert task.status is TaskStatus.COMPLETED and task.is_terminal
    assert task.input == {"path": "/tmp/x"} and task.output == [1, 2]
    assert task.metadata == {"k": "v"}
    assert task.created_at == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert task.started_at is None and task.scheduled_at is None
    # Unset text fields are None, not "".
    assert task.error is None and task.idempotency_key is None and task.timeout_seconds is None
    assert task.worker_id == "w1"


def test_task_from_proto_is_lenient_with_what_it_cannot_parse() -> None:
    task = convert.task_from_proto(
        common_pb2.Task(id="x", status=99, output="{not json", metadata="[1]")  # type: ignore[arg-type]
    )
    assert task.status is TaskStatus.UNSPECIFIED
    assert task.output == "{not json"
    assert task.metadata == {}


def test_datetimes_must_carry_a_timezone() -> None:
    aware = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert convert.datetime_to_ms(aware, "scheduled_at") == 1_893_492_000_000
    with pytest.raises(errors.InvalidArgument, match="scheduled_at: needs a timezone-aware"):
        convert.datetime_to_ms(datetime(2030, 1, 1), "scheduled_at")
    assert convert.ms_to_datetime(0) is None


@pytest.mark.parametrize(
    ("delay", "ms"), [(1.5, 1500), (timedelta(minutes=1), 60_000), (0, 0), (0.0004, 0)]
)
def test_delay_to_ms(delay: float | timedelta, ms: int) -> None:
    assert convert.delay_to_ms(delay) == ms


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), timedelta(seconds=-1)])
def test_bad_delays_are_refused(delay: float | timedelta) -> None:
    with pytest.raises(errors.InvalidArgument, match="delay"):
        convert.delay_to_ms(delay)


def test_spec_to_proto_sets_only_what_was_given() -> None:
    request = convert.spec_to_proto(TaskSpec(queue="q", name="n"))
    assert (request.queue_name, request.task_name, request.input) == ("q", "n", "")
    assert not request.HasField("max_retries") and not request.HasField("timeout_seconds")
    assert request.metadata == "" and request.delay_ms == 0 and request.scheduled_at_ms == 0

    request = convert.spec_to_proto(
        TaskSpec(
            queue="q",
            name="n",
            input={"a": [1, None]},
            priority=-3,
            max_retries=0,
            timeout_seconds=60,
            idempotency_key="k1",
            metadata={"owner": "me"},
            delay=2,
        )
    )
    assert request.input == '{"a":[1,null]}'
    assert request.priority == -3
    assert request.HasField("max_retries") and request.max_retries == 0
    assert request.timeout_seconds == 60
    assert request.idempotency_key == "k1"
    assert request.metadata == '{"owner":"me"}'
    assert request.delay_ms == 2000


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TaskSpec(queue="", name="n"), "queue: must be a non-empty string"),
        (TaskSpec(queue="q", name=""), "name: must be a non-empty string"),
        (TaskSpec(queue="q", name="n", input=object()), "input: not JSON-serialisable"),
        (TaskSpec(queue="q", name="n", priority=True), "priority: must be an integer"),
        (TaskSpec(queue="q", name="n", priority=2**31), "priority: must be between"),
        (TaskSpec(queue="q", name="n", max_retries=-1), "max_retries: must be between 0"),
        (TaskSpec(queue="q", name="n", metadata=[1]), "metadata: must be a mapping"),  # type: ignore[arg-type]
        (
            TaskSpec(queue="q", name="n", delay=1, scheduled_at=datetime.now(UTC)),
            "either scheduled_at or delay",
        ),
    ],
)
def test_spec_to_proto_refuses_bad_values_before_calling_the_server(
    spec: TaskSpec, message: str
) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        convert.spec_to_proto(spec)


def test_status_and_log_level_names() -> None:
    assert convert.status_to_proto(None) == common_pb2.TASK_STATUS_UNSPECIFIED
    assert convert.status_to_proto("dead_letter") == common_pb2.TASK_STATUS_DEAD_LETTER
    assert convert.status_to_proto(TaskStatus.RETRY) == common_pb2.TASK_STATUS_RETRY
    assert convert.log_level("WARNING") == common_pb2.LOG_LEVEL_WARN
    with pytest.raises(ValueError, match="unknown log level"):
        convert.log_level("loud")


def test_signal_from_proto() -> None:
    signal = convert.signal_from_proto(
        worker_pb2.Signal(signal_id="s", task_id="t", name="go", payload="3", timestamp_ms=1000)
    )
    assert (signal.id, signal.task_id, signal.name, signal.payload) == ("s", "t", "go", 3)
    assert signal.sent_at == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exc", "retryable", "error", "delay_ms"),
    [
        (Retry(), True, "retry requested", 0),
        (Retry(delay=0.25, message="busy"), True, "busy", 250),
        (Fail(), False, "failed by handler", 0),
        (Fail("no such file"), False, "no such file", 0),
        (RuntimeError("x"), True, "RuntimeError: x", 0),
        (RuntimeError(), True, "RuntimeError", 0),
        (LookupError("gone"), False, "LookupError: gone", 0),
        (outcome.OutputError("too big"), False, "too big", 0),
    ],
)
def test_exception_results(exc: Exception, retryable: bool, error: str, delay_ms: int) -> None:
    result = outcome.exception_result("t", 2, exc, (LookupError,))
    assert (result.task_id, result.attempt, result.success) == ("t", 2, False)
    assert (result.retryable, result.error_message, result.retry_delay_ms) == (
        retryable,
        error,
        delay_ms,
    )


def test_long_error_texts_are_cut() -> None:
    result = outcome.exception_result("t", 1, ValueError("x" * 10_000), ())
    assert len(result.error_message) == outcome.MAX_ERROR_CHARS + 3


def test_retry_refuses_negative_delays() -> None:
    with pytest.raises(ValueError, match="Retry delay"):
        Retry(delay=-1)


def test_encode_output_checks_json_and_size() -> None:
    assert outcome.encode_output({"a": 1}, 0) == '{"a":1}'
    assert outcome.encode_output(None, 10) == "null"
    with pytest.raises(outcome.OutputError, match="not JSON-serialisable"):
        outcome.encode_output({1j}, 0)
    with pytest.raises(outcome.OutputError, match="over the server's limit of 5 bytes"):
        outcome.encode_output("abcdef", 5)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
    ],
)
def test_grpc_errors_map_to_valka_errors(
    code: grpc.StatusCode, cls: type[errors.ValkaError]
) -> None:
    error = map_rpc_error(grpc.aio.AioRpcError(code, details="input: over 1048576 bytes"))
    assert type(error) is cls
    assert error.message == "input: over 1048576 bytes"


def test_other_grpc_errors_keep_their_code() -> None:
    error = map_rpc_error(grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, details="oops"))
    assert type(error) is errors.ValkaError
    assert error.message == "INTERNAL: oops"


def test_server_address_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_server(None) == "127.0.0.1:50051"
    monkeypatch.setenv("VALKA_SERVER", "grpc://example:7000/")
    assert resolve_server(None) == "example:7000"
    assert resolve_server("h:1") == "h:1"
    assert call_metadata(None) == ()
    assert call_metadata("t") == (("authorization", "Bearer t"),)
