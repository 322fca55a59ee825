"""Reps' sessions in a browser: a signed cookie, started with an API key or a one-time login link.

A session is a signed token (`core.tracking` kind "s") that names the API key the rep signed in with, a
random session id, and when it expires (NURTURE_SESSION_HOURS on, 12 by default); nothing is stored when it
starts. Every request verifies the token and asks, in one query, whether its key is still active and the
session was not signed out of, so revoking the key (`nurture apikey revoke`) ends every session started
with it, and `POST /logout` ends its own session on every web process at once (the ended id is kept in the
database until the session would have expired).

A login link (`nurture login-link`, kind "l") starts a session without typing the key, for a rep reading an
alert on a phone: it names a key, expires within minutes, and works once (its nonce is claimed in the
database when it is used).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlencode

from nurture.core.tracking import login_link_token, read_login_token, session_token
from nurture.db.engine import Database
from nurture.db.queries.apikeys import (
    StoredApiKey,
    claim_login_link,
    end_session,
    fetch_active_api_key_by_id,
    fetch_session_key,
)
from nurture.errors import TrackingTokenError
from nurture.web.auth import find_active_key

LOGIN_LINK_TTL: Final = timedelta(minutes=15)
LOGIN_LINK_MAX_TTL: Final = timedelta(hours=24)
HOME: Final = "/"
LOGIN_LINK_LANDING: Final = "/dashboard"  # where a login link lands without `next`: a rep's first page
MAX_NEXT_CHARS: Final = 2000


@dataclass(frozen=True, slots=True)
class SessionCookie:
    """The session cookie's name and whether it is `Secure`, both decided by the base URL's scheme.

    Over https the name carries the `__Host-` prefix: browsers then insist on Secure, Path=/ and no Domain,
    so no other host and no plain-http page can set or shadow it.
    """

    name: str
    secure: bool

    @classmethod
    def for_base_url(cls, base_url: str) -> SessionCookie:
        secure = base_url.lower().startswith("https://")
        return cls("__Host-nurture_session" if secure else "nurture_session", secure)


@dataclass(frozen=True, slots=True)
class IssuedLoginLink:
    url: str
    key_prefix: str  # the key the link signs in with
    expires_at: datetime


def start_session(api_key: StoredApiKey, *, key: bytes, now: datetime, ttl: timedelta) -> str:
    """Return the session cookie value for a rep who signed in with `api_key`, valid for `ttl`."""
    return session_token(api_key.id, expires_at=now + ttl, session_id=secrets.token_urlsafe(16), key=key)


async def key_of_session(db: Database, token: str, *, key: bytes, now: datetime) -> StoredApiKey | None:
    """The active API key a session cookie value names, or None (forged, expired, signed out of, or its key
    revoked)."""
    try:
        session = read_login_token(token, kind="s", now=now, key=key)
    except TrackingTokenError:
        return None
    async with db.transaction() as conn:
        return await fetch_session_key(conn, session.api_key_id, session.nonce)


async def sign_out(db: Database, token: str, *, key: bytes, now: datetime) -> None:
    """End the session a cookie value names, for every web process at once; a cookie that is no live
    session (forged, expired, ended before) needs no ending."""
    try:
        session = read_login_token(token, kind="s", now=now, key=key)
    except TrackingTokenError:
        return
    async with db.transaction() as conn:
        await end_session(conn, session.nonce, expires_at=session.expires_at, now=now)


async def issue_login_link(
    db: Database,
    api_key: str,
    *,
    base_url: str,
    key: bytes,
    now: datetime,
    ttl: timedelta = LOGIN_LINK_TTL,
    next_path: str | None = None,
) -> IssuedLoginLink:
    """Make a one-time link that signs a browser in with the active key `api_key` (named as `apikey list`
    shows it, by its prefix, or whole: `web.auth.key_reference`) and lands on `next_path`, by default the
    dashboard.

    Raises:
        ValueError: no active key, or several, have that prefix; `ttl` is not between a minute and
            LOGIN_LINK_MAX_TTL; or `next_path` is not a local path.
    """
    if not timedelta(minutes=1) <= ttl <= LOGIN_LINK_MAX_TTL:
        raise ValueError(f"a login link lasts from 1 minute to {LOGIN_LINK_MAX_TTL}")
    next_path = LOGIN_LINK_LANDING if next_path is None else next_path
    if local_path(next_path) != next_path:
        raise ValueError(f"{next_path!r} is not a path on this site (such as /leads/42)")
    stored = await find_active_key(db, api_key)
    expires_at = now + ttl
    token = login_link_token(stored.id, expires_at=expires_at, nonce=secrets.token_urlsafe(16), key=key)
    query = urlencode({"next": next_path})
    return IssuedLoginLink(f"{base_url.rstrip('/')}/login/{token}?{query}", stored.prefix, expires_at)


async def redeem_login_link(db: Database, token: str, *, key: bytes, now: datetime) -> StoredApiKey | None:
    """The active key a login link names, claiming the link; None when it is forged, expired or used."""
    try:
        link = read_login_token(token, kind="l", now=now, key=key)
    except TrackingTokenError:
        return None
    async with db.transaction() as conn:
        stored = await fetch_active_api_key_by_id(conn, link.api_key_id)
        if stored is None:
            return None
        first_use = await claim_login_link(conn, link.nonce, expires_at=link.expires_at, now=now)
    return stored if first_use else None


def local_path(value: str | None) -> str:
    """`value` when it is a path on this site (`/leads/42?before=7`), else HOME: never an open redirect.

    Refused: anything not starting with a single "/" (`//evil.example` and `/\\evil.example` are other
    hosts to a browser; `https://...` is absolute), anything with a space, control or non-ASCII character,
    and a path with `.` or `..` segments (`/..//evil.example` resolves to `//evil.example`; `%2e` counts).
    """
    if not value or len(value) > MAX_NEXT_CHARS or not value.isascii():
        return HOME
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return HOME
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in value):
        return HOME
    path = value.split("?", 1)[0].split("#", 1)[0]
    # WHATWG URL parsing reads `%2e` in a segment as a dot too
    if any(segment.lower().replace("%2e", ".") in (".", "..") for segment in path.split("/")):
        return HOME
    return value
