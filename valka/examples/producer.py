"""Example producer: one `file_stats` task per file, then wait for all of them.

    python -m valka.examples.producer [--server ADDR] [--dir DIR] [--queue files]
                                      [--batch 500] [--timeout 300]

Prints progress, then exactly one last line:
    summary: total=T completed=C failed=F seconds=S tasks_per_second=R
Exit status 0 only if every task COMPLETED; 1 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from valka.core.errors import ValkaError
from valka.core.status import TaskStatus
from valka.sdk import TaskInfo, TaskSpec, ValkaClient

__all__ = ["default_files", "find_files", "main"]

# With --dir unset: the standard library's own sources, without the regression suite and
# the installed packages (folders relative to the stdlib folder). On CPython 3.11 that is
# about 970 .py files.
DEFAULT_SKIPPED: Final = frozenset({"site-packages", "dist-packages", "test"})
_FAILED: Final = frozenset({TaskStatus.FAILED, TaskStatus.DEAD_LETTER, TaskStatus.CANCELLED})


def find_files(root: Path, suffix: str = "", skipped: frozenset[str] = frozenset()) -> list[Path]:
    """Regular files under root, sorted; not following symlinks, not looking into
    __pycache__ folders nor into the `skipped` folders (paths relative to root)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root)
        dirs[:] = sorted(
            d for d in dirs if d != "__pycache__" and (here / d).as_posix() not in skipped
        )
        for name in sorted(files):
            path = Path(folder, name)
            if name.endswith(suffix) and path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def default_files() -> list[Path]:
    return find_files(Path(sysconfig.get_paths()["stdlib"]), ".py", DEFAULT_SKIPPED)


async def produce(
    server: str | None, files: Sequence[Path], queue: str, batch: int, timeout: float
) -> tuple[list[TaskInfo], float, int]:
    """Create the tasks and wait for them; returns the tasks, the seconds, and how many
    were still unfinished at the timeout."""
    async with ValkaClient(server) as client:
        started = time.monotonic()
        ids: list[str] = []
        for start in range(0, len(files), batch):
            specs = [
                TaskSpec(queue=queue, name="file_stats", input={"path": str(path)})
                for path in files[start : start + batch]
            ]
            ids.extend(task.id for task in await client.create_tasks(specs))
        print(f"created {len(ids)} tasks in {time.monotonic() - started:.2f} s", flush=True)
        left = max(0.0, timeout - (time.monotonic() - started))
        try:
            tasks = await client.wait_for_tasks(ids, timeout=left)
        except TimeoutError as exc:
            print(f"timeout: {exc}", flush=True)
            tasks = await client.get_tasks(ids)
        seconds = time.monotonic() - started
        unfinished = sum(1 for task in tasks if not task.is_terminal)
        return tasks, seconds, unfinished


def report(total: int, tasks: Sequence[TaskInfo], seconds: float, unfinished: int) -> int:
    counts = Counter(task.status for task in tasks)
    completed = counts[TaskStatus.COMPLETED]
    failed = sum(counts[status] for status in _FAILED)
    rate = total / seconds if seconds > 0 else 0.0
    print(f"completed {completed}, failed {failed} in {seconds:.2f} s ({rate:.1f} tasks/s)")
    if unfinished:
        print(f"not finished: {unfinished}")
    for task in [t for t in tasks if t.status in _FAILED][:5]:
        shown = task.input.get("path") if isinstance(task.input, dict) else task.id
        print(f"  {task.status.name.lower()}: {shown}: {task.error or 'no error message'}")
    print(
        f"summary: total={total} completed={completed} failed={failed} "
        f"seconds={seconds:.2f} tasks_per_second={rate:.1f}",
        flush=True,
    )
    return 0 if completed == total else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m valka.examples.producer",
        description=(
            "Create one file_stats task per regular file under --dir, wait until all have "
            "finished, and print a summary. Without --dir: the *.py files of the Python "
            "standard library (sysconfig's stdlib folder), skipping its site-packages, "
            "dist-packages and test (the regression suite) folders and every __pycache__ "
            "- about 970 files on CPython 3.11."
        ),
    )
    parser.add_argument("--server", help="gRPC address (default: $VALKA_SERVER or 127.0.0.1:50051)")
    parser.add_argument("--dir", type=Path, help="folder to scan (default: the stdlib, see above)")
    parser.add_argument("--queue", default="files", help="queue name (default: files)")
    parser.add_argument(
        "--batch", type=int, default=500, help="tasks per create_tasks call (default: 500)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for all (default: 300)"
    )
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    if args.dir is None:
        files = default_files()
    elif not args.dir.exists():
        print(f"producer: error: folder not found: {args.dir}", file=sys.stderr)
        return 2
    elif not args.dir.is_dir():
        print(f"producer: error: not a folder: {args.dir}", file=sys.stderr)
        return 2
    else:
        files = find_files(args.dir.resolve())
    print(f"{len(files)} files to hash", flush=True)
    try:
        tasks, seconds, unfinished = asyncio.run(
            produce(args.server, files, args.queue, args.batch, args.timeout)
        )
    except ValkaError as exc:
        print(f"producer: error: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("producer: interrupted", file=sys.stderr)
        return 130
    return report(len(files), tasks, seconds, unfinished)


if __name__ == "__main__":
    raise SystemExit(main())
