"""Per-domain rate limits: the rule syntax and the window arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.ratelimit import (
    Rate,
    RateLimitSyntaxError,
    WindowCount,
    grant,
    parse_rate_limits,
    recipient_domain,
    window_start,
)

HOUR = timedelta(hours=1)
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_parses_named_domains_a_wildcard_and_default_period() -> None:
    limits = parse_rate_limits("gmail.com=600/h, Outlook.com=300/h *=50 yahoo.com=10")
    assert limits.rate_for("GMAIL.com") == Rate(600, HOUR)
    assert limits.rate_for("outlook.com") == Rate(300, HOUR)
    assert limits.rate_for("yahoo.com") == Rate(10, HOUR)
    assert limits.rate_for("example.org") == Rate(50, HOUR)


def test_zero_or_no_rule_means_no_cap() -> None:
    limits = parse_rate_limits("gmail.com=600/m, *=0")
    assert limits.rate_for("example.org") is None
    assert limits.rate_for("gmail.com") == Rate(600, timedelta(minutes=1))
    assert parse_rate_limits("").rate_for("gmail.com") is None
    assert not parse_rate_limits("  ").any_capped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gmail.com=600/w", "bad domain rate limit 'gmail.com=600/w'"),
        ("gmail.com", "bad domain rate limit 'gmail.com'"),
        ("gmail.com=-1/h", "bad domain rate limit"),
        ("=5/h", "bad domain rate limit"),
        ("a.com=1/h,a.com=2/h", "given twice"),
    ],
)
def test_bad_rules_are_named(text: str, message: str) -> None:
    with pytest.raises(RateLimitSyntaxError, match=message):
        parse_rate_limits(text)


def test_recipient_domain_is_lower_case() -> None:
    assert recipient_domain("Mei.Lin@Example.COM") == "example.com"
    assert recipient_domain("no-at-sign") == ""


def test_a_new_window_starts_afresh() -> None:
    rate = Rate(10, HOUR)
    granted, count = grant(None, rate, 25, T0 + timedelta(minutes=5))
    assert (granted, count) == (10, WindowCount(T0, 10))
    assert grant(count, rate, 1, T0 + timedelta(minutes=59))[0] == 0
    assert grant(count, rate, 3, T0 + HOUR)[0] == 3


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_start(datetime(2026, 1, 1), HOUR)  # noqa: DTZ001 - the point of the test


# Naive bounds are how hypothesis takes them; every drawn instant is UTC.
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
periods = st.sampled_from([timedelta(seconds=1), timedelta(minutes=1), HOUR, timedelta(days=1)])


@given(now=instants, period=periods)
def test_window_holds_now_and_is_aligned(now: datetime, period: timedelta) -> None:
    start = window_start(now, period)
    assert start <= now < start + period
    assert window_start(start, period) == start


@given(
    count=st.integers(min_value=1, max_value=1000),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=600), st.integers(min_value=0, max_value=400)),
        max_size=60,
    ),
)
def test_no_window_ever_gets_more_than_its_cap(count: int, steps: list[tuple[int, int]]) -> None:
    """Whatever is asked for and whenever, each aligned window is granted at most `count` in total."""
    rate = Rate(count, HOUR)
    now, state = T0, None
    per_window: dict[datetime, int] = {}
    for seconds_later, wanted in steps:
        now += timedelta(seconds=seconds_later * 10)
        granted, state = grant(state, rate, wanted, now)
        assert 0 <= granted <= wanted
        per_window[window_start(now, HOUR)] = per_window.get(window_start(now, HOUR), 0) + granted
        assert state.used == per_window[state.window_start]
    assert all(total <= count for total in per_window.values())


@given(count=st.integers(min_value=1, max_value=1000), wanted=st.integers(min_value=0, max_value=5000))
def test_an_unused_window_grants_up_to_the_cap(count: int, wanted: int) -> None:
    assert grant(None, Rate(count, HOUR), wanted, T0)[0] == min(count, wanted)


@given(
    local=st.text(max_size=20),
    domain=st.text(st.characters(blacklist_characters="@"), max_size=30),
    no_at=st.text(st.characters(blacklist_characters="@"), max_size=30),
)
def test_recipient_domain_is_what_follows_the_last_at_in_lower_case_or_nothing(
    local: str, domain: str, no_at: str
) -> None:
    assert recipient_domain(f"{local}@{domain}") == domain.lower()
    assert recipient_domain(no_at) == ""  # an address without an @ has no domain, and no part of it is one
