"""Tracking and the API over real HTTP: uvicorn on 127.0.0.1, a migrated SQLite file, httpx as the client.

The pixel and click URLs used are the ones a delivered email carries; API keys and share links are made with
the `nurture` command, as an operator or a rep would.
"""

from __future__ import annotations

import asyncio
import base64
import email
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from nurture.clock import FrozenClock
from nurture.core.tracking import read_token, share_url, sign_token, verify_token, visitor_token
from nurture.db.migrate import upgrade
from nurture.db.queries.tables import events, leads, stage_changes, touchpoints
from nurture.flows.deliver import Outcome, deliver
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.runtime import Runtime, build_runtime
from nurture.settings import Settings
from nurture.web.app import create_app
from nurture.web.server import WebAddress, build_server
from nurture.web.tracking import PIXEL_GIF
from tests.harness.ports import free_port, listening_socket
from tests.project import PROJECT

pytestmark = pytest.mark.integration

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SECRET = "tracking-test-secret-key-0123456789"
# Monday 2026-03-02 10:00 in Taipei: the first step of the campaign is due at once.
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
LEAD = "mei@example.com"
TARGET = "https://acmeflow.example/tour/first-three-workflows"


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "var",
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
            "secret_key": SECRET,
            "log_level": "WARNING",
            **extra,
        }
    )


@dataclass
class Web:
    client: httpx.AsyncClient
    runtime: Runtime
    clock: FrozenClock
    base_url: str
    tmp_path: Path
    enqueued: list[int] = field(default_factory=list)  # what on_event was called with

    async def count(self, table: Any, *where: Any) -> int:
        async with self.runtime.db.transaction() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()
            )

    async def events(self) -> list[dict[str, Any]]:
        async with self.runtime.db.transaction() as conn:
            return [dict(r._mapping) for r in await conn.execute(select(events).order_by(events.c.id))]

    def nurture(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `nurture` command against this web's database and key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
        env.update(
            NURTURE_DATA_DIR=str(self.tmp_path / "var"),
            NURTURE_SECRET_KEY=SECRET,
            NURTURE_BASE_URL=self.base_url,
            NURTURE_CAMPAIGNS_DIR=str(ROOT / "campaigns"),
            NURTURE_TEMPLATES_DIR=str(ROOT / "templates"),
            NURTURE_REPS_FILE=str(ROOT / "reps.yaml"),
            NURTURE_LOG_LEVEL="WARNING",
        )
        return subprocess.run(
            [sys.executable, "-m", "nurture", *args],
            cwd=self.tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@asynccontextmanager
async def _serving(runtime: Runtime, on_event: Callable[[int], None]) -> AsyncIterator[httpx.AsyncClient]:
    sock = listening_socket()
    host, port = sock.getsockname()
    server = build_server(runtime, WebAddress(host, port), on_event=on_event)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    base_url = f"http://127.0.0.1:{free_port()}/"  # known before the runtime, which signs with it
    clock = FrozenClock(START)
    runtime = build_runtime(_settings(tmp_path, base_url=base_url), clock=clock)
    enqueued: list[int] = []
    try:
        await upgrade(runtime.db)
        async with _serving(runtime, enqueued.append) as client:
            yield Web(client, runtime, clock, base_url.rstrip("/"), tmp_path, enqueued)
    finally:
        await runtime.aclose()


@dataclass(frozen=True)
class Mailed:
    lead_id: int
    delivery_id: int
    pixel: str  # path of the open pixel, /t/o/<token>
    clicks: dict[str, str]  # target URL -> path of its click URL, /t/c/<token>


async def _mail_first_step(web: Web) -> Mailed:
    """Import and enroll a lead, send its first email to the outbox, read its tracking links."""
    runtime = web.runtime
    await import_leads(
        runtime.db, [{"email": LEAD, "grade": "nurturable", "timezone": "Asia/Taipei"}], now=START
    )
    await enroll(runtime.db, runtime.catalog, START)
    lease, stale = timedelta(minutes=10), timedelta(minutes=5)
    [delivery_id] = (await dispatch(runtime.db, START, lease=lease, limit=10, stale_after=stale)).claimed
    assert await deliver(delivery_id, db=runtime.db, mailer=runtime.mailer, now=START) is Outcome.SENT
    [eml] = runtime.settings.outbox_dir.glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("html",))
    assert body is not None
    html = body.get_content()
    prefix = re.escape(web.base_url)
    [pixel] = re.findall(rf'<img src="{prefix}(/t/o/[^"]+)"', html)
    clicks = {}
    for path in re.findall(rf'href="{prefix}(/t/c/[^"]+)"', html):
        url = read_token(path.removeprefix("/t/c/"), kind="c", key=SECRET.encode()).url
        assert url is not None
        clicks[url] = path
    async with runtime.db.transaction() as conn:
        lead_id = (await conn.execute(select(leads.c.id).where(leads.c.email == LEAD))).scalar_one()
    return Mailed(lead_id=lead_id, delivery_id=delivery_id, pixel=pixel, clicks=clicks)


# --- open pixel and click redirect -------------------------------------------------------------------------


async def test_the_pixel_answers_an_uncached_gif_and_records_one_open_per_request(web: Web) -> None:
    mailed = await _mail_first_step(web)

    # When the pixel is fetched twice, and probed once with HEAD
    first = await web.client.get(mailed.pixel, headers={"user-agent": "Mozilla/5.0 (Mail)"})
    web.clock.advance(timedelta(hours=1))
    second = await web.client.get(mailed.pixel)
    probe = await web.client.head(mailed.pixel)

    # Then each answer is the GIF, never to be cached
    for response in (first, second, probe):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert "no-store" in response.headers["cache-control"]
        assert "no-cache" in response.headers["cache-control"]
        assert response.headers["pragma"] == "no-cache"
        assert response.headers["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert first.content == second.content == PIXEL_GIF
    assert first.content.startswith(b"GIF89a")
    # And each request is one open, of that delivery, with its user agent; the HEAD one flagged as a machine
    opens = await web.events()
    assert [(e["type"], e["lead_id"], e["delivery_id"]) for e in opens] == [
        ("email_open", mailed.lead_id, mailed.delivery_id)
    ] * 3
    assert [e["occurred_at"] for e in opens] == [
        START,
        START + timedelta(hours=1),
        START + timedelta(hours=1),
    ]
    assert opens[0]["properties"]["user_agent"] == "Mozilla/5.0 (Mail)"
    # (the first came the instant the email was sent: within min_open_delay, so flagged too)
    reasons = [e["properties"].get("machine_reason") for e in opens]
    assert reasons == ["open 0ms after delivery", None, "HEAD request"]
    assert await web.count(touchpoints, touchpoints.c.kind == "email_open") == 3
    assert web.enqueued == [mailed.lead_id] * 3


async def test_the_starlette_routes_answer_and_flag_head_requests_as_the_fast_path_does(web: Web) -> None:
    # Given the app without the server's fast path (as any other ASGI server would run it)
    mailed = await _mail_first_step(web)
    web.clock.advance(timedelta(hours=1))
    app = httpx.ASGITransport(app=create_app(web.runtime))

    # When a link checker asks HEAD of the pixel and a click URL
    async with httpx.AsyncClient(transport=app, base_url=web.base_url) as client:
        pixel = await client.head(mailed.pixel)
        click = await client.head(mailed.clicks[TARGET])

    # Then both are answered as GETs are, and stored flagged as a machine's
    assert (pixel.status_code, pixel.headers["content-type"], click.status_code) == (200, "image/gif", 307)
    assert click.headers["location"].startswith(TARGET)
    stored = await web.events()
    assert [(e["type"], e["properties"]["machine_reason"]) for e in stored] == [
        ("email_open", "HEAD request"),
        ("email_click", "HEAD request"),
    ]
    assert all(e["properties"]["machine"] is True for e in stored)


async def test_a_click_redirects_to_the_exact_url_with_the_visitor_token_and_records_the_click(
    web: Web,
) -> None:
    mailed = await _mail_first_step(web)
    path = mailed.clicks[TARGET]

    # When the link is clicked, with a query parameter that tries to choose another target
    response = await web.client.get(
        path, params={"u": "https://evil.example/", "url": "https://evil.example/"}
    )

    # Then the redirect goes to the link's own URL, with the lead's visitor token appended
    assert response.status_code == 307
    visitor = visitor_token(mailed.lead_id, key=SECRET.encode())
    assert response.headers["location"] == f"{TARGET}?nl={visitor}"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    # And the click is recorded against the email's campaign step
    [click] = await web.events()
    assert (click["type"], click["lead_id"], click["delivery_id"]) == (
        "email_click",
        mailed.lead_id,
        mailed.delivery_id,
    )
    assert click["properties"]["url"] == TARGET
    async with web.runtime.db.transaction() as conn:
        touch = (await conn.execute(select(touchpoints).where(touchpoints.c.kind == "email_click"))).one()
    assert (touch.campaign_id, touch.step_id, touch.delivery_id) == (
        "saas-nurture",
        "welcome",
        mailed.delivery_id,
    )
    assert web.enqueued == [mailed.lead_id]


def _swapped_url(token: str, lead_id: int, delivery_id: int) -> str:
    payload = {"d": delivery_id, "k": "c", "l": lead_id, "u": "https://evil.example/"}
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{body.decode()}.{token.partition('.')[2]}"


def _other_kind(token: str, lead_id: int, delivery_id: int) -> str:
    if verify_token(token, key=SECRET.encode())["k"] == "o":
        return sign_token({"k": "c", "l": lead_id, "d": delivery_id, "u": TARGET}, key=SECRET.encode())
    return sign_token({"k": "o", "l": lead_id, "d": delivery_id}, key=SECRET.encode())


def _altered_tag(token: str, _lead_id: int, _delivery_id: int) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


CLICK_FORGERIES: dict[str, Callable[[str, int, int], str]] = {
    "url swapped under the old tag": _swapped_url,
    "tag altered": _altered_tag,
    "truncated": lambda token, _l, _d: token[: len(token) // 2],
    "tag dropped": lambda token, _l, _d: token.partition(".")[0],
    "overlong": lambda token, _l, _d: token + "A" * 5000,
    "garbage": lambda _t, _l, _d: "not-a-token",
    "signed with another key": lambda _t, lead_id, delivery_id: sign_token(
        {"k": "c", "l": lead_id, "d": delivery_id, "u": "https://evil.example/"},
        key=b"another-key-0123456789",
    ),
    "a token of another kind": _other_kind,
    "an unsubscribe token": lambda _t, lead_id, delivery_id: sign_token(
        {"k": "u", "l": lead_id, "d": delivery_id}, key=SECRET.encode()
    ),
    "a javascript: target": lambda _t, lead_id, delivery_id: sign_token(
        {"k": "c", "l": lead_id, "d": delivery_id, "u": "javascript:alert(1)"}, key=SECRET.encode()
    ),
}


@pytest.mark.parametrize("forge", CLICK_FORGERIES.values(), ids=CLICK_FORGERIES.keys())
async def test_a_forged_click_or_pixel_token_is_a_404_and_records_nothing(
    web: Web, forge: Callable[[str, int, int], str]
) -> None:
    mailed = await _mail_first_step(web)
    click = forge(mailed.clicks[TARGET].removeprefix("/t/c/"), mailed.lead_id, mailed.delivery_id)
    pixel = forge(mailed.pixel.removeprefix("/t/o/"), mailed.lead_id, mailed.delivery_id)

    responses = [
        await web.client.get(f"/t/c/{click}"),
        await web.client.get(f"/t/o/{pixel}"),
        await web.client.get(f"/t/p/{click}"),
    ]

    for response in responses:
        assert response.status_code == 404
        assert "location" not in response.headers
        assert "Link not valid" in response.text
    assert await web.events() == []
    assert await web.count(touchpoints, touchpoints.c.kind.in_(["email_click", "email_open"])) == 0
    assert web.enqueued == []


async def test_a_valid_token_is_answered_when_the_database_fails(web: Web) -> None:
    mailed = await _mail_first_step(web)
    # Given a database that refuses every event (its table is gone)
    async with web.runtime.db.transaction() as conn:
        await conn.execute(text("ALTER TABLE events RENAME TO events_gone"))

    # When the lead opens the email and clicks
    pixel = await web.client.get(mailed.pixel)
    click = await web.client.get(mailed.clicks[TARGET])

    # Then it still gets its pixel and its page; the failure is counted, and nothing is enqueued
    assert (pixel.status_code, pixel.content) == (200, PIXEL_GIF)
    assert click.status_code == 307
    assert click.headers["location"].startswith(f"{TARGET}?nl=")
    metrics = (await web.client.get("/metrics")).text
    assert _metric(metrics, "nurture_tracking_requests_total", route="open", outcome="error") == 1
    assert _metric(metrics, "nurture_tracking_requests_total", route="click", outcome="error") == 1
    assert web.enqueued == []


async def test_a_valid_token_of_a_lead_that_is_gone_is_answered_and_records_nothing(web: Web) -> None:
    ghost = sign_token({"k": "c", "l": 424242, "d": 1, "u": TARGET}, key=SECRET.encode())
    response = await web.client.get(f"/t/c/{ghost}")
    assert response.status_code == 307
    assert response.headers["location"].startswith(f"{TARGET}?nl=")
    assert await web.events() == []
    assert web.enqueued == []


# --- share links, site.js and site visits ------------------------------------------------------------------


async def test_a_share_link_made_with_the_cli_records_a_proposal_view_and_redirects(web: Web) -> None:
    mailed = await _mail_first_step(web)
    proposal = "https://docs.acmeflow.example/proposals/kestrel?sig=a%2Fb&v=2"

    created = await asyncio.to_thread(
        web.nurture,
        "link",
        "create",
        "--lead",
        "MEI@example.com",
        "--url",
        proposal,
        "--kind",
        "proposal",
        "--format",
        "json",
    )
    assert created.returncode == 0, created.stderr
    link = json.loads(created.stdout)
    assert link["url"].startswith(f"{web.base_url}/t/p/")
    assert link["url"] == share_url(
        web.base_url, lead_id=mailed.lead_id, url=proposal, kind="proposal", key=SECRET.encode()
    )

    response = await web.client.get(link["url"].removeprefix(web.base_url))

    assert response.status_code == 307
    assert response.headers["location"] == proposal  # exactly: a presigned URL breaks with one more parameter
    [view] = await web.events()
    assert (view["type"], view["lead_id"], view["delivery_id"]) == ("proposal_view", mailed.lead_id, None)
    assert view["properties"]["url"] == proposal
    assert web.enqueued == [mailed.lead_id]


async def test_site_js_is_cacheable_javascript_that_posts_visits_to_this_web(web: Web) -> None:
    response = await web.client.get("/t/site.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert json.dumps(f"{web.base_url}/t/v") in response.text
    assert "sendBeacon" in response.text
    assert "nl=" in response.text


async def test_a_visit_with_a_visitor_token_records_a_page_visit(web: Web) -> None:
    mailed = await _mail_first_step(web)
    token = visitor_token(mailed.lead_id, key=SECRET.encode())
    origin = {"origin": "https://acmeflow.example", "content-type": "text/plain;charset=UTF-8"}

    # When site.js reports a visit of the pricing page (with the landing parameter still in the URL)
    body = {
        "token": token,
        "url": f"https://acmeflow.example/pricing?plan=team&nl={token}",
        "referrer": TARGET,
    }
    response = await web.client.post("/t/v", content=json.dumps(body), headers=origin)

    # Then it is answered for any origin, and recorded without the token in its URL
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    [visit] = await web.events()
    assert (visit["type"], visit["lead_id"]) == ("page_visit", mailed.lead_id)
    assert visit["properties"]["url"] == "https://acmeflow.example/pricing?plan=team"
    assert visit["properties"]["referrer"] == TARGET
    assert web.enqueued == [mailed.lead_id]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"url": "https://acmeflow.example/"}, 404),
        ({"token": "forged.token", "url": "https://acmeflow.example/"}, 404),
        ({"token": "OPEN", "url": "https://acmeflow.example/"}, 404),
        ({"token": "VISITOR", "url": "javascript:alert(1)"}, 400),
        ({"token": "VISITOR"}, 400),
        ("not json", 400),
        (["VISITOR"], 404),
    ],
    ids=["no token", "forged", "an open token", "bad url", "no url", "not json", "an array"],
)
async def test_a_visit_without_a_valid_visitor_token_or_url_records_nothing(
    web: Web, body: Any, status: int
) -> None:
    mailed = await _mail_first_step(web)
    tokens = {
        "VISITOR": visitor_token(mailed.lead_id, key=SECRET.encode()),
        "OPEN": mailed.pixel.removeprefix("/t/o/"),
    }
    content = body if isinstance(body, str) else json.dumps(body)
    for name, token in tokens.items():
        content = content.replace(name, token)

    response = await web.client.post("/t/v", content=content)

    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == "*"
    assert await web.events() == []
    assert web.enqueued == []


async def test_a_cors_preflight_for_visits_is_allowed(web: Web) -> None:
    response = await web.client.options(
        "/t/v", headers={"origin": "https://acmeflow.example", "access-control-request-method": "POST"}
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]


# --- the API -----------------------------------------------------------------------------------------------


async def _api_key(web: Web, name: str = "crm-sync") -> str:
    created = await asyncio.to_thread(web.nurture, "apikey", "create", name)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert re.fullmatch(r"nk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", key)
    return key


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_the_api_refuses_a_request_without_a_valid_key_and_changes_nothing(web: Web) -> None:
    await _mail_first_step(web)
    key = await _api_key(web)
    prefix = key.split("_")[1]
    event = {"email": LEAD, "type": "content_download"}
    lead = {"email": "new@example.com"}
    wrong = [
        {},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer"},
        _bearer("nk_00000000_" + "A" * 43),
        _bearer(f"nk_{prefix}_" + "A" * 43),  # a known prefix with the wrong secret
        _bearer(key + "x"),
    ]

    for headers in wrong:
        for path, body in (("/api/events", event), ("/api/leads", lead)):
            response = await web.client.post(path, json=body, headers=headers)
            assert response.status_code == 401, (headers, path)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json() == {"error": "a valid API key is required"}

    assert await web.events() == []
    assert await web.count(leads, leads.c.email == "new@example.com") == 0
    assert web.enqueued == []


async def test_a_revoked_key_is_refused(web: Web) -> None:
    await _mail_first_step(web)
    key = await _api_key(web)
    event = {"email": LEAD, "type": "form_submit"}
    assert (await web.client.post("/api/events", json=event, headers=_bearer(key))).status_code == 202

    revoked = await asyncio.to_thread(web.nurture, "apikey", "revoke", key.split("_")[1])
    assert revoked.returncode == 0, revoked.stderr

    response = await web.client.post("/api/events", json=event, headers=_bearer(key))
    assert response.status_code == 401
    assert len(await web.events()) == 1
    listed = await asyncio.to_thread(web.nurture, "apikey", "list", "--format", "json")
    [row] = json.loads(listed.stdout)
    assert row["revoked_at"] is not None
    assert key not in listed.stdout


async def test_an_event_posted_twice_with_the_same_id_counts_once(web: Web) -> None:
    mailed = await _mail_first_step(web)
    key = await _api_key(web)
    event = {
        "id": "crm-evt-1",
        "email": "Mei@Example.com",
        "type": "content_download",
        "occurred_at": "2026-03-02T01:30:00Z",
        "url": "https://acmeflow.example/resources/checklist.pdf",
        "properties": {"asset": "checklist", "pages": 4},
    }

    first = await web.client.post("/api/events", json=event, headers=_bearer(key))
    web.clock.advance(timedelta(minutes=5))
    again = await web.client.post("/api/events", json=event, headers=_bearer(key))
    without_id = {k: v for k, v in event.items() if k != "id"}
    by_header = await web.client.post(
        "/api/events", json=without_id, headers={**_bearer(key), "idempotency-key": "crm-evt-1"}
    )

    assert first.status_code == 202
    [stored] = await web.events()
    assert first.json() == {
        "index": 0,
        "event_id": stored["id"],
        "lead_id": mailed.lead_id,
        "duplicate": False,
    }
    for replay in (again, by_header):
        assert replay.status_code == 200
        assert replay.json() == {"duplicate": True, "lead_id": mailed.lead_id}
    assert (stored["type"], stored["idempotency_key"]) == ("content_download", "crm-evt-1")
    assert stored["occurred_at"] == datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
    assert stored["properties"] == {"asset": "checklist", "pages": 4, "url": event["url"]}
    assert await web.count(touchpoints, touchpoints.c.kind == "content_download") == 1
    assert web.enqueued == [mailed.lead_id]  # the replays enqueue nothing


async def test_the_idempotency_key_header_makes_a_single_event_count_once(web: Web) -> None:
    mailed = await _mail_first_step(web)
    key = await _api_key(web)
    headers = {**_bearer(key), "idempotency-key": "booking-77"}
    event = {"lead_id": mailed.lead_id, "type": "meeting_booked"}

    answers = [await web.client.post("/api/events", json=event, headers=headers) for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 200, 200]
    [stored] = await web.events()
    assert stored["idempotency_key"] == "booking-77"
    conflicting = await web.client.post("/api/events", json={**event, "id": "other"}, headers=headers)
    assert conflicting.status_code == 400
    assert web.enqueued == [mailed.lead_id]


async def test_a_batch_of_events_records_the_good_ones_and_reports_the_rest(web: Web) -> None:
    mailed = await _mail_first_step(web)
    key = await _api_key(web)
    batch = [
        {"email": LEAD, "type": "page_visit", "url": "https://acmeflow.example/pricing", "id": "v-1"},
        {"email": "nobody@example.com", "type": "form_submit"},
        {"email": LEAD, "type": "Form Submit"},
        {"email": LEAD, "type": "email_sent"},
        {"email": LEAD, "type": "page_visit"},
        {"lead_id": 999_999, "type": "email_reply"},
        {"email": LEAD, "lead_id": mailed.lead_id, "type": "email_reply"},
        {"email": LEAD, "type": "webinar_attended", "occurred_at": "2030-01-01T00:00:00Z"},
        {"email": LEAD, "type": "page_visit", "url": "https://acmeflow.example/pricing", "id": "v-1"},
        {"email": LEAD, "type": "email_reply", "unknown_field": 1},
        "not an object",
        {"email": LEAD, "type": "webinar_attended"},
    ]

    response = await web.client.post("/api/events", json=batch, headers=_bearer(key))

    assert response.status_code == 200
    answer = response.json()
    assert (answer["received"], answer["recorded"], answer["duplicates"]) == (12, 2, 1)
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
        (1, "email"),
        (2, "type"),
        (3, "type"),
        (4, "url"),
        (5, "lead_id"),
        (6, None),
        (7, "occurred_at"),
        (9, "unknown_field"),
        (10, None),
    ]
    assert [(e["index"], "event_id" in e) for e in answer["events"]] == [(0, True), (8, False), (11, True)]
    assert [e["type"] for e in await web.events()] == ["page_visit", "webinar_attended"]
    assert web.enqueued == [mailed.lead_id]  # once per request, however many of its events were new


@pytest.mark.parametrize(
    ("content", "status"),
    [("{not json", 400), ("42", 400), ('"text"', 400), ('{"type": NaN}', 400)],
)
async def test_a_body_that_is_not_a_json_object_or_array_is_a_400(
    web: Web, content: str, status: int
) -> None:
    key = await _api_key(web)
    for path in ("/api/events", "/api/leads"):
        response = await web.client.post(path, content=content, headers=_bearer(key))
        assert response.status_code == status
        assert "error" in response.json()


async def test_api_leads_upserts_one_lead_or_many_and_reports_rejected_rows(web: Web) -> None:
    key = await _api_key(web)

    # When one lead is posted as an object
    one = await web.client.post(
        "/api/leads",
        json={
            "email": "Ana@Example.com",
            "first_name": "Ana",
            "grade": "nurturable",
            "tags": {"utm_source": "ads"},
        },
        headers=_bearer(key),
    )
    # And then many, one of them the same person again, two of them bad
    many = await web.client.post(
        "/api/leads",
        json=[
            {"email": "ana@example.com", "company": "Kestrel", "company_size": 250},
            {"email": "not-an-address", "first_name": "X"},
            {"email": "bo@example.com", "grade": "hot"},
            {"email": "cy@example.com", "timezone": "Asia/Taipei", "tags": {"form": "demo"}},
            {"email": "di@example.com", "first_name": ["D"]},
        ],
        headers=_bearer(key),
    )

    assert one.status_code == 200
    assert one.json() == {"received": 1, "inserted": 1, "updated": 0, "rejected": [], "stage_refused": []}
    assert many.status_code == 200
    answer = many.json()
    assert (answer["received"], answer["inserted"], answer["updated"]) == (5, 1, 1)
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
        (1, "email"),
        (2, "grade"),
        (4, "first_name"),
    ]
    async with web.runtime.db.transaction() as conn:
        ana = (await conn.execute(select(leads).where(leads.c.email == "ana@example.com"))).one()
        cy = (await conn.execute(select(leads).where(leads.c.email == "cy@example.com"))).one()
    assert (ana.first_name, ana.company, ana.company_size, ana.tags) == (
        "Ana",
        "Kestrel",
        "250",
        {"utm_source": "ads"},
    )
    assert (cy.timezone, cy.tags) == ("Asia/Taipei", {"form": "demo"})
    assert await web.count(leads) == 2

    # When every lead of a request is bad, the request is a 422
    bad = await web.client.post("/api/leads", json={"email": "nope"}, headers=_bearer(key))
    assert bad.status_code == 422
    assert bad.json()["rejected"][0]["field"] == "email"
    assert web.enqueued == []


async def test_api_leads_never_moves_a_stage_back_unless_the_item_gives_a_stage_reason(web: Web) -> None:
    key = await _api_key(web)
    # Given two leads that sales made SQLs through the API
    first = [{"email": "ana@example.com", "stage": "sql"}, {"email": "bo@example.com", "stage": "sql"}]
    assert (await web.client.post("/api/leads", json=first, headers=_bearer(key))).status_code == 200
    moved = [
        {"email": "ana@example.com", "stage": "opportunity"},
        {"email": "bo@example.com", "stage": "customer"},
    ]
    forward = await web.client.post("/api/leads", json=moved, headers=_bearer(key))
    assert forward.json()["stage_refused"] == []
    # When both are posted back at `lead`, the second with a stage_reason, and a company for the first
    back = [
        {"email": "ana@example.com", "stage": "lead", "company": "Kestrel"},
        {"email": "bo@example.com", "stage": "lead", "stage_reason": "  CRM:   deal lost "},
    ]
    response = await web.client.post("/api/leads", json=back, headers=_bearer(key))
    # Then the first keeps its stage (reported, its company applied) and the second moves back with the reason
    assert response.status_code == 200
    answer = response.json()
    assert (answer["updated"], answer["rejected"]) == (2, [])
    [refused] = answer["stage_refused"]
    assert (refused["index"], refused["field"]) == (0, "stage")
    assert "kept opportunity" in refused["reason"]
    async with web.runtime.db.transaction() as conn:
        stored = {r.email: r for r in await conn.execute(select(leads))}
        history = [
            (r.lead_id, r.from_stage, r.to_stage, r.path, r.reason)
            for r in await conn.execute(select(stage_changes).order_by(stage_changes.c.id))
        ]
    assert (stored["ana@example.com"].stage, stored["ana@example.com"].company) == ("opportunity", "Kestrel")
    assert stored["bo@example.com"].stage == "lead"
    ana, bo = stored["ana@example.com"].id, stored["bo@example.com"].id
    assert history == [
        (ana, "sql", "opportunity", "api", "api"),
        (bo, "sql", "customer", "api", "api"),
        (bo, "customer", "lead", "api", "CRM: deal lost"),
    ]
    # And a stage_reason that is not a string is refused like any bad field
    bad = await web.client.post(
        "/api/leads", json={"email": "bo@example.com", "stage_reason": 7}, headers=_bearer(key)
    )
    assert (bad.status_code, bad.json()["rejected"][0]["field"]) == (422, "stage_reason")


# --- metrics -----------------------------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when it is absent)."""
    for line in text.splitlines():
        sample = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if (
            sample
            and sample.group(1) == name
            and dict(re.findall(r'(\w+)="([^"]*)"', sample.group(2) or "")) == labels
        ):
            return float(sample.group(3))
    return 0.0


async def test_metrics_count_events_by_type_requests_by_outcome_and_replays(web: Web) -> None:
    mailed = await _mail_first_step(web)
    key = await _api_key(web)
    await web.client.get(mailed.pixel)
    await web.client.get(mailed.clicks[TARGET])
    await web.client.get("/t/c/forged")
    event = {"email": LEAD, "type": "email_reply", "id": "r-1"}
    for _ in range(2):
        await web.client.post("/api/events", json=event, headers=_bearer(key))
    await web.client.post("/api/events", json=event)

    response = await web.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _metric(text, "nurture_events_recorded_total", type="email_open") == 1
    assert _metric(text, "nurture_events_recorded_total", type="email_click") == 1
    assert _metric(text, "nurture_events_recorded_total", type="email_reply") == 1
    assert _metric(text, "nurture_events_duplicate_total", type="email_reply") == 1
    assert _metric(text, "nurture_tracking_requests_total", route="open", outcome="ok") == 1
    assert _metric(text, "nurture_tracking_requests_total", route="click", outcome="ok") == 1
    assert _metric(text, "nurture_tracking_requests_total", route="click", outcome="invalid") == 1
    assert _metric(text, "nurture_tracking_requests_total", route="api_events", outcome="ok") == 2
    assert _metric(text, "nurture_tracking_requests_total", route="api_events", outcome="unauthorized") == 1
