"""Signing out ends the session at once on every web process, and no cookie value gives a 500.

Two webs run on the same database (SQLite file or PostgreSQL), as two `nurture web` processes would; a rep
signs in on one, and the cookie is tried on both before and after the logout.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

from nurture.core.tracking import login_link_token, session_token, sign_token
from nurture.db.engine import Database
from nurture.db.queries.apikeys import end_session, fetch_active_api_key
from nurture.db.queries.tables import catalog_state
from nurture.web.auth import issue_api_key, revoke_key
from nurture.web.sessions import key_of_session, sign_out, start_session
from tests.attacks.conftest import SECRET, START, Site, SiteFactory

COOKIE = "nurture_session"  # the name over plain http
FORM = {"content-type": "application/x-www-form-urlencoded", "accept": "text/html"}
KEY = SECRET.encode()
LATER = START + timedelta(hours=1)
SESSION_ID = "s" * 22
SECOND = timedelta(seconds=1)


async def _two_webs(site_factory: SiteFactory, db: Database) -> tuple[Site, Site]:
    first: Site = await site_factory(database_url=db.url)
    second: Site = await site_factory(database_url=db.url)
    return first, second


def _header(cookie: str) -> bytes:
    return f"{COOKIE}={cookie}".encode()  # bytes: a browser may send any octets


async def _status_with(site: Site, cookie: str, path: str = "/") -> int:
    async with httpx.AsyncClient(base_url=site.base_url, timeout=10) as client:
        response = await client.get(path, headers={b"cookie": _header(cookie), b"accept": b"text/html"})
    if response.status_code == 303:
        assert response.headers["location"].startswith("/login"), response.headers["location"]
    return response.status_code


async def test_logout_ends_the_session_on_every_web_process_at_once(
    site_factory: SiteFactory, db: Database
) -> None:
    first, second = await _two_webs(site_factory, db)
    async with first.client, second.client:
        signed_in = await first.client.post("/login", data={"api_key": first.key, "next": "/"}, headers=FORM)
        assert signed_in.status_code == 303
        cookie = signed_in.cookies[COOKIE]
        assert [await _status_with(site, cookie) for site in (first, second)] == [200, 200]

        out = await second.client.post("/logout", headers={"cookie": f"{COOKIE}={cookie}"})

        assert (out.status_code, out.headers["location"]) == (303, "/login")
        assert [await _status_with(site, cookie) for site in (first, second)] == [303, 303]
        # Another session of the same key lives on: logout ends one session, not the key
        again = await first.client.post("/login", data={"api_key": first.key, "next": "/"}, headers=FORM)
        assert await _status_with(second, again.cookies[COOKIE]) == 200


def _hostile_cookies() -> dict[str, str]:
    def signed(**payload: object) -> str:
        return sign_token(payload, key=KEY)  # type: ignore[arg-type]

    good = {"k": "s", "a": 1, "e": int(LATER.timestamp()), "n": SESSION_ID}
    return {
        "empty": "",
        "garbage": "garbage",
        "only a dot": ".",
        "very long": "A" * 4000 + "." + "B" * 22,
        "non-ascii": "sess\u00e9ion.t\u00e4g",
        "quoted": '"abc.def"',
        "forged with another secret": session_token(
            1, expires_at=LATER, session_id=SESSION_ID, key=b"another-secret-0123456789"
        ),
        "tampered tag": session_token(1, expires_at=LATER, session_id=SESSION_ID, key=KEY) + "x",
        "a login link as a cookie": login_link_token(1, expires_at=LATER, nonce=SESSION_ID, key=KEY),
        "without a session id (made before ids)": signed(k="s", a=1, e=good["e"]),
        "session id not a string": signed(**{**good, "n": 12345678901234567890}),
        "session id too short": signed(**{**good, "n": "short"}),
        "session id with a quote": signed(**{**good, "n": "x'" * 10}),
        "expired": signed(**{**good, "e": int((START - timedelta(seconds=1)).timestamp())}),
        "expiry past year 9999": signed(**{**good, "e": 10**15}),
        "expiry not a number": signed(**{**good, "e": "tomorrow"}),
        "no such key": signed(**{**good, "a": 999_999}),
        "key id negative": signed(**{**good, "a": -1}),
        "extra field": signed(**good, x=1),
    }


HOSTILE = _hostile_cookies()


@pytest.mark.parametrize("cookie", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_session_cookie_is_no_session_and_no_500(site: Site, cookie: str) -> None:
    assert await _status_with(site, cookie) == 303
    lead_page = await _status_with(site, cookie, "/leads/1")
    assert lead_page in (303, 401), lead_page
    async with httpx.AsyncClient(base_url=site.base_url, timeout=10) as client:
        out = await client.post("/logout", headers={b"cookie": _header(cookie)})
    assert out.status_code == 303


async def test_an_ended_session_is_forgotten_once_it_would_have_expired(db: Database) -> None:
    async def kept() -> int:
        async with db.transaction() as conn:
            count = (await conn.execute(select(func.count()).select_from(catalog_state))).scalar_one()
            return int(count)

    before = await kept()
    expires_at = START + timedelta(hours=12)
    async with db.transaction() as conn:
        await end_session(conn, "a" * 22, expires_at=expires_at, now=START)
        await end_session(conn, "a" * 22, expires_at=expires_at, now=START)  # ending twice is fine
    assert await kept() == before + 1
    async with db.transaction() as conn:  # a second before it would have expired: still kept
        await end_session(conn, "b" * 22, expires_at=expires_at, now=expires_at - timedelta(seconds=1))
    assert await kept() == before + 2
    async with db.transaction() as conn:
        await end_session(conn, "c" * 22, expires_at=expires_at + timedelta(hours=1), now=expires_at)
    assert await kept() == before + 1  # both earlier ones expired at `expires_at`; only "c" is left


async def test_a_request_with_a_session_asks_the_database_one_query(db: Database) -> None:
    issued = await issue_api_key(db, name="rep", now=START)
    async with db.transaction() as conn:
        stored = await fetch_active_api_key(conn, issued.prefix)
    assert stored is not None
    live, ended = (start_session(stored, key=KEY, now=START, ttl=timedelta(hours=12)) for _ in range(2))
    await sign_out(db, ended, key=KEY, now=START)
    selects: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    async def asked(token: str) -> tuple[bool, int]:
        selects.clear()
        found = await key_of_session(db, token, key=KEY, now=LATER)
        return found is not None, len(selects)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        assert await asked(live) == (True, 1)
        assert await asked(ended) == (False, 1)  # signed out of
        await revoke_key(db, issued.prefix, now=START)
        assert await asked(live) == (False, 1)  # its key revoked
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)


@pytest.mark.parametrize(("hours", "setting"), [(12.0, {}), (1.5, {"session_hours": 1.5})])
@pytest.mark.parametrize(("past", "status"), [(-SECOND, 200), (timedelta(0), 303), (SECOND, 303)])
async def test_a_session_lasts_its_ttl_and_not_a_second_more(
    site_factory: SiteFactory, hours: float, setting: dict[str, float], past: timedelta, status: int
) -> None:
    site: Site = await site_factory(**setting)  # NURTURE_SESSION_HOURS, 12 by default
    async with site.client:
        signed_in = await site.client.post("/login", data={"api_key": site.key, "next": "/"}, headers=FORM)
        assert f"Max-Age={int(hours * 3600)};" in signed_in.headers["set-cookie"]
        cookie = signed_in.cookies[COOKIE]
        site.clock.advance(timedelta(hours=hours) + past)
        assert await _status_with(site, cookie) == status
