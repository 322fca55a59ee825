"""The scheduler process: two APScheduler jobs, enroll and dispatch, run only by the lease-holding leader,
and a third that renews the lease.

Any number of scheduler processes may run; the lease decides which one works, and the flows themselves are
safe when two ever overlap. Claimed delivery ids are handed to the broker; a lost message is claimed again
once its lease lapses. A dispatch leaves domains in SMTP backoff unclaimed, keeps each domain within
`NURTURE_DOMAIN_RATE_LIMITS`, and skips touches later than their campaign's `skip_late_after`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from nurture.actors import Actors
from nurture.core.ratelimit import parse_rate_limits
from nurture.db.queries.leases import release_lease, try_acquire_lease
from nurture.db.queries.send_domains import paused_domains
from nurture.flows.alert import find_stalled_alerts
from nurture.flows.escalate import find_unscored_leads
from nurture.flows.send_tally import SendCounts
from nurture.flows.tick import dispatch, enroll, late_rules
from nurture.runtime import Runtime

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
# The leader renews its lease this many times per tick interval and the lease lasts one interval, so a
# leader that dies is replaced by another scheduler's next tick after the lease ends: within two ticks.
RENEWALS_PER_INTERVAL = 3


@dataclass(frozen=True, slots=True)
class TickResult:
    enrolled: int
    claimed: int
    unknown: int
    skipped_late: int = 0
    sends: SendCounts | None = None  # what the claimed deliveries came to, when this process sent them


class Scheduler:
    def __init__(self, runtime: Runtime, actors: Actors) -> None:
        self.runtime = runtime
        self.actors = actors
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        settings = runtime.settings
        self.interval = timedelta(seconds=settings.tick_interval_s)
        self.lease = timedelta(seconds=settings.claim_lease_s)
        self.rate_limits = parse_rate_limits(settings.domain_rate_limits)
        # A send normally ends within the SMTP timeout; past twice that its worker is gone.
        self.stale_after = timedelta(seconds=max(4 * settings.smtp_timeout_s, 60))

    async def tick(self, now: datetime) -> TickResult:
        """One full pass at `now`: enroll, then dispatch (used by `nurture tick`)."""
        enrolled = await enroll(self.runtime.db, self.runtime.catalog, now)
        claimed, unknown, skipped = await self._dispatch(now)
        return TickResult(enrolled=enrolled, claimed=claimed, unknown=unknown, skipped_late=skipped)

    async def enroll_job(self) -> None:
        now = self.runtime.clock.now()
        if await self.holds_lease(now):
            await enroll(self.runtime.db, self.runtime.catalog, now)

    async def dispatch_job(self) -> None:
        now = self.runtime.clock.now()
        if await self.holds_lease(now):
            await self._dispatch(now)

    async def lease_job(self) -> None:
        await self.holds_lease(self.runtime.clock.now())

    async def _dispatch(self, now: datetime) -> tuple[int, int, int]:
        db = self.runtime.db
        async with db.transaction() as conn:
            paused = await paused_domains(conn, now)
        result = await dispatch(
            db,
            now,
            lease=self.lease,
            limit=self.runtime.settings.claim_batch,
            stale_after=self.stale_after,
            limits=self.rate_limits,
            late_after=late_rules(self.runtime.catalog),
            paused=paused,
        )
        enqueued = self.actors.enqueue_deliveries(result.claimed)
        if enqueued:
            log.info("dispatched deliveries=%d", enqueued)
        # An alert whose broker message was lost is found again here, as deliveries are by their leases.
        stalled = await find_stalled_alerts(db=self.runtime.db, now=now)
        if self.actors.enqueue_alerts(stalled):
            log.warning("re-enqueued stalled alerts=%d", len(stalled))
        unscored = await find_unscored_leads(db=self.runtime.db, now=now)
        for lead_id in unscored:
            self.actors.enqueue_rescore(lead_id)
        if unscored:
            log.warning("re-enqueued lost re-scores leads=%d", len(unscored))
        return enqueued, len(result.unknown), len(result.skipped_late)

    async def holds_lease(self, now: datetime) -> bool:
        """Take or renew the leader lease at `now`; True when this scheduler leads."""
        async with self.runtime.db.transaction() as conn:
            leader = await try_acquire_lease(
                conn, name=LEASE_NAME, holder=self.holder, now=now, ttl=self.interval
            )
        if not leader:
            log.debug("not the leader holder=%s", self.holder)
        return leader

    def start(self) -> AsyncIOScheduler:
        """Start the jobs on the running event loop (first run at once)."""
        scheduler = AsyncIOScheduler()
        seconds = self.interval.total_seconds()
        jobs = (
            (self.lease_job, seconds / RENEWALS_PER_INTERVAL),
            (self.enroll_job, seconds),
            (self.dispatch_job, seconds),
        )
        for job, every in jobs:
            scheduler.add_job(
                job,
                "interval",
                seconds=every,
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now().astimezone(),  # APScheduler's own wall clock, not ours
                id=job.__name__,
            )
        scheduler.start()
        return scheduler

    async def resign(self) -> None:
        """Give up the lease at shutdown so another scheduler takes over at its next tick."""
        async with self.runtime.db.transaction() as conn:
            await release_lease(conn, name=LEASE_NAME, holder=self.holder)
