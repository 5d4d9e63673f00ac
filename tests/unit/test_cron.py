"""Cron arithmetic and fire planning, with "now" given by the test (no clock, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from valka.core.errors import InvalidArgument
from valka.scheduler.cron import (
    MISSED_AFTER,
    MissedPolicy,
    fire_key,
    parse_cron,
    plan_fires,
)

T0 = datetime(2025, 1, 6, 12, 0, 0, tzinfo=UTC)  # a Monday
SECOND = timedelta(seconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
        ) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_next_after_is_strictly_after_and_utc() -> None:
    every_minute = parse_cron("* * * * *")
    assert every_minute.next_after(T0) == T0 + timedelta(minutes=1)
    assert every_minute.next_after(T0 - timedelta(microseconds=1)) == T0
    nxt = every_minute.next_after(T0 + timedelta(seconds=59, milliseconds=999))
    assert nxt == T0 + timedelta(minutes=1)
    assert nxt is not None and nxt.tzinfo == UTC


def test_six_fields_put_seconds_first() -> None:
    every_other_second = parse_cron("*/2 * * * * *")
    assert every_other_second.next_after(T0) == T0 + 2 * SECOND
    assert every_other_second.next_after(T0 + SECOND) == T0 + 2 * SECOND
    # 30 seconds past minute 15: not "minute 30 of hour 15".
    assert parse_cron("30 15 * * * *").next_after(T0) == utc(2025, 1, 6, 12, 15, 30)


def test_first_at_or_after_includes_a_fire_time_itself() -> None:
    every_second = parse_cron("* * * * * *")
    assert every_second.first_at_or_after(T0) == T0
    assert every_second.first_at_or_after(T0 + timedelta(milliseconds=1)) == T0 + SECOND
    hourly = parse_cron("@hourly")
    assert hourly.first_at_or_after(T0) == T0
    assert hourly.first_at_or_after(T0 + SECOND) == T0 + timedelta(hours=1)


@pytest.mark.parametrize(("expression", "after", "expected"), [
    ("0 9 * * 1-5", utc(2025, 1, 10, 9, 0), utc(2025, 1, 13, 9, 0)),  # Friday -> Monday
    ("0 0 1 * *", utc(2025, 1, 31, 0, 0), utc(2025, 2, 1, 0, 0)),
    ("0 0 29 2 *", utc(2025, 1, 1), utc(2028, 2, 29)),  # leap days only
    ("@daily", utc(2025, 1, 6, 0, 0), utc(2025, 1, 7, 0, 0)),
    ("@WEEKLY", utc(2025, 1, 6), utc(2025, 1, 12)),  # Sundays; macros in any case
    ("  */15  * * * *  ", utc(2025, 1, 6, 12, 7), utc(2025, 1, 6, 12, 15)),
])
def test_calendar(expression: str, after: datetime, expected: datetime) -> None:
    assert parse_cron(expression).next_after(after) == expected


def test_timezone_follows_the_wall_clock() -> None:
    nine_in_paris = parse_cron("0 9 * * *", "Europe/Paris")
    assert nine_in_paris.next_after(utc(2025, 1, 6)) == utc(2025, 1, 6, 8)  # UTC+1
    assert nine_in_paris.next_after(utc(2025, 7, 7)) == utc(2025, 7, 7, 7)  # UTC+2


def test_dst_gap_fires_at_the_first_instant_after_it() -> None:
    # 02:30 does not exist in Berlin on 2025-03-30 (02:00 -> 03:00).
    cron = parse_cron("30 2 * * *", "Europe/Berlin")
    assert cron.next_after(utc(2025, 3, 29, 12)) == utc(2025, 3, 30, 1)  # 03:00 CEST
    assert cron.next_after(utc(2025, 3, 30, 1)) == utc(2025, 3, 31, 0, 30)


def test_repeated_wall_time_fires_once_for_a_fixed_hour() -> None:
    # 02:30 happens twice in Berlin on 2025-10-26 (03:00 CEST -> 02:00 CET).
    cron = parse_cron("30 2 * * *", "Europe/Berlin")
    first = cron.next_after(utc(2025, 10, 25, 12))
    assert first == utc(2025, 10, 26, 0, 30)
    assert cron.next_after(first) == utc(2025, 10, 27, 1, 30)


def test_repeated_hour_still_fires_hourly_when_the_hour_is_any() -> None:
    cron = parse_cron("0 * * * *", "Europe/Berlin")
    times = [utc(2025, 10, 25, 23)]
    for _ in range(3):
        nxt = cron.next_after(times[-1])
        assert nxt is not None
        times.append(nxt)
    assert [t - times[0] for t in times[1:]] == [timedelta(hours=h) for h in (1, 2, 3)]


def test_an_expression_that_never_fires_has_no_next_time() -> None:
    assert parse_cron("0 0 30 2 *").next_after(T0) is None


@pytest.mark.parametrize(("expression", "words"), [
    ("", "must not be empty"),
    ("   ", "must not be empty"),
    ("* * * *", "4 fields"),
    ("* * * * * * *", "7 fields"),
    ("61 * * * *", "out of range"),
    ("* 24 * * *", "out of range"),
    ("*/0 * * * *", "step"),
    ("0 0 * * 8", "out of range"),
    ("R * * * *", "random"),
    ("H * * * *", "hashed"),
    ("h(0-5) * * * *", "hashed"),
    ("@reboot", "unknown macro"),
    ("* * * * \u00e9", "ASCII"),
    ("*\n* * * *", "ASCII"),
    ("* " * 150, "limit is 200"),
    ("a b c d e", "cron:"),
])
def test_bad_expressions_name_the_cron_field(expression: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_cron(expression)
    assert info.value.field == "cron"
    assert info.value.message.startswith("cron: ")
    assert words.lower() in info.value.message.lower()


@pytest.mark.parametrize("zone", ["Mars/Olympus", "utc", "localtime", "../etc/passwd",
                                  "/etc/localtime", "America", "Europe/Paris\x00"])
def test_bad_timezones_name_the_timezone_field(zone: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_cron("* * * * *", zone)
    assert info.value.field == "timezone"
    assert info.value.message.startswith("timezone: ")


def test_fire_key_is_the_schedule_and_the_fire_time_in_ms() -> None:
    assert fire_key("abc", utc(2025, 1, 1)) == "schedule:abc:1735689600000"
    later = utc(2025, 1, 1) + timedelta(milliseconds=7)
    assert fire_key("abc", later) == "schedule:abc:1735689600007"


# ---- planning ----------------------------------------------------------------------------

EVERY_SECOND = parse_cron("* * * * * *")
HOURLY = parse_cron("0 * * * *")


@pytest.mark.parametrize("policy", list(MissedPolicy))
def test_an_on_time_fire(policy: MissedPolicy) -> None:
    plan = plan_fires(HOURLY, T0, T0 + timedelta(milliseconds=3), policy)
    assert plan.fire_times == (T0,)
    assert plan.next_fire_at == T0 + timedelta(hours=1)
    assert not plan.missed


@pytest.mark.parametrize("policy", list(MissedPolicy))
def test_late_within_the_grace_each_fire_time_gets_its_task(policy: MissedPolicy) -> None:
    now = T0 + 3 * SECOND + timedelta(milliseconds=500)
    plan = plan_fires(EVERY_SECOND, T0, now, policy)
    assert plan.fire_times == tuple(T0 + i * SECOND for i in range(4))
    assert plan.next_fire_at == T0 + 4 * SECOND
    assert not plan.missed


def test_skip_creates_nothing_for_missed_times_and_moves_to_the_future() -> None:
    now = T0 + timedelta(hours=5, minutes=30)
    plan = plan_fires(HOURLY, T0, now, MissedPolicy.SKIP)
    assert plan.fire_times == ()
    assert plan.next_fire_at == T0 + timedelta(hours=6)
    assert plan.missed


def test_run_once_creates_one_task_keyed_by_the_first_missed_time() -> None:
    now = T0 + timedelta(hours=5, minutes=30)
    plan = plan_fires(HOURLY, T0, now, MissedPolicy.RUN_ONCE)
    assert plan.fire_times == (T0,)
    assert plan.next_fire_at == T0 + timedelta(hours=6)
    assert plan.missed


def test_after_a_long_outage_recent_fire_times_are_still_on_time() -> None:
    # Down for a minute: only what is within the grace fires one by one.
    now = T0 + timedelta(minutes=1)
    skip = plan_fires(EVERY_SECOND, T0, now, MissedPolicy.SKIP)
    run_once = plan_fires(EVERY_SECOND, T0, now, MissedPolicy.RUN_ONCE)
    grace_seconds = int(MISSED_AFTER.total_seconds())
    recent = tuple(now - i * SECOND for i in range(grace_seconds, -1, -1))
    assert skip.fire_times == recent
    assert run_once.fire_times == (T0, *recent)
    assert skip.next_fire_at == run_once.next_fire_at == now + SECOND


def test_a_pass_creates_at_most_limit_tasks_and_leaves_the_rest_due() -> None:
    now = T0 + 3 * SECOND
    plan = plan_fires(EVERY_SECOND, T0, now, MissedPolicy.SKIP, limit=2)
    assert plan.fire_times == (T0, T0 + SECOND)
    assert plan.next_fire_at == T0 + 2 * SECOND


def test_a_rare_expression_plans_its_next_fire_years_ahead() -> None:
    leap = parse_cron("0 0 29 2 *")
    plan = plan_fires(leap, utc(2028, 2, 29), utc(2028, 2, 29, 0, 0, 1), MissedPolicy.SKIP)
    assert plan.fire_times == (utc(2028, 2, 29),)
    assert plan.next_fire_at == utc(2032, 2, 29)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=1, max_value=4900), st.booleans()),
                min_size=1, max_size=30),
       st.sampled_from(list(MissedPolicy)))
def test_passes_and_crashes_never_repeat_or_lose_a_fire_time(
        passes: list[tuple[int, bool]], policy: MissedPolicy) -> None:
    """Leaders pass at arbitrary moments (each less than the grace after the previous one)
    and may crash after creating the tasks but before advancing the schedule. Deduplicated
    by key, the tasks are one per fire time, with no gap, up to the last pass."""
    stored = T0
    now = T0
    keys: list[str] = []
    last_pass: datetime | None = None
    for step_ms, crashed in passes:
        now += timedelta(milliseconds=step_ms)
        if stored > now:
            continue
        plan = plan_fires(EVERY_SECOND, stored, now, policy)
        keys.extend(fire_key("s", t) for t in plan.fire_times)
        last_pass = now
        if not crashed:
            assert plan.next_fire_at is not None and plan.next_fire_at > now
            stored = plan.next_fire_at
    if last_pass is None:
        assert keys == []
        return
    seconds = int((last_pass - T0).total_seconds())
    assert set(keys) == {fire_key("s", T0 + i * SECOND) for i in range(seconds + 1)}
    if not any(crashed for _, crashed in passes):
        assert len(keys) == len(set(keys))
