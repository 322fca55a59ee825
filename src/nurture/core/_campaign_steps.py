"""Checks across the keys of a campaign's steps: ids, order, what an email or a task step needs, variants,
and the steps a `when:`/`skip_if:` condition looks at.

Private to `core._campaign_schema`. Runs on the raw YAML data, even where some keys are invalid, so that every
problem in the file is reported at once; a value of the wrong type is left to the models to report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from nurture.core._yaml import KeyPath, is_int
from nurture.core.branching import condition_from_data, referenced_steps

_EMAIL_KEYS: Final = ("subject", "template", "text_template", "variants")
Found = list[tuple[KeyPath, str]]


def step_checks(steps: list[Any], lines: Mapping[KeyPath, int]) -> Found:
    """Every problem across the steps of one campaign file."""
    found: Found = []
    first_use: dict[str, int] = {}
    tasks: set[str] = set()
    last_offset: tuple[int, str] | None = None  # of the previous step with a valid offset
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        step_id = step.get("id")
        if isinstance(step_id, str) and step_id in first_use:
            where = lines.get(("steps", first_use[step_id], "id"), "?")
            message = f"duplicate step id {step_id!r} (first used at line {where})"
            found.append((("steps", index, "id"), message))
        elif isinstance(step_id, str):
            first_use[step_id] = index
        offset = _offset(step, index, found)
        if offset is not None:
            if last_offset is not None and offset[0] <= last_offset[0]:
                message = (
                    f"bad day order: {offset[1]} {offset[0]} must come after "
                    f"{last_offset[1]} {last_offset[0]} of the step before"
                )
                found.append((("steps", index, offset[1]), message))
            last_offset = offset
        found += _kind_checks(step, index)
        found += _variant_checks(step, index)
        if "task" in step and isinstance(step_id, str):
            tasks.add(step_id)
    for index, step in enumerate(steps):
        if isinstance(step, dict):
            found += _condition_checks(step, index, first_use, tasks)
    return found


def _offset(step: dict[str, Any], index: int, found: Found) -> tuple[int, str] | None:
    """The step's offset and its key (`day` or `business_days`); reports a step with neither or both."""
    given = [key for key in ("day", "business_days") if key in step]
    if not given:
        found.append((("steps", index), "a step needs `day: N` or `business_days: N`"))
        return None
    if len(given) == 2:
        found.append((("steps", index, "business_days"), "give either day or business_days, not both"))
        return None
    value = step[given[0]]
    return (value, given[0]) if is_int(value) and value >= 0 else None


def _kind_checks(step: dict[str, Any], index: int) -> Found:
    if "task" in step:
        return [
            (("steps", index, key), f"a task step has no {key}: the rep gets an alert, not an email")
            for key in _EMAIL_KEYS
            if key in step
        ]
    return [
        (("steps", index), f"missing required key 'steps[{index}].{key}'")
        for key in ("subject", "template")
        if key not in step
    ]


def _variant_checks(step: dict[str, Any], index: int) -> Found:
    variants = step.get("variants")
    if not isinstance(variants, list):
        return []
    found: Found = []
    if len(variants) < 2:
        found.append((("steps", index, "variants"), "an A/B test needs at least two variants"))
    seen: set[str] = set()
    controls = 0  # arms that keep the step's own subject and templates
    for number, variant in enumerate(variants):
        if not isinstance(variant, dict):
            continue
        where: KeyPath = ("steps", index, "variants", number)
        variant_id = variant.get("id")
        if isinstance(variant_id, str) and variant_id in seen:
            found.append(((*where, "id"), f"duplicate variant id {variant_id!r}"))
        elif isinstance(variant_id, str):
            seen.add(variant_id)
        if not any(key in variant for key in ("subject", "template", "text_template")):
            controls += 1
            if controls > 1:
                message = "only one variant may keep the step's own subject and template (the control arm)"
                found.append((where, message))
    return found


def _condition_checks(step: dict[str, Any], index: int, first_use: dict[str, int], tasks: set[str]) -> Found:
    found: Found = []
    for key in ("when", "skip_if"):
        if key not in step:
            continue
        try:
            condition = condition_from_data(step[key])
        except ValueError:
            continue  # the model reports the shape
        for test in referenced_steps(condition):
            at = first_use.get(test.step_id)
            if at is None:
                message = f"{key}: no step {test.step_id!r} in this campaign"
            elif at >= index:
                message = f"{key}: step {test.step_id!r} is not an earlier step: a condition looks back only"
            elif test.step_id in tasks:
                message = f"{key}: step {test.step_id!r} is a rep task: it cannot be opened or clicked"
            else:
                continue
            found.append((("steps", index, key), message))
    return found
