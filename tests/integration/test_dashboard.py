"""The dashboard over real HTTP (uvicorn on 127.0.0.1, a migrated SQLite file) and in headless Chromium at
390 px: sign-in, the funnel, campaign step charts, hot leads linking to their timelines, source quality.

The history is made by the real flows: import, enroll, dispatch and deliver to the outbox, recorded events
(one flagged as a machine), rescore with its alert. Screenshots go to test-artifacts/dashboard-390px.png.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from nurture.core.events import InboundEvent
from nurture.flows.deliver import deliver
from nurture.flows.engage import record_events
from nurture.flows.tick import dispatch, enroll
from nurture.web.sessions import issue_login_link
from tests.integration.test_timeline_browser import (
    ARTIFACTS,
    CHROMIUM_TIMEOUT_S,
    PHONE_WIDTH,
    _chromium,
    _png_size,
)
from tests.integration.test_timeline_web import BROWSER, JSON, Web, add_lead, hot_lead, serve

pytestmark = pytest.mark.integration


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    async with serve(tmp_path) as web:
        yield web


async def _history(web: Web) -> list[int]:
    """Two hot leads from two sources, and four leads that got the first email (one opened it, one only
    by a scanner); returns the hot leads' ids."""
    rt, now = web.runtime, web.clock.now()
    hot = [
        await hot_lead(web, source="webinar"),
        await hot_lead(web, email="ana@example.com", first_name="Ana", utm_source="<b>google</b>"),
    ]
    for i in range(4):
        await add_lead(web, email=f"reader{i}@example.com", source="webinar")
    await enroll(rt.db, rt.catalog, now)
    claimed = (
        await dispatch(rt.db, now, lease=timedelta(minutes=10), limit=100, stale_after=timedelta(minutes=5))
    ).claimed
    for delivery_id in claimed:
        await deliver(delivery_id, db=rt.db, mailer=rt.mailer, now=now)
    assert claimed, "the readers' first emails were due"
    lead_of = await _lead_of(web, claimed)
    opened_at = now + timedelta(minutes=30)
    events = [
        InboundEvent(lead_of[claimed[0]], "email_open", opened_at, delivery_id=claimed[0]),
        InboundEvent(
            lead_of[claimed[1]], "email_open", opened_at, delivery_id=claimed[1], properties={"machine": True}
        ),
    ]
    await record_events(rt.db, events, now=opened_at)
    return hot


async def _lead_of(web: Web, delivery_ids: list[int]) -> dict[int, int]:
    from sqlalchemy import select

    from nurture.db.queries.tables import deliveries

    async with web.runtime.db.transaction() as conn:
        rows = await conn.execute(
            select(deliveries.c.id, deliveries.c.lead_id).where(deliveries.c.id.in_(delivery_ids))
        )
        return {row.id: row.lead_id for row in rows}


async def test_dashboard_sends_a_browser_to_the_login_and_a_program_gets_401(web: Web) -> None:
    page = await web.client.get("/dashboard", headers=BROWSER)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fdashboard"
    assert (await web.client.get("/dashboard", headers=JSON)).status_code == 401
    bad = await web.client.get("/dashboard", headers={**BROWSER, "authorization": "Bearer nk_00000000_nope"})
    assert bad.status_code == 401


async def test_dashboard_shows_funnel_campaign_steps_hot_leads_and_sources(web: Web) -> None:
    # Given a history and a rep's key
    hot = await _history(web)
    key = await web.key()
    # When the rep opens the dashboard
    page = await web.client.get("/dashboard", headers={**BROWSER, "authorization": f"Bearer {key}"})
    # Then it shows every part, as SVG, with no script, and links each hot lead to its timeline
    assert page.status_code == 200
    html = page.text
    assert "<script" not in html
    assert html.count('<svg width="100%"') >= 3  # funnel, a campaign, sources
    for lead_id in hot:
        assert f'href="/leads/{lead_id}"' in html
    assert "webinar-followup: 4 sent, 1 opened, 1 qualified" in html  # the scanner's open is not counted
    assert ">recording</text>" in html  # its first step
    assert "webinar · MQL" in html
    assert "&lt;b&gt;google&lt;/b&gt;" in html  # lead data is escaped in the charts too
    policy = page.headers["content-security-policy"]
    assert policy.count("'sha256-") == 2
    assert "script-src" not in policy
    assert "default-src 'none'" in policy


async def test_dashboard_period_must_be_one_it_offers(web: Web) -> None:
    key = await web.key()
    auth = {"authorization": f"Bearer {key}"}
    assert (await web.client.get("/dashboard?days=30", headers={**BROWSER, **auth})).status_code == 200
    for bad in ("0", "8", "-1", "7.5", "x" * 500):
        page = await web.client.get("/dashboard", params={"days": bad}, headers={**BROWSER, **auth})
        assert page.status_code == 400
        assert "days must be one of 1, 7, 30, 90." in page.text


async def test_two_dashboards_at_once_compute_one_report(web: Web) -> None:
    await _history(web)
    key = await web.key()
    auth = {**BROWSER, "authorization": f"Bearer {key}"}
    pages = await asyncio.gather(*(web.client.get("/dashboard", headers=auth) for _ in range(4)))
    assert {p.status_code for p in pages} == {200}
    as_of = {re.search(r'Figures as of <time datetime="([^"]+)"', p.text).group(1) for p in pages}  # type: ignore[union-attr]
    assert len(as_of) == 1


async def _chromium_run(chromium: str, profile: Path, *args: str) -> tuple[str, str]:
    process = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode(), stderr.decode(errors="replace")


async def test_dashboard_in_chromium_at_390_px_renders_charts_without_console_errors(
    web: Web, tmp_path: Path
) -> None:
    chromium = _chromium()
    await _history(web)
    key = await web.key("Lin's phone")
    rt = web.runtime
    link = await issue_login_link(
        rt.db,
        key.split("_")[1],
        base_url=web.base_url,
        key=rt.mailer.secret_key,
        now=web.clock.now(),
        ttl=timedelta(minutes=15),
        next_path="/dashboard",
    )
    # When Chromium follows a login link to the dashboard
    dom, log = await _chromium_run(chromium, tmp_path / "dom", "--dump-dom", link.url)
    # Then the page and its charts rendered, and the console stayed quiet (no CSP refusal, no error)
    assert '<h1 id="funnel">Funnel</h1>' in dom
    assert dom.count("<rect") > 10
    assert "Sign out" in dom
    console = [line for line in log.splitlines() if "CONSOLE" in line or "Refused to" in line]
    assert console == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-390px.png"
    shot.unlink(missing_ok=True)
    second = await issue_login_link(
        rt.db,
        key.split("_")[1],
        base_url=web.base_url,
        key=rt.mailer.secret_key,
        now=web.clock.now(),
        ttl=timedelta(minutes=15),
        next_path="/dashboard",
    )
    _, log = await _chromium_run(
        chromium, tmp_path / "shot", f"--screenshot={shot}", f"--window-size={PHONE_WIDTH},2400", second.url
    )
    assert [line for line in log.splitlines() if "Refused to" in line] == []
    data = shot.read_bytes()
    assert len(data) > 20_000
    assert _png_size(data) == (PHONE_WIDTH, 2400)
