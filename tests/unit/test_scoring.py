"""score and matched_moments: points, URL rules, machine filters, daily caps, decay and moments."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.core.scoring import (
    DEFAULT_RULES,
    EVENT_TYPES,
    EngagementEvent,
    Moment,
    ScoreBreakdown,
    ScoringRules,
    UrlRule,
    falls_below_at,
    matched_moments,
    next_drop_at,
    score,
    score_as_of,
    url_matches,
)

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
SITE = "https://acme.example"
HUMAN_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15"
)


def event(
    event_id: int = 1, event_type: str = "page_visit", at: datetime = NOW, **fields: Any
) -> EngagementEvent:
    return EngagementEvent(id=event_id, type=event_type, occurred_at=at, **fields)


def only(events: list[EngagementEvent], rules: ScoringRules = DEFAULT_RULES) -> tuple[int, str | None]:
    [item] = [i for i in score(events, rules, NOW).items if i.event.id == 1]
    return item.base_points, item.ignored


# --- points, URL rules and machine filters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(event(event_type="email_open"), (1, None), id="an open"),
        pytest.param(event(event_type="meeting_booked"), (50, None), id="a meeting"),
        pytest.param(event(), (3, None), id="a visit without a URL"),
        pytest.param(event(url=f"{SITE}/about"), (3, None), id="an ordinary page"),
        pytest.param(event(url=f"{SITE}/pricing"), (15, None), id="pricing"),
        pytest.param(
            event(url=f"{SITE}/Pricing/enterprise?utm_source=x#plans"), (15, None), id="below pricing"
        ),
        pytest.param(event(url="/pricing"), (15, None), id="a bare path"),
        pytest.param(event(url=f"{SITE}/pricing-faq"), (3, None), id="a page next to pricing"),
        pytest.param(event(url=f"{SITE}/en/pricing"), (3, None), id="pricing in a subfolder"),
        pytest.param(event(url=f"{SITE}/demo"), (20, None), id="demo"),
        pytest.param(event(url=f"{SITE}/blog/why-acme"), (1, None), id="a blog post"),
        pytest.param(
            event(event_type="email_click", url=f"{SITE}/pricing"), (5, None), id="rules are for visits"
        ),
        pytest.param(
            event(event_type="webinar_attended"), (0, "no points for webinar_attended"), id="no rule"
        ),
        pytest.param(event(at=NOW + timedelta(seconds=1)), (0, "in the future"), id="future"),
        pytest.param(event(user_agent=HUMAN_UA), (3, None), id="a browser"),
        pytest.param(
            event(user_agent="Mozilla/5.0 (compatible; MIMECAST URL protection)"),
            (0, "machine: scanner user agent (mimecast)"),
            id="a mail gateway",
        ),
        pytest.param(
            event(event_type="email_open", user_agent="Mozilla/5.0 (via ggpht.com GoogleImageProxy)"),
            (0, "machine: scanner user agent (googleimageproxy)"),
            id="an image proxy",
        ),
        pytest.param(event(user_agent="curl/8.4.0"), (0, "machine: scanner user agent (curl/)"), id="curl"),
        pytest.param(
            event(event_type="email_open", delivery_sent_at=NOW - timedelta(seconds=3)),
            (0, "machine: open 3s after delivery"),
            id="an open 3s after sending",
        ),
        pytest.param(
            event(event_type="email_open", delivery_sent_at=NOW - timedelta(seconds=10)),
            (1, None),
            id="an open 10s after sending",
        ),
        pytest.param(
            event(event_type="email_open", delivery_sent_at=NOW + timedelta(seconds=5)),
            (0, "machine: open before delivery"),
            id="an open before sending",
        ),
        pytest.param(
            event(event_type="email_click", delivery_sent_at=NOW - timedelta(seconds=2)),
            (5, None),
            id="the open delay is for opens only",
        ),
    ],
)
def test_score_gives_each_event_its_points_or_the_reason_it_does_not_count(
    given: EngagementEvent, expected: tuple[int, str | None]
) -> None:
    assert only([given]) == expected


def test_score_uses_the_first_matching_url_rule_and_counts_a_rule_worth_zero() -> None:
    rules = dataclasses.replace(
        DEFAULT_RULES,
        url_rules=(
            UrlRule("/careers", 0),
            UrlRule("*/case-studies/*", 8, frozenset({"page_visit", "email_click"})),
            UrlRule("/case-studies/big", 30),
        ),
    )

    assert only([event(url="/careers/sales")], rules) == (0, None)
    assert only([event(url="/en/case-studies/big")], rules) == (8, None)
    assert only([event(event_type="email_click", url="/case-studies/x")], rules) == (8, None)


@pytest.mark.parametrize(
    ("pattern", "url", "expected"),
    [
        ("/pricing", "https://acme.example/pricing", True),
        ("/pricing", "https://acme.example/pricing/", True),
        ("/pricing", "https://acme.example/PRICING/team", True),
        ("/pricing", "https://acme.example/pricing-faq", False),
        ("/pricing", "https://acme.example/?next=/pricing", False),
        ("/pricing", "https://acme.example/en/pricing", False),
        ("*/pricing", "https://acme.example/en/pricing", True),
        ("/blog*", "https://acme.example/blog-archive", True),
        ("/docs/*/api", "/docs/v2/api", True),
        ("/pricing", "https://[::1/pricing", False),
        ("/", "https://acme.example", True),
    ],
)
def test_url_matches_globs_the_path_and_everything_below_it(pattern: str, url: str, expected: bool) -> None:
    assert url_matches(pattern, url) is expected


def test_score_takes_clicks_of_one_email_within_one_second_as_a_scanner_burst() -> None:
    # Given 4 clicks of delivery 7 at +0, +0.5, +0.9 and +1.6 s, 2 quick clicks of delivery 8
    # and 3 quick clicks without a delivery
    at = NOW - timedelta(hours=1)
    clicks = [
        event(1, "email_click", at, delivery_id=7),
        event(2, "email_click", at + timedelta(milliseconds=500), delivery_id=7),
        event(3, "email_click", at + timedelta(milliseconds=900), delivery_id=7),
        event(4, "email_click", at + timedelta(milliseconds=1600), delivery_id=7),
        event(5, "email_click", at, delivery_id=8),
        event(6, "email_click", at + timedelta(milliseconds=10), delivery_id=8),
        *(event(10 + i, "email_click", at + timedelta(milliseconds=i)) for i in range(3)),
    ]

    items = {i.event.id: i.ignored for i in score(clicks, DEFAULT_RULES, NOW).items}

    # Then only the three clicks of one email inside one second are a burst
    assert items == {
        1: "machine: click burst",
        2: "machine: click burst",
        3: "machine: click burst",
    } | dict.fromkeys((4, 5, 6, 10, 11, 12))


def test_score_sees_no_burst_in_clicks_spread_over_more_than_a_second() -> None:
    clicks = [
        event(n, "email_click", NOW - timedelta(milliseconds=700 * n), delivery_id=7) for n in (1, 2, 3)
    ]

    assert all(i.ignored is None for i in score(clicks, DEFAULT_RULES, NOW).items)


# --- caps and decay --------------------------------------------------------------------------------------


def test_score_counts_the_first_events_of_a_type_each_utc_day_up_to_its_cap() -> None:
    # Given 5 opens late on 1 March (UTC) and 2 just after midnight, handed over in reverse order
    late = datetime(2025, 3, 1, 23, 50, tzinfo=UTC)
    opens = [event(n, "email_open", late + timedelta(minutes=n)) for n in range(1, 6)]
    opens += [event(n, "email_open", datetime(2025, 3, 2, 0, n, tzinfo=UTC)) for n in (6, 7)]

    items = score(opens[::-1], DEFAULT_RULES, NOW).items

    # Then the first 3 of 1 March count, the 2 later ones hit the cap, and 2 March starts afresh
    assert [(i.event.id, i.base_points, i.ignored) for i in items] == [
        (1, 1, None),
        (2, 1, None),
        (3, 1, None),
        (4, 0, "daily cap for email_open (3 a day)"),
        (5, 0, "daily cap for email_open (3 a day)"),
        (6, 1, None),
        (7, 1, None),
    ]


def test_score_leaves_machine_events_out_of_the_daily_cap() -> None:
    scanner = [
        event(n, "email_open", NOW - timedelta(hours=3, minutes=n), user_agent="Proofpoint") for n in range(3)
    ]
    human = [event(n, "email_open", NOW - timedelta(hours=1, minutes=n)) for n in range(10, 13)]

    items = score(scanner + human, DEFAULT_RULES, NOW).items

    assert [i.event.id for i in items if i.ignored is None] == [12, 11, 10]


@pytest.mark.parametrize(
    ("age", "points"),
    [
        (timedelta(0), 20.0),
        (timedelta(days=7), 20 * 0.5**0.5),
        (timedelta(days=14), 10.0),
        (timedelta(days=28), 5.0),
        (timedelta(days=140), 20 / 1024),
    ],
)
def test_score_halves_an_events_points_every_half_life(age: timedelta, points: float) -> None:
    [item] = score([event(event_type="proposal_view", at=NOW - age)], DEFAULT_RULES, NOW).items

    assert item.base_points == 20
    assert item.points == pytest.approx(points)


def test_score_explains_a_lead_event_by_event_in_time_order() -> None:
    # Given a month of mixed engagement, handed over out of order
    events = [
        event(4, "form_submit", NOW - timedelta(days=1)),
        event(1, "email_open", NOW - timedelta(days=28), delivery_sent_at=NOW - timedelta(days=29)),
        event(3, "page_visit", NOW - timedelta(days=14), url=f"{SITE}/pricing"),
        event(2, "email_click", NOW - timedelta(days=14), user_agent="Barracuda Sentinel"),
        event(5, "email_reply", NOW),
    ]

    breakdown = score(events, DEFAULT_RULES, NOW)

    # Then every event is listed with what it is worth now, and the total is their sum
    assert [(i.event.id, i.base_points, round(i.points, 3), i.ignored) for i in breakdown.items] == [
        (1, 1, 0.25, None),
        (2, 0, 0.0, "machine: scanner user agent (barracuda)"),
        (3, 15, 7.5, None),
        (4, 15, round(15 * 0.5 ** (1 / 14), 3), None),
        (5, 25, 25.0, None),
    ]
    assert breakdown.total == round(0.25 + 7.5 + 15 * 0.5 ** (1 / 14) + 25) == 47


def test_score_of_no_events_is_zero() -> None:
    assert score([], DEFAULT_RULES, NOW) == ScoreBreakdown(total=0, items=())


def test_score_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        score([], DEFAULT_RULES, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="event 9: occurred_at must be timezone-aware"):
        score([event(9, at=NOW.replace(tzinfo=None))], DEFAULT_RULES, NOW)


# Adding an event can lower a score, so "an added event never lowers it" holds only in part (see the property
# below). These are the two ways it can, and both are intended.


def test_score_drops_when_an_earlier_event_pushes_a_richer_one_out_of_the_daily_cap() -> None:
    rules = dataclasses.replace(DEFAULT_RULES, daily_caps=MappingProxyType({"page_visit": 1}))
    pricing = event(1, "page_visit", NOW - timedelta(hours=1), url=f"{SITE}/pricing")
    blog = event(2, "page_visit", NOW - timedelta(hours=2), url=f"{SITE}/blog/x")

    assert score([pricing], rules, NOW).total == 15
    assert score([pricing, blog], rules, NOW).total == 1


def test_score_drops_when_an_added_click_turns_two_clicks_into_a_burst() -> None:
    clicks = [
        event(n, "email_click", NOW - timedelta(milliseconds=100 * n), delivery_id=7) for n in (1, 2, 3)
    ]

    assert score(clicks[:2], DEFAULT_RULES, NOW).total == 10
    assert score(clicks, DEFAULT_RULES, NOW).total == 0


# --- properties ------------------------------------------------------------------------------------------

START = datetime(2025, 2, 1, 20, 0, tzinfo=UTC)  # 40 000 s later is the next UTC day
DAY = datetime(2025, 2, 1, tzinfo=UTC)
SMALL_CAPS = dataclasses.replace(
    DEFAULT_RULES, daily_caps=MappingProxyType({"email_open": 2, "page_visit": 2, "email_click": 2})
)
TYPES = (*EVENT_TYPES, "webinar_attended")


@st.composite
def event_logs(
    draw: st.DrawFn, *, max_size: int = 25, types: tuple[str, ...] = TYPES
) -> list[EngagementEvent]:
    """Logs dense enough to hit caps, day boundaries, bursts and every machine filter."""
    size = draw(st.integers(0, max_size))
    events = []
    for event_id in range(1, size + 1):
        at = START + timedelta(
            days=draw(st.integers(0, 20)),
            seconds=draw(st.sampled_from([0, 1, 5, 3_600, 40_000])),
            milliseconds=draw(st.integers(0, 999)),
        )
        sent_after = draw(st.sampled_from([None, 3, 60]))
        events.append(
            EngagementEvent(
                id=event_id,
                type=draw(st.sampled_from(types)),
                occurred_at=at,
                url=draw(st.sampled_from([None, "/pricing", "/blog/a", "/demo", "/about"])),
                user_agent=draw(st.sampled_from([None, HUMAN_UA, "Mimecast"])),
                delivery_sent_at=None if sent_after is None else at - timedelta(seconds=sent_after),
                delivery_id=draw(st.sampled_from([None, 1, 2])),
            )
        )
    return events


def latest(events: list[EngagementEvent]) -> datetime:
    return max((e.occurred_at for e in events), default=START)


@settings(max_examples=150, deadline=None)
@given(
    events=event_logs(),
    later=st.timedeltas(timedelta(0), timedelta(days=60)),
    step=st.timedeltas(timedelta(0), timedelta(days=400)),
)
def test_score_never_rises_as_time_passes(
    events: list[EngagementEvent], later: timedelta, step: timedelta
) -> None:
    now = latest(events) + later

    before, after = score(events, SMALL_CAPS, now), score(events, SMALL_CAPS, now + step)

    assert after.total <= before.total
    assert all(a.points <= b.points for a, b in zip(after.items, before.items, strict=True))


@settings(max_examples=150, deadline=None)
@given(events=event_logs(), later=st.timedeltas(timedelta(days=-20), timedelta(days=30)))
def test_score_never_counts_more_events_of_a_type_a_day_than_its_cap(
    events: list[EngagementEvent], later: timedelta
) -> None:
    counted = Counter(
        (i.event.type, i.event.occurred_at.date())
        for i in score(events, SMALL_CAPS, latest(events) + later).items
        if i.ignored is None
    )

    assert all(n <= SMALL_CAPS.daily_caps.get(kind, n) for (kind, _), n in counted.items())


@settings(max_examples=150, deadline=None)
@given(events=event_logs(), seed=st.integers(0, 2**32))
def test_score_does_not_depend_on_the_order_events_are_given_in(
    events: list[EngagementEvent], seed: int
) -> None:
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)

    assert score(shuffled, SMALL_CAPS, latest(events)) == score(events, SMALL_CAPS, latest(events))


@settings(max_examples=150, deadline=None)
@given(events=event_logs(), later=st.timedeltas(timedelta(days=-20), timedelta(days=30)))
def test_score_explains_every_event_and_adds_up(events: list[EngagementEvent], later: timedelta) -> None:
    breakdown = score(events, SMALL_CAPS, latest(events) + later)

    assert breakdown.total == round(sum(i.points for i in breakdown.items)) >= 0
    assert Counter(i.event for i in breakdown.items) == Counter(events)
    keys = [(i.event.occurred_at, i.event.id) for i in breakdown.items]
    assert keys == sorted(keys)
    for item in breakdown.items:
        if item.ignored is None:  # counted: its rule's points, decayed
            assert 0 <= item.points <= item.base_points
        else:
            assert (item.base_points, item.points) == (0, 0.0)


@settings(max_examples=150, deadline=None)
@given(
    events=event_logs(max_size=12, types=("email_open", "page_visit", "form_submit")),
    seed=st.integers(0, 2**32),
)
def test_score_counts_the_same_undecayed_points_however_a_days_events_are_ordered(
    events: list[EngagementEvent], seed: int
) -> None:
    """Reordering a day's events may change which ones a cap cuts, but not how many points the day earns.

    This holds when an event's points depend on its type alone, so the events here have no URL and nothing
    that makes them look machine-made; with URL rules, an early blog visit can push a pricing visit out.
    """
    # Given one day of human events
    day = [
        dataclasses.replace(
            e, occurred_at=DAY + timedelta(minutes=7 * e.id), url=None, user_agent=None, delivery_sent_at=None
        )
        for e in events
    ]
    # When the same events happen in another order that day
    times = [e.occurred_at for e in day]
    random.Random(seed).shuffle(times)
    reordered = [dataclasses.replace(e, occurred_at=at) for e, at in zip(day, times, strict=True)]
    now = DAY + timedelta(days=1)

    # Then the day earns the same points before decay
    def undecayed(log: list[EngagementEvent]) -> int:
        return sum(i.base_points for i in score(log, SMALL_CAPS, now).items)

    assert undecayed(reordered) == undecayed(day)


@settings(max_examples=150, deadline=None)
@given(
    events=event_logs(),
    extra=event_logs(
        max_size=1, types=("content_download", "form_submit", "meeting_booked", "webinar_attended")
    ),
)
def test_score_never_drops_when_an_uncapped_event_other_than_a_click_is_added(
    events: list[EngagementEvent], extra: list[EngagementEvent]
) -> None:
    added = [dataclasses.replace(e, id=1_000 + e.id) for e in extra]
    now = latest(events + added)

    assert score(events + added, SMALL_CAPS, now).total >= score(events, SMALL_CAPS, now).total


# --- moments ---------------------------------------------------------------------------------------------

PRICING = Moment("pricing_visit", "page_visit", url_pattern="/pricing")
REOPENED = Moment("proposal_reopened", "proposal_view", after_silence=timedelta(days=14))


def names(found: tuple[tuple[Moment, EngagementEvent], ...]) -> list[tuple[str, int]]:
    return [(moment.name, e.id) for moment, e in found]


def test_the_default_moments_are_a_pricing_visit_and_a_proposal_reopened_after_14_days() -> None:
    assert DEFAULT_RULES.moments == (PRICING, REOPENED)


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param([event(1, url=f"{SITE}/pricing/enterprise")], [("pricing_visit", 1)], id="pricing"),
        pytest.param([event(1, url=f"{SITE}/about")], [], id="another page"),
        pytest.param([event(1, "email_click", url=f"{SITE}/pricing")], [], id="another type"),
        pytest.param([event(1)], [], id="no URL"),
        pytest.param([event(1, url="/pricing", user_agent="Mimecast/1.0")], [], id="a scanner"),
        pytest.param(
            [event(2, url="/pricing", at=NOW + timedelta(minutes=1)), event(1, url="/pricing")],
            [("pricing_visit", 1)],
            id="twice: once, with the earlier visit",
        ),
    ],
)
def test_matched_moments_finds_a_pricing_visit_among_the_new_events(
    new: list[EngagementEvent], expected: list[tuple[str, int]]
) -> None:
    assert names(matched_moments(new, [], DEFAULT_RULES)) == expected


def test_matched_moments_looks_only_at_the_new_events() -> None:
    history = [event(1, url="/pricing", at=NOW - timedelta(days=1))]

    assert matched_moments([event(2, url="/about")], history, DEFAULT_RULES) == ()


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        pytest.param(
            [event(1, "email_open", NOW - timedelta(days=15))], [("proposal_reopened", 9)], id="15 days"
        ),
        pytest.param(
            [event(1, "email_open", NOW - timedelta(days=14))], [("proposal_reopened", 9)], id="14 days"
        ),
        pytest.param([event(1, "email_open", NOW - timedelta(days=13))], [], id="13 days"),
        pytest.param([], [], id="no earlier event: nothing to break"),
        pytest.param(
            [
                event(1, "proposal_view", NOW - timedelta(days=30)),
                event(2, "email_open", NOW - timedelta(days=2)),
            ],
            [],
            id="an open 2 days ago",
        ),
        pytest.param(
            [
                event(1, "proposal_view", NOW - timedelta(days=30)),
                event(2, "page_visit", NOW - timedelta(days=2), user_agent="python-requests/2.31"),
                event(3, "email_open", NOW - timedelta(days=2), delivery_sent_at=NOW - timedelta(days=2)),
            ],
            [("proposal_reopened", 9)],
            id="machine events do not break the silence",
        ),
        pytest.param(
            [
                event(1, "proposal_view", NOW - timedelta(days=30)),
                event(2, "webinar", NOW - timedelta(days=2)),
            ],
            [],
            id="a human event with no points does",
        ),
        pytest.param(
            [
                event(1, "email_open", NOW - timedelta(days=30)),
                event(2, "email_open", NOW + timedelta(days=1)),
            ],
            [("proposal_reopened", 9)],
            id="later history does not count",
        ),
    ],
)
def test_matched_moments_finds_a_proposal_reopened_only_after_the_silence(
    history: list[EngagementEvent], expected: list[tuple[str, int]]
) -> None:
    assert names(matched_moments([event(9, "proposal_view")], history, DEFAULT_RULES)) == expected


def test_matched_moments_counts_an_earlier_new_event_as_breaking_the_silence() -> None:
    history = [event(1, "email_open", NOW - timedelta(days=30))]
    new = [event(9, "proposal_view"), event(8, "page_visit", NOW - timedelta(hours=1), url="/pricing")]

    assert names(matched_moments(new, history, DEFAULT_RULES)) == [("pricing_visit", 8)]


def test_matched_moments_ignores_clicks_that_are_part_of_a_burst_across_history_and_new_events() -> None:
    rules = dataclasses.replace(
        DEFAULT_RULES, moments=(Moment("clicked_pricing", "email_click", "/pricing"),)
    )
    history = [event(n, "email_click", NOW - timedelta(milliseconds=100 * n), delivery_id=7) for n in (1, 2)]
    new = [event(3, "email_click", NOW, url="/pricing", delivery_id=7)]

    assert matched_moments(new, history, rules) == ()
    assert names(matched_moments(new, history[:1], rules)) == [("clicked_pricing", 3)]


def test_matched_moments_lists_moments_in_the_order_of_the_rules() -> None:
    history = [event(1, "email_open", NOW - timedelta(days=20))]
    new = [event(3, url="/pricing", at=NOW + timedelta(minutes=5)), event(2, "proposal_view")]

    assert names(matched_moments(new, history, DEFAULT_RULES)) == [
        ("pricing_visit", 3),
        ("proposal_reopened", 2),
    ]


def test_matched_moments_finds_nothing_without_moments_or_new_events() -> None:
    no_moments = dataclasses.replace(DEFAULT_RULES, moments=())

    assert matched_moments([event(1, url="/pricing")], [], no_moments) == ()
    assert matched_moments([], [event(1, url="/pricing")], DEFAULT_RULES) == ()


# --- decay of a stored score ----------------------------------------------------------------------------

HALF = DEFAULT_RULES.half_life
points_values = st.floats(min_value=0, max_value=5_000, allow_nan=False)
ages = st.integers(min_value=0, max_value=400 * 86_400)


@given(points=points_values, first=ages, more=ages)
def test_decay_never_raises_a_stored_score(points: float, first: int, more: int) -> None:
    earlier = score_as_of(points, START, START + timedelta(seconds=first), HALF)
    later = score_as_of(points, START, START + timedelta(seconds=first + more), HALF)
    assert 0 <= later <= earlier <= round(points)


@given(points=points_values, age=ages)
def test_a_refresh_is_idempotent_and_next_drop_at_is_when_the_score_falls(points: float, age: int) -> None:
    now = START + timedelta(seconds=age)
    value = score_as_of(points, START, now, HALF)
    drop = next_drop_at(points, START, now, HALF)
    if value == 0:
        assert drop is None
        return
    assert drop is not None
    assert drop > now
    # Refreshing again at `now`, or at any instant before the drop, gives the same value
    assert score_as_of(points, START, now, HALF) == value
    before = drop - timedelta(milliseconds=2)
    if before >= now:
        assert score_as_of(points, START, before, HALF) == value
    assert score_as_of(points, START, drop, HALF) < value
    # And a refresh at the drop schedules the next one later still
    following = next_drop_at(points, START, drop, HALF)
    assert following is None or following > drop


@given(points=points_values, threshold=st.integers(1, 200))
def test_falls_below_at_is_the_first_instant_under_the_threshold(points: float, threshold: int) -> None:
    since = falls_below_at(points, START, threshold, HALF)
    if round(points) < threshold:
        assert since is None
        return
    assert since is not None
    assert score_as_of(points, START, since, HALF) < threshold
    assert score_as_of(points, START, since - timedelta(milliseconds=2), HALF) >= threshold


@settings(max_examples=150, deadline=None)
@given(events=event_logs(), later=st.integers(0, 60 * 86_400))
def test_a_stored_score_decays_to_what_scoring_again_gives(events: list[EngagementEvent], later: int) -> None:
    at = latest(events)
    then = score(events, DEFAULT_RULES, at)
    now = at + timedelta(seconds=later)
    again = score(events, DEFAULT_RULES, now)
    decayed = then.points * 0.5 ** (later / HALF.total_seconds())
    assert abs(again.points - decayed) < 1e-6
    if abs(decayed % 1 - 0.5) > 1e-6:  # away from a rounding tie, the integers agree too
        assert score_as_of(then.points, at, now, HALF) == again.total


@given(repeats=st.integers(min_value=1, max_value=30))
def test_a_stored_repeat_never_scores_nor_hits_a_moment(repeats: int) -> None:
    first = EngagementEvent(1, "page_visit", NOW - timedelta(minutes=5), url="https://a.example/pricing")
    again = [
        dataclasses.replace(first, id=2 + i, occurred_at=NOW - timedelta(minutes=4, seconds=i), repeat=True)
        for i in range(repeats)
    ]

    breakdown = score([first, *again], DEFAULT_RULES, NOW)

    assert breakdown.total == score([first], DEFAULT_RULES, NOW).total
    assert all(item.ignored is not None and item.ignored.startswith("repeat") for item in breakdown.items[1:])
    assert matched_moments(again, [first], DEFAULT_RULES) == ()
