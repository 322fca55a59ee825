"""The tracking web with Redis, over real HTTP: events go to the event stream and a worker stores them.

- the fast path answers pixel and click GETs exactly as the app does;
- with Redis, a pixel or click is one stream entry and no database write; the consumer stores it;
- with Redis down, the web records in the database instead and still answers;
- under sustained load (a third of it machine-like) on a separate `nurture web` and `nurture worker`, with
  the worker killed (SIGKILL) halfway and another started, every answered request is one event row, the
  scoring queue drains, and machine engagement scores nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from nurture.clock import FrozenClock
from nurture.core.tracking import click_url, open_url
from nurture.db.engine import Database
from nurture.db.migrate import upgrade
from nurture.db.queries.tables import deliveries, events, leads
from nurture.event_consumer import EventConsumer
from nurture.event_stream import STREAM, EventStream
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from nurture.runtime import Runtime, build_runtime
from nurture.settings import Settings
from nurture.web.app import create_app
from nurture.web.server import WebAddress, build_server
from tests.harness.cli import nurture_env
from tests.harness.ports import free_port
from tests.project import PROJECT
from tests.services import REDIS_URL, require_service, truncate_all

pytestmark = pytest.mark.integration

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SECRET = "buffered-tracking-secret-0123456789"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TARGET = "https://acmeflow.example/tour/first-three-workflows?utm_source=email"
HUMAN_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0)"
MACHINE_UA = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
LOAD_S = float(os.environ.get("NURTURE_TRACKING_LOAD_S", "20"))  # set it higher for a longer soak


def _settings(tmp_path: Path, base_url: str, **extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "var",
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
            "scoring_file": ROOT / "scoring.yaml",
            "secret_key": SECRET,
            "base_url": base_url,
            "log_level": "WARNING",
            **extra,
        }
    )


async def _seed(db: Database, runtime_catalog: Any, count: int) -> list[tuple[int, int]]:
    """`count` enrolled leads; each one's (lead id, day-0 delivery id)."""
    rows = [{"email": f"lead{i}@example.com", "grade": "nurturable", "timezone": "UTC"} for i in range(count)]
    await import_leads(db, rows, now=NOW - timedelta(days=1))
    await enroll(db, runtime_catalog, NOW)
    async with db.transaction() as conn:
        found = await conn.execute(
            select(deliveries.c.lead_id, deliveries.c.id).where(deliveries.c.step_index == 0)
        )
        return sorted((int(r.lead_id), int(r.id)) for r in found)


async def _count(db: Database, *where: Any) -> int:
    async with db.transaction() as conn:
        stmt = select(func.count()).select_from(events).where(*where)
        return int((await conn.execute(stmt)).scalar_one())


@asynccontextmanager
async def _web(runtime: Runtime, port: int) -> AsyncIterator[httpx.AsyncClient]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()  # connections wait in the backlog until the server accepts them
    server = build_server(runtime, WebAddress("127.0.0.1", port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def sqlite_web(tmp_path: Path) -> AsyncIterator[tuple[Runtime, int, list[tuple[int, int]]]]:
    port = free_port()
    runtime = build_runtime(_settings(tmp_path, f"http://127.0.0.1:{port}"), clock=FrozenClock(NOW))
    try:
        await upgrade(runtime.db)
        pairs = await _seed(runtime.db, runtime.catalog, 2)
        yield runtime, port, pairs
    finally:
        await runtime.aclose()


async def test_the_fast_path_answers_exactly_as_the_app_does(
    sqlite_web: tuple[Runtime, int, list[tuple[int, int]]],
) -> None:
    runtime, port, [(lead, delivery), _] = sqlite_web
    key, base = runtime.mailer.secret_key, runtime.settings.base_url
    pixel = open_url(base, lead_id=lead, delivery_id=delivery, key=key)[len(base) :]
    click = click_url(base, lead_id=lead, delivery_id=delivery, url=TARGET, key=key)[len(base) :]
    forged = pixel[:-2] + ("AA" if not pixel.endswith("AA") else "BB")
    app = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime)), base_url=base)
    async with _web(runtime, port) as served, app:
        for path in (pixel, click, forged, click.replace("/t/c/", "/t/o/")):
            fast, plain = await served.get(path), await app.get(path)
            assert (fast.status_code, fast.content) == (plain.status_code, plain.content)
            assert [(k, v) for k, v in fast.headers.items() if k != "date"] == list(plain.headers.items())
    assert (
        await _count(runtime.db) == 4
    )  # two pixels and two clicks; forged and mismatched ones record nothing


async def test_with_redis_an_event_is_a_stream_entry_until_the_consumer_stores_it(tmp_path: Path) -> None:
    require_service(REDIS_URL, "Redis")
    port = free_port()
    settings = _settings(tmp_path, f"http://127.0.0.1:{port}", redis_url=REDIS_URL)
    runtime = build_runtime(settings, clock=FrozenClock(NOW))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await upgrade(runtime.db)
        [(lead, delivery)] = await _seed(runtime.db, runtime.catalog, 1)
        key, base = runtime.mailer.secret_key, settings.base_url
        client.delete(STREAM)  # the test Redis database is this suite's own
        async with _web(runtime, port) as web:
            assert (
                await web.get(open_url(base, lead_id=lead, delivery_id=delivery, key=key)[len(base) :])
            ).status_code == 200
            click = click_url(base, lead_id=lead, delivery_id=delivery, url=TARGET, key=key)[len(base) :]
            assert (await web.get(click)).status_code == 307
        assert client.xlen(STREAM) == 2
        assert await _count(runtime.db) == 0
        stream = EventStream.from_url(REDIS_URL, timeout_s=5)
        rescored: list[int] = []
        try:
            await stream.ensure_group()
            report = await EventConsumer(stream, runtime.db, runtime.clock, rescored.extend, name="t").step()
        finally:
            await stream.aclose()
        assert report.recorded == 2
        assert await _count(runtime.db, events.c.delivery_id == delivery) == 2
        assert rescored == [lead]
    finally:
        client.delete(STREAM)
        client.close()
        await runtime.aclose()


async def test_with_redis_down_the_web_still_records_every_event_in_the_database(tmp_path: Path) -> None:
    port = free_port()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    runtime = build_runtime(
        _settings(tmp_path, f"http://127.0.0.1:{port}", redis_url=dead_redis), clock=FrozenClock(NOW)
    )
    try:
        await upgrade(runtime.db)
        [(lead, delivery)] = await _seed(runtime.db, runtime.catalog, 1)
        key, base = runtime.mailer.secret_key, runtime.settings.base_url
        async with _web(runtime, port) as web:
            for _ in range(3):
                assert (
                    await web.get(open_url(base, lead_id=lead, delivery_id=delivery, key=key)[len(base) :])
                ).status_code == 200
            answer = await web.get(
                click_url(base, lead_id=lead, delivery_id=delivery, url=TARGET, key=key)[len(base) :]
            )
            assert answer.status_code == 307
            assert answer.headers["location"].startswith(TARGET + "&nl=")
        assert await _count(runtime.db) == 4
    finally:
        await runtime.aclose()


# --- sustained load ----------------------------------------------------------------------------------------


@contextmanager
def _process(args: Sequence[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nurture", *args], env=env, stderr=out, cwd=log.parent
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_until(check: Any, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


class Load:
    """Keep-alive GETs over `connections` connections for `seconds`; each URL with its user agent in turn."""

    def __init__(self, port: int, requests: Sequence[tuple[str, str, int]]) -> None:
        self._port = port
        self._requests = [
            (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\n\r\n".encode(), expected)
            for path, agent, expected in requests
        ]
        self.answered = 0
        self.latencies_ms: list[float] = []

    async def run(self, *, seconds: float, connections: int) -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(self._connection(offset, deadline) for offset in range(connections)))

    async def _connection(self, offset: int, deadline: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        try:
            index = offset
            while time.monotonic() < deadline:
                request, expected = self._requests[index % len(self._requests)]
                index += 7  # spread each connection over every lead
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                status = int(head.split(b" ", 2)[1])
                assert status == expected, head
                self.answered += 1
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()
            await writer.wait_closed()

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


@pytest.mark.slow
async def test_sustained_pixel_and_click_load_loses_nothing_and_machines_score_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    require_service(REDIS_URL, "Redis")
    db = Database(pg_url)
    broker = redis.Redis.from_url(REDIS_URL)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = _settings(tmp_path, base)
    try:
        await truncate_all(db)
        broker.flushdb()  # the test Redis database is this suite's own
        pairs = await _seed(db, build_runtime(settings).catalog, 150)
        key = SECRET.encode()
        machine_leads = {lead for lead, _ in pairs[::3]}  # a third of the leads only ever see machines
        requests = []
        for lead, delivery in pairs:
            agent = MACHINE_UA if lead in machine_leads else HUMAN_UA
            requests.append(
                (open_url(base, lead_id=lead, delivery_id=delivery, key=key)[len(base) :], agent, 200)
            )
            click = click_url(base, lead_id=lead, delivery_id=delivery, url=TARGET, key=key)[len(base) :]
            requests.append((click, agent, 307))
        env = nurture_env(
            tmp_path / "var",
            NURTURE_DATABASE_URL=pg_url,
            NURTURE_REDIS_URL=REDIS_URL,
            NURTURE_SECRET_KEY=SECRET,
            NURTURE_BASE_URL=base,
            NURTURE_LOG_LEVEL="WARNING",
            NURTURE_EVENT_CLAIM_IDLE_S="2",
        )
        web_args = ["web", "--host", "127.0.0.1", "--port", str(port)]
        with (
            _process(web_args, env, tmp_path / "web.log"),
            _process(["worker"], env, tmp_path / "worker.log") as first_worker,
        ):
            await _wait_until(lambda: _answers(port), timeout_s=60, what="the web did not start")
            load = Load(port, requests)
            started = time.perf_counter()
            running = asyncio.create_task(load.run(seconds=LOAD_S, connections=8))
            await asyncio.sleep(LOAD_S / 2)
            first_worker.kill()  # SIGKILL mid-load, most likely mid-batch: what it read is claimed again
            # Dramatiq requeues the dead worker's unacknowledged messages after its heartbeat timeout (60 s);
            # those are Dramatiq's to recover, so the drain below leaves them out.
            dead_acks = list(broker.keys("dramatiq:__acks__.*.scoring"))
            with _process(["worker"], env, tmp_path / "worker2.log"):
                await running
                elapsed = time.perf_counter() - started

                async def drained() -> bool:
                    held_by_the_dead = sum(broker.scard(key) for key in dead_acks)
                    queued = broker.llen("dramatiq:scoring") + broker.hlen("dramatiq:scoring.msgs")
                    return broker.xlen(STREAM) == 0 and queued == held_by_the_dead

                await _wait_until(
                    drained, timeout_s=180, what="the event stream and the scoring queue did not drain"
                )
                drain_s = time.perf_counter() - started - elapsed
        print(
            f"\n{load.answered} requests in {elapsed:.0f} s ({load.answered / elapsed:,.0f}/s), "
            f"p50 {load.percentile(50):.1f} ms, p99 {load.percentile(99):.1f} ms; "
            f"stream and scoring queue drained {drain_s:.1f} s later"
        )
        assert load.answered > 0
        # The killed worker was behind the load, so it died holding a batch, which the other one took over.
        assert "stopped consumer left" in (tmp_path / "worker2.log").read_text()
        assert await _count(db) == load.answered  # every answered request is exactly one event
        async with db.transaction() as conn:
            rows = await conn.execute(select(leads.c.id, leads.c.score))
            scores: dict[int, int] = {row.id: row.score for row in rows}
        assert {lead: scores[lead] for lead in machine_leads} == dict.fromkeys(machine_leads, 0)
        assert all(scores[lead] > 0 for lead, _ in pairs if lead not in machine_leads)
    finally:
        broker.flushdb()
        broker.close()
        await db.aclose()


async def _answers(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False
