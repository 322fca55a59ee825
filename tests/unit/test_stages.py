"""The lifecycle order and the rule that no stage moves backwards without an explicit reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.stages import (
    Stage,
    StageChange,
    StageRefusal,
    decide_stage_move,
    is_backward,
    stage_rank,
)

stages = st.sampled_from(list(Stage))
reasons = st.none() | st.text(min_size=1, max_size=20)
ORDER = ("visitor", ("lead", "suspect"), "mql", "sql", "opportunity", "customer")


@pytest.mark.parametrize(("rank", "names"), list(enumerate(ORDER)))
def test_stage_rank_follows_visitor_lead_equals_suspect_mql_sql_opportunity_customer(
    rank: int, names: str | tuple[str, ...]
) -> None:
    for name in (names,) if isinstance(names, str) else names:
        assert stage_rank(Stage(name)) == rank


@given(before=stages, after=stages)
def test_a_move_is_backward_exactly_when_it_lowers_the_rank_and_never_both_ways(
    before: Stage, after: Stage
) -> None:
    assert is_backward(before, after) == (stage_rank(after) < stage_rank(before))
    assert not (is_backward(before, after) and is_backward(after, before))


@given(a=stages, b=stages, c=stages)
def test_backward_is_transitive(a: Stage, b: Stage, c: Stage) -> None:
    if is_backward(a, b) and is_backward(b, c):
        assert is_backward(a, c)


def test_lead_and_suspect_move_into_each_other_without_a_reason() -> None:
    assert decide_stage_move(Stage.LEAD, Stage.SUSPECT, reason="import") == StageChange(
        Stage.LEAD, Stage.SUSPECT, "import"
    )
    assert decide_stage_move(Stage.SUSPECT, Stage.LEAD, reason="import") == StageChange(
        Stage.SUSPECT, Stage.LEAD, "import"
    )


@given(before=stages, after=stages, explicit=reasons)
def test_a_move_is_refused_only_when_backward_without_an_explicit_reason(
    before: Stage, after: Stage, explicit: str | None
) -> None:
    decision = decide_stage_move(before, after, reason="import", explicit_reason=explicit)
    if before == after:
        assert decision is None
    elif is_backward(before, after) and explicit is None:
        assert decision == StageRefusal(before, after)
        assert decision.reason.startswith(f"stage: {after} would move the lead back from {before}")
    else:
        assert decision == StageChange(before, after, explicit if explicit is not None else "import")


@given(before=stages, after=stages)
def test_without_an_explicit_reason_no_applied_move_lowers_the_rank(before: Stage, after: Stage) -> None:
    decision = decide_stage_move(before, after, reason="import")
    if isinstance(decision, StageChange):
        assert stage_rank(decision.after) >= stage_rank(decision.before)
