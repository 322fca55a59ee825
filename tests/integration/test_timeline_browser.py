"""The lead page as a rep's phone shows it: headless Chromium, 390 px wide, against a real uvicorn server.

Chromium's command line cannot post a form or set a cookie, so it signs in the way a rep reading an alert
does: with a one-time login link from `nurture login-link`, which sets the session cookie and redirects to
the lead. One run dumps the DOM; another saves a screenshot to test-artifacts/timeline-390px.png.

Chromium missing skips these tests on a developer machine and fails them under CI=true (`.ci/run` installs
it), as a missing service does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nurture.clock import FrozenClock
from nurture.core.events import InboundEvent
from nurture.flows.engage import record_events
from nurture.flows.escalate import rescore
from tests.integration.test_timeline_web import PRICING, Web, hot_lead, serve
from tests.project import CHECKOUT
from tests.services import IN_CI

pytestmark = pytest.mark.integration

ROOT = CHECKOUT  # where the screenshots go
ARTIFACTS = ROOT / "test-artifacts"
PHONE_WIDTH = 390
CHROMIUM_TIMEOUT_S = 120
WHITEPAPER = (
    "https://acmeflow.example/resources/whitepapers/2026/the-operations-leaders-guide-to-automating-"
    "warehouse-exception-handling-without-hiring.pdf?utm_source=nurture&utm_medium=email&utm_campaign=q1"
)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    # The login link comes from the `nurture` command, which reads the wall clock: the server's frozen
    # clock starts there too, so the link is valid at the server's "now".
    async with serve(tmp_path, clock=FrozenClock(datetime.now(UTC).replace(microsecond=0))) as web:
        yield web


async def _lead_with_a_busy_week(web: Web) -> int:
    """The hot lead of the web tests, with a week of email and site activity and one scanner click."""
    rt, now = web.runtime, web.clock.now()
    lead_id = await hot_lead(
        web, company="Example Logistics Holdings (Asia Pacific) Ltd.", utm_source="google", source="webinar"
    )
    activity = [
        ("email_open", 6, None, None),
        ("email_click", 6, "https://acmeflow.example/tour/first-three-workflows", None),
        ("email_click", 5, "https://acmeflow.example/tour/first-three-workflows", "Barracuda/Scanner 1.0"),
        ("page_visit", 5, "https://acmeflow.example/blog/exception-handling", None),
        ("content_download", 4, WHITEPAPER, None),
        ("email_open", 3, None, None),
    ]
    events = [
        InboundEvent(
            lead_id=lead_id,
            type=type_,
            occurred_at=now - timedelta(days=days),
            url=url,
            user_agent=agent,
        )
        for type_, days, url, agent in activity
    ]
    await record_events(rt.db, events, now=now)
    await rescore(lead_id, db=rt.db, catalog=rt.catalog, now=now)
    return lead_id


async def _login_link(web: Web, key: str, lead_id: int) -> str:
    prefix = key.split("_")[1]
    made = await asyncio.to_thread(
        web.nurture, "login-link", "--key", prefix, "--lead", str(lead_id), "--format", "json"
    )
    assert made.returncode == 0, made.stderr
    url: str = json.loads(made.stdout)["url"]
    return url


async def _chromium_run(chromium: str, profile: Path, *args: str) -> str:
    """Run headless Chromium with a fresh profile (it makes the folder); return what it printed on stdout."""
    process = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root, where the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:  # the server answers on this event loop meanwhile
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, which must come first."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    _length, chunk, width, height = struct.unpack(">I4sII", data[8:24])
    assert chunk == b"IHDR"
    return width, height


async def test_timeline_browser_renders_the_lead_after_a_login_link(web: Web, tmp_path: Path) -> None:
    chromium = _chromium()
    # Given a rep's key and a lead with a week of activity
    key = await web.key("Lin's phone")
    lead_id = await _lead_with_a_busy_week(web)

    # When Chromium opens a login link to the lead
    dom = await _chromium_run(
        chromium, tmp_path / "profile-dom", "--dump-dom", await _login_link(web, key, lead_id)
    )

    # Then it was signed in and redirected to the lead's page, which shows the lead and its events
    assert '<h1 id="lead-name">Mei Lin</h1>' in dom
    assert "Why the score is" in dom
    assert "Downloaded content" in dom
    assert PRICING in dom
    assert "Buying signal: pricing visit" in dom
    assert "Sign out" in dom  # a session, not a key
    assert "Not counted (1)" in dom  # the scanner's click


async def test_timeline_browser_screenshot_is_390_px_wide(web: Web, tmp_path: Path) -> None:
    chromium = _chromium()
    key = await web.key("Lin's phone")
    lead_id = await _lead_with_a_busy_week(web)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "timeline-390px.png"
    shot.unlink(missing_ok=True)

    await _chromium_run(
        chromium,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        f"--window-size={PHONE_WIDTH},1600",
        await _login_link(web, key, lead_id),
    )

    data = shot.read_bytes()
    assert len(data) > 20_000  # a rendered page, not a blank one
    width, height = _png_size(data)
    assert (width, height) == (PHONE_WIDTH, 1600)
