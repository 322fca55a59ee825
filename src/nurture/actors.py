"""The Dramatiq actors: an id in, one flow call, its result handed on.

send_deliveries (deliveries) sends a batch of claimed deliveries (send_delivery: one). rescore_lead
(scoring) re-scores a lead after an event and hands the alert it raised, if any, to send_alert (alerts),
which retries until every alert sink has it.

Actors are declared on an explicit broker by `declare_actors(broker)`, never at import time, so no module
silently falls back to Dramatiq's default broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq

from nurture.broker import RuntimeMiddleware, runtime_middleware
from nurture.event_consumer import EventConsumerMiddleware
from nurture.flows.alert import deliver_alert
from nurture.flows.deliver import deliver_batch
from nurture.flows.escalate import rescore
from nurture.flows.send_outcomes import Outcome

DELIVERIES_QUEUE = "deliveries"
SCORING_QUEUE = "scoring"
ALERTS_QUEUE = "alerts"
SEND_BATCH = 50  # deliveries per broker message: one claim transaction, concurrent SMTP, group commits
ALERT_RETRIES = 20  # with backoff capped at 10 minutes: about 2.5 hours of trying before it is marked failed


@dataclass(frozen=True, slots=True)
class Actors:
    broker: dramatiq.Broker
    send_delivery: Any  # dramatiq.Actor[[int], None]
    rescore_lead: Any  # dramatiq.Actor[[int], None]
    send_alert: Any  # dramatiq.Actor[[int], None]
    send_deliveries: Any = None  # dramatiq.Actor[[list[int]], None]
    send_batch: int = SEND_BATCH

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue, in the order work flows through them (a drain joins them in this order)."""
        return (DELIVERIES_QUEUE, SCORING_QUEUE, ALERTS_QUEUE)

    def enqueue_rescore(self, lead_id: int) -> None:
        """Re-score a lead soon (the tracking web's `on_event` callback)."""
        self.rescore_lead.send(lead_id)

    def enqueue_deliveries(self, delivery_ids: Iterable[int]) -> int:
        """Hand claimed deliveries to the workers, `send_batch` ids per message; return how many."""
        ids = list(delivery_ids)
        for start in range(0, len(ids), self.send_batch):
            self.send_deliveries.send(ids[start : start + self.send_batch])
        return len(ids)

    def enqueue_alerts(self, alert_ids: Iterable[int]) -> int:
        return _send_each(self.send_alert, alert_ids)


def _send_each(actor: Any, ids: Iterable[int]) -> int:
    count = 0
    for item_id in ids:
        actor.send(item_id)
        count += 1
    return count


def declare_actors(
    broker: dramatiq.Broker,
    *,
    send_batch: int = SEND_BATCH,
    on_outcomes: Callable[[Mapping[int, Outcome]], None] | None = None,
) -> Actors:
    """Declare the actors on `broker`; `on_outcomes` hears what each send batch came to (`tick --drain`)."""
    runtime = runtime_middleware(broker)

    async def send_delivery(delivery_id: int) -> None:
        """Send one claimed delivery; a second run finds it taken and does nothing."""
        await send_deliveries([delivery_id])

    async def send_deliveries(delivery_ids: list[int]) -> None:
        """Send a batch of claimed deliveries; a second run finds them taken and does nothing."""
        rt = runtime.current()
        result = await deliver_batch(delivery_ids, db=rt.db, mailer=rt.mailer, now=rt.clock.now())
        if on_outcomes is not None:
            on_outcomes(result.outcomes)
        for alert_id in result.alert_ids:  # rep tasks of the batch's steps
            alert_actor.send(alert_id)

    # Transient SMTP failures are rescheduled in the database (see flows.deliver); Dramatiq's own retries only
    # cover the unexpected, such as the database being briefly unreachable.
    sending: dict[str, Any] = {
        "broker": broker,
        "queue_name": DELIVERIES_QUEUE,
        "max_retries": 5,
        "min_backoff": 1_000,
        "max_backoff": 60_000,
    }
    send = dramatiq.actor(actor_name="send_delivery", time_limit=120_000, **sending)(send_delivery)
    # A batch through a relay at its slowest: 50 x 30 s timeouts over 4 connections.
    batch = dramatiq.actor(actor_name="send_deliveries", time_limit=900_000, **sending)(send_deliveries)

    alert_actor = _declare_send_alert(broker, runtime)
    rescore_actor = _declare_rescore_lead(broker, runtime, alert_actor)
    _add_event_consumer(broker, runtime, rescore_actor)
    return Actors(
        broker=broker,
        send_delivery=send,
        rescore_lead=rescore_actor,
        send_alert=alert_actor,
        send_deliveries=batch,
        send_batch=send_batch,
    )


def _add_event_consumer(broker: dramatiq.Broker, runtime: RuntimeMiddleware, rescore_lead: Any) -> None:
    """Workers also store the tracking events the web buffered in Redis, and enqueue their re-scores."""
    broker.add_middleware(EventConsumerMiddleware(runtime, rescore_lead.send), before=RuntimeMiddleware)


def _declare_send_alert(broker: dramatiq.Broker, runtime: RuntimeMiddleware) -> Any:
    async def send_alert(alert_id: int) -> None:
        """Deliver one alert to every sink; raises (and is retried) while a sink fails."""
        rt = runtime.current()
        await deliver_alert(
            alert_id,
            db=rt.db,
            sinks=rt.sinks,
            catalog=rt.catalog,
            base_url=rt.settings.base_url,
            now=rt.clock.now(),
            max_attempts=ALERT_RETRIES + 1,  # the flow marks the last failure `failed` instead of raising
        )

    return dramatiq.actor(
        broker=broker,
        actor_name="send_alert",
        queue_name=ALERTS_QUEUE,
        max_retries=ALERT_RETRIES,
        min_backoff=5_000,
        max_backoff=600_000,
        time_limit=120_000,
    )(send_alert)


def _declare_rescore_lead(broker: dramatiq.Broker, runtime: RuntimeMiddleware, send_alert: Any) -> Any:
    async def rescore_lead(lead_id: int) -> None:
        """Re-score one lead from its event log; hand on the alert it raised."""
        rt = runtime.current()
        result = await rescore(lead_id, db=rt.db, catalog=rt.catalog, now=rt.clock.now())
        for alert_id in result.alert_ids if result is not None else ():
            send_alert.send(alert_id)

    # Rescoring recomputes from the log, so a retry (say, after the database blinked) is safe.
    return dramatiq.actor(
        broker=broker,
        actor_name="rescore_lead",
        queue_name=SCORING_QUEUE,
        max_retries=5,
        min_backoff=1_000,
        max_backoff=60_000,
        time_limit=60_000,
    )(rescore_lead)
