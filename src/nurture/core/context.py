"""The template context: exactly what a template may see (DESIGN §7), and nothing else.

Values are plain dicts of strings and numbers: no settings, no environment, no Python objects.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from types import MappingProxyType
from typing import Any

from nurture.core.campaign import Campaign, Step
from nurture.core.lead import PROFILE_FIELDS

# Fields of a lead that templates see (besides `tags`); all present, None when unknown.
LEAD_FIELDS = ("email", *PROFILE_FIELDS, "grade", "stage", "score")


@dataclass(frozen=True, slots=True)
class Rep:
    """A sales rep, from the reps file."""

    email: str
    name: str
    title: str | None = None
    phone: str | None = None
    notify_urls: tuple[str, ...] = ()  # where alerts go besides the rep's email (Apprise URLs)
    active: bool = True  # False while away: gets no new leads round-robin


@dataclass(frozen=True, slots=True)
class LeadProfile:
    """A lead as templates see it."""

    email: str
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    title: str | None = None
    industry: str | None = None
    company_size: str | None = None
    country: str | None = None
    timezone: str | None = None
    phone: str | None = None
    owner: str | None = None
    grade: str | None = None
    stage: str = "lead"
    score: int = 0
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


SAMPLE_LEAD = LeadProfile(
    email="mei.lin@example.com",
    first_name="Mei",
    last_name="Lin",
    company="Example Logistics",
    title="COO",
    industry="Logistics",
    company_size="201-500",
    country="TW",
    timezone="Asia/Taipei",
    owner="rep@example.com",
    grade="nurturable",
    stage="lead",
    score=12,
    tags=MappingProxyType({"source": "demo_homepage", "utm_source": "google"}),
)
SAMPLE_REP = Rep(email="rep@example.com", name="Sam Rivera", title="Account Executive")


def owner_of(lead: LeadProfile, reps: Mapping[str, Rep], fallback: Rep) -> Rep:
    """The lead's rep, or `fallback` (the campaign's sender) when it has none or an unknown one."""
    return reps.get(lead.owner or "", fallback)


def template_context(
    lead: LeadProfile,
    *,
    owner: Rep,
    campaign: Campaign,
    step: Step,
    unsubscribe_url: str,
    postal_address: str,
) -> dict[str, Any]:
    """Build the context every subject, HTML and text template is rendered with."""
    lead_dict: dict[str, Any] = {name: getattr(lead, name) for name in LEAD_FIELDS}
    lead_dict["tags"] = dict(lead.tags)
    return {
        "lead": lead_dict,
        "owner": {"name": owner.name, "email": owner.email, "title": owner.title, "phone": owner.phone},
        "campaign": {"id": campaign.id, "name": campaign.name},
        "step": {"id": step.id, "day": step.day},
        "unsubscribe_url": unsubscribe_url,
        "postal_address": postal_address,
    }


@functools.lru_cache(maxsize=256)  # a handful of campaign senders, asked once per email sent
def sender_as_rep(from_address: str) -> Rep:
    """The rep to show when a lead has none: the campaign's sender ("Acme Growth <growth@acme.example>")."""
    name, address = parseaddr(from_address)
    return Rep(email=address, name=name or address)
