"""Funnel arithmetic for `nurture report` and the dashboard: stages reached, conversion, median and p90.

Pure: the figures come in as counts and values the database already selected, and go out as frozen values.

A lead *reached* a funnel stage when its current stage, or the `after` of any `stage_change` on its timeline,
is that stage or a later one: a lead now back at `lead` that was once an MQL still counts as an MQL, and a
lead imported straight at `sql` counts as an MQL and an SQL. Every lead reached `lead` (visitors and
suspects included). Percentiles are nearest-rank: p90 is the smallest value with at least 90% of the values
at or below it, so it is always one of the values; the median averages the two middle values of an even
count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nurture.core.stages import STAGE_RANK as LIFECYCLE_RANK
from nurture.core.stages import Stage

# Funnel stages in order; `lead` stands for every lead (visitor and suspect are not further down the funnel).
FUNNEL: tuple[str, ...] = ("lead", "mql", "sql", "opportunity", "customer")
# A stage's funnel position: its lifecycle rank counted from `lead`, so visitors and suspects count as leads.
STAGE_RANK: Mapping[str, int] = {
    str(stage): max(rank - LIFECYCLE_RANK[Stage.LEAD], 0) for stage, rank in LIFECYCLE_RANK.items()
}
MQL_RANK = STAGE_RANK["mql"]


@dataclass(frozen=True, slots=True)
class StageCount:
    """How many leads reached `stage`, and the share of the previous stage's leads that did (None first)."""

    stage: str
    leads: int
    conversion: float | None


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and p90 of some values, and how many values there were (both None when there were none)."""

    count: int
    median: float | None
    p90: float | None


@dataclass(frozen=True, slots=True)
class StepFigures:
    """What one campaign step (or, with `step_id` None, a whole campaign) sent and what came back."""

    campaign_id: str
    step_id: str | None
    sent: int  # handed to the mail server: accepted, or refused for good
    bounced: int  # refused for good (SMTP 5xx)
    unique_opens: int  # leads with a human open of this email
    unique_clicks: int  # leads with a human click in this email
    unsubscribes: int  # leads that unsubscribed through this email's link
    qualified: int  # leads that crossed MQL while this was the last touch of the campaign they were in

    @property
    def delivered(self) -> int:
        return self.sent - self.bounced


@dataclass(frozen=True, slots=True)
class QualifiedLead:
    """One lead that crossed MQL: how long it took, what touched it first, and what it was in then."""

    days: float  # from the lead's creation to the stage change
    touches: int  # emails sent and rep tasks created up to that moment
    campaign_id: str | None  # the campaign it left as qualified, if it was in one
    step_id: str | None  # that campaign's last touch before the crossing


@dataclass(frozen=True, slots=True)
class GroupFigures:
    """The funnel and the qualification figures of one group of leads (a source, owner, campaign, ...)."""

    key: str
    funnel: tuple[StageCount, ...]
    days_to_mql: Spread
    touches_to_mql: Spread

    @property
    def leads(self) -> int:
        return self.funnel[0].leads

    @property
    def mql_rate(self) -> float | None:
        return self.funnel[1].leads / self.leads if self.leads else None


def stage_rank(stage: str | None) -> int:
    """The funnel position of a lifecycle stage; an unknown stage counts as a plain lead."""
    return STAGE_RANK.get(stage or "", 0)


def funnel(reached: Mapping[int, int]) -> tuple[StageCount, ...]:
    """The funnel from the number of leads whose furthest stage has each rank.

    A lead counts in its furthest stage and every stage before it.
    """
    counts = [sum(n for rank, n in reached.items() if rank >= i) for i in range(len(FUNNEL))]
    return tuple(
        StageCount(stage, count, ratio(count, counts[i - 1]) if i else None)
        for i, (stage, count) in enumerate(zip(FUNNEL, counts, strict=True))
    )


def ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def nearest_rank(values: Sequence[float], share: float) -> float | None:
    """The smallest value with at least `share` (0 < share <= 1) of `values` at or below it."""
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)), 1) - 1]


def spread(values: Sequence[float]) -> Spread:
    return Spread(len(values), median(values), nearest_rank(values, 0.9))


def group_figures(
    reached: Mapping[str, Mapping[int, int]], qualified: Mapping[str, Sequence[QualifiedLead]]
) -> tuple[GroupFigures, ...]:
    """Figures per group key, most leads first (then by key), from reach counts and qualified leads."""
    keys = set(reached) | set(qualified)
    groups = [
        GroupFigures(
            key=key,
            funnel=funnel(reached.get(key, {})),
            days_to_mql=spread([q.days for q in qualified.get(key, ())]),
            touches_to_mql=spread([q.touches for q in qualified.get(key, ())]),
        )
        for key in keys
    ]
    return tuple(sorted(groups, key=lambda g: (-g.leads, g.key)))


def qualified_by_step(qualified: Iterable[QualifiedLead]) -> dict[tuple[str, str | None], int]:
    """How many leads each (campaign, step) qualified, and each campaign as (campaign, None)."""
    counts: dict[tuple[str, str | None], int] = {}
    for lead in qualified:
        if lead.campaign_id is None:
            continue
        keys: list[tuple[str, str | None]] = [(lead.campaign_id, None)]
        if lead.step_id is not None:
            keys.append((lead.campaign_id, lead.step_id))
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return counts
