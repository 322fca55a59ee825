"""The rep's lead page and its sign-in over real HTTP: uvicorn on 127.0.0.1, a migrated SQLite file, httpx.

The lead's history is made by the real flows (import, enroll, recorded events, rescore with its alert);
API keys and login links are made as an operator would make them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from nurture.clock import FrozenClock
from nurture.core.events import InboundEvent
from nurture.core.tracking import session_token
from nurture.db.migrate import upgrade
from nurture.db.queries.apikeys import insert_api_key
from nurture.db.queries.tables import leads
from nurture.flows.engage import record_event, record_events
from nurture.flows.escalate import rescore
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from nurture.runtime import Runtime, build_runtime
from nurture.settings import Settings
from nurture.web.auth import issue_api_key, revoke_key
from nurture.web.server import WebAddress, build_server
from nurture.web.sessions import issue_login_link
from tests.harness.ports import listening_socket
from tests.project import PROJECT

pytestmark = pytest.mark.integration

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SECRET = "timeline-test-secret-key-0123456789"
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei
PRICING = "https://acmeflow.example/pricing"
BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"accept": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
COOKIE = "nurture_session"


@dataclass
class Web:
    client: httpx.AsyncClient
    runtime: Runtime
    clock: FrozenClock
    base_url: str
    tmp_path: Path

    async def key(self, name: str = "lin") -> str:
        return (await issue_api_key(self.runtime.db, name=name, now=self.clock.now())).key

    async def sign_in(self, key: str, next_path: str = "/") -> httpx.Response:
        return await self.client.post(
            "/login", data={"api_key": key, "next": next_path}, headers={**FORM, **BROWSER}
        )

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
async def serve(
    tmp_path: Path, *, base_url: str | None = None, clock: FrozenClock | None = None
) -> AsyncIterator[Web]:
    """The web on a loopback port; `base_url` is what it believes it is reached at (default: that port)."""
    sock = listening_socket()
    host, port = sock.getsockname()
    local = f"http://{host}:{port}"
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path / "var",
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
            "secret_key": SECRET,
            "log_level": "WARNING",
            "base_url": base_url or local,
        }
    )
    clock = clock or FrozenClock(START)
    runtime = build_runtime(settings, clock=clock)
    server = build_server(runtime, WebAddress(host, port))
    try:
        await upgrade(runtime.db)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with httpx.AsyncClient(base_url=local, timeout=10) as client:
                yield Web(client, runtime, clock, base_url or local, tmp_path)
        finally:
            server.should_exit = True
            await task
    finally:
        sock.close()
        await runtime.aclose()


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    async with serve(tmp_path) as web:
        yield web


async def add_lead(web: Web, email: str = "mei@example.com", **fields: str) -> int:
    row = {"email": email, "grade": "nurturable", "timezone": "Asia/Taipei", **fields}
    db = web.runtime.db
    await import_leads(db, [row], now=web.clock.now() - timedelta(days=1))
    async with db.transaction() as conn:
        return int((await conn.execute(select(leads.c.id).where(leads.c.email == email))).scalar_one())


async def hot_lead(web: Web, **fields: str) -> int:
    """A lead in a campaign that visits the pricing page (an alert) and books a meeting (mql: it leaves)."""
    rt, now = web.runtime, web.clock.now()
    fields = {"first_name": "Mei", "last_name": "Lin", "company": "Example Logistics", **fields}
    lead_id = await add_lead(web, owner="lin.chen@acmeflow.example", title="COO", **fields)
    await enroll(rt.db, rt.catalog, now - timedelta(hours=3))
    for type_, hours, url in (("page_visit", 2, PRICING), ("meeting_booked", 1, None)):
        at = now - timedelta(hours=hours)
        event = InboundEvent(lead_id=lead_id, type=type_, occurred_at=at, url=url)
        assert await record_event(rt.db, event, now=at) is not None
        await rescore(lead_id, db=rt.db, catalog=rt.catalog, now=at)
    return lead_id


def _set_cookie(response: httpx.Response) -> str:
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}=")]
    return header


def _cookie_value(response: httpx.Response) -> str:
    return _set_cookie(response).split(";")[0].partition("=")[2]


# --- signing in ---------------------------------------------------------------------------------------------


async def test_login_form_asks_for_a_key_and_keeps_a_local_next(web: Web) -> None:
    page = await web.client.get("/login", params={"next": "/leads/7"}, headers=BROWSER)
    assert page.status_code == 200
    assert re.search(r'<input[^>]+name="api_key"[^>]+type="password"', page.text)
    assert '<input type="hidden" name="next" value="/leads/7">' in page.text
    assert '<form method="post" action="/login">' in page.text
    assert "<script" not in page.text


async def test_login_with_a_good_key_sets_the_session_cookie_and_redirects_to_next(web: Web) -> None:
    lead_id = await hot_lead(web)
    response = await web.sign_in(await web.key(), f"/leads/{lead_id}")

    assert response.status_code == 303
    assert response.headers["location"] == f"/leads/{lead_id}"
    attributes = [a.strip().lower() for a in _set_cookie(response).split(";")[1:]]
    assert {"httponly", "path=/", "samesite=lax", "max-age=43200"} <= set(attributes)
    assert "secure" not in attributes  # the base URL is http
    # And the cookie opens the page
    page = await web.client.get(f"/leads/{lead_id}", headers=BROWSER)
    assert page.status_code == 200
    assert "Mei Lin" in page.text
    assert '<form method="post" action="/logout">' in page.text


async def test_login_with_a_bad_or_revoked_key_is_refused(web: Web) -> None:
    revoked = await web.key("gone")
    await revoke_key(web.runtime.db, revoked, now=START)
    for key in ("nk_00000000_" + "A" * 43, "not a key", "", revoked):
        response = await web.sign_in(key, "/leads/1")
        assert response.status_code == 401, key
        assert "not valid, or it was revoked" in response.text
        assert '<input type="hidden" name="next" value="/leads/1">' in response.text
        assert not response.headers.get_list("set-cookie")


@pytest.mark.parametrize(
    "next_path",
    [
        "//evil.example",
        "//evil.example/leads/1",
        "https://evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/leads/1\r\nSet-Cookie: x=1",
        "/ spaced",
        "",
    ],
)
async def test_login_never_redirects_off_this_site(web: Web, next_path: str) -> None:
    response = await web.sign_in(await web.key(), next_path)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    form = await web.client.get("/login", params={"next": next_path}, headers=BROWSER)
    assert form.status_code in (200, 303)
    assert form.status_code == 200 or form.headers["location"] == "/"


async def test_a_login_post_marked_cross_site_is_refused(web: Web) -> None:
    response = await web.client.post(
        "/login",
        data={"api_key": await web.key(), "next": "/"},
        headers={**FORM, **BROWSER, "sec-fetch-site": "cross-site"},
    )
    assert response.status_code == 403
    assert not response.headers.get_list("set-cookie")


async def test_logout_clears_the_cookie_and_only_answers_a_post(web: Web) -> None:
    lead_id = await add_lead(web)
    await web.sign_in(await web.key())
    assert (await web.client.get("/logout")).status_code == 405

    response = await web.client.post("/logout", headers=BROWSER)

    assert (response.status_code, response.headers["location"]) == (303, "/login")
    assert "max-age=0" in _set_cookie(response).lower()
    page = await web.client.get(f"/leads/{lead_id}", headers=BROWSER)
    assert page.status_code == 303


async def test_a_session_ends_when_its_key_is_revoked_or_after_twelve_hours(web: Web) -> None:
    lead_id = await add_lead(web)
    key = await web.key()
    await web.sign_in(key)
    assert (await web.client.get(f"/leads/{lead_id}", headers=BROWSER)).status_code == 200
    # Twelve hours on, the session has expired
    web.clock.advance(timedelta(hours=12))
    assert (await web.client.get(f"/leads/{lead_id}", headers=BROWSER)).status_code == 303
    # A new session ends as soon as its key is revoked
    await web.sign_in(key)
    assert (await web.client.get(f"/leads/{lead_id}", headers=BROWSER)).status_code == 200
    await revoke_key(web.runtime.db, key, now=web.clock.now())
    assert (await web.client.get(f"/leads/{lead_id}", headers=BROWSER)).status_code == 303


async def test_a_forged_or_foreign_session_cookie_is_no_session(web: Web) -> None:
    lead_id = await add_lead(web)
    await web.key()  # key id 1 exists
    forged = session_token(
        1, expires_at=START + timedelta(hours=1), session_id="s" * 22, key=b"another-secret-0123456789"
    )
    for value in (forged, "garbage", forged + "x"):
        web.client.cookies.clear()
        response = await web.client.get(
            f"/leads/{lead_id}", headers={**BROWSER, "cookie": f"{COOKIE}={value}"}
        )
        assert response.status_code == 303, value


async def test_the_session_cookie_is_secure_and_host_only_behind_https(tmp_path: Path) -> None:
    async with serve(tmp_path, base_url="https://nurture.example.com") as web:
        response = await web.sign_in(await web.key(), "/")
    [header] = response.headers.get_list("set-cookie")
    assert header.startswith("__Host-nurture_session=")
    assert "secure" in [a.strip().lower() for a in header.split(";")]


# --- login links --------------------------------------------------------------------------------------------


async def test_a_login_link_signs_in_once_and_goes_to_next(web: Web) -> None:
    lead_id = await hot_lead(web)
    link = await issue_login_link(
        web.runtime.db,
        await web.key(),
        base_url=web.base_url,
        key=SECRET.encode(),
        now=START,
        next_path=f"/leads/{lead_id}",
    )
    path = urlsplit(link.url).path + "?" + urlsplit(link.url).query
    # A link preview (HEAD) does not use it up
    assert (await web.client.head(path)).status_code == 200

    first = await web.client.get(path, headers=BROWSER)
    assert (first.status_code, first.headers["location"]) == (303, f"/leads/{lead_id}")
    assert (await web.client.get(f"/leads/{lead_id}", headers=BROWSER)).status_code == 200

    web.client.cookies.clear()
    again = await web.client.get(path, headers=BROWSER)
    assert again.status_code == 403
    assert "expired or was used already" in again.text
    assert not again.headers.get_list("set-cookie")


async def test_an_expired_or_revoked_or_session_token_link_does_not_sign_in(web: Web) -> None:
    db, key = web.runtime.db, SECRET.encode()
    expiring = await issue_login_link(
        db, await web.key(), base_url=web.base_url, key=key, now=START, ttl=timedelta(minutes=1)
    )
    revoked_key = await web.key("leaver")
    revoked = await issue_login_link(db, revoked_key, base_url=web.base_url, key=key, now=START)
    await revoke_key(db, revoked_key, now=START)
    session = await web.sign_in(await web.key("third"))
    web.client.cookies.clear()
    web.clock.advance(timedelta(minutes=2))

    for path in (urlsplit(expiring.url).path, urlsplit(revoked.url).path, f"/login/{_cookie_value(session)}"):
        response = await web.client.get(path, headers=BROWSER)
        assert response.status_code == 403, path
        assert not response.headers.get_list("set-cookie")


async def test_login_link_command_prints_a_link_to_the_lead(web: Web) -> None:
    lead_id = await add_lead(web)
    prefix = (await web.key()).split("_")[1]

    made = await asyncio.to_thread(
        web.nurture, "login-link", "--key", prefix, "--lead", str(lead_id), "--format", "json"
    )

    assert made.returncode == 0, made.stderr
    data = json.loads(made.stdout)
    assert data["key_prefix"] == prefix
    assert datetime.fromisoformat(data["expires_at"]) > datetime.now(UTC)
    url = urlsplit(data["url"])
    assert f"{url.scheme}://{url.netloc}" == web.base_url
    assert parse_qs(url.query) == {"next": [f"/leads/{lead_id}"]}
    unknown = await asyncio.to_thread(web.nurture, "login-link", "--key", "0badc0de")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: no active API key with prefix '0badc0de'"


async def test_login_link_takes_the_key_as_apikey_list_shows_it_and_lands_on_the_dashboard(web: Web) -> None:
    # Given a key, named the way `nurture apikey list` shows it
    await web.key("lin")
    listed = await asyncio.to_thread(web.nurture, "apikey", "list")
    shown = listed.stdout.split()[0]
    assert re.fullmatch(r"nk_[0-9a-f]{8}_\.\.\.", shown), listed.stdout
    # When a login link is made with it and no --lead, and a browser follows the link
    made = await asyncio.to_thread(web.nurture, "login-link", "--key", shown, "--format", "json")
    assert made.returncode == 0, made.stderr
    url = urlsplit(json.loads(made.stdout)["url"])
    landed = await web.client.get(f"{url.path}?{url.query}", headers=BROWSER)
    # Then it signs in and lands on the dashboard, which answers
    assert (landed.status_code, landed.headers["location"]) == (303, "/dashboard")
    dashboard = await web.client.get("/dashboard", headers=BROWSER)
    assert dashboard.status_code == 200
    assert '<h1 id="funnel">Funnel</h1>' in dashboard.text


async def test_login_link_takes_a_unique_start_of_a_prefix_and_refuses_an_ambiguous_or_unknown_one(
    web: Web,
) -> None:
    # Given two keys whose prefixes start alike (made through the query, to choose the prefixes)
    async with web.runtime.db.transaction() as conn:
        for prefix in ("abcd0001", "abcd0002"):
            await insert_api_key(conn, name=prefix, prefix=prefix, key_hash="0" * 64, now=START)

    def login_link(key: str) -> subprocess.CompletedProcess[str]:
        return web.nurture("login-link", "--key", key, "--next", "/dashboard?days=7", "--format", "json")

    made, ambiguous, unknown, malformed = await asyncio.gather(
        *(asyncio.to_thread(login_link, k) for k in ("abcd0002", "abcd", "nk_0badc0de_...", "nk_abc"))
    )
    assert made.returncode == 0, made.stderr
    data = json.loads(made.stdout)
    assert data["key_prefix"] == "abcd0002"
    assert parse_qs(urlsplit(data["url"]).query) == {"next": ["/dashboard?days=7"]}
    for result, reason in (
        (
            ambiguous,
            "error: prefix 'abcd' is ambiguous: it starts nk_abcd0001, nk_abcd0002; give more digits",
        ),
        (unknown, "error: no active API key with prefix '0badc0de'"),
        (malformed, "error: 'nk_abc' is not an API key prefix (such as nk_1d9f231d, as `apikey list` shows)"),
    ):
        assert (result.returncode, result.stderr.strip()) == (1, reason)


HOSTILE_NEXT = [
    "https://evil.example/",
    "http://evil.example/leads/1",
    "HTTPS://evil.example",
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "/..//evil.example",
    "/%2e%2e//evil.example",
    "/leads/../../evil.example",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
    "leads/1",
    " /leads/1",
    "/leads/1 ",
    "/\tevil.example",
    "/\r\nLocation: https://evil.example",
    "/\x00",
    "/le\u2028ads",
    "/\uff0f\uff0fevil.example",
    "",
    "/" + "a" * 2001,
]


@pytest.mark.parametrize("next_path", HOSTILE_NEXT)
async def test_a_login_link_refuses_a_next_that_is_not_a_path_on_this_site(web: Web, next_path: str) -> None:
    with pytest.raises(ValueError, match="is not a path on this site"):
        await issue_login_link(
            web.runtime.db,
            await web.key(),
            base_url=web.base_url,
            key=SECRET.encode(),
            now=START,
            next_path=next_path,
        )


async def test_login_link_command_refuses_a_hostile_next_or_next_with_lead_in_one_line(web: Web) -> None:
    prefix = (await web.key()).split("_")[1]
    hostile, both = await asyncio.gather(
        asyncio.to_thread(web.nurture, "login-link", "--key", prefix, "--next", "//evil.example/x"),
        asyncio.to_thread(web.nurture, "login-link", "--key", prefix, "--next", "/dashboard", "--lead", "7"),
    )
    assert (hostile.returncode, hostile.stderr.strip()) == (
        1,
        "error: --next: '//evil.example/x' is not a path on this site (such as /leads/42)",
    )
    assert (both.returncode, both.stderr.strip()) == (1, "error: give --lead ID or --next PATH, not both")


# --- the lead page ------------------------------------------------------------------------------------------


async def test_the_lead_page_sends_a_browser_to_login_and_answers_an_api_client_401(web: Web) -> None:
    lead_id = await add_lead(web)

    browser = await web.client.get(f"/leads/{lead_id}", params={"before": "5"}, headers=BROWSER)
    assert browser.status_code == 303
    location = urlsplit(browser.headers["location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": [f"/leads/{lead_id}?before=5"]}

    for headers in (JSON, {"accept": "*/*"}, {**BROWSER, "authorization": "Bearer nk_bad"}):
        api = await web.client.get(f"/leads/{lead_id}", headers=headers)
        assert api.status_code == 401, headers
        assert api.headers["www-authenticate"] == 'Bearer realm="nurture"'
        assert api.json()["error"]


async def test_the_lead_page_answers_a_bearer_key_in_html_or_json(web: Web) -> None:
    lead_id = await hot_lead(web)
    bearer = {"authorization": f"Bearer {await web.key()}"}

    page = await web.client.get(f"/leads/{lead_id}", headers={**bearer, **BROWSER})
    data = await web.client.get(f"/leads/{lead_id}", headers={**bearer, **JSON})

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "Sign out" not in page.text  # no session to end
    assert data.status_code == 200
    assert "Accept" in data.headers["vary"]
    body = data.json()
    assert (body["lead"]["id"], body["lead"]["first_name"], body["lead"]["stage"]) == (lead_id, "Mei", "mql")
    assert body["owner"] == {"email": "lin.chen@acmeflow.example", "name": "Lin Chen"}
    assert body["zone"] == "Asia/Taipei"
    assert [(e["type"], e["url"], e["base_points"]) for e in body["score"]["events"]] == [
        ("page_visit", PRICING, 15),
        ("meeting_booked", None, 50),
    ]
    assert [(c["before"], c["after"]) for c in body["score_history"]] == [(15, 65), (0, 15)]
    assert [(c["before"], c["after"]) for c in body["stage_changes"]] == [("lead", "mql")]
    assert [(e["state"], e["exit_reason"]) for e in body["enrollments"]] == [("exited", "qualified")]
    # The pricing visit's alert, still pending when the lead crossed MQL, carries the handoff
    assert [a["trigger"] for a in body["alerts"]] == ["mql"]
    assert [t["kind"] for t in body["touchpoints"][:2]] == ["alert_revised", "exited"]
    assert body["touchpoints"][-1]["kind"] == "enrolled"
    assert body["page"] == {
        "before": None,
        "older": None,
        "older_url": None,
        "total": len(body["touchpoints"]),
    }


async def test_an_unknown_lead_is_a_404(web: Web) -> None:
    bearer = {"authorization": f"Bearer {await web.key()}"}
    for lead_id in ("424242", str(2**63), "0"):
        page = await web.client.get(f"/leads/{lead_id}", headers={**bearer, **BROWSER})
        data = await web.client.get(f"/leads/{lead_id}", headers={**bearer, **JSON})
        assert (page.status_code, data.status_code) == (404, 404), lead_id
        assert "No such lead" in page.text
        assert data.json() == {"error": "no such lead"}
    assert (await web.client.get("/leads/mei", headers={**bearer, **BROWSER})).status_code == 404


async def test_the_page_shows_the_leads_score_events_history_and_alerts(web: Web) -> None:
    lead_id = await hot_lead(web)
    await web.sign_in(await web.key())

    page = (await web.client.get(f"/leads/{lead_id}", headers=BROWSER)).text

    assert '<h1 id="lead-name">Mei Lin</h1>' in page
    assert "COO · Example Logistics" in page
    assert "Lin Chen" in page  # the owner, by name
    assert "Times in Asia/Taipei" in page
    assert "Why the score is " in page
    assert PRICING in page
    assert "Visited a page" in page
    assert "Booked a meeting" in page
    assert "Buying signal: pricing visit" in page  # the alert
    assert "15 → 65" in page  # score history
    assert "lead → mql" in page  # stage change
    assert "qualified" in page  # why it left its campaign
    # 09:00 in Taipei is 01:00 UTC: times are on the lead's wall clock
    assert '<time datetime="2026-03-02T01:00:00+00:00">Mon 2 Mar 2026, 09:00</time>' in page


async def test_lead_data_on_the_page_is_escaped(web: Web) -> None:
    lead_id = await add_lead(
        web, first_name="<script>alert(1)</script>", company='"><img src=x onerror=alert(2)>'
    )
    rt = web.runtime
    event = InboundEvent(
        lead_id=lead_id, type="page_visit", occurred_at=START, url="https://a.example/<b>x</b>"
    )
    await record_event(rt.db, event, now=START)
    await web.sign_in(await web.key())

    page = (await web.client.get(f"/leads/{lead_id}", headers=BROWSER)).text

    assert "<script" not in page
    assert "<img" not in page
    assert "<b>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "https://a.example/&lt;b&gt;x&lt;/b&gt;" in page


async def test_the_pages_forbid_scripts_allow_their_one_style_and_are_never_cached(web: Web) -> None:
    lead_id = await add_lead(web)
    await web.sign_in(await web.key())
    signed_in = [await web.client.get(path, headers=BROWSER) for path in (f"/leads/{lead_id}", "/")]
    web.client.cookies.clear()
    for response in [*signed_in, await web.client.get("/login", headers=BROWSER)]:
        path = response.request.url.path
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src" not in csp
        assert "unsafe-inline" not in csp
        assert "form-action 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        [style] = re.findall(r"<style>(.*?)</style>", response.text, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}'" in csp
        assert "<script" not in response.text
        assert ' style="' not in response.text


async def test_touchpoints_come_200_a_page_with_a_link_to_older_ones(web: Web) -> None:
    # Given a lead with 205 touchpoints, one a minute
    lead_id = await add_lead(web)
    events = [
        InboundEvent(lead_id=lead_id, type="email_open", occurred_at=START - timedelta(minutes=m))
        for m in range(205)
    ]
    await record_events(web.runtime.db, events, now=START)
    bearer = {"authorization": f"Bearer {await web.key()}"}

    first = await web.client.get(f"/leads/{lead_id}", headers={**bearer, **JSON})
    page = await web.client.get(f"/leads/{lead_id}", headers={**bearer, **BROWSER})

    body = first.json()
    assert len(body["touchpoints"]) == 200
    assert body["page"]["total"] == 205
    older = body["page"]["older_url"]
    assert older == f"/leads/{lead_id}?before={body['touchpoints'][-1]['id']}"
    assert f'<a href="{older}" rel="next">Older →</a>' in page.text
    second = await web.client.get(older, headers={**bearer, **JSON})
    assert len(second.json()["touchpoints"]) == 5
    assert second.json()["page"]["older_url"] is None
    times = [tp["at"] for tp in body["touchpoints"] + second.json()["touchpoints"]]
    assert times == sorted(times, reverse=True)
    assert len(set(times)) == 205
    older_page = await web.client.get(older, headers={**bearer, **BROWSER})
    assert f'<a href="/leads/{lead_id}">← Newest</a>' in older_page.text
    assert "Why the score is" not in older_page.text  # older pages are the touchpoints only
    bad = await web.client.get(f"/leads/{lead_id}", params={"before": "x"}, headers={**bearer, **JSON})
    assert bad.status_code == 400


async def test_home_shows_who_is_signed_in_and_otherwise_sends_to_login(web: Web) -> None:
    anonymous = await web.client.get("/", headers=BROWSER)
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/login")
    await web.sign_in(await web.key("Lin's phone"))
    home = await web.client.get("/", headers=BROWSER)
    assert home.status_code == 200
    assert "Lin&#39;s phone" in home.text
