"""Campaign tests (`campaigns/tests/*.yaml`): a lead, what it does, and what must come of it.

    campaign: saas-nurture
    start: 2026-03-02T09:00:00+08:00      # when the leads enrol (optional: a Monday 09:00 UTC)
    cases:
      - name: a pricing visit alerts the rep
        lead: {email: ana@example.com, timezone: Asia/Taipei, grade: nurturable}
        engagement: |                    # the script language of `nurture simulate --engagement`
          opens welcome
          visits /pricing on day 9
        expect:
          sends: {welcome: 0, ops-checklist: 2, case-study: 7}   # exactly these steps, on these local days
          not_sent: [breakup]            # (optional) steps that must not be sent
          stage: lead
          alerts: [moment:pricing_visit] # exactly these alert triggers, in order
          exit: completed                # completed, or the exit reason (qualified, unsubscribed, ...)

A day is counted in the lead's own time zone from the day it enrolled (0); a date (2026-03-04) works too.
This module parses the text and compares an outcome with the expectations; it does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final

import yaml

from nurture.core.engagement_script import EngagementScript, parse_script
from nurture.errors import ConfigError, ConfigErrors

DEFAULT_START: Final = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
_FILE_KEYS: Final = {"campaign", "start", "cases"}
_CASE_KEYS: Final = {"name", "lead", "engagement", "expect", "start"}
_EXPECT_KEYS: Final = {"sends", "not_sent", "stage", "alerts", "exit"}


@dataclass(frozen=True, slots=True)
class Expectation:
    sends: Mapping[str, int | date] | None = None
    not_sent: tuple[str, ...] = ()
    stage: str | None = None
    alerts: tuple[str, ...] | None = None
    exit: str | None = None


@dataclass(frozen=True, slots=True)
class CampaignCase:
    source: str
    line: int
    name: str
    campaign: str
    start: datetime
    lead: Mapping[str, str]
    script: EngagementScript
    expect: Expectation


@dataclass(frozen=True, slots=True)
class Observed:
    """What a simulation did to the case's lead."""

    sends: Mapping[str, tuple[int, date]]  # step -> (local day, local date)
    stage: str
    alerts: tuple[str, ...]
    exit: str | None  # "completed", an exit reason, or None while enrolled / never enrolled
    enrolled: bool = True
    notes: tuple[str, ...] = field(default=())


def parse_cases(text: str, *, source: str) -> list[CampaignCase]:
    """Parse one test file; every problem is reported as `source:line: message`.

    Raises:
        ConfigErrors: the file is not a valid test file.
    """
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigErrors([ConfigError(f"not valid YAML: {exc}", source=source, line=line)]) from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigErrors([ConfigError("a test file maps campaign, start and cases", source=source, line=1)])
    top = _mapping(root)
    errors: list[ConfigError] = []
    for key, (key_node, _) in top.items():
        if key not in _FILE_KEYS:
            errors.append(
                _error(source, key_node, f"unknown key {key!r} (use: {', '.join(sorted(_FILE_KEYS))})")
            )
    campaign = _scalar(top, "campaign")
    if not campaign:
        errors.append(ConfigError("`campaign:` (a campaign id) is required", source=source, line=1))
    start = _start(top, source, DEFAULT_START, errors)
    cases_node = top.get("cases", (None, None))[1]
    if not isinstance(cases_node, yaml.SequenceNode) or not cases_node.value:
        errors.append(ConfigError("`cases:` must be a list of at least one case", source=source, line=1))
        raise ConfigErrors(errors)
    cases = []
    for node in cases_node.value:
        try:
            cases.append(_case(node, source, campaign or "", start))
        except ConfigErrors as exc:
            errors += exc.errors
    if errors:
        raise ConfigErrors(errors)
    return cases


def check(expect: Expectation, observed: Observed) -> list[str]:
    """The differences between what was expected and what happened, one readable line each."""
    diff: list[str] = []
    if not observed.enrolled:
        diff.append("the lead was not enrolled: it is outside the campaign's audience")
    if expect.sends is not None:
        diff += _check_sends(expect.sends, observed.sends)
    diff += [
        f"not_sent: {step} was sent on day {observed.sends[step][0]}"
        for step in expect.not_sent
        if step in observed.sends
    ]
    if expect.stage is not None and expect.stage != observed.stage:
        diff.append(f"stage: expected {expect.stage}, got {observed.stage}")
    if expect.alerts is not None and tuple(expect.alerts) != observed.alerts:
        diff.append(f"alerts: expected {list(expect.alerts)}, got {list(observed.alerts)}")
    if expect.exit is not None and expect.exit != observed.exit:
        diff.append(f"exit: expected {expect.exit}, got {observed.exit or 'still enrolled'}")
    return diff + list(observed.notes) if diff else diff


def _check_sends(expected: Mapping[str, int | date], sent: Mapping[str, tuple[int, date]]) -> list[str]:
    diff = []
    for step, want in expected.items():
        got = sent.get(step)
        if got is None:
            diff.append(f"sends: expected {step} on {_day(want)}, it was not sent")
        elif got[0 if isinstance(want, int) else 1] != want:
            diff.append(f"sends: expected {step} on {_day(want)}, got {_day(got[0])} ({got[1]:%a %Y-%m-%d})")
    diff += [
        f"sends: {step} was sent on day {day} ({on:%a %Y-%m-%d}) but is not expected"
        for step, (day, on) in sent.items()
        if step not in expected
    ]
    return diff


def _day(value: int | date) -> str:
    return f"day {value}" if isinstance(value, int) else f"{value:%a %Y-%m-%d}"


def _case(node: yaml.Node, source: str, campaign: str, start: datetime) -> CampaignCase:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigErrors([_error(source, node, "a case maps name, lead, engagement and expect")])
    keys = _mapping(node)
    errors = [
        _error(source, k, f"unknown key {name!r} (use: {', '.join(sorted(_CASE_KEYS))})")
        for name, (k, _) in keys.items()
        if name not in _CASE_KEYS
    ]
    name = _scalar(keys, "name") or f"case at line {node.start_mark.line + 1}"
    start = _start(keys, source, start, errors)
    lead = _plain(keys.get("lead", (None, None))[1])
    if not isinstance(lead, dict) or not lead.get("email"):
        errors.append(_error(source, node, "`lead:` must map lead fields, with at least `email`"))
        lead = {}
    script = EngagementScript(source=source)
    script_node = keys.get("engagement", (None, None))[1]
    if script_node is not None:
        if not isinstance(script_node, yaml.ScalarNode):
            errors.append(_error(source, script_node, "`engagement:` is a text block (use `|`)"))
        else:
            block = script_node.style in ("|", ">")
            first = script_node.start_mark.line + (2 if block else 1)
            try:
                script = parse_script(str(script_node.value), source=source, first_line=first)
            except ConfigErrors as exc:
                errors += exc.errors
    expect = _expect(keys.get("expect", (None, None))[1], source, node, errors)
    if errors:
        raise ConfigErrors(errors)
    return CampaignCase(
        source=source,
        line=node.start_mark.line + 1,
        name=name,
        campaign=campaign,
        start=start,
        lead={str(k): "" if v is None else str(v) for k, v in lead.items()},
        script=script,
        expect=expect,
    )


def _expect(node: yaml.Node | None, source: str, case: yaml.Node, errors: list[ConfigError]) -> Expectation:
    if not isinstance(node, yaml.MappingNode):
        errors.append(
            _error(source, node or case, "`expect:` must map sends, not_sent, stage, alerts or exit")
        )
        return Expectation()
    keys = _mapping(node)
    for name, (k, _) in keys.items():
        if name not in _EXPECT_KEYS:
            errors.append(
                _error(source, k, f"unknown expectation {name!r} (use: {', '.join(sorted(_EXPECT_KEYS))})")
            )
    data: dict[str, Any] = {name: _plain(value) for name, (_, value) in keys.items()}
    sends = data.get("sends")
    if sends is not None and not (
        isinstance(sends, dict)
        and all(
            isinstance(d, date) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
            for d in sends.values()
        )
    ):
        errors.append(
            _error(source, keys["sends"][1], "`sends:` maps each step id to a day number or a date")
        )
        sends = None
    lists = {}
    for name in ("not_sent", "alerts"):
        value = data.get(name)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            errors.append(_error(source, keys[name][1], f"`{name}:` is a list of names"))
            value = None
        lists[name] = value
    return Expectation(
        sends={str(k): v for k, v in sends.items()} if isinstance(sends, dict) else None,
        not_sent=tuple(lists["not_sent"] or ()),
        stage=str(data["stage"]) if data.get("stage") is not None else None,
        alerts=tuple(lists["alerts"]) if lists["alerts"] is not None else None,
        exit=str(data["exit"]) if data.get("exit") is not None else None,
    )


def _start(
    keys: Mapping[str, tuple[yaml.Node, yaml.Node]], source: str, default: datetime, errors: list[ConfigError]
) -> datetime:
    if "start" not in keys:
        return default
    value = _plain(keys["start"][1])
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        errors.append(_error(source, keys["start"][1], f"start {value!r} is not an ISO-8601 instant"))
        return default
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _mapping(node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    return {str(k.value): (k, v) for k, v in node.value}


def _scalar(keys: Mapping[str, tuple[yaml.Node, yaml.Node]], key: str) -> str | None:
    node = keys.get(key, (None, None))[1]
    return str(node.value) if isinstance(node, yaml.ScalarNode) and node.value != "" else None


def _plain(node: yaml.Node | None) -> Any:
    """A node as plain Python values (dates and datetimes as YAML reads them)."""
    if node is None:
        return None
    return yaml.safe_load(yaml.serialize(node))


def _error(source: str, node: yaml.Node, message: str) -> ConfigError:
    return ConfigError(message, source=source, line=node.start_mark.line + 1)


def observed_from(
    sends: Sequence[tuple[str, int, date]],
    stage: str,
    alerts: Sequence[str],
    exit_: str | None,
    enrolled: bool,
) -> Observed:
    """An `Observed` from a simulation's sends (step, local day, local date); the first send counts."""
    first: dict[str, tuple[int, date]] = {}
    for step, day, on in sends:
        first.setdefault(step, (day, on))
    return Observed(sends=first, stage=stage, alerts=tuple(alerts), exit=exit_, enrolled=enrolled)
