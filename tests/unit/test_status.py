from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from valka.core.errors import InvalidArgument
from valka.core.status import (
    TERMINAL,
    TRANSITIONS,
    TaskStatus,
    allowed_from,
    can_transition,
    is_terminal,
    status_from_name,
)
from valka.v1 import common_pb2

REPO = Path(__file__).resolve().parents[2]
S = TaskStatus

# Written out independently of the module so that a slip in either shows up here.
EXPECTED: dict[TaskStatus, set[TaskStatus]] = {
    S.UNSPECIFIED: set(),
    S.PENDING: {S.DISPATCHING, S.CANCELLED},
    S.DISPATCHING: {S.RUNNING, S.PENDING, S.CANCELLED},
    S.RUNNING: {S.COMPLETED, S.FAILED, S.RETRY, S.DEAD_LETTER, S.CANCELLED},
    S.RETRY: {S.PENDING, S.CANCELLED},
    S.COMPLETED: set(),
    S.FAILED: {S.PENDING},
    S.DEAD_LETTER: {S.PENDING},
    S.CANCELLED: set(),
}


@pytest.mark.parametrize(("a", "b"), list(itertools.product(TaskStatus, repeat=2)))
def test_every_pair_matches_the_table(a: TaskStatus, b: TaskStatus) -> None:
    assert can_transition(a, b) is (b in EXPECTED[a])


def test_allowed_from_is_the_table() -> None:
    for status in TaskStatus:
        assert allowed_from(status) == frozenset(EXPECTED[status])
        assert isinstance(allowed_from(status), frozenset)


def test_numbers_match_the_protobuf_enum() -> None:
    proto = {
        name.removeprefix("TASK_STATUS_"): number for name, number in common_pb2.TaskStatus.items()
    }
    assert proto == {s.name: s.value for s in TaskStatus}


def test_names_match_the_postgres_enum() -> None:
    sql = "\n".join(p.read_text() for p in sorted((REPO / "schema").glob("*.sql")))
    match = re.search(r"CREATE TYPE task_status AS ENUM \((.*?)\)", sql, re.S | re.I)
    assert match is not None, "schema/ defines no task_status enum"
    labels = re.findall(r"'([A-Z_]+)'", match.group(1))
    assert labels == [s.name for s in TaskStatus if s is not S.UNSPECIFIED]


def test_terminal_states() -> None:
    assert {s for s in TaskStatus if is_terminal(s)} == {
        S.COMPLETED,
        S.FAILED,
        S.DEAD_LETTER,
        S.CANCELLED,
    }
    assert frozenset(TERMINAL) == {s for s in TaskStatus if is_terminal(s)}


def test_terminal_states_only_leave_by_operator_requeue() -> None:
    for status in TERMINAL:
        exits = allowed_from(status)
        if status in (S.FAILED, S.DEAD_LETTER):
            assert exits == {S.PENDING}
        else:
            assert exits == frozenset()


def test_cancel_is_possible_from_every_live_state() -> None:
    live = [s for s in TaskStatus if s is not S.UNSPECIFIED and not is_terminal(s)]
    assert live == [S.PENDING, S.DISPATCHING, S.RUNNING, S.RETRY]
    assert all(can_transition(s, S.CANCELLED) for s in live)


def test_every_state_is_reachable_from_pending() -> None:
    seen = {S.PENDING}
    frontier = [S.PENDING]
    while frontier:
        for nxt in allowed_from(frontier.pop()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(TaskStatus) - {S.UNSPECIFIED}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("RUNNING", S.RUNNING),
        ("running", S.RUNNING),
        (" Dead_Letter ", S.DEAD_LETTER),
        ("TASK_STATUS_CANCELLED", S.CANCELLED),
        ("task_status_pending", S.PENDING),
    ],
)
def test_status_from_name_accepts_all_spellings(text: str, expected: TaskStatus) -> None:
    assert status_from_name(text) is expected


@pytest.mark.parametrize("text", ["", "UNSPECIFIED", "TASK_STATUS_UNSPECIFIED", "DONE", "3"])
def test_status_from_name_rejects_unknown_names(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        status_from_name(text, field="filter.status")
    assert info.value.field == "filter.status"
    assert info.value.message.startswith("filter.status: unknown task status")
    assert "PENDING" in info.value.message


def test_db_name_round_trips() -> None:
    for status in TaskStatus:
        if status is not S.UNSPECIFIED:
            assert status_from_name(status.name) is status


def _doc_table() -> dict[TaskStatus, set[TaskStatus]]:
    text = (REPO / "docs" / "state_machine.md").read_text()
    section = text.split("## Transition table", 1)[1].split("\n## ", 1)[0]
    table: dict[TaskStatus, set[TaskStatus]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("from", "") or set(cells[0]) <= {"-"}:
            continue
        source = TaskStatus[cells[0]]
        assert source not in table, f"{source.name} appears twice in the doc table"
        targets = [] if cells[1] == "(none)" else [t.strip() for t in cells[1].split(",")]
        table[source] = {TaskStatus[t] for t in targets}
    return table


def test_docs_state_machine_table_matches_code() -> None:
    doc = _doc_table()
    code = {s: set(t) for s, t in TRANSITIONS.items() if s is not S.UNSPECIFIED}
    assert doc == code, "docs/state_machine.md and valka/core/status.py disagree"
