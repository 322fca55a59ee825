"""Send days: holidays (days off) in the send window, steps counted in business days, and the campaign's
policies for a touch that missed its window or is too late. Checked against brute force."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.core.campaign import SendWindow, Step
from nurture.core.schedule import (
    LateTouch,
    add_send_days,
    due_at,
    is_send_day,
    plan_deliveries,
    resolve_late_touch,
)

QUARTER = timedelta(minutes=15)
ZONES = [ZoneInfo(z) for z in ("UTC", "Asia/Taipei", "America/New_York", "Europe/Berlin", "Asia/Kathmandu")]
BASE = datetime(2026, 1, 1, tzinfo=UTC)
TAIPEI = ZoneInfo("Asia/Taipei")
WINDOW = SendWindow()  # Monday to Friday, 09:00-17:00


@st.composite
def calendars(draw: st.DrawFn) -> tuple[ZoneInfo, datetime, SendWindow, frozenset[date]]:
    """A zone, a quarter-hour instant in 2026, a window, and days off within three weeks of the instant."""
    tz = draw(st.sampled_from(ZONES))
    at = BASE + draw(st.integers(0, 360 * 96)) * QUARTER
    start = draw(st.integers(0, 80))
    end = draw(st.integers(start + 1, 95))
    weekdays = draw(st.frozensets(st.integers(0, 6), min_size=1))
    window = SendWindow(start=_quarter(start), end=_quarter(end), weekdays=weekdays)
    first = at.astimezone(tz).date() - timedelta(days=1)
    offsets = draw(st.frozensets(st.integers(0, 21), max_size=12))
    return tz, at, window, frozenset(first + timedelta(days=o) for o in offsets)


def _quarter(index: int) -> time:
    return time(index // 4, index % 4 * 15)


def _inside(at: datetime, window: SendWindow, tz: ZoneInfo, days_off: frozenset[date]) -> bool:
    local = at.astimezone(tz)
    return (
        local.weekday() in window.weekdays
        and local.date() not in days_off
        and window.start <= local.time() < window.end
    )


def _scan(not_before: datetime, window: SendWindow, tz: ZoneInfo, days_off: frozenset[date]) -> datetime:
    at = not_before
    while not _inside(at, window, tz, days_off):
        at += QUARTER
    return at


@settings(max_examples=200, deadline=None)
@given(calendar=calendars())
def test_due_at_skips_days_off_exactly_as_a_scan_does(
    calendar: tuple[ZoneInfo, datetime, SendWindow, frozenset[date]],
) -> None:
    tz, at, window, days_off = calendar
    assert due_at(at, window, tz, days_off=days_off) == _scan(at, window, tz, days_off)


@settings(max_examples=150, deadline=None)
@given(calendar=calendars(), count=st.integers(0, 12))
def test_add_send_days_counts_only_window_days_that_are_not_off(
    calendar: tuple[ZoneInfo, datetime, SendWindow, frozenset[date]], count: int
) -> None:
    tz, at, window, days_off = calendar
    start = at.astimezone(tz).date()
    end = add_send_days(start, count, window, days_off)
    between = [start + timedelta(days=d) for d in range(1, (end - start).days + 1)]
    assert sum(is_send_day(d, window, days_off) for d in between) == count
    assert count == 0 or is_send_day(end, window, days_off)


@settings(max_examples=100, deadline=None)
@given(calendar=calendars(), counts=st.lists(st.integers(0, 10), min_size=1, max_size=4, unique=True))
def test_plan_deliveries_puts_business_day_steps_on_the_nth_send_day_inside_the_window(
    calendar: tuple[ZoneInfo, datetime, SendWindow, frozenset[date]], counts: list[int]
) -> None:
    tz, at, window, days_off = calendar
    counts = sorted(counts)
    steps = [Step(id=f"s{n}", day=n, subject="s", template="t", business_days=True) for n in counts]
    plan = plan_deliveries(steps, enrolled_at=at, window=window, tz=tz, days_off=days_off)
    anchor = due_at(at, window, tz, days_off=days_off).astimezone(tz).date()
    for step, planned in zip(steps, plan, strict=True):
        assert _inside(planned.due_at, window, tz, days_off)
        # On the N-th send day after the anchor, or later when a DST change or the previous step pushed it.
        assert planned.due_at.astimezone(tz).date() >= add_send_days(anchor, step.day, window, days_off)
    days = [p.due_at.astimezone(tz).date() for p in plan]
    assert days == sorted(set(days))


def test_business_days_step_over_a_taiwan_holiday_weekend() -> None:
    # Enrolled Thursday 2026-02-12 10:00 in Taipei; Monday 16th to Friday 20th are Lunar New Year days off.
    days_off = frozenset(date(2026, 2, d) for d in range(16, 21))
    enrolled = datetime(2026, 2, 12, 10, tzinfo=TAIPEI)
    steps = [
        Step(id="welcome", day=0, subject="s", template="t"),
        Step(id="follow", day=2, subject="s", template="t", business_days=True),
        Step(id="calendar", day=3, subject="s", template="t"),
    ]
    plan = plan_deliveries(steps, enrolled_at=enrolled, window=WINDOW, tz=TAIPEI, days_off=days_off)
    local = [p.due_at.astimezone(TAIPEI) for p in plan]
    assert local[0] == datetime(2026, 2, 12, 10, tzinfo=TAIPEI)
    assert local[1] == datetime(2026, 2, 23, 10, tzinfo=TAIPEI)  # Fri 13th, then Mon 23rd
    assert local[2] == datetime(2026, 2, 24, 9, tzinfo=TAIPEI)  # day 3 is Sunday, pushed past the step before


def test_add_send_days_gives_up_on_a_calendar_with_no_send_day() -> None:
    everything = frozenset(date(2026, 1, 1) + timedelta(days=d) for d in range(800))
    with pytest.raises(ValueError, match="no send day within a year"):
        add_send_days(date(2026, 1, 1), 1, WINDOW, everything)


# --- late and missed touches ----------------------------------------------------------------------------

MONDAY_10 = datetime(2026, 3, 2, 10, tzinfo=TAIPEI)


@pytest.mark.parametrize(
    ("now", "window", "late_after", "expected"),
    [
        pytest.param(MONDAY_10, WINDOW, None, LateTouch(MONDAY_10), id="on time"),
        pytest.param(
            MONDAY_10 + timedelta(hours=3),
            WINDOW,
            None,
            LateTouch(MONDAY_10 + timedelta(hours=3)),
            id="same window",
        ),
        pytest.param(
            MONDAY_10 + timedelta(hours=8),
            WINDOW,
            None,
            LateTouch(datetime(2026, 3, 3, 9, tzinfo=TAIPEI)),
            id="missed: next window",
        ),
        pytest.param(
            MONDAY_10 + timedelta(hours=8),
            SendWindow(missed="skip"),
            None,
            LateTouch(None, "missed its send window of 2026-03-02 (send_window.missed: skip)"),
            id="missed: skip",
        ),
        pytest.param(
            MONDAY_10 + timedelta(hours=5),
            SendWindow(missed="skip"),
            None,
            LateTouch(MONDAY_10 + timedelta(hours=5)),
            id="late but its window is still open",
        ),
        pytest.param(
            MONDAY_10 + timedelta(hours=50),
            WINDOW,
            timedelta(hours=48),
            LateTouch(None, "50.0 h late (late.skip_after_hours: 48)"),
            id="too late",
        ),
    ],
)
def test_resolve_late_touch_applies_the_campaigns_stated_policy(
    now: datetime, window: SendWindow, late_after: timedelta | None, expected: LateTouch
) -> None:
    assert resolve_late_touch(MONDAY_10, now, window, TAIPEI, skip_late_after=late_after) == expected


@settings(max_examples=200, deadline=None)
@given(
    calendar=calendars(),
    late=st.integers(0, 14 * 96),
    missed=st.sampled_from(["next_window", "skip"]),
    limit_h=st.one_of(st.none(), st.integers(1, 200)),
)
def test_resolve_late_touch_never_sends_outside_the_window_and_never_skips_silently(
    calendar: tuple[ZoneInfo, datetime, SendWindow, frozenset[date]],
    late: int,
    missed: str,
    limit_h: int | None,
) -> None:
    tz, planned_at, base, days_off = calendar
    window = SendWindow(start=base.start, end=base.end, weekdays=base.weekdays, missed=missed)  # type: ignore[arg-type]
    now = planned_at + late * QUARTER
    limit = timedelta(hours=limit_h) if limit_h is not None else None
    touch = resolve_late_touch(planned_at, now, window, tz, skip_late_after=limit, days_off=days_off)
    if touch.send_at is None:
        assert touch.skip_reason
        assert missed == "skip" or limit is not None
    else:
        assert touch.skip_reason is None
        assert touch.send_at == _scan(now, window, tz, days_off)
        assert limit is None or now - planned_at <= limit
