"""The first transaction of a send batch: take the claimed deliveries (`sending`), then decide for each one
whether it goes out now, and write down every one that does not.

Held back, in this order: the lead left the campaign (`send_hold`), the recipient's domain is paused, the
lead's send window is closed, the step is skipped or is a rep task (`decide_steps`), the campaign gives no
postal address (failed, with the reason: no email goes out without one), the lead's frequency cap is
reached. A delivery held back for a time (domain, window, cap) is pending again at the first instant it may
go, no attempt counted; nothing here is ever dropped. The rest stays `claimed`, taken by this worker
(`sending_at` set, which frequency caps count), until its own message is about to go (flows.send_gate).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.campaign import Campaign, postal_address_of
from nurture.core.caps import NO_CAP, next_allowed_at
from nurture.core.lifecycle import send_hold
from nurture.core.ratelimit import recipient_domain
from nurture.core.schedule import DaysOff, LateTouch, lead_zone, resolve_late_touch
from nurture.db.queries.deliveries import SendJob, record_held
from nurture.db.queries.enrollment import end_enrollment
from nurture.db.queries.send_domains import domain_states
from nurture.db.queries.sending import (
    Finished,
    complete_finished_enrollments,
    recent_sends,
    record_finished,
    return_to_pending,
    take_batch,
)
from nurture.errors import TemplateError
from nurture.flows import decide
from nurture.flows.send_outcomes import Outcome, window_due

if TYPE_CHECKING:
    from nurture.flows.deliver import Mailer

log = logging.getLogger(__name__)

# Why an email goes out to no one when its campaign and NURTURE_POSTAL_ADDRESS give no postal address.
NO_POSTAL_ADDRESS = "no postal address: set the campaign's sender.postal_address or NURTURE_POSTAL_ADDRESS"


@dataclass(slots=True)
class Triage:
    """What the first transaction decided: what to send (with its variant), and what happened to the rest."""

    sends: list[tuple[SendJob, str | None]] = field(default_factory=list)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    alert_ids: tuple[int, ...] = ()
    campaigns: dict[str, Campaign] = field(default_factory=dict)
    backoff_domains: frozenset[str] = frozenset()  # recipient domains with a backoff state


@dataclass(slots=True)
class _Writes:
    finished: Finished = field(default_factory=Finished)
    later: list[tuple[int, datetime, str]] = field(default_factory=list)
    ended: set[int] = field(default_factory=set)  # enrollments that may now be complete
    alert_ids: list[int] = field(default_factory=list)


async def triage_batch(
    conn: AsyncConnection, delivery_ids: Collection[int], *, mailer: Mailer, now: datetime
) -> Triage:
    """Take the batch and sort it; the caller commits before sending anything."""
    jobs = await take_batch(conn, delivery_ids, now=now)
    triage, writes = Triage(), _Writes()
    live: list[SendJob] = []
    for job in jobs:
        if await _held(conn, job, mailer, triage, writes, now):
            continue
        live.append(job)
    decisions = await _decisions(conn, live, mailer, now)
    recent: dict[int, list[datetime]] = {}
    if mailer.cap != NO_CAP:
        leads = [j.lead.id for j in live]
        recent = await recent_sends(conn, leads, since=now - mailer.cap.lookback, excluding=delivery_ids)
    states = await domain_states(conn, {recipient_domain(j.lead.email) for j in live})
    triage.backoff_domains = frozenset(states)
    for job in live:
        campaign = triage.campaigns[job.campaign_id]
        days_off = mailer.catalog.days_off(campaign, job.lead.country)
        paused = states.get(recipient_domain(job.lead.email))
        if paused is not None and paused.paused_until is not None and paused.paused_until > now:
            _later(
                job, campaign, paused.paused_until, "domain paused", days_off, triage, writes, Outcome.PAUSED
            )
            continue
        late = _late_touch(job, campaign, now, days_off)
        if late is not None and late.skip_reason is not None:
            _skip(job, late.skip_reason, triage, writes, now)
            continue
        opens_at = window_due(job, campaign, now, days_off=days_off)
        if opens_at > now:
            _later(
                job, campaign, opens_at, "outside the send window", days_off, triage, writes, Outcome.DEFERRED
            )
            continue
        decision = decisions.get(job.delivery_id, decide.SEND)
        if decision.action != "send":
            await _not_an_email(conn, job, decision, mailer, triage, writes, now)
            continue
        sent_at = recent.setdefault(job.lead.id, [])
        allowed_at = next_allowed_at(sent_at, mailer.cap, now)
        if allowed_at > now:
            _later(job, campaign, allowed_at, "frequency cap", days_off, triage, writes, Outcome.CAPPED)
            continue
        sent_at.append(now)  # a later delivery of the same lead in this batch counts this one
        triage.sends.append((job, decision.variant))
    await _write(conn, writes, now)
    triage.alert_ids = tuple(writes.alert_ids)
    return triage


async def _held(
    conn: AsyncConnection, job: SendJob, mailer: Mailer, triage: Triage, writes: _Writes, now: datetime
) -> bool:
    campaign = mailer.catalog.campaigns.get(job.campaign_id)
    hold = send_hold(job.lead, campaign, job.step_id)
    if hold is None:
        assert campaign is not None  # send_hold holds deliveries of removed campaigns
        triage.campaigns[campaign.id] = campaign
        return False
    status = "cancelled" if hold.exits_enrollment else "skipped"
    await record_held(conn, job, status=status, reason=hold.reason)
    if hold.exits_enrollment:
        await end_enrollment(conn, job.enrollment_id, state="exited", reason=hold.reason, now=now)
    else:
        writes.ended.add(job.enrollment_id)
    triage.outcomes[job.delivery_id] = Outcome.HELD
    log.info("delivery held delivery_id=%s reason=%s", job.delivery_id, hold.reason)
    return True


async def _decisions(
    conn: AsyncConnection, jobs: list[SendJob], mailer: Mailer, now: datetime
) -> dict[int, decide.StepDecision]:
    """What each job's step does now; an email whose campaign gives no postal address fails instead."""
    if not jobs:
        return {}
    refs = [
        decide.StepRef(j.delivery_id, j.enrollment_id, j.lead.id, j.campaign_id, j.step_id, j.lead.score)
        for j in jobs
    ]
    decisions = await decide.decide_steps(conn, refs, mailer.catalog, now)
    unaddressed = _unaddressed_campaigns({j.campaign_id for j in jobs}, mailer)
    for job in jobs:
        if job.campaign_id in unaddressed and decisions.get(job.delivery_id, decide.SEND).action == "send":
            decisions[job.delivery_id] = decide.StepDecision("fail", reason=NO_POSTAL_ADDRESS)
    return decisions


def _unaddressed_campaigns(campaign_ids: set[str], mailer: Mailer) -> set[str]:
    """Of `campaign_ids`, those whose emails would show no postal address: asked once per campaign per
    batch, not once per delivery."""
    campaigns = mailer.catalog.campaigns
    return {
        cid
        for cid in campaign_ids
        if (campaign := campaigns.get(cid)) is not None
        and postal_address_of(campaign, mailer.postal_address) is None
    }


async def _not_an_email(
    conn: AsyncConnection,
    job: SendJob,
    decision: decide.StepDecision,
    mailer: Mailer,
    triage: Triage,
    writes: _Writes,
    now: datetime,
) -> None:
    """A step the campaign skips for this lead, one that must not go out as the campaign stands, or one
    that hands the rep a task instead of an email."""
    writes.ended.add(job.enrollment_id)
    log.info("delivery not emailed delivery_id=%s action=%s", job.delivery_id, decision.action)
    if decision.action == "skip":
        _skip(job, decision.reason or "skipped", triage, writes, now)
        return
    if decision.action == "fail":
        _refuse(job, decision.reason or "refused", triage, writes, now)
        return
    ref = decide.StepRef(
        job.delivery_id, job.enrollment_id, job.lead.id, job.campaign_id, job.step_id, job.lead.score
    )
    try:  # it finishes the delivery and writes its touchpoint itself
        alert_id = await decide.record_rep_task(conn, ref, mailer.catalog, now)
    except TemplateError as exc:
        _refuse(job, f"task: {exc}", triage, writes, now)
        return
    if alert_id is not None:
        writes.alert_ids.append(alert_id)
    triage.outcomes[job.delivery_id] = Outcome.TASK


def _late_touch(job: SendJob, campaign: Campaign, now: datetime, days_off: DaysOff) -> LateTouch | None:
    """The campaign's policy for a touch taken up after its window closed (`send_window.missed`) or later
    than `late.skip_after_hours`; None when the job does not say when it fell due."""
    if job.due_at is None:
        return None
    window = campaign.send_window
    tz = lead_zone(job.lead.timezone, window)
    return resolve_late_touch(
        job.due_at, now, window, tz, skip_late_after=campaign.skip_late_after, days_off=days_off
    )


def _skip(job: SendJob, reason: str, triage: Triage, writes: _Writes, now: datetime) -> None:
    """The step will not go out to this lead, for a reason the campaign states: recorded, never silent."""
    writes.ended.add(job.enrollment_id)
    writes.finished.add(job, status="skipped", kind="step_skipped", now=now, detail={"reason": reason})
    triage.outcomes[job.delivery_id] = Outcome.SKIPPED
    log.info("delivery skipped delivery_id=%s reason=%s", job.delivery_id, reason)


def _refuse(job: SendJob, error: str, triage: Triage, writes: _Writes, now: datetime) -> None:
    """The step cannot go out as the campaign stands (no postal address, a task title that fails): failed,
    with the reason, and nothing sent."""
    writes.ended.add(job.enrollment_id)
    writes.finished.add(job, status="failed", kind="email_failed", now=now, detail={"error": error})
    triage.outcomes[job.delivery_id] = Outcome.FAILED
    log.warning("delivery refused delivery_id=%s campaign=%s: %s", job.delivery_id, job.campaign_id, error)


def _later(
    job: SendJob,
    campaign: Campaign,
    at: datetime,
    reason: str,
    days_off: DaysOff,
    triage: Triage,
    writes: _Writes,
    outcome: Outcome,
) -> None:
    due = window_due(job, campaign, at, days_off=days_off)
    writes.later.append((job.delivery_id, due, reason))
    triage.outcomes[job.delivery_id] = outcome
    log.info("delivery deferred delivery_id=%s reason=%s due_at=%s", job.delivery_id, reason, due.isoformat())


async def _write(conn: AsyncConnection, writes: _Writes, now: datetime) -> None:
    await record_finished(conn, writes.finished)
    await return_to_pending(conn, writes.later)
    await complete_finished_enrollments(conn, writes.ended, now=now)
