"""Engagement end to end: an email is opened and clicked, the lead visits pricing, its rep hears about it.

Real processes on PostgreSQL and Redis: a `nurture worker` and a `nurture web` subprocess, an aiosmtpd server
and a webhook receiver (Apprise `json://`) in the test, and the scheduler in the test as in
test_nurture_loop.py. Every process reads "now" from one shared NURTURE_CLOCK_FILE, so the open is a person's
(not a scanner's within `min_open_delay`) and the rest of the campaign can be ticked through in seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from sqlalchemy import select

from nurture.clock import FileClock, FrozenClock
from nurture.core.tracking import read_token, visitor_token
from nurture.db.engine import Database
from nurture.db.queries.tables import alerts, deliveries, enrollments, leads
from nurture.flows.ingest import import_leads
from nurture.scheduler import Scheduler
from nurture.service import open_service
from nurture.settings import Settings
from nurture.web.tracking import PIXEL_GIF
from tests import services
from tests.harness.ports import free_port
from tests.integration.nurture_loop import wait_until_idle
from tests.project import PROJECT
from tests.smtp_sink import ReceivedMessage, SmtpSink, smtp_sink_fixture  # noqa: F401
from tests.webhook_receiver import ReceivedPost, WebhookReceiver, webhook_receiver_fixture  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SECRET = "engagement-e2e-secret-key-0123456789"
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei: day 0 is due at once
LEAD = "mei.lin@example.com"
OWNER = "lin.chen@acmeflow.example"  # a rep in reps.yaml
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko)"
PRICING = "https://acmeflow.example/pricing"
WAIT_S = 20.0  # for anything a process does in the background (Dramatiq idles up to 1 s per queue)
# scoring.yaml: open 1 + click 5 + 2 content_download 10 + form_submit 15 = 41, below mql (50); the
# pricing visit (15, and a moment) then crosses mql, so one alert carries both reasons.
BEFORE_PRICING = 41
AFTER_PRICING = 56

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deployment:
    env: dict[str, str]
    base_url: str
    clock_file: Path
    logs: tuple[Path, ...]

    def settings(self) -> Settings:
        # Validated from the given values only: nothing leaks in from this machine's environment or .env.
        fields = {
            k.removeprefix("NURTURE_").lower(): v for k, v in self.env.items() if k.startswith("NURTURE_")
        }
        fields.pop("clock_file")  # the test's scheduler moves time itself, then writes the file
        return Settings.model_validate(fields)

    def nurture(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nurture", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def log_text(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()}" for path in self.logs)


@pytest.fixture
def redis_url() -> Iterator[str]:
    services.require_service(services.REDIS_URL, "Redis")
    client = redis.Redis.from_url(services.REDIS_URL)
    client.flushdb()
    yield services.REDIS_URL
    client.flushdb()
    client.close()


class _Process:
    """A `nurture` subprocess whose stderr goes to a log file; stopped with SIGTERM, which it must obey."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[str] = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nurture", *args], env=env, cwd=log_path.parent, stderr=self._log
        )

    def stop(self) -> int | None:
        """SIGTERM it; return its exit status, or None when it had to be killed after 30 s."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
        finally:
            self._log.close()


def _wait_until_healthy(base_url: str, web: _Process) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if web.process.poll() is not None:
                raise AssertionError(f"nurture web exited: {web.log_path.read_text()}")
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"nurture web did not answer /healthz: {web.log_path.read_text()}")


@pytest.fixture
def deployment(
    tmp_path: Path, pg_url: str, redis_url: str, smtp_sink: SmtpSink, webhook_receiver: WebhookReceiver
) -> Iterator[Deployment]:
    """`nurture worker` and `nurture web` on PostgreSQL and Redis, sharing a clock file set to START."""
    clock_file = tmp_path / "clock"
    FileClock.write(clock_file, START)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATABASE_URL=pg_url,
        NURTURE_REDIS_URL=redis_url,
        NURTURE_SMTP_URL=smtp_sink.url,
        NURTURE_BASE_URL=base_url,
        NURTURE_ALERT_URLS=webhook_receiver.json_url("/alerts"),
        NURTURE_CLOCK_FILE=str(clock_file),
        NURTURE_CAMPAIGNS_DIR=str(ROOT / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(ROOT / "templates"),
        NURTURE_REPS_FILE=str(ROOT / "reps.yaml"),
        NURTURE_SCORING_FILE=str(ROOT / "scoring.yaml"),
        NURTURE_DATA_DIR=str(tmp_path / "var"),
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_WORKER_THREADS="2",
        NURTURE_LOG_LEVEL="WARNING",
    )
    asyncio.run(_truncate(pg_url))
    worker = _Process(["worker"], env, tmp_path / "worker.log")
    web = _Process(["web", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "web.log")
    logs = (worker.log_path, web.log_path)
    try:
        _wait_until_healthy(base_url, web)
        yield Deployment(env=env, base_url=base_url, clock_file=clock_file, logs=logs)
    finally:
        codes = {"web": web.stop(), "worker": worker.stop()}
    text = "\n".join(path.read_text() for path in logs)
    assert codes == {"web": 0, "worker": 0}, text
    assert "Traceback" not in text, text


async def _truncate(url: str) -> None:
    db = Database(url)
    try:
        await services.truncate_all(db)
    finally:
        await db.aclose()


# --- reading the database and the receivers ----------------------------------------------------------------


async def _poll(what: str, check: Callable[[], Awaitable[T]], deployment: Deployment) -> T:
    """Await `check()` until it returns something truthy; fail after WAIT_S with the processes' logs."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{deployment.log_text()}")
        await asyncio.sleep(0.02)


async def _lead(db: Database) -> Any:
    async with db.transaction() as conn:
        return (await conn.execute(select(leads).where(leads.c.email == LEAD))).one()


async def _rows(db: Database, table: Any, lead_id: int) -> list[Any]:
    async with db.transaction() as conn:
        return list(await conn.execute(select(table).where(table.c.lead_id == lead_id).order_by(table.c.id)))


def _to(messages: list[ReceivedMessage], address: str) -> list[ReceivedMessage]:
    return [m for m in messages if address in m.rcpt_tos]


def _html(message: ReceivedMessage) -> str:
    part = message.message.get_body(("html",))
    assert isinstance(part, EmailMessage)
    html = part.get_content()
    assert isinstance(html, str)
    return html


def _text(message: ReceivedMessage) -> str:
    part = message.message.get_body(("plain",))
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    assert isinstance(text, str)
    return text


def _tells_why(text: str, reason: str) -> bool:
    """An alert lists each part of its reason ("a; b") on a line of its own."""
    return all(part in text for part in reason.split("; "))


# --- the scenario ------------------------------------------------------------------------------------------


async def test_engagement_qualifies_the_lead_alerts_its_owner_and_ends_its_campaign(
    deployment: Deployment, pg_url: str, smtp_sink: SmtpSink, webhook_receiver: WebhookReceiver
) -> None:
    # Given one nurturable lead owned by a rep, and the scheduler (in the test) on the shared clock
    db = Database(pg_url)
    report = await import_leads(
        db,
        [
            {
                "email": LEAD,
                "first_name": "Mei",
                "last_name": "Lin",
                "company": "Example Logistics",
                "grade": "nurturable",
                "timezone": "Asia/Taipei",
                "owner": OWNER,
            }
        ],
        now=START - timedelta(days=1),
    )
    assert (report.accepted, report.rejected) == (1, [])
    clock = FrozenClock(START)
    service = await open_service(deployment.settings(), clock=clock)
    scheduler = Scheduler(service.runtime, service.actors)

    async def tick(now: datetime) -> None:
        clock.set(now)
        FileClock.write(deployment.clock_file, now)
        await scheduler.tick(now)
        await wait_until_idle(db, timeout_s=WAIT_S)

    try:
        await _run_scenario(deployment, db, tick, smtp_sink, webhook_receiver)
    finally:
        await service.runtime.aclose()
        service.actors.broker.close()
        await db.aclose()


async def _run_scenario(
    deployment: Deployment,
    db: Database,
    tick: Callable[[datetime], Awaitable[None]],
    smtp_sink: SmtpSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    # When the first tick enrolls the lead and the worker sends the day-0 email
    await tick(START)

    async def mailed() -> list[ReceivedMessage]:
        return _to(smtp_sink.messages, LEAD)

    [welcome] = await _poll("the day-0 email", mailed, deployment)
    assert (welcome["X-Nurture-Campaign"], welcome["X-Nurture-Step"]) == ("saas-nurture", "welcome")
    lead = await _lead(db)
    pixel, click, target = _tracking_links(_html(welcome), deployment.base_url)

    # And, an hour later (not a scanner's open within min_open_delay), the lead opens it and clicks
    FileClock.write(deployment.clock_file, START + timedelta(hours=1))
    async with httpx.AsyncClient(base_url=deployment.base_url, headers={"user-agent": BROWSER}) as web:
        opened = await web.get(pixel)
        clicked = await web.get(click)
        # Then the pixel is the GIF, and the click goes to the link's page with the visitor token
        assert (opened.status_code, opened.headers["content-type"], opened.content) == (
            200,
            "image/gif",
            PIXEL_GIF,
        )
        assert clicked.status_code == 307
        location = clicked.headers["location"]
        assert location.startswith(target)
        [nl] = parse_qs(urlsplit(location).query)["nl"]
        assert nl == visitor_token(lead.id, key=SECRET.encode())

        # When the CRM reports two downloads and a form (events API, with a key made by `nurture apikey`)
        key = _api_key(deployment)
        batch = [
            {"email": LEAD, "type": "content_download", "url": "https://acmeflow.example/roi-guide.pdf"},
            {"email": LEAD, "type": "content_download", "url": "https://acmeflow.example/checklist.pdf"},
            {"email": LEAD, "type": "form_submit", "url": "https://acmeflow.example/contact"},
        ]
        posted = await web.post("/api/events", json=batch, headers={"authorization": f"Bearer {key}"})
        assert (posted.status_code, posted.json()["recorded"]) == (200, 3)
        # Then the lead is warm but not yet an MQL, and nobody is alerted
        await _poll("the score before pricing", lambda: _score_is(db, BEFORE_PRICING), deployment)
        assert (await _lead(db)).stage == "lead"
        assert await _rows(db, alerts, lead.id) == []

        # When the lead, back on the website with its visitor token, opens the pricing page
        visited = await web.post(
            "/t/v", json={"token": nl, "url": f"{PRICING}?nl={nl}", "referrer": location}
        )
        assert visited.status_code == 204

    # Then its score crosses mql, it becomes an MQL and leaves the campaign, its rep is alerted once
    alert = await _poll("the alert to be delivered", lambda: _delivered_alert(db, lead.id), deployment)
    lead = await _lead(db)
    assert (lead.stage, lead.score) == ("mql", AFTER_PRICING)
    assert (alert.trigger, alert.owner, alert.score_after) == ("mql", OWNER, AFTER_PRICING)
    assert f"score crossed mql (50): {BEFORE_PRICING} -> {AFTER_PRICING}" in alert.reason
    assert f"pricing_visit: visited {PRICING}" in alert.reason
    assert sorted(alert.detail["delivered_by"]) == ["apprise", "email"]
    [enrollment] = await _rows(db, enrollments, lead.id)
    assert enrollment.state == "exited"
    assert "qualified" in (enrollment.exit_reason or "")
    statuses = [(d.step_id, d.status) for d in await _rows(db, deliveries, lead.id)]
    assert statuses[0] == ("welcome", "sent")
    assert len(statuses) > 1
    assert {status for _, status in statuses[1:]} == {"cancelled"}
    # And the team's webhook got the reason, and the owner an email with it
    post = webhook_receiver.wait_for(lambda p: _tells_why(_message_of(p), alert.reason), timeout_s=WAIT_S)
    assert post.path == "/alerts"
    [emailed] = _to(smtp_sink.messages, OWNER)
    assert emailed.message["X-Nurture-Alert"] == str(alert.id)
    assert _tells_why(_text(emailed), alert.reason)
    assert LEAD in _text(emailed)

    # When the scheduler ticks through the rest of the campaign (21 days, and a few more)
    now = START + timedelta(hours=6)
    while now <= START + timedelta(days=25):
        await tick(now)
        now += timedelta(hours=6)

    # Then the lead got no other campaign email, and nobody was alerted again
    assert [m["X-Nurture-Step"] for m in _to(smtp_sink.messages, LEAD)] == ["welcome"]
    assert len(smtp_sink.messages) == 2
    assert len(await _rows(db, enrollments, lead.id)) == 1
    assert [a.id for a in await _rows(db, alerts, lead.id)] == [alert.id]
    assert webhook_receiver.count() == 1


async def _score_is(db: Database, score: int) -> bool:
    return bool((await _lead(db)).score == score)


async def _delivered_alert(db: Database, lead_id: int) -> Any:
    rows = await _rows(db, alerts, lead_id)
    return rows[0] if rows and rows[0].status == "delivered" else None


def _message_of(post: ReceivedPost) -> str:
    body = post.json()
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def _tracking_links(html: str, base_url: str) -> tuple[str, str, str]:
    """The open pixel's and one tracked link's paths in a delivered email, and that link's target."""
    prefix = re.escape(base_url)
    [pixel] = re.findall(rf'<img src="{prefix}(/t/o/[^"]+)"', html)
    clicks = re.findall(rf'href="{prefix}(/t/c/[^"]+)"', html)
    assert clicks, "the email has no tracked link"
    target = read_token(clicks[0].removeprefix("/t/c/"), kind="c", key=SECRET.encode()).url
    assert target is not None
    return pixel, clicks[0], target


def _api_key(deployment: Deployment) -> str:
    created = deployment.nurture("apikey", "create", "e2e-crm", "--format", "json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    assert isinstance(key, str)
    return key
