"""Frequency caps across all campaigns: how many emails one lead may get per day and per week. Pure.

Caps count over rolling windows (the last 24 hours, the last 7 days), so the answer does not depend on a
time zone or on where a calendar week starts, and the next allowed instant is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `per_day` emails in any 24 hours and `per_week` in any 7 days; 0 means no cap."""

    per_day: int = 2
    per_week: int = 6

    @property
    def lookback(self) -> timedelta:
        """How far back sends matter for this cap."""
        return WEEK if self.per_week else DAY


NO_CAP = FrequencyCap(per_day=0, per_week=0)


def next_allowed_at(sent_at: Sequence[datetime], cap: FrequencyCap, now: datetime) -> datetime:
    """Return the first instant >= `now` at which one more email keeps the lead within `cap`.

    `sent_at` are the instants of the lead's earlier emails (any order, none after `now`). A window
    (t - span, t] holding `limit` or more of them blocks t; as t grows, sends only leave the window.
    """
    allowed = now
    for limit, span in ((cap.per_day, DAY), (cap.per_week, WEEK)):
        if limit <= 0:
            continue
        recent = sorted(s for s in sent_at if s > now - span)
        if len(recent) >= limit:
            # once the (len - limit + 1) oldest have aged out, limit - 1 remain
            allowed = max(allowed, recent[len(recent) - limit] + span)
    return allowed
