"""Cron schedules: the fire-time arithmetic, and the runner that fires them on the leader.

The arithmetic (`Cron`, `plan_fires`) is pure and takes "now" as an argument, so it is tested
without a clock. croniter does the calendar work; it is untyped, so it stays behind `Cron`.

Exactly one task per fire time: each fire inserts its task with the idempotency key
`schedule:<schedule id>:<fire time in Unix ms>` and only then moves the schedule's
`next_fire_at` on, with a compare-and-set on the value it read. A leader that dies in between
leaves `next_fire_at` where it was; the next leader computes the same fire times, hence the
same keys, and the insert finds the tasks already there. Two leaders for a moment (an old one
that has not yet noticed its lost lock) collide the same way.

Missed fire times: a fire time more than `MISSED_AFTER` late was missed (no leader ran, or it
was stuck). The schedule's policy decides: SKIP creates nothing for them, RUN_ONCE creates
one task for all of them, keyed by the first missed time (the `next_fire_at` stored, which a
re-computation after a crash finds again). Fire times less late than that are not missed,
just late: each still gets its own task, so the leader's wake-up jitter and a quick leader
change lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, final

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]

from valka.core.config import Config
from valka.core.errors import InvalidArgument, Unavailable
from valka.core.ids import new_id
from valka.db import schedules as db_schedules
from valka.db.pool import connect_dedicated
from valka.db.sqlfile import load_queries
from valka.db.tasks import NewTask
from valka.dispatcher.engine import Engine

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MISSED_AFTER",
    "Cron",
    "FirePlan",
    "MissedPolicy",
    "ScheduleRunner",
    "fire_key",
    "parse_cron",
    "plan_fires",
]

log = logging.getLogger("valka.cron")

_Q: Final = load_queries("valka.db", "sql/schedules.sql")

MAX_EXPRESSION_LENGTH: Final = 200
# Later than this, a fire time counts as missed (see the module docstring). Longer than a
# leader change normally takes (about a second), short enough that a SKIP schedule does not
# catch up a burst of stale fire times.
MISSED_AFTER: Final = timedelta(seconds=5)
# Fire times one schedule may produce in one pass; the rest wait for the next pass.
MAX_FIRES_PER_PASS: Final = 100

_MACROS: Final = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily",
                            "@midnight", "@hourly"})
# croniter's hashed (H) and random (R) fields: R picks anew at every parse, so two leaders
# would disagree on the fire times, and H needs a seed this API does not take.
_HASHED_OR_RANDOM: Final = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)
# Names that mean a different zone on each machine.
_LOCAL_ZONES: Final = frozenset({"localtime", "posixrules"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Guards against a croniter result that does not move forward (it has had DST bugs).
_MAX_STEPS: Final = 1000


class MissedPolicy(enum.Enum):
    """What fire times missed while no leader ran turn into (values as stored)."""

    SKIP = "SKIP"
    RUN_ONCE = "RUN_ONCE"


@final
class Cron:
    """A checked cron expression in a timezone. Build it with `parse_cron`.

    Five fields (minute hour day-of-month month day-of-week), six with seconds first, or a
    macro (@hourly, @daily, ...). Fire times are computed on the zone's wall clock: a time
    that a DST change skips fires at the first instant after the gap, and a wall time that
    a DST change repeats fires once when the hour field is fixed, twice (an hour apart) when
    it is `*` (every hour is still every hour).
    """

    __slots__ = ("_hour_fixed", "_zone", "expression", "timezone")

    def __init__(self, expression: str, timezone: str, zone: zoneinfo.ZoneInfo,
                 hour_fixed: bool) -> None:
        self.expression = expression
        self.timezone = timezone
        self._zone = zone
        self._hour_fixed = hour_fixed

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.timezone!r})"

    def next_after(self, t: datetime) -> datetime | None:
        """The first fire time strictly after `t` (aware), in UTC; None if there is none."""
        it = croniter(self.expression, t.astimezone(self._zone), second_at_beginning=True)
        for _ in range(_MAX_STEPS):
            try:
                candidate: datetime = it.get_next(datetime)
            except CroniterBadDateError:
                return None
            utc = candidate.astimezone(UTC)
            # The fold is recomputed from the instant, whatever croniter set.
            if utc <= t or (self._hour_fixed and utc.astimezone(self._zone).fold):
                continue
            return utc
        return None

    def first_at_or_after(self, t: datetime) -> datetime | None:
        # Fire times fall on whole seconds: none lies strictly between the whole second
        # before `t` (rounded up) and `t` itself.
        ceiling = t.replace(microsecond=0)
        if ceiling < t:
            ceiling += timedelta(seconds=1)
        return self.next_after(ceiling - timedelta(seconds=1))


def parse_cron(expression: str, timezone: str = "UTC") -> Cron:
    """Check an expression and a zone name; InvalidArgument names `cron` or `timezone`."""
    return _parse_cached(expression, timezone)


@functools.lru_cache(maxsize=1024)
def _parse_cached(expression: str, timezone: str) -> Cron:
    text = _check_expression(expression)
    zone = _zone(timezone)
    try:
        it = croniter(text, datetime(2000, 1, 1, tzinfo=zone), second_at_beginning=True)
        # Some mistakes only show when a time is computed.
        it.get_next(datetime)
    except CroniterBadDateError:
        pass  # fires never, or not soon: the caller checks against its own "now"
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument(f"cron: {exc}", field="cron") from None
    expanded: list[list[Any]] = it.expanded
    return Cron(text, timezone, zone, expanded[1] != ["*"])


def _check_expression(expression: str) -> str:
    text = expression.strip()
    if not text:
        raise InvalidArgument("cron: must not be empty", field="cron")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise InvalidArgument(
            f"cron: {len(text)} characters, the limit is {MAX_EXPRESSION_LENGTH}", field="cron")
    if not text.isascii() or not all(c.isprintable() or c in " \t" for c in text):
        raise InvalidArgument("cron: only printable ASCII characters are allowed", field="cron")
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise InvalidArgument(
                f"cron: unknown macro {text!r}; known: {', '.join(sorted(_MACROS))}",
                field="cron")
        return text.lower()
    fields = text.split()
    if len(fields) not in (5, 6):
        raise InvalidArgument(
            f"cron: {len(fields)} fields; give five (minute hour day-of-month month "
            "day-of-week) or six (seconds first)", field="cron")
    if any(_HASHED_OR_RANDOM.match(f) for f in fields):
        raise InvalidArgument("cron: hashed (H) and random (R) fields are not supported",
                              field="cron")
    return " ".join(fields)


def _zone(name: str) -> zoneinfo.ZoneInfo:
    if name in _LOCAL_ZONES or name not in _known_zones():
        raise InvalidArgument(
            f"timezone: unknown time zone {name[:100]!r}; use an IANA name such as "
            "'UTC' or 'Europe/Paris'", field="timezone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidArgument(f"timezone: {name[:100]!r} cannot be loaded ({exc})",
                              field="timezone") from None


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What one due schedule turns into now."""

    # One task per fire time, in order.
    fire_times: tuple[datetime, ...]
    # The schedule's next fire time after these (None: the expression has no more).
    next_fire_at: datetime | None
    # Whether fire times older than the grace were found (and skipped or collapsed).
    missed: bool


def plan_fires(cron: Cron, due: datetime, now: datetime, policy: MissedPolicy, *,
               grace: timedelta = MISSED_AFTER, limit: int = MAX_FIRES_PER_PASS) -> FirePlan:
    """The tasks to create for a schedule whose stored fire time `due` is <= `now`."""
    fires: list[datetime] = []
    start: datetime | None = due
    missed = due < now - grace
    if missed:
        if policy is MissedPolicy.RUN_ONCE:
            fires.append(due)
        start = cron.first_at_or_after(now - grace)
    current = start
    while current is not None and current <= now and len(fires) < limit:
        fires.append(current)
        current = cron.next_after(current)
    return FirePlan(tuple(fires), current, missed)


def fire_key(schedule_id: str, fire_time: datetime) -> str:
    """The idempotency key of a schedule's task for one fire time."""
    return f"schedule:{schedule_id}:{(fire_time - _EPOCH) // timedelta(milliseconds=1)}"


class ScheduleRunner:
    """Fires due schedules; runs on the scheduler leader only (started when elected).

    It sleeps until the earliest `next_fire_at` (one indexed read), at most `max_wait_s`, and
    wakes early on a `valka_schedules` notification, sent by every change a client makes on
    any node.
    """

    def __init__(self, cfg: Config, engine: Engine, conninfo: str, *, node_id: str = "",
                 max_wait_s: float = 1.0, grace: timedelta = MISSED_AFTER,
                 batch: int = 100) -> None:
        self._cfg = cfg
        self._engine = engine
        self._pool = engine.pool
        self._conninfo = conninfo
        self._node_id = node_id or engine.node_id
        self._max_wait_s = max_wait_s
        self._grace = grace
        self._batch = batch
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.fired = 0
        self.duplicates = 0
        self.lost_races = 0
        self.passes = 0

    def start(self) -> None:
        if self._tasks:
            return
        self._wake.set()
        self._tasks = [asyncio.create_task(self._run(), name="schedule-runner"),
                       asyncio.create_task(self._listen(), name="schedule-listener")]

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_once(self) -> float:
        """Fire everything due; return the seconds until the next fire time (capped)."""
        self.passes += 1
        failed = False
        while True:
            rows = await db_schedules.due(self._pool, self._batch)
            moved = 0
            if rows:
                ok, moved = await self._fire(rows)
                failed |= not ok
            # A full batch that moved nothing would come back the same: leave it for later.
            if len(rows) < self._batch or not moved:
                break
        next_at, now = await db_schedules.peek(self._pool)
        if failed or next_at is None:
            return self._max_wait_s
        return min(max((next_at - now).total_seconds(), 0.0), self._max_wait_s)

    async def _fire(self, rows: Sequence[db_schedules.Row]) -> tuple[bool, int]:
        """Create the tasks of due schedules, then advance them.

        Returns (False if a schedule could not be planned, how many schedules moved on).
        """
        ok = True
        drafts: list[NewTask] = []
        advances: list[tuple[db_schedules.Row, FirePlan]] = []
        for row in rows:
            try:
                plan = plan_fires(parse_cron(row["cron"], row["timezone"]),
                                  row["next_fire_at"], row["db_now"],
                                  MissedPolicy(row["missed_policy"]), grace=self._grace)
            except Exception:
                # Only a row edited by hand gets here; the others must still fire.
                log.exception("schedule %r cannot be planned; it stays due", row["name"])
                ok = False
                continue
            if plan.missed:
                log.warning("schedule %r missed fire times from %s (policy %s): %s",
                            row["name"], row["next_fire_at"].isoformat(),
                            row["missed_policy"],
                            "one task for them" if row["missed_policy"] == "RUN_ONCE"
                            else "skipped")
            drafts.extend(self._draft(row, t) for t in plan.fire_times)
            advances.append((row, plan))
        task_ids: dict[str, str] = {}
        if drafts:
            for task, created in await self._engine.create_tasks(drafts):
                task_ids[task["idempotency_key"]] = str(task["id"])
                self.fired += created
                self.duplicates += not created
        if not advances:
            return ok, 0
        moved = await db_schedules.advance_many(self._pool, [
            db_schedules.Advance(
                id=row["id"], expected=row["next_fire_at"], next_fire_at=plan.next_fire_at,
                last_fire_at=plan.fire_times[-1] if plan.fire_times else None,
                last_task_id=(task_ids.get(fire_key(row["id"], plan.fire_times[-1]))
                              if plan.fire_times else None))
            for row, plan in advances])
        self.lost_races += len(advances) - len(moved)
        return ok, len(moved)

    def _draft(self, row: db_schedules.Row, fire_time: datetime) -> NewTask:
        defaults = self._cfg.tasks
        max_retries = row["max_retries"]
        timeout = row["timeout_seconds"]
        return NewTask(
            id=new_id(), queue_name=row["queue_name"], task_name=row["task_name"],
            partition_id=0, priority=row["priority"], input=row["input"],
            metadata=row["metadata"] or "{}",
            max_retries=defaults.default_max_retries if max_retries is None else max_retries,
            timeout_seconds=defaults.default_timeout_seconds if timeout is None else timeout,
            idempotency_key=fire_key(row["id"], fire_time))

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                # This node drains and refuses new tasks; the schedules stay due, and fire
                # as soon as it or the next leader can.
                log.info("schedules not fired: %s", exc.message)
                wait = self._max_wait_s
            except Exception:
                log.exception("schedule pass failed")
                wait = self._max_wait_s
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await connect_dedicated(self._conninfo,
                                               name=f"schedules:{self._node_id}")
                try:
                    await conn.execute(_Q["schedule_listen"])
                    # Changes made while nobody listened were not heard: look again.
                    self.wake()
                    delay = 0.1
                    async for _ in conn.notifies():
                        self.wake()
                finally:
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("schedule listener lost (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
