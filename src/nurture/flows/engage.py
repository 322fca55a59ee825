"""Engagement that comes back from a lead. For now: unsubscribing, which stops every campaign at once.

Opens, clicks and site events join this module with the tracking web's next milestone.
"""

from __future__ import annotations

import logging
from datetime import datetime

from nurture.db.engine import Database
from nurture.db.queries.deliveries import append_touchpoint, fetch_delivery_of_lead
from nurture.db.queries.leads import lock_lead_suppression, suppress_lead

log = logging.getLogger(__name__)

UNSUBSCRIBED = "unsubscribed"


async def unsubscribe(db: Database, *, lead_id: int, delivery_id: int | None, now: datetime) -> bool:
    """Suppress a lead for good: end its enrollments, cancel its open deliveries, record the touchpoint.

    `delivery_id` names the email whose link was used; it labels the touchpoint with that campaign and step
    when it is a delivery of this lead, and is ignored otherwise.

    Returns:
        True if this call unsubscribed the lead; False if it was unsubscribed already or does not exist.
    """
    async with db.transaction() as conn:
        lead = await lock_lead_suppression(conn, lead_id)
        if lead is None:
            log.info("unsubscribe for an unknown lead lead_id=%s", lead_id)
            return False
        if lead.suppressed and lead.reason == UNSUBSCRIBED:
            return False
        # A lead suppressed for another reason (a bounce) is still recorded as unsubscribed: the person's
        # own request must outlive a mailbox that may start working again.
        await suppress_lead(conn, lead_id, reason=UNSUBSCRIBED, now=now)
        source = await fetch_delivery_of_lead(conn, delivery_id, lead_id) if delivery_id is not None else None
        await append_touchpoint(
            conn,
            lead_id=lead_id,
            kind=UNSUBSCRIBED,
            occurred_at=now,
            campaign_id=source.campaign_id if source is not None else None,
            step_id=source.step_id if source is not None else None,
            delivery_id=source.delivery_id if source is not None else None,
        )
    log.info(
        "lead unsubscribed lead_id=%s delivery_id=%s",
        lead_id,
        source.delivery_id if source is not None else None,
    )
    return True
