"""The dispatch engine: matching, worker sessions and the task writes that go with them.

The servicers validate and translate; this module decides. It owns the in-memory matcher
(compiled), the sessions, and the tasks claimed into memory, and keeps them consistent with
PostgreSQL, which always has the last word: every write here is a compare-and-set, and the
in-memory state follows what the database accepted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from valka.core.config import Config
from valka.core.errors import FailedPrecondition, NotFound, Unavailable
from valka.core.ids import new_id
from valka.db import misc as db_misc
from valka.db import tasks as db_tasks
from valka.db.pool import Pool
from valka.dispatcher.queue_controls import QueueControls
from valka.dispatcher.session import WorkerSession
from valka.matching.matcher import ALL_PARTITIONS, Matcher, Offer
from valka.v1 import worker_pb2

__all__ = ["Engine"]

log = logging.getLogger("valka.engine")

_JSON_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_JSON_DECODER: Final = msgspec.json.Decoder()
# A handler's own retry delay is capped at a year (an interval PostgreSQL can hold).
_MAX_RETRY_DELAY_MS: Final = 366 * 24 * 3600 * 1000
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                          r"[0-9a-fA-F]{12}")


class _Claimed(msgspec.Struct):
    """A task claimed into memory (DISPATCHING in the DB) and not yet sent to a worker."""

    queue: str
    partition: int
    assignment: worker_pb2.Assignment


class Engine:
    def __init__(self, cfg: Config, pool: Pool, node_id: str) -> None:
        self.cfg = cfg
        self.pool = pool
        self.node_id = node_id
        m = cfg.matching
        self.matcher = Matcher(m.num_partitions, m.branching_factor, m.max_buffer_per_partition)
        self.sessions: dict[int, WorkerSession] = {}
        self._session_keys = itertools.count(1)
        self._task_keys = itertools.count(1)
        # Claimed tasks waiting in the matcher's buffers, by matcher key.
        self._claimed: dict[int, _Claimed] = {}
        self._claimed_by_id: dict[str, int] = {}
        # Which session holds a task (assigned or running), for cancels and signals.
        self._holder: dict[str, int] = {}
        self._partition_rr: dict[str, int] = {}
        self._claiming: dict[str, int] = {}
        self.controls = QueueControls()
        # Queue of every task this node started and has not seen finish (for the limits).
        self._queue_of: dict[str, str] = {}
        self._rate_timers: dict[str, asyncio.TimerHandle] = {}
        self._deferred: dict[str, set[int]] = {}
        # Set by the server: wakes the readers of a queue (creating them on first use).
        self.wake_queue: Any = lambda queue: None
        self.wake_partition: Any = lambda queue, partition: None
        self.sync_matches = 0
        self.accepting_creates = True
        self.lost_races = 0

    # ---- producers -------------------------------------------------------------------

    def _next_partition(self, queue: str) -> int:
        n = self._partition_rr.get(queue, 0)
        self._partition_rr[queue] = n + 1
        return n % self.cfg.matching.num_partitions

    async def create_tasks(self, drafts: Sequence[db_tasks.NewTask]
                           ) -> list[tuple[dict[str, Any], bool]]:
        """Store tasks (one statement); hand each to an idle worker when one is waiting."""
        if not self.accepting_creates:
            raise Unavailable("the server is shutting down; send the task to another node "
                              "or retry shortly")
        reserved: dict[str, int] = {}
        for d in drafts:
            d.partition_id = self._next_partition(d.queue_name)
            if d.scheduled_at is not None or d.delay_ms:
                continue
            if self.controls.allowance(d.queue_name) <= 0:
                continue
            key = self.matcher.reserve(d.queue_name, d.partition_id, d.priority)
            session = self.sessions.get(key) if key >= 0 else None
            if session is None:
                if key >= 0:
                    self._give_back(key)
                continue
            reserved[d.id] = key
            d.worker_id = session.worker_id
            self._started(d.id, d.queue_name)
        try:
            inserted = await db_tasks.insert_many(
                self.pool, drafts, node_id=self.node_id,
                dispatch_lease_s=self.cfg.worker.dispatch_timeout_seconds)
        except BaseException:
            for task_id, key in reserved.items():
                self._finished(task_id)
                self._give_back(key)
            raise
        by_id = {str(r["id"]): r for r in inserted}
        results: list[tuple[dict[str, Any], bool]] = []
        duplicates: list[tuple[str, str]] = []
        orphans: list[tuple[str, int]] = []
        cold_queues: set[str] = set()
        for d in drafts:
            row = by_id.get(d.id)
            key = reserved.get(d.id, -1)
            if row is None:
                if key >= 0:
                    self._finished(d.id)
                    self._give_back(key)
                assert d.idempotency_key is not None
                duplicates.append((d.queue_name, d.idempotency_key))
                continue
            full = _row_from_draft(d, row, self.node_id)
            results.append((full, True))
            if key < 0:
                if d.scheduled_at is None and not d.delay_ms:
                    cold_queues.add(d.queue_name)
                continue
            session = self.sessions.get(key)
            if session is None or session.closed or session.draining:
                orphans.append((d.id, 1))
                self._finished(d.id)
                continue
            self.sync_matches += 1
            self._send(session, _assignment_from_draft(d, row))
        if orphans:
            await db_tasks.release_dispatching_many(self.pool, orphans)
        for queue in cold_queues:
            self.wake_queue(queue)
        if duplicates:
            existing = await db_tasks.get_by_idempotency_keys(self.pool, duplicates)
            results.extend((r, False) for r in existing)
        return results

    def _started(self, task_id: str, queue: str) -> None:
        self._queue_of[task_id] = queue
        self.controls.took(queue, 1)

    def _finished(self, task_id: str) -> None:
        queue = self._queue_of.pop(task_id, None)
        if queue is not None:
            self.controls.done(queue, 1)

    def _wake_when_rate_allows(self, queue: str) -> None:
        delay = self.controls.next_token_in(queue)
        if delay is None or queue in self._rate_timers:
            return

        def fire() -> None:
            del self._rate_timers[queue]
            self.wake_queue(queue)
        self._rate_timers[queue] = asyncio.get_running_loop().call_later(delay, fire)

    async def load_queue_settings(self) -> None:
        for row in await db_misc.queue_settings_all(self.pool):
            self._apply_settings(row)

    async def reload_queue(self, queue: str) -> None:
        """A queue's controls changed (here or on another node): apply them."""
        row = await db_misc.queue_settings_get(self.pool, queue)
        if row is not None:
            await self.apply_settings(row)

    async def apply_settings(self, row: dict[str, Any]) -> None:
        queue = row["queue_name"]
        self._apply_settings(row)
        if row["paused"]:
            # Paused: nothing more is dispatched; what waits in memory goes back to PENDING.
            refs: list[tuple[str, int]] = []
            for key in self.matcher.release(queue, ALL_PARTITIONS):
                claimed = self._claimed.pop(key, None)
                if claimed is not None:
                    self._claimed_by_id.pop(claimed.assignment.task_id, None)
                    self._finished(claimed.assignment.task_id)
                    refs.append((claimed.assignment.task_id, claimed.assignment.attempt))
            if refs:
                await db_tasks.release_dispatching_many(self.pool, refs)
        else:
            self.wake_queue(queue)

    def _apply_settings(self, row: dict[str, Any]) -> None:
        self.controls.apply(row["queue_name"], paused=row["paused"],
                            max_concurrency=row["max_concurrency"],
                            rate_per_second=row["rate_per_second"])

    def _give_back(self, key: int) -> None:
        self._dispatch_matches(self.matcher.unreserve(key))

    def _send(self, session: WorkerSession, assignment: worker_pb2.Assignment) -> None:
        self._holder[assignment.task_id] = session.key
        session.assign(assignment)

    async def cancel_task(self, task_id: str, reason: str) -> tuple[dict[str, Any], bool]:
        row = await db_tasks.cancel(self.pool, task_id, reason or "cancelled")
        if row is None:
            current = await db_tasks.get(self.pool, task_id)
            if current is None:
                raise NotFound(f"task_id: no task {task_id}", field="task_id")
            return current, False
        key = self._claimed_by_id.pop(task_id, None)
        if key is not None:
            self.matcher.remove_task(key)
            self._claimed.pop(key, None)
            self._finished(task_id)
        holder = self.sessions.get(self._holder.get(task_id, -1))
        if holder is not None and row["previous_status"] in ("DISPATCHING", "RUNNING"):
            holder.cancel(task_id, row["attempt"], reason or "cancelled")
        return row, True

    async def send_signal(self, task_id: str, name: str, payload: str | None
                          ) -> tuple[str, bool]:
        """Store a signal; push it now if a worker of this node runs the task."""
        row = await db_misc.signal_insert(self.pool, id=new_id(), task_id=task_id, name=name,
                                          payload=payload)
        if row is None:
            if await db_tasks.get(self.pool, task_id) is None:
                raise NotFound(f"task_id: no task {task_id}", field="task_id")
            raise FailedPrecondition(f"task_id: task {task_id} has already finished",
                                     field="task_id")
        holder = self.sessions.get(self._holder.get(task_id, -1))
        if holder is None or task_id not in holder.running:
            return row["id"], False
        await db_misc.signal_mark_delivered(self.pool, [row["id"]])
        holder.signal(worker_pb2.Signal(
            signal_id=row["id"], task_id=task_id, name=name, payload=payload or "",
            timestamp_ms=_now_ms()))
        return row["id"], True

    # ---- the cold path ---------------------------------------------------------------

    def demand(self, queue: str, partition: int) -> int:
        # The matcher's demand is queue-wide; claims in flight by this queue's other
        # readers already answer part of it. A reader held back only by those claims is
        # woken when they end, in case they came back short.
        allowed = self.controls.allowance(queue)
        if allowed <= 0:
            self._wake_when_rate_allows(queue)
            return 0
        want = min(self.matcher.demand(queue, partition), allowed)
        claiming = self._claiming.get(queue, 0)
        if want > 0 >= want - claiming:
            self._deferred.setdefault(queue, set()).add(partition)
        return want - claiming

    async def claim(self, queue: str, partition: int, limit: int) -> int:
        """Claim up to `limit` ready tasks of a partition and match them; returns the count."""
        self._claiming[queue] = self._claiming.get(queue, 0) + limit
        try:
            rows = await db_tasks.claim_pending(
                self.pool, queue_name=queue, partition_id=partition, limit=limit,
                node_id=self.node_id,
                dispatch_lease_s=self.cfg.worker.dispatch_timeout_seconds)
        finally:
            self._claiming[queue] -= limit
            for p in self._deferred.pop(queue, ()):
                if p != partition:
                    self.wake_partition(queue, p)
        rejected: list[tuple[str, int]] = []
        for row in rows:
            task_id = str(row["id"])
            assignment = worker_pb2.Assignment(
                task_id=task_id, attempt=row["attempt"], task_run_id=new_id(),
                queue_name=queue, task_name=row["task_name"], input=row["input"] or "",
                metadata=row["metadata"] or "{}", timeout_seconds=row["timeout_seconds"],
                priority=row["priority"], run_count=row["run_count"],
                max_retries=row["max_retries"],
                created_at_ms=int(row["created_at"].timestamp() * 1000))
            key = next(self._task_keys)
            self._started(task_id, queue)
            result, worker = self.matcher.offer(queue, partition, key, row["priority"])
            if result == Offer.MATCHED:
                self._deliver(assignment, worker, queue, partition)
            elif result == Offer.BUFFERED:
                self._claimed[key] = _Claimed(queue, partition, assignment)
                self._claimed_by_id[task_id] = key
            else:
                rejected.append((task_id, row["attempt"]))
                self._finished(task_id)
        self.matcher.set_backlog(queue, partition, len(rows) >= limit)
        if rejected:
            await db_tasks.release_dispatching_many(self.pool, rejected)
        return len(rows)

    def _deliver(self, assignment: worker_pb2.Assignment, worker: int, queue: str,
                 partition: int) -> None:
        session = self.sessions.get(worker)
        if session is None or session.closed:
            # The matcher never offers removed workers; keep the task claimed if it did.
            key = next(self._task_keys)
            self._claimed[key] = _Claimed(queue, partition, assignment)
            self._claimed_by_id[assignment.task_id] = key
            self.matcher.offer(queue, partition, key, assignment.priority)
            return
        self._send(session, assignment)

    def _dispatch_matches(self, matches: Sequence[tuple[int, int]]) -> None:
        for task_key, worker in matches:
            claimed = self._claimed.pop(task_key, None)
            if claimed is None:
                continue
            self._claimed_by_id.pop(claimed.assignment.task_id, None)
            self._deliver(claimed.assignment, worker, claimed.queue, claimed.partition)

    async def release_claimed(self) -> None:
        """Hand every claimed, undelivered task back to PENDING (shutdown)."""
        refs = [(c.assignment.task_id, c.assignment.attempt) for c in self._claimed.values()]
        for key in list(self._claimed):
            self.matcher.remove_task(key)
        for task_id, _ in refs:
            self._finished(task_id)
        self._claimed.clear()
        self._claimed_by_id.clear()
        if refs:
            await db_tasks.release_dispatching_many(self.pool, refs)

    # ---- worker sessions -------------------------------------------------------------

    async def open_session(self, hello: worker_pb2.Hello) -> WorkerSession:
        key = next(self._session_keys)
        concurrency = min(hello.concurrency or 1, self.cfg.worker.max_concurrency)
        session = WorkerSession(
            key=key, session_id=new_id(), worker_id=hello.worker_id,
            name=hello.worker_name or hello.worker_id, queues=list(hello.queues),
            concurrency=concurrency, labels=hello.labels or "{}",
            sdk_version=hello.sdk_version, connected_at=datetime.now(UTC),
            max_frame_bytes=self.cfg.limits.max_grpc_message_bytes // 2)
        # The database's clock, not ours: the disconnect compares against this value.
        session.connected_at = await db_misc.worker_connect(
            self.pool, id=session.worker_id, name=session.name, node_id=self.node_id,
            queues=session.queues, concurrency=concurrency, labels=session.labels,
            sdk_version=session.sdk_version)
        lost: list[worker_pb2.TaskRef] = []
        if hello.in_flight:
            refs = [(t.task_id, t.attempt) for t in hello.in_flight]
            kept = await db_tasks.extend_leases(self.pool, refs, worker_id=session.worker_id,
                                                lease_s=self.cfg.worker.lease_seconds)
            for r in kept:
                session.running[str(r["id"])] = r["attempt"]
                self._holder[str(r["id"])] = key
            lost = [t for t in hello.in_flight if t.task_id not in session.running]
        self.sessions[key] = session
        free = max(concurrency - len(session.running), 0)
        matches = self.matcher.add_worker(key, session.queues, free)
        if lost:
            session.heartbeat_ack(worker_pb2.HeartbeatAck(
                server_timestamp_ms=_now_ms(), lost=lost))
        self._dispatch_matches(matches)
        for queue in session.queues:
            self.wake_queue(queue)
        return session

    async def close_session(self, session: WorkerSession) -> None:
        """The stream ended: unacknowledged assignments go back to PENDING at once."""
        if session.closed:
            return
        session.closed = True
        session.wake()
        self.matcher.remove_worker(session.key)
        self.sessions.pop(session.key, None)
        refs = [(task_id, attempt) for task_id, (attempt, _) in session.assigned.items()]
        for task_id in list(session.assigned) + list(session.running):
            if self._holder.get(task_id) == session.key:
                del self._holder[task_id]
                self._finished(task_id)
        session.assigned.clear()
        try:
            if refs:
                await db_tasks.release_dispatching_many(self.pool, refs)
            await db_misc.worker_disconnect(self.pool, id=session.worker_id,
                                            node_id=self.node_id,
                                            connected_at=session.connected_at)
        finally:
            for queue in session.queues:
                self.wake_queue(queue)

    def drain_session(self, session: WorkerSession) -> None:
        """The worker asked to drain: no new work; results are still read."""
        session.draining = True
        self.matcher.remove_worker(session.key)

    async def handle_frame(self, session: WorkerSession, frame: worker_pb2.WorkerFrame) -> None:
        # Acks first: a fast handler's ack and result can share one frame.
        if frame.acks:
            await self._on_acks(session, frame.acks)
        if frame.results:
            await self._on_results(session, frame.results)
        if frame.HasField("heartbeat"):
            await self._on_heartbeat(session, frame.heartbeat)
        if frame.signal_acks:
            await db_misc.signal_acknowledge(self.pool, [a.signal_id for a in frame.signal_acks
                                                         if _is_uuid(a.signal_id)],
                                             session.worker_id)
        if frame.HasField("drain"):
            self.drain_session(session)
        if frame.credits > 0 and not session.draining:
            room = session.concurrency - session.held - self.matcher.free_credits(session.key)
            if room > 0:
                self._dispatch_matches(self.matcher.add_credit(session.key,
                                                               min(frame.credits, room)))

    async def _on_acks(self, session: WorkerSession, acks: Sequence[worker_pb2.Ack]) -> None:
        refs: list[tuple[str, int, str]] = []
        for ack in acks:
            held = session.assigned.get(ack.task_id)
            if held is not None and held[0] == ack.attempt:
                refs.append((ack.task_id, ack.attempt, held[1]))
            else:
                self.lost_races += 1
        if not refs:
            return
        rows = await db_tasks.mark_running_many(
            self.pool, refs, worker_id=session.worker_id, node_id=self.node_id,
            lease_s=self.cfg.worker.lease_seconds)
        started = {str(r["id"]) for r in rows}
        pending = [r for r in rows if r["signal_id"] is not None]
        if pending:
            # Recorded before it is sent, so nobody sees it arrive while still PENDING.
            await db_misc.signal_mark_delivered(self.pool, [r["signal_id"] for r in pending])
        for r in pending:
            session.signal(worker_pb2.Signal(
                signal_id=r["signal_id"], task_id=str(r["id"]), name=r["signal_name"],
                payload=r["signal_payload"] or "", timestamp_ms=_now_ms()))
        freed = 0
        for task_id, attempt, _ in refs:
            session.assigned.pop(task_id, None)
            if task_id in started:
                session.running[task_id] = attempt
            else:
                # Cancelled or reaped meanwhile: the worker must not run it.
                self.lost_races += 1
                self._holder.pop(task_id, None)
                self._finished(task_id)
                session.cancel(task_id, attempt, "the task is no longer assigned to you")
                freed += 1
        if freed:
            self._return_credit(session, freed)

    async def _on_results(self, session: WorkerSession,
                          results: Sequence[worker_pb2.Result]) -> None:
        successes: list[tuple[str, int, str | None]] = []
        failures: list[tuple[str, int, str, bool, int]] = []
        limit = self.cfg.limits.max_output_bytes
        refused: dict[tuple[str, int], str] = {}
        for r in results:
            if not _is_uuid(r.task_id):
                refused[(r.task_id, r.attempt)] = "task_id: not a valid UUID"
                continue
            if r.success:
                problem = _check_output(r.output, limit)
                if problem is None:
                    successes.append((r.task_id, r.attempt, r.output or None))
                else:
                    failures.append((r.task_id, r.attempt, problem, False, 0))
            else:
                error = (r.error_message or "failed").replace("\x00", "\\u0000")
                failures.append((r.task_id, r.attempt, error[:65536], r.retryable,
                                 min(max(r.retry_delay_ms, 0), _MAX_RETRY_DELAY_MS)))
        accepted: set[tuple[str, int]] = set()
        if successes:
            rows = await db_tasks.complete_many(self.pool, successes,
                                                worker_id=session.worker_id)
            accepted.update((str(r["id"]), r["attempt"]) for r in rows)
        if failures:
            rows = await db_tasks.fail_many(
                self.pool, failures, worker_id=session.worker_id,
                backoff_base_s=self.cfg.retry.backoff_base_seconds,
                backoff_cap_s=self.cfg.retry.backoff_cap_seconds)
            accepted.update((str(r["id"]), r["attempt"]) for r in rows)
        acks: list[worker_pb2.ResultAck] = []
        freed = 0
        for r in results:
            ok = (r.task_id, r.attempt) in accepted
            if not ok:
                self.lost_races += 1
            acks.append(worker_pb2.ResultAck(
                task_id=r.task_id, attempt=r.attempt, accepted=ok,
                reason="" if ok else refused.get(
                    (r.task_id, r.attempt),
                    "the task is not running under this worker and attempt")))
            if session.running.get(r.task_id) == r.attempt:
                del session.running[r.task_id]
                freed += 1
            elif r.task_id in session.assigned and session.assigned[r.task_id][0] == r.attempt:
                del session.assigned[r.task_id]
                freed += 1
            else:
                continue
            if self._holder.get(r.task_id) == session.key:
                del self._holder[r.task_id]
            self._finished(r.task_id)
        session.ack_results(acks)
        if freed:
            self._return_credit(session, freed)

    def _return_credit(self, session: WorkerSession, n: int) -> None:
        if session.draining or session.closed:
            return
        self._dispatch_matches(self.matcher.add_credit(session.key, n))
        for queue in session.queues:
            self.wake_queue(queue)

    async def _on_heartbeat(self, session: WorkerSession, hb: worker_pb2.Heartbeat) -> None:
        # Every task the worker reports except those still awaiting their ack: the lease is
        # extended where the database agrees this worker runs that attempt. One it runs that
        # this session did not know of (an SDK that reconnected without naming it in its
        # hello) is adopted rather than declared lost.
        running = [(t.task_id, t.attempt) for t in hb.tasks
                   if t.task_id not in session.assigned and _is_uuid(t.task_id)]
        kept: set[str] = set()
        if running:
            rows = await db_tasks.extend_leases(self.pool, running,
                                                worker_id=session.worker_id,
                                                lease_s=self.cfg.worker.lease_seconds)
            kept = {str(r["id"]) for r in rows}
            for r in rows:
                task_id = str(r["id"])
                if task_id not in session.running:
                    session.running[task_id] = r["attempt"]
                    self._holder[task_id] = session.key
        await db_misc.worker_touch(self.pool, session.worker_id)
        lost = [t for t in hb.tasks
                if t.task_id not in kept and t.task_id not in session.assigned]
        session.heartbeat_ack(worker_pb2.HeartbeatAck(server_timestamp_ms=_now_ms(), lost=lost))

    # ---- shutdown --------------------------------------------------------------------

    def announce_drain(self, drain_ms: int) -> None:
        self.accepting_creates = False
        for session in list(self.sessions.values()):
            self.drain_session(session)
            session.server_draining("server shutting down", drain_ms)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no session holds a task, or the timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(s.held for s in self.sessions.values()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


def _is_uuid(text: str) -> bool:
    return bool(_UUID.fullmatch(text))


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _check_output(text: str, limit: int) -> str | None:
    """None if PostgreSQL can store this output; else why the task fails instead."""
    if not text:
        return None
    size = len(text.encode())
    if size > limit:
        return f"output rejected: {size} bytes, the limit is {limit} bytes"
    try:
        _JSON_DECODER.decode(text)
    except msgspec.DecodeError as exc:
        return f"output rejected: not valid JSON ({exc})"
    if _JSON_NUL.search(text):
        return "output rejected: contains \\u0000, which PostgreSQL cannot store in JSON"
    return None


def _row_from_draft(d: db_tasks.NewTask, row: dict[str, Any], node_id: str
                    ) -> dict[str, Any]:
    hot = d.worker_id is not None
    return {
        "id": d.id, "queue_name": d.queue_name, "task_name": d.task_name,
        "partition_id": d.partition_id, "status": "DISPATCHING" if hot else "PENDING",
        "priority": d.priority, "input": d.input, "metadata": d.metadata, "output": None,
        "error_message": None, "max_retries": d.max_retries, "attempt": row["attempt"],
        "run_count": 0, "timeout_seconds": d.timeout_seconds,
        "idempotency_key": d.idempotency_key, "worker_id": d.worker_id,
        "node_id": node_id if hot else None, "scheduled_at": row["scheduled_at"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "started_at": None, "completed_at": None,
    }


def _assignment_from_draft(d: db_tasks.NewTask, row: dict[str, Any]) -> worker_pb2.Assignment:
    return worker_pb2.Assignment(
        task_id=d.id, attempt=row["attempt"], task_run_id=new_id(), queue_name=d.queue_name,
        task_name=d.task_name, input=d.input or "", metadata=d.metadata,
        timeout_seconds=d.timeout_seconds, priority=d.priority, run_count=0,
        max_retries=d.max_retries, created_at_ms=int(row["created_at"].timestamp() * 1000))
