"""Explain one lead: its profile, how its score is made, its campaigns and timeline.

`explain_lead` backs `nurture lead show`; `lead_timeline` backs the rep's page `GET /leads/{id}`, with the
score and stage history and every touchpoint, a page at a time.

The score is recomputed at `now` with the current rules, event by event, so the explanation always adds up;
the score of the last rescore is shown beside it, and a threshold that decay alone has since taken the lead
back under is named, with when.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TypeGuard

from nurture.catalog import Catalog
from nurture.core.context import Rep
from nurture.core.lead import is_time_zone
from nurture.core.scoring import ScoreBreakdown, ScoredEvent, Thresholds, falls_below_at, score
from nurture.db.engine import Database
from nurture.db.queries.alerts import AlertSummary, fetch_alerts_of_lead, fetch_timeline
from nurture.db.queries.scoring import (
    EnrollmentRow,
    LeadRecord,
    fetch_engagement_events,
    fetch_enrollments,
    fetch_lead_by_email,
    fetch_lead_by_id,
)
from nurture.db.queries.stages import StageHistoryRow, fetch_stage_history
from nurture.db.queries.timeline import (
    TouchpointRow,
    count_touchpoints,
    fetch_touchpoint_page,
    fetch_touchpoints_of_kinds,
)
from nurture.ports import TimelineEntry

TIMELINE_PAGE: Final = 200  # touchpoints a page
HISTORY_LIMIT: Final = 200  # the latest this many score changes, stage changes and alerts


@dataclass(frozen=True, slots=True)
class DecayDrop:
    """A threshold the lead's score reached at its last rescore and fell back under by decay alone."""

    name: str  # "mql" | "hot"
    threshold: int
    since: datetime


@dataclass(frozen=True, slots=True)
class LeadExplanation:
    lead: LeadRecord
    breakdown: ScoreBreakdown  # at `scored_at`, with the rules from `rules_source`
    scored_at: datetime
    rules_source: str
    enrollments: tuple[EnrollmentRow, ...]
    timeline: tuple[TimelineEntry, ...]  # newest first
    alerts: tuple[AlertSummary, ...]  # newest first
    stage_history: tuple[StageHistoryRow, ...] = ()  # newest first, from the stage history
    rescored: int | None = None  # the score at the last rescore (`lead.score_points_at`), before decay
    below_by_decay: tuple[DecayDrop, ...] = ()  # mql first


def decay_drops(
    lead: LeadRecord, now: datetime, half_life: timedelta, thresholds: Thresholds
) -> tuple[DecayDrop, ...]:
    """The thresholds the lead's last rescore reached and decay alone has taken it back under by `now`."""
    if lead.score_points is None or lead.score_points_at is None:
        return ()
    drops = []
    for name, threshold in (("mql", thresholds.mql), ("hot", thresholds.hot)):
        since = falls_below_at(lead.score_points, lead.score_points_at, threshold, half_life)
        if since is not None and since <= now:
            drops.append(DecayDrop(name, threshold, since))
    return tuple(drops)


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
        stages = await fetch_stage_history(conn, lead.id, limit=timeline)
    rules = catalog.scoring
    return LeadExplanation(
        lead=lead,
        breakdown=score([e.event for e in logged], rules, now),
        scored_at=now,
        rules_source=rules.source,
        enrollments=tuple(enrollments),
        timeline=entries,
        alerts=tuple(alerts),
        stage_history=tuple(stages),
        rescored=None if lead.score_points is None else round(lead.score_points),
        below_by_decay=decay_drops(lead, now, rules.half_life, rules.thresholds),
    )


async def find_lead(email: str, *, db: Database) -> LeadRecord | None:
    """The lead with this (normalised) email, or None."""
    async with db.transaction() as conn:
        return await fetch_lead_by_email(conn, email)


@dataclass(frozen=True, slots=True)
class ScoreChange:
    occurred_at: datetime
    before: int
    after: int
    recomputed: bool  # by `nurture rescore` after the rules changed, not by anything the lead did


@dataclass(frozen=True, slots=True)
class StageChangeRecord:
    occurred_at: datetime
    before: str
    after: str
    reason: str | None  # "qualified: score 55 >= 50"


@dataclass(frozen=True, slots=True)
class LeadTimeline:
    """Everything a rep's page shows about one lead, with one page of its touchpoints."""

    lead: LeadRecord
    owner: Rep | None  # the lead's owner as the reps file knows them
    zone: str  # the IANA zone the page shows times in: the lead's own, else "UTC"
    breakdown: ScoreBreakdown  # at `scored_at`, with the rules from `rules_source`; oldest event first
    scored_at: datetime
    rules_source: str
    score_history: tuple[ScoreChange, ...]  # newest first
    stage_changes: tuple[StageChangeRecord, ...]  # newest first
    enrollments: tuple[EnrollmentRow, ...]  # oldest first
    alerts: tuple[AlertSummary, ...]  # newest first
    touchpoints: tuple[TouchpointRow, ...]  # newest first: this page
    touchpoint_count: int  # every touchpoint of the lead
    before: int | None  # the cursor this page starts below; None for the newest page
    older: int | None  # the cursor of the next, older page; None when this page is the last


async def lead_timeline(
    lead_id: int,
    *,
    db: Database,
    catalog: Catalog,
    now: datetime,
    limit: int = TIMELINE_PAGE,
    before: int | None = None,
) -> LeadTimeline | None:
    """The rep's view of lead `lead_id` at `now`; None if there is no such lead.

    `limit` touchpoints are returned, newest first; `before` (a page's `older`) continues below that one.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    async with db.transaction() as conn:
        lead = await fetch_lead_by_id(conn, lead_id)
        if lead is None:
            return None
        logged = await fetch_engagement_events(conn, lead_id)
        enrollments = await fetch_enrollments(conn, lead_id)
        alerts = await fetch_alerts_of_lead(conn, lead_id, limit=HISTORY_LIMIT)
        scores = await fetch_touchpoints_of_kinds(conn, lead_id, ["score_change"], limit=HISTORY_LIMIT)
        stages = await fetch_touchpoints_of_kinds(conn, lead_id, ["stage_change"], limit=HISTORY_LIMIT)
        page = await fetch_touchpoint_page(conn, lead_id, limit=limit + 1, before=before)
        count = await count_touchpoints(conn, lead_id)
    zone = lead.profile.timezone
    return LeadTimeline(
        lead=lead,
        owner=catalog.reps.get(lead.profile.owner or ""),
        zone=zone if zone and is_time_zone(zone) else "UTC",
        breakdown=score([e.event for e in logged], catalog.scoring, now),
        scored_at=now,
        rules_source=catalog.scoring.source,
        score_history=_score_changes(scores),
        stage_changes=_stage_changes(stages),
        enrollments=tuple(enrollments),
        alerts=tuple(alerts),
        touchpoints=tuple(page[:limit]),
        touchpoint_count=count,
        before=before,
        older=page[limit - 1].id if len(page) > limit else None,
    )


def _score_changes(rows: Sequence[TouchpointRow]) -> tuple[ScoreChange, ...]:
    """The `score_change` touchpoints as changes; one whose detail is not two whole numbers is left out."""
    changes = []
    for row in rows:
        before, after = row.detail.get("before"), row.detail.get("after")
        if _is_int(before) and _is_int(after):
            changes.append(ScoreChange(row.occurred_at, before, after, row.detail.get("recomputed") is True))
    return tuple(changes)


def _stage_changes(rows: Sequence[TouchpointRow]) -> tuple[StageChangeRecord, ...]:
    changes = []
    for row in rows:
        before, after, reason = (row.detail.get(k) for k in ("before", "after", "reason"))
        if isinstance(before, str) and isinstance(after, str):
            changes.append(
                StageChangeRecord(row.occurred_at, before, after, reason if isinstance(reason, str) else None)
            )
    return tuple(changes)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def scored_event_data(item: ScoredEvent) -> dict[str, object]:
    """One event of a score explanation as JSON-ready data: its points, or why it did not count."""
    event = item.event
    return {
        "id": event.id,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat(),
        "url": event.url,
        "base_points": item.base_points,
        "points": round(item.points, 2),
        "ignored": item.ignored,
    }
