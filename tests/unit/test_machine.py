"""`core.machine.machine_reason`: the one rule that flags machine engagement when stored and when scored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.machine import HEAD_REQUEST, MIN_CLICK_DELAY, machine_reason
from nurture.core.scoring import DEFAULT_RULES, EngagementEvent, score

SENT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
HUMAN = "Mozilla/5.0 (Macintosh) Safari/605.1.15"


def _reason(
    event_type: str, delay: timedelta, *, agent: str | None = HUMAN, head: bool = False
) -> str | None:
    return machine_reason(
        event_type,
        occurred_at=SENT + delay,
        user_agent=agent,
        delivery_sent_at=SENT,
        scanner_user_agents=DEFAULT_RULES.scanner_user_agents,
        min_open_delay=DEFAULT_RULES.min_open_delay,
        head_request=head,
    )


@pytest.mark.parametrize(
    ("event_type", "delay", "agent", "head", "expected"),
    [
        ("email_open", timedelta(hours=1), HUMAN, True, HEAD_REQUEST),
        (
            "email_click",
            timedelta(hours=1),
            "Barracuda Sentinel (EE)",
            False,
            "scanner user agent (barracuda)",
        ),
        ("email_open", timedelta(seconds=3), HUMAN, False, "open 3s after delivery"),
        ("email_open", -timedelta(seconds=1), HUMAN, False, "open before delivery"),
        ("email_click", timedelta(milliseconds=250), HUMAN, False, "click 250ms after delivery"),
        ("email_click", -timedelta(minutes=1), HUMAN, False, "click before delivery"),
        ("email_click", timedelta(seconds=1), HUMAN, False, None),
        ("email_open", timedelta(seconds=10), None, False, None),
        ("page_visit", timedelta(0), HUMAN, False, None),  # not tied to an email's send time
    ],
)
def test_each_rule_names_its_reason(
    event_type: str, delay: timedelta, agent: str | None, head: bool, expected: str | None
) -> None:
    assert _reason(event_type, delay, agent=agent, head=head) == expected


@given(delay_ms=st.integers(min_value=-86_400_000, max_value=86_400_000))
def test_a_click_is_a_machine_exactly_when_it_comes_before_a_second_has_passed(delay_ms: int) -> None:
    delay = timedelta(milliseconds=delay_ms)
    assert (_reason("email_click", delay) is not None) == (delay < MIN_CLICK_DELAY)


@given(delay_ms=st.integers(min_value=-86_400_000, max_value=86_400_000), stored=st.booleans())
def test_scoring_agrees_with_the_rule_and_honours_a_stored_flag(delay_ms: int, stored: bool) -> None:
    at = SENT + timedelta(milliseconds=delay_ms)
    event = EngagementEvent(
        1,
        "email_click",
        at,
        user_agent=HUMAN,
        delivery_sent_at=SENT,
        delivery_id=1,
        machine_reason=HEAD_REQUEST if stored else None,
    )
    [item] = score([event], DEFAULT_RULES, SENT + timedelta(days=2)).items
    rule = _reason("email_click", timedelta(milliseconds=delay_ms))
    expected = HEAD_REQUEST if stored else rule
    assert item.ignored == (None if expected is None else f"machine: {expected}")
