"""Partition arithmetic of the forwarding tree."""

from __future__ import annotations

import pytest

from valka.matching.tree import ROOT, children, depth, parent, path_to_root


def test_root_has_no_parent() -> None:
    assert parent(ROOT, 2) == -1
    assert parent(ROOT, 20) == -1


def test_parent_with_branching_two() -> None:
    assert [parent(p, 2) for p in range(1, 8)] == [0, 0, 1, 1, 2, 2, 3]


def test_default_layout_is_flat() -> None:
    # Four partitions with a wide tree: every partition forwards straight to the root.
    assert [parent(p, 20) for p in range(1, 4)] == [0, 0, 0]


def test_path_to_root_eight_partitions_branching_two() -> None:
    assert path_to_root(1, 2) == [1, 0]
    assert path_to_root(7, 2) == [7, 3, 1, 0]
    assert path_to_root(ROOT, 2) == [0]
    assert depth(7, 2) == 3
    assert depth(ROOT, 2) == 0


def test_chain_when_branching_is_one() -> None:
    assert path_to_root(5, 1) == [5, 4, 3, 2, 1, 0]


def test_children_are_clipped_to_existing_partitions() -> None:
    assert children(0, 2, 8) == [1, 2]
    assert children(3, 2, 8) == [7]
    assert children(4, 2, 8) == []
    assert children(0, 20, 4) == [1, 2, 3]


def test_children_and_parent_agree() -> None:
    for branching in (1, 2, 3, 20):
        for p in range(40):
            for c in children(p, branching, 40):
                assert parent(c, branching) == p


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: parent(-1, 2), "partition"),
        (lambda: parent(3, 0), "branching"),
        (lambda: path_to_root(-2, 2), "partition"),
        (lambda: path_to_root(2, -1), "branching"),
        (lambda: children(8, 2, 8), "partition"),
        (lambda: children(0, 2, 0), "num_partitions"),
        (lambda: children(0, 0, 4), "branching"),
    ],
)
def test_bad_arguments_name_the_argument(call: object, name: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=name):
        call()
