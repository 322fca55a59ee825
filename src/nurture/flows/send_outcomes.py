"""Record the outcomes of a send batch as the mail server's replies arrive, in small group commits.

Each reply is queued the moment it arrives; one writer task commits whatever has queued up since its last
commit, in one transaction (one UPDATE for all final states, one INSERT for their touchpoints, one set-based
completion check). Under load a group holds many outcomes; when sends are few it holds one. So a message's
outcome waits for at most one earlier group's commit, never for a slow other message, and the window in
which a crash would leave a delivery `unknown` (end of DATA -> commit) stays short. It is measured per
delivery: `smtp_window_ms` on the `email_sent` touchpoint (from the reply to the write of its outcome; the
commit follows in the same transaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Final

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.backoff import backoff
from nurture.core.campaign import Campaign
from nurture.core.privacy import address_hash
from nurture.core.ratelimit import recipient_domain
from nurture.core.schedule import NO_DAYS_OFF, DaysOff, due_at, lead_zone
from nurture.db.engine import Database
from nurture.db.queries.deliveries import SendJob
from nurture.db.queries.leads import suppress_lead
from nurture.db.queries.send_domains import clear_domains, pause_domain
from nurture.db.queries.sending import (
    Finished,
    complete_finished_enrollments,
    record_finished,
    return_to_pending,
)
from nurture.db.queries.suppressions import add_suppression
from nurture.errors import PermanentSendError, SendOutcomeUnknownError, TransientSendError
from nurture.ports import OutgoingEmail, SendReceipt

if TYPE_CHECKING:
    from nurture.flows.deliver import Mailer

log = logging.getLogger(__name__)

RETRY_CAP: Final = timedelta(hours=1)  # the longest wait between two tries of one delivery


class Outcome(StrEnum):
    SENT = "sent"
    SHADOWED = "shadowed"  # dry run: recorded with its headers, never sent
    NOT_CLAIMED = "not_claimed"  # sent already, cancelled, or another worker has it
    HELD = "held"  # the lead left the campaign, or the step is gone
    SKIPPED = "skipped"  # the campaign's condition skips this step for this lead
    TASK = "task"  # the step is a task for the rep: an alert, not an email
    DEFERRED = "deferred"  # outside the send window: pending again until it opens
    CAPPED = "capped"  # the lead's frequency cap is reached: pending again when it allows
    PAUSED = "paused"  # the recipient's domain is paused: pending again at the pause end
    RETRY = "retry"
    FAILED = "failed"
    BOUNCED = "bounced"
    UNKNOWN = "unknown"  # the server may have it: reported, never re-sent


def window_due(
    job: SendJob, campaign: Campaign, not_before: datetime, *, days_off: DaysOff = NO_DAYS_OFF
) -> datetime:
    """The first instant >= `not_before` inside the lead's send window, on none of its `days_off` (public
    holidays when the campaign skips them): mail never goes outside it."""
    window = campaign.send_window
    return due_at(not_before, window, lead_zone(job.lead.timezone, window), days_off=days_off)


@dataclass(frozen=True, slots=True)
class _Reply:
    job: SendJob
    outcome: Outcome
    detail: dict[str, object]
    message_id: str | None = None
    variant: str | None = None
    replied_at: float | None = None  # time.monotonic() of the server's reply
    marked: bool = False  # a paused one already marked `sending`: its attempt is given back


class OutcomeRecorder:
    """Collects the outcomes of one batch and commits them in groups as they come (an async context)."""

    def __init__(self, db: Database, mailer: Mailer, now: datetime, *, backoff: Collection[str] = ()) -> None:
        self._db, self._mailer, self._now = db, mailer, now
        self._backoff = set(backoff)  # domains with a backoff state: a success clears it
        self._queue: asyncio.Queue[_Reply | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.outcomes: dict[int, Outcome] = {}
        self.pausing: set[str] = set()  # domains that said "try later" in this batch: send them nothing more
        self._paused_until: dict[str, datetime] = {}
        self._succeeded: set[str] = set()
        self.stopped_leads: set[int] = set()  # hard bounces in this batch: send their leads nothing more

    async def __aenter__(self) -> OutcomeRecorder:
        self._writer = asyncio.create_task(self._write_groups())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._queue.put_nowait(None)
        assert self._writer is not None
        await self._writer

    # --- what the senders report ---

    def sent(self, job: SendJob, receipt: SendReceipt, variant: str | None) -> None:
        detail: dict[str, object] = {"response": receipt.response}
        if variant is not None:
            detail["variant"] = variant
        self._put(_Reply(job, Outcome.SENT, detail, receipt.message_id, variant, time.monotonic()))

    def shadowed(self, job: SendJob, message: OutgoingEmail, variant: str | None) -> None:
        headers = message.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
        detail: dict[str, object] = {"headers": headers, "recipients": list(message.recipients)}
        if variant is not None:
            detail["variant"] = variant
        self._put(_Reply(job, Outcome.SHADOWED, detail, message.message_id, variant))

    def failed(self, job: SendJob, error: str) -> None:
        self._put(_Reply(job, Outcome.FAILED, {"error": error}))

    def unknown(self, job: SendJob, exc: SendOutcomeUnknownError, message_id: str) -> None:
        """Kept with the error and the Message-ID, which the operator looks for in the relay's log."""
        self._put(_Reply(job, Outcome.UNKNOWN, {"error": str(exc)}, message_id))

    def bounced(self, job: SendJob, exc: PermanentSendError) -> None:
        self.stopped_leads.add(job.lead.id)
        self._put(_Reply(job, Outcome.BOUNCED, {"error": str(exc)}))

    def transient(self, job: SendJob, exc: TransientSendError) -> None:
        error = str(exc)
        if job.attempts >= self._mailer.max_attempts:
            self.failed(job, f"gave up after {job.attempts} attempts: {error}")
            return
        if exc.deferral:  # the recipient's side said "try later" (see `SendError`): pause its domain
            self.pausing.add(recipient_domain(job.lead.email))
        self._put(_Reply(job, Outcome.RETRY, {"error": error}))

    def stopped(self, job: SendJob, *, marked: bool) -> None:
        """Not sent: its lead bounced earlier in this batch. The suppression cancels it when still `claimed`;
        one already moved to `sending` goes back to `pending`, and the next pass cancels it."""
        if marked:
            self._put(_Reply(job, Outcome.HELD, {"error": "lead suppressed"}, marked=True))
        else:
            self.outcomes[job.delivery_id] = Outcome.HELD

    def taken(self, job: SendJob) -> None:
        """Not sent: a duplicate message or the suppression of its lead moved it on first."""
        self.outcomes[job.delivery_id] = Outcome.NOT_CLAIMED

    def paused(self, job: SendJob, *, marked: bool = False) -> None:
        self._put(_Reply(job, Outcome.PAUSED, {"error": "domain paused"}, marked=marked))

    def _put(self, reply: _Reply) -> None:
        self.outcomes[reply.job.delivery_id] = reply.outcome
        self._queue.put_nowait(reply)

    # --- the writer ---

    async def _write_groups(self) -> None:
        done = False
        while not done:
            first = await self._queue.get()
            group = [] if first is None else [first]
            done = first is None
            while not self._queue.empty():
                reply = self._queue.get_nowait()
                if reply is None:
                    done = True
                else:
                    group.append(reply)
            if group:
                async with self._db.transaction() as conn:
                    await self._write(conn, group)

    async def _write(self, conn: AsyncConnection, group: list[_Reply]) -> None:
        now = self._now
        finished, bounced = Finished(), list[_Reply]()
        later: list[tuple[int, datetime, str]] = []  # tried: the attempt counts
        untried: list[tuple[int, datetime, str]] = []  # held back for a paused domain before marking
        unsent: list[tuple[int, datetime, str]] = []  # held back for a paused domain after marking
        for reply in group:  # retries first: a pause they start is the due time of the paused ones
            if reply.outcome is Outcome.RETRY:
                later.append(await self._retry_at(conn, reply))
        for reply in group:
            if reply.outcome is Outcome.HELD:
                unsent.append((reply.job.delivery_id, now, "lead suppressed"))
            elif reply.outcome is Outcome.PAUSED:
                until = self._paused_until.get(recipient_domain(reply.job.lead.email), now)
                held = unsent if reply.marked else untried
                held.append((reply.job.delivery_id, self._window(reply.job, until), "domain paused"))
            elif reply.outcome is not Outcome.RETRY:
                self._finish(finished, reply)
                bounced += [reply] if reply.outcome is Outcome.BOUNCED else []
        await record_finished(conn, finished)
        for reply in bounced:  # suppressed at once, so every campaign stops
            reason = f"bounced: {reply.detail['error']}"[:200]
            await suppress_lead(conn, reply.job.lead.id, reason=reason, now=now)
            # ...and for good: the address stays unsendable even if the lead is erased and imported again
            await add_suppression(conn, address_hash(reply.job.lead.email), reason="bounced", now=now)
        await return_to_pending(conn, [*later, *untried])
        await return_to_pending(conn, unsent, give_back_attempt=True)
        await complete_finished_enrollments(conn, {r.job.enrollment_id for r in group}, now=now)
        cleared = (self._succeeded & self._backoff) - self.pausing
        if cleared:
            await clear_domains(conn, cleared)
            self._backoff -= cleared
        _log_group(group)

    def _finish(self, finished: Finished, reply: _Reply) -> None:
        status, kind = _FINAL[reply.outcome]
        detail = dict(reply.detail)
        if reply.replied_at is not None:
            detail["smtp_window_ms"] = round((time.monotonic() - reply.replied_at) * 1000, 3)
            self._succeeded.add(recipient_domain(reply.job.lead.email))
        finished.add(
            reply.job,
            status=status,
            kind=kind,
            now=self._now,
            detail=detail,
            message_id=reply.message_id,
            variant=reply.variant,
        )

    async def _retry_at(self, conn: AsyncConnection, reply: _Reply) -> tuple[int, datetime, str]:
        job, error, mailer = reply.job, str(reply.detail["error"]), self._mailer
        retry_at = self._now + backoff(job.attempts, base=mailer.retry_after, cap=RETRY_CAP)
        domain = recipient_domain(job.lead.email)
        if domain in self.pausing:
            until = await pause_domain(
                conn,
                domain,
                error=error,
                now=self._now,
                base=mailer.domain_backoff,
                cap=mailer.domain_backoff_max,
            )
            self._paused_until[domain] = until
            retry_at = max(retry_at, until)
        return job.delivery_id, self._window(job, retry_at), error

    def _window(self, job: SendJob, at: datetime) -> datetime:
        catalog = self._mailer.catalog
        campaign = catalog.campaigns.get(job.campaign_id)
        if campaign is None:
            return at
        return window_due(job, campaign, at, days_off=catalog.days_off(campaign, job.lead.country))


_FINAL: Final = {
    Outcome.SENT: ("sent", "email_sent"),
    Outcome.SHADOWED: ("shadowed", "email_shadowed"),
    Outcome.FAILED: ("failed", "email_failed"),
    Outcome.BOUNCED: ("failed", "email_failed"),
    Outcome.UNKNOWN: ("unknown", "email_unknown"),
}


def _log_group(group: list[_Reply]) -> None:
    for reply in group:
        if reply.outcome is Outcome.SENT:
            log.debug("delivery sent delivery_id=%s", reply.job.delivery_id)
        elif reply.outcome is Outcome.UNKNOWN:
            log.error("delivery outcome unknown delivery_id=%s: not re-sent", reply.job.delivery_id)
        elif reply.outcome is not Outcome.SHADOWED:
            log.warning(
                "delivery %s delivery_id=%s lead_id=%s error=%s",
                reply.outcome.value,
                reply.job.delivery_id,
                reply.job.lead.id,
                _error_kind(str(reply.detail.get("error", ""))),
            )


def _error_kind(error: str) -> str:
    """What kind of error this is ("SMTP 550", "render"), without the server's text: that often quotes
    the recipient's address, and logs carry ids only. The whole text is on the delivery and its touchpoint."""
    return error.partition(":")[0]
