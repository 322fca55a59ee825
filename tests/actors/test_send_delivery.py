"""The send_delivery actor on Dramatiq's StubBroker, wired by the production setup_broker()."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select

from nurture.actors import Actors, declare_actors
from nurture.broker import setup_broker
from nurture.clock import FrozenClock
from nurture.db.migrate import upgrade
from nurture.db.queries.tables import deliveries
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.runtime import Runtime, build_runtime
from nurture.settings import Settings
from tests.project import PROJECT

ROOT = PROJECT  # the tests' own project files (tests/project.py)
NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path,
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
        }
    )


@pytest.fixture
def actors(settings: Settings) -> Iterator[Actors]:
    broker = setup_broker(settings, lambda: build_runtime(settings, clock=FrozenClock(NOW)))
    yield declare_actors(broker)
    broker.close()
    dramatiq.set_broker(None)  # type: ignore[arg-type]


async def _claimed_deliveries(runtime: Runtime, leads: int) -> list[int]:
    await upgrade(runtime.db)
    rows = [
        {"email": f"lead{i}@example.com", "grade": "nurturable", "timezone": "Asia/Taipei"}
        for i in range(leads)
    ]
    await import_leads(runtime.db, rows, now=NOW)
    await enroll(runtime.db, runtime.catalog, NOW)
    return (
        await dispatch(
            runtime.db, NOW, lease=timedelta(minutes=10), limit=100, stale_after=timedelta(minutes=5)
        )
    ).claimed


def _drain(actors: Actors) -> None:
    worker = Worker(actors.broker, worker_threads=4)
    worker.start()
    try:
        actors.broker.join("deliveries")
        worker.join()
    finally:
        worker.stop()


async def test_duplicated_messages_send_each_delivery_once(settings: Settings, actors: Actors) -> None:
    # Given claimed deliveries, each enqueued twice (at-least-once delivery by the broker)
    runtime = build_runtime(settings, clock=FrozenClock(NOW))
    claimed = await _claimed_deliveries(runtime, leads=6)
    assert len(claimed) == 6
    actors.enqueue_deliveries(claimed + claimed)
    # When a worker drains the queue
    await asyncio.to_thread(_drain, actors)
    # Then one email per delivery was written, and every delivery is sent
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 6
    async with runtime.db.transaction() as conn:
        statuses = (
            await conn.execute(select(deliveries.c.status).where(deliveries.c.id.in_(claimed)))
        ).scalars()
        assert set(statuses) == {"sent"}
    await runtime.aclose()


async def test_a_message_for_an_unknown_delivery_is_acknowledged_without_sending(
    settings: Settings, actors: Actors
) -> None:
    runtime = build_runtime(settings, clock=FrozenClock(NOW))
    await upgrade(runtime.db)
    actors.send_delivery.send(424242)
    await asyncio.to_thread(_drain, actors)
    assert not settings.outbox_dir.exists() or list(settings.outbox_dir.iterdir()) == []
    assert isinstance(actors.broker, StubBroker)
    assert actors.broker.dead_letters == []
    await runtime.aclose()


async def test_claimed_deliveries_go_to_the_workers_in_batches(settings: Settings, actors: Actors) -> None:
    # Given 7 claimed deliveries and batches of 3
    runtime = build_runtime(settings, clock=FrozenClock(NOW))
    claimed = await _claimed_deliveries(runtime, leads=7)
    batched = dataclasses.replace(actors, send_batch=3)
    # When they are enqueued, three messages carry them
    assert batched.enqueue_deliveries(claimed) == 7
    assert isinstance(actors.broker, StubBroker)
    queued = list(actors.broker.queues["deliveries"].queue)
    assert [len(dramatiq.Message.decode(m).args[0]) for m in queued] == [3, 3, 1]
    # Then a worker sends each once
    await asyncio.to_thread(_drain, actors)
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 7
    await runtime.aclose()
