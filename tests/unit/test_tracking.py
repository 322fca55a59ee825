"""Tracking tokens: they round-trip, and nothing but the signer's exact output verifies."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nurture.core.tracking import message_id_for, sign_token, unsubscribe_url, verify_token
from nurture.errors import TrackingTokenError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

payloads = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.text(max_size=40)),
    max_size=5,
)
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="


@given(payload=payloads)
def test_verify_token_returns_what_sign_token_signed(payload: dict[str, str | int]) -> None:
    assert verify_token(sign_token(payload, key=KEY), key=KEY) == payload


@given(payload=payloads)
def test_sign_token_output_is_url_safe(payload: dict[str, str | int]) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{22}", sign_token(payload, key=KEY))


@given(payload=payloads, data=st.data())
def test_verify_token_rejects_any_single_character_change(
    payload: dict[str, str | int], data: st.DataObject
) -> None:
    token = sign_token(payload, key=KEY)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="index")
    replacement = data.draw(st.characters(codec="utf-8"), label="replacement")
    assume(replacement != token[index])
    with pytest.raises(TrackingTokenError):
        verify_token(token[:index] + replacement + token[index + 1 :], key=KEY)


@given(payload=payloads, data=st.data())
def test_verify_token_rejects_truncation(payload: dict[str, str | int], data: st.DataObject) -> None:
    token = sign_token(payload, key=KEY)
    start = data.draw(st.integers(min_value=0, max_value=len(token)), label="start")
    end = data.draw(st.integers(min_value=start, max_value=len(token)), label="end")
    assume((start, end) != (0, len(token)))
    with pytest.raises(TrackingTokenError):
        verify_token(token[start:end], key=KEY)


@given(payload=payloads, suffix=st.text(min_size=1), prefix=st.text())
def test_verify_token_rejects_appended_or_prepended_data(
    payload: dict[str, str | int], suffix: str, prefix: str
) -> None:
    token = sign_token(payload, key=KEY)
    with pytest.raises(TrackingTokenError):
        verify_token(token + suffix, key=KEY)
    with pytest.raises(TrackingTokenError):
        verify_token(prefix + suffix + token, key=KEY)


@given(garbage=st.one_of(st.text(), st.text(alphabet=TOKEN_ALPHABET)))
def test_verify_token_rejects_random_strings(garbage: str) -> None:
    with pytest.raises(TrackingTokenError):
        verify_token(garbage, key=KEY)


@given(payload=payloads)
def test_verify_token_rejects_a_token_signed_with_another_key(payload: dict[str, str | int]) -> None:
    with pytest.raises(TrackingTokenError):
        verify_token(sign_token(payload, key=OTHER_KEY), key=KEY)


def test_verify_token_rejects_a_swapped_payload_under_a_valid_tag() -> None:
    _, _, tag_a = sign_token({"l": 1}, key=KEY).partition(".")
    body_b, _, _ = sign_token({"l": 2}, key=KEY).partition(".")
    with pytest.raises(TrackingTokenError):
        verify_token(f"{body_b}.{tag_a}", key=KEY)


def test_verify_token_rejects_an_overlong_token() -> None:
    with pytest.raises(TrackingTokenError):
        verify_token("a" * 5000 + "." + "b" * 22, key=KEY)


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_sign_token_refuses_values_that_would_not_round_trip(value: object) -> None:
    with pytest.raises(TypeError):
        sign_token({"x": value}, key=KEY)  # type: ignore[dict-item]


def test_sign_token_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError, match="key"):
        sign_token({"x": 1}, key=b"")


def test_unsubscribe_url_carries_lead_and_delivery() -> None:
    url = unsubscribe_url("https://t.example/", lead_id=7, delivery_id=42, key=KEY)
    assert url.startswith("https://t.example/u/")
    token = url.removeprefix("https://t.example/u/")
    assert verify_token(token, key=KEY) == {"k": "u", "l": 7, "d": 42}


def test_unsubscribe_url_without_a_delivery_leaves_d_out() -> None:
    url = unsubscribe_url("https://t.example", lead_id=7, delivery_id=None, key=KEY)
    assert verify_token(url.rsplit("/", 1)[1], key=KEY) == {"k": "u", "l": 7}


def test_message_id_for_is_stable_for_one_delivery_and_key() -> None:
    first = message_id_for(42, domain="mail.acme.example", key=KEY)
    assert first == message_id_for(42, domain="mail.acme.example", key=KEY)
    assert re.fullmatch(r"<d42\.[0-9a-f]{16}@mail\.acme\.example>", first)


def test_message_id_for_differs_across_deliveries_and_deployments() -> None:
    ids = {
        message_id_for(42, domain="acme.example", key=KEY),
        message_id_for(43, domain="acme.example", key=KEY),
        message_id_for(42, domain="acme.example", key=OTHER_KEY),
    }
    assert len(ids) == 3


@pytest.mark.parametrize("domain", ["", "a b", "a>b", "x@y", ".acme", "a..b", "acme\r\n"])
def test_message_id_for_refuses_an_unusable_domain(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        message_id_for(1, domain=domain, key=KEY)
