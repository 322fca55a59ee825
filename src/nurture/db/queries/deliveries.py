"""Queries on the send state machine of deliveries, and the touchpoints that record its outcomes.

pending --claim--> claimed --(taken by a worker; sending.mark_sending)--> sending --> sent | failed | unknown
   ^                  |                          |
   +--- lease expiry -+                          +--(transient failure)--> pending, later due_at
pending | claimed --> skipped | cancelled
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.context import LeadProfile
from nurture.core.lead import Lead as LeadValue
from nurture.db.queries.tables import deliveries, enrollments, lead_profile, lead_value, leads, touchpoints

OPEN = ("pending", "claimed")


@dataclass(frozen=True, slots=True)
class SendJob:
    """Everything the deliver flow needs about one delivery it holds (taken, then `sending`)."""

    delivery_id: int
    enrollment_id: int
    campaign_id: str
    step_id: str
    attempts: int
    enrolled_at: datetime
    lead: LeadValue
    profile: LeadProfile
    due_at: datetime | None = None  # when it fell due (the plan, or a retry's time); None where unknown


@dataclass(frozen=True, slots=True)
class DeliveryRef:
    """Which campaign step a delivery belongs to."""

    delivery_id: int
    campaign_id: str
    step_id: str


async def fetch_delivery_of_lead(conn: AsyncConnection, delivery_id: int, lead_id: int) -> DeliveryRef | None:
    """The delivery `delivery_id` if it is one of `lead_id`'s, else None."""
    stmt = select(deliveries.c.id, deliveries.c.campaign_id, deliveries.c.step_id).where(
        deliveries.c.id == delivery_id, deliveries.c.lead_id == lead_id
    )
    row = (await conn.execute(stmt)).first()
    return None if row is None else DeliveryRef(row.id, row.campaign_id, row.step_id)


async def start_sending(conn: AsyncConnection, delivery_id: int, *, now: datetime) -> SendJob | None:
    """Move a claimed delivery to `sending` and load what sending needs; None when it is not ours to send
    (already sent, cancelled, or taken by a duplicate message)."""
    started = (
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.status == "claimed")
            .values(status="sending", sending_at=now, attempts=deliveries.c.attempts + 1)
            .returning(deliveries.c.attempts)
        )
    ).first()
    if started is None:
        return None
    row = (
        await conn.execute(
            select(
                leads,
                deliveries.c.enrollment_id,
                deliveries.c.campaign_id,
                deliveries.c.step_id,
                enrollments.c.enrolled_at,
            )
            .join(deliveries, deliveries.c.lead_id == leads.c.id)
            .join(enrollments, enrollments.c.id == deliveries.c.enrollment_id)
            .where(deliveries.c.id == delivery_id)
        )
    ).one()
    return SendJob(
        delivery_id=delivery_id,
        enrollment_id=row.enrollment_id,
        campaign_id=row.campaign_id,
        step_id=row.step_id,
        attempts=started.attempts,
        enrolled_at=row.enrolled_at,
        lead=lead_value(row),
        profile=lead_profile(row),
    )


async def record_sent(
    conn: AsyncConnection,
    job: SendJob,
    *,
    message_id: str,
    response: str,
    now: datetime,
    kind: str = "email_sent",
) -> None:
    await _record_outcome(
        conn,
        job,
        status="sent",
        kind=kind,
        now=now,
        detail={"response": response},
        message_id=message_id,
        sent_at=now,
        last_error=None,
    )


async def record_failed(conn: AsyncConnection, job: SendJob, *, error: str, now: datetime) -> None:
    await _record_outcome(conn, job, status="failed", kind="email_failed", now=now, detail={"error": error})


async def record_unknown(conn: AsyncConnection, job: SendJob, *, error: str, now: datetime) -> None:
    """The server may or may not have the message: report it, never re-send it automatically."""
    await _record_outcome(conn, job, status="unknown", kind="email_unknown", now=now, detail={"error": error})


async def _record_outcome(
    conn: AsyncConnection,
    job: SendJob,
    *,
    status: str,
    kind: str,
    now: datetime,
    detail: dict[str, Any],
    **values: Any,
) -> None:
    """Put the delivery in its final `status` and append the matching touchpoint to the lead's timeline."""
    values.setdefault("last_error", detail.get("error"))
    await _finish(conn, job.delivery_id, status=status, **values)
    await append_touchpoint(
        conn,
        lead_id=job.lead.id,
        kind=kind,
        occurred_at=now,
        campaign_id=job.campaign_id,
        step_id=job.step_id,
        delivery_id=job.delivery_id,
        message_id=values.get("message_id"),
        detail=detail,
    )


async def record_held(conn: AsyncConnection, job: SendJob, *, status: str, reason: str) -> None:
    """The delivery will not go out (`skipped` or `cancelled`) for `reason`."""
    await _finish(conn, job.delivery_id, status=status, last_error=reason)


async def reschedule_delivery(
    conn: AsyncConnection, delivery_id: int, *, error: str, retry_at: datetime
) -> None:
    """A transient failure: back to `pending`, due again at `retry_at`."""
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status == "sending")
        .values(status="pending", due_at=retry_at, claimed_until=None, sending_at=None, last_error=error)
    )


async def release_delivery(
    conn: AsyncConnection, delivery_id: int, *, due_at: datetime | None = None
) -> None:
    """Give back a delivery we hold without sending it, as if never attempted (e.g. outside its send window,
    which opens again at `due_at`)."""
    values: dict[str, Any] = {"due_at": due_at} if due_at is not None else {}
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status == "sending")
        .values(
            status="pending",
            claimed_until=None,
            sending_at=None,
            attempts=deliveries.c.attempts - 1,
            **values,
        )
    )


async def count_open_deliveries_of_enrollment(conn: AsyncConnection, enrollment_id: int) -> int:
    rows = await conn.execute(
        select(deliveries.c.id).where(
            and_(deliveries.c.enrollment_id == enrollment_id, deliveries.c.status.in_((*OPEN, "sending")))
        )
    )
    return len(rows.all())


async def append_touchpoint(
    conn: AsyncConnection,
    *,
    lead_id: int,
    kind: str,
    occurred_at: datetime,
    campaign_id: str | None = None,
    step_id: str | None = None,
    delivery_id: int | None = None,
    message_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        touchpoints.insert().values(
            lead_id=lead_id,
            kind=kind,
            occurred_at=occurred_at,
            campaign_id=campaign_id,
            step_id=step_id,
            delivery_id=delivery_id,
            message_id=message_id,
            detail=detail or {},
        )
    )


async def append_touchpoints(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Append many touchpoints at once (keys as in `append_touchpoint`)."""
    if rows:
        defaults: dict[str, Any] = {
            "campaign_id": None,
            "step_id": None,
            "delivery_id": None,
            "message_id": None,
            "detail": {},
        }
        await conn.execute(touchpoints.insert(), [{**defaults, **row} for row in rows])


async def _finish(conn: AsyncConnection, delivery_id: int, *, status: str, **values: Any) -> None:
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status.in_((*OPEN, "sending")))
        .values(status=status, claimed_until=None, **values)
    )
