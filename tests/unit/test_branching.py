"""Step conditions (`when:`/`skip_if:`) and A/B variant choice: pure, deterministic, weighted."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.core.branching import (
    AllOf,
    AnyOf,
    Condition,
    Engaged,
    Not,
    ScoreAtLeast,
    ScoreBelow,
    StepEngagement,
    StepHistory,
    choose_variant,
    condition_from_data,
    describe,
    evaluate,
    pick_weighted,
    skip_reason,
)
from nurture.core.campaign import Step, Variant

STEP_IDS = ("welcome", "case-study", "roi")

engagements = st.builds(StepEngagement, sent=st.just(True), opened=st.booleans(), clicked=st.booleans())
histories: st.SearchStrategy[StepHistory] = st.dictionaries(st.sampled_from(STEP_IDS), engagements)
leaves: st.SearchStrategy[Condition] = st.one_of(
    st.builds(
        Engaged,
        st.sampled_from(["opened", "not_opened", "clicked", "not_clicked"]),
        st.sampled_from(STEP_IDS),
    ),
    st.builds(ScoreBelow, st.integers(-5, 105)),
    st.builds(ScoreAtLeast, st.integers(-5, 105)),
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda items: AllOf(tuple(items)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: AnyOf(tuple(items)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(Not, inner),
    ),
    max_leaves=8,
)
scores = st.integers(0, 100)


def _step(*weights: int) -> Step:
    variants = tuple(Variant(id=f"v{i}", weight=w, subject=f"s{i}") for i, w in enumerate(weights))
    return Step(id="case-study", day=5, subject="s", template="t.html.j2", variants=variants)


# --- reading conditions ---------------------------------------------------------------------------------


def test_condition_from_data_reads_every_kind_and_nesting() -> None:
    data = {
        "all": [
            {"not_opened": "welcome"},
            {"any": [{"clicked": "roi"}, {"score_below": 30}]},
            {"not": {"score_at_least": 80}},
        ]
    }
    assert condition_from_data(data) == AllOf(
        (
            Engaged("not_opened", "welcome"),
            AnyOf((Engaged("clicked", "roi"), ScoreBelow(30))),
            Not(ScoreAtLeast(80)),
        )
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param({"opened": "a", "clicked": "b"}, "a condition is one key", id="two keys"),
        pytest.param("not_opened welcome", "a condition is one key", id="text"),
        pytest.param({"openned": "welcome"}, "unknown condition 'openned'", id="typo"),
        pytest.param({"opened": 3}, "opened: expected the id of an earlier step", id="number as step"),
        pytest.param({"score_below": "30"}, "score_below: expected a whole number", id="text as score"),
        pytest.param({"score_below": True}, "score_below: expected a whole number", id="bool as score"),
        pytest.param({"all": []}, "all: expected a non-empty list", id="empty all"),
        pytest.param({"not": None}, "a condition is one key", id="not of nothing"),
    ],
)
def test_condition_from_data_rejects_garbage_with_a_clear_reason(data: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        condition_from_data(data)


def test_condition_from_data_refuses_absurd_nesting() -> None:
    data: object = {"opened": "welcome"}
    for _ in range(20):
        data = {"not": data}
    with pytest.raises(ValueError, match="nest more than"):
        condition_from_data(data)


# --- evaluating -----------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(condition=conditions, history=histories, score=scores)
def test_evaluate_follows_boolean_logic(condition: Condition, history: StepHistory, score: int) -> None:
    value = evaluate(condition, history, score)
    assert evaluate(Not(condition), history, score) is (not value)
    assert evaluate(AllOf((condition, condition)), history, score) is value
    # De Morgan: not(any(a, not a)) is never true.
    assert evaluate(Not(AnyOf((condition, Not(condition)))), history, score) is False


@given(step_id=st.sampled_from(STEP_IDS), history=histories, score=scores)
def test_opened_and_not_opened_are_opposites_and_a_click_counts_as_an_open(
    step_id: str, history: StepHistory, score: int
) -> None:
    opened = evaluate(Engaged("opened", step_id), history, score)
    assert evaluate(Engaged("not_opened", step_id), history, score) is (not opened)
    if evaluate(Engaged("clicked", step_id), history, score):
        assert opened


@given(value=st.integers(-10, 110), score=scores)
def test_score_conditions_split_at_the_value(value: int, score: int) -> None:
    assert evaluate(ScoreBelow(value), {}, score) is (score < value)
    assert evaluate(ScoreAtLeast(value), {}, score) is (not evaluate(ScoreBelow(value), {}, score))


def test_a_step_never_sent_was_neither_opened_nor_clicked() -> None:
    assert evaluate(Engaged("not_opened", "welcome"), {}, 0)
    assert not evaluate(Engaged("clicked", "welcome"), {}, 0)


def test_skip_reason_names_the_condition_that_decided() -> None:
    resend = Step(id="resend", day=3, subject="s", template="t", when=Engaged("not_opened", "welcome"))
    opened = {"welcome": StepEngagement(sent=True, opened=True)}
    assert skip_reason(resend, {}, 0) is None
    assert skip_reason(resend, opened, 0) == "when: not_opened welcome was false"
    calm = Step(
        id="call", day=9, subject="", template="", skip_if=AnyOf((ScoreBelow(5), Engaged("clicked", "roi")))
    )
    assert skip_reason(calm, {}, 3) == "skip_if: any(score_below 5, clicked roi) was true"
    assert skip_reason(calm, {}, 50) is None


def test_describe_writes_conditions_back_compactly() -> None:
    assert (
        describe(Not(AllOf((Engaged("opened", "a"), ScoreAtLeast(3)))))
        == "not(all(opened a, score_at_least 3))"
    )


# --- variants -------------------------------------------------------------------------------------------


@given(
    weights=st.lists(st.integers(1, 50), min_size=2, max_size=5),
    lead_id=st.integers(1, 2**62),
)
def test_choose_variant_is_a_pure_function_of_lead_and_step(weights: list[int], lead_id: int) -> None:
    step = _step(*weights)
    first = choose_variant(step, lead_id)
    assert first is not None
    assert first == choose_variant(step, lead_id)
    # Same weights on another step: an independent draw, but still deterministic.
    other = Step(id="other", day=1, subject="s", template="t", variants=step.variants)
    assert choose_variant(other, lead_id) == choose_variant(other, lead_id)


@given(weights=st.lists(st.integers(1, 30), min_size=1, max_size=6))
def test_pick_weighted_gives_each_variant_exactly_its_weight_of_the_range(weights: list[int]) -> None:
    variants = _step(*weights).variants
    picked = Counter(v.id for point in range(sum(weights)) if (v := pick_weighted(variants, point)))
    assert picked == {f"v{i}": w for i, w in enumerate(weights)}


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.integers(1, 10), min_size=2, max_size=4))
def test_variant_shares_over_many_leads_follow_the_weights(weights: list[int]) -> None:
    step, leads = _step(*weights), 6000
    counts = Counter(v.id for lead_id in range(1, leads + 1) if (v := choose_variant(step, lead_id)))
    for i, weight in enumerate(weights):
        assert abs(counts[f"v{i}"] / leads - weight / sum(weights)) < 0.03, counts


def test_a_step_without_variants_has_no_choice() -> None:
    assert choose_variant(Step(id="s", day=0, subject="s", template="t"), 1) is None
