"""Funnel arithmetic: stages reached, conversion, and nearest-rank percentiles."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.report import (
    FUNNEL,
    STAGE_RANK,
    QualifiedLead,
    funnel,
    median,
    nearest_rank,
    qualified_by_step,
    spread,
)
from nurture.core.stages import Stage, stage_rank

values = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200)


@given(values)
def test_p90_is_a_value_with_at_least_nine_tenths_at_or_below_it_and_the_least_such(xs: list[float]) -> None:
    p90 = nearest_rank(xs, 0.9)
    assert p90 in xs
    assert sum(x <= p90 for x in xs) >= math.ceil(0.9 * len(xs))
    assert sum(x < p90 for x in xs) < math.ceil(0.9 * len(xs))


@given(values)
def test_median_lies_between_the_smallest_and_the_largest_value(xs: list[float]) -> None:
    m = median(xs)
    assert m is not None
    assert min(xs) <= m <= max(xs)


@given(st.dictionaries(st.integers(0, 4), st.integers(0, 1000)))
def test_funnel_counts_never_grow_down_the_stages_and_conversion_is_their_ratio(
    reached: dict[int, int],
) -> None:
    stages = funnel(reached)
    assert [s.stage for s in stages] == list(FUNNEL)
    assert stages[0].leads == sum(reached.values())
    for before, after in itertools.pairwise(stages):
        assert after.leads <= before.leads
        assert after.conversion == (after.leads / before.leads if before.leads else None)


def test_empty_values_have_no_median_or_p90() -> None:
    s = spread([])
    assert (s.count, s.median, s.p90) == (0, None, None)


def test_median_of_an_even_count_averages_the_middle_two() -> None:
    assert median([4, 1, 3, 2]) == 2.5
    assert nearest_rank([4, 1, 3, 2], 0.9) == 4


@pytest.mark.parametrize("share", [0, -0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        nearest_rank([1.0], share)


def test_a_lead_qualified_in_a_step_counts_for_the_step_and_its_campaign() -> None:
    leads = [
        QualifiedLead(2.0, 3, "saas", "case-study"),
        QualifiedLead(1.0, 0, "saas", None),  # left the campaign before its first touch
        QualifiedLead(5.0, 4, None, None),  # was in no campaign
    ]
    assert qualified_by_step(leads) == {("saas", None): 2, ("saas", "case-study"): 1}


def test_funnel_ranks_follow_the_lifecycle_order_and_name_the_funnel_stages() -> None:
    assert {stage: STAGE_RANK[stage] for stage in FUNNEL} == {stage: i for i, stage in enumerate(FUNNEL)}
    assert STAGE_RANK["visitor"] == STAGE_RANK["suspect"] == STAGE_RANK["lead"] == 0
    for before, after in itertools.product(Stage, repeat=2):
        if stage_rank(after) > stage_rank(before):
            assert STAGE_RANK[after] >= STAGE_RANK[before], (before, after)
