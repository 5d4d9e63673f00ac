"""Items waiting to go to the server, taken out as one WorkerFrame at a time.

Per-message cost bounds grpc in Python, so everything that is ready when the sender wakes
goes into one frame, up to the server's message size limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Final

from valka.v1 import common_pb2, worker_pb2

__all__ = ["Outbox"]

# Room left in a frame for the field tags and the small items.
_FRAME_SLACK: Final = 16 * 1024
# Logs are best effort: past this many unsent entries, new ones are dropped and counted.
MAX_PENDING_LOGS: Final = 10_000
# Logs do not wake the sender on their own: they ride along with the next frame, or go
# out after LOG_LINGER seconds, or once LOG_BATCH of them wait.
LOG_LINGER: Final = 0.2
LOG_BATCH: Final = 500


class Outbox:
    __slots__ = (
        "acks",
        "credits",
        "drain",
        "dropped_logs",
        "heartbeat_due",
        "log_timer",
        "logs",
        "ready",
        "results",
        "signal_acks",
    )

    def __init__(self) -> None:
        self.acks: list[worker_pb2.Ack] = []
        self.results: deque[worker_pb2.Result] = deque()
        self.logs: deque[common_pb2.LogEntry] = deque()
        self.signal_acks: list[worker_pb2.SignalAck] = []
        self.credits = 0
        self.drain: worker_pb2.Drain | None = None
        self.heartbeat_due = False
        self.dropped_logs = 0
        self.log_timer: asyncio.TimerHandle | None = None
        # Set whenever something is added; the sender waits on it.
        self.ready = asyncio.Event()

    def add_ack(self, task_id: str, attempt: int) -> None:
        self.acks.append(worker_pb2.Ack(task_id=task_id, attempt=attempt))
        self.ready.set()

    def add_result(self, result: worker_pb2.Result) -> None:
        self.results.append(result)
        self.ready.set()

    def add_log(self, entry: common_pb2.LogEntry) -> None:
        if len(self.logs) >= MAX_PENDING_LOGS:
            self.dropped_logs += 1
            return
        self.logs.append(entry)
        if len(self.logs) >= LOG_BATCH:
            self.ready.set()
        elif self.log_timer is None:
            self.log_timer = asyncio.get_running_loop().call_later(LOG_LINGER, self._flush_logs)

    def _flush_logs(self) -> None:
        self.log_timer = None
        if self.logs:
            self.ready.set()

    def add_signal_ack(self, signal_id: str) -> None:
        self.signal_acks.append(worker_pb2.SignalAck(signal_id=signal_id))
        self.ready.set()

    def add_credit(self) -> None:
        self.credits += 1
        self.ready.set()

    def set_drain(self, reason: str) -> None:
        self.drain = worker_pb2.Drain(reason=reason)
        self.ready.set()

    def request_heartbeat(self) -> None:
        self.heartbeat_due = True
        self.ready.set()

    def start_session(self, unconfirmed: Iterable[worker_pb2.Result]) -> None:
        """Reset what belongs to the old stream and queue every unconfirmed result again.

        Credits referred to the old stream's assignments; acks, logs and signal acks not
        yet sent still apply. The drain request, if any, is sent again.
        """
        self.results = deque(unconfirmed)
        self.credits = 0
        self.heartbeat_due = False
        self.ready.set()

    def urgent(self) -> bool:
        """Whether something waits that the server needs at once (not results or logs)."""
        return bool(
            self.acks
            or self.signal_acks
            or self.credits
            or self.drain is not None
            or self.heartbeat_due
        )

    def empty(self) -> bool:
        return not (
            self.acks
            or self.results
            or self.logs
            or self.signal_acks
            or self.credits
            or self.drain is not None
            or self.heartbeat_due
        )

    def take(
        self, max_bytes: int, in_flight: Iterable[tuple[str, int]]
    ) -> worker_pb2.WorkerFrame | None:
        """One frame with as much as fits in `max_bytes`, or None when nothing waits."""
        if self.empty():
            return None
        frame = worker_pb2.WorkerFrame()
        budget = max(max_bytes - _FRAME_SLACK, 1)
        used = 0
        if self.acks:
            frame.acks.extend(self.acks)
            self.acks.clear()
        if self.signal_acks:
            frame.signal_acks.extend(self.signal_acks)
            self.signal_acks.clear()
        if self.credits:
            frame.credits = self.credits
            self.credits = 0
        if self.drain is not None:
            frame.drain.CopyFrom(self.drain)
            self.drain = None
        if self.heartbeat_due:
            self.heartbeat_due = False
            frame.heartbeat.timestamp_ms = time.time_ns() // 1_000_000
            frame.heartbeat.tasks.extend(
                worker_pb2.TaskRef(task_id=task_id, attempt=attempt)
                for task_id, attempt in in_flight
            )
            used += frame.heartbeat.ByteSize()
        # A single item larger than the budget still goes out alone: the server then names
        # its limit, which beats holding the item back forever.
        while self.results:
            size = self.results[0].ByteSize() + 8
            if used and used + size > budget:
                break
            frame.results.append(self.results.popleft())
            used += size
        while self.logs and used < budget:
            size = self.logs[0].ByteSize() + 8
            if used and used + size > budget:
                break
            frame.logs.append(self.logs.popleft())
            used += size
        if self.results or self.logs:
            self.ready.set()
        return frame
