"""Campaign test files (`campaigns/tests/*.yaml`): parsing with file:line errors, and the readable diff."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from nurture.core.campaign_tests import DEFAULT_START, Expectation, check, observed_from, parse_cases
from nurture.errors import ConfigErrors

FILE = """\
campaign: saas-nurture
start: 2026-03-02T09:00:00+08:00
cases:
  - name: pricing visit
    lead: {email: a@example.com, timezone: Asia/Taipei, company_size: 200}
    engagement: |
      opens welcome
      visits /pricing on day 9
    expect:
      sends: {welcome: 0, breakup: 2026-03-23}
      not_sent: [objections]
      stage: lead
      alerts: [moment:pricing_visit]
      exit: completed
  - name: quiet
    start: 2026-03-06
    lead: {email: b@example.com}
    expect: {sends: {}}
"""


def test_a_test_file_is_read_into_cases_with_their_lines_leads_scripts_and_expectations() -> None:
    first, second = parse_cases(FILE, source="t.yaml")
    assert (first.line, first.name, first.campaign) == (4, "pricing visit", "saas-nurture")
    assert first.start == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    assert first.lead == {"email": "a@example.com", "timezone": "Asia/Taipei", "company_size": "200"}
    assert [(a.line, a.event_type) for a in first.script.actions] == [(7, "email_open"), (8, "page_visit")]
    assert first.expect == Expectation(
        sends={"welcome": 0, "breakup": date(2026, 3, 23)},
        not_sent=("objections",),
        stage="lead",
        alerts=("moment:pricing_visit",),
        exit="completed",
    )
    assert second.start == datetime(2026, 3, 6, tzinfo=UTC)
    assert second.expect.sends == {}


def test_every_problem_of_a_test_file_is_reported_with_its_line() -> None:
    text = """\
campaign: saas-nurture
colour: red
cases:
  - name: x
    lead: {first_name: Ann}
    engagement: |
      opens
    expect:
      sends: {welcome: soon}
      colour: blue
"""
    with pytest.raises(ConfigErrors) as caught:
        parse_cases(text, source="t.yaml")
    found = sorted((e.line or 0, e.reason.split(" ")[0]) for e in caught.value.errors)
    assert [line for line, _ in found] == [2, 4, 7, 9, 10]


@pytest.mark.parametrize("text", ["", "- a list", "campaign: x", "cases: []\ncampaign: x", "a: [unclosed"])
def test_a_file_that_is_not_a_test_file_is_refused_with_a_config_error(text: str) -> None:
    with pytest.raises(ConfigErrors):
        parse_cases(text, source="t.yaml")


def test_the_default_start_is_a_monday_morning() -> None:
    assert DEFAULT_START.weekday() == 0


def test_check_names_every_difference_in_words_a_marketer_reads() -> None:
    expect = Expectation(
        sends={"welcome": 0, "case-study": 5, "breakup": date(2026, 3, 23)},
        not_sent=("objections",),
        stage="mql",
        alerts=("mql",),
        exit="qualified",
    )
    observed = observed_from(
        [
            ("welcome", 0, date(2026, 3, 2)),
            ("case-study", 7, date(2026, 3, 9)),
            ("objections", 16, date(2026, 3, 18)),
        ],
        "lead",
        [],
        "completed",
        True,
    )
    assert check(expect, observed) == [
        "sends: expected case-study on day 5, got day 7 (Mon 2026-03-09)",
        "sends: expected breakup on Mon 2026-03-23, it was not sent",
        "sends: objections was sent on day 16 (Wed 2026-03-18) but is not expected",
        "not_sent: objections was sent on day 16",
        "stage: expected mql, got lead",
        "alerts: expected ['mql'], got []",
        "exit: expected qualified, got completed",
    ]


def test_check_is_empty_when_everything_matches_and_a_date_may_stand_for_a_day() -> None:
    expect = Expectation(sends={"welcome": date(2026, 3, 2)}, stage="lead", alerts=(), exit="completed")
    observed = observed_from([("welcome", 0, date(2026, 3, 2))], "lead", [], "completed", True)
    assert check(expect, observed) == []
