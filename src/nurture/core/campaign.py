"""Campaigns as frozen values, parsed and validated from YAML text.

`parse_campaign(text, source=...)` is pure: the catalog reads the file and checks templates; this module
checks the shape and the values and reports every problem as `file:line: message`, all at once.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time
from types import MappingProxyType
from typing import Any, Final

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from nurture.core._campaign_schema import MODELS, WEEKDAYS, CampaignModel, KeyPath, cross_checks, keys_of
from nurture.errors import CampaignError, ConfigErrors

__all__ = [
    "WEEKDAYS",
    "Audience",
    "Campaign",
    "ExitRule",
    "SendWindow",
    "Sender",
    "Step",
    "parse_campaign",
]


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Local hours and weekdays in which a lead may receive mail."""

    start: time = time(9)
    end: time = time(17)
    weekdays: frozenset[int] = frozenset(range(5))  # Monday == 0
    timezone: str | None = None  # None: the lead's own zone
    default_timezone: str = "UTC"  # for leads without a zone


@dataclass(frozen=True, slots=True)
class Audience:
    """Who may enter the campaign; every condition given must hold."""

    grades: frozenset[str] = frozenset({"nurturable"})
    stages: frozenset[str] = frozenset({"lead", "suspect"})
    min_score: int | None = None
    max_score: int | None = None
    sources: frozenset[str] = frozenset()  # matches the `source` or `utm_source` tag; empty: any
    countries: frozenset[str] = frozenset()  # ISO codes, upper-case; empty: any
    tags: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Sender:
    from_address: str  # "Acme Growth <growth@acme.example>"
    reply_to: str | None = None  # an address, or "owner" for the lead's rep
    postal_address: str | None = None


@dataclass(frozen=True, slots=True)
class ExitRule:
    """When an enrolled lead leaves the campaign before its last step."""

    score_at_least: int | None = None
    stages: frozenset[str] = frozenset({"mql", "sql", "opportunity", "customer"})


@dataclass(frozen=True, slots=True)
class Step:
    id: str  # stable slug: part of a delivery's identity
    day: int  # offset from enrollment, in days
    subject: str  # a Jinja2 template
    template: str  # HTML template path, relative to the templates folder
    text_template: str | None = None  # plain-text template; derived from the HTML when absent


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    name: str
    sender: Sender
    steps: tuple[Step, ...]
    priority: int = 100  # lower runs first when a lead fits several campaigns
    audience: Audience = Audience()
    send_window: SendWindow = SendWindow()
    exit: ExitRule = ExitRule()
    source: str = "<string>"  # the file it came from
    content_hash: str = ""  # sha256 of the file's text
    # The file's line of each key, as "steps[0].template": lets the catalog point at a missing template.
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def line_of(self, *path: str | int) -> int | None:
        """The line of a key in the campaign's file, e.g. `line_of("steps", 0, "template")`."""
        return self.lines.get(_dotted(path))


# --- parsing ------------------------------------------------------------------------------------------------

_NODE_BUDGET: Final = 20_000  # far above any real campaign; stops alias bombs before they expand
_YAML_INT: Final = "tag:yaml.org,2002:int"
_YAML_1_1_ONLY: Final = {
    "tag:yaml.org,2002:bool",
    _YAML_INT,
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_FRIENDLY: Final = {
    "int_type": "expected a whole number",
    "string_type": "expected text",
    "string_too_short": "must not be empty",
    "list_type": "expected a list, such as [a, b]",
    "dict_type": "expected keys and values",
    "model_type": "expected keys and values",
    "model_attributes_type": "expected keys and values",
}


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 scalars, so `end: 17:00` stays a time (not 1020), `countries: [NO]` stays
    Norway (not false) and `day: 010` is ten."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(_YAML_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    # SafeLoader would read a leading zero as octal ("010" == 8); YAML 1.2 reads it as decimal.
    assert isinstance(node, yaml.ScalarNode)
    return int(loader.construct_scalar(node))


_Loader.add_constructor(_YAML_INT, _construct_int)


def parse_campaign(text: str, *, source: str) -> Campaign:
    """Validate one campaign file's text and return it as a `Campaign`.

    Raises:
        ConfigErrors: every problem in the file at once, each a `CampaignError` with its 1-based line.
    """
    data, lines, problems = _load_yaml(text)
    model: CampaignModel | None = None
    if data is not None and not isinstance(data, dict):
        problems.append((1, "a campaign file holds keys such as id, name, sender and steps"))
    elif isinstance(data, dict):
        problems += [(_line(lines, path), message) for path, message in cross_checks(data, lines)]
        try:
            model = CampaignModel.model_validate(data)
        except ValidationError as exc:
            problems += [(_line(lines, e["loc"]), _describe(e)) for e in exc.errors(include_url=False)]
    if problems or model is None:
        found = sorted(set(problems)) or [(1, "the file is empty")]
        raise ConfigErrors([CampaignError(message, source=source, line=line) for line, message in found])
    return _to_campaign(model, source=source, text=text, lines=lines)


def _load_yaml(text: str) -> tuple[Any, dict[KeyPath, int], list[tuple[int, str]]]:
    """Return the data, the line of every key path, and the problems found by YAML itself."""
    try:
        loader = _Loader(text)  # the reader rejects control characters here, before any parsing
    except yaml.reader.ReaderError as exc:
        return None, {}, [(text.count("\n", 0, exc.position) + 1, f"YAML syntax: {exc.reason}")]
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {(): 1}, []
        lines, problems = _line_map(root)
        if lines is None:
            return None, {(): 1}, [(1, "the file is too large, or its aliases repeat too often")]
        return loader.construct_document(root), lines, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(f"{exc.problem or ''} ({exc.context or ''})".replace(" ()", "").split())
        return None, {}, [(mark.line + 1 if mark else 1, f"YAML syntax: {reason}")]
    except RecursionError:
        return None, {}, [(1, "YAML syntax: nested too deeply")]
    finally:
        loader.dispose()


def _line_map(root: yaml.Node) -> tuple[dict[KeyPath, int] | None, list[tuple[int, str]]]:
    """Map each key path to the line of its key (or list item); None when the tree is too big to walk."""
    lines: dict[KeyPath, int] = {(): root.start_mark.line + 1}
    problems: list[tuple[int, str]] = []
    stack: list[tuple[KeyPath, yaml.Node]] = [((), root)]
    visits = 0
    while stack:
        path, node = stack.pop()
        visits += 1
        if visits > _NODE_BUDGET:  # aliases revisit shared nodes, so this also counts their expansions
            return None, problems
        children: list[tuple[KeyPath, yaml.Node, int]] = []
        if isinstance(node, yaml.MappingNode):
            first_at: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in first_at and key_node.tag != "tag:yaml.org,2002:merge":
                    problems.append((line, f"duplicate key {key!r} (first at line {first_at[key]})"))
                first_at.setdefault(key, line)
                children.append(((*path, key), value_node, line))
        elif isinstance(node, yaml.SequenceNode):
            children = [((*path, i), item, item.start_mark.line + 1) for i, item in enumerate(node.value)]
        for child_path, child, line in children:
            lines.setdefault(child_path, line)
            stack.append((child_path, child))
    return lines, problems


def _line(lines: Mapping[KeyPath, int], loc: Sequence[str | int]) -> int:
    """The line of `loc`, or of its nearest enclosing key when `loc` is not in the file (a missing key)."""
    path = tuple(loc)
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def _describe(error: ErrorDetails) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "missing":
        return f"missing required key {_dotted(loc)!r}"
    if kind == "extra_forbidden":
        parent = tuple("*" if isinstance(p, int) else p for p in loc[:-1])
        model = MODELS.get(parent)
        close = difflib.get_close_matches(str(loc[-1]), keys_of(model), n=1) if model else []
        return f"unknown key {_dotted(loc)!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "greater_than_equal":
        return f"{_dotted(loc)}: must be {error.get('ctx', {}).get('ge')} or more"
    return f"{_dotted(loc)}: {_FRIENDLY.get(kind, error['msg'])}"


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a bad mapping key; the key itself names it
            text += f".{part}" if text else part
    return text


def _hh_mm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _to_campaign(model: CampaignModel, *, source: str, text: str, lines: Mapping[KeyPath, int]) -> Campaign:
    audience, sender, window, exit_rule = model.audience, model.sender, model.send_window, model.exit
    return Campaign(
        id=model.id,
        name=model.name,
        priority=model.priority,
        sender=Sender(sender.from_address, sender.reply_to, sender.postal_address),
        steps=tuple(Step(s.id, s.day, s.subject, s.template, s.text_template) for s in model.steps),
        audience=Audience(
            grades=frozenset(audience.grade),
            stages=frozenset(audience.stage),
            min_score=audience.min_score,
            max_score=audience.max_score,
            sources=frozenset(audience.sources),
            countries=frozenset(audience.countries),
            tags=MappingProxyType({k: frozenset(v) for k, v in audience.tags.items()}),
        ),
        send_window=SendWindow(
            start=_hh_mm(window.start),
            end=_hh_mm(window.end),
            weekdays=frozenset(WEEKDAYS.index(day) for day in window.days),
            timezone=None if window.timezone == "lead" else window.timezone,
            default_timezone=window.default_timezone,
        ),
        exit=ExitRule(score_at_least=exit_rule.score_at_least, stages=frozenset(exit_rule.stage_in)),
        source=source,
        content_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        lines=MappingProxyType({_dotted(path): line for path, line in lines.items() if path}),
    )
