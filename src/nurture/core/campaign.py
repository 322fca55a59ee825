"""Campaigns as frozen values, parsed and validated from YAML text.

`parse_campaign(text, source=...)` is pure: the catalog reads the file and checks templates; this module
checks the shape and the values and reports every problem as `file:line: message`, all at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import PurePath
from types import MappingProxyType
from typing import Any, Literal

from pydantic import ValidationError

from nurture.core._campaign_schema import (
    MODELS,
    SLUG,
    WEEKDAYS,
    CampaignModel,
    StepModel,
    cross_checks,
)
from nurture.core._yaml import KeyPath, dotted, load_yaml, validate_yaml
from nurture.core.branching import Condition
from nurture.errors import CampaignError

__all__ = [
    "WEEKDAYS",
    "Audience",
    "Campaign",
    "ChangePolicy",
    "ExitRule",
    "MissedPolicy",
    "RepTask",
    "SendWindow",
    "Sender",
    "Step",
    "Variant",
    "parse_campaign",
    "postal_address_of",
    "salvage_campaign",
]


MissedPolicy = Literal["next_window", "skip"]
ChangePolicy = Literal["keep", "follow"]


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Local hours and weekdays in which a lead may receive mail."""

    start: time = time(9)
    end: time = time(17)
    weekdays: frozenset[int] = frozenset(range(5))  # Monday == 0
    timezone: str | None = None  # None: the lead's own zone
    default_timezone: str = "UTC"  # for leads without a zone
    skip_holidays: bool = False  # public holidays of the lead's country are not send days
    # A touch dispatched after its window closed: sent in the next window, or skipped with the reason.
    missed: MissedPolicy = "next_window"


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
class Variant:
    """One arm of a step's A/B test: overrides the step's subject and/or templates. The choice is a pure
    function of the lead and the step (weights decide the share), recorded on the delivery."""

    id: str
    weight: int = 1
    subject: str | None = None  # None: the step's own
    template: str | None = None
    text_template: str | None = None


@dataclass(frozen=True, slots=True)
class RepTask:
    """A human touch: instead of an email, the step alerts the lead's rep to do something (call the lead)."""

    title: str  # a Jinja2 template, e.g. "Call {{ lead.first_name }} at {{ lead.company }}"
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    id: str  # stable slug: part of a delivery's identity
    day: int  # offset from the first send opportunity: calendar days, or business days (below)
    subject: str  # a Jinja2 template ("" for a task step)
    template: str  # HTML template path, relative to the templates folder ("" for a task step)
    text_template: str | None = None  # plain-text template; derived from the HTML when absent
    variants: tuple[Variant, ...] = ()
    when: Condition | None = None  # the step runs only if this holds at send time
    skip_if: Condition | None = None  # ...and is skipped (with the reason recorded) if this holds
    task: RepTask | None = None  # a rep task instead of an email
    business_days: bool = False  # `day` counts send-window days that are not holidays (`business_days: N`)


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
    # A touch found more than this late (say the scheduler was down) is skipped with the reason recorded;
    # None: it goes out in the lead's next send window, however late.
    skip_late_after: timedelta | None = None
    # What a new version of the file does to leads already enrolled: "keep" the plan they started (steps added
    # later apply to new enrollments), or "follow" it (pending deliveries re-planned to the new steps).
    on_change: ChangePolicy = "keep"
    source: str = "<string>"  # the file it came from
    content_hash: str = ""  # sha256 of the file's text
    text: str = field(default="", compare=False, repr=False)  # the file's text, kept as a version snapshot
    # The file's line of each key, as "steps[0].template": lets the catalog point at a missing template.
    lines: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def line_of(self, *path: str | int) -> int | None:
        """The line of a key in the campaign's file, e.g. `line_of("steps", 0, "template")`."""
        return self.lines.get(dotted(path))

    @property
    def sends_email(self) -> bool:
        """True when a step is an email (not every step a rep task): then it needs a postal address."""
        return any(step.task is None for step in self.steps)


def postal_address_of(campaign: Campaign, fallback: str | None) -> str | None:
    """The postal address `campaign`'s emails show: its `sender.postal_address`, else `fallback` (the
    `NURTURE_POSTAL_ADDRESS` setting); None when neither gives one (blank counts as none)."""
    for candidate in (campaign.sender.postal_address, fallback):
        if candidate is not None and candidate.strip():
            return candidate
    return None


# --- parsing ------------------------------------------------------------------------------------------------


def parse_campaign(text: str, *, source: str) -> Campaign:
    """Validate one campaign file's text and return it as a `Campaign`.

    Raises:
        ConfigErrors: every problem in the file at once, each a `CampaignError` with its 1-based line.
    """
    model, lines = validate_yaml(
        text,
        CampaignModel,
        source=source,
        error=CampaignError,
        models=MODELS,
        cross_checks=cross_checks,
        shape="a campaign file holds keys such as id, name, sender and steps",
    )
    return _to_campaign(model, source=source, text=text, lines=lines)


def salvage_campaign(text: str, *, source: str) -> Campaign | None:
    """What can still be checked of a campaign file that `parse_campaign` refuses: a campaign holding only
    the steps that are valid on their own (each at the lines of its file), with the file's `id` (or its
    name) and the sender's `postal_address` as written. None when no step is valid.

    It is never run or sent: it lets one validation report the templates of a file's good steps together
    with the file's other problems.
    """
    data, lines, _ = load_yaml(text)
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        return None
    kept: list[Step] = []
    at: dict[int, int] = {}  # index in the file -> index in the salvaged campaign
    for index, raw in enumerate(steps):
        step = _valid_step(raw)
        if step is not None:
            at[index] = len(kept)
            kept.append(step)
    if not kept:
        return None
    assert isinstance(data, dict)
    raw_id, sender = data.get("id"), data.get("sender")
    postal = sender.get("postal_address") if isinstance(sender, dict) else None
    campaign_id = raw_id if isinstance(raw_id, str) and SLUG.fullmatch(raw_id) else PurePath(source).stem
    return Campaign(
        id=campaign_id,
        name=str(data.get("name") or campaign_id),
        sender=Sender("", postal_address=postal if isinstance(postal, str) else None),
        steps=tuple(kept),
        source=source,
        lines=MappingProxyType(
            {dotted(_moved(path, at)): line for path, line in lines.items() if path and _kept(path, at)}
        ),
    )


def _valid_step(raw: Any) -> Step | None:
    """The step `raw` describes when it is valid on its own and is a whole email or a whole task."""
    try:
        model = StepModel.model_validate(raw)
    except ValidationError:
        return None
    if model.task is None and not (model.subject and model.template):
        return None
    return _to_step(model)


def _kept(path: KeyPath, at: Mapping[int, int]) -> bool:
    return path[0] != "steps" or len(path) == 1 or path[1] in at


def _moved(path: KeyPath, at: Mapping[int, int]) -> KeyPath:
    if path[0] == "steps" and len(path) > 1 and isinstance(path[1], int):
        return ("steps", at[path[1]], *path[2:])
    return path


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
        steps=tuple(_to_step(s) for s in model.steps),
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
            skip_holidays=window.skip_holidays,
            missed=window.missed,
        ),
        exit=ExitRule(score_at_least=exit_rule.score_at_least, stages=frozenset(exit_rule.stage_in)),
        skip_late_after=timedelta(hours=model.late.skip_after_hours) if model.late else None,
        on_change=model.on_change,
        source=source,
        content_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        text=text,
        lines=MappingProxyType({dotted(path): line for path, line in lines.items() if path}),
    )


def _to_step(model: StepModel) -> Step:
    # The cross checks guarantee exactly one offset, and a subject and template for an email step.
    business = model.business_days is not None
    task = RepTask(model.task.title, model.task.note) if model.task else None
    return Step(
        id=model.id,
        day=(model.business_days if business else model.day) or 0,
        subject=model.subject or "",
        template=model.template or "",
        text_template=model.text_template,
        variants=tuple(
            Variant(v.id, v.weight, v.subject, v.template, v.text_template) for v in model.variants
        ),
        when=model.when,
        skip_if=model.skip_if,
        task=task,
        business_days=business,
    )
