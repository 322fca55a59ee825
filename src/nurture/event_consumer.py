"""Store the tracking events the web buffered in Redis (see `event_stream`), in batches, inside the worker.

`EventConsumer.run()` blocks on the stream (XREADGROUP BLOCK: an event is picked up the moment it arrives, no
polling), stores what it read in one transaction (`record_keyed_events`), enqueues the re-score of every lead
in the batch, and only then acknowledges the entries. So:

- a consumer killed mid-batch leaves its entries pending; a consumer that starts later (or any other one)
  claims them once they have been idle `claim_idle_ms` (`NURTURE_EVENT_CLAIM_IDLE_S`), and the idempotency
  keys derived from the entry ids make the second store record nothing twice (the re-scores are enqueued
  again: re-scoring is idempotent);
- an entry that cannot be decoded, whose event the database refuses (a constraint), or whose event names an
  email of another lead (`FOREIGN_DELIVERY`), is rejected: copied to the rejected stream with the reason,
  logged, acknowledged; the rest of its batch is stored;
- when the database or Redis is down, nothing is acknowledged; the consumer retries with backoff, re-reading
  its own pending entries first.

`EventConsumerMiddleware` runs one consumer per worker process on Dramatiq's event-loop thread (the loop the
async actors use, sharing their database pool) from worker boot to worker shutdown, when Redis is configured.
It also coalesces re-scores: a lead whose re-score is queued and has not started gets no second one (a marker
key per lead, set when the consumer enqueues and deleted as the re-score starts, so the queued one reads the
events committed before it; the marker expires after `RESCORE_MARK_S` in case its message is lost). Without
this, a lead clicking through a busy minute would queue one re-score per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import redis
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware
from sqlalchemy.exc import DataError, IntegrityError

from nurture.broker import RuntimeMiddleware
from nurture.clock import Clock
from nurture.core.events import InboundEvent, NotRecorded, RecordedEvent
from nurture.core.scoring import DEFAULT_RULES, ScoringRules
from nurture.db.engine import Database
from nurture.event_stream import EventStream, StreamEntry, decode_event
from nurture.flows.engage import REPLAY_WINDOW, record_keyed_events

log = logging.getLogger(__name__)

BATCH_SIZE: Final = 500
BLOCK_MS: Final = 2_000  # how long one read waits for new entries; shorter than the socket timeout
SOCKET_TIMEOUT_S: Final = 10.0
CLAIM_IDLE_MS: Final = 30_000  # read this long ago, not acknowledged: its consumer died (event_claim_idle_s)
CLAIM_EVERY_S: Final = 10.0
MAX_BACKOFF_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
RESCORE_MARK: Final = "nurture:rescore-queued:"
RESCORE_MARK_S: Final = 60
RESCORE_ACTOR: Final = "rescore_lead"

EnqueueRescores = Callable[[Sequence[int]], None]  # blocking (a broker client): run off the event loop


@dataclass(frozen=True, slots=True)
class BatchReport:
    recorded: int = 0
    duplicates: int = 0  # stored before (a redelivery): not recorded again
    repeats: int = 0  # of `recorded`: the same signal as one stored within the replay window
    unknown_leads: int = 0  # the lead was erased since the link was made
    rejected: int = 0  # garbage, or refused by the database: kept in the rejected stream


def _may_change_score(outcome: RecordedEvent | NotRecorded) -> bool:
    if isinstance(outcome, RecordedEvent):
        return not outcome.repeat
    return outcome is not NotRecorded.UNKNOWN_LEAD


class EventConsumer:
    def __init__(
        self,
        stream: EventStream,
        db: Database,
        clock: Clock,
        enqueue_rescores: EnqueueRescores,
        *,
        name: str | None = None,
        batch_size: int = BATCH_SIZE,
        block_ms: int = BLOCK_MS,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        rules: ScoringRules = DEFAULT_RULES,
        replay_window: timedelta = REPLAY_WINDOW,
    ) -> None:
        self._stream = stream
        self._replay_window = replay_window
        self._db = db
        self._clock = clock
        self._enqueue = enqueue_rescores
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._rules = rules  # the scanner user agents and delays that flag machine events as they are stored
        self._own_pending = True  # entries this consumer read before a failure or a restart come first
        self._claimed_at = float("-inf")
        self._group_ready = False  # created at start, and again after a failure (Redis may have been flushed)

    async def run(self) -> None:
        """Consume until cancelled; failures are logged and retried with backoff."""
        backoff = 0.5
        while True:
            try:
                await self.step()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = next(iter(str(exc).splitlines()), "")
                log.error(
                    "event stream: batch not stored, retrying in %.1fs: %s: %s",
                    backoff,
                    type(exc).__name__,
                    reason,
                )
                self._own_pending, self._group_ready = True, False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def step(self) -> BatchReport:
        """Handle one batch: entries dead consumers left (when due), else own pending ones, else new ones."""
        if not self._group_ready:
            await self._stream.ensure_group()
            self._group_ready = True
        if time.monotonic() - self._claimed_at >= CLAIM_EVERY_S:
            self._claimed_at = time.monotonic()
            stale = await self._stream.claim_stale(
                self.name, min_idle_ms=self._claim_idle_ms, count=self._batch_size
            )
            if stale:
                log.warning("event stream: claimed %s entries a stopped consumer left", len(stale))
                self._claimed_at = float("-inf")  # there may be more
                return await self.handle(stale)
        if self._own_pending:
            entries = await self._stream.read(self.name, count=self._batch_size, block_ms=None, own=True)
            if entries:
                return await self.handle(entries)
            self._own_pending = False
        entries = await self._stream.read(
            self.name, count=self._batch_size, block_ms=self._block_ms, own=False
        )
        return await self.handle(entries)

    async def handle(self, entries: Sequence[StreamEntry]) -> BatchReport:
        """Store the events of `entries`, enqueue their leads' re-scores, then acknowledge them."""
        if not entries:
            return BatchReport()
        decoded: list[tuple[StreamEntry, InboundEvent]] = []
        rejected = 0
        for entry in entries:
            if entry.fields is None:  # deleted while pending: it was stored and settled already
                continue
            try:
                decoded.append((entry, decode_event(entry.entry_id, entry.fields)))
            except ValueError as exc:
                await self._reject(entry, f"not an event: {exc}")
                rejected += 1
        stored, refused = await self._store(decoded)
        rejected += refused
        outcomes: list[tuple[InboundEvent, RecordedEvent | NotRecorded]] = []
        for entry, event, outcome in stored:
            if outcome is NotRecorded.FOREIGN_DELIVERY:  # only a holder of the signing key could make one
                await self._reject(entry, f"delivery {event.delivery_id} is not lead {event.lead_id}'s")
                rejected += 1
            else:
                outcomes.append((event, outcome))
        # A duplicate is a redelivery after a crash that may have come before its re-score was enqueued.
        # An erased or unknown lead's event, and a repeat within the replay window, change no score.
        leads = sorted({e.lead_id for e, o in outcomes if _may_change_score(o)})
        if leads:
            await asyncio.to_thread(self._enqueue, leads)
        await self._stream.settle([entry.entry_id for entry in entries])
        report = BatchReport(
            recorded=sum(isinstance(o, RecordedEvent) for _, o in outcomes),
            duplicates=sum(o is NotRecorded.DUPLICATE for _, o in outcomes),
            repeats=sum(isinstance(o, RecordedEvent) and o.repeat for _, o in outcomes),
            unknown_leads=sum(o is NotRecorded.UNKNOWN_LEAD for _, o in outcomes),
            rejected=rejected,
        )
        if report.unknown_leads:
            log.info("event stream: %s events of erased or unknown leads dropped", report.unknown_leads)
        log.debug("event stream: %s", report)
        return report

    async def _store(
        self, decoded: Sequence[tuple[StreamEntry, InboundEvent]]
    ) -> tuple[list[tuple[StreamEntry, InboundEvent, RecordedEvent | NotRecorded]], int]:
        """Record the batch in one transaction; if the database refuses it, event by event, rejecting any it
        refuses alone. Returns the outcome of each event stored, and how many were rejected."""
        events = [event for _, event in decoded]
        try:
            outcomes = await record_keyed_events(
                self._db, events, now=self._clock.now(), rules=self._rules, replay_window=self._replay_window
            )
        except (IntegrityError, DataError):
            log.warning("event stream: a batch of %s was refused; storing it event by event", len(events))
        else:
            return [(e, ev, o) for (e, ev), o in zip(decoded, outcomes, strict=True)], 0
        stored: list[tuple[StreamEntry, InboundEvent, RecordedEvent | NotRecorded]] = []
        rejected = 0
        for entry, event in decoded:
            try:
                [outcome] = await record_keyed_events(
                    self._db,
                    [event],
                    now=self._clock.now(),
                    rules=self._rules,
                    replay_window=self._replay_window,
                )
            except (IntegrityError, DataError) as exc:
                await self._reject(entry, f"refused by the database: {type(exc.orig).__name__}")
                rejected += 1
            else:
                stored.append((entry, event, outcome))
        return stored, rejected

    async def _reject(self, entry: StreamEntry, reason: str) -> None:
        log.error("event stream: rejected entry %s: %s", entry.entry_id, reason)
        await self._stream.reject(entry, reason)


class EventConsumerMiddleware(Middleware):
    """Runs an `EventConsumer` on the worker's event loop while the worker runs (when Redis is configured).

    Add it before `RuntimeMiddleware`: it starts after every worker-boot hook ran (the runtime is open) and
    stops before the runtime's database is closed.
    """

    def __init__(self, runtime: RuntimeMiddleware, enqueue_rescore: Callable[[int], None]) -> None:
        self._runtime = runtime
        self._enqueue_rescore = enqueue_rescore
        self._task: asyncio.Task[None] | None = None
        self._stream: EventStream | None = None
        self._marks: redis.Redis | None = None

    def after_worker_boot(self, _broker: Any, _worker: Any) -> None:
        runtime = self._runtime.current()
        loop_thread = get_event_loop_thread()
        if runtime.settings.redis_url is None or loop_thread is None:
            return
        self._marks = redis.Redis.from_url(
            runtime.settings.redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
        )
        self._stream = EventStream.from_url(runtime.settings.redis_url, timeout_s=SOCKET_TIMEOUT_S)
        claim_idle_ms = round(runtime.settings.event_claim_idle_s * 1000)
        consumer = EventConsumer(
            self._stream,
            runtime.db,
            runtime.clock,
            self._enqueue_each,
            claim_idle_ms=claim_idle_ms,
            rules=runtime.catalog.scoring,
            replay_window=timedelta(seconds=runtime.settings.replay_window_s),
        )

        async def start() -> asyncio.Task[None]:
            return asyncio.create_task(consumer.run(), name="event-stream-consumer")

        self._task = loop_thread.run_coroutine(start())
        log.info("event stream consumer started name=%s", consumer.name)

    def before_worker_shutdown(self, _broker: Any, _worker: Any) -> None:
        task, stream, self._task, self._stream = self._task, self._stream, None, None
        loop_thread = get_event_loop_thread()
        if task is None or stream is None or loop_thread is None:
            return

        async def stop() -> None:
            task.cancel()  # between batches, or mid-batch: unacknowledged entries are claimed again later
            await asyncio.gather(task, return_exceptions=True)
            await stream.aclose()

        asyncio.run_coroutine_threadsafe(stop(), loop_thread.loop).result(timeout=STOP_TIMEOUT_S)

    def before_process_message(self, _broker: Any, message: Any) -> None:
        if self._marks is not None and message.actor_name == RESCORE_ACTOR and message.args:
            self._marks.delete(f"{RESCORE_MARK}{message.args[0]}")

    def after_worker_shutdown(self, _broker: Any, _worker: Any) -> None:
        marks, self._marks = self._marks, None
        if marks is not None:
            marks.close()

    def _enqueue_each(self, lead_ids: Sequence[int]) -> None:
        """Enqueue the re-score of each lead that has none queued (not started) already."""
        if self._marks is None:
            return
        with self._marks.pipeline(transaction=False) as pipe:
            for lead_id in lead_ids:
                pipe.set(f"{RESCORE_MARK}{lead_id}", 1, nx=True, ex=RESCORE_MARK_S)
            newly_marked = pipe.execute()
        for lead_id, marked in zip(lead_ids, newly_marked, strict=True):
            if marked:
                try:
                    self._enqueue_rescore(lead_id)
                except BaseException:
                    self._marks.delete(f"{RESCORE_MARK}{lead_id}")  # not queued after all
                    raise
