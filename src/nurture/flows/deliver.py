"""Send one claimed delivery: check, render, compose, send, record.

The delivery moves `claimed -> sending` in one transaction before any byte goes to the mail server and to its
final state in another right after the server's reply, so a duplicate broker message finds it taken, and a
worker killed in between leaves it in `sending`, which the next dispatch reports as `unknown`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import parseaddr
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.catalog import Catalog
from nurture.core.campaign import Campaign
from nurture.core.context import owner_of, sender_as_rep, template_context
from nurture.core.lifecycle import send_hold
from nurture.core.message import compose
from nurture.core.schedule import due_at, lead_zone
from nurture.core.tracking import message_id_for, track_html, unsubscribe_url
from nurture.db.engine import Database
from nurture.db.queries.deliveries import (
    SendJob,
    count_open_deliveries_of_enrollment,
    record_failed,
    record_held,
    record_sent,
    record_unknown,
    release_delivery,
    reschedule_delivery,
    start_sending,
)
from nurture.db.queries.enrollment import end_enrollment
from nurture.db.queries.leads import suppress_lead
from nurture.errors import (
    HeaderInjectionError,
    PermanentSendError,
    SendOutcomeUnknownError,
    TemplateError,
    TransientSendError,
)
from nurture.ports import OutgoingEmail, RenderedEmail, Renderer, Transport

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    SENT = "sent"
    NOT_CLAIMED = "not_claimed"  # sent already, cancelled, or another worker has it
    HELD = "held"
    DEFERRED = "deferred"  # outside the send window: pending again until it opens
    RETRY = "retry"
    FAILED = "failed"
    BOUNCED = "bounced"
    UNKNOWN = "unknown"  # the server may have it: reported, never re-sent


@dataclass(frozen=True, slots=True)
class Mailer:
    """What sending needs besides the database: catalog, renderer, transport and signing key."""

    catalog: Catalog
    renderer: Renderer
    transport: Transport
    secret_key: bytes
    base_url: str
    postal_address: str | None = None
    unsubscribe_mailto: str | None = None
    max_attempts: int = 8
    retry_after: timedelta = timedelta(minutes=1)


async def deliver(delivery_id: int, *, db: Database, mailer: Mailer, now: datetime) -> Outcome:
    """Send delivery `delivery_id` if it is still ours; a second call finds it taken and does nothing."""
    async with db.transaction() as conn:
        job = await start_sending(conn, delivery_id, now=now)
        if job is None:
            return Outcome.NOT_CLAIMED
        campaign = mailer.catalog.campaigns.get(job.campaign_id)
        hold = send_hold(job.lead, campaign, job.step_id)
        if hold is not None:
            status = "cancelled" if hold.exits_enrollment else "skipped"
            await record_held(conn, job, status=status, reason=hold.reason)
            if hold.exits_enrollment:
                await end_enrollment(conn, job.enrollment_id, state="exited", reason=hold.reason, now=now)
            else:
                await _complete_if_done(conn, job, now)
            log.info("delivery held delivery_id=%s reason=%s", delivery_id, hold.reason)
            return Outcome.HELD
        assert campaign is not None  # send_hold holds deliveries of removed campaigns
        # Dispatched late (a scheduler was down, a queue was long): never mail outside the lead's window.
        window = campaign.send_window
        opens_at = due_at(now, window, lead_zone(job.lead.timezone, window))
        if opens_at > now:
            await release_delivery(conn, delivery_id, due_at=opens_at)
            log.info(
                "delivery deferred to its window delivery_id=%s due_at=%s", delivery_id, opens_at.isoformat()
            )
            return Outcome.DEFERRED
    try:
        message = _build_message(job, campaign, mailer, now)
    except (TemplateError, HeaderInjectionError) as exc:
        return await _fail(db, job, f"render: {exc}", now)
    return await _send(db, job, message, mailer, now)


async def _send(db: Database, job: SendJob, message: OutgoingEmail, mailer: Mailer, now: datetime) -> Outcome:
    try:
        receipt = await mailer.transport.send(message)
    except TransientSendError as exc:
        if job.attempts >= mailer.max_attempts:
            return await _fail(db, job, f"gave up after {job.attempts} attempts: {exc}", now)
        retry_at = now + retry_delay(job.attempts, mailer.retry_after)
        async with db.transaction() as conn:
            await reschedule_delivery(conn, job.delivery_id, error=str(exc), retry_at=retry_at)
        log.warning(
            "delivery deferred delivery_id=%s attempt=%d error=%s", job.delivery_id, job.attempts, exc
        )
        return Outcome.RETRY
    except SendOutcomeUnknownError as exc:
        async with db.transaction() as conn:
            await record_unknown(conn, job, error=str(exc), now=now)
            await _complete_if_done(conn, job, now)
        log.error("delivery outcome unknown delivery_id=%s error=%s: not re-sent", job.delivery_id, exc)
        return Outcome.UNKNOWN
    except PermanentSendError as exc:
        async with db.transaction() as conn:
            await record_failed(conn, job, error=str(exc), now=now)
            await suppress_lead(conn, job.lead.id, reason=f"bounced: {exc}"[:200], now=now)
        log.warning("delivery bounced delivery_id=%s lead_id=%s error=%s", job.delivery_id, job.lead.id, exc)
        return Outcome.BOUNCED
    async with db.transaction() as conn:
        await record_sent(conn, job, message_id=receipt.message_id, response=receipt.response, now=now)
        await _complete_if_done(conn, job, now)
    log.info("delivery sent delivery_id=%s message_id=%s", job.delivery_id, receipt.message_id)
    return Outcome.SENT


def _build_message(job: SendJob, campaign: Campaign, mailer: Mailer, now: datetime) -> OutgoingEmail:
    step = campaign.step(job.step_id)
    assert step is not None  # send_hold skips removed steps
    fallback = sender_as_rep(campaign.sender.from_address)
    owner = owner_of(job.profile, mailer.catalog.reps, fallback)
    unsubscribe = unsubscribe_url(
        mailer.base_url, lead_id=job.lead.id, delivery_id=job.delivery_id, key=mailer.secret_key
    )
    context = template_context(
        job.profile,
        owner=owner,
        campaign=campaign,
        step=step,
        unsubscribe_url=unsubscribe,
        postal_address=campaign.sender.postal_address or mailer.postal_address or "",
    )
    rendered = mailer.renderer.render_step(campaign.id, step.id, context)
    rendered = _with_tracking(rendered, job, mailer, unsubscribe)
    reply_to = campaign.sender.reply_to
    if reply_to == "owner":
        reply_to = owner.email if job.profile.owner else None
    domain = parseaddr(campaign.sender.from_address)[1].rpartition("@")[2]
    return compose(
        rendered=rendered,
        sender=campaign.sender,
        to_address=job.lead.email,
        to_name=" ".join(p for p in (job.profile.first_name, job.profile.last_name) if p) or None,
        reply_to=reply_to,
        message_id=message_id_for(job.delivery_id, domain=domain, key=mailer.secret_key),
        unsubscribe_url=unsubscribe,
        unsubscribe_mailto=mailer.unsubscribe_mailto,
        campaign_id=campaign.id,
        step_id=step.id,
        sent_date=now,
    )


def _with_tracking(rendered: RenderedEmail, job: SendJob, mailer: Mailer, unsubscribe: str) -> RenderedEmail:
    """Turn the HTML part's links into signed click URLs and add its open pixel.

    The unsubscribe link stays as it is (it must work without us), and so does the whole text part: its
    readers copy URLs by hand, and a long token in plain text looks like spam.
    """
    html = track_html(
        rendered.html,
        base_url=mailer.base_url,
        lead_id=job.lead.id,
        delivery_id=job.delivery_id,
        key=mailer.secret_key,
        keep={unsubscribe},
    )
    return replace(rendered, html=html)


async def _fail(db: Database, job: SendJob, error: str, now: datetime) -> Outcome:
    async with db.transaction() as conn:
        await record_failed(conn, job, error=error, now=now)
        await _complete_if_done(conn, job, now)
    log.error("delivery failed delivery_id=%s error=%s", job.delivery_id, error)
    return Outcome.FAILED


async def _complete_if_done(conn: AsyncConnection, job: SendJob, now: datetime) -> None:
    """The last open delivery of an enrollment reached a final state: the enrollment is complete."""
    if await count_open_deliveries_of_enrollment(conn, job.enrollment_id) == 0:
        await end_enrollment(conn, job.enrollment_id, state="completed", reason=None, now=now)


def retry_delay(attempts: int, base: timedelta) -> timedelta:
    """Exponential backoff: base, 2x, 4x, ... capped at one hour."""
    return min(base * (1 << min(max(attempts - 1, 0), 20)), timedelta(hours=1))
