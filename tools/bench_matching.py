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
    # Pre-drawn so that the timed loop measures the engine, not the random module.
    plan_mask = 4095
    plan_queue = [queue_names[rng.randrange(NUM_QUEUES)] for _ in range(plan_mask + 1)]
    plan_part = [rng.randrange(NUM_PARTITIONS) for _ in range(plan_mask + 1)]
    plan_prio = [rng.choice((0, 0, 0, 1, 5)) for _ in range(plan_mask + 1)]

    matched = Offer.MATCHED
    reserve = matcher.reserve
    offer = matcher.offer
    add_credit = matcher.add_credit
    # Workers of the tasks in flight, oldest first: a ring indexed by running counters.
    ring_mask = 4095
    ring = [0] * (ring_mask + 1)
    started = 0
    finished = 0
    calls = 0
    task = 0
    start = time.perf_counter()
    while calls < ops:
        i = task & plan_mask
        q = plan_queue[i]
        p = plan_part[i]
        prio = plan_prio[i]
        task += 1
        # Half the tasks are claimed from the database (cold path); the others try the hot
        # path first and fall back to the cold path when it is refused, as the server does.
        w = -1 if task & 1 else reserve(q, p, prio)
        calls += task & 1 ^ 1
        if w < 0:
            result, w = offer(q, p, task, prio)
            calls += 1
            if result != matched:
                w = -1
        if w >= 0:
            ring[started & ring_mask] = w
            started += 1
        if started - finished >= IN_FLIGHT:
            # The oldest task in flight completes; its slot may take a waiting task.
            for _task, worker in add_credit(ring[finished & ring_mask], 1):
                ring[started & ring_mask] = worker
                started += 1
            finished += 1
            calls += 1
    elapsed = time.perf_counter() - start
    return calls, started, elapsed


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000, help="engine calls per repeat")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.ops, args.repeat)
        return

    with tempfile.TemporaryDirectory(prefix="valka-bench-") as tmp:
        compiled_env = _installed_compiled() or _build_compiled(Path(tmp))
        pure_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        compiled = _run_side(compiled_env, tmp, args.ops, args.repeat)
        pure = _run_side(pure_env, tmp, args.ops, args.repeat)

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
