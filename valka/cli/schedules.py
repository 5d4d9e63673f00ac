"""`valka schedule create|list|pause|resume|delete`: cron schedules from a shell.

Hooked into `valka` by `add_schedule_commands(subparsers)`; the global options (`--server`,
`--token`, `--timeout`, `--json`) are the main parser's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from valka.core.errors import InvalidArgument

if TYPE_CHECKING:
    from valka.sdk.client import ValkaClient
    from valka.sdk.schedules import ScheduleInfo

__all__ = ["add_schedule_commands"]

_T = TypeVar("_T")
_POLICIES = ("run_once", "skip")


def _call(args: argparse.Namespace, fn: Callable[[ValkaClient], Awaitable[_T]]) -> _T:
    # The SDK (grpc, protobuf) is loaded only by the commands that talk to a server.
    from valka.sdk.client import ValkaClient

    async def run() -> _T:
        async with ValkaClient(args.server, token=args.token, timeout=args.timeout) as client:
            return await fn(client)
    return asyncio.run(run())


def _json_arg(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{flag}: not valid JSON ({exc})", field=flag) from None


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers)] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _schedule_table(schedules: Sequence[ScheduleInfo]) -> str:
    return _table(["NAME", "CRON", "TIMEZONE", "QUEUE", "TASK", "MISSED", "STATE", "NEXT",
                   "LAST"],
                  [[s.name, s.cron, s.timezone, s.queue, s.task_name, s.missed_policy.value,
                    "paused" if s.paused else "active", _when(s.next_fire_at),
                    _when(s.last_fire_at)] for s in schedules])


def _schedule_detail(s: ScheduleInfo) -> str:
    fields = msgspec.structs.asdict(s)
    fields["missed_policy"] = s.missed_policy.value
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}"
                     for k, v in fields.items())


def _emit(args: argparse.Namespace, value: Any, human: Callable[[Any], str]) -> None:
    print(msgspec.json.encode(value).decode() if args.json else human(value))


def cmd_create(args: argparse.Namespace) -> int:
    from valka.sdk import schedules as sdk

    input_value = _json_arg(args.input, "--input")
    metadata = _json_arg(args.metadata, "--metadata")
    schedule = _call(args, lambda c: sdk.create_schedule(
        c, args.name, args.cron, args.queue, args.task, input_value, timezone=args.timezone,
        priority=args.priority, max_retries=args.max_retries,
        timeout_seconds=args.timeout_seconds, metadata=metadata, missed_policy=args.missed,
        paused=args.paused))
    _emit(args, schedule, _schedule_detail)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from valka.sdk import schedules as sdk

    _emit(args, _call(args, sdk.list_schedules), _schedule_table)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    from valka.sdk import schedules as sdk

    action = sdk.resume_schedule if args.resume else sdk.pause_schedule
    _emit(args, _call(args, lambda c: action(c, args.name)), _schedule_detail)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from valka.sdk import schedules as sdk

    deleted = _call(args, lambda c: sdk.delete_schedule(c, args.name))
    _emit(args, {"name": args.name, "deleted": deleted},
          lambda v: f"deleted schedule {v['name']}")
    return 0


def add_schedule_commands(subparsers: Any) -> None:
    """Add `schedule ...` to the `valka` parser's subcommands."""
    schedule = subparsers.add_parser("schedule", help="cron schedules").add_subparsers(
        dest="action", required=True)
    create = schedule.add_parser(
        "create", help="create a schedule, or replace the one with this name",
        description="Each fire time of CRON creates one task. CRON has five fields (minute "
                    "hour day-of-month month day-of-week), six with seconds first, or is a "
                    "macro such as @daily.")
    create.add_argument("name")
    create.add_argument("--cron", required=True, help="e.g. '*/5 * * * *'")
    create.add_argument("--timezone", default="UTC", help="IANA zone the cron is read in")
    create.add_argument("--queue", required=True)
    create.add_argument("--task", required=True, help="the task name")
    create.add_argument("--input", help="JSON input of each task")
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--max-retries", type=int)
    create.add_argument("--timeout-seconds", type=int)
    create.add_argument("--metadata", help="JSON object")
    create.add_argument("--missed", choices=_POLICIES, default="run_once",
                        help="fire times missed while no server led: one task for them "
                             "all (run_once, the default) or none (skip)")
    create.add_argument("--paused", action="store_true", help="create it paused")
    create.set_defaults(func=cmd_create)
    lst = schedule.add_parser("list", help="list schedules")
    lst.set_defaults(func=cmd_list)
    for verb, resume, text in (("pause", False, "stop a schedule firing"),
                               ("resume", True, "fire again from the next fire time")):
        p = schedule.add_parser(verb, help=text)
        p.add_argument("name")
        p.set_defaults(func=cmd_pause, resume=resume)
    delete = schedule.add_parser("delete", help="delete a schedule (its tasks stay)")
    delete.add_argument("name")
    delete.set_defaults(func=cmd_delete)
