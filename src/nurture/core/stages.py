"""Lifecycle stages, their order, and whether a requested stage move may be applied.

    visitor < lead = suspect < mql < sql < opportunity < customer

A move to a lower rank is *backward*. `lead` and `suspect` share a rank: parking a lead as a suspect (fits,
shows no interest) or taking it back is not a step down the funnel. Nothing but an explicit ask with a reason
moves a lead backwards: an import or API upsert that would do it otherwise is refused for that lead (its
other fields still go in). Every applied move is recorded with the path it came by (`StagePath`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Stage(StrEnum):
    VISITOR = "visitor"
    LEAD = "lead"
    SUSPECT = "suspect"
    MQL = "mql"
    SQL = "sql"
    OPPORTUNITY = "opportunity"
    CUSTOMER = "customer"


class StagePath(StrEnum):
    """Where a stage change came from."""

    SCORING = "scoring"
    IMPORT = "import"
    API = "api"
    CLI = "cli"
    CRM = "crm"


STAGE_RANK: Final[Mapping[Stage, int]] = MappingProxyType(
    {
        Stage.VISITOR: 0,
        Stage.LEAD: 1,
        Stage.SUSPECT: 1,
        Stage.MQL: 2,
        Stage.SQL: 3,
        Stage.OPPORTUNITY: 4,
        Stage.CUSTOMER: 5,
    }
)


@dataclass(frozen=True, slots=True)
class StageChange:
    """A move of one lead's stage, and why (e.g. "qualified: score 55 >= 50")."""

    before: Stage
    after: Stage
    reason: str


@dataclass(frozen=True, slots=True)
class StageRefusal:
    """A requested backward move that nobody asked for explicitly: the lead keeps `before`."""

    before: Stage
    after: Stage

    @property
    def reason(self) -> str:
        return (
            f"stage: {self.after} would move the lead back from {self.before}; kept {self.before} "
            "(a backward move needs an explicit reason)"
        )


def stage_rank(stage: Stage) -> int:
    """The position of `stage` in the lifecycle: 0 for a visitor up to 5 for a customer."""
    return STAGE_RANK[stage]


def is_backward(before: Stage, after: Stage) -> bool:
    """True when moving from `before` to `after` goes down the lifecycle (lead <-> suspect does not)."""
    return STAGE_RANK[after] < STAGE_RANK[before]


def decide_stage_move(
    before: Stage, after: Stage, *, reason: str, explicit_reason: str | None = None
) -> StageChange | StageRefusal | None:
    """Decide what a request to put a lead at `before` into `after` does.

    Returns None when the stage stays; a `StageChange` (recorded with `explicit_reason` when given, else
    `reason`) for a move forward or sideways, or a backward move the caller asked for with
    `explicit_reason`; a `StageRefusal` for a backward move without one.
    """
    if after == before:
        return None
    if is_backward(before, after) and explicit_reason is None:
        return StageRefusal(before, after)
    return StageChange(before, after, explicit_reason if explicit_reason is not None else reason)
