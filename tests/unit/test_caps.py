"""Frequency caps: the next instant one more email keeps a lead within its daily and weekly caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.caps import DAY, NO_CAP, WEEK, FrequencyCap, next_allowed_at

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("sent_hours_ago", "cap", "expected"),
    [
        ([], FrequencyCap(2, 6), NOW),
        ([1], FrequencyCap(2, 6), NOW),  # one of two today: fine
        ([1, 5], FrequencyCap(2, 6), NOW - 5 * H + DAY),  # the older one must age out
        ([30, 1, 5], FrequencyCap(2, 6), NOW - 5 * H + DAY),  # yesterday's does not count today
        ([1, 25, 49, 73, 97, 121], FrequencyCap(2, 6), NOW - 121 * H + WEEK),  # the week is full
        ([1, 5], FrequencyCap(0, 0), NOW),  # no cap
        ([1, 5, 7], FrequencyCap(1, 0), NOW - 1 * H + DAY),  # daily only: the newest must age out
    ],
)
def test_next_allowed_at_waits_for_the_send_that_must_age_out(
    sent_hours_ago: list[int], cap: FrequencyCap, expected: datetime
) -> None:
    assert next_allowed_at([NOW - h * H for h in sent_hours_ago], cap, NOW) == expected


def _count(sent: list[datetime], at: datetime, span: timedelta) -> int:
    return sum(at - span < s <= at for s in sent)


@given(
    minutes_ago=st.lists(st.integers(min_value=0, max_value=10 * 24 * 60), max_size=20),
    per_day=st.integers(min_value=0, max_value=4),
    per_week=st.integers(min_value=0, max_value=10),
)
def test_next_allowed_at_is_the_first_instant_within_both_caps(
    minutes_ago: list[int], per_day: int, per_week: int
) -> None:
    cap = FrequencyCap(per_day, per_week)
    sent = [NOW - timedelta(minutes=m) for m in minutes_ago]
    allowed = next_allowed_at(sent, cap, NOW)
    assert allowed >= NOW

    def fits(at: datetime) -> bool:
        return all(
            limit == 0 or _count(sent, at, span) < limit for limit, span in ((per_day, DAY), (per_week, WEEK))
        )

    assert fits(allowed)
    if allowed > NOW:  # and not a microsecond earlier
        assert not fits(allowed - timedelta(microseconds=1))


def test_no_cap_never_defers() -> None:
    assert next_allowed_at([NOW] * 50, NO_CAP, NOW) == NOW
