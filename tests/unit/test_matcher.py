"""The in-memory matcher: sync matches, buffering, the tree, fairness, ordering, flow control."""

from __future__ import annotations

import pytest

from valka.matching.matcher import ALL_PARTITIONS, NO_WORKER, Matcher, Offer

Q = "emails"


def one_partition(cap: int = 100) -> Matcher:
    return Matcher(num_partitions=1, branching_factor=2, max_buffer_per_partition=cap)


# ------------------------------------------------------------------------------ basic matches


def test_sync_match_with_a_waiting_worker() -> None:
    m = one_partition()
    assert m.add_worker(7, [Q], credits=1) == []
    assert m.offer(Q, 0, task=100, priority=0) == (Offer.MATCHED, 7)
    assert m.free_credits(7) == 0
    assert m.buffered_count(Q) == 0
    assert m.stats()["sync_matches"] == 1


def test_no_match_without_a_worker() -> None:
    m = one_partition()
    assert m.offer(Q, 0, task=100, priority=0) == (Offer.BUFFERED, NO_WORKER)
    assert m.reserve(Q, 0, priority=0) == NO_WORKER
    assert m.buffered_count(Q) == 1
    assert m.waiting_workers(Q) == 0


def test_reserve_on_an_unknown_queue_creates_nothing() -> None:
    m = one_partition()
    assert m.reserve("nobody-serves-this", 0, 0) == NO_WORKER
    assert m.queues() == []


def test_buffered_tasks_are_matched_when_a_worker_registers() -> None:
    m = one_partition()
    for task in (1, 2, 3):
        assert m.offer(Q, 0, task, 0)[0] is Offer.BUFFERED
    assert m.add_worker(9, [Q], credits=2) == [(1, 9), (2, 9)]
    assert m.buffered_count(Q) == 1
    assert m.add_credit(9, 1) == [(3, 9)]
    assert m.buffered_count(Q) == 0
    assert m.stats()["buffer_matches"] == 3


def test_hot_path_reserve_and_unreserve() -> None:
    m = one_partition()
    m.add_worker(1, [Q], credits=1)
    assert m.reserve(Q, 0, 0) == 1
    assert m.reserve(Q, 0, 0) == NO_WORKER
    assert m.free_credits(1) == 0
    # The insert failed: the slot comes back and is usable again.
    assert m.unreserve(1) == []
    assert m.free_credits(1) == 1
    assert m.reserve(Q, 0, 0) == 1


def test_unreserve_hands_the_slot_to_a_buffered_task() -> None:
    m = one_partition()
    m.add_worker(1, [Q], credits=1)
    assert m.reserve(Q, 0, 0) == 1
    assert m.offer(Q, 0, 50, 0)[0] is Offer.BUFFERED
    assert m.unreserve(1) == [(50, 1)]


# ---------------------------------------------------------------------------- deregistration


def test_deregistered_worker_is_gone_from_every_partition() -> None:
    m = Matcher(num_partitions=8, branching_factor=2, max_buffer_per_partition=10)
    m.add_worker(1, [Q], credits=100)
    m.remove_worker(1)
    for p in range(8):
        assert m.reserve(Q, p, 0) == NO_WORKER
        assert m.offer(Q, p, 100 + p, 0) == (Offer.BUFFERED, NO_WORKER)
    assert m.waiting_workers(Q) == 0
    assert m.free_credits(1) == 0
    assert m.demand(Q, 0) == 0


def test_a_removed_worker_is_skipped_and_late_calls_are_no_ops() -> None:
    m = one_partition()
    m.add_worker(1, [Q], credits=5)
    m.add_worker(2, [Q], credits=5)
    m.remove_worker(1)
    assert [m.offer(Q, 0, t, 0) for t in range(3)] == [(Offer.MATCHED, 2)] * 3
    # A late result or a failed insert of the removed worker changes nothing.
    assert m.add_credit(1, 3) == []
    assert m.unreserve(1) == []
    m.remove_worker(1)
    assert m.free_credits(1) == 0
    assert m.stats()["workers"] == 1


def test_a_worker_key_can_register_again_after_removal() -> None:
    m = one_partition()
    m.add_worker(1, [Q], credits=1)
    m.remove_worker(1)
    m.add_worker(1, [Q], credits=2)
    assert m.reserve(Q, 0, 0) == 1
    assert m.reserve(Q, 0, 0) == 1
    assert m.reserve(Q, 0, 0) == NO_WORKER


# ------------------------------------------------------------------------------- fairness


def test_slots_are_served_round_robin_across_workers() -> None:
    m = one_partition()
    for w in (1, 2, 3):
        m.add_worker(w, [Q], credits=3)
    got = [m.offer(Q, 0, t, 0)[1] for t in range(9)]
    assert got == [1, 2, 3, 1, 2, 3, 1, 2, 3]


def test_a_fast_worker_cannot_starve_the_others() -> None:
    m = one_partition()
    for w in (1, 2, 3):
        m.add_worker(w, [Q], credits=2)
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(30):
        w = m.reserve(Q, 0, 0)
        counts[w] += 1
        if w == 1:
            m.add_credit(1, 1)  # worker 1 finishes at once, every time
        elif counts[w] % 2 == 0:
            m.add_credit(w, 2)
    assert counts == {1: 10, 2: 10, 3: 10}


def test_homes_are_spread_across_partitions() -> None:
    m = Matcher(num_partitions=4, branching_factor=20, max_buffer_per_partition=10)
    for w in range(8):
        m.add_worker(w, [Q], credits=1)
    # Locality first: a task at a leaf goes to the worker whose home is that leaf.
    assert m.offer(Q, 3, 100, 0) == (Offer.MATCHED, 3)
    assert m.offer(Q, 2, 101, 0) == (Offer.MATCHED, 2)
    assert m.stats()["forwarded"] == 0


# ---------------------------------------------------------------------------- the tree


def test_task_at_partition_one_reaches_a_worker_at_the_root() -> None:
    m = Matcher(num_partitions=8, branching_factor=2, max_buffer_per_partition=10)
    m.add_worker(1, [Q], credits=1)  # first worker: home is the root
    assert m.offer(Q, 1, 100, 0) == (Offer.MATCHED, 1)
    assert m.stats()["forwarded"] == 1


def test_task_at_partition_seven_reaches_a_worker_at_the_root() -> None:
    m = Matcher(num_partitions=8, branching_factor=2, max_buffer_per_partition=10)
    m.add_worker(1, [Q], credits=2)
    assert m.offer(Q, 7, 100, 0) == (Offer.MATCHED, 1)
    assert m.reserve(Q, 7, 0) == 1
    assert m.stats()["forwarded"] == 2


def _workers_at_every_home(m: Matcher) -> None:
    # Homes go to the emptiest partition, lowest first: worker w lives at partition w.
    for w in range(8):
        m.add_worker(w, [Q], credits=0)


def test_worker_at_seven_finds_a_task_buffered_at_the_root() -> None:
    m = Matcher(num_partitions=8, branching_factor=2, max_buffer_per_partition=10)
    _workers_at_every_home(m)
    assert m.offer(Q, 0, 100, 0)[0] is Offer.BUFFERED
    assert m.add_credit(7, 1) == [(100, 7)]


def test_worker_at_seven_finds_a_task_in_another_subtree_via_the_root() -> None:
    m = Matcher(num_partitions=8, branching_factor=2, max_buffer_per_partition=10)
    _workers_at_every_home(m)
    # 7 -> 3 -> 1 -> 0 and 6 -> 2 -> 0 only meet at the root; nothing stays stranded at 6.
    assert m.offer(Q, 6, 100, 0)[0] is Offer.BUFFERED
    assert m.offer(Q, 4, 101, 0)[0] is Offer.BUFFERED
    assert m.add_credit(7, 2) == [(100, 7), (101, 7)]


def test_slot_prefers_its_own_partition_then_its_ancestors() -> None:
    m = Matcher(num_partitions=8, branching_factor=2, max_buffer_per_partition=10)
    _workers_at_every_home(m)
    m.add_credit(3, 1)
    m.add_credit(7, 1)
    # A task at 7 takes the slot waiting at 7 first, then the one waiting at its parent 3.
    assert m.offer(Q, 7, 100, 0) == (Offer.MATCHED, 7)
    assert m.offer(Q, 7, 101, 0) == (Offer.MATCHED, 3)
    assert m.stats()["forwarded"] == 1


# --------------------------------------------------------------------------- buffer limits


def test_buffer_overflow_at_the_cap_is_rejected_not_dropped() -> None:
    m = Matcher(num_partitions=2, branching_factor=2, max_buffer_per_partition=3)
    assert [m.offer(Q, 0, t, 0)[0] for t in range(3)] == [Offer.BUFFERED] * 3
    assert m.offer(Q, 0, 3, 0) == (Offer.REJECTED, NO_WORKER)
    # The cap is per partition.
    assert m.offer(Q, 1, 4, 0)[0] is Offer.BUFFERED
    assert m.stats()["rejected"] == 1
    assert m.buffered_count(Q) == 4
    # Room again once a task leaves the full partition.
    m.add_worker(1, [Q], credits=1)
    assert m.offer(Q, 0, 3, 0)[0] is Offer.BUFFERED


def test_a_zero_cap_never_buffers() -> None:
    m = Matcher(num_partitions=1, branching_factor=2, max_buffer_per_partition=0)
    assert m.offer(Q, 0, 1, 0) == (Offer.REJECTED, NO_WORKER)
    assert m.queues() == []
    m.add_worker(1, [Q], credits=1)
    assert m.offer(Q, 0, 1, 0) == (Offer.MATCHED, 1)


# --------------------------------------------------------------------------- isolation


def test_queues_are_isolated() -> None:
    m = one_partition()
    m.add_worker(1, ["a"], credits=5)
    assert m.offer("b", 0, 100, 0) == (Offer.BUFFERED, NO_WORKER)
    assert m.reserve("b", 0, 0) == NO_WORKER
    m.set_backlog("b", ALL_PARTITIONS, True)
    assert m.reserve("a", 0, 0) == 1
    assert m.buffered_count("a") == 0
    assert m.buffered_count("b") == 1
    assert sorted(m.queues()) == ["a", "b"]


def test_credits_are_shared_across_a_workers_queues() -> None:
    m = one_partition()
    m.add_worker(1, ["a", "b"], credits=2)
    assert m.offer("a", 0, 1, 0) == (Offer.MATCHED, 1)
    assert m.offer("b", 0, 2, 0) == (Offer.MATCHED, 1)
    assert m.offer("a", 0, 3, 0)[0] is Offer.BUFFERED
    assert m.offer("b", 0, 4, 0)[0] is Offer.BUFFERED
    assert m.offer("b", 0, 5, 0)[0] is Offer.BUFFERED
    # Freed slots alternate between the worker's queues.
    assert m.add_credit(1, 3) == [(3, 1), (4, 1), (5, 1)]


def test_many_buffered_tasks_to_many_workers() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=1000)
    for t in range(200):
        assert m.offer(Q, t % 4, t, 0)[0] is Offer.BUFFERED
    delivered: dict[int, int] = {}
    for w in range(20):
        for task, worker in m.add_worker(w, [Q], credits=10):
            assert worker == w
            assert task not in delivered
            delivered[task] = worker
    assert sorted(delivered) == list(range(200))
    assert all(list(delivered.values()).count(w) == 10 for w in range(20))
    assert m.buffered_count(Q) == 0
    assert m.waiting_workers(Q) == 0


# ----------------------------------------------------------------------------- ordering


def test_priority_first_then_age() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=100)
    offered = [(10, 0, 0), (11, 5, 3), (12, 0, 2), (13, 5, 1), (14, 1, 0), (15, -3, 3)]
    for task, priority, partition in offered:
        assert m.offer(Q, partition, task, priority)[0] is Offer.BUFFERED
    matches = m.add_worker(1, [Q], credits=10)
    assert [task for task, _ in matches] == [11, 13, 14, 10, 12, 15]


def test_no_overtaking_while_older_tasks_of_equal_or_higher_priority_wait() -> None:
    m = one_partition()
    m.add_worker(1, [Q], credits=1)
    assert m.reserve(Q, 0, 0) == 1  # the only slot is busy
    assert m.offer(Q, 0, 100, 3)[0] is Offer.BUFFERED
    refused = m.stats()["refused"]
    assert m.reserve(Q, 0, 3) == NO_WORKER
    assert m.reserve(Q, 0, 2) == NO_WORKER
    assert m.stats()["refused"] == refused + 2
    # A higher priority is not held back by the backlog (there is just no slot).
    assert m.reserve(Q, 0, 4) == NO_WORKER
    assert m.stats()["refused"] == refused + 2
    # The freed slot goes to the waiting task, not to a newcomer.
    assert m.add_credit(1, 1) == [(100, 1)]


def test_backlog_flag_refuses_the_hot_path_until_cleared() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=10)
    m.add_worker(1, [Q], credits=5)
    m.set_backlog(Q, 2, True)
    assert m.has_backlog(Q)
    # Refused on every partition and priority: PENDING rows are older than any new task.
    for p in range(4):
        assert m.reserve(Q, p, 1000) == NO_WORKER
    assert m.free_credits(1) == 5
    # The cold path still delivers the claimed rows.
    assert m.offer(Q, 2, 100, 0) == (Offer.MATCHED, 1)
    m.set_backlog(Q, 2, False)
    assert not m.has_backlog(Q)
    assert m.reserve(Q, 0, 0) == 1


def test_backlog_flag_for_all_partitions() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=10)
    m.add_worker(1, [Q], credits=5)
    m.set_backlog(Q, ALL_PARTITIONS, True)
    m.set_backlog(Q, 1, False)
    assert m.reserve(Q, 1, 0) == NO_WORKER  # partitions 0, 2, 3 are still behind
    m.set_backlog(Q, ALL_PARTITIONS, False)
    assert m.reserve(Q, 1, 0) == 1


# -------------------------------------------------------------------------- flow control


def test_credits_are_never_exceeded() -> None:
    m = one_partition()
    m.add_worker(1, [Q], credits=2)
    results = [m.offer(Q, 0, t, 0) for t in range(5)]
    assert results[:2] == [(Offer.MATCHED, 1)] * 2
    assert [r[0] for r in results[2:]] == [Offer.BUFFERED] * 3
    assert m.reserve(Q, 0, 100) == NO_WORKER
    assert m.free_credits(1) == 0
    assert m.add_credit(1, 1) == [(2, 1)]
    assert m.add_credit(1, 5) == [(3, 1), (4, 1)]
    assert m.free_credits(1) == 3


def test_demand_counts_free_slots_minus_buffered_tasks() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=10)
    assert m.demand(Q, 0) == 0
    m.add_worker(1, [Q], credits=3)
    m.add_worker(2, [Q], credits=2)
    assert [m.demand(Q, p) for p in range(4)] == [5, 5, 5, 5]
    m.offer(Q, 3, 1, 0)
    assert m.reserve(Q, 1, 0) != NO_WORKER
    assert m.demand(Q, 0) == 3
    for t in range(2, 8):
        m.offer(Q, 2, t, 0)
    assert m.demand(Q, 2) == 0
    assert m.buffered_count(Q) == 3
    m.remove_worker(2)
    assert m.demand(Q, 2) == 0


# --------------------------------------------------------------------------- cancellation


def test_remove_task_takes_a_buffered_task_out() -> None:
    m = one_partition()
    for t in (1, 2, 3):
        m.offer(Q, 0, t, 0)
    assert m.remove_task(2) is True
    assert m.remove_task(2) is False
    assert m.remove_task(999) is False
    assert m.buffered_count(Q) == 2
    assert m.add_worker(1, [Q], credits=5) == [(1, 1), (3, 1)]
    # A task that was matched is not buffered any more.
    assert m.remove_task(1) is False
    assert m.stats()["removed_tasks"] == 1


def test_release_returns_the_buffered_tasks_of_a_partition() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=10)
    for t in range(8):
        m.offer(Q, t % 4, t, t % 3)
    assert sorted(m.release(Q, 1)) == [1, 5]
    assert m.buffered_count(Q) == 6
    assert sorted(m.release(Q, ALL_PARTITIONS)) == [0, 2, 3, 4, 6, 7]
    assert m.buffered_count(Q) == 0
    assert m.queues() == []
    assert m.release(Q, ALL_PARTITIONS) == []


def test_duplicate_offer_of_a_buffered_task_is_refused() -> None:
    m = one_partition()
    m.offer(Q, 0, 1, 0)
    with pytest.raises(ValueError, match="task 1"):
        m.offer("other", 0, 1, 0)


# ---------------------------------------------------------------------------- boundedness


def test_idle_queues_are_forgotten() -> None:
    m = one_partition()
    for i in range(100):
        name = f"q{i}"
        m.offer(name, 0, i, 0)
        m.remove_task(i)
        m.add_worker(1000 + i, [name], credits=1)
        m.remove_worker(1000 + i)
        m.set_backlog(name, 0, True)
        m.set_backlog(name, 0, False)
    assert m.queues() == []


def test_worker_churn_does_not_grow_rotations() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=10)
    m.add_worker(0, [Q], credits=1)  # keeps the queue alive while others come and go
    for w in range(1, 2000):
        m.add_worker(w, [Q], credits=3)
        m.remove_worker(w)
    rotations = m._queues[Q].rotations
    assert all(len(r.items) - r.head <= 4 for r in rotations)


def test_credit_cycling_does_not_grow_rotations() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=10)
    for w in range(4):
        m.add_worker(w, [Q], credits=1)
    for t in range(5000):
        w = m.reserve(Q, t % 4, 0)
        assert w != NO_WORKER
        m.add_credit(w, 1)
    rotations = m._queues[Q].rotations
    # At most one entry per worker slot, plus consumed entries not yet cut away.
    assert all(len(r.items) - r.head <= 4 for r in rotations)
    assert all(len(r.items) <= 200 for r in rotations)


def test_cancellation_churn_does_not_grow_buffers() -> None:
    m = one_partition(cap=10)
    m.offer(Q, 0, -1, 0)  # one long-lived task keeps a live entry at the front
    for t in range(5000):
        m.offer(Q, 0, t, 0)
        assert m.remove_task(t)
    level = m._queues[Q].priorities[0]
    assert len(level.items) - level.head <= 2
    assert m.buffered_count(Q) == 1


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_partitions": 0, "branching_factor": 2, "max_buffer_per_partition": 1}, "num_p"),
        ({"num_partitions": 5000, "branching_factor": 2, "max_buffer_per_partition": 1}, "num_p"),
        ({"num_partitions": 4, "branching_factor": 0, "max_buffer_per_partition": 1}, "branch"),
        ({"num_partitions": 4, "branching_factor": 2, "max_buffer_per_partition": -1}, "max_buf"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Matcher(**kwargs)


def test_bad_calls_name_the_argument_and_change_nothing() -> None:
    m = Matcher(num_partitions=4, branching_factor=2, max_buffer_per_partition=10)
    m.add_worker(1, [Q], credits=1)
    with pytest.raises(ValueError, match="partition"):
        m.offer(Q, 4, 1, 0)
    with pytest.raises(ValueError, match="partition"):
        m.reserve(Q, -1, 0)
    with pytest.raises(ValueError, match="partition"):
        m.demand(Q, 9)
    with pytest.raises(ValueError, match="partition"):
        m.set_backlog(Q, 4, True)
    with pytest.raises(ValueError, match="credits"):
        m.add_worker(2, [Q], credits=-1)
    with pytest.raises(ValueError, match="worker"):
        m.add_worker(-5, [Q], credits=1)
    with pytest.raises(ValueError, match="already registered"):
        m.add_worker(1, [Q], credits=1)
    with pytest.raises(ValueError, match="queues"):
        m.add_worker(3, [], credits=1)
    with pytest.raises(ValueError, match="queues"):
        m.add_worker(3, [""], credits=1)
    with pytest.raises(ValueError, match="n must be"):
        m.add_credit(1, 0)
    assert m.free_credits(1) == 1
    assert m.buffered_count(Q) == 0
    assert m.stats()["workers"] == 1


def test_duplicate_queue_names_count_once() -> None:
    m = one_partition()
    m.add_worker(1, [Q, Q], credits=2)
    assert m.waiting_workers(Q) == 1
    assert m.demand(Q, 0) == 2
