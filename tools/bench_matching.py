"""Benchmark of the matcher: compiled (mypyc) against pure Python, in one run.

    python tools/bench_matching.py [--ops N] [--repeat R]

Each side runs in its own subprocess so that the two builds never share a process:
- pure: the repository root first on PYTHONPATH (the source tree never holds .so files);
- compiled: an installed compiled valka if the interpreter has one, otherwise tree.py and
  matcher.py are compiled with mypyc into a temporary directory, which goes first on
  PYTHONPATH.

The workload is a steady state driven from interpreted Python, as the server drives it:
several queues, many workers with a few credits each; new tasks try the hot path
(``reserve``), fall back to the cold path (``offer``) when refused, and finished tasks return
their credit (``add_credit``), which may hand out buffered tasks. An op is one engine call.
"""

from __future__ import annotations

import argparse
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
    # Drawn beforehand so that the timed loop measures the engine, not the random module.
    # Each new task: its queue, partition, priority, and whether the server tries the hot
    # path first (half of them) or it was written PENDING and claimed by a reader.
    plan = [
        (
            queue_names[rng.randrange(NUM_QUEUES)],
            rng.randrange(NUM_PARTITIONS),
            rng.choice((0, 0, 0, 1, 5)),
            i % 2 == 0,
        )
        for i in range(4096)
    ]

    matched = Offer.MATCHED
    reserve = matcher.reserve
    offer = matcher.offer
    add_credit = matcher.add_credit
    # Workers of the tasks in flight, oldest first.
    in_flight: deque[int] = deque()
    push = in_flight.append
    pop = in_flight.popleft
    window = IN_FLIGHT
    calls = 0
    task = 0
    start = time.perf_counter()
    while calls < ops:
        for q, p, prio, hot in plan:
            task += 1
            if hot:
                w = reserve(q, p, prio)
                if w >= 0:
                    push(w)
                else:
                    # Refused or no free slot: written PENDING, then claimed by the reader.
                    calls += 1
                    result, w = offer(q, p, task, prio)
                    if result is matched:
                        push(w)
            else:
                result, w = offer(q, p, task, prio)
                if result is matched:
                    push(w)
            if len(in_flight) >= window:
                # The oldest task in flight completes; its slot may take a waiting task.
                calls += 1
                more = add_credit(pop(), 1)
                if more:
                    for _task, worker in more:
                        push(worker)
        calls += len(plan)
    elapsed = time.perf_counter() - start
    stats = matcher.stats()
    tasks = stats["sync_matches"] + stats["reserved"] + stats["buffer_matches"]
    return calls, tasks, elapsed


def child(ops: int, repeat: int) -> None:
    import valka.matching.matcher as matcher_module
    import valka.matching.tree as tree_module

    best = 0.0
    best_tasks = 0.0
    for r in range(repeat):
        calls, tasks, elapsed = run_workload(ops, seed=r)
        best = max(best, calls / elapsed)
        best_tasks = max(best_tasks, tasks / elapsed)
    print(
        json.dumps(
            {
                "ops_per_s": best,
                "tasks_per_s": best_tasks,
                "files": [matcher_module.__file__, tree_module.__file__],
            }
        )
    )


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


def _run_side(env: dict[str, str], cwd: str, ops: int, repeat: int) -> dict[str, object]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    cmd += ["--ops", str(ops), "--repeat", str(repeat)]
    out = subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _best(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    if not a or float(str(b["ops_per_s"])) > float(str(a["ops_per_s"])):
        return b
    return a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000, help="engine calls per repeat")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs per side")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.ops, args.repeat)
        return

    with tempfile.TemporaryDirectory(prefix="valka-bench-") as tmp:
        compiled_env = _installed_compiled() or _build_compiled(Path(tmp))
        pure_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # The sides take turns, best of each kept, so that a burst of load on a shared
        # machine does not land on one side only.
        compiled: dict[str, object] = {}
        pure: dict[str, object] = {}
        for _ in range(args.repeat):
            compiled = _best(compiled, _run_side(compiled_env, tmp, args.ops, 1))
            pure = _best(pure, _run_side(pure_env, tmp, args.ops, 1))

    c_ops = float(str(compiled["ops_per_s"]))
    p_ops = float(str(pure["ops_per_s"]))
    print(
        f"compiled: {c_ops / 1e6:.2f} M ops/s  pure: {p_ops / 1e6:.2f} M ops/s  "
        f"ratio: {c_ops / p_ops:.1f}x"
    )
    print(
        f"tasks matched: compiled {float(str(compiled['tasks_per_s'])) / 1e6:.2f} M/s, "
        f"pure {float(str(pure['tasks_per_s'])) / 1e6:.2f} M/s"
    )
    print(f"compiled side loaded: {compiled['files']}")
    print(f"pure side loaded:     {pure['files']}")
    if not all(str(f).endswith((".so", ".pyd")) for f in compiled["files"]):  # type: ignore[attr-defined]
        sys.exit("the compiled side did not load compiled modules")
    if not all(str(f).endswith(".py") for f in pure["files"]):  # type: ignore[attr-defined]
        sys.exit("the pure side did not load the pure sources")


if __name__ == "__main__":
    main()
