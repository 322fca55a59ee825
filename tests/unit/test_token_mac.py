"""A tracking token's MAC is compared whole and in constant time: no byte of it may be skipped or leaked.

`bench/token_timing.py` measures the timing itself; these tests pin the behaviour that makes it flat: every
change to the MAC, down to its last byte, is refused, and the comparison is `hmac.compare_digest` over the
whole tag as sent (no early length check, no prefix).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.tracking import sign_token, verify_token
from nurture.errors import TrackingTokenError

KEY = b"unit-test-key-0123456789abcdef01"
PAYLOAD: dict[str, str | int] = {"k": "c", "l": 42, "d": 7, "u": "https://acmeflow.example/pricing"}
TOKEN = sign_token(PAYLOAD, key=KEY)
BODY, _, TAG = TOKEN.partition(".")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _with_tag(mac: bytes) -> str:
    return f"{BODY}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _mac() -> bytes:
    return base64.urlsafe_b64decode(TAG + "=" * (-len(TAG) % 4))


@pytest.mark.parametrize("bit", range(8))
def test_a_token_whose_mac_differs_only_in_its_last_byte_is_rejected(bit: int) -> None:
    mac = _mac()
    forged = _with_tag(mac[:-1] + bytes([mac[-1] ^ (1 << bit)]))
    assert forged != TOKEN
    with pytest.raises(TrackingTokenError):
        verify_token(forged, key=KEY)


@given(position=st.integers(min_value=0, max_value=len(TAG) - 1), char=st.sampled_from(B64))
def test_any_one_character_changed_in_the_tag_is_rejected(position: int, char: str) -> None:
    forged = f"{BODY}.{TAG[:position]}{char}{TAG[position + 1 :]}"
    if forged == TOKEN:
        assert verify_token(forged, key=KEY) == PAYLOAD
        return
    with pytest.raises(TrackingTokenError):
        verify_token(forged, key=KEY)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record the arguments of every `hmac.compare_digest` call, and still compare."""
    calls: list[tuple[str, str]] = []
    real: Callable[[str, str], bool] = hmac.compare_digest

    def recording(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return calls


@pytest.mark.parametrize(
    ("token", "sent_tag"),
    [
        (TOKEN, TAG),
        (TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B"), TAG[:-1] + ("A" if TAG[-1] != "A" else "B")),
        (TOKEN[:-4], TAG[:-4]),  # truncated: still one constant-time comparison, not a length shortcut
        (f"{BODY}.", ""),
    ],
)
def test_verification_compares_the_whole_tag_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch, token: str, sent_tag: str
) -> None:
    calls = _spy(monkeypatch)

    with contextlib.suppress(TrackingTokenError):
        verify_token(token, key=KEY)

    assert len(calls) == 1
    expected, given_tag = calls[0]
    assert (expected, given_tag) == (TAG, sent_tag)
    assert len(expected) == 22  # the whole 128-bit tag, as sent in tokens
