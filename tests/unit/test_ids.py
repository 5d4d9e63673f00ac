from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from valka.core.errors import InvalidArgument
from valka.core.ids import id_timestamp_ms, new_id, new_uuid, parse_id


def test_new_id_is_canonical_uuid7() -> None:
    text = new_id()
    assert len(text) == 36
    assert text == text.lower()
    value = uuid.UUID(text)
    assert value.version == 7
    assert str(value) == text


def test_new_uuid_is_a_stdlib_uuid7() -> None:
    value = new_uuid()
    assert type(value) is uuid.UUID
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_ids_are_unique() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000


def test_timestamp_is_the_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    text = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= id_timestamp_ms(text) <= after
    assert before - 1 <= id_timestamp_ms(str(new_uuid())) <= time.time_ns() // 1_000_000


def test_later_ids_sort_after_earlier_ones() -> None:
    first = new_id()
    deadline = time.monotonic() + 1.0
    while id_timestamp_ms(new_id()) == id_timestamp_ms(first):
        assert time.monotonic() < deadline, "clock did not advance"
    assert first < new_id()


@pytest.mark.parametrize(
    "spelling",
    [
        "01A23CFB-CA1F-7654-8590-3C2DB89F5A3A",
        "01a23cfbca1f765485903c2db89f5a3a",
        "01a23cfb-ca1f-7654-8590-3c2db89f5a3a",
    ],
)
def test_parse_id_normalizes(spelling: str) -> None:
    assert parse_id(spelling, "task_id") == "01a23cfb-ca1f-7654-8590-3c2db89f5a3a"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "01a23cfb-ca1f-7654-8590-3c2db89f5a3",
        "g1a23cfb-ca1f-7654-8590-3c2db89f5a3a",
        "01a23cfb-ca1f-7654-8590-3c2db89f5a3a\x00",
        "01a23cfb-ca1f-7654-8590-3c2db89f5a3a\n",
        " 01a23cfb-ca1f-7654-8590-3c2db89f5a3a",
        "{01a23cfb-ca1f-7654-8590-3c2db89f5a3a}",
        "0_1a23cfbca1f765485903c2db89f5a3a",
        "0" * 10_000,
    ],
)
def test_parse_id_rejects_bad_text_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_id(bad, "task_id")
    assert str(info.value) == "task_id: not a valid UUID"
    assert info.value.field == "task_id"
    assert info.value.grpc_code == "INVALID_ARGUMENT"


@given(st.text(max_size=80))
def test_parse_id_never_fails_otherwise(text: str) -> None:
    try:
        result = parse_id(text, "id")
    except InvalidArgument as exc:
        assert exc.field == "id"
    else:
        assert uuid.UUID(result) == uuid.UUID(text)
        assert result == str(uuid.UUID(text))


@given(st.uuids())
def test_parse_id_accepts_any_uuid(value: uuid.UUID) -> None:
    assert parse_id(str(value).upper(), "id") == str(value)


def test_id_timestamp_requires_uuid7() -> None:
    with pytest.raises(InvalidArgument, match="worker_id: not a UUIDv7"):
        id_timestamp_ms(str(uuid.uuid4()), "worker_id")
