"""The `valka` command: run a server, and create and inspect tasks from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from valka.cli.schedules import add_schedule_commands
from valka.cli.version import version_line
from valka.core.errors import ValkaError
from valka.core.status import TaskStatus

__all__ = ["main"]


def _client(args: argparse.Namespace) -> Any:
    from valka.sdk import ValkaSyncClient
    return ValkaSyncClient(args.server, token=args.token, timeout=args.timeout)


def _emit(args: argparse.Namespace, value: Any, table: Callable[[Any], str]) -> None:
    if args.json:
        print(msgspec.json.encode(value).decode())
    else:
        print(table(value))


def _rows(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _task_table(tasks: Sequence[Any]) -> str:
    return _rows(["ID", "QUEUE", "NAME", "STATUS", "PRIO", "RUNS", "CREATED"],
                 [[t.id, t.queue, t.name, t.status.name, t.priority, t.run_count,
                   t.created_at.isoformat(timespec="seconds") if t.created_at else ""]
                  for t in tasks])


def _task_detail(t: Any) -> str:
    fields = msgspec.structs.asdict(t)
    fields["status"] = t.status.name
    return "\n".join(f"{k}: {json.dumps(v, default=str) if isinstance(v, dict | list) else v}"
                     for k, v in fields.items())


def _json_arg(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValkaError(f"{flag}: not valid JSON ({exc})") from None


def cmd_task_create(args: argparse.Namespace) -> int:
    with _client(args) as c:
        task = c.create_task(args.queue, args.name, _json_arg(args.input, "--input"),
                             priority=args.priority, max_retries=args.max_retries,
                             timeout_seconds=args.timeout_seconds,
                             idempotency_key=args.idempotency_key,
                             metadata=_json_arg(args.metadata, "--metadata"),
                             delay=args.delay)
    _emit(args, task, _task_detail)
    return 0


def cmd_task_get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        task = c.get_task(args.task_id)
    _emit(args, task, _task_detail)
    return 0


def cmd_task_list(args: argparse.Namespace) -> int:
    status = TaskStatus[args.status.upper()] if args.status else None
    with _client(args) as c:
        page = c.list_tasks(queue=args.queue, status=status, page_size=args.limit,
                            page_token=args.page_token or "")
    if args.json:
        print(msgspec.json.encode(page).decode())
    else:
        print(_task_table(page.tasks))
        if page.next_page_token:
            print(f"next page: --page-token {page.next_page_token}")
    return 0


def cmd_task_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        task = c.cancel_task(args.task_id, args.reason or "")
    _emit(args, task, _task_detail)
    return 0


def cmd_task_runs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        runs = c.list_runs(args.task_id)
    _emit(args, runs, lambda rs: _rows(
        ["RUN", "ATTEMPT", "STATUS", "WORKER", "ERROR"],
        [[r.id, r.attempt, r.status.name, r.worker_id, r.error] for r in rs]))
    return 0


def cmd_worker_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        workers = c.list_workers(include_disconnected=args.all)
    _emit(args, workers, lambda ws: _rows(
        ["ID", "NAME", "NODE", "QUEUES", "SLOTS", "ACTIVE", "STATUS"],
        [[w.id, w.name, w.node_id, ",".join(w.queues), w.concurrency, w.active_tasks,
          w.status] for w in ws]))
    return 0


def cmd_task_retry(args: argparse.Namespace) -> int:
    with _client(args) as c:
        task = c.retry_task(args.task_id)
    _emit(args, task, _task_detail)
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        page = c.list_dead_letters(args.queue, args.limit, args.page_token or "")
    if args.json:
        print(msgspec.json.encode(page).decode())
        return 0
    print(_rows(["TASK", "QUEUE", "NAME", "RUNS", "ERROR", "DIED"],
                [[d.task_id, d.queue, d.name, d.run_count, (d.error or "")[:60],
                  d.created_at.isoformat(timespec="seconds") if d.created_at else ""]
                 for d in page.dead_letters]))
    if page.next_page_token:
        print(f"next page: --page-token {page.next_page_token}")
    return 0


def _dlq_target(args: argparse.Namespace) -> dict[str, Any]:
    if not args.task_ids and not args.all:
        raise ValkaError("give task ids, or --all (with --queue to limit it to one queue)")
    return {"queue": args.queue, "all": args.all}


def cmd_dlq_requeue(args: argparse.Namespace) -> int:
    target = _dlq_target(args)
    with _client(args) as c:
        ids = c.requeue_dead_letters(args.task_ids, **target)
    _emit(args, {"requeued": ids}, lambda v: f"re-queued {len(v['requeued'])} task(s)")
    return 0


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    target = _dlq_target(args)
    with _client(args) as c:
        n = c.purge_dead_letters(args.task_ids, **target)
    _emit(args, {"purged": n}, lambda v: f"purged {v['purged']} dead letter(s)")
    return 0


def _queue_table(queues: Sequence[Any]) -> str:
    names = [s.name for s in TaskStatus if s.value]
    return _rows(["QUEUE", "STATE", "LIMIT", "RATE/S", *names],
                 [[q.name, "paused" if q.paused else "active", q.max_concurrency or "-",
                   f"{q.rate_per_second:g}" if q.rate_per_second else "-",
                   *[q.counts.get(n, 0) for n in names]] for q in queues])


def cmd_queue_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        queues = c.list_queues()
    _emit(args, queues, _queue_table)
    return 0


def cmd_queue_pause(args: argparse.Namespace) -> int:
    with _client(args) as c:
        q = c.resume_queue(args.queue) if args.resume else c.pause_queue(args.queue)
    _emit(args, q, lambda v: _queue_table([v]))
    return 0


def cmd_queue_limits(args: argparse.Namespace) -> int:
    with _client(args) as c:
        q = c.set_queue_limits(args.queue, max_concurrency=args.max_concurrency,
                               rate_per_second=args.rate)
    _emit(args, q, lambda v: _queue_table([v]))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from valka.server.main import serve_from_args
    return serve_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valka", description="Valka task queue.")
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument("--server", help="gRPC address (default: $VALKA_SERVER or "
                                         "127.0.0.1:50051)")
    parser.add_argument("--token", help="API token (default: $VALKA_TOKEN)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    from valka.server.main import add_server_arguments
    server = sub.add_parser("server", help="run a Valka node")
    add_server_arguments(server)
    server.set_defaults(func=cmd_server)

    task = sub.add_parser("task", help="create and inspect tasks").add_subparsers(
        dest="action", required=True)
    create = task.add_parser("create", help="create a task")
    create.add_argument("--queue", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--input", help="JSON input")
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--max-retries", type=int)
    create.add_argument("--timeout-seconds", type=int)
    create.add_argument("--idempotency-key")
    create.add_argument("--metadata", help="JSON object")
    create.add_argument("--delay", type=float, help="seconds before it is due")
    create.set_defaults(func=cmd_task_create)
    get = task.add_parser("get", help="show one task")
    get.add_argument("task_id")
    get.set_defaults(func=cmd_task_get)
    lst = task.add_parser("list", help="list tasks, newest first")
    lst.add_argument("--queue")
    lst.add_argument("--status", choices=[s.name.lower() for s in TaskStatus if s.value])
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--page-token")
    lst.set_defaults(func=cmd_task_list)
    cancel = task.add_parser("cancel", help="cancel a task")
    cancel.add_argument("task_id")
    cancel.add_argument("--reason")
    cancel.set_defaults(func=cmd_task_cancel)
    runs = task.add_parser("runs", help="the runs (attempts) of a task")
    runs.add_argument("task_id")
    runs.set_defaults(func=cmd_task_runs)

    retry = task.add_parser("retry", help="run a FAILED or DEAD_LETTER task again")
    retry.add_argument("task_id")
    retry.set_defaults(func=cmd_task_retry)

    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(dest="action",
                                                                    required=True)
    dl = dlq.add_parser("list", help="list dead letters, newest first")
    dl.add_argument("--queue")
    dl.add_argument("--limit", type=int, default=50)
    dl.add_argument("--page-token")
    dl.set_defaults(func=cmd_dlq_list)
    for verb, func, text in (("requeue", cmd_dlq_requeue, "run dead letters again"),
                             ("purge", cmd_dlq_purge, "delete dead letters")):
        p = dlq.add_parser(verb, help=text)
        p.add_argument("task_ids", nargs="*")
        p.add_argument("--queue", help="with --all: only this queue")
        p.add_argument("--all", action="store_true", help="every dead letter (of --queue)")
        p.set_defaults(func=func)

    queue = sub.add_parser("queue", help="queues").add_subparsers(dest="action",
                                                                  required=True)
    ql = queue.add_parser("list", help="queues with task counts per status")
    ql.set_defaults(func=cmd_queue_list)
    for verb, resume in (("pause", False), ("resume", True)):
        p = queue.add_parser(verb, help=f"{verb} dispatching a queue's tasks")
        p.add_argument("queue")
        p.set_defaults(func=cmd_queue_pause, resume=resume)
    lim = queue.add_parser("limits", help="set a queue's limits (0 removes one)")
    lim.add_argument("queue")
    lim.add_argument("--max-concurrency", type=int)
    lim.add_argument("--rate", type=float, help="tasks per second")
    lim.set_defaults(func=cmd_queue_limits)

    add_schedule_commands(sub)

    worker = sub.add_parser("worker", help="connected workers").add_subparsers(
        dest="action", required=True)
    wl = worker.add_parser("list", help="list workers")
    wl.add_argument("--all", action="store_true", help="include disconnected workers")
    wl.set_defaults(func=cmd_worker_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValkaError as exc:
        print(f"valka: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
