"""Example worker: `file_stats` tasks compute a file's SHA-256 and line/word/byte counts.

    python -m valka.examples.worker [--server ADDR] [--queue files] [--concurrency 16]

Runs until SIGTERM or Ctrl-C, then drains: running tasks finish and report first.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import sys
from typing import Any, Final

from valka.core.errors import ValkaError
from valka.sdk import Fail, TaskContext, ValkaWorker

__all__ = ["file_stats", "main"]

_CHUNK: Final = 1024 * 1024


def file_stats(ctx: TaskContext) -> dict[str, Any]:
    """Input `{"path": "..."}`; output path, sha256, lines, words and bytes.

    Words are runs of non-whitespace (as `wc -w`); lines count newlines, plus one for a
    last line that has none.
    """
    data = ctx.input
    if not isinstance(data, dict) or not isinstance(data.get("path"), str):
        raise Fail('input must be an object with a string "path"')
    path: str = data["path"]
    digest = hashlib.sha256()
    lines = words = size = 0
    # Whether the previous chunk ended inside a word, so that a word split across two
    # chunks is counted once.
    in_word = False
    last = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            if ctx.cancelled:
                raise Fail(ctx.cancel_reason or "cancelled")
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            words += len(chunk.split())
            if in_word and not chunk[:1].isspace():
                words -= 1
            in_word = not chunk[-1:].isspace()
            last = chunk[-1:]
    if size and last != b"\n":
        lines += 1  # a last line without a newline is still a line
    ctx.log(f"{path}: {size} bytes", level="debug")
    return {
        "path": path,
        "sha256": digest.hexdigest(),
        "lines": lines,
        "words": words,
        "bytes": size,
    }


def build_worker(server: str | None, queue: str, concurrency: int) -> ValkaWorker:
    worker = ValkaWorker(
        server,
        queues=[queue],
        concurrency=concurrency,
        # Retrying cannot make a missing or unreadable file appear.
        non_retryable=(FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError),
    )
    worker.register("file_stats", file_stats)
    return worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m valka.examples.worker",
        description="Run file_stats tasks from a Valka queue until SIGTERM/SIGINT.",
    )
    parser.add_argument("--server", help="gRPC address (default: $VALKA_SERVER or 127.0.0.1:50051)")
    parser.add_argument(
        "--queue", default="files", help="queue to take tasks from (default: files)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="tasks at once (default: 16)")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = build_worker(args.server, args.queue, args.concurrency)
    try:
        asyncio.run(worker.run())
    except ValkaError as exc:
        print(f"worker: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
