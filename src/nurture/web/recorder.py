"""Record events for the endpoints: store them, count them, and hand each lead with a new event to `on_event`.

`on_event` is how a re-score gets enqueued (the service passes the actor's `send`). It runs on the event loop
right after the commit, so it must only enqueue. It is not called for replays, repeats, or unknown or erased
leads.

`TrackingRecorder` is what the pixel, click and visit endpoints use. With Redis configured it appends each
event to the event stream (one XADD; a worker stores it: `nurture.event_consumer`) and the request is done.
When that write fails it records the event in the database instead, as the embedded default always does, and
keeps doing so for `STREAM_RETRY_S` before trying Redis again: an event is either in Redis or in the database
before the answer goes out, or the failure is logged and counted (`error`). Falling back rather than answering
503 keeps a lead's click working through a Redis outage; the database is the source of truth anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Final

from redis.exceptions import RedisError

from nurture.core.events import InboundEvent, NotRecorded, RecordedEvent
from nurture.core.scoring import DEFAULT_RULES, ScoringRules
from nurture.db.engine import Database
from nurture.event_stream import EventStream
from nurture.flows.engage import REPLAY_WINDOW, record_events
from nurture.web.metrics import WebMetrics

log = logging.getLogger(__name__)

OnEvent = Callable[[int], None]
STREAM_TIMEOUT_S: Final = 1.0  # a Redis that does not answer within this is treated as down
STREAM_RETRY_S: Final = 5.0  # after a failed write, events go to the database this long
BUFFERED: Final = "buffered"


class EventRecorder:
    def __init__(
        self,
        db: Database,
        metrics: WebMetrics,
        on_event: OnEvent | None,
        *,
        replay_window: timedelta = REPLAY_WINDOW,
    ) -> None:
        self._db = db
        self._replay_window = replay_window
        self._metrics = metrics
        self._on_event = on_event

    async def record(
        self, events: Sequence[InboundEvent], *, now: datetime, rules: ScoringRules = DEFAULT_RULES
    ) -> list[RecordedEvent | NotRecorded]:
        """Store `events` in one transaction and return what became of each (see `record_events`; `rules`
        tell which events are flagged as machine engagement)."""
        outcomes = await record_events(
            self._db, events, now=now, rules=rules, replay_window=self._replay_window
        )
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, RecordedEvent):
                self._metrics.events.labels(type=event.type).inc()
            elif outcome is NotRecorded.DUPLICATE:
                self._metrics.duplicates.labels(type=event.type).inc()
        leads = dict.fromkeys(o.lead_id for o in outcomes if isinstance(o, RecordedEvent) and not o.repeat)
        for lead_id in leads:
            # The broker client blocks: off the event loop, so a slow Redis cannot stall other requests.
            await asyncio.to_thread(self._notify, lead_id)
        return outcomes

    def _notify(self, lead_id: int) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(lead_id)
        except Exception:  # the event is stored whatever the broker says; the answer must not fail
            log.exception("could not enqueue the re-score of lead_id=%s", lead_id)


class TrackingRecorder:
    """Where the tracking endpoints put an event: the event stream when there is one, else the database."""

    def __init__(
        self, recorder: EventRecorder, stream: EventStream | None, *, rules: ScoringRules = DEFAULT_RULES
    ) -> None:
        self._recorder = recorder
        self._stream = stream
        self._rules = rules
        self._stream_down_until = float("-inf")

    @classmethod
    def for_redis(
        cls, recorder: EventRecorder, redis_url: str | None, *, rules: ScoringRules = DEFAULT_RULES
    ) -> TrackingRecorder:
        stream = EventStream.from_url(redis_url, timeout_s=STREAM_TIMEOUT_S) if redis_url else None
        return cls(recorder, stream, rules=rules)

    async def accept(self, event: InboundEvent) -> str:
        """Put `event` where it is durable; the outcome: `buffered`, `ok`, or a `NotRecorded` value.

        Raises whatever the database raises when the event could be stored nowhere.
        """
        if self._stream is not None and time.monotonic() >= self._stream_down_until:
            try:
                await self._stream.append(event)
                return BUFFERED
            except (RedisError, OSError) as exc:
                # A write that timed out may have landed all the same: stored twice then, never zero times.
                self._stream_down_until = time.monotonic() + STREAM_RETRY_S
                reason = next(iter(str(exc).splitlines()), "")
                log.warning(
                    "event stream unavailable, recording in the database for %ss: %s: %s",
                    STREAM_RETRY_S,
                    type(exc).__name__,
                    reason,
                )
        [outcome] = await self._recorder.record([event], now=event.occurred_at, rules=self._rules)
        if isinstance(outcome, NotRecorded):
            return outcome.value
        return "repeat" if outcome.repeat else "ok"

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
