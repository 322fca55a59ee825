"""Send an alert to the lead's rep: every `AlertSink`, each attempt recorded, retried until delivered.

`deliver_alert` raises while any sink still fails, so the broker tries again; a sink that delivered is
recorded in the alert and not asked again, and a delivered alert is never sent twice. `find_stalled_alerts`
finds pending alerts whose broker message was lost, for the scheduler to enqueue again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from nurture.catalog import Catalog
from nurture.core.context import Rep
from nurture.core.scoring import score_as_of
from nurture.db.engine import Database
from nurture.db.queries.alerts import (
    AlertRecord,
    fetch_alert,
    fetch_quiet_pending_alerts,
    record_alert_attempt,
)
from nurture.errors import AlertDeliveryError
from nurture.ports import AlertMessage, AlertSink

log = logging.getLogger(__name__)

ALERT_MAX_ATTEMPTS: Final = 20
# A handoff revising an alert while it is sent has it sent again at once, up to this many times in a row.
REVISED_RESENDS: Final = 3


async def deliver_alert(
    alert_id: int,
    *,
    db: Database,
    sinks: Sequence[AlertSink],
    catalog: Catalog,
    base_url: str,
    now: datetime,
    max_attempts: int = ALERT_MAX_ATTEMPTS,
) -> bool:
    """Send alert `alert_id` to every sink that has not delivered it yet, and record the attempt.

    Returns:
        True when this call completed the delivery; False when the alert is unknown, was delivered, given
        up on or withdrawn before, was withdrawn while it was sent (its lead erased), or is given up on now
        (its `max_attempts`-th failed attempt).

    Raises:
        AlertDeliveryError: a sink failed and attempts remain; the sinks that delivered are not asked again.
    """
    for _ in range(REVISED_RESENDS + 1):
        async with db.transaction() as conn:
            record = await fetch_alert(conn, alert_id)
        if record is None or record.status != "pending":
            log.info("alert not pending alert_id=%s status=%s", alert_id, record.status if record else None)
            return False
        status, errors = await _attempt(
            record, db=db, sinks=sinks, catalog=catalog, base_url=base_url, now=now, max_attempts=max_attempts
        )
        if status != "revised":
            break
        log.info("alert revised by a handoff while sent, sending the revision alert_id=%s", alert_id)
    else:
        raise AlertDeliveryError(f"alert {alert_id}: revised again while each revision was sent")
    if status == "failed":
        log.error("alert given up alert_id=%s attempts=%d errors=%s", alert_id, record.attempts + 1, errors)
        return False
    if status not in ("pending", "delivered"):  # withdrawn while it was sent: never retried
        log.info("alert no longer pending after its attempt alert_id=%s status=%s", alert_id, status)
        return False
    if errors:
        raise AlertDeliveryError(
            f"alert {alert_id}: " + "; ".join(f"{sink}: {error}" for sink, error in errors.items())
        )
    log.info("alert delivered alert_id=%s lead_id=%s owner=%s", alert_id, record.lead_id, record.owner)
    return True


async def _attempt(
    record: AlertRecord,
    *,
    db: Database,
    sinks: Sequence[AlertSink],
    catalog: Catalog,
    base_url: str,
    now: datetime,
    max_attempts: int,
) -> tuple[str, dict[str, str]]:
    """Send the alert as it is now to each sink that has not sent it; return the new status and errors."""
    rep = catalog.reps.get(record.owner or "")
    message = alert_message(record, rep=rep, base_url=base_url, now=now, half_life=catalog.scoring.half_life)
    notify_urls = rep.notify_urls if rep is not None else ()
    delivered_by: list[str] = []
    errors: dict[str, str] = {}
    for sink in sinks:
        if sink.name in record.delivered_by:
            continue
        try:
            await sink.send(message, notify_urls=notify_urls)
        except AlertDeliveryError as exc:
            errors[sink.name] = str(exc)
            log.warning("alert sink failed alert_id=%s sink=%s error=%s", record.id, sink.name, exc)
        else:
            delivered_by.append(sink.name)
    async with db.transaction() as conn:
        status = await record_alert_attempt(
            conn,
            record.id,
            delivered_by=delivered_by,
            errors=errors,
            now=now,
            max_attempts=max_attempts,
            revision=record.revision,
        )
    return status, errors


async def find_stalled_alerts(
    *, db: Database, now: datetime, quiet_for: timedelta = timedelta(minutes=30)
) -> list[int]:
    """Pending alerts nothing has happened to for `quiet_for` (longer than the alert actor's longest backoff):
    their broker message was lost, and the scheduler enqueues them again."""
    async with db.transaction() as conn:
        return await fetch_quiet_pending_alerts(conn, quiet_since=now - quiet_for)


def alert_message(
    record: AlertRecord, *, rep: Rep | None, base_url: str, now: datetime, half_life: timedelta
) -> AlertMessage:
    """What the rep is told about the alert's lead: its score and stage as they are at `now`, when sent."""
    lead = record.lead
    score_now = (
        lead.score
        if record.score_points is None or record.score_points_at is None
        else score_as_of(record.score_points, record.score_points_at, now, half_life)
    )
    name = " ".join(p for p in (lead.first_name, lead.last_name) if p) or None
    return AlertMessage(
        alert_id=record.id,
        lead_id=record.lead_id,
        trigger=record.trigger,
        reason=record.reason,
        score_before=record.score_before,
        score_after=record.score_after,
        score_now=score_now,
        stage=lead.stage,
        created_at=record.created_at,
        lead_email=lead.email,
        lead_name=name,
        lead_company=lead.company,
        lead_title=lead.title,
        lead_source=lead.tags.get("source") or lead.tags.get("utm_source"),
        owner_email=record.owner,
        owner_name=rep.name if rep is not None else None,
        recent=record.recent,
        timeline_url=f"{base_url.rstrip('/')}/leads/{record.lead_id}",
        updates=record.updates,
        revision=record.revision,
    )
