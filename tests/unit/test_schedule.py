"""Send-time maths: due_at finds the first in-window instant; plan_deliveries spaces a campaign's steps."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.core.campaign import SendWindow, Step
from nurture.core.schedule import PlannedDelivery, due_at, lead_zone, plan_deliveries

NY = ZoneInfo("America/New_York")
TAIPEI = ZoneInfo("Asia/Taipei")
WINDOW = SendWindow()
EVERY_DAY = frozenset(range(7))
QUARTER = timedelta(minutes=15)
QUARTERS_PER_DAY = 96

# Offset changes of several kinds: DST gaps and folds of 30 and 60 minutes, quarter-hour offsets (Chatham), a
# skipped day (Apia), a clock falling back across midnight (Casey), negative DST (Dublin), and changes at
# midnight (Santiago). Half the drawn cases sit within a day of one, with the window's edges near the change.
TRANSITIONS = [
    (ZoneInfo(name), at)
    for name, at in (
        ("Antarctica/Casey", datetime(2010, 3, 4, 15, tzinfo=UTC)),
        ("Pacific/Apia", datetime(2011, 12, 30, 10, tzinfo=UTC)),
        ("America/New_York", datetime(2024, 3, 10, 7, tzinfo=UTC)),
        ("America/New_York", datetime(2024, 11, 3, 6, tzinfo=UTC)),
        ("Australia/Lord_Howe", datetime(2024, 4, 6, 15, tzinfo=UTC)),
        ("Australia/Lord_Howe", datetime(2024, 10, 5, 15, 30, tzinfo=UTC)),
        ("America/Santiago", datetime(2024, 4, 7, 3, tzinfo=UTC)),
        ("America/Santiago", datetime(2024, 9, 8, 4, tzinfo=UTC)),
        ("Europe/Dublin", datetime(2024, 3, 31, 1, tzinfo=UTC)),
        ("Europe/Dublin", datetime(2024, 10, 27, 1, tzinfo=UTC)),
        ("Pacific/Chatham", datetime(2024, 4, 6, 14, tzinfo=UTC)),
        ("Pacific/Chatham", datetime(2024, 9, 28, 14, tzinfo=UTC)),
    )
]
ZONES = sorted({tz for tz, _ in TRANSITIONS} | {ZoneInfo("UTC"), TAIPEI, ZoneInfo("Asia/Kathmandu")}, key=str)
EPOCH = datetime(2009, 1, 1, tzinfo=UTC)


def _quarter(index: int) -> time:
    return time(index // 4, index % 4 * 15)


@st.composite
def windows(draw: st.DrawFn, near: int | None = None) -> SendWindow:
    """Draw a window on the quarter-hour grid; `near` (a quarter of the day) pulls its start toward it."""
    if near is None:
        start = draw(st.integers(min_value=0, max_value=QUARTERS_PER_DAY - 2))
    else:
        start = draw(st.integers(min_value=max(0, near - 8), max_value=min(QUARTERS_PER_DAY - 2, near + 8)))
    short = st.integers(min_value=start + 1, max_value=min(QUARTERS_PER_DAY - 1, start + 12))
    end = draw(st.one_of(short, st.integers(min_value=start + 1, max_value=QUARTERS_PER_DAY - 1)))
    weekdays = draw(st.frozensets(st.integers(min_value=0, max_value=6), min_size=1))
    return SendWindow(start=_quarter(start), end=_quarter(end), weekdays=weekdays)


@st.composite
def scenarios(draw: st.DrawFn, jitter: timedelta = timedelta(0)) -> tuple[ZoneInfo, datetime, SendWindow]:
    """Draw a zone, an instant on the quarter-hour grid (plus up to `jitter`) and a window.

    Every offset and offset change of these zones is a whole quarter hour, so for a grid instant the first
    in-window instant is on the grid too, and scanning the grid finds it exactly.
    """
    if draw(st.booleans()):
        tz, change = draw(st.sampled_from(TRANSITIONS))
        at = change + draw(st.integers(min_value=-QUARTERS_PER_DAY, max_value=QUARTERS_PER_DAY)) * QUARTER
        wall = draw(st.sampled_from([change - timedelta(microseconds=1), change])).astimezone(tz)
        window = draw(windows(near=wall.hour * 4 + wall.minute // 15))
    else:
        tz = draw(st.sampled_from(ZONES))
        at = EPOCH + draw(st.integers(min_value=0, max_value=27 * 365 * QUARTERS_PER_DAY)) * QUARTER
        window = draw(windows())
    extra = draw(st.integers(min_value=0, max_value=jitter // timedelta(microseconds=1)))
    return tz, at + timedelta(microseconds=extra), window


day_lists = st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=6)


def _is_inside(at: datetime, window: SendWindow, tz: ZoneInfo) -> bool:
    local = at.astimezone(tz)
    return local.weekday() in window.weekdays and window.start <= local.time() < window.end


def _first_inside_by_scan(not_before: datetime, window: SendWindow, tz: ZoneInfo) -> datetime:
    at = not_before
    while not _is_inside(at, window, tz):
        at += QUARTER
    return at


def _steps(days: list[int]) -> tuple[Step, ...]:
    return tuple(Step(id=f"s{i}", day=day, subject="s", template="t.html") for i, day in enumerate(days))


# --- lead_zone -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lead_timezone", "window", "expected"),
    [
        pytest.param("Asia/Taipei", WINDOW, "Asia/Taipei", id="the lead's own zone"),
        pytest.param(
            "Asia/Taipei", SendWindow(timezone="Europe/Berlin"), "Europe/Berlin", id="fixed zone wins"
        ),
        pytest.param(None, SendWindow(default_timezone="Asia/Tokyo"), "Asia/Tokyo", id="no lead zone"),
        pytest.param("", SendWindow(default_timezone="Asia/Tokyo"), "Asia/Tokyo", id="empty lead zone"),
        pytest.param(
            "Mars/Olympus_Mons", SendWindow(default_timezone="Asia/Tokyo"), "Asia/Tokyo", id="unknown"
        ),
        pytest.param("../../etc/passwd", WINDOW, "UTC", id="a path"),
        pytest.param("America", WINDOW, "UTC", id="a folder of zones"),
        pytest.param("zone.tab", WINDOW, "UTC", id="not a zone file"),
        pytest.param("a/" * 400 + "b", WINDOW, "UTC", id="a key that makes ZoneInfo recurse"),
    ],
)
def test_lead_zone_prefers_the_fixed_zone_then_a_valid_lead_zone_then_the_default(
    lead_timezone: str | None, window: SendWindow, expected: str
) -> None:
    assert lead_zone(lead_timezone, window).key == expected


# --- due_at ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios())
def test_due_at_returns_the_first_instant_inside_the_window(
    scenario: tuple[ZoneInfo, datetime, SendWindow],
) -> None:
    tz, not_before, window = scenario
    assert due_at(not_before, window, tz) == _first_inside_by_scan(not_before, window, tz)


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios(jitter=QUARTER))
def test_due_at_is_never_early_always_inside_the_window_and_no_later_than_needed(
    scenario: tuple[ZoneInfo, datetime, SendWindow],
) -> None:
    tz, not_before, window = scenario
    at = due_at(not_before, window, tz)
    assert at.tzinfo is UTC
    assert at >= not_before
    assert _is_inside(at, window, tz)
    # The instant just before is either too early or outside: nothing earlier was skipped at the edge.
    assert at == not_before or not _is_inside(at - timedelta(microseconds=1), window, tz)


@pytest.mark.parametrize(
    ("not_before", "window", "tz", "expected"),
    [
        pytest.param(
            datetime(2024, 3, 8, 23, tzinfo=TAIPEI),
            WINDOW,
            TAIPEI,
            datetime(2024, 3, 11, 9, tzinfo=TAIPEI),
            id="Friday night waits for Monday morning",
        ),
        pytest.param(
            datetime(2024, 3, 12, 11, 30, tzinfo=TAIPEI),
            WINDOW,
            TAIPEI,
            datetime(2024, 3, 12, 11, 30, tzinfo=TAIPEI),
            id="inside the window: now",
        ),
        pytest.param(
            datetime(2024, 3, 12, 17, tzinfo=TAIPEI),
            WINDOW,
            TAIPEI,
            datetime(2024, 3, 13, 9, tzinfo=TAIPEI),
            id="the end is exclusive",
        ),
        pytest.param(
            datetime(2024, 3, 10, 0, tzinfo=NY),
            SendWindow(start=time(2, 30), end=time(4), weekdays=EVERY_DAY),
            NY,
            datetime(2024, 3, 10, 3, tzinfo=NY),
            id="a start inside the spring-forward gap opens when the clock jumps",
        ),
        pytest.param(
            datetime(2024, 3, 10, 0, tzinfo=NY),
            SendWindow(start=time(2, 15), end=time(2, 45), weekdays=EVERY_DAY),
            NY,
            datetime(2024, 3, 11, 2, 15, tzinfo=NY),
            id="a window wholly inside the gap waits a day",
        ),
        pytest.param(
            datetime(2024, 11, 3, 5, 40, tzinfo=UTC),  # 01:40 EDT, before the clock falls back
            SendWindow(start=time(0, 30), end=time(1, 30), weekdays=EVERY_DAY),
            NY,
            datetime(2024, 11, 3, 6, tzinfo=UTC),  # 01:00 EST: the fall-back lands inside the window
            id="falling back into the window reopens it",
        ),
        pytest.param(
            datetime(2024, 10, 6, 0, tzinfo=ZoneInfo("Australia/Lord_Howe")),
            SendWindow(start=time(2, 10), end=time(3), weekdays=EVERY_DAY),
            ZoneInfo("Australia/Lord_Howe"),
            datetime(2024, 10, 6, 2, 30, tzinfo=ZoneInfo("Australia/Lord_Howe")),
            id="Lord Howe's 30-minute gap",
        ),
    ],
)
def test_due_at_moves_an_instant_to_the_next_window_opening(
    not_before: datetime, window: SendWindow, tz: ZoneInfo, expected: datetime
) -> None:
    assert due_at(not_before, window, tz) == expected


@pytest.mark.parametrize(
    ("not_before", "window"),
    [
        pytest.param(datetime(2024, 1, 1, 12), WINDOW, id="naive instant"),  # noqa: DTZ001 - the case under test
        pytest.param(datetime(2024, 1, 1, tzinfo=UTC), SendWindow(weekdays=frozenset()), id="no weekday"),
        pytest.param(datetime(2024, 1, 1, tzinfo=UTC), SendWindow(start=time(9), end=time(9)), id="no hours"),
    ],
)
def test_due_at_rejects_a_naive_instant_or_an_empty_window(not_before: datetime, window: SendWindow) -> None:
    with pytest.raises(ValueError, match=r"timezone-aware|send window is empty"):
        due_at(not_before, window, TAIPEI)


# --- plan_deliveries -------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios(jitter=QUARTER), days=day_lists)
def test_plan_deliveries_is_never_before_the_day_offset_and_always_inside_the_window(
    scenario: tuple[ZoneInfo, datetime, SendWindow], days: list[int]
) -> None:
    tz, enrolled_at, window = scenario
    plan = plan_deliveries(_steps(days), enrolled_at=enrolled_at, window=window, tz=tz)
    assert [p.step_index for p in plan] == list(range(len(days)))
    for planned, day in zip(plan, days, strict=True):
        assert planned.due_at >= enrolled_at + timedelta(days=day)
        assert _is_inside(planned.due_at, window, tz)


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios(jitter=QUARTER), days=day_lists)
def test_plan_deliveries_puts_each_step_on_a_later_local_day_than_the_one_before(
    scenario: tuple[ZoneInfo, datetime, SendWindow], days: list[int]
) -> None:
    tz, enrolled_at, window = scenario
    plan = plan_deliveries(_steps(days), enrolled_at=enrolled_at, window=window, tz=tz)
    for earlier, later in itertools.pairwise(plan):
        assert earlier.due_at < later.due_at
        assert earlier.due_at.astimezone(tz).date() < later.due_at.astimezone(tz).date()


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios(jitter=QUARTER), days=day_lists)
def test_plan_deliveries_keeps_each_step_at_or_after_the_anchor_wall_clock_plus_its_days(
    scenario: tuple[ZoneInfo, datetime, SendWindow], days: list[int]
) -> None:
    tz, enrolled_at, window = scenario
    anchor_wall = due_at(enrolled_at, window, tz).astimezone(tz).replace(tzinfo=None)
    plan = plan_deliveries(_steps(days), enrolled_at=enrolled_at, window=window, tz=tz)
    for planned, day in zip(plan, days, strict=True):
        assert planned.due_at.astimezone(tz).replace(tzinfo=None) >= anchor_wall + timedelta(days=day)


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(jitter=QUARTER), days=day_lists, cut=st.integers(0, 6))
def test_plan_deliveries_is_deterministic_and_adding_steps_never_moves_earlier_ones(
    scenario: tuple[ZoneInfo, datetime, SendWindow], days: list[int], cut: int
) -> None:
    tz, enrolled_at, window = scenario
    steps = _steps(days)
    plan = plan_deliveries(steps, enrolled_at=enrolled_at, window=window, tz=tz)
    assert plan_deliveries(steps, enrolled_at=enrolled_at, window=window, tz=tz) == plan
    assert plan_deliveries(steps[:cut], enrolled_at=enrolled_at, window=window, tz=tz) == plan[:cut]


@pytest.mark.parametrize(
    ("lead_timezone", "window", "enrolled_at", "days", "expected"),
    [
        pytest.param(
            "Asia/Taipei",
            WINDOW,
            datetime(2024, 3, 8, 23, tzinfo=TAIPEI),  # a Friday
            [0],
            [datetime(2024, 3, 11, 9, tzinfo=TAIPEI)],
            id="Friday 23:00 in Taipei is first mailed Monday 09:00 local",
        ),
        pytest.param(
            "America/New_York",
            WINDOW,
            datetime(2024, 5, 15, 10, tzinfo=NY),  # a Wednesday
            [0, 3],
            [datetime(2024, 5, 15, 10, tzinfo=NY), datetime(2024, 5, 20, 9, tzinfo=NY)],
            id="a step landing on Saturday moves to Monday",
        ),
        pytest.param(
            "America/New_York",
            WINDOW,
            datetime(2024, 5, 17, 10, tzinfo=NY),  # a Friday
            [0, 1, 2],
            [
                datetime(2024, 5, 17, 10, tzinfo=NY),
                datetime(2024, 5, 20, 9, tzinfo=NY),
                datetime(2024, 5, 21, 9, tzinfo=NY),
            ],
            id="Saturday and Sunday steps do not stack on Monday",
        ),
        pytest.param(
            "America/New_York",
            WINDOW,
            datetime(2024, 3, 8, 8, tzinfo=NY),  # Friday before the spring-forward Sunday
            [0, 3],
            [datetime(2024, 3, 8, 9, tzinfo=NY), datetime(2024, 3, 11, 9, tzinfo=NY)],
            id="spring forward keeps the local hour",
        ),
        pytest.param(
            "America/New_York",
            WINDOW,
            datetime(2024, 3, 8, 10, tzinfo=NY),
            [0, 3],
            # 09:00 EDT Monday is only 71 hours after enrolling: three whole days end at 11:00 EDT
            [datetime(2024, 3, 8, 10, tzinfo=NY), datetime(2024, 3, 11, 11, tzinfo=NY)],
            id="spring forward never sends before whole days have passed",
        ),
        pytest.param(
            "America/New_York",
            WINDOW,
            datetime(2024, 11, 1, 10, tzinfo=NY),  # Friday before the fall-back Sunday
            [0, 3],
            # 73 hours later: three times 24 hours would be 09:00 EST
            [datetime(2024, 11, 1, 10, tzinfo=NY), datetime(2024, 11, 4, 10, tzinfo=NY)],
            id="fall back keeps the local hour",
        ),
        pytest.param(
            "America/New_York",
            SendWindow(weekdays=frozenset({2})),  # Wednesdays only
            datetime(2024, 5, 13, 12, tzinfo=NY),  # a Monday
            [0, 1, 2],
            [
                datetime(2024, 5, 15, 9, tzinfo=NY),
                datetime(2024, 5, 22, 9, tzinfo=NY),
                datetime(2024, 5, 29, 9, tzinfo=NY),
            ],
            id="a one-weekday window gives one step a week",
        ),
        pytest.param(
            "Asia/Taipei",
            SendWindow(timezone="Europe/Berlin"),
            datetime(2024, 5, 15, 6, tzinfo=UTC),  # 08:00 in Berlin, 14:00 in Taipei
            [0],
            [datetime(2024, 5, 15, 9, tzinfo=ZoneInfo("Europe/Berlin"))],
            id="a fixed campaign zone overrides the lead's",
        ),
        pytest.param(
            "Mars/Olympus_Mons",
            SendWindow(default_timezone="Asia/Tokyo"),
            datetime(2024, 5, 15, 0, tzinfo=UTC),  # 09:00 in Tokyo, midnight in UTC
            [0],
            [datetime(2024, 5, 15, 0, tzinfo=UTC)],
            id="an invalid lead zone falls back to the default zone",
        ),
    ],
)
def test_plan_deliveries_places_steps_on_the_expected_local_times(
    lead_timezone: str, window: SendWindow, enrolled_at: datetime, days: list[int], expected: list[datetime]
) -> None:
    plan = plan_deliveries(
        _steps(days), enrolled_at=enrolled_at, window=window, tz=lead_zone(lead_timezone, window)
    )
    assert [p.due_at for p in plan] == expected


def test_plan_deliveries_names_each_step_by_id_and_position() -> None:
    plan = plan_deliveries(
        _steps([0, 2]), enrolled_at=datetime(2024, 5, 13, 10, tzinfo=NY), window=WINDOW, tz=NY
    )
    assert plan == (
        PlannedDelivery(step_id="s0", step_index=0, due_at=datetime(2024, 5, 13, 14, tzinfo=UTC)),
        PlannedDelivery(step_id="s1", step_index=1, due_at=datetime(2024, 5, 15, 14, tzinfo=UTC)),
    )


def test_plan_deliveries_of_no_steps_is_empty() -> None:
    assert plan_deliveries((), enrolled_at=datetime(2024, 5, 13, tzinfo=UTC), window=WINDOW, tz=NY) == ()


def test_plan_deliveries_rejects_a_negative_day_offset() -> None:
    with pytest.raises(ValueError, match="negative day offset"):
        plan_deliveries(_steps([-1]), enrolled_at=datetime(2024, 5, 13, tzinfo=UTC), window=WINDOW, tz=NY)
