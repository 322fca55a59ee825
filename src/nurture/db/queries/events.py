"""Queries behind engagement events: finding the lead an event is about, and inserting it once (one at a time,
or a batch of keyed events with a fixed number of statements)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.queries.tables import deliveries, dialect_insert, events, leads


async def fetch_existing_lead_ids(conn: AsyncConnection, lead_ids: Collection[int]) -> set[int]:
    """The ids among `lead_ids` that name a lead that was not erased (an erased lead records nothing)."""
    if not lead_ids:
        return set()
    rows = await conn.execute(
        select(leads.c.id).where(leads.c.id.in_(list(lead_ids)), leads.c.erased_at.is_(None))
    )
    return set(rows.scalars())


async def fetch_erased_since(conn: AsyncConnection, since: datetime | None) -> list[tuple[int, datetime]]:
    """The erased leads, each with when it was erased, erased at or after `since` (all when None)."""
    stmt = select(leads.c.id, leads.c.erased_at).where(leads.c.erased_at.is_not(None))
    if since is not None:
        stmt = stmt.where(leads.c.erased_at >= since)
    return [(row.id, row.erased_at) for row in await conn.execute(stmt)]


async def fetch_lead_ids_by_email(conn: AsyncConnection, emails: Collection[str]) -> dict[str, int]:
    """Map each of `emails` (normalised, as stored) that names a lead to the lead's id."""
    if not emails:
        return {}
    rows = await conn.execute(select(leads.c.email, leads.c.id).where(leads.c.email.in_(list(emails))))
    return {row.email: row.id for row in rows}


async def fetch_lead_email(conn: AsyncConnection, lead_id: int) -> str | None:
    """The lead's (normalised) address, or None for an unknown lead."""
    email: str | None = (await conn.execute(select(leads.c.email).where(leads.c.id == lead_id))).scalar()
    return email


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


@dataclass(frozen=True, slots=True)
class EventSource:
    """The email an open or click came from: its campaign step, and when it was sent (None: not yet)."""

    delivery_id: int
    campaign_id: str
    step_id: str
    sent_at: datetime | None


async def fetch_deliveries_of_leads(
    conn: AsyncConnection, pairs: Collection[tuple[int, int]]
) -> dict[tuple[int, int], EventSource]:
    """Map each (delivery id, lead id) in `pairs` whose delivery is that lead's to the email it names."""
    if not pairs:
        return {}
    stmt = select(
        deliveries.c.id,
        deliveries.c.lead_id,
        deliveries.c.campaign_id,
        deliveries.c.step_id,
        deliveries.c.sent_at,
    ).where(deliveries.c.id.in_({delivery_id for delivery_id, _ in pairs}))
    found = {
        (row.id, row.lead_id): EventSource(row.id, row.campaign_id, row.step_id, row.sent_at)
        for row in await conn.execute(stmt)
    }
    return {pair: found[pair] for pair in pairs if pair in found}


async def insert_keyed_events(conn: AsyncConnection, rows: Collection[Mapping[str, Any]]) -> dict[str, int]:
    """Insert events that each carry an `idempotency_key` (columns as in `insert_event`, by column name).

    Returns:
        The id of each row inserted, by its key; a key already stored (or twice in `rows`) inserts nothing.
    """
    if not rows:
        return {}
    stmt = (
        dialect_insert(conn, events)
        .on_conflict_do_nothing(index_elements=[events.c.idempotency_key])
        .returning(events.c.idempotency_key, events.c.id)
    )
    result = await conn.execute(stmt, [dict(row) for row in rows])
    return {row.idempotency_key: row.id for row in result}


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """A stored event as the replay window compares it (see `flows.engage`)."""

    lead_id: int
    type: str
    delivery_id: int | None
    properties: Mapping[str, Any]
    occurred_at: datetime
    idempotency_key: str | None


async def fetch_recent_events(
    conn: AsyncConnection, lead_ids: Collection[int], *, after: datetime, before: datetime
) -> list[RecentEvent]:
    """The events of `lead_ids` that occurred strictly between `after` and `before`."""
    if not lead_ids:
        return []
    stmt = select(
        events.c.lead_id,
        events.c.type,
        events.c.delivery_id,
        events.c.properties,
        events.c.occurred_at,
        events.c.idempotency_key,
    ).where(
        events.c.lead_id.in_(sorted(lead_ids)), events.c.occurred_at > after, events.c.occurred_at < before
    )
    return [
        RecentEvent(r.lead_id, r.type, r.delivery_id, r.properties or {}, r.occurred_at, r.idempotency_key)
        for r in await conn.execute(stmt)
    ]
