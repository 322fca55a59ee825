"""Engagement that comes back from a lead: events (opens, clicks, site visits, API events) and unsubscribing.

`record_event` stores one event and the touchpoint that puts it on the lead's timeline, once: an event that
carries an idempotency key already stored is a replay, and changes nothing. Re-scoring is not done here; the
caller enqueues it for the leads this returns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.engine import Database
from nurture.db.queries.deliveries import append_touchpoint, fetch_delivery_of_lead
from nurture.db.queries.events import fetch_existing_lead_ids, fetch_lead_ids_by_email, insert_event
from nurture.db.queries.leads import lock_lead_suppression, suppress_lead

log = logging.getLogger(__name__)

UNSUBSCRIBED = "unsubscribed"
# An event's type is also its touchpoint's kind, a 40-character column.
EVENT_TYPE: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One engagement signal about a lead, as received (pixel, click, site beacon or the events API)."""

    lead_id: int
    type: str  # email_open, email_click, page_visit, content_download, ..., or a custom slug
    occurred_at: datetime
    url: str | None = None
    user_agent: str | None = None
    delivery_id: int | None = None  # the email it came from, when known
    idempotency_key: str | None = None  # a replay with the same key is recorded once
    properties: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not EVENT_TYPE.fullmatch(self.type):
            raise ValueError(f"event type {self.type!r} is not a lower-case slug of up to 40 characters")
        if self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    event_id: int
    lead_id: int


class NotRecorded(StrEnum):
    DUPLICATE = "duplicate"  # its idempotency key is already stored
    UNKNOWN_LEAD = "unknown_lead"


async def record_event(db: Database, event: InboundEvent, *, now: datetime) -> RecordedEvent | None:
    """Store `event` and its touchpoint; None when it is a replay or its lead does not exist."""
    [outcome] = await record_events(db, [event], now=now)
    return outcome if isinstance(outcome, RecordedEvent) else None


async def record_events(
    db: Database, events: Sequence[InboundEvent], *, now: datetime
) -> list[RecordedEvent | NotRecorded]:
    """Store several events in one transaction; return what became of each, in order.

    The touchpoint of an event has the event's type as its kind, and names the campaign step when the
    event's delivery is one of its lead's; a delivery of another lead is not attached to the event.
    """
    if not events:
        return []
    async with db.transaction() as conn:
        known = await fetch_existing_lead_ids(conn, {e.lead_id for e in events})
        outcomes = [
            await _record(conn, e, now) if e.lead_id in known else NotRecorded.UNKNOWN_LEAD for e in events
        ]
    for event, outcome in zip(events, outcomes, strict=True):
        if isinstance(outcome, RecordedEvent):
            log.debug(
                "event recorded event_id=%s lead_id=%s type=%s", outcome.event_id, event.lead_id, event.type
            )
        else:
            log.info("event not recorded lead_id=%s type=%s reason=%s", event.lead_id, event.type, outcome)
    return outcomes


async def _record(conn: AsyncConnection, event: InboundEvent, now: datetime) -> RecordedEvent | NotRecorded:
    source = None
    if event.delivery_id is not None:
        source = await fetch_delivery_of_lead(conn, event.delivery_id, event.lead_id)
    extras = {"url": event.url, "user_agent": event.user_agent}
    event_id = await insert_event(
        conn,
        lead_id=event.lead_id,
        event_type=event.type,
        occurred_at=event.occurred_at,
        received_at=now,
        delivery_id=source.delivery_id if source is not None else None,
        idempotency_key=event.idempotency_key,
        properties={**event.properties, **{k: v for k, v in extras.items() if v is not None}},
    )
    if event_id is None:
        return NotRecorded.DUPLICATE
    await append_touchpoint(
        conn,
        lead_id=event.lead_id,
        kind=event.type,
        occurred_at=event.occurred_at,
        campaign_id=source.campaign_id if source is not None else None,
        step_id=source.step_id if source is not None else None,
        delivery_id=source.delivery_id if source is not None else None,
        detail={"event_id": event_id, **({"url": event.url} if event.url else {})},
    )
    return RecordedEvent(event_id=event_id, lead_id=event.lead_id)


async def find_leads_by_email(db: Database, emails: Collection[str]) -> dict[str, int]:
    """Map each normalised address in `emails` that names a lead to the lead's id."""
    async with db.transaction() as conn:
        return await fetch_lead_ids_by_email(conn, emails)


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
