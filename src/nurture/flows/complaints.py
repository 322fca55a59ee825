"""Complaints: a feedback report about one of our emails suppresses its lead at once, everywhere, for good.

The lead is found by the report's signed Message-ID, or else by the original recipient. Its open deliveries
are cancelled and its enrollments exited (as for an unsubscribe), the address's hash goes into
`suppressions`, and a `complained` touchpoint is recorded. A replayed report changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.feedback import FeedbackReport, delivery_id_of
from nurture.core.lead import normalise_email
from nurture.core.privacy import address_hash
from nurture.db.engine import Database
from nurture.db.queries.deliveries import append_touchpoint
from nurture.db.queries.events import fetch_lead_ids_by_email
from nurture.db.queries.leads import lock_lead_suppression, suppress_lead
from nurture.db.queries.suppressions import (
    LeadOfDelivery,
    add_suppression,
    fetch_lead_email,
    fetch_lead_of_delivery,
)

log = logging.getLogger(__name__)
COMPLAINED: Final = "complained"


@dataclass(frozen=True, slots=True)
class ComplaintOutcome:
    lead_id: int | None  # None: no lead of ours (the address is suppressed all the same)
    delivery_id: int | None
    duplicate: bool  # the lead had complained already: nothing changed


async def record_complaint(
    db: Database, report: FeedbackReport, *, key: bytes, now: datetime
) -> ComplaintOutcome | None:
    """Suppress the lead a report is about; None when it names neither our email nor a usable address."""
    delivery_id = delivery_id_of(report.message_id, key=key) if report.message_id else None
    async with db.transaction() as conn:
        source = await fetch_lead_of_delivery(conn, delivery_id) if delivery_id is not None else None
        lead_id = source.lead_id if source is not None else await _lead_by_recipient(conn, report)
        if lead_id is None:
            return await _suppress_unknown_address(conn, report, now)
        lead = await lock_lead_suppression(conn, lead_id)
        if lead is None:
            return None
        if lead.suppressed and lead.reason == COMPLAINED:
            return ComplaintOutcome(lead_id, delivery_id if source else None, duplicate=True)
        await _suppress(conn, lead_id, source, report, now)
    log.info(
        "complaint recorded lead_id=%s delivery_id=%s feedback_type=%s",
        lead_id,
        source.delivery_id if source else None,
        report.feedback_type,
    )
    return ComplaintOutcome(lead_id, source.delivery_id if source else None, duplicate=False)


async def _suppress(
    conn: AsyncConnection,
    lead_id: int,
    source: LeadOfDelivery | None,
    report: FeedbackReport,
    now: datetime,
) -> None:
    await suppress_lead(conn, lead_id, reason=COMPLAINED, now=now)
    address = await fetch_lead_email(conn, lead_id)
    if address is not None:
        await add_suppression(conn, address_hash(address), reason=COMPLAINED, now=now)
    await append_touchpoint(
        conn,
        lead_id=lead_id,
        kind=COMPLAINED,
        occurred_at=now,
        campaign_id=source.campaign_id if source else None,
        step_id=source.step_id if source else None,
        delivery_id=source.delivery_id if source else None,
        detail={"feedback_type": report.feedback_type},
    )


async def _lead_by_recipient(conn: AsyncConnection, report: FeedbackReport) -> int | None:
    address = _normalised(report.recipient)
    if address is None:
        return None
    return (await fetch_lead_ids_by_email(conn, [address])).get(address)


async def _suppress_unknown_address(
    conn: AsyncConnection, report: FeedbackReport, now: datetime
) -> ComplaintOutcome | None:
    # A complaint about an address we hold no lead for (erased, or never imported) still makes it unsendable.
    address = _normalised(report.recipient)
    if address is None:
        return None
    added = await add_suppression(conn, address_hash(address), reason=COMPLAINED, now=now)
    return ComplaintOutcome(None, None, duplicate=not added)


def _normalised(address: str | None) -> str | None:
    if address is None:
        return None
    try:
        return normalise_email(address)
    except ValueError:
        return None
