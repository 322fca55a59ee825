"""Conditions on a lead's earlier engagement that decide whether a campaign step runs (`when:`/`skip_if:`),
and the deterministic choice of a step's A/B variant.

A condition is a small tree of frozen values, read from YAML by `condition_from_data` and evaluated purely
against `StepHistory` (what the lead did with the enrollment's earlier steps) and the lead's score. In YAML:

    when: {not_opened: welcome}
    skip_if: {any: [{clicked: case-study}, {score_at_least: 40}]}
    when: {all: [{opened: welcome}, {not: {clicked: welcome}}]}
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, get_args

if TYPE_CHECKING:
    from nurture.core.campaign import Step, Variant

EngagementKind = Literal["opened", "not_opened", "clicked", "not_clicked"]
ENGAGEMENT_KINDS: Final[tuple[str, ...]] = get_args(EngagementKind)
CONDITION_KEYS: Final = (*ENGAGEMENT_KINDS, "score_below", "score_at_least", "all", "any", "not")
_MAX_DEPTH: Final = 8  # deeper nesting is a mistake, not a need


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


@dataclass(frozen=True, slots=True)
class StepEngagement:
    """What the lead did with one earlier step of its enrollment."""

    sent: bool = False
    opened: bool = False
    clicked: bool = False


# Engagement by step id; a step missing from it was never sent to the lead (skipped, or not due yet).
StepHistory = Mapping[str, StepEngagement]


# --- reading ------------------------------------------------------------------------------------------------


def condition_from_data(data: object, *, depth: int = 0) -> Condition:
    """Read one condition as written in a campaign file.

    Raises:
        ValueError: the data is not a condition; the message says what is wrong, for marketing.
    """
    if depth > _MAX_DEPTH:
        raise ValueError(f"conditions nest more than {_MAX_DEPTH} levels deep")
    if not isinstance(data, Mapping) or len(data) != 1:
        raise ValueError(
            "a condition is one key such as {not_opened: welcome} or {score_below: 30}; "
            "combine several with all: [...] or any: [...]"
        )
    ((key, value),) = data.items()
    if key in ENGAGEMENT_KINDS:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key}: expected the id of an earlier step")
        return Engaged(key, value)
    if key in ("score_below", "score_at_least"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key}: expected a whole number")
        return ScoreBelow(value) if key == "score_below" else ScoreAtLeast(value)
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"{key}: expected a non-empty list of conditions")
        items = tuple(condition_from_data(item, depth=depth + 1) for item in value)
        return AllOf(items) if key == "all" else AnyOf(items)
    if key == "not":
        return Not(condition_from_data(value, depth=depth + 1))
    raise ValueError(f"unknown condition {key!r}: expected one of {', '.join(CONDITION_KEYS)}")


def referenced_steps(condition: Condition) -> Iterator[Engaged]:
    """Every engagement test in `condition`, in the order written."""
    match condition:
        case Engaged():
            yield condition
        case AllOf(items) | AnyOf(items):
            for item in items:
                yield from referenced_steps(item)
        case Not(item):
            yield from referenced_steps(item)
        case ScoreBelow() | ScoreAtLeast():
            return


def describe(condition: Condition) -> str:
    """The condition as written, compactly: `not_opened welcome`, `any(clicked x, score_below 30)`."""
    match condition:
        case Engaged(kind, step_id):
            return f"{kind} {step_id}"
        case ScoreBelow(value):
            return f"score_below {value}"
        case ScoreAtLeast(value):
            return f"score_at_least {value}"
        case AllOf(items):
            return "all(" + ", ".join(describe(i) for i in items) + ")"
        case AnyOf(items):
            return "any(" + ", ".join(describe(i) for i in items) + ")"
        case Not(item):
            return f"not({describe(item)})"


# --- deciding -----------------------------------------------------------------------------------------------


def evaluate(condition: Condition, history: StepHistory, score: int) -> bool:
    """Whether `condition` holds for a lead with this engagement `history` and `score`.

    A click counts as an open too (images may be blocked, but the lead clearly read it); a step never sent
    was neither opened nor clicked.
    """
    match condition:
        case Engaged(kind, step_id):
            seen = history.get(step_id, StepEngagement())
            opened, clicked = seen.opened or seen.clicked, seen.clicked
            if kind in ("opened", "not_opened"):
                return opened == (kind == "opened")
            return clicked == (kind == "clicked")
        case ScoreBelow(value):
            return score < value
        case ScoreAtLeast(value):
            return score >= value
        case AllOf(items):
            return all(evaluate(item, history, score) for item in items)
        case AnyOf(items):
            return any(evaluate(item, history, score) for item in items)
        case Not(item):
            return not evaluate(item, history, score)


def skip_reason(step: Step, history: StepHistory, score: int) -> str | None:
    """Why `step` must be skipped for this lead (its `when` is false or its `skip_if` true), or None."""
    if step.when is not None and not evaluate(step.when, history, score):
        return f"when: {describe(step.when)} was false"
    if step.skip_if is not None and evaluate(step.skip_if, history, score):
        return f"skip_if: {describe(step.skip_if)} was true"
    return None


def choose_variant(step: Step, lead_id: int) -> Variant | None:
    """The variant of `step` lead `lead_id` gets, or None when the step has none.

    A pure function of the lead and the step id: a retry, a second worker or a simulation all pick the same
    arm, and over many leads each arm's share follows its weight.
    """
    return pick_weighted(step.variants, bucket(lead_id, step.id, sum(v.weight for v in step.variants)))


def bucket(lead_id: int, step_id: str, total: int) -> int:
    """A number in [0, total) spread evenly over leads, fixed for one lead and step."""
    if total <= 0:
        return 0
    digest = hashlib.sha256(f"{lead_id}:{step_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % total


def pick_weighted(variants: Sequence[Variant], point: int) -> Variant | None:
    """The variant whose cumulative-weight range holds `point`."""
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return None
