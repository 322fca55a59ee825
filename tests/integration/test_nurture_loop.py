"""The nurture loop end to end: 300 mixed leads, 25 simulated days, a real SMTP server.

1. PostgreSQL + Redis + a `nurture worker` process, the scheduler in the test with a shared clock file.
2. SQLite + the embedded broker with in-process worker threads (what `nurture run` uses).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

from nurture.clock import FileClock, FrozenClock
from nurture.db.engine import Database
from nurture.scheduler import Scheduler
from nurture.service import open_service, start_worker, wait_until_drained
from nurture.settings import Settings
from tests import services
from tests.integration.nurture_loop import ROOT, START, check_outcome, run_days, seed, wait_until_idle
from tests.smtp_sink import SmtpSink, smtp_sink_fixture  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "integration-secret-key-0123456789"


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_CAMPAIGNS_DIR=str(ROOT / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(ROOT / "templates"),
        NURTURE_REPS_FILE=str(ROOT / "reps.yaml"),
        NURTURE_DATA_DIR=str(tmp_path / "var"),
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def _settings(env: dict[str, str]) -> Settings:
    # Validated from the given values only: nothing leaks in from this machine's environment or .env.
    fields = {k.removeprefix("NURTURE_").lower(): v for k, v in env.items() if k.startswith("NURTURE_")}
    return Settings.model_validate(fields)


@pytest.fixture
def redis_url() -> Iterator[str]:
    services.require_service(services.REDIS_URL, "Redis")
    client = redis.Redis.from_url(services.REDIS_URL)
    client.flushdb()
    yield services.REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def worker_process(
    tmp_path: Path, pg_url: str, redis_url: str, smtp_sink: SmtpSink
) -> Iterator[dict[str, str]]:
    clock_file = tmp_path / "clock"
    FileClock.write(clock_file, START)
    env = _environment(
        tmp_path,
        NURTURE_DATABASE_URL=pg_url,
        NURTURE_REDIS_URL=redis_url,
        NURTURE_SMTP_URL=smtp_sink.url,
        NURTURE_CLOCK_FILE=str(clock_file),
        NURTURE_WORKER_THREADS="4",
    )
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "nurture", "worker"], env=env, cwd=tmp_path, stderr=log)
    yield env
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()
    finally:
        process.kill()
        log.close()


async def test_the_nurture_loop_on_postgresql_redis_and_a_worker_process(
    tmp_path: Path, pg_url: str, smtp_sink: SmtpSink, worker_process: dict[str, str]
) -> None:
    # Given 300 imported leads (5 fitting ones already unsubscribed) and a worker process on Redis
    settings = _settings({k: v for k, v in worker_process.items() if k != "NURTURE_CLOCK_FILE"})
    clock = FrozenClock(START)
    db = Database(pg_url)
    await services.truncate_all(db)
    suppressed = await seed(db)
    service = await open_service(settings, clock=clock)
    scheduler = Scheduler(service.runtime, service.actors)
    clock_file = Path(worker_process["NURTURE_CLOCK_FILE"])

    async def tick(now: datetime) -> None:
        clock.set(now)
        FileClock.write(clock_file, now)
        await scheduler.tick(now)
        await wait_until_idle(db)

    # When the scheduler ticks through 25 days
    try:
        ticks = await run_days(db, tick)
        # Then every fitting lead got its campaign's steps once, in order, inside its local window
        counts = await check_outcome(db, service.runtime.catalog, smtp_sink.messages, suppressed)
    finally:
        await service.runtime.aclose()
        await db.aclose()
    print(f"postgresql+redis: {ticks} ticks, {counts}")


async def test_the_nurture_loop_on_sqlite_with_the_embedded_broker(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    env = _environment(tmp_path, NURTURE_SMTP_URL=smtp_sink.url, NURTURE_WORKER_THREADS="4")
    env.pop("NURTURE_SECRET_KEY")  # the embedded default keeps its own key
    settings = _settings(env)
    clock = FrozenClock(START)
    service = await open_service(settings, clock=clock)  # migrates the SQLite file
    db = service.runtime.db
    suppressed = await seed(db)
    scheduler = Scheduler(service.runtime, service.actors)
    worker = start_worker(service, settings.worker_threads)

    async def tick(now: datetime) -> None:
        import asyncio

        clock.set(now)
        await scheduler.tick(now)
        await asyncio.to_thread(wait_until_drained, service.actors, worker)

    try:
        ticks = await run_days(db, tick)
        counts = await check_outcome(db, service.runtime.catalog, smtp_sink.messages, suppressed)
    finally:
        worker.stop()
        await service.runtime.aclose()
    print(f"sqlite+embedded: {ticks} ticks, {counts}")
