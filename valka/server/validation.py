"""Checks on everything a client sends, before anything is stored.

Each failure names the field and the limit, so a caller can fix the request without reading
the server's source; nothing is written until every item of a request has passed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

import msgspec

from valka.core.config import LimitsConfig, TasksConfig
from valka.core.errors import InvalidArgument, ResourceExhausted
from valka.core.ids import new_id
from valka.db.tasks import NewTask
from valka.v1 import api_pb2

__all__ = ["check_json", "check_name", "validate_create"]

# Queue names travel in NOTIFY payloads, URLs and metric labels: keep them plain.
_QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9_.:\-]+")
# An escaped NUL in JSON text, not preceded by an escaped backslash.
_JSON_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_MAX_RETRIES_LIMIT: Final = 1000
_MAX_TIMEOUT_S: Final = 7 * 24 * 3600
_MAX_DELAY_MS: Final = 366 * 24 * 3600 * 1000
_JSON_DECODER: Final = msgspec.json.Decoder()


def check_name(value: str, field: str, limit: int, *, queue: bool = False) -> str:
    if not value:
        raise InvalidArgument(f"{field}: must not be empty", field=field)
    if len(value) > limit:
        raise InvalidArgument(
            f"{field}: {len(value)} characters, the limit is {limit}", field=field)
    if queue:
        if not _QUEUE_NAME.fullmatch(value):
            raise InvalidArgument(
                f"{field}: only letters, digits and _ . : - are allowed", field=field)
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidArgument(f"{field}: control characters are not allowed", field=field)
    return value


def check_json(text: str, field: str, limit: int, *, object_only: bool = False) -> str:
    """Return `text` if it is JSON PostgreSQL's jsonb can store, within `limit` bytes."""
    size = len(text.encode())
    if size > limit:
        raise ResourceExhausted(
            f"{field}: {size} bytes, the limit is {limit} bytes", field=field)
    try:
        value = _JSON_DECODER.decode(text)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"{field}: not valid JSON ({exc})", field=field) from None
    if object_only and not isinstance(value, dict):
        raise InvalidArgument(f"{field}: must be a JSON object", field=field)
    if _JSON_NUL.search(text):
        raise InvalidArgument(
            f"{field}: contains \\u0000, which PostgreSQL cannot store in JSON", field=field)
    return text


def validate_create(req: api_pb2.CreateTaskRequest, limits: LimitsConfig,
                    defaults: TasksConfig, *, prefix: str = "") -> NewTask:
    """A checked NewTask (partition and worker are the caller's to set)."""
    def f(name: str) -> str:
        return prefix + name

    queue = check_name(req.queue_name, f("queue_name"), limits.max_name_length, queue=True)
    name = check_name(req.task_name, f("task_name"), limits.max_name_length)
    input_text = (check_json(req.input, f("input"), limits.max_input_bytes)
                  if req.input else None)
    metadata = (check_json(req.metadata, f("metadata"), limits.max_metadata_bytes,
                           object_only=True) if req.metadata else "{}")
    max_retries = defaults.default_max_retries
    if req.HasField("max_retries"):
        max_retries = req.max_retries
        if not 0 <= max_retries <= _MAX_RETRIES_LIMIT:
            raise InvalidArgument(
                f"{f('max_retries')}: {max_retries} is outside 0..{_MAX_RETRIES_LIMIT}",
                field=f("max_retries"))
    timeout = defaults.default_timeout_seconds
    if req.HasField("timeout_seconds"):
        timeout = req.timeout_seconds
        if not 1 <= timeout <= _MAX_TIMEOUT_S:
            raise InvalidArgument(
                f"{f('timeout_seconds')}: {timeout} is outside 1..{_MAX_TIMEOUT_S}",
                field=f("timeout_seconds"))
    key = None
    if req.idempotency_key:
        key = check_name(req.idempotency_key, f("idempotency_key"), limits.max_name_length)
    if req.scheduled_at_ms < 0:
        raise InvalidArgument(f"{f('scheduled_at_ms')}: must not be negative",
                              field=f("scheduled_at_ms"))
    if not 0 <= req.delay_ms <= _MAX_DELAY_MS:
        raise InvalidArgument(f"{f('delay_ms')}: {req.delay_ms} is outside 0..{_MAX_DELAY_MS}",
                              field=f("delay_ms"))
    if req.scheduled_at_ms and req.delay_ms:
        raise InvalidArgument(f"{f('delay_ms')}: give scheduled_at_ms or delay_ms, not both",
                              field=f("delay_ms"))
    scheduled = (datetime.fromtimestamp(req.scheduled_at_ms / 1000, UTC)
                 if req.scheduled_at_ms else None)
    return NewTask(id=new_id(), queue_name=queue, task_name=name, partition_id=0,
                   priority=req.priority, input=input_text, metadata=metadata,
                   max_retries=max_retries, timeout_seconds=timeout, idempotency_key=key,
                   scheduled_at=scheduled, delay_ms=req.delay_ms)
