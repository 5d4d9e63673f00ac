"""One worker's stream: what it holds, and the items waiting to go out to it.

Outgoing items of every kind are queued here and leave together: the writer takes all that
is ready and sends as few frames as the message-size limit allows, because each grpc message
costs far more than its bytes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from valka.v1 import worker_pb2

__all__ = ["WorkerSession"]


class WorkerSession:
    def __init__(self, *, key: int, session_id: str, worker_id: str, name: str,
                 queues: list[str], concurrency: int, labels: str, sdk_version: str,
                 connected_at: datetime, max_frame_bytes: int) -> None:
        self.key = key
        self.session_id = session_id
        self.worker_id = worker_id
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.labels = labels
        self.sdk_version = sdk_version
        self.connected_at = connected_at
        # Sent and not yet acknowledged: task id -> (attempt, run id). DISPATCHING in the DB.
        self.assigned: dict[str, tuple[int, str]] = {}
        # Acknowledged (or adopted after a reconnect): task id -> attempt. RUNNING in the DB.
        self.running: dict[str, int] = {}
        self.draining = False
        self.closed = False
        self._max_frame_bytes = max_frame_bytes
        self._out: list[worker_pb2.ServerFrame] = []
        self._assignments: list[worker_pb2.Assignment] = []
        self._cancels: list[worker_pb2.Cancel] = []
        self._result_acks: list[worker_pb2.ResultAck] = []
        self._signals: list[worker_pb2.Signal] = []
        self._heartbeat_ack: worker_pb2.HeartbeatAck | None = None
        self._server_draining: worker_pb2.ServerDraining | None = None
        self._ready = asyncio.Event()

    @property
    def held(self) -> int:
        return len(self.assigned) + len(self.running)

    def holds(self, task_id: str) -> bool:
        return task_id in self.assigned or task_id in self.running

    def send_frame(self, frame: worker_pb2.ServerFrame) -> None:
        self._out.append(frame)
        self._ready.set()

    def assign(self, assignment: worker_pb2.Assignment) -> None:
        self.assigned[assignment.task_id] = (assignment.attempt, assignment.task_run_id)
        self._assignments.append(assignment)
        self._ready.set()

    def cancel(self, task_id: str, attempt: int, reason: str) -> None:
        self._cancels.append(worker_pb2.Cancel(task_id=task_id, attempt=attempt, reason=reason))
        self._ready.set()

    def ack_results(self, acks: list[worker_pb2.ResultAck]) -> None:
        self._result_acks.extend(acks)
        self._ready.set()

    def signal(self, signal: worker_pb2.Signal) -> None:
        self._signals.append(signal)
        self._ready.set()

    def heartbeat_ack(self, ack: worker_pb2.HeartbeatAck) -> None:
        if self._heartbeat_ack is not None:
            ack.lost.extend(self._heartbeat_ack.lost)
        self._heartbeat_ack = ack
        self._ready.set()

    def server_draining(self, reason: str, drain_ms: int) -> None:
        self._server_draining = worker_pb2.ServerDraining(reason=reason, drain_ms=drain_ms)
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    async def next_frames(self) -> list[worker_pb2.ServerFrame]:
        """Wait for outgoing items and return them as frames (empty once closed)."""
        while not self._has_items():
            if self.closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        frames, self._out = self._out, []
        frame = worker_pb2.ServerFrame(
            cancels=self._cancels, result_acks=self._result_acks, signals=self._signals)
        if self._heartbeat_ack is not None:
            frame.heartbeat_ack.CopyFrom(self._heartbeat_ack)
        if self._server_draining is not None:
            frame.draining.CopyFrom(self._server_draining)
        self._cancels, self._result_acks, self._signals = [], [], []
        self._heartbeat_ack = self._server_draining = None
        size = 0
        for assignment in self._assignments:
            cost = len(assignment.input) + len(assignment.metadata) + 256
            if size and size + cost > self._max_frame_bytes:
                frames.append(frame)
                frame, size = worker_pb2.ServerFrame(), 0
            frame.assignments.append(assignment)
            size += cost
        self._assignments = []
        frames.append(frame)
        return frames

    def _has_items(self) -> bool:
        return bool(self._out or self._assignments or self._cancels or self._result_acks
                    or self._signals or self._heartbeat_ack or self._server_draining)
