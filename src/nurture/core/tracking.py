"""Signed tracking tokens (HMAC-SHA256) and the URLs built from them. Pure: the key is passed in.

A token is `<payload>.<tag>`: the payload is compact JSON in urlsafe base64 without padding, the tag the first
128 bits of HMAC-SHA256 over the payload *text*, also urlsafe base64. Signing the text rather than the decoded
bytes makes every token canonical: base64 has several spellings of the same bytes (the unused low bits of the
last character), and each of them would otherwise verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Final, cast

from nurture.errors import TrackingTokenError

_TAG_BYTES: Final = 16  # 128 bits: forging needs ~2**128 guesses, each one a web request
_MAX_TOKEN_CHARS: Final = 2048  # longer input is refused before any decoding work
# Domain separation: a token tag can never be replayed as a Message-ID tag, and the reverse.
_TOKEN_CONTEXT: Final = b"nurture.token.v1\x00"
_MESSAGE_ID_CONTEXT: Final = b"nurture.message-id.v1\x00"
_DOMAIN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")

TrackingPayload = dict[str, str | int]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(body: str, key: bytes) -> str:
    mac = hmac.new(key, _TOKEN_CONTEXT + body.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(mac[:_TAG_BYTES])


def _check_key(key: bytes) -> None:
    if not key:
        raise ValueError("the signing key must not be empty")


def sign_token(payload: Mapping[str, str | int], *, key: bytes) -> str:
    """Return a URL-safe token carrying `payload`, which only the holder of `key` can produce."""
    _check_key(key)
    for name, value in payload.items():
        # bool is an int subclass and would come back as True, not 1: refuse it rather than change it
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"token payload values must be str or int, not {type(value).__name__}")
    text = json.dumps(dict(payload), separators=(",", ":"), sort_keys=True)
    body = _b64encode(text.encode("ascii"))  # json.dumps escapes everything outside ASCII
    return f"{body}.{_tag(body, key)}"


def verify_token(token: str, *, key: bytes) -> TrackingPayload:
    """Return the payload of a token signed with `key`.

    Raises:
        TrackingTokenError: the token was altered, truncated, extended, signed with another key or is garbage.
    """
    _check_key(key)
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
        raise TrackingTokenError("malformed tracking token")
    body, dot, tag = token.partition(".")
    if not dot or not hmac.compare_digest(_tag(body, key), tag):
        raise TrackingTokenError("tracking token signature does not match")
    try:
        decoded = json.loads(_b64decode(body).decode("ascii"))
    except (binascii.Error, ValueError) as exc:  # only reachable with a leaked key
        raise TrackingTokenError("tracking token payload is unreadable") from exc
    if not isinstance(decoded, dict) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in decoded.values()
    ):
        raise TrackingTokenError("tracking token payload has the wrong shape")
    return cast(TrackingPayload, decoded)


def unsubscribe_url(base_url: str, *, lead_id: int, delivery_id: int | None, key: bytes) -> str:
    """Return the one-click unsubscribe URL for a lead, optionally naming the delivery it came from.

    The payload is `{"k": "u", "l": lead_id, "d": delivery_id}`; "d" is left out when `delivery_id` is None
    (an unsubscribe link outside any delivery), so readers use `payload.get("d")`.
    """
    payload: dict[str, str | int] = {"k": "u", "l": lead_id}
    if delivery_id is not None:
        payload["d"] = delivery_id
    return f"{base_url.rstrip('/')}/u/{sign_token(payload, key=key)}"


def message_id_for(delivery_id: int, *, domain: str, key: bytes) -> str:
    """Return the Message-ID of a delivery: `<d{id}.{tag}@{domain}>`.

    It is a function of the delivery alone, so a retry reuses it; the keyed tag keeps ids of one deployment
    from being guessed, or collided with, by another.
    """
    _check_key(key)
    if not domain or not set(domain) <= _DOMAIN_CHARS or domain.startswith(".") or ".." in domain:
        raise ValueError(f"not a usable Message-ID domain: {domain!r}")
    mac = hmac.new(key, _MESSAGE_ID_CONTEXT + str(delivery_id).encode("ascii"), hashlib.sha256).digest()
    # hex, not base64: some mail systems compare Message-IDs case-insensitively
    return f"<d{delivery_id}.{mac[:8].hex()}@{domain}>"
