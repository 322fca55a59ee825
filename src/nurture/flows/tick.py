"""The scheduler's two jobs: enroll leads that fit a campaign, and dispatch deliveries that are due.

Both are safe to run twice at once (unique keys and claims decide), so a second scheduler can only waste
work, never duplicate it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.catalog import Catalog
from nurture.core.campaign import Campaign
from nurture.core.lead import Lead
from nurture.core.lifecycle import choose_campaign
from nurture.core.ratelimit import RateLimits, recipient_domain
from nurture.core.schedule import DaysOff, PlannedDelivery, lead_zone, plan_deliveries
from nurture.db.engine import Database
from nurture.db.queries.claims import claim_due_deliveries, mark_stale_sending_unknown, skip_late_deliveries
from nurture.db.queries.enrollment import (
    Lane,
    NewDelivery,
    NewEnrollment,
    clear_enroll_pending,
    fetch_enrollment_candidates,
    fetch_enrollment_history,
    flag_leads_if_catalog_changed,
    insert_deliveries,
    insert_enrolled_touchpoints,
    insert_enrollments,
)
from nurture.flows.decay import refresh_scores
from nurture.flows.versions import apply_campaign_versions

log = logging.getLogger(__name__)

ENROLL_LANES = 2


@dataclass(frozen=True, slots=True)
class DispatchResult:
    claimed: list[int]  # delivery ids to enqueue, earliest due first
    unknown: list[int]  # deliveries whose worker died mid-send: reported, never re-sent
    skipped_late: list[int]  # found later than their campaign's `skip_late_after`: skipped, with a touchpoint


async def enroll(db: Database, catalog: Catalog, now: datetime, *, batch_size: int = 5000) -> int:
    """Enroll every flagged lead into the first campaign (by priority) it fits; return how many were.

    Scores that decay lowered by `now` are refreshed first, so audiences see the score as of now.
    """
    await refresh_scores(db, catalog, now)
    campaigns = catalog.ordered()
    async with db.transaction() as conn:
        await flag_leads_if_catalog_changed(conn, _fingerprint(campaigns))
        await apply_campaign_versions(conn, catalog, now)  # snapshot versions; re-plan `on_change: follow`
    # On PostgreSQL two lanes (leads with even and odd ids) write at once, so the database's work on one
    # batch overlaps the planning of the other; SQLite serialises writers, so it gets one lane.
    lanes = 1 if db.is_sqlite else ENROLL_LANES
    async with asyncio.TaskGroup() as group:  # a failing lane stops the other
        tasks = [
            group.create_task(_enroll_lane(db, catalog, now, batch_size, Lane(k, lanes)))
            for k in range(lanes)
        ]
    enrolled = sum(task.result() for task in tasks)
    if enrolled:
        log.info("enrolled leads=%d", enrolled)
    return enrolled


async def _enroll_lane(db: Database, catalog: Catalog, now: datetime, batch_size: int, lane: Lane) -> int:
    campaigns = catalog.ordered()
    enrolled = 0
    while True:
        async with db.transaction() as conn:
            candidates = await fetch_enrollment_candidates(conn, limit=batch_size, lane=lane)
            if not candidates:
                return enrolled
            history = await fetch_enrollment_history(conn, [lead.id for lead in candidates])
            chosen = {
                lead.id: (lead, campaign)
                for lead in candidates
                if not history[lead.id].has_active
                and (campaign := choose_campaign(lead, campaigns, history[lead.id].taken)) is not None
            }
            enrolled += await _insert_enrollments(conn, catalog, chosen, now)
            await clear_enroll_pending(conn, [lead.id for lead in candidates])


async def _insert_enrollments(
    conn: AsyncConnection, catalog: Catalog, chosen: dict[int, tuple[Lead, Campaign]], now: datetime
) -> int:
    new = [NewEnrollment(lead.id, c.id, c.content_hash) for lead, c in chosen.values()]
    enrollment_ids = await insert_enrollments(conn, new, now=now)
    # Every lead of a campaign in one zone (and one country, where its holidays count), enrolled at one
    # instant, gets the same plan: compute it once.
    plans: dict[tuple[str, str, str | None], tuple[PlannedDelivery, ...]] = {}
    planned: list[NewDelivery] = []
    for lead_id, enrollment_id in enrollment_ids.items():
        lead, campaign = chosen[lead_id]
        tz = lead_zone(lead.timezone, campaign.send_window)
        country = lead.country if campaign.send_window.skip_holidays else None
        key = (campaign.id, tz.key, country)
        if key not in plans:
            plans[key] = _plan(campaign, now, tz, catalog.days_off(campaign, country))
        domain = recipient_domain(lead.email)
        planned.extend(
            NewDelivery(enrollment_id, lead_id, campaign.id, p.step_id, p.step_index, p.due_at, domain)
            for p in plans[key]
        )
    await insert_deliveries(conn, planned)
    await insert_enrolled_touchpoints(
        conn, [(lead_id, chosen[lead_id][1].id) for lead_id in enrollment_ids], now=now
    )
    return len(enrollment_ids)


def _plan(campaign: Campaign, now: datetime, tz: ZoneInfo, days_off: DaysOff) -> tuple[PlannedDelivery, ...]:
    return plan_deliveries(
        campaign.steps, enrolled_at=now, window=campaign.send_window, tz=tz, days_off=days_off
    )


async def dispatch(
    db: Database,
    now: datetime,
    *,
    lease: timedelta,
    limit: int,
    stale_after: timedelta,
    limits: RateLimits | None = None,
    late_after: Mapping[str, timedelta] | None = None,
    paused: Collection[str] = (),
) -> DispatchResult:
    """Claim the due deliveries (and those whose claim lapsed) within each domain's rate limit, leaving out
    `paused` domains; skip touches later than their campaign allows (`late_after`, see `late_rules`); mark
    abandoned sends unknown."""
    async with db.transaction() as conn:
        unknown = await mark_stale_sending_unknown(conn, now=now, older_than=stale_after)
    skipped: list[int] = []
    if late_after:
        async with db.transaction() as conn:
            skipped = await skip_late_deliveries(conn, now=now, late_after=late_after)
    async with db.transaction() as conn:
        claimed = await claim_due_deliveries(
            conn, now=now, lease=lease, limit=limit, limits=limits, paused=paused
        )
    for delivery_id in unknown:
        log.warning("delivery outcome unknown delivery_id=%s: not re-sent, needs a look", delivery_id)
    if skipped:
        log.warning("skipped late deliveries=%d (later than their campaign's skip_late_after)", len(skipped))
    return DispatchResult(claimed=claimed, unknown=unknown, skipped_late=skipped)


def late_rules(catalog: Catalog) -> dict[str, timedelta]:
    """Campaign id -> how late a touch may go out before it is skipped, for campaigns that set it."""
    return {c.id: c.skip_late_after for c in catalog.ordered() if c.skip_late_after is not None}


def _fingerprint(campaigns: Sequence[Campaign]) -> str:
    """Changes whenever a campaign is added, removed or edited."""
    text = "\n".join(f"{c.id}:{c.content_hash}" for c in campaigns)
    return hashlib.sha256(text.encode()).hexdigest()
