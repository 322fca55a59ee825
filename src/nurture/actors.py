"""The Dramatiq actors: an id in, one flow call.

Actors are declared on an explicit broker by `declare_actors(broker)`, never at import time, so no module
silently falls back to Dramatiq's default broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dramatiq

from nurture.broker import runtime_middleware
from nurture.flows.deliver import deliver

DELIVERIES_QUEUE = "deliveries"


@dataclass(frozen=True, slots=True)
class Actors:
    broker: dramatiq.Broker
    send_delivery: Any  # dramatiq.Actor[[int], None]

    @property
    def queues(self) -> tuple[str, ...]:
        return (DELIVERIES_QUEUE,)

    def enqueue_deliveries(self, delivery_ids: Iterable[int]) -> int:
        count = 0
        for delivery_id in delivery_ids:
            self.send_delivery.send(delivery_id)
            count += 1
        return count


def declare_actors(broker: dramatiq.Broker) -> Actors:
    runtime = runtime_middleware(broker)

    async def send_delivery(delivery_id: int) -> None:
        """Send one claimed delivery; a second run finds it taken and does nothing."""
        rt = runtime.current()
        await deliver(delivery_id, db=rt.db, mailer=rt.mailer, now=rt.clock.now())

    # Transient SMTP failures are rescheduled in the database (see flows.deliver); Dramatiq's own retries only
    # cover the unexpected, such as the database being briefly unreachable.
    send = dramatiq.actor(
        broker=broker,
        actor_name="send_delivery",
        queue_name=DELIVERIES_QUEUE,
        max_retries=5,
        min_backoff=1_000,
        max_backoff=60_000,
        time_limit=120_000,
    )(send_delivery)
    return Actors(broker=broker, send_delivery=send)
