"""Queries on `suppressions` (addresses kept only as hashes) and on erasing a lead's personal data."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.privacy import ERASED_LEAD_FIELDS, address_hash, erased_email, scrubbed_detail
from nurture.db.models import Suppression
from nurture.db.queries.tables import alerts, deliveries, dialect_insert, events, leads, touchpoints


def _suppressions_table() -> Table:
    table = Suppression.__table__
    assert isinstance(table, Table)
    return table


suppressions = _suppressions_table()
ALERT_WITHDRAWN = "withdrawn"  # the status of an alert whose lead was erased before it was sent


@dataclass(frozen=True, slots=True)
class LeadOfDelivery:
    lead_id: int
    delivery_id: int
    campaign_id: str
    step_id: str


async def add_suppression(conn: AsyncConnection, email_hash: str, *, reason: str, now: datetime) -> bool:
    """Keep `email_hash` unsendable; False when it was already (the first reason stays)."""
    stmt = (
        dialect_insert(conn, suppressions)
        .values(email_hash=email_hash, reason=reason, created_at=now)
        .on_conflict_do_nothing()
        .returning(suppressions.c.email_hash)
    )
    return (await conn.execute(stmt)).first() is not None


async def fetch_suppressed(conn: AsyncConnection, hashes: Collection[str]) -> dict[str, str]:
    """Map each of `hashes` that is suppressed to its reason."""
    if not hashes:
        return {}
    rows = await conn.execute(
        select(suppressions.c.email_hash, suppressions.c.reason).where(
            suppressions.c.email_hash.in_(list(hashes))
        )
    )
    return {row.email_hash: row.reason for row in rows}


async def suppress_leads_by_email(conn: AsyncConnection, reasons: Mapping[str, str], *, now: datetime) -> int:
    """Flag the leads with these (normalised) addresses as suppressed, each with its reason; returns how many
    were not already. They have no enrollment yet to end: they are new, or were suppressed before."""
    changed = 0
    for address, reason in reasons.items():
        result = await conn.execute(
            update(leads)
            .where(leads.c.email == address, leads.c.suppressed.is_(False))
            .values(suppressed=True, suppressed_reason=reason, updated_at=now)
        )
        changed += result.rowcount
    return changed


async def fetch_lead_of_delivery(conn: AsyncConnection, delivery_id: int) -> LeadOfDelivery | None:
    stmt = select(deliveries.c.lead_id, deliveries.c.campaign_id, deliveries.c.step_id).where(
        deliveries.c.id == delivery_id
    )
    row = (await conn.execute(stmt)).first()
    return None if row is None else LeadOfDelivery(row.lead_id, delivery_id, row.campaign_id, row.step_id)


async def fetch_lead_email(conn: AsyncConnection, lead_id: int) -> str | None:
    return (await conn.execute(select(leads.c.email).where(leads.c.id == lead_id))).scalar_one_or_none()


async def erase_lead_data(conn: AsyncConnection, lead_id: int, *, now: datetime) -> None:
    """Blank the lead's personal fields and replace its address; scrub its events, touchpoints and alerts."""
    blank: dict[str, Any] = dict.fromkeys(ERASED_LEAD_FIELDS)
    await conn.execute(
        update(leads)
        .where(leads.c.id == lead_id)
        .values(**blank, email=erased_email(lead_id), tags={}, erased_at=now, updated_at=now)
    )
    for table, column in ((events, events.c.properties), (touchpoints, touchpoints.c.detail)):
        rows = (await conn.execute(select(table.c.id, column).where(table.c.lead_id == lead_id))).all()
        for row_id, detail in rows:
            await conn.execute(
                update(table).where(table.c.id == row_id).values({column.key: scrubbed_detail(detail or {})})
            )
    # An alert's reason and detail quote the lead's activity (pages, names): only the trigger and scores stay.
    await conn.execute(
        update(alerts).where(alerts.c.lead_id == lead_id).values(reason="(erased)", detail={}, owner=None)
    )
    # An alert not sent yet is never sent: nobody is to call a person who asked to be forgotten.
    await conn.execute(
        update(alerts)
        .where(alerts.c.lead_id == lead_id, alerts.c.status == "pending")
        .values(status=ALERT_WITHDRAWN)
    )
    # Delivery errors may quote the SMTP server's reply, which often repeats the address.
    await conn.execute(update(deliveries).where(deliveries.c.lead_id == lead_id).values(last_error=None))


async def suppress_listed_addresses(conn: AsyncConnection, emails: Collection[str], *, now: datetime) -> int:
    """Suppress the leads among `emails` (normalised) whose address hash is in `suppressions`: an address
    that complained or was erased stays unsendable when it is imported again. Returns how many changed."""
    by_hash = {address_hash(e): e for e in emails}
    listed = await fetch_suppressed(conn, by_hash.keys())
    return await suppress_leads_by_email(conn, {by_hash[h]: reason for h, reason in listed.items()}, now=now)
