"""Lifecycle rules: audience matching, campaign choice, exit reasons and send holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from nurture.core.campaign import Audience, Campaign, ExitRule, Sender, Step
from nurture.core.context import Rep
from nurture.core.lead import STAGES, Lead
from nurture.core.lifecycle import (
    AlertTrigger,
    Hold,
    alert_action,
    alert_triggers,
    assign_owner,
    choose_campaign,
    exit_reason,
    is_last_step,
    may_alert,
    may_enroll,
    send_hold,
    stage_after_scoring,
)
from nurture.core.scoring import EngagementEvent, Moment, Thresholds
from nurture.core.stages import Stage, StageChange

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


# --- stage_after_scoring ---------------------------------------------------------------------------------

THRESHOLDS = Thresholds(mql=50, hot=80)


def _to_mql(stage: Stage, score: int) -> StageChange:
    return StageChange(stage, Stage.MQL, f"qualified: score {score} >= 50")


@pytest.mark.parametrize(
    ("stage", "score", "expected"),
    [
        pytest.param(
            Stage.LEAD,
            55,
            _to_mql(Stage.LEAD, 55),
            id="lead qualifies",
        ),
        pytest.param(Stage.LEAD, 50, _to_mql(Stage.LEAD, 50), id="exactly mql"),
        pytest.param(
            Stage.SUSPECT,
            90,
            _to_mql(Stage.SUSPECT, 90),
            id="suspect",
        ),
        pytest.param(
            Stage.VISITOR,
            50,
            _to_mql(Stage.VISITOR, 50),
            id="visitor",
        ),
        pytest.param(Stage.LEAD, 49, None, id="below mql"),
        pytest.param(Stage.MQL, 95, None, id="already mql"),
        pytest.param(Stage.MQL, 3, None, id="an mql whose score decayed stays mql"),
        pytest.param(Stage.SQL, 99, None, id="sql belongs to sales"),
        pytest.param(Stage.OPPORTUNITY, 99, None, id="opportunity"),
        pytest.param(Stage.CUSTOMER, 99, None, id="customer"),
    ],
)
def test_stage_after_scoring_moves_only_early_stages_to_mql(
    stage: Stage, score: int, expected: StageChange | None
) -> None:
    assert stage_after_scoring(stage, score, THRESHOLDS) == expected


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("score", [0, 49, 50, 80, 1000])
def test_stage_after_scoring_never_moves_a_lead_back_or_anywhere_but_mql(stage: Stage, score: int) -> None:
    change = stage_after_scoring(stage, score, THRESHOLDS)

    assert change is None or (change.before, change.after) == (stage, Stage.MQL)
    assert change is None or STAGES.index(stage) < STAGES.index(Stage.MQL)


# --- alert_triggers --------------------------------------------------------------------------------------

AT = datetime(2025, 3, 3, 12, tzinfo=UTC)
PRICING = Moment("pricing_visit", "page_visit", url_pattern="/pricing")
REOPENED = Moment("proposal_reopened", "proposal_view", after_silence=timedelta(days=14))
PRICING_VISIT = EngagementEvent(1, "page_visit", AT, url="https://acme.example/pricing")
PROPOSAL_VIEW = EngagementEvent(2, "proposal_view", AT)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(40, 55, [("mql", "score crossed mql (50): 40 -> 55")], id="mql"),
        pytest.param(49, 50, [("mql", "score crossed mql (50): 49 -> 50")], id="mql exactly"),
        pytest.param(62, 85, [("hot", "score crossed hot (80): 62 -> 85")], id="hot"),
        pytest.param(
            10,
            90,
            [("hot", "score crossed hot (80): 10 -> 90"), ("mql", "score crossed mql (50): 10 -> 90")],
            id="both, hot first",
        ),
        pytest.param(50, 79, [], id="between the thresholds"),
        pytest.param(50, 60, [], id="already above mql"),
        pytest.param(90, 40, [], id="falling"),
        pytest.param(80, 80, [], id="unchanged at hot"),
    ],
)
def test_alert_triggers_fire_when_a_score_crosses_a_threshold_upwards(
    old: int, new: int, expected: list[tuple[str, str]]
) -> None:
    triggers = alert_triggers(old, new, THRESHOLDS, [])

    assert [(t.trigger, t.reason) for t in triggers] == expected


def test_alert_triggers_add_moments_after_thresholds_whatever_the_score() -> None:
    moments = [(PRICING, PRICING_VISIT), (REOPENED, PROPOSAL_VIEW)]

    assert alert_triggers(70, 85, THRESHOLDS, moments) == (
        AlertTrigger("hot", "score crossed hot (80): 70 -> 85"),
        AlertTrigger("moment:pricing_visit", "pricing_visit: visited https://acme.example/pricing"),
        AlertTrigger(
            "moment:proposal_reopened", "proposal_reopened: viewed the proposal after 14+ days of silence"
        ),
    )
    assert [t.trigger for t in alert_triggers(5, 3, THRESHOLDS, moments)] == [
        "moment:pricing_visit",
        "moment:proposal_reopened",
    ]


def test_alert_triggers_name_each_moment_once() -> None:
    second = replace(PRICING_VISIT, id=3, url="https://acme.example/pricing/team")

    triggers = alert_triggers(0, 0, THRESHOLDS, [(PRICING, PRICING_VISIT), (PRICING, second)])

    assert [t.reason for t in triggers] == ["pricing_visit: visited https://acme.example/pricing"]


@pytest.mark.parametrize(
    ("moment", "event", "reason"),
    [
        pytest.param(
            Moment("came_back", "page_visit", after_silence=timedelta(hours=36)),
            EngagementEvent(1, "page_visit", AT, url="/blog"),
            "came_back: visited /blog after 36+ hours of silence",
            id="hours",
        ),
        pytest.param(
            Moment("one_day", "email_reply", after_silence=timedelta(days=1)),
            EngagementEvent(1, "email_reply", AT),
            "one_day: replied to an email after 1+ days of silence",
            id="one day",
        ),
        pytest.param(
            Moment("webinar", "webinar_attended"),
            EngagementEvent(1, "webinar_attended", AT),
            "webinar: webinar attended",
            id="a custom type",
        ),
    ],
)
def test_alert_triggers_say_what_the_lead_did(moment: Moment, event: EngagementEvent, reason: str) -> None:
    [trigger] = alert_triggers(0, 0, THRESHOLDS, [(moment, event)])

    assert (trigger.trigger, trigger.reason) == (f"moment:{moment.name}", reason)


# --- may_alert -------------------------------------------------------------------------------------------

DAY = timedelta(hours=24)


@pytest.mark.parametrize(
    ("last_alert_at", "expected"),
    [
        pytest.param(None, True, id="never alerted"),
        pytest.param(AT - timedelta(hours=25), True, id="25 hours ago"),
        pytest.param(AT - DAY, True, id="exactly one cooldown ago"),
        pytest.param(AT - timedelta(hours=23, minutes=59), False, id="inside the cooldown"),
        pytest.param(AT, False, id="just now"),
        pytest.param(AT + timedelta(minutes=5), False, id="in the future (clock skew)"),
    ],
)
def test_may_alert_allows_one_alert_per_cooldown(last_alert_at: datetime | None, expected: bool) -> None:
    assert may_alert(last_alert_at, AT, DAY) is expected


def test_may_alert_always_allows_with_no_cooldown() -> None:
    assert may_alert(AT, AT, timedelta(0)) is True


# --- assign_owner ----------------------------------------------------------------------------------------

ANA = Rep(email="ana@acme.example", name="Ana")
BO = Rep(email="bo@acme.example", name="Bo", active=False)
CY = Rep(email="cy@acme.example", name="Cy", notify_urls=("slack://token/channel",))
DEE = Rep(email="dee@acme.example", name="Dee")


@pytest.mark.parametrize(
    ("reps", "counters", "expected"),
    [
        pytest.param((ANA, BO, CY, DEE), range(6), [ANA, CY, DEE, ANA, CY, DEE], id="skips the away rep"),
        pytest.param((ANA,), range(3), [ANA, ANA, ANA], id="one rep"),
        pytest.param((ANA, CY), [7, -1], [CY, CY], id="any counter"),
        pytest.param((BO,), range(2), [None, None], id="everyone away"),
        pytest.param((), range(2), [None, None], id="no reps"),
    ],
)
def test_assign_owner_goes_round_robin_over_active_reps(
    reps: tuple[Rep, ...], counters: range | list[int], expected: list[Rep | None]
) -> None:
    assert [assign_owner(reps, n) for n in counters] == expected


# --- alert_action ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_alert_at", "last_pending", "handoff", "expected"),
    [
        pytest.param(None, False, False, "raise", id="never alerted"),
        pytest.param(AT - DAY, False, False, "raise", id="cooldown over"),
        pytest.param(AT - timedelta(hours=1), True, False, "hold", id="noise inside the cooldown"),
        pytest.param(AT - timedelta(hours=1), False, False, "hold", id="noise after a sent alert"),
        pytest.param(AT - timedelta(milliseconds=17), True, True, "revise", id="handoff, alert pending"),
        pytest.param(AT - timedelta(hours=1), False, True, "update", id="handoff, alert sent"),
        pytest.param(AT - DAY, True, True, "raise", id="handoff after the cooldown"),
    ],
)
def test_alert_action_never_holds_back_the_handoff(
    last_alert_at: datetime | None, last_pending: bool, handoff: bool, expected: str
) -> None:
    action = alert_action(last_alert_at, last_pending=last_pending, now=AT, cooldown=DAY, handoff=handoff)
    assert action == expected
