"""API keys for `/api/*`: `nk_<prefix>_<secret>`, shown once when created, kept only as prefix + SHA-256.

The prefix (8 hex digits) finds the row without a scan and names the key in `nurture apikey list`; the secret
(32 random bytes) is what makes it a key. A request authenticates with `Authorization: Bearer <key>`; the
SHA-256 of what it presents is compared with the stored one in constant time. `ApiGate` then applies the
key's rate limit (429 with `Retry-After`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from nurture.clock import Clock
from nurture.core.token_bucket import Bucket, BucketLimit, full_bucket, retry_after_header, take
from nurture.db.engine import Database
from nurture.db.queries.apikeys import (
    StoredApiKey,
    fetch_active_api_key,
    fetch_active_api_keys_starting,
    fetch_api_keys,
    insert_api_key,
    revoke_api_key,
)

_KEY: Final = re.compile(r"nk_([0-9a-f]{8})_[A-Za-z0-9_-]{43}")
# How an operator names a key: as `nurture apikey list` shows it (`nk_1d9f231d_...`), without the tail
# (`nk_1d9f231d`), bare (`1d9f231d`), or by its first digits (`1d9f`), as long as they name one key.
_REFERENCE: Final = re.compile(r"(?:nk_)?([0-9a-f]{4,8})(?:_(?:\.\.\.|\u2026)?)?")
MAX_NAME_CHARS: Final = 100


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    key: str  # the only time the whole key exists outside the client
    prefix: str
    name: str


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def key_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, or None for anything else."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def key_reference(text: str) -> str:
    """The prefix, or the start of one, that `text` names a key by: a whole key, `nk_1d9f231d_...` as
    `nurture apikey list` shows it, `nk_1d9f231d`, `1d9f231d`, or 4 to 8 of its first digits.

    Raises:
        ValueError: `text` is none of these.
    """
    text = text.strip()
    match = _REFERENCE.fullmatch(text.lower())
    prefix = key_prefix(text) or (match.group(1) if match else None)
    if prefix is None:
        raise ValueError(f"{text!r} is not an API key prefix (such as nk_1d9f231d, as `apikey list` shows)")
    return prefix


async def find_active_key(db: Database, reference: str) -> StoredApiKey:
    """The one unrevoked key that `reference` names (see `key_reference`).

    Raises:
        ValueError: `reference` is not a prefix, no active key has it, or it is the start of several.
    """
    start = key_reference(reference)
    async with db.transaction() as conn:
        found = await fetch_active_api_keys_starting(conn, start, limit=5)
    if not found:
        raise ValueError(f"no active API key with prefix {start!r}")
    if len(found) > 1:
        names = ", ".join(f"nk_{k.prefix}" for k in found)
        raise ValueError(f"prefix {start!r} is ambiguous: it starts {names}; give more digits")
    return found[0]


async def issue_api_key(db: Database, *, name: str, now: datetime) -> IssuedApiKey:
    """Create a key named `name` and return it; only its prefix and hash are stored.

    Raises:
        ValueError: the name is empty, longer than 100 characters or holds a control character.
    """
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"a key name is 1 to {MAX_NAME_CHARS} printable characters")
    async with db.transaction() as conn:
        taken = {k.prefix for k in await fetch_api_keys(conn)}
        prefix = next(p for p in iter(lambda: secrets.token_hex(4), None) if p not in taken)
        key = f"nk_{prefix}_{secrets.token_urlsafe(32)}"
        await insert_api_key(conn, name=name, prefix=prefix, key_hash=hash_api_key(key), now=now)
    return IssuedApiKey(key=key, prefix=prefix, name=name)


async def list_api_keys(db: Database) -> list[StoredApiKey]:
    async with db.transaction() as conn:
        return await fetch_api_keys(conn)


async def revoke_key(db: Database, prefix: str, *, now: datetime) -> bool:
    """Revoke the key with `prefix` (or given whole); False when no active key has it."""
    prefix = key_prefix(prefix) or prefix
    async with db.transaction() as conn:
        return await revoke_api_key(conn, prefix, now=now)


async def authenticate(db: Database, authorization: str | None) -> StoredApiKey | None:
    """The active key an `Authorization: Bearer <key>` header presents, or None."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    prefix = key_prefix(key.strip()) if scheme.lower() == "bearer" else None
    if prefix is None:
        return None
    async with db.transaction() as conn:
        stored = await fetch_active_api_key(conn, prefix)
    if stored is None or not hmac.compare_digest(hash_api_key(key.strip()), stored.key_hash):
        return None
    return stored


class RateLimiter:
    """Per-key token buckets in this process's memory (`core.token_bucket`); a restart refills them.

    Each web process limits on its own, so N processes allow N times the rate: size the settings per process.
    """

    def __init__(self, limit: BucketLimit, clock: Clock, *, max_keys: int = 10_000) -> None:
        self._limit, self._clock, self._max_keys = limit, clock, max_keys
        self._buckets: dict[str, Bucket] = {}

    def take(self, key_prefix: str) -> float | None:
        """Take one request for `key_prefix`; None if allowed, else the seconds to wait."""
        now = self._clock.now().timestamp()
        bucket = self._buckets.get(key_prefix) or full_bucket(self._limit, now)
        decision = take(bucket, self._limit, now)
        if len(self._buckets) >= self._max_keys and key_prefix not in self._buckets:
            self._buckets.clear()  # only revoked-and-reissued keys pile up; forgetting them refills them
        self._buckets[key_prefix] = decision.bucket
        return None if decision.allowed else decision.retry_after


class ApiGate:
    """What every `/api/*` request passes first: a valid, unrevoked key, then its rate limit."""

    def __init__(self, db: Database, limiter: RateLimiter) -> None:
        self._db, self._limiter = db, limiter

    async def admit(self, authorization: str | None) -> StoredApiKey | Refusal:
        stored = await authenticate(self._db, authorization)
        if stored is None:
            return Refusal(401, "a valid API key is required", {"WWW-Authenticate": 'Bearer realm="nurture"'})
        wait = self._limiter.take(stored.prefix)
        if wait is not None:
            return Refusal(
                429, "too many requests for this API key", {"Retry-After": retry_after_header(wait)}
            )
        return stored


@dataclass(frozen=True, slots=True)
class Refusal:
    status_code: int
    message: str
    headers: dict[str, str]
