"""Queries on deliveries left `unknown`: list them with what the server last said, and settle one.

unknown --(resolved as sent)--> sent        an `email_sent` touchpoint says who settled it, when and why
unknown --(resolved as resend)--> pending   due now, for the normal dispatch path; an `email_resend`
                                            touchpoint says who ordered it, when and why

Each settlement is one conditional UPDATE (`WHERE status = 'unknown'`), so two operators settling the same
delivery at once settle it once: the second finds it no longer `unknown`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.queries.deliveries import append_touchpoints
from nurture.db.queries.tables import deliveries, leads

UNKNOWN: Final = "unknown"
RESEND_KIND: Final = "email_resend"


@dataclass(frozen=True, slots=True)
class UnknownDelivery:
    """A delivery whose outcome nobody knows: the message may or may not have reached the server."""

    delivery_id: int
    lead_id: int
    email: str
    campaign_id: str
    step_id: str
    attempts: int
    sending_at: datetime | None  # when its SMTP conversation began
    message_id: str | None  # the Message-ID sent, to look for in the relay's log (None: the worker died)
    server_said: str | None  # the last SMTP reply or error stored on the delivery


@dataclass(frozen=True, slots=True)
class Settlement:
    """How an operator settled one unknown delivery."""

    resend: bool  # False: it was sent (the relay has it); True: send it again
    by: str
    reason: str | None
    now: datetime


def _listing() -> Any:
    return (
        select(
            deliveries.c.id,
            deliveries.c.lead_id,
            leads.c.email,
            deliveries.c.campaign_id,
            deliveries.c.step_id,
            deliveries.c.attempts,
            deliveries.c.sending_at,
            deliveries.c.message_id,
            deliveries.c.last_error,
        )
        .join(leads, leads.c.id == deliveries.c.lead_id)
        .where(deliveries.c.status == UNKNOWN)
        .order_by(deliveries.c.id)
    )


async def list_unknown_deliveries(conn: AsyncConnection) -> list[UnknownDelivery]:
    """Every delivery whose outcome is unknown, oldest first."""
    return [
        UnknownDelivery(
            delivery_id=r.id,
            lead_id=r.lead_id,
            email=r.email,
            campaign_id=r.campaign_id,
            step_id=r.step_id,
            attempts=r.attempts,
            sending_at=r.sending_at,
            message_id=r.message_id,
            server_said=r.last_error,
        )
        for r in await conn.execute(_listing())
    ]


async def delivery_status(conn: AsyncConnection, delivery_id: int) -> str | None:
    """The status of delivery `delivery_id`; None when there is no such delivery."""
    row = (await conn.execute(select(deliveries.c.status).where(deliveries.c.id == delivery_id))).first()
    return None if row is None else str(row.status)


async def settle_unknown_deliveries(
    conn: AsyncConnection, delivery_ids: Collection[int] | None, settlement: Settlement
) -> list[int]:
    """Settle those of `delivery_ids` (None: every one) that are still `unknown`; return the settled ids."""
    s = settlement
    as_ = "resend" if s.resend else "sent"
    note = f"resolved as {as_} by {s.by}" + (f": {s.reason}" if s.reason else "")
    found = select(deliveries.c.id, deliveries.c.last_error).where(deliveries.c.status == UNKNOWN)
    if delivery_ids is not None:
        found = found.where(deliveries.c.id.in_(sorted(set(delivery_ids))))
    if conn.dialect.name == "postgresql":
        found = found.with_for_update()
    said = {row.id: row.last_error for row in await conn.execute(found)}
    if not said:
        return []
    if s.resend:  # due now, a fresh attempt count: the normal dispatch path claims and sends it once
        values: dict[str, Any] = {
            "status": "pending",
            "due_at": s.now,
            "claimed_until": None,
            "sending_at": None,
            "attempts": 0,
        }
    else:  # sent when its conversation began
        values = {"status": "sent", "sent_at": func.coalesce(deliveries.c.sending_at, s.now)}
    stmt = (
        update(deliveries)
        .where(deliveries.c.id.in_(sorted(said)), deliveries.c.status == UNKNOWN)
        .values(**values, last_error=note[:2000])
        .returning(
            deliveries.c.id,
            deliveries.c.lead_id,
            deliveries.c.campaign_id,
            deliveries.c.step_id,
            deliveries.c.message_id,
            deliveries.c.sent_at,
        )
    )
    settled = (await conn.execute(stmt)).all()
    record = {"by": s.by, "reason": s.reason, "resolved_at": s.now.isoformat()}
    await append_touchpoints(
        conn,
        [
            {
                "lead_id": row.lead_id,
                "kind": RESEND_KIND if s.resend else "email_sent",
                "occurred_at": s.now if s.resend else row.sent_at,
                "campaign_id": row.campaign_id,
                "step_id": row.step_id,
                "delivery_id": row.id,
                "message_id": row.message_id,
                "detail": {"resolved": {**record, "as": as_, "server_said": said[row.id]}},
            }
            for row in settled
        ],
    )
    return sorted(row.id for row in settled)
