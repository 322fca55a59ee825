"""Settle deliveries left `unknown`: the one case where nurture cannot tell whether a message went.

A delivery is `unknown` when the connection failed after DATA began, or its worker died inside the SMTP
conversation. It is never re-sent on its own (a second copy is worse than a missing one). An operator looks
for its Message-ID in the relay's log and settles it: `sent` (the relay has it) or `resend` (the relay never
saw it), which puts it back as `pending`, due now, for the normal dispatch path to send once. That check is
the guarantee against a duplicate: nurture records who settled it, when and why, and refuses to settle a
delivery that is not `unknown` (so a second resolve changes nothing).
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum

from nurture.db.engine import Database
from nurture.db.queries.unknown import (
    UNKNOWN,
    Settlement,
    UnknownDelivery,
    delivery_status,
    list_unknown_deliveries,
    settle_unknown_deliveries,
)
from nurture.errors import NurtureError

__all__ = ["Resolution", "UnknownDelivery", "list_unknown", "resolve_unknown"]

log = logging.getLogger(__name__)


class Resolution(StrEnum):
    SENT = "sent"  # the relay's log shows it accepted the message
    RESEND = "resend"  # the relay never saw it: send it again, once


async def list_unknown(db: Database) -> list[UnknownDelivery]:
    """Every delivery whose outcome is unknown, with what the server last said."""
    async with db.transaction() as conn:
        return await list_unknown_deliveries(conn)


async def resolve_unknown(
    db: Database,
    delivery_id: int | None,
    *,
    resolution: Resolution,
    by: str,
    reason: str | None,
    now: datetime,
) -> list[int]:
    """Settle delivery `delivery_id` (None: every unknown one) and return the ids settled.

    Raises:
        NurtureError: there is no such delivery, or it is not `unknown` (sent, or settled already).
    """
    settlement = Settlement(resend=resolution is Resolution.RESEND, by=by, reason=reason or None, now=now)
    ids = None if delivery_id is None else [delivery_id]
    async with db.transaction() as conn:
        settled = await settle_unknown_deliveries(conn, ids, settlement)
        if delivery_id is not None and not settled:
            status = await delivery_status(conn, delivery_id)
            if status is None:
                raise NurtureError(f"no delivery {delivery_id}")
            raise NurtureError(f"delivery {delivery_id} is {status}, not {UNKNOWN}: nothing to resolve")
    for settled_id in settled:
        log.warning("unknown delivery resolved delivery_id=%s as=%s", settled_id, resolution.value)
    return settled
