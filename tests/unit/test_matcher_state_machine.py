"""Random interleavings of everything the server does to the matcher, checked against a model.

The model is deliberately naive (lists and sets, no tree): it knows which worker holds what,
which tasks are buffered, and what the matcher promised. After every step it checks that no
task was delivered twice or lost, that no worker holds more than its credits, that removed
workers get nothing, that a free slot and a buffered task of the same queue never coexist,
and that buffered tasks leave in priority order, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from valka.matching.matcher import ALL_PARTITIONS, NO_WORKER, Matcher, Offer

QUEUES = ("a", "b", "c")
NUM_PARTITIONS = 4
BRANCHING = 2
CAP = 3
WORKER_KEYS = st.integers(min_value=0, max_value=5)
PRIORITIES = st.integers(min_value=-1, max_value=2)
PARTITIONS = st.integers(min_value=0, max_value=NUM_PARTITIONS - 1)


@dataclass
class WorkerModel:
    queues: frozenset[str]
    free: int  # free slots as the server counts them: spent by deliveries, given back
    held: set[int] = field(default_factory=set)  # tasks (> 0) and hot reservations (< 0)


@dataclass
class Buffered:
    queue: str
    partition: int
    priority: int
    seq: int


class MatcherMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Matcher(NUM_PARTITIONS, BRANCHING, CAP)
        self.workers: dict[int, WorkerModel] = {}  # live workers only
        self.removed: set[int] = set()
        self.buffered: dict[int, Buffered] = {}
        self.delivered: dict[int, int] = {}  # task -> worker, every delivery ever
        self.rejected: set[int] = set()
        self.cancelled: set[int] = set()
        self.finished: set[int] = set()
        self.backlog: dict[str, set[int]] = {q: set() for q in QUEUES}
        self.next_task = 1  # offered tasks are 1, 2, 3, ...
        self.next_reservation = -1  # hot-path reservations are -1, -2, ... (never offered)
        self.seq = 0

    # --------------------------------------------------------------------------- helpers

    def new_task(self) -> int:
        self.next_task += 1
        return self.next_task - 1

    def free_workers_of(self, queue: str) -> list[int]:
        return [k for k, w in self.workers.items() if queue in w.queues and w.free > 0]

    def deliver(self, task: int, worker: int) -> None:
        assert task not in self.delivered, f"task {task} delivered twice"
        model = self.workers.get(worker)
        assert model is not None, f"unknown or removed worker {worker} got a task"
        assert model.free > 0, f"worker {worker} got more tasks than its credits"
        model.free -= 1
        model.held.add(task)
        self.delivered[task] = worker

    def take_buffered(self, matches: list[tuple[int, int]]) -> None:
        """Check and record matches of buffered tasks, in the order they were made."""
        if matches:
            event("buffered tasks matched")
        for task, worker in matches:
            assert task in self.buffered, f"task {task} was not buffered"
            entry = self.buffered[task]
            assert entry.queue in self.workers[worker].queues, "task of a queue it does not serve"
            rivals = [b for b in self.buffered.values() if b.queue == entry.queue]
            best = max(rivals, key=lambda b: (b.priority, -b.seq))
            assert entry is best, "buffered tasks must leave by priority, then age"
            del self.buffered[task]
            self.deliver(task, worker)

    # ----------------------------------------------------------------------------- rules

    @rule(
        key=WORKER_KEYS,
        queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3),
        credits=st.integers(min_value=0, max_value=3),
    )
    def add_worker(self, key: int, queues: list[str], credits: int) -> None:
        if key in self.workers:
            return
        self.workers[key] = WorkerModel(frozenset(queues), free=credits)
        self.removed.discard(key)
        self.take_buffered(self.m.add_worker(key, queues, credits))

    @rule(data=st.data())
    def remove_worker(self, data: st.DataObject) -> None:
        if not self.workers:
            return
        key = data.draw(st.sampled_from(sorted(self.workers)))
        self.m.remove_worker(key)
        model = self.workers.pop(key)
        self.finished |= model.held  # the server's problem now: released to the database
        self.removed.add(key)

    @rule(data=st.data(), n=st.integers(min_value=1, max_value=3))
    def finish_tasks(self, data: st.DataObject, n: int) -> None:
        busy = sorted(k for k, w in self.workers.items() if w.held)
        if not busy:
            return
        key = data.draw(st.sampled_from(busy))
        model = self.workers[key]
        done = sorted(model.held)[:n]
        for task in done:
            model.held.discard(task)
            self.finished.add(task)
        model.free += len(done)
        self.take_buffered(self.m.add_credit(key, len(done)))

    @rule(key=WORKER_KEYS, n=st.integers(min_value=1, max_value=2))
    def grant_credit(self, key: int, n: int) -> None:
        matches = self.m.add_credit(key, n)
        if key not in self.workers:
            assert matches == [], "a removed or unknown worker must get nothing"
            return
        self.workers[key].free += n
        self.take_buffered(matches)

    @rule(queue=st.sampled_from(QUEUES), partition=PARTITIONS, priority=PRIORITIES)
    def reserve(self, queue: str, partition: int, priority: int) -> None:
        worker = self.m.reserve(queue, partition, priority)
        backlog = bool(self.backlog[queue]) or any(
            b.queue == queue and b.priority >= priority for b in self.buffered.values()
        )
        if backlog:
            event("reserve: refused")
            assert worker == NO_WORKER, "a new task overtook older pending ones"
            return
        if worker == NO_WORKER:
            event("reserve: no slot")
            assert not self.free_workers_of(queue), "a free slot was not found"
            return
        event("reserve: reserved")
        assert queue in self.workers[worker].queues
        self.deliver(self.next_reservation, worker)
        self.next_reservation -= 1

    @rule(data=st.data())
    def unreserve(self, data: st.DataObject) -> None:
        holders = sorted(k for k, w in self.workers.items() if any(t < 0 for t in w.held))
        if not holders:
            return
        key = data.draw(st.sampled_from(holders))
        model = self.workers[key]
        reservation = max(t for t in model.held if t < 0)
        model.held.discard(reservation)
        model.free += 1
        del self.delivered[reservation]  # the insert failed: it never existed
        self.take_buffered(self.m.unreserve(key))

    @rule(
        queue=st.sampled_from(QUEUES),
        partition=PARTITIONS,
        priorities=st.lists(PRIORITIES, min_size=1, max_size=6),
    )
    def offer_batch(self, queue: str, partition: int, priorities: list[int]) -> None:
        for priority in priorities:
            task = self.new_task()
            result, worker = self.m.offer(queue, partition, task, priority)
            in_partition = sum(
                1 for b in self.buffered.values() if b.queue == queue and b.partition == partition
            )
            event(f"offer: {result.name}")
            if result is Offer.MATCHED:
                assert queue in self.workers[worker].queues
                self.deliver(task, worker)
                continue
            assert worker == NO_WORKER
            assert not self.free_workers_of(queue), "buffered or rejected beside a free slot"
            if result is Offer.BUFFERED:
                assert in_partition < CAP
                self.seq += 1
                self.buffered[task] = Buffered(queue, partition, priority, self.seq)
            else:
                assert result is Offer.REJECTED
                assert in_partition == CAP
                self.rejected.add(task)

    @rule(data=st.data())
    def remove_task(self, data: st.DataObject) -> None:
        candidates = [*sorted(self.buffered), self.next_task + 100, *sorted(self.delivered)[-3:]]
        task = data.draw(st.sampled_from(candidates))
        assert self.m.remove_task(task) == (task in self.buffered)
        if task in self.buffered:
            del self.buffered[task]
            self.cancelled.add(task)

    @rule(
        queue=st.sampled_from(QUEUES),
        partition=st.one_of(st.just(ALL_PARTITIONS), PARTITIONS),
        flag=st.booleans(),
    )
    def set_backlog(self, queue: str, partition: int, flag: bool) -> None:
        self.m.set_backlog(queue, partition, flag)
        parts = range(NUM_PARTITIONS) if partition == ALL_PARTITIONS else [partition]
        for p in parts:
            if flag:
                self.backlog[queue].add(p)
            else:
                self.backlog[queue].discard(p)

    @rule(queue=st.sampled_from(QUEUES), partition=st.one_of(st.just(ALL_PARTITIONS), PARTITIONS))
    def release(self, queue: str, partition: int) -> None:
        keys = self.m.release(queue, partition)
        expected = {
            t
            for t, b in self.buffered.items()
            if b.queue == queue and partition in (ALL_PARTITIONS, b.partition)
        }
        assert sorted(keys) == sorted(expected)
        for t in keys:
            del self.buffered[t]
            self.cancelled.add(t)

    # ------------------------------------------------------------------------ invariants

    @invariant()
    def every_task_is_in_exactly_one_place(self) -> None:
        offered = set(range(1, self.next_task))
        delivered = {t for t in self.delivered if t > 0}
        places: list[set[int]] = [set(self.buffered), delivered, self.rejected, self.cancelled]
        everywhere: set[int] = set().union(*places)
        assert sum(len(p) for p in places) == len(everywhere), "a task is in two places"
        assert everywhere == offered, f"tasks lost: {sorted(offered - everywhere)}"
        for model in self.workers.values():
            assert model.held <= set(self.delivered)

    @invariant()
    def counts_agree_with_the_model(self) -> None:
        for q in QUEUES:
            buffered = sum(1 for b in self.buffered.values() if b.queue == q)
            assert self.m.buffered_count(q) == buffered
            free = [w.free for w in self.workers.values() if q in w.queues]
            assert self.m.waiting_workers(q) == sum(1 for f in free if f > 0)
            for p in range(NUM_PARTITIONS):
                assert self.m.demand(q, p) == max(0, sum(free) - buffered)
            assert self.m.has_backlog(q) == bool(self.backlog[q])
        assert self.m.stats()["buffered"] == len(self.buffered)
        assert self.m.stats()["workers"] == len(self.workers)

    @invariant()
    def credits_are_never_exceeded(self) -> None:
        for key, model in self.workers.items():
            assert model.free >= 0
            assert self.m.free_credits(key) == model.free
        for key in self.removed - set(self.workers):
            assert self.m.free_credits(key) == 0

    @invariant()
    def no_idle_slot_beside_a_buffered_task(self) -> None:
        for b in self.buffered.values():
            assert not self.free_workers_of(b.queue), f"idle slot while {b.queue} has work"


MatcherMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_matcher_state_machine = MatcherMachine.TestCase
