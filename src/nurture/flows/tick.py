"""The scheduler's two jobs: enroll leads that fit a campaign, and dispatch deliveries that are due.

Both are safe to run twice at once (unique keys and claims decide), so a second scheduler can only waste
work, never duplicate it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.catalog import Catalog
from nurture.core.campaign import Campaign
from nurture.core.lead import Lead
from nurture.core.lifecycle import choose_campaign
from nurture.core.schedule import lead_zone, plan_deliveries
from nurture.db.engine import Database
from nurture.db.queries.deliveries import append_touchpoints, claim_due_deliveries, mark_stale_sending_unknown
from nurture.db.queries.enrollment import (
    NewDelivery,
    NewEnrollment,
    clear_enroll_pending,
    fetch_enrollment_candidates,
    fetch_enrollment_history,
    flag_leads_if_catalog_changed,
    insert_deliveries,
    insert_enrollments,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchResult:
    claimed: list[int]  # delivery ids to enqueue, earliest due first
    unknown: list[int]  # deliveries whose worker died mid-send: reported, never re-sent


async def enroll(db: Database, catalog: Catalog, now: datetime, *, batch_size: int = 2000) -> int:
    """Enroll every flagged lead into the first campaign (by priority) it fits; return how many were."""
    campaigns = catalog.ordered()
    async with db.transaction() as conn:
        await flag_leads_if_catalog_changed(conn, _fingerprint(campaigns))
    enrolled = 0
    while True:
        async with db.transaction() as conn:
            candidates = await fetch_enrollment_candidates(conn, limit=batch_size)
            if not candidates:
                break
            history = await fetch_enrollment_history(conn, [lead.id for lead in candidates])
            chosen = {
                lead.id: (lead, campaign)
                for lead in candidates
                if not history[lead.id].has_active
                and (campaign := choose_campaign(lead, campaigns, history[lead.id].taken)) is not None
            }
            enrolled += await _insert_enrollments(conn, chosen, now)
            await clear_enroll_pending(conn, [lead.id for lead in candidates])
    if enrolled:
        log.info("enrolled leads=%d", enrolled)
    return enrolled


async def _insert_enrollments(
    conn: AsyncConnection, chosen: dict[int, tuple[Lead, Campaign]], now: datetime
) -> int:
    new = [NewEnrollment(lead.id, c.id, c.content_hash) for lead, c in chosen.values()]
    enrollment_ids = await insert_enrollments(conn, new, now=now)
    planned: list[NewDelivery] = []
    for lead_id, enrollment_id in enrollment_ids.items():
        lead, campaign = chosen[lead_id]
        tz = lead_zone(lead.timezone, campaign.send_window)
        for plan in plan_deliveries(campaign.steps, enrolled_at=now, window=campaign.send_window, tz=tz):
            planned.append(
                NewDelivery(enrollment_id, lead_id, campaign.id, plan.step_id, plan.step_index, plan.due_at)
            )
    await insert_deliveries(conn, planned)
    await append_touchpoints(
        conn,
        [
            {"lead_id": lead_id, "kind": "enrolled", "occurred_at": now, "campaign_id": chosen[lead_id][1].id}
            for lead_id in enrollment_ids
        ],
    )
    return len(enrollment_ids)


async def dispatch(
    db: Database, now: datetime, *, lease: timedelta, limit: int, stale_after: timedelta
) -> DispatchResult:
    """Claim the due deliveries (and those whose claim lapsed); mark abandoned sends unknown."""
    async with db.transaction() as conn:
        unknown = await mark_stale_sending_unknown(conn, now=now, older_than=stale_after)
    async with db.transaction() as conn:
        claimed = await claim_due_deliveries(conn, now=now, lease=lease, limit=limit)
    for delivery_id in unknown:
        log.warning("delivery outcome unknown delivery_id=%s: not re-sent, needs a look", delivery_id)
    return DispatchResult(claimed=claimed, unknown=unknown)


def _fingerprint(campaigns: Sequence[Campaign]) -> str:
    """Changes whenever a campaign is added, removed or edited."""
    text = "\n".join(f"{c.id}:{c.content_hash}" for c in campaigns)
    return hashlib.sha256(text.encode()).hexdigest()
