"""Queries behind enrolling: candidate leads, the campaigns they already took, and set-based inserts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.lead import Lead as LeadValue
from nurture.db.queries.tables import (
    catalog_state,
    deliveries,
    dialect_insert,
    enrollments,
    lead_value,
    leads,
)

_CATALOG_KEY = "enroll_catalog_hash"


@dataclass(frozen=True, slots=True)
class EnrollmentHistory:
    taken: frozenset[str]  # campaign ids the lead was ever enrolled in
    has_active: bool


@dataclass(frozen=True, slots=True)
class NewEnrollment:
    lead_id: int
    campaign_id: str
    campaign_hash: str


@dataclass(frozen=True, slots=True)
class NewDelivery:
    enrollment_id: int
    lead_id: int
    campaign_id: str
    step_id: str
    step_index: int
    due_at: datetime


async def flag_leads_if_catalog_changed(conn: AsyncConnection, catalog_hash: str) -> bool:
    """When the set of campaigns changed since the last check, mark every mailable lead for a new look."""
    stored = (
        await conn.execute(select(catalog_state.c.value).where(catalog_state.c.key == _CATALOG_KEY))
    ).scalar_one_or_none()
    if stored == catalog_hash:
        return False
    await conn.execute(update(leads).where(~leads.c.suppressed).values(enroll_pending=True))
    if stored is None:
        await conn.execute(catalog_state.insert().values(key=_CATALOG_KEY, value=catalog_hash))
    else:
        await conn.execute(
            update(catalog_state).where(catalog_state.c.key == _CATALOG_KEY).values(value=catalog_hash)
        )
    return True


async def fetch_enrollment_candidates(conn: AsyncConnection, *, limit: int) -> list[LeadValue]:
    """Leads flagged for an enrollment check, oldest first."""
    rows = await conn.execute(select(leads).where(leads.c.enroll_pending).order_by(leads.c.id).limit(limit))
    return [lead_value(row) for row in rows]


async def fetch_enrollment_history(
    conn: AsyncConnection, lead_ids: Sequence[int]
) -> dict[int, EnrollmentHistory]:
    rows = await conn.execute(
        select(enrollments.c.lead_id, enrollments.c.campaign_id, enrollments.c.state).where(
            enrollments.c.lead_id.in_(lead_ids)
        )
    )
    taken: dict[int, set[str]] = defaultdict(set)
    active: set[int] = set()
    for lead_id, campaign_id, state in rows:
        taken[lead_id].add(campaign_id)
        if state == "active":
            active.add(lead_id)
    return {i: EnrollmentHistory(frozenset(taken.get(i, ())), i in active) for i in lead_ids}


async def insert_enrollments(
    conn: AsyncConnection, items: Sequence[NewEnrollment], *, now: datetime
) -> dict[int, int]:
    """Insert enrollments, skipping any a concurrent scheduler already made; return lead id -> enrollment id
    for the rows this call inserted."""
    if not items:
        return {}
    values = [
        {
            "lead_id": i.lead_id,
            "campaign_id": i.campaign_id,
            "campaign_hash": i.campaign_hash,
            "state": "active",
            "enrolled_at": now,
        }
        for i in items
    ]
    stmt = dialect_insert(conn, enrollments).values(values).on_conflict_do_nothing()
    rows = await conn.execute(stmt.returning(enrollments.c.lead_id, enrollments.c.id))
    return {row.lead_id: row.id for row in rows}


async def insert_deliveries(conn: AsyncConnection, items: Sequence[NewDelivery]) -> None:
    if items:
        await conn.execute(
            deliveries.insert(),
            [
                {
                    "enrollment_id": d.enrollment_id,
                    "lead_id": d.lead_id,
                    "campaign_id": d.campaign_id,
                    "step_id": d.step_id,
                    "step_index": d.step_index,
                    "due_at": d.due_at,
                    "status": "pending",
                }
                for d in items
            ],
        )


async def clear_enroll_pending(conn: AsyncConnection, lead_ids: Iterable[int]) -> None:
    await conn.execute(update(leads).where(leads.c.id.in_(list(lead_ids))).values(enroll_pending=False))


async def end_enrollment(
    conn: AsyncConnection, enrollment_id: int, *, state: str, reason: str | None, now: datetime
) -> None:
    """Close an enrollment, cancel its open deliveries, and let its lead be considered for other campaigns."""
    lead_id = (
        await conn.execute(
            update(enrollments)
            .where(enrollments.c.id == enrollment_id, enrollments.c.state == "active")
            .values(state=state, exit_reason=reason, ended_at=now)
            .returning(enrollments.c.lead_id)
        )
    ).scalar_one_or_none()
    if lead_id is None:
        return
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.enrollment_id == enrollment_id, deliveries.c.status.in_(("pending", "claimed")))
        .values(status="cancelled", last_error=reason)
    )
    await conn.execute(update(leads).where(leads.c.id == lead_id).values(enroll_pending=True))
