"""Record events for the endpoints: store them, count them, and hand each lead with a new event to `on_event`.

`on_event` is how a re-score gets enqueued (the service passes the actor's `send`). It runs on the event loop
right after the commit, so it must only enqueue. It is not called for replays or unknown leads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from nurture.db.engine import Database
from nurture.flows.engage import InboundEvent, NotRecorded, RecordedEvent, record_events
from nurture.web.metrics import WebMetrics

log = logging.getLogger(__name__)

OnEvent = Callable[[int], None]


class EventRecorder:
    def __init__(self, db: Database, metrics: WebMetrics, on_event: OnEvent | None) -> None:
        self._db = db
        self._metrics = metrics
        self._on_event = on_event

    async def record(
        self, events: Sequence[InboundEvent], *, now: datetime
    ) -> list[RecordedEvent | NotRecorded]:
        """Store `events` in one transaction and return what became of each (see `record_events`)."""
        outcomes = await record_events(self._db, events, now=now)
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, RecordedEvent):
                self._metrics.events.labels(type=event.type).inc()
            elif outcome is NotRecorded.DUPLICATE:
                self._metrics.duplicates.labels(type=event.type).inc()
        leads = dict.fromkeys(o.lead_id for o in outcomes if isinstance(o, RecordedEvent))
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
