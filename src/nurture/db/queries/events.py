"""Queries behind engagement events: finding the lead an event is about, and inserting it once."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.queries.tables import dialect_insert, events, leads


async def fetch_existing_lead_ids(conn: AsyncConnection, lead_ids: Collection[int]) -> set[int]:
    """The ids among `lead_ids` that name a lead."""
    if not lead_ids:
        return set()
    rows = await conn.execute(select(leads.c.id).where(leads.c.id.in_(list(lead_ids))))
    return set(rows.scalars())


async def fetch_lead_ids_by_email(conn: AsyncConnection, emails: Collection[str]) -> dict[str, int]:
    """Map each of `emails` (normalised, as stored) that names a lead to the lead's id."""
    if not emails:
        return {}
    rows = await conn.execute(select(leads.c.email, leads.c.id).where(leads.c.email.in_(list(emails))))
    return {row.email: row.id for row in rows}


async def insert_event(
    conn: AsyncConnection,
    *,
    lead_id: int,
    event_type: str,
    occurred_at: datetime,
    received_at: datetime,
    delivery_id: int | None,
    idempotency_key: str | None,
    properties: Mapping[str, Any],
) -> int | None:
    """Insert one event and return its id; None when an event with `idempotency_key` is already stored."""
    stmt = (
        dialect_insert(conn, events)
        .values(
            lead_id=lead_id,
            type=event_type,
            occurred_at=occurred_at,
            received_at=received_at,
            delivery_id=delivery_id,
            idempotency_key=idempotency_key,
            properties=dict(properties),
        )
        .on_conflict_do_nothing(index_elements=[events.c.idempotency_key])
        .returning(events.c.id)
    )
    event_id: int | None = (await conn.execute(stmt)).scalar_one_or_none()
    return event_id
