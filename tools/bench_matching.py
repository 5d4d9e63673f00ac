"""Benchmark of the matcher: compiled (mypyc) against pure Python, in one run.

    python tools/bench_matching.py [--ops N] [--repeat R] [--build]

Each side runs in its own subprocess so that the two builds never share a process:
- pure: the repository root first on PYTHONPATH (the source tree never holds .so files);
- compiled: an installed compiled valka if the interpreter has one (unless --build), otherwise
  tree.py and matcher.py are compiled with mypyc into a temporary directory, which goes first
  on PYTHONPATH. An installed build may be older than the sources: the files each side
  loaded are printed.

The workload is a steady state driven from interpreted Python, as the server drives it:
several queues, many workers with a few credits each; new tasks try the hot path
(``reserve``), fall back to the cold path (``offer``) when refused, and finished tasks return
their credit (``add_credit``), which may hand out buffered tasks. An op is one engine call.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["valka/__init__.py", "valka/matching/__init__.py"]
COMPILED = ["valka/matching/tree.py", "valka/matching/matcher.py"]

NUM_QUEUES = 8
NUM_WORKERS = 256
CREDITS = 4
NUM_PARTITIONS = 4
BRANCHING = 2
# Tasks in flight before the oldest completes: three quarters of all credit, so that most new
# tasks find a slot at once and a few wait for one, as in a busy system that keeps up.
IN_FLIGHT = NUM_WORKERS * CREDITS * 3 // 4


def run_workload(ops: int, seed: int) -> tuple[int, int, float]:
    """Returns (engine calls, tasks matched, seconds)."""
    from valka.matching.matcher import Matcher, Offer

    rng = random.Random(seed)
    matcher = Matcher(NUM_PARTITIONS, BRANCHING, 10_000)
    queue_names = [f"queue-{i}" for i in range(NUM_QUEUES)]
    for w in range(NUM_WORKERS):
        served = [queue_names[w % NUM_QUEUES]]
        if w % 4 == 0:
            served.append(queue_names[(w + 1) % NUM_QUEUES])
        matcher.add_worker(w, served, CREDITS)

    def draw_plan() -> list[tuple[str, int, int]]:
        # Drawn beforehand so that the timed loop measures the engine, not the random module.
        return [
            (
                queue_names[rng.randrange(NUM_QUEUES)],
                rng.randrange(NUM_PARTITIONS),
                rng.choice((0, 0, 0, 1, 5)),
            )
            for _ in range(2048)
        ]

    cold_plan = draw_plan()  # tasks written PENDING and claimed by a reader: offer
    hot_plan = draw_plan()  # new tasks trying the hot path first: reserve, else offer

    matched = Offer.MATCHED
    reserve = matcher.reserve
    offer = matcher.offer
    add_credit = matcher.add_credit
    # Workers of the tasks in flight, oldest first. Every new task is followed by the
    # completion of the oldest one, so in flight plus buffered stays at IN_FLIGHT.
    in_flight: deque[int] = deque()
    push = in_flight.append
    pop = in_flight.popleft
    task = 0
    for q, p, prio in (cold_plan * 2)[:IN_FLIGHT]:
        task += 1
        result, w = offer(q, p, task, prio)
        if result is matched:
            push(w)

    def matched_so_far() -> int:
        stats = matcher.stats()
        assert stats["rejected"] == 0, "the workload must not overflow the buffers"
        return stats["sync_matches"] + stats["reserved"] + stats["buffer_matches"]

    before = matched_so_far()
    calls = 0
    fallbacks = 0
    start = time.perf_counter()
    while calls < ops:
        for q, p, prio in cold_plan:
            task += 1
            result, w = offer(q, p, task, prio)
            if result is matched:
                push(w)
            for _task, worker in add_credit(pop(), 1):
                push(worker)
        for q, p, prio in hot_plan:
            w = reserve(q, p, prio)
            if w >= 0:
                push(w)
            else:
                # Refused (older work waits) or no free slot: written PENDING, then claimed.
                task += 1
                fallbacks += 1
                result, w = offer(q, p, task, prio)
                if result is matched:
                    push(w)
            for _task, worker in add_credit(pop(), 1):
                push(worker)
        calls += 2 * (len(cold_plan) + len(hot_plan))
    elapsed = time.perf_counter() - start
    return calls + fallbacks, matched_so_far() - before, elapsed


class Side(NamedTuple):
    ops_per_s: float
    tasks_per_s: float
    files: list[str]


def child(ops: int, seed: int) -> None:
    import valka.matching.matcher as matcher_module
    import valka.matching.tree as tree_module

    calls, tasks, elapsed = run_workload(ops, seed)
    files = [str(matcher_module.__file__), str(tree_module.__file__)]
    print(json.dumps(Side(calls / elapsed, tasks / elapsed, files)._asdict()))


def _installed_compiled() -> dict[str, str] | None:
    """An environment in which this interpreter imports a compiled matcher, if it has one."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import valka.matching.matcher as m; print(m.__file__)"
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(
            [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True
        )
    if out.returncode == 0 and out.stdout.strip().endswith((".so", ".pyd")):
        return env
    return None


def _build_compiled(workdir: Path) -> dict[str, str]:
    if importlib.util.find_spec("mypyc") is None:
        sys.exit("no compiled valka installed and no mypyc to build one: pip install mypy==2.4.1")
    for rel in SOURCES + COMPILED:
        dst = workdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dst)
    print("building the compiled matcher with mypyc ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "mypyc", *COMPILED],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return {**os.environ, "PYTHONPATH": str(workdir)}


def _run_side(env: dict[str, str], cwd: str, ops: int, seed: int) -> Side:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    cmd += ["--ops", str(ops), "--seed", str(seed)]
    out = subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True)
    return Side(**json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000, help="engine calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per side; the best counts")
    parser.add_argument(
        "--build",
        action="store_true",
        help="compile the current sources even if an installed compiled valka exists",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.ops, args.seed)
        return

    with tempfile.TemporaryDirectory(prefix="valka-bench-") as tmp:
        installed = None if args.build else _installed_compiled()
        compiled_env = installed or _build_compiled(Path(tmp))
        pure_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # The sides take turns on the same seeds, best of each kept, so that a burst of load
        # on a shared machine does not land on one side only.
        compiled_runs: list[Side] = []
        pure_runs: list[Side] = []
        for seed in range(args.repeat):
            compiled_runs.append(_run_side(compiled_env, tmp, args.ops, seed))
            pure_runs.append(_run_side(pure_env, tmp, args.ops, seed))
    compiled = max(compiled_runs)
    pure = max(pure_runs)

    print(
        f"compiled: {compiled.ops_per_s / 1e6:.2f} M ops/s  "
        f"pure: {pure.ops_per_s / 1e6:.2f} M ops/s  "
        f"ratio: {compiled.ops_per_s / pure.ops_per_s:.1f}x"
    )
    print(
        f"tasks matched: compiled {compiled.tasks_per_s / 1e6:.2f} M/s, "
        f"pure {pure.tasks_per_s / 1e6:.2f} M/s"
    )
    print(f"compiled side loaded: {', '.join(compiled.files)}")
    print(f"pure side loaded:     {', '.join(pure.files)}")
    if not all(f.endswith((".so", ".pyd")) for f in compiled.files):
        sys.exit("the compiled side did not load compiled modules")
    if not all(f.endswith(".py") for f in pure.files):
        sys.exit("the pure side did not load the pure sources")


if __name__ == "__main__":
    main()
