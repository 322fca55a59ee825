"""Send-time maths: which zone a lead is mailed in, and when each step of a campaign falls due.

A send window is read on the lead's wall clock, so the maths works on wall-clock readings and on the real
instants behind them, and stays exact across DST gaps and folds (including 30-minute shifts and days that a
zone skipped). Every function is pure: instants go in and come out as aware datetimes; `now` is never read.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nurture.core.campaign import SendWindow, Step

# Local dates on which nothing is sent (a lead's public holidays); the catalog builds them from a calendar.
DaysOff = Container[date]
NO_DAYS_OFF: Final[DaysOff] = frozenset()

# Checked before ZoneInfo() sees a key: lead data is untrusted, and a key like "a/a/a/.../b" makes ZoneInfo's
# tzdata fallback recurse through importlib until RecursionError. The longest IANA name has 32 characters.
_ZONE_KEY: Final = re.compile(r"[A-Za-z0-9_+-]{1,32}(?:/[A-Za-z0-9_+-]{1,32}){0,3}")
_ZONE_KEY_MAX: Final = 64
# The search advances at most a day at a time: since 1990 no zone in tzdata changes its offset twice within a
# week (the closest pair, Brazil 2000, is 7 days apart), so a stretch holds at most one change to bisect for.
_MAX_STRIDE: Final = timedelta(days=1)
# A non-empty window is met within 15 days even when its hours fall into a DST gap on one of its days.
_MAX_STRIDES: Final = 64
_RESOLUTION: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """When one step of an enrollment falls due."""

    step_id: str
    step_index: int
    due_at: datetime


@dataclass(frozen=True, slots=True)
class LateTouch:
    """What to do with a touch taken up at some instant after it fell due: send it at `send_at` (that
    instant when its window is open, else the next opening), or skip it for `skip_reason`."""

    send_at: datetime | None
    skip_reason: str | None = None


def lead_zone(lead_timezone: str | None, window: SendWindow) -> ZoneInfo:
    """Return the zone `window` is read in: the campaign's fixed zone, else the lead's, else the default."""
    if window.timezone is not None:
        return ZoneInfo(window.timezone)
    return _zone_or_none(lead_timezone) or ZoneInfo(window.default_timezone)


def due_at(
    not_before: datetime, window: SendWindow, tz: ZoneInfo, *, days_off: DaysOff = NO_DAYS_OFF
) -> datetime:
    """Return the first instant >= `not_before` whose wall clock in `tz` is inside `window`, as aware UTC,
    on a local day that is not in `days_off`.

    Raises:
        ValueError: `not_before` is naive, or the window has no weekday or ends before it starts.
    """
    if not_before.tzinfo is None:
        raise ValueError("not_before must be timezone-aware")
    if not window.weekdays or window.start >= window.end:
        raise ValueError("send window is empty: it needs a weekday and start < end")
    at = not_before.astimezone(UTC)
    for _ in range(_MAX_STRIDES):
        local = at.astimezone(tz)
        if _is_inside(local, window, days_off):
            return at
        at = _next_candidate(at, local, window, tz, days_off)
    raise ValueError(f"send window never opens in {tz.key}")


def plan_deliveries(
    steps: Sequence[Step],
    *,
    enrolled_at: datetime,
    window: SendWindow,
    tz: ZoneInfo,
    days_off: DaysOff = NO_DAYS_OFF,
) -> tuple[PlannedDelivery, ...]:
    """Return when each step falls due for a lead enrolled at `enrolled_at`, in step order.

    Step k is due `step.day` local calendar days after the first send opportunity (the anchor), at the same
    wall-clock time, so a DST change does not move the hour; but never sooner than `step.day` whole days after
    enrollment (which can cost an hour when the lead enrolled inside the window just before clocks went
    forward), and always on a later local day than the step before it, so weekend shifts never stack two
    touches on one day. `due_at()` then moves it into the window. A business-day step (`step.business_days`)
    counts `step.day` local days that are send days (a window weekday not in `days_off`) instead.
    """
    anchor_wall = _wall(due_at(enrolled_at, window, tz, days_off=days_off), tz)
    planned: list[PlannedDelivery] = []
    previous_day: date | None = None
    for index, step in enumerate(steps):
        if step.day < 0:
            raise ValueError(f"step {step.id!r} has a negative day offset: {step.day}")
        offset = timedelta(days=step.day)
        wall = anchor_wall + offset
        if step.business_days:
            day = add_send_days(anchor_wall.date(), step.day, window, days_off)
            wall = datetime.combine(day, wall.time())
        earliest = max(_first_at_wall(wall, tz), enrolled_at.astimezone(UTC) + offset)
        at = _due_after_day(earliest, previous_day, window, tz, days_off)
        planned.append(PlannedDelivery(step_id=step.id, step_index=index, due_at=at))
        previous_day = at.astimezone(tz).date()
    return tuple(planned)


def _zone_or_none(name: str | None) -> ZoneInfo | None:
    if not name or len(name) > _ZONE_KEY_MAX or not _ZONE_KEY.fullmatch(name):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def is_send_day(day: date, window: SendWindow, days_off: DaysOff = NO_DAYS_OFF) -> bool:
    """Whether mail may go out on local date `day`: one of the window's weekdays, and not a day off."""
    return day.weekday() in window.weekdays and day not in days_off


def add_send_days(start: date, count: int, window: SendWindow, days_off: DaysOff = NO_DAYS_OFF) -> date:
    """Return the `count`-th send day after `start` (`start` itself when `count` is 0).

    Raises:
        ValueError: no send day within a year, so the count can never be reached.
    """
    day, left, idle = start, count, 0
    while left > 0:
        day += timedelta(days=1)
        if is_send_day(day, window, days_off):
            left, idle = left - 1, 0
        else:
            idle += 1
            if idle > 366:
                raise ValueError("no send day within a year: check the window's days and the days off")
    return day


def _is_inside(local: datetime, window: SendWindow, days_off: DaysOff) -> bool:
    return is_send_day(local.date(), window, days_off) and window.start <= local.time() < window.end


def _wall(at: datetime, tz: ZoneInfo) -> datetime:
    """Return the naive wall-clock reading of `at` in `tz`."""
    return at.astimezone(tz).replace(tzinfo=None)


def _next_candidate(
    at: datetime, local: datetime, window: SendWindow, tz: ZoneInfo, days_off: DaysOff
) -> datetime:
    """Return the next instant after `at` (outside the window) at which it may open.

    That is where the wall clock reaches the window's start on its next weekday, unless the offset changes
    first: a change makes the clock jump, possibly into the window, so the search stops at it.
    """
    opens = datetime.combine(_next_window_day(local, window, days_off), window.start)
    candidate = at + min(opens - local.replace(tzinfo=None), _MAX_STRIDE)
    if candidate.astimezone(tz).utcoffset() == local.utcoffset():
        return candidate
    return _offset_change(at, candidate, tz)


def _next_window_day(local: datetime, window: SendWindow, days_off: DaysOff) -> date:
    day = local.date()
    if is_send_day(day, window, days_off) and local.time() < window.start:
        return day
    day += timedelta(days=1)
    for _ in range(366):
        if is_send_day(day, window, days_off):
            return day
        day += timedelta(days=1)
    return day  # no send day within a year: due_at gives up after its strides


def _offset_change(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """Return the first instant in (`before`, `after`] whose UTC offset differs from `before`'s."""
    offset = before.astimezone(tz).utcoffset()
    lo, hi = before, after
    while hi - lo > _RESOLUTION:
        mid = lo + (hi - lo) // 2
        if mid.astimezone(tz).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return hi


def _first_at_wall(wall: datetime, tz: ZoneInfo) -> datetime:
    """Return the first instant whose wall clock in `tz` reads `wall`, or the end of the DST gap hiding it."""
    early = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(early, tz) == wall:
        return early
    # In a gap, fold=0 reads `wall` with the offset before the change and fold=1 with the one after, so the
    # two readings bracket the instant the clock jumps: the first at which it reads `wall` or later.
    late = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return _offset_change(min(early, late), max(early, late), tz)


def _due_after_day(
    earliest: datetime, previous_day: date | None, window: SendWindow, tz: ZoneInfo, days_off: DaysOff
) -> datetime:
    """Return `due_at(earliest)`, or the first window instant on a local day later than `previous_day`."""
    if previous_day is None:
        return due_at(earliest, window, tz, days_off=days_off)
    day = previous_day
    # Usually one pass; a clock falling back across midnight (Antarctica/Casey, 2010) can return to
    # `previous_day` after the next one began, and then the following day is tried.
    for _ in range(_MAX_STRIDES):
        day += timedelta(days=1)
        not_before = max(earliest, _first_at_wall(datetime.combine(day, time()), tz))
        at = due_at(not_before, window, tz, days_off=days_off)
        if at.astimezone(tz).date() > previous_day:
            return at
    raise ValueError(f"no later local day found in {tz.key}")


def resolve_late_touch(
    planned_at: datetime,
    now: datetime,
    window: SendWindow,
    tz: ZoneInfo,
    *,
    skip_late_after: timedelta | None = None,
    days_off: DaysOff = NO_DAYS_OFF,
) -> LateTouch:
    """Apply the campaign's stated policy to a touch planned for `planned_at` and taken up at `now`.

    More than `skip_late_after` late (the campaign's `late.skip_after_hours`): skipped. Otherwise, once the
    window of the planned local day has closed, the touch has missed it, and `window.missed` decides:
    `next_window` sends it at the next opening, `skip` skips it. Never silent: a skip carries its reason.
    """
    late = now - planned_at
    if skip_late_after is not None and late > skip_late_after:
        limit_h = skip_late_after / timedelta(hours=1)
        return LateTouch(None, f"{late / timedelta(hours=1):.1f} h late (late.skip_after_hours: {limit_h:g})")
    planned_day = planned_at.astimezone(tz).date()
    closed_at = _first_at_wall(datetime.combine(planned_day, window.end), tz)
    if now >= closed_at and window.missed == "skip":
        return LateTouch(None, f"missed its send window of {planned_day} (send_window.missed: skip)")
    return LateTouch(due_at(now, window, tz, days_off=days_off))
