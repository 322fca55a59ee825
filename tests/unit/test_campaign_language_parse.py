"""The campaign language beyond plain steps: conditions, variants, rep tasks, business days, holidays, the
missed-window and late policies, and the change policy; every mistake reported at once with its line."""

from __future__ import annotations

from datetime import timedelta

import pytest

from nurture.core.branching import AllOf, Engaged, Not, ScoreBelow
from nurture.core.campaign import RepTask, Variant, parse_campaign
from nurture.errors import ConfigErrors

HEAD = """\
id: saas
name: Nurture
sender: {from: "Acme <growth@acme.example>"}
"""

GOOD = (
    HEAD
    + """\
send_window: {skip_holidays: true, missed: skip}
late: {skip_after_hours: 36}
on_change: follow
steps:
  - {id: welcome, day: 0, subject: Hi, template: w.html.j2}
  - id: resend
    day: 2
    when: {not_opened: welcome}
    subject: Again
    template: w.html.j2
  - id: study
    business_days: 4
    subject: Study
    template: s.html.j2
    skip_if: {all: [{clicked: welcome}, {not: {score_below: 20}}]}
    variants:
      - {id: a}
      - {id: b, weight: 3, subject: Other}
  - id: call
    business_days: 6
    task: {title: "Call {{ lead.first_name }}", note: Ask about Q3}
"""
)


def errors_of(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigErrors) as info:
        parse_campaign(text, source="c.yaml")
    return [(e.line, e.reason) for e in info.value.errors]


def test_parse_campaign_reads_conditions_variants_tasks_and_policies() -> None:
    campaign = parse_campaign(GOOD, source="c.yaml")
    welcome, resend, study, call = campaign.steps
    assert welcome.when is None
    assert resend.when == Engaged("not_opened", "welcome")
    assert study.skip_if == AllOf((Engaged("clicked", "welcome"), Not(ScoreBelow(20))))
    assert (study.day, study.business_days) == (4, True)
    assert study.variants == (Variant("a", 1), Variant("b", 3, subject="Other"))
    assert call.task == RepTask("Call {{ lead.first_name }}", "Ask about Q3")
    assert (call.subject, call.template) == ("", "")
    assert campaign.send_window.skip_holidays
    assert campaign.send_window.missed == "skip"
    assert campaign.skip_late_after == timedelta(hours=36)
    assert campaign.on_change == "follow"
    assert campaign.text == GOOD


def test_parse_campaign_defaults_keep_the_plan_and_send_missed_touches_in_the_next_window() -> None:
    text = HEAD + "steps:\n  - {id: welcome, day: 0, subject: Hi, template: w.html.j2}\n"
    campaign = parse_campaign(text, source="c.yaml")
    assert campaign.on_change == "keep"
    assert campaign.send_window.missed == "next_window"
    assert not campaign.send_window.skip_holidays
    assert campaign.skip_late_after is None


def test_parse_campaign_reports_every_branching_mistake_at_once_with_its_line() -> None:
    text = (
        HEAD
        + """\
steps:
  - id: welcome
    day: 0
    when: {opened: welcome}
    subject: Hi
    template: w.html.j2
  - id: call
    day: 1
    task: {title: Call}
    template: c.html.j2
  - id: resend
    day: 2
    when: {any: [{not_opened: welcom}, {clicked: later}, {opened: call}]}
    subject: Again
    template: w.html.j2
    variants:
      - {id: a, weight: 0, subject: A}
      - {id: a, subject: B}
  - id: later
    subject: Later
    template: l.html.j2
  - id: twice
    day: 9
    business_days: 9
    subject: T
    template: t.html.j2
    variants: [{id: only, subject: O}]
  - id: empty
    day: 10
"""
    )
    assert errors_of(text) == [
        (7, "when: step 'welcome' is not an earlier step: a condition looks back only"),
        (13, "a task step has no template: the rep gets an alert, not an email"),
        (16, "when: no step 'welcom' in this campaign"),
        (16, "when: step 'call' is a rep task: it cannot be opened or clicked"),
        (16, "when: step 'later' is not an earlier step: a condition looks back only"),
        (20, "steps[2].variants[0].weight: must be 1 or more"),
        (21, "duplicate variant id 'a'"),
        (22, "a step needs `day: N` or `business_days: N`"),
        (27, "give either day or business_days, not both"),
        (30, "an A/B test needs at least two variants"),
        (31, "missing required key 'steps[5].subject'"),
        (31, "missing required key 'steps[5].template'"),
    ]


@pytest.mark.parametrize(
    ("extra", "line", "fragment"),
    [
        pytest.param("send_window: {missed: later}\n", 4, "send_window.missed", id="unknown missed policy"),
        pytest.param("on_change: merge\n", 4, "on_change", id="unknown change policy"),
        pytest.param(
            "late: {skip_after_hours: 0}\n", 4, "late.skip_after_hours: must be 1 or more", id="zero"
        ),
    ],
)
def test_parse_campaign_rejects_bad_policies(extra: str, line: int, fragment: str) -> None:
    text = HEAD + extra + "steps:\n  - {id: welcome, day: 0, subject: Hi, template: w.html.j2}\n"
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0][0] == line
    assert fragment in errors[0][1], errors


def test_parse_campaign_suggests_the_key_of_a_misspelt_late_policy() -> None:
    text = (
        HEAD + "late: {skip_after: 3}\nsteps:\n  - {id: welcome, day: 0, subject: Hi, template: w.html.j2}\n"
    )
    assert (4, "unknown key 'late.skip_after' (did you mean 'skip_after_hours'?)") in errors_of(text)


def test_parse_campaign_reports_a_malformed_condition_at_its_key() -> None:
    text = (
        HEAD
        + "steps:\n  - {id: welcome, day: 0, subject: Hi, template: w.html.j2,"
        + " when: {opened: a, clicked: b}}\n"
    )
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0][0] == 5
    assert "a condition is one key" in errors[0][1]


def test_parse_campaign_orders_business_day_and_calendar_day_steps_by_their_number() -> None:
    text = (
        HEAD
        + """\
steps:
  - {id: a, business_days: 3, subject: A, template: a.html.j2}
  - {id: b, day: 3, subject: B, template: b.html.j2}
"""
    )
    assert errors_of(text) == [(6, "bad day order: day 3 must come after business_days 3 of the step before")]
