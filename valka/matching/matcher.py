"""The in-memory matcher: which worker slot gets which task, for every queue on this node.

Pure data structure (ints in, ints out; no I/O, no asyncio) so that it can be compiled by
mypyc and driven by the interpreted server: the hot path (``reserve``: a new task takes an
idle slot before it is even written) and the cold path (``offer``: a task claimed from
PostgreSQL looks for a slot, else waits here).

Shape of one queue: ``num_partitions`` partitions in a tree (see ``tree.py``).
- Worker slots. A worker gets a home partition per queue and its slot queues up in the
  rotation of its home and of every ancestor: a slot that finds no task in its partition is
  forwarded up the tree, so at the root every slot of the queue meets every task. A task
  looks for a slot in its own partition first, then in each ancestor (locality first).
  Rotations are round-robin by worker, not by slot: a worker with ten free slots waits once
  per rotation, so a fast worker returning credit cannot starve the others.
- Buffered tasks. Ordered per queue by priority (higher first), then by age. A buffered task
  is visible from every partition because the root sees everything; ordering them per queue
  rather than per partition keeps the user-visible promise (a higher priority runs first)
  exact, where per-partition order would only buy locality, which means nothing inside one
  process. Partitions still bound the buffer: at most ``max_buffer_per_partition`` buffered
  tasks were offered at each partition.

Invariants kept after every public call, written next to the fields they concern:
- a worker never holds more tasks than the credits it was given;
- a removed worker is never matched again;
- no idle-while-buffered: if a live worker with free credit serves a queue, that queue has no
  buffered task (whenever one side appears, the other is matched at once).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, final

from valka.matching.tree import path_to_root

__all__ = [
    "ALL_PARTITIONS",
    "MAX_PARTITIONS",
    "NO_WORKER",
    "Matcher",
    "Offer",
]

NO_WORKER: Final = -1
ALL_PARTITIONS: Final = -1
MAX_PARTITIONS: Final = 1024

# Consumed prefixes of the FIFOs below are cut once they are this long and at least half of
# the list, so popping from the front stays O(1) amortised without a deque (lists are native
# to mypyc, deque methods are generic Python calls).
_COMPACT_AT: Final = 64


class Offer(IntEnum):
    """What became of a task offered from the cold path."""

    MATCHED = 0  # a worker slot took it: deliver to the returned worker
    BUFFERED = 1  # no free slot: held here until one frees up
    REJECTED = 2  # the partition's buffer is full: leave it PENDING in the database


_MATCHED: Final = Offer.MATCHED
_BUFFERED: Final = Offer.BUFFERED
_REJECTED: Final = Offer.REJECTED


@final
class _Worker:
    __slots__ = ("alive", "credits", "key", "members", "next_member")

    def __init__(self, key: int, credits: int) -> None:
        self.key = key
        # Free slots now. Never negative; each match spends one, each returned slot adds one.
        self.credits = credits
        # False once removed; every structure that still points here skips it lazily.
        self.alive = True
        # One entry per served queue, in registration order.
        self.members: list[_Member] = []
        # Where the next search of buffered tasks starts, so that queues take turns.
        self.next_member = 0


@final
class _Slot:
    """A worker's place in the rotation of one partition of one queue."""

    __slots__ = ("partition", "queued", "worker")

    def __init__(self, worker: _Worker, partition: int) -> None:
        self.worker = worker
        self.partition = partition
        # True iff exactly one entry for this slot is in the unconsumed part of the
        # partition's rotation. Cleared when the entry is consumed for a worker without
        # credit; set again, with a fresh entry, when credit returns. So entries per rotation
        # are bounded by the slots that exist, however often credit comes and goes.
        # A live worker with credit has all its slots queued: entries are only consumed
        # without being put back when the worker's credit is (or just became) zero.
        self.queued = False


@final
class _Member:
    """A worker serving one queue."""

    __slots__ = ("home", "queue", "slots")

    def __init__(self, queue: _Queue, home: int, slots: list[_Slot]) -> None:
        self.queue = queue
        self.home = home
        # One per partition on the path from home to the root, home first.
        self.slots = slots


@final
class _Rotation:
    """FIFO of slots waiting in one partition; consumed from ``head``."""

    __slots__ = ("dead", "head", "items")

    def __init__(self) -> None:
        self.items: list[_Slot] = []
        self.head = 0
        # Entries in items[head:] whose worker was removed. Purged once they outnumber the
        # live entries, so removed workers cannot pile up in a partition that sees no task.
        self.dead = 0

    def purge(self) -> None:
        self.items = [s for s in self.items[self.head :] if s.worker.alive]
        self.head = 0
        self.dead = 0


@final
class _Task:
    __slots__ = ("alive", "key", "partition", "priority", "queue")

    def __init__(self, key: int, priority: int, partition: int, queue: _Queue) -> None:
        self.key = key
        self.priority = priority
        self.partition = partition
        self.queue = queue
        # True while buffered; False once matched or removed (its FIFO entry is then stale).
        self.alive = True


@final
class _Level:
    """FIFO of buffered tasks of one priority in one queue; consumed from ``head``."""

    __slots__ = ("dead", "head", "items")

    def __init__(self) -> None:
        self.items: list[_Task] = []
        self.head = 0
        # Entries in items[head:] whose task was removed; purged once they outnumber the live.
        self.dead = 0

    def live(self) -> int:
        return len(self.items) - self.head - self.dead

    def purge(self) -> None:
        self.items = [t for t in self.items[self.head :] if t.alive]
        self.head = 0
        self.dead = 0


@final
class _Queue:
    __slots__ = (
        "backlog",
        "backlog_count",
        "buffered",
        "buffered_at",
        "free",
        "home_count",
        "levels",
        "members",
        "name",
        "priorities",
        "rotations",
        "waiting",
    )

    def __init__(self, name: str, num_partitions: int) -> None:
        self.name = name
        self.rotations = [_Rotation() for _ in range(num_partitions)]
        # Live members whose home is each partition; new members go to the emptiest.
        self.home_count = [0] * num_partitions
        self.members = 0
        # Sum of free credits over live members (a worker's credits count in each of its
        # queues: they are shared, whichever queue spends them first).
        self.free = 0
        # Live members with at least one free credit.
        self.waiting = 0
        # Priority -> FIFO of buffered tasks. ``levels`` is a heap of the negated keys of
        # ``priorities``: a key is in one iff it is in the other.
        self.priorities: dict[int, _Level] = {}
        self.levels: list[int] = []
        # Live buffered tasks, in all and by the partition they were offered at
        # (each <= max_buffer_per_partition).
        self.buffered = 0
        self.buffered_at = [0] * num_partitions
        # Set by the database reader when a partition has more PENDING rows than it could
        # claim; while any is set the hot path is refused so nothing overtakes them.
        self.backlog = [False] * num_partitions
        self.backlog_count = 0


@final
class Matcher:
    """Matches tasks and worker slots for every queue served by this node.

    Workers and tasks are int keys chosen by the caller (worker keys >= 0). Calls for workers
    that are unknown or already removed are no-ops, because the server may learn of a stream's
    end before the last in-flight insert of that worker completes. Not thread-safe: one event
    loop owns it, and no method blocks or awaits.
    """

    __slots__ = (
        "_buffer_matches",
        "_cap",
        "_forwarded",
        "_num_partitions",
        "_parents",
        "_paths",
        "_queues",
        "_refused",
        "_rejected",
        "_removed_tasks",
        "_reserved",
        "_sync_matches",
        "_tasks",
        "_workers",
    )

    def __init__(
        self, num_partitions: int, branching_factor: int, max_buffer_per_partition: int
    ) -> None:
        if not 1 <= num_partitions <= MAX_PARTITIONS:
            raise ValueError(
                f"num_partitions must be in [1, {MAX_PARTITIONS}], got {num_partitions}"
            )
        if branching_factor < 1:
            raise ValueError(f"branching_factor must be >= 1, got {branching_factor}")
        if max_buffer_per_partition < 0:
            raise ValueError(
                f"max_buffer_per_partition must be >= 0, got {max_buffer_per_partition}"
            )
        self._num_partitions = num_partitions
        self._cap = max_buffer_per_partition
        self._paths = [path_to_root(p, branching_factor) for p in range(num_partitions)]
        self._parents = [path[1] if len(path) > 1 else -1 for path in self._paths]
        self._queues: dict[str, _Queue] = {}
        self._workers: dict[int, _Worker] = {}
        # Every buffered task by key, for remove_task; exactly the live _Task objects.
        self._tasks: dict[int, _Task] = {}
        self._sync_matches = 0
        self._forwarded = 0
        self._reserved = 0
        self._refused = 0
        self._buffer_matches = 0
        self._rejected = 0
        self._removed_tasks = 0

    # ----------------------------------------------------------------------------- workers

    def add_worker(self, worker: int, queues: list[str], credits: int) -> list[tuple[int, int]]:
        """Register ``worker`` with ``credits`` free slots; returns (task, worker) matches."""
        if worker < 0:
            raise ValueError(f"worker must be >= 0, got {worker}")
        if credits < 0:
            raise ValueError(f"credits must be >= 0, got {credits}")
        if not queues:
            raise ValueError("queues must not be empty")
        for name in queues:
            if not name:
                raise ValueError("queues must not contain an empty name")
        if worker in self._workers:
            raise ValueError(f"worker {worker} is already registered")
        w = _Worker(worker, credits)
        seen: set[str] = set()
        for name in queues:
            if name in seen:
                continue
            seen.add(name)
            q = self._queue(name)
            home = _emptiest(q.home_count)
            q.home_count[home] += 1
            q.members += 1
            if credits > 0:
                q.free += credits
                q.waiting += 1
            slots = [_Slot(w, p) for p in self._paths[home]]
            w.members.append(_Member(q, home, slots))
        self._workers[worker] = w
        matches: list[tuple[int, int]] = []
        if credits > 0:
            self._drain(w, matches)
            if w.credits > 0:
                _enroll(w)
        return matches

    def add_credit(self, worker: int, n: int) -> list[tuple[int, int]]:
        """``worker`` freed ``n`` slots; returns the buffered tasks it takes now, best first."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        w = self._workers.get(worker)
        if w is None:
            return []
        before = w.credits
        w.credits = before + n
        for m in w.members:
            q = m.queue
            q.free += n
            if before == 0:
                q.waiting += 1
        matches: list[tuple[int, int]] = []
        if self._tasks:
            self._drain(w, matches)
        # A worker that had credit left has every slot queued already (see _Slot.queued).
        if before == 0 and w.credits > 0:
            _enroll(w)
        return matches

    def remove_worker(self, worker: int) -> None:
        """``worker`` is gone: it is never matched again. Its held tasks are the caller's."""
        w = self._workers.pop(worker, None)
        if w is None:
            return
        w.alive = False
        # Zero credits also keeps it out of every rotation scan (see _take_slot).
        for m in w.members:
            q = m.queue
            q.members -= 1
            q.home_count[m.home] -= 1
            if w.credits > 0:
                q.free -= w.credits
                q.waiting -= 1
            for s in m.slots:
                if s.queued:
                    r = q.rotations[s.partition]
                    r.dead += 1
                    if r.dead * 2 > len(r.items) - r.head:
                        r.purge()
            self._forget_if_idle(q)
        w.credits = 0

    def free_credits(self, worker: int) -> int:
        w = self._workers.get(worker)
        return 0 if w is None else w.credits

    # ---------------------------------------------------------------------------- hot path

    def reserve(self, queue: str, partition: int, priority: int) -> int:
        """Take one free slot reachable from ``partition`` for a task not yet written.

        Returns the worker key, or NO_WORKER when no slot is free or when the queue has a
        backlog that the new task would overtake (buffered tasks of the same or a higher
        priority, or PENDING rows the reader flagged).
        """
        if partition < 0 or partition >= self._num_partitions:
            self._check_partition(partition)
        q = self._queues.get(queue)
        if q is None:
            return NO_WORKER
        if q.backlog_count > 0 or (q.buffered > 0 and _top_priority(q) >= priority):
            self._refused += 1
            return NO_WORKER
        w = self._take_slot(q, partition)
        if w is None:
            return NO_WORKER
        self._reserved += 1
        return w.key

    def unreserve(self, worker: int) -> list[tuple[int, int]]:
        """Give back a slot taken by ``reserve`` (the insert failed); returns new matches."""
        return self.add_credit(worker, 1)

    # --------------------------------------------------------------------------- cold path

    def offer(self, queue: str, partition: int, task: int, priority: int) -> tuple[Offer, int]:
        """A task claimed from the database: match it, buffer it, or reject it."""
        if partition < 0 or partition >= self._num_partitions:
            self._check_partition(partition)
        # (The emptiness test first spares boxing the key when nothing is buffered.)
        if self._tasks and task in self._tasks:
            raise ValueError(f"task {task} is already buffered")
        q = self._queues.get(queue)
        if q is None:
            q = self._queue(queue)
        elif q.waiting > 0:
            w = self._take_slot(q, partition)
            if w is not None:
                self._sync_matches += 1
                return (_MATCHED, w.key)
        if q.buffered_at[partition] >= self._cap:
            self._rejected += 1
            self._forget_if_idle(q)
            return (_REJECTED, NO_WORKER)
        t = _Task(task, priority, partition, q)
        level = q.priorities.get(priority)
        if level is None:
            level = _Level()
            q.priorities[priority] = level
            _heap_push(q.levels, -priority)
        level.items.append(t)
        q.buffered += 1
        buffered_at = q.buffered_at
        buffered_at[partition] = buffered_at[partition] + 1
        self._tasks[task] = t
        return (_BUFFERED, NO_WORKER)

    def remove_task(self, task: int) -> bool:
        """A buffered task was cancelled; False if it is not buffered here."""
        t = self._tasks.get(task)
        if t is None:
            return False
        self._unbuffer(t)
        self._removed_tasks += 1
        self._forget_if_idle(t.queue)
        return True

    def release(self, queue: str, partition: int) -> list[int]:
        """Drop the buffered tasks offered at ``partition`` (or ALL_PARTITIONS) and return them.

        For when this node stops serving a partition or shuts down: the caller puts them back
        to PENDING, so nothing claimed is stranded in memory.
        """
        if partition != ALL_PARTITIONS:
            self._check_partition(partition)
        q = self._queues.get(queue)
        if q is None or q.buffered == 0:
            return []
        chosen: list[_Task] = []
        for level in q.priorities.values():
            for t in level.items[level.head :]:
                if t.alive and (partition == ALL_PARTITIONS or t.partition == partition):
                    chosen.append(t)
        for t in chosen:
            self._unbuffer(t)
        self._forget_if_idle(q)
        return [t.key for t in chosen]

    def demand(self, queue: str, partition: int) -> int:
        """How many tasks the reader of ``partition`` should claim now (never negative).

        Every slot of the queue is reachable from every partition through the root, so this
        is the queue's free slots minus its buffered tasks. Readers of several partitions that
        claim at the same time may together claim more than that; the surplus is buffered
        (bounded per partition) and taken as slots free up.
        """
        self._check_partition(partition)
        q = self._queues.get(queue)
        if q is None:
            return 0
        return max(0, q.free - q.buffered)

    def set_backlog(self, queue: str, partition: int, backlog: bool) -> None:
        """Flag (or clear) PENDING rows in the database at ``partition`` or ALL_PARTITIONS."""
        if partition != ALL_PARTITIONS:
            self._check_partition(partition)
        q = self._queues.get(queue)
        if q is None:
            if not backlog:
                return
            q = self._queue(queue)
        lo = 0 if partition == ALL_PARTITIONS else partition
        hi = self._num_partitions if partition == ALL_PARTITIONS else partition + 1
        for p in range(lo, hi):
            if q.backlog[p] != backlog:
                q.backlog[p] = backlog
                q.backlog_count += 1 if backlog else -1
        if not backlog:
            self._forget_if_idle(q)

    # ----------------------------------------------------------------------------- reading

    def has_backlog(self, queue: str) -> bool:
        q = self._queues.get(queue)
        return q is not None and q.backlog_count > 0

    def buffered_count(self, queue: str) -> int:
        q = self._queues.get(queue)
        return 0 if q is None else q.buffered

    def waiting_workers(self, queue: str) -> int:
        """Live workers of ``queue`` with at least one free slot."""
        q = self._queues.get(queue)
        return 0 if q is None else q.waiting

    def queues(self) -> list[str]:
        """Queues with workers, buffered tasks or a backlog flag, in first-use order."""
        return list(self._queues)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: totals since start, except the current ``buffered``,
        ``workers`` and ``queues``. ``forwarded`` counts slots found above the partition."""
        return {
            "sync_matches": self._sync_matches,
            "reserved": self._reserved,
            "buffer_matches": self._buffer_matches,
            "forwarded": self._forwarded,
            "refused": self._refused,
            "rejected": self._rejected,
            "removed_tasks": self._removed_tasks,
            "buffered": len(self._tasks),
            "workers": len(self._workers),
            "queues": len(self._queues),
        }

    # ----------------------------------------------------------------------------- private

    def _check_partition(self, partition: int) -> None:
        if partition < 0 or partition >= self._num_partitions:
            raise ValueError(f"partition must be in [0, {self._num_partitions}), got {partition}")

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = _Queue(name, self._num_partitions)
            self._queues[name] = q
        return q

    def _forget_if_idle(self, q: _Queue) -> None:
        # A queue with nothing in it is dropped, so hostile queue names cannot grow memory.
        idle = q.members == 0 and q.buffered == 0 and q.backlog_count == 0
        if idle and self._queues.get(q.name) is q:
            del self._queues[q.name]

    def _unbuffer(self, t: _Task) -> None:
        # Leaves a stale FIFO entry behind; the level is purged once stale entries dominate.
        t.alive = False
        del self._tasks[t.key]
        q = t.queue
        q.buffered -= 1
        q.buffered_at[t.partition] -= 1
        level = q.priorities[t.priority]
        level.dead += 1
        if level.dead * 2 > len(level.items) - level.head:
            level.purge()

    def _take_slot(self, q: _Queue, partition: int) -> _Worker | None:
        """Spend one credit of the next worker in rotation at ``partition`` or above."""
        p = partition
        parents = self._parents
        while p >= 0:
            r = q.rotations[p]
            items = r.items
            n = len(items)
            head = r.head
            while head < n:
                s = items[head]
                head += 1
                w = s.worker
                if w.credits > 0:
                    if w.credits > 1:
                        items.append(s)  # back of the line: round-robin by worker
                    else:
                        s.queued = False
                    if head >= _COMPACT_AT and head * 2 >= n:
                        del items[:head]
                        head = 0
                    r.head = head
                    _spend(w)
                    if p != partition:
                        self._forwarded += 1
                    return w
                # Out of credit (a removed worker has none): rejoins when credit returns.
                s.queued = False
                if not w.alive:
                    r.dead -= 1
            items.clear()
            r.head = 0
            p = parents[p]
        return None

    def _drain(self, w: _Worker, out: list[tuple[int, int]]) -> None:
        """Let ``w`` take buffered tasks while it has credit, its queues taking turns."""
        if not self._tasks:
            return
        members = w.members
        count = len(members)
        i = w.next_member
        misses = 0
        while w.credits > 0 and misses < count:
            q = members[i].queue
            i += 1
            if i == count:
                i = 0
            if q.buffered == 0:
                misses += 1
                continue
            misses = 0
            t = self._pop_task(q)
            _spend(w)
            self._buffer_matches += 1
            out.append((t.key, w.key))
        w.next_member = i

    def _pop_task(self, q: _Queue) -> _Task:
        """Remove and return the best live buffered task; ``q.buffered`` must be > 0."""
        while True:
            priority = -q.levels[0]
            level = q.priorities[priority]
            items = level.items
            while level.head < len(items):
                t = items[level.head]
                level.head += 1
                if not t.alive:
                    level.dead -= 1
                    continue
                t.alive = False
                q.buffered -= 1
                q.buffered_at[t.partition] -= 1
                del self._tasks[t.key]
                if level.head >= _COMPACT_AT and level.head * 2 >= len(items):
                    del items[: level.head]
                    level.head = 0
                return t
            _heap_pop(q.levels)
            del q.priorities[priority]


def _spend(w: _Worker) -> None:
    w.credits -= 1
    exhausted = w.credits == 0
    for m in w.members:
        q = m.queue
        q.free -= 1
        if exhausted:
            q.waiting -= 1


def _enroll(w: _Worker) -> None:
    """Queue every slot of ``w`` that is not in its rotation (``w`` has credit)."""
    for m in w.members:
        rotations = m.queue.rotations
        for s in m.slots:
            if not s.queued:
                s.queued = True
                rotations[s.partition].items.append(s)


def _top_priority(q: _Queue) -> int:
    """Highest priority among live buffered tasks; ``q.buffered`` must be > 0."""
    while True:
        priority = -q.levels[0]
        if q.priorities[priority].live() > 0:
            return priority
        _heap_pop(q.levels)
        del q.priorities[priority]


def _emptiest(counts: list[int]) -> int:
    best = 0
    for p in range(1, len(counts)):
        if counts[p] < counts[best]:
            best = p
    return best


# A binary min-heap on list[int], written out rather than taken from heapq: heapq's functions
# are reached through a module attribute lookup from compiled code, these are native calls.
def _heap_push(heap: list[int], value: int) -> None:
    heap.append(value)
    i = len(heap) - 1
    while i > 0:
        up = (i - 1) >> 1
        if heap[up] <= value:
            break
        heap[i] = heap[up]
        i = up
    heap[i] = value


def _heap_pop(heap: list[int]) -> None:
    last = heap.pop()
    n = len(heap)
    if n == 0:
        return
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= last:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = last
