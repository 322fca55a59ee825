"""Conditions on a lead's earlier engagement that decide whether a campaign step runs (`when:`/`skip_if:`).

A condition is a small tree of frozen values, evaluated purely against `StepHistory` (what the lead did with
the enrollment's earlier steps) and the lead's score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EngagementKind = Literal["opened", "not_opened", "clicked", "not_clicked"]


@dataclass(frozen=True, slots=True)
class Engaged:
    """The lead did (or did not) open / click the earlier step `step_id` of this enrollment."""

    kind: EngagementKind
    step_id: str


@dataclass(frozen=True, slots=True)
class ScoreBelow:
    value: int


@dataclass(frozen=True, slots=True)
class ScoreAtLeast:
    value: int


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition


Condition = Engaged | ScoreBelow | ScoreAtLeast | AllOf | AnyOf | Not
