"""The tracking web over real HTTP: uvicorn on 127.0.0.1, a migrated SQLite file, httpx as the client.

The unsubscribe URL used is the one the sent email carries in its List-Unsubscribe header.
"""

from __future__ import annotations

import asyncio
import base64
import email
import hashlib
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from nurture.clock import FrozenClock
from nurture.core.tracking import sign_token
from nurture.db.migrate import upgrade
from nurture.db.queries.tables import deliveries, enrollments, leads, touchpoints
from nurture.errors import NurtureError
from nurture.flows.deliver import Outcome, deliver
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.runtime import Runtime, build_runtime
from nurture.service import run_forever
from nurture.settings import Settings
from nurture.web.server import WebAddress, build_server
from tests.project import PROJECT

pytestmark = pytest.mark.integration

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SECRET = "web-test-secret-key-0123456789"
# Monday 2026-03-02 10:00 in Taipei: the first step of the campaign is due at once.
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
ONE_CLICK = {"content-type": "application/x-www-form-urlencoded"}
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    # Validated from the given values only: nothing leaks in from this machine's environment or .env.
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


@contextmanager
def _loopback_socket(*, listen: bool) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if listen:
        sock.listen()
    try:
        yield sock
    finally:
        sock.close()


@asynccontextmanager
async def _serving(runtime: Runtime, sock: socket.socket) -> AsyncIterator[httpx.AsyncClient]:
    """Serve `create_app(runtime)` on `sock`, which already listens: a client can connect at once."""
    host, port = sock.getsockname()
    server = build_server(runtime, WebAddress(host, port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@dataclass
class Web:
    client: httpx.AsyncClient
    runtime: Runtime
    clock: FrozenClock


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    with _loopback_socket(listen=True) as sock:
        host, port = sock.getsockname()
        clock = FrozenClock(START)
        runtime = build_runtime(_settings(tmp_path, base_url=f"http://{host}:{port}"), clock=clock)
        try:
            await upgrade(runtime.db)
            async with _serving(runtime, sock) as client:
                yield Web(client, runtime, clock)
        finally:
            await runtime.aclose()


@dataclass(frozen=True)
class Mailed:
    lead_id: int
    delivery_id: int
    path: str  # /u/<token>, from the email's List-Unsubscribe header


async def _mail_first_step(web: Web, address: str = "mei@example.com") -> Mailed:
    """Import and enroll a lead, send its first email to the outbox, read the unsubscribe link it carries."""
    runtime = web.runtime
    await import_leads(
        runtime.db, [{"email": address, "grade": "nurturable", "timezone": "Asia/Taipei"}], now=START
    )
    await enroll(runtime.db, runtime.catalog, START)
    claimed = (
        await dispatch(
            runtime.db, START, lease=timedelta(minutes=10), limit=10, stale_after=timedelta(minutes=5)
        )
    ).claimed
    outcomes = [await deliver(i, db=runtime.db, mailer=runtime.mailer, now=START) for i in claimed]
    assert outcomes == [Outcome.SENT]
    [eml] = [p for p in runtime.settings.outbox_dir.glob("*.eml") if address.encode() in p.read_bytes()]
    message = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["List-Unsubscribe-Post"] == ONE_CLICK_BODY
    url = re.fullmatch(r"<(http://[^>]+)>", str(message["List-Unsubscribe"]))
    assert url is not None
    async with runtime.db.transaction() as conn:
        lead_id = (await conn.execute(select(leads.c.id).where(leads.c.email == address))).scalar_one()
    return Mailed(lead_id=lead_id, delivery_id=claimed[0], path=urlsplit(url.group(1)).path)


async def _state(web: Web, lead_id: int) -> dict[str, Any]:
    """Everything an unsubscribe may change about a lead."""
    async with web.runtime.db.transaction() as conn:
        lead = (await conn.execute(select(leads).where(leads.c.id == lead_id))).one()
        states = (
            await conn.execute(select(enrollments.c.state).where(enrollments.c.lead_id == lead_id))
        ).all()
        statuses = (
            await conn.execute(
                select(deliveries.c.id, deliveries.c.status)
                .where(deliveries.c.lead_id == lead_id)
                .order_by(deliveries.c.id)
            )
        ).all()
        kinds = (
            await conn.execute(
                select(touchpoints.c.kind).where(touchpoints.c.lead_id == lead_id).order_by(touchpoints.c.id)
            )
        ).scalars()
        return {
            "lead": dict(lead._mapping),
            "enrollments": [s.state for s in states],
            "deliveries": [(d.id, d.status) for d in statuses],
            "touchpoints": list(kinds),
        }


def _assert_safe_headers(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp
    assert "unsafe-inline" not in csp
    assert "form-action 'self'" in csp
    assert "frame-ancestors 'none'" in csp


async def test_healthz_answers_ok_when_the_database_answers(web: Web) -> None:
    response = await web.client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response.headers["cache-control"] == "no-store"


async def test_healthz_answers_503_when_the_database_is_down(tmp_path: Path) -> None:
    # A port that refuses connections: bound, never listening.
    with _loopback_socket(listen=False) as closed, _loopback_socket(listen=True) as sock:
        down = f"postgresql://nurture@127.0.0.1:{closed.getsockname()[1]}/nurture"
        runtime = build_runtime(_settings(tmp_path, database_url=down))
        try:
            async with _serving(runtime, sock) as client:
                response = await client.get("/healthz")
        finally:
            await runtime.aclose()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


async def test_get_shows_a_confirmation_form_and_does_not_unsubscribe(web: Web) -> None:
    mailed = await _mail_first_step(web)
    before = await _state(web, mailed.lead_id)

    # When a link scanner (or the person) fetches the link
    page = await web.client.get(mailed.path)
    head = await web.client.head(mailed.path)

    # Then it sees a form that posts back to the same URL, and nothing changed
    assert (page.status_code, head.status_code) == (200, 200)
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<form method="post">' in page.text
    assert re.search(r"<button[^>]*>Unsubscribe</button>", page.text)
    assert page.text.count("<button") == 1
    assert "<script" not in page.text
    _assert_safe_headers(page)
    assert await _state(web, mailed.lead_id) == before
    assert before["lead"]["suppressed"] is False


async def test_the_pages_inline_style_is_the_one_the_csp_allows(web: Web) -> None:
    mailed = await _mail_first_step(web)
    page = await web.client.get(mailed.path)
    style = re.search(r"<style>(.*?)</style>", page.text, re.DOTALL)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in page.headers["content-security-policy"]


async def test_one_click_post_unsubscribes_and_a_second_post_changes_nothing(web: Web) -> None:
    mailed = await _mail_first_step(web)
    web.clock.advance(timedelta(hours=3))

    # When the mail client sends the RFC 8058 one-click POST
    response = await web.client.post(mailed.path, content=ONE_CLICK_BODY, headers=ONE_CLICK)

    # Then the lead is unsubscribed: suppressed, out of its campaign, nothing more to send
    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    _assert_safe_headers(response)
    after = await _state(web, mailed.lead_id)
    assert (after["lead"]["suppressed"], after["lead"]["suppressed_reason"]) == (True, "unsubscribed")
    assert after["enrollments"] == ["exited"]
    assert {status for i, status in after["deliveries"] if i != mailed.delivery_id} == {"cancelled"}
    assert dict(after["deliveries"])[mailed.delivery_id] == "sent"
    assert after["touchpoints"] == ["enrolled", "email_sent", "unsubscribed"]
    async with web.runtime.db.transaction() as conn:
        touch = (await conn.execute(select(touchpoints).where(touchpoints.c.kind == "unsubscribed"))).one()
    assert (touch.delivery_id, touch.occurred_at) == (mailed.delivery_id, START + timedelta(hours=3))

    # When the person also presses the form's button a day later
    web.clock.advance(timedelta(days=1))
    again = await web.client.post(mailed.path, data={"List-Unsubscribe": "One-Click"})

    # Then they see the same page, and nothing changed
    assert again.status_code == 200
    assert "You are unsubscribed" in again.text
    assert await _state(web, mailed.lead_id) == after


def _altered_signature(token: str, _lead_id: int, _delivery_id: int) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


def _altered_payload(token: str, lead_id: int, delivery_id: int) -> str:
    body = json.dumps({"d": delivery_id, "k": "u", "l": lead_id + 1}, separators=(",", ":"))
    encoded = base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()
    return f"{encoded}.{token.partition('.')[2]}"


FORGERIES: dict[str, Callable[[str, int, int], str]] = {
    "altered signature": _altered_signature,
    "altered payload": _altered_payload,
    "signature dropped": lambda token, _l, _d: token.partition(".")[0],
    "random text": lambda _t, _l, _d: "not-a-token",
    "random dotted text": lambda _t, _l, _d: "eyJrIjoidSJ9.AAAAAAAAAAAAAAAAAAAAAA",
    "overlong": lambda token, _l, _d: token + "A" * 3000,
    "non-ascii": lambda token, _l, _d: token + "%C3%A9",
    "signed with another key": lambda _t, lead_id, delivery_id: sign_token(
        {"k": "u", "l": lead_id, "d": delivery_id}, key=b"another-deployment-key-0123456789"
    ),
    "a click token": lambda _t, lead_id, delivery_id: sign_token(
        {"k": "c", "l": lead_id, "d": delivery_id}, key=SECRET.encode()
    ),
    "no kind": lambda _t, lead_id, _d: sign_token({"l": lead_id}, key=SECRET.encode()),
    "lead id as text": lambda _t, lead_id, _d: sign_token({"k": "u", "l": str(lead_id)}, key=SECRET.encode()),
    "no lead id": lambda _t, _l, delivery_id: sign_token({"k": "u", "d": delivery_id}, key=SECRET.encode()),
    "delivery id as text": lambda _t, lead_id, delivery_id: sign_token(
        {"k": "u", "l": lead_id, "d": str(delivery_id)}, key=SECRET.encode()
    ),
    "an extra key": lambda _t, lead_id, delivery_id: sign_token(
        {"k": "u", "l": lead_id, "d": delivery_id, "u": "https://elsewhere.example/"}, key=SECRET.encode()
    ),
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
async def test_a_forged_token_is_a_404_and_changes_nothing(
    web: Web, forge: Callable[[str, int, int], str]
) -> None:
    mailed = await _mail_first_step(web)
    before = await _state(web, mailed.lead_id)
    token = mailed.path.removeprefix("/u/")
    forged = forge(token, mailed.lead_id, mailed.delivery_id)
    assert forged != token

    page = await web.client.get(f"/u/{forged}")
    posted = await web.client.post(f"/u/{forged}", content=ONE_CLICK_BODY, headers=ONE_CLICK)

    for response in (page, posted):
        assert response.status_code == 404
        assert "Link not valid" in response.text
        assert "<form" not in response.text
        _assert_safe_headers(response)
    assert await _state(web, mailed.lead_id) == before


async def test_unknown_paths_and_methods_get_a_plain_page_with_the_same_headers(web: Web) -> None:
    missing = await web.client.get("/nothing-here")
    wrong_method = await web.client.put("/u/anything")
    assert (missing.status_code, wrong_method.status_code) == (404, 405)
    assert set(wrong_method.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    for response in (missing, wrong_method):
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        _assert_safe_headers(response)


async def test_the_server_leaves_the_process_signal_handlers_alone(tmp_path: Path) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with _loopback_socket(listen=True) as sock:
        runtime = build_runtime(_settings(tmp_path))
        try:
            await upgrade(runtime.db)
            async with _serving(runtime, sock) as client:
                assert (await client.get("/healthz")).status_code == 200
                during = {sig: signal.getsignal(sig) for sig in before}
        finally:
            await runtime.aclose()
    assert during == before


async def _wait_until_listening(port: int, service: asyncio.Task[None]) -> None:
    """Wait for `nurture run` to accept connections (it migrates and starts its parts first)."""
    for _ in range(600):
        if service.done():
            service.result()
            pytest.fail("the service stopped before it listened")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # nothing to join: the port opens when uvicorn gets to it
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"nothing listened on port {port}")


async def test_run_serves_the_web_beside_scheduler_and_worker_and_stops_on_sigterm(tmp_path: Path) -> None:
    with _loopback_socket(listen=False) as probe:
        port = probe.getsockname()[1]
    settings = _settings(tmp_path, worker_threads=1, base_url=f"http://127.0.0.1:{port}")
    address = WebAddress("127.0.0.1", port)

    # Given `nurture run`: scheduler, worker threads and the web in one process
    service = asyncio.create_task(run_forever(settings, with_scheduler=True, with_worker=True, web=address))
    await _wait_until_listening(port, service)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}

    # When the process gets SIGTERM, our handler (not uvicorn's) stops everything
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(service, timeout=60)

    # Then the web is gone with the rest
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_the_web_fails_with_a_reason_when_its_port_is_taken(tmp_path: Path) -> None:
    with _loopback_socket(listen=True) as taken:
        address = WebAddress(*taken.getsockname())
        with pytest.raises(NurtureError, match=f"could not start on {address}"):
            await asyncio.wait_for(
                run_forever(_settings(tmp_path), with_scheduler=False, with_worker=False, web=address),
                timeout=60,
            )
