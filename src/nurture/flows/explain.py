"""Explain one lead (`nurture lead show`): its profile, how its score is made, its campaigns and timeline.

The score is recomputed at `now` with the current rules, event by event, so the explanation always adds up;
the stored score is shown beside it, and differs only until the next rescore.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nurture.catalog import Catalog
from nurture.core.scoring import ScoreBreakdown, score
from nurture.db.engine import Database
from nurture.db.queries.alerts import AlertSummary, fetch_alerts_of_lead, fetch_timeline
from nurture.db.queries.scoring import (
    EnrollmentRow,
    LeadRecord,
    fetch_engagement_events,
    fetch_enrollments,
    fetch_lead_by_email,
)
from nurture.ports import TimelineEntry


@dataclass(frozen=True, slots=True)
class LeadExplanation:
    lead: LeadRecord
    breakdown: ScoreBreakdown  # at `scored_at`, with the rules from `rules_source`
    scored_at: datetime
    rules_source: str
    enrollments: tuple[EnrollmentRow, ...]
    timeline: tuple[TimelineEntry, ...]  # newest first
    alerts: tuple[AlertSummary, ...]  # newest first


async def explain_lead(
    email: str, *, db: Database, catalog: Catalog, now: datetime, timeline: int = 20
) -> LeadExplanation | None:
    """Everything `nurture lead show` prints about the lead with this (normalised) email; None if unknown."""
    async with db.transaction() as conn:
        lead = await fetch_lead_by_email(conn, email)
        if lead is None:
            return None
        logged = await fetch_engagement_events(conn, lead.id)
        enrollments = await fetch_enrollments(conn, lead.id)
        entries = await fetch_timeline(conn, lead.id, limit=timeline)
        alerts = await fetch_alerts_of_lead(conn, lead.id, limit=timeline)
    rules = catalog.scoring
    return LeadExplanation(
        lead=lead,
        breakdown=score([e.event for e in logged], rules, now),
        scored_at=now,
        rules_source=rules.source,
        enrollments=tuple(enrollments),
        timeline=entries,
        alerts=tuple(alerts),
    )


async def find_lead(email: str, *, db: Database) -> LeadRecord | None:
    """The lead with this (normalised) email, or None."""
    async with db.transaction() as conn:
        return await fetch_lead_by_email(conn, email)
