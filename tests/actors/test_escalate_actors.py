"""rescore_lead -> send_alert on Dramatiq's StubBroker, wired by the production setup_broker()."""

from __future__ import annotations

import asyncio
import email
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select

from nurture.actors import Actors, declare_actors
from nurture.broker import setup_broker
from nurture.clock import FrozenClock
from nurture.core.events import InboundEvent
from nurture.db.migrate import upgrade
from nurture.db.queries.tables import alerts, leads
from nurture.flows.engage import record_event
from nurture.flows.ingest import import_leads
from nurture.runtime import Runtime, build_runtime
from nurture.settings import Settings
from tests.project import PROJECT

ROOT = PROJECT  # the tests' own project files (tests/project.py)
NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
OWNER = "lin.chen@acmeflow.example"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path,
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
            "scoring_file": tmp_path / "no-scoring.yaml",  # the default rules
            "base_url": "https://nurture.example.com",
        }
    )


@pytest.fixture
def actors(settings: Settings) -> Iterator[Actors]:
    broker = setup_broker(settings, lambda: build_runtime(settings, clock=FrozenClock(NOW)))
    yield declare_actors(broker)
    broker.close()
    dramatiq.set_broker(None)  # type: ignore[arg-type]


async def _lead_with_a_booked_meeting(runtime: Runtime) -> int:
    await upgrade(runtime.db)
    await import_leads(
        runtime.db, [{"email": "mei@example.com", "first_name": "Mei", "owner": OWNER}], now=NOW
    )
    async with runtime.db.transaction() as conn:
        lead_id = int((await conn.execute(select(leads.c.id))).scalar_one())
    await record_event(
        runtime.db, InboundEvent(lead_id=lead_id, type="meeting_booked", occurred_at=NOW), now=NOW
    )
    return lead_id


def _drain(actors: Actors) -> None:
    worker = Worker(actors.broker, worker_threads=2)
    worker.start()
    try:
        for queue in actors.queues:
            actors.broker.join(queue)
        worker.join()
    finally:
        worker.stop()


async def test_a_rescore_that_qualifies_a_lead_alerts_its_owner_once(
    settings: Settings, actors: Actors
) -> None:
    # Given a lead whose booked meeting has not been scored yet
    runtime = build_runtime(settings, clock=FrozenClock(NOW))
    lead_id = await _lead_with_a_booked_meeting(runtime)
    # When its rescore is enqueued twice (at-least-once delivery by the broker) and the queues drain
    actors.enqueue_rescore(lead_id)
    actors.enqueue_rescore(lead_id)
    await asyncio.to_thread(_drain, actors)
    # Then one alert was raised and delivered: one email to the owner, in the embedded outbox
    async with runtime.db.transaction() as conn:
        rows = (await conn.execute(select(alerts.c.trigger, alerts.c.status, alerts.c.attempts))).all()
        stage = (await conn.execute(select(leads.c.stage))).scalar_one()
    assert [tuple(r) for r in rows] == [("mql", "delivered", 1)]
    assert stage == "mql"
    [eml] = settings.outbox_dir.glob("*.eml")
    msg = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert msg["To"] == f"Lin Chen <{OWNER}>"
    assert msg["Subject"].startswith("New MQL: Mei")
    assert f"https://nurture.example.com/leads/{lead_id}" in msg.get_body().get_content()  # type: ignore[union-attr]
    await runtime.aclose()


async def test_a_message_for_an_unknown_lead_or_alert_is_acknowledged(
    settings: Settings, actors: Actors
) -> None:
    runtime = build_runtime(settings, clock=FrozenClock(NOW))
    await upgrade(runtime.db)
    actors.enqueue_rescore(424242)
    actors.send_alert.send(424242)
    await asyncio.to_thread(_drain, actors)
    assert actors.queues == ("deliveries", "scoring", "alerts")
    assert isinstance(actors.broker, StubBroker)
    assert actors.broker.dead_letters == []
    assert not settings.outbox_dir.exists() or list(settings.outbox_dir.iterdir()) == []
    await runtime.aclose()
