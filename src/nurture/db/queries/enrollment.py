"""Queries behind enrolling: candidate leads, the campaigns they already took, and set-based inserts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ARRAY, BigInteger, ColumnElement, any_, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.lead import Lead as LeadValue
from nurture.db.queries.tables import (
    catalog_state,
    deliveries,
    dialect_insert,
    enrollments,
    lead_value,
    leads,
    touchpoints,
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
    recipient_domain: str


async def flag_leads_if_catalog_changed(conn: AsyncConnection, catalog_hash: str) -> bool:
    """When the set of campaigns changed since the last check, mark every mailable lead for a new look."""
    stored = (
        await conn.execute(select(catalog_state.c.value).where(catalog_state.c.key == _CATALOG_KEY))
    ).scalar_one_or_none()
    if stored == catalog_hash:
        return False
    await conn.execute(
        update(leads).where(~leads.c.suppressed, ~leads.c.enroll_pending).values(enroll_pending=True)
    )
    # An upsert: two schedulers starting at once may both find the hash missing.
    stmt = dialect_insert(conn, catalog_state).values(key=_CATALOG_KEY, value=catalog_hash)
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=[catalog_state.c.key], set_={"value": catalog_hash})
    )
    return True


@dataclass(frozen=True, slots=True)
class Lane:
    """The share of leads whose id % `of` == `index`: concurrent enrollers in different lanes never meet."""

    index: int = 0
    of: int = 1


async def fetch_enrollment_candidates(
    conn: AsyncConnection, *, limit: int, lane: Lane = Lane()
) -> list[LeadValue]:
    """Leads flagged for an enrollment check, oldest first (only those of `lane`)."""
    stmt = select(leads).where(leads.c.enroll_pending).order_by(leads.c.id).limit(limit)
    if lane.of > 1:
        stmt = stmt.where(leads.c.id % lane.of == lane.index)
    return [lead_value(row) for row in await conn.execute(stmt)]


async def fetch_enrollment_history(
    conn: AsyncConnection, lead_ids: Sequence[int]
) -> dict[int, EnrollmentHistory]:
    rows = await conn.execute(
        select(enrollments.c.lead_id, enrollments.c.campaign_id, enrollments.c.state).where(
            _among(conn, enrollments.c.lead_id, lead_ids)
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
    if conn.dialect.name == "postgresql":
        # One statement over arrays: compiled once, whatever the batch size, and within bind-parameter limits.
        rows = await conn.execute(
            text(
                "INSERT INTO enrollments (lead_id, campaign_id, campaign_hash, state, enrolled_at) "
                "SELECT lead_id, campaign_id, campaign_hash, 'active', :now FROM unnest("
                "CAST(:lead_ids AS bigint[]), CAST(:campaign_ids AS varchar[]), CAST(:hashes AS varchar[])"
                ") AS t(lead_id, campaign_id, campaign_hash) ON CONFLICT DO NOTHING RETURNING lead_id, id"
            ).bindparams(bindparam("now", type_=enrollments.c.enrolled_at.type)),
            {
                "now": now,
                "lead_ids": [i.lead_id for i in items],
                "campaign_ids": [i.campaign_id for i in items],
                "hashes": [i.campaign_hash for i in items],
            },
        )
        return {row.lead_id: row.id for row in rows}
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
    stmt = dialect_insert(conn, enrollments).on_conflict_do_nothing()
    rows = await conn.execute(stmt.returning(enrollments.c.lead_id, enrollments.c.id), values)
    return {row.lead_id: row.id for row in rows}


# The columns enrolling writes into `deliveries` (also what the enrollment benchmark copies as its ceiling).
DELIVERY_COLUMNS = (
    "enrollment_id",
    "lead_id",
    "campaign_id",
    "step_id",
    "step_index",
    "recipient_domain",
    "due_at",
    "status",
)


async def insert_deliveries(conn: AsyncConnection, items: Sequence[NewDelivery]) -> None:
    """Insert planned deliveries as `pending`: one COPY on PostgreSQL, multi-row INSERTs on SQLite."""
    if not items:
        return
    records = [
        (
            d.enrollment_id,
            d.lead_id,
            d.campaign_id,
            d.step_id,
            d.step_index,
            d.recipient_domain,
            d.due_at,
            "pending",
        )
        for d in items
    ]
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        # The asyncpg connection behind SQLAlchemy's, inside the same transaction.
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "deliveries", records=records, columns=DELIVERY_COLUMNS
        )
        return
    await conn.execute(deliveries.insert(), [dict(zip(DELIVERY_COLUMNS, r, strict=True)) for r in records])


async def insert_enrolled_touchpoints(
    conn: AsyncConnection, enrolled: Sequence[tuple[int, str]], *, now: datetime
) -> None:
    """Append an `enrolled` touchpoint for each (lead id, campaign id): one COPY on PostgreSQL."""
    if not enrolled:
        return
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "touchpoints",
            records=[(lead_id, "enrolled", now, campaign_id, "{}") for lead_id, campaign_id in enrolled],
            columns=("lead_id", "kind", "occurred_at", "campaign_id", "detail"),
        )
        return
    await conn.execute(
        touchpoints.insert(),
        [
            {
                "lead_id": lead_id,
                "kind": "enrolled",
                "occurred_at": now,
                "campaign_id": campaign_id,
                "detail": {},
            }
            for lead_id, campaign_id in enrolled
        ],
    )


async def clear_enroll_pending(conn: AsyncConnection, lead_ids: Iterable[int]) -> None:
    await conn.execute(
        update(leads).where(_among(conn, leads.c.id, list(lead_ids))).values(enroll_pending=False)
    )


def _among(conn: AsyncConnection, column: ColumnElement[int], ids: Sequence[int]) -> ColumnElement[bool]:
    """`column IN ids`; on PostgreSQL as `= ANY(array)`: one parameter, not one per id."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam("ids", list(ids), type_=ARRAY(BigInteger())))
    return column.in_(ids)


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
