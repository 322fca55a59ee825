"""Erasure: remove a lead's personal data and keep only the hash that makes its address unsendable.

Everything happens in one transaction: the lead is suppressed (its deliveries cancelled, its enrollments
exited), its fields, tags, event properties, touchpoint details and alert texts are blanked, and the hash of
its address goes into `suppressions`, where a later import of the same address finds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from nurture.core.privacy import address_hash
from nurture.db.engine import Database
from nurture.db.queries.deliveries import append_touchpoint
from nurture.db.queries.events import fetch_lead_ids_by_email
from nurture.db.queries.leads import lock_lead_suppression, suppress_lead
from nurture.db.queries.suppressions import add_suppression, erase_lead_data

log = logging.getLogger(__name__)
ERASED: Final = "erased"


@dataclass(frozen=True, slots=True)
class Erasure:
    lead_id: int | None  # None: no lead had the address (it is suppressed all the same)
    address_hash: str
    erased_at: datetime


async def erase_lead(db: Database, email: str, *, now: datetime) -> Erasure:
    """Erase the lead with the (normalised) address `email`, and suppress the address for good.

    Erasing an address with no lead still records its hash: the person asked not to be contacted.
    """
    digest = address_hash(email)
    async with db.transaction() as conn:
        lead_id = (await fetch_lead_ids_by_email(conn, [email])).get(email)
        await add_suppression(conn, digest, reason=ERASED, now=now)
        if lead_id is not None and await lock_lead_suppression(conn, lead_id) is not None:
            await suppress_lead(conn, lead_id, reason=ERASED, now=now)
            await erase_lead_data(conn, lead_id, now=now)
            await append_touchpoint(conn, lead_id=lead_id, kind=ERASED, occurred_at=now)
    log.info("lead erased lead_id=%s", lead_id)
    return Erasure(lead_id=lead_id, address_hash=digest, erased_at=now)
