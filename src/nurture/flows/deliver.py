"""Send a batch of claimed deliveries: check, decide, render, compose, send, record.

One transaction takes the batch and holds back what must not go out now (flows.send_triage). Each of the
rest is moved to `sending`, committed, just before its SMTP transaction (flows.send_gate), and its final
state is committed right after the server's reply, in small groups (flows.send_outcomes). So a duplicate
broker message finds its deliveries taken, a worker killed mid-batch leaves what it never started
`claimed` (sent later), and one killed mid-send leaves that message `sending`, which the next dispatch
reports as `unknown`, never re-sent. One lead's messages go one after the other, so a hard bounce stops its
next one; other leads' go concurrently over the SMTP pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import parseaddr

from nurture.catalog import Catalog
from nurture.core.campaign import Campaign, postal_address_of
from nurture.core.caps import NO_CAP, FrequencyCap
from nurture.core.context import owner_of, sender_as_rep, template_context
from nurture.core.message import compose
from nurture.core.ratelimit import recipient_domain
from nurture.core.tracking import message_id_for, track_html, unsubscribe_url
from nurture.db.engine import Database
from nurture.db.queries.deliveries import SendJob
from nurture.errors import (
    HeaderInjectionError,
    PermanentSendError,
    SendOutcomeUnknownError,
    TemplateError,
    TransientSendError,
)
from nurture.flows.send_gate import SendingGate
from nurture.flows.send_outcomes import Outcome, OutcomeRecorder
from nurture.flows.send_triage import Triage, triage_batch
from nurture.ports import OutgoingEmail, RenderedEmail, Renderer, Transport

__all__ = ["BatchResult", "Mailer", "Outcome", "build_message", "deliver", "deliver_batch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mailer:
    """What sending needs besides the database: catalog, renderer, transport, signing key and policies."""

    catalog: Catalog
    renderer: Renderer
    transport: Transport
    secret_key: bytes
    base_url: str
    postal_address: str | None = None
    unsubscribe_mailto: str | None = None
    max_attempts: int = 8
    retry_after: timedelta = timedelta(minutes=1)
    cap: FrequencyCap = NO_CAP  # the runtime sets the configured one
    domain_backoff: timedelta = timedelta(minutes=1)
    domain_backoff_max: timedelta = timedelta(hours=1)
    dry_run: bool = False  # shadow mode: record what would have been sent, send nothing
    # Messages moved to `sending` in one commit ahead of their turn. 0 (each message commits its own, just
    # before it goes) is what the promise needs: a killed worker then leaves `unknown` only messages that
    # were really in an SMTP conversation. More saves transactions, at the price of that many never-started
    # messages reported `unknown` (and so never sent) after a crash.
    mark_ahead: int = 0
    # Messages being built or sent at once in this process. Without a bound, every message of every batch
    # is built before the first reply is recorded, and each reply waits behind all that work (the SMTP
    # window grows); one more than the SMTP pool keeps every connection busy while the next is built.
    send_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(5), compare=False)


@dataclass(frozen=True, slots=True)
class BatchResult:
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # per delivery id we held
    alert_ids: tuple[int, ...] = ()  # rep tasks raised: hand them to send_alert


async def deliver(delivery_id: int, *, db: Database, mailer: Mailer, now: datetime) -> Outcome:
    """Send delivery `delivery_id` if it is still ours; a second call finds it taken and does nothing."""
    result = await deliver_batch([delivery_id], db=db, mailer=mailer, now=now)
    return result.outcomes.get(delivery_id, Outcome.NOT_CLAIMED)


async def deliver_batch(
    delivery_ids: Collection[int], *, db: Database, mailer: Mailer, now: datetime
) -> BatchResult:
    """Send those of `delivery_ids` that are still claimed, concurrently; deliveries not ours are skipped."""
    async with db.transaction() as conn:
        triage = await triage_batch(conn, delivery_ids, mailer=mailer, now=now)
    outcomes = dict(triage.outcomes)
    if triage.sends:
        chains = _by_lead(triage.sends)
        gate = SendingGate(db, now, _send_order(chains), ahead=mailer.mark_ahead)
        async with OutcomeRecorder(db, mailer, now, backoff=triage.backoff_domains) as recorder:
            sender = _Sender(triage, mailer, gate, recorder, now)
            await asyncio.gather(*(sender.send_in_turn(chain) for chain in chains))
        outcomes |= recorder.outcomes
    missing = set(delivery_ids) - outcomes.keys()
    outcomes |= dict.fromkeys(missing, Outcome.NOT_CLAIMED)
    log.info(
        "batch done deliveries=%d sent=%d held=%d not_claimed=%d",
        len(outcomes),
        sum(o in (Outcome.SENT, Outcome.SHADOWED) for o in outcomes.values()),
        len(triage.outcomes),
        len(missing),
    )
    return BatchResult(outcomes=outcomes, alert_ids=triage.alert_ids)


def _by_lead(sends: list[tuple[SendJob, str | None]]) -> list[list[tuple[SendJob, str | None]]]:
    """The sends grouped by lead, in order: one lead's messages go one after the other, so a hard bounce
    stops the next one (other leads' go concurrently)."""
    groups: dict[int, list[tuple[SendJob, str | None]]] = {}
    for job, variant in sends:
        groups.setdefault(job.lead.id, []).append((job, variant))
    return list(groups.values())


def _send_order(chains: list[list[tuple[SendJob, str | None]]]) -> list[int]:
    """The order in which the chains' messages ask to go: every lead's first, then every second, ..."""
    longest = max((len(chain) for chain in chains), default=0)
    return [chain[i][0].delivery_id for i in range(longest) for chain in chains if i < len(chain)]


@dataclass(frozen=True, slots=True)
class _Sender:
    triage: Triage
    mailer: Mailer
    gate: SendingGate
    recorder: OutcomeRecorder
    now: datetime

    async def send_in_turn(self, sends: list[tuple[SendJob, str | None]]) -> None:
        for job, variant in sends:
            if job.lead.id in self.recorder.stopped_leads:
                self.recorder.stopped(job, marked=self.gate.is_marked(job.delivery_id))
                continue
            async with self.mailer.send_slots:
                await self._build_and_send(job, variant)

    async def _build_and_send(self, job: SendJob, variant: str | None) -> None:
        mailer, recorder = self.mailer, self.recorder
        campaign = self.triage.campaigns[job.campaign_id]
        try:
            message = build_message(job, campaign, mailer, self.now, variant=variant)
        except (TemplateError, HeaderInjectionError, ValueError) as exc:  # nothing went out: a plain failure
            recorder.failed(job, f"render: {exc}")
            return
        if recipient_domain(job.lead.email) in recorder.pausing:  # a message of this batch was told "later"
            recorder.paused(job, marked=self.gate.is_marked(job.delivery_id))
            return
        if not await self.gate.start(job.delivery_id):
            recorder.taken(job)
            return
        if recipient_domain(job.lead.email) in recorder.pausing:  # ... or while it waited for the gate
            recorder.paused(job, marked=True)
            return
        if mailer.dry_run:
            recorder.shadowed(job, message, variant)
            return
        try:
            receipt = await mailer.transport.send(message)
        except TransientSendError as exc:
            recorder.transient(job, exc)
        except SendOutcomeUnknownError as exc:
            recorder.unknown(job, exc, message.message_id)
        except PermanentSendError as exc:
            recorder.bounced(job, exc)
        else:
            recorder.sent(job, receipt, variant)


def build_message(
    job: SendJob, campaign: Campaign, mailer: Mailer, now: datetime, *, variant: str | None = None
) -> OutgoingEmail:
    """Build the exact email of `job`'s step for its lead, tracking links included (as sent, previewed or
    test-sent).

    Raises:
        TemplateError: a template fails on this lead.
        HeaderInjectionError: a header value holds a line break or control character.
    """
    step = campaign.step(job.step_id)
    if step is None:
        raise TemplateError(f"no step {job.step_id!r}", source=campaign.source)
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
        postal_address=postal_address_of(campaign, mailer.postal_address) or "",  # sends refuse none
    )
    rendered = mailer.renderer.render_step(campaign.id, step.id, context, variant=variant)
    rendered = _with_tracking(rendered, job, mailer, unsubscribe)
    reply_to = campaign.sender.reply_to
    if reply_to == "owner":
        reply_to = owner.email if job.profile.owner else None
    return compose(
        rendered=rendered,
        sender=campaign.sender,
        to_address=job.lead.email,
        to_name=" ".join(p for p in (job.profile.first_name, job.profile.last_name) if p) or None,
        reply_to=reply_to,
        message_id=message_id_for(
            job.delivery_id, domain=_sender_domain(campaign.sender.from_address), key=mailer.secret_key
        ),
        unsubscribe_url=unsubscribe,
        unsubscribe_mailto=mailer.unsubscribe_mailto,
        campaign_id=campaign.id,
        step_id=step.id,
        sent_date=now,
    )


@functools.lru_cache(maxsize=256)
def _sender_domain(from_address: str) -> str:
    return parseaddr(from_address)[1].rpartition("@")[2]


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
