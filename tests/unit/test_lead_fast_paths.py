"""The import's fast paths give exactly what the full checks give: addresses (email-validator) and field
cleaning (a per-character pass over Unicode categories)."""

from __future__ import annotations

import re
import sys
import unicodedata

from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nurture.core.lead import LeadRow, RowError, normalise_email, normalise_row

ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-"
ODD = '.@" ()<>[]\\,;:\té\u00a0\u200b'
DOMAINS = (
    "example.com",
    "Example.COM",
    "mail.example.co.uk",
    "xn--bcher-kva.de",
    "XN--BCHER-KVA.DE",
    "bücher.de",
    "localhost",
    "example.test",
    "example.local",
    "a..com",
    "-a.com",
    "a-.com",
    "example.123",
    "example.com.",
    "ex_ample.com",
    "[127.0.0.1]",
    "a" * 63 + ".com",
    "a" * 64 + ".com",
    ".".join(["abcdefghij"] * 23) + ".com",  # 256 characters
    "",
)


def _reference(raw: str) -> tuple[str, str]:
    """What email-validator alone says, as ("ok", canonical form) or ("error", message)."""
    try:
        return "ok", validate_email(raw.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        return "error", str(exc)


def _outcome(raw: str) -> tuple[str, str]:
    try:
        return "ok", normalise_email(raw)
    except ValueError as exc:
        return "error", str(exc)


local_parts = st.one_of(
    st.text(alphabet=ATEXT + ".", min_size=0, max_size=80),
    st.text(alphabet=ATEXT + ODD, min_size=0, max_size=20),
    st.integers(min_value=1, max_value=260).map(lambda n: "a" * n),
    st.text(max_size=12),
)
domains = st.one_of(st.sampled_from(DOMAINS), st.from_regex(r"[a-zA-Z0-9.-]{1,30}", fullmatch=True))


@settings(max_examples=600, deadline=None)
@given(local=local_parts, domain=domains, padding=st.sampled_from(["", " ", "\t", " \n"]))
@example(local="Mei.Lin", domain="Example.COM", padding=" ")
@example(local="a" * 200, domain="example.com", padding="")
@example(local="a" * 240, domain="example.com", padding="")  # 252 characters: just under the limit
@example(local="INFO", domain="example.com", padding="")
@example(local="x", domain="xn--bcher-kva.de", padding="")
def test_normalise_email_agrees_with_email_validator(local: str, domain: str, padding: str) -> None:
    raw = f"{padding}{local}@{domain}{padding}"
    assert _outcome(raw) == _reference(raw)


@settings(max_examples=200, deadline=None)
@given(raw=st.text(max_size=40))
def test_normalise_email_agrees_with_email_validator_on_any_text(raw: str) -> None:
    assert _outcome(raw) == _reference(raw)


def test_normalise_email_gives_the_same_answer_with_the_domain_seen_before_or_not() -> None:
    domain = "first-seen-here.example.org"
    first = _outcome(f"A.B@{domain.upper()}")
    assert first == ("ok", f"a.b@{domain}")
    assert _outcome(f"c@{domain}") == ("ok", f"c@{domain}")
    assert _outcome(f"a..b@{domain}") == _reference(f"a..b@{domain}")


def test_every_character_printable_to_python_is_one_the_cleaning_keeps() -> None:
    # The field cleaning skips its per-character pass for printable text: that is only sound if
    # isprintable() is False for every character of a category C* or Z* except the ASCII space.
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        dropped = unicodedata.category(ch)[0] in "CZ" and ch != " "
        assert ch.isprintable() != dropped, f"U+{code:04X}"


def _reference_clean(value: str) -> str:
    keep = {" ", "\u200c", "\u200d"}
    text = unicodedata.normalize("NFC", value)
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" and ch not in keep else ch for ch in text)
    return re.sub(" {2,}", " ", text).strip()


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=30))
@example(value="  Acme \u2028 Corp\u200d\x00 ")
@example(value="Cafe\u0301  Ltd")
def test_normalise_row_cleans_a_field_as_the_per_character_pass_does(value: str) -> None:
    result = normalise_row({"email": "a@example.com", "company": value}, row_number=2)
    assert isinstance(result, LeadRow), result
    assert result.profile.get("company", "") == _reference_clean(value)


@settings(max_examples=100, deadline=None)
@given(owner=st.one_of(st.sampled_from(["Rep@Example.com", "rep@@example.com", "rep@bücher.de"]), st.text()))
def test_normalise_row_checks_an_owner_the_same_every_time_it_appears(owner: str) -> None:
    row = {"email": "a@example.com", "owner": owner}
    first, second = normalise_row(row, row_number=2), normalise_row(row, row_number=3)
    cleaned = _reference_clean(owner)
    if not cleaned:
        assert isinstance(first, LeadRow)
        assert "owner" not in first.profile
        return
    expected = _reference(cleaned)
    for result in (first, second):
        if expected[0] == "ok":
            assert isinstance(result, LeadRow)
            assert result.profile["owner"] == expected[1]
        else:
            assert isinstance(result, RowError)
            assert result.reason == f"owner: {expected[1]}"
