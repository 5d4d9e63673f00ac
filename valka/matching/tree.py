"""Partition arithmetic of a queue's forwarding tree.

Partition 0 is the root; the children of ``p`` are ``B*p + 1 .. B*p + B`` (those that exist),
so ``parent(p) = (p - 1) // B``. A task or a worker slot that finds no partner in its own
partition is offered to the parent, and so on up to the root, where everything meets.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ROOT", "children", "depth", "parent", "path_to_root"]

ROOT: Final = 0


def _check_partition(p: int) -> None:
    if p < 0:
        raise ValueError(f"partition must be >= 0, got {p}")


def _check_branching(branching: int) -> None:
    if branching < 1:
        raise ValueError(f"branching must be >= 1, got {branching}")


def parent(p: int, branching: int) -> int:
    """The partition a task or slot is forwarded to from ``p``; -1 for the root."""
    _check_partition(p)
    _check_branching(branching)
    if p == ROOT:
        return -1
    return (p - 1) // branching


def children(p: int, branching: int, num_partitions: int) -> list[int]:
    """The partitions whose parent is ``p``, in ascending order."""
    _check_partition(p)
    _check_branching(branching)
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if p >= num_partitions:
        raise ValueError(f"partition must be < num_partitions ({num_partitions}), got {p}")
    first = branching * p + 1
    last = min(first + branching, num_partitions)
    return list(range(first, last)) if first < last else []


def path_to_root(p: int, branching: int) -> list[int]:
    """``p``, its parent, ... up to and including the root."""
    _check_partition(p)
    _check_branching(branching)
    path = [p]
    # A loop, not recursion: with branching 1 the tree is a chain as long as the partition count.
    while p != ROOT:
        p = (p - 1) // branching
        path.append(p)
    return path


def depth(p: int, branching: int) -> int:
    """Number of forwarding hops from ``p`` to the root (0 for the root)."""
    return len(path_to_root(p, branching)) - 1
