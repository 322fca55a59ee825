"""Lifecycle rules: audience matching, campaign choice, exit reasons and send holds."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from nurture.core.campaign import Audience, Campaign, ExitRule, Sender, Step
from nurture.core.lead import Lead
from nurture.core.lifecycle import (
    Hold,
    choose_campaign,
    exit_reason,
    is_last_step,
    may_enroll,
    send_hold,
)

LEAD = Lead(
    id=1,
    email="mei@example.com",
    grade="nurturable",
    stage="lead",
    score=20,
    country="TW",
    tags=MappingProxyType({"source": "linkedin", "industry": "saas"}),
)
STEPS = (
    Step(id="day0_welcome", day=0, subject="Hi", template="welcome.html"),
    Step(id="day7_case_study", day=7, subject="A case", template="case.html"),
)

DEFAULT_EXIT = ExitRule()


def campaign(
    campaign_id: str = "welcome",
    *,
    priority: int = 100,
    exit_rule: ExitRule = DEFAULT_EXIT,
    steps: tuple[Step, ...] = STEPS,
    **audience: Any,
) -> Campaign:
    return Campaign(
        id=campaign_id,
        name=campaign_id.title(),
        sender=Sender(from_address="Growth <growth@acme.example>"),
        steps=steps,
        priority=priority,
        audience=Audience(**audience),
        exit=exit_rule,
    )


def lead(**changes: Any) -> Lead:
    if "tags" in changes:
        changes["tags"] = MappingProxyType(changes["tags"])
    return replace(LEAD, **changes)


# --- may_enroll ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audience", "changes", "expected"),
    [
        pytest.param({}, {}, True, id="default audience takes a nurturable lead"),
        # suppression and grade
        pytest.param({}, {"suppressed": True}, False, id="suppressed"),
        pytest.param({}, {"grade": "intent"}, False, id="grade not in the audience"),
        pytest.param({}, {"grade": None}, False, id="no grade"),
        pytest.param(
            {"grades": frozenset({"intent"})}, {"grade": "intent"}, True, id="grade in the audience"
        ),
        pytest.param(
            {"grades": frozenset({"invalid"})}, {"grade": "invalid"}, False, id="invalid never enrolls"
        ),
        # stage
        pytest.param({}, {"stage": "suspect"}, True, id="stage in the audience"),
        pytest.param({}, {"stage": "visitor"}, False, id="stage not in the audience"),
        # score bounds, inclusive
        pytest.param({"min_score": 20}, {}, True, id="score equal to min_score"),
        pytest.param({"min_score": 21}, {}, False, id="score below min_score"),
        pytest.param({"max_score": 20}, {}, True, id="score equal to max_score"),
        pytest.param({"max_score": 19}, {}, False, id="score above max_score"),
        # sources: the `source` or `utm_source` tag
        pytest.param({"sources": frozenset({"linkedin"})}, {}, True, id="source tag matches"),
        pytest.param(
            {"sources": frozenset({"google"})},
            {"tags": {"utm_source": "google"}},
            True,
            id="utm_source matches",
        ),
        pytest.param({"sources": frozenset({"google"})}, {}, False, id="source tag differs"),
        pytest.param({"sources": frozenset({"google"})}, {"tags": {}}, False, id="no source tag"),
        pytest.param({"sources": frozenset({"google"})}, {"tags": {"ref": "google"}}, False, id="other tag"),
        # countries, case-insensitive
        pytest.param({"countries": frozenset({"TW", "JP"})}, {}, True, id="country matches"),
        pytest.param({"countries": frozenset({"TW"})}, {"country": "tw"}, True, id="country in lower case"),
        pytest.param({"countries": frozenset({"JP"})}, {}, False, id="country differs"),
        pytest.param({"countries": frozenset({"TW"})}, {"country": None}, False, id="no country"),
        # tags: every key must hold one of its values
        pytest.param({"tags": {"industry": frozenset({"saas", "fintech"})}}, {}, True, id="tag allowed"),
        pytest.param({"tags": {"industry": frozenset({"retail"})}}, {}, False, id="tag value not allowed"),
        pytest.param({"tags": {"region": frozenset({"apac"})}}, {}, False, id="tag missing"),
        pytest.param(
            {"tags": {"industry": frozenset({"saas"}), "region": frozenset({"apac"})}},
            {"tags": {"industry": "saas", "region": "emea"}},
            False,
            id="one of two tags fails",
        ),
        # combinations
        pytest.param(
            {
                "grades": frozenset({"nurturable", "intent"}),
                "min_score": 10,
                "max_score": 30,
                "sources": frozenset({"linkedin"}),
                "countries": frozenset({"TW"}),
                "tags": {"industry": frozenset({"saas"})},
            },
            {},
            True,
            id="every condition holds",
        ),
        pytest.param(
            {"min_score": 10, "sources": frozenset({"linkedin"}), "countries": frozenset({"JP"})},
            {},
            False,
            id="all but the country hold",
        ),
        pytest.param(
            {"min_score": 10, "countries": frozenset({"TW"})},
            {"suppressed": True},
            False,
            id="the audience fits but the lead is suppressed",
        ),
    ],
)
def test_may_enroll_requires_every_audience_condition(
    audience: dict[str, Any], changes: dict[str, Any], expected: bool
) -> None:
    assert may_enroll(lead(**changes), campaign(**audience)) is expected


@pytest.mark.parametrize(
    ("exit_rule", "changes"),
    [
        pytest.param(ExitRule(score_at_least=20), {}, id="score already qualifies"),
        pytest.param(
            ExitRule(stages=frozenset({"suspect"})), {"stage": "suspect"}, id="stage already an exit"
        ),
    ],
)
def test_may_enroll_refuses_a_lead_that_already_meets_the_exit_rule(
    exit_rule: ExitRule, changes: dict[str, Any]
) -> None:
    fits = campaign(stages=frozenset({"lead", "suspect"}))
    assert may_enroll(lead(**changes), fits)
    assert not may_enroll(lead(**changes), replace(fits, exit=exit_rule))


# --- exit_reason -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_rule", "changes", "expected"),
    [
        pytest.param(
            ExitRule(score_at_least=50), {"score": 55}, "qualified: score 55 >= 50", id="score above"
        ),
        pytest.param(
            ExitRule(score_at_least=50), {"score": 50}, "qualified: score 50 >= 50", id="score equal"
        ),
        pytest.param(ExitRule(score_at_least=50), {"score": 49}, None, id="score below"),
        pytest.param(ExitRule(), {"score": 10_000}, None, id="no score rule"),
        pytest.param(ExitRule(), {"stage": "mql"}, "stage: mql", id="an exit stage"),
        pytest.param(ExitRule(), {"stage": "customer"}, "stage: customer", id="another exit stage"),
        pytest.param(ExitRule(stages=frozenset()), {"stage": "mql"}, None, id="no exit stages"),
        pytest.param(ExitRule(), {}, None, id="nothing met"),
    ],
)
def test_exit_reason_names_the_rule_that_holds(
    exit_rule: ExitRule, changes: dict[str, Any], expected: str | None
) -> None:
    assert exit_reason(lead(**changes), campaign(exit_rule=exit_rule)) == expected


# --- choose_campaign -------------------------------------------------------------------------------------


def test_choose_campaign_picks_the_lowest_priority() -> None:
    campaigns = [campaign("b", priority=20), campaign("a", priority=50), campaign("c", priority=10)]
    chosen = choose_campaign(LEAD, campaigns, taken=())
    assert chosen is not None
    assert chosen.id == "c"


def test_choose_campaign_breaks_priority_ties_by_campaign_id() -> None:
    campaigns = [campaign("zeta", priority=10), campaign("alpha", priority=10), campaign("mu", priority=10)]
    chosen = choose_campaign(LEAD, campaigns, taken=())
    assert chosen is not None
    assert chosen.id == "alpha"


def test_choose_campaign_skips_campaigns_the_lead_does_not_fit() -> None:
    campaigns = [campaign("japan", priority=1, countries=frozenset({"JP"})), campaign("all", priority=9)]
    chosen = choose_campaign(LEAD, campaigns, taken=())
    assert chosen is not None
    assert chosen.id == "all"


def test_choose_campaign_never_re_enrolls_a_taken_campaign() -> None:
    campaigns = [campaign("first", priority=1), campaign("second", priority=2)]
    chosen = choose_campaign(LEAD, campaigns, taken={"first"})
    assert chosen is not None
    assert chosen.id == "second"
    assert choose_campaign(LEAD, campaigns, taken={"first", "second"}) is None


def test_choose_campaign_returns_none_when_nothing_fits() -> None:
    assert choose_campaign(lead(suppressed=True), [campaign()], taken=()) is None
    assert choose_campaign(LEAD, [], taken=()) is None


# --- send_hold -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "current", "step_id", "expected"),
    [
        pytest.param({}, campaign(), "day7_case_study", None, id="send"),
        pytest.param(
            {"suppressed": True},
            campaign(),
            "day0_welcome",
            Hold("suppressed", exits_enrollment=True),
            id="supp",
        ),
        pytest.param(
            {"grade": "invalid"},
            campaign(),
            "day0_welcome",
            Hold("grade: invalid", exits_enrollment=True),
            id="grade invalid",
        ),
        pytest.param({}, None, "day0_welcome", Hold("campaign removed", exits_enrollment=True), id="removed"),
        pytest.param(
            {}, campaign(), "day3_gone", Hold("step removed", exits_enrollment=False), id="step removed"
        ),
        pytest.param(
            {"score": 55},
            campaign(exit_rule=ExitRule(score_at_least=50)),
            "day0_welcome",
            Hold("qualified: score 55 >= 50", exits_enrollment=True),
            id="qualified by score",
        ),
        pytest.param(
            {"stage": "sql"},
            campaign(),
            "day0_welcome",
            Hold("stage: sql", exits_enrollment=True),
            id="stage",
        ),
        pytest.param(
            {"suppressed": True, "stage": "sql"},
            None,
            "day3_gone",
            Hold("suppressed", exits_enrollment=True),
            id="suppression outranks every other reason",
        ),
    ],
)
def test_send_hold_says_why_a_due_delivery_must_wait_or_stop(
    changes: dict[str, Any], current: Campaign | None, step_id: str, expected: Hold | None
) -> None:
    assert send_hold(lead(**changes), current, step_id) == expected


def test_send_hold_lets_an_enrolled_lead_through_after_its_audience_changed() -> None:
    # Audience only gates entry: a lead whose score rose past max_score still finishes the campaign.
    assert send_hold(lead(score=99), campaign(max_score=30), "day0_welcome") is None


# --- is_last_step ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "step_id", "expected"),
    [
        pytest.param(STEPS, "day7_case_study", True, id="the last"),
        pytest.param(STEPS, "day0_welcome", False, id="the first"),
        pytest.param(STEPS, "unknown", False, id="not a step"),
        pytest.param((), "day0_welcome", False, id="no steps"),
    ],
)
def test_is_last_step_is_true_only_for_the_final_step(
    steps: tuple[Step, ...], step_id: str, expected: bool
) -> None:
    assert is_last_step(campaign(steps=steps), step_id) is expected
