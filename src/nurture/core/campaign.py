"""Campaigns as frozen values, parsed and validated from YAML text.

`parse_campaign(text, source=...)` is pure: the catalog reads the file and checks templates; this module
checks the shape and the values and reports every problem as `file:line: message`, all at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from types import MappingProxyType
from typing import Final

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


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

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)
