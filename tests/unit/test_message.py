"""compose(): every header as promised, bodies intact, and no way to inject a header from lead data."""

from __future__ import annotations

import base64
import email
import email.policy
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.campaign import Sender
from nurture.core.message import _base64_length, clean_display_name, compose
from nurture.errors import HeaderInjectionError
from nurture.ports import OutgoingEmail, RenderedEmail

SENT = datetime(2025, 3, 4, 9, 30, tzinfo=UTC)
MESSAGE_ID = "<d42.0123456789abcdef@acme.example>"
UNSUBSCRIBE = "https://t.acme.example/u/eyJrIjoidSJ9.abcdefghijklmnopqrstuv"
HEADERS = [
    "From",
    "To",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-Nurture-Campaign",
    "X-Nurture-Step",
    "Content-Type",
]
INJECTIONS = [
    "\r\n",
    "\r",
    "\n",
    "\x00",
    "\u2028",
    "\u2029",
    "\x85",
    "\x0b",
    "\x0c",
    "\t",
    "=0D=0A",
    "%0d%0a",
    "%0D%0ABcc: evil@x.example",
    "\r\nBcc: evil@x.example",
    "\nTo: evil@x.example",
    "=?utf-8?q?=0D=0ABcc:_evil@x.example?=",
    "=?utf-8?b?DQpCY2M6IGV2aWxAeC5leGFtcGxl?=",
    "evil@x.example, other@x.example",
    '"a" <evil@x.example>',
    "<evil@x.example>",
    "\\",
    '"',
    ";",
    "张伟",
    "Ünïcødé",
    "😀",
]
hostile_text = st.lists(st.one_of(st.text(max_size=20), st.sampled_from(INJECTIONS)), max_size=6).map("".join)


def make(**overrides: Any) -> OutgoingEmail:
    arguments: dict[str, Any] = {
        "rendered": RenderedEmail(subject="Your forecast guide", html="<p>Hello Ann</p>", text="Hello Ann"),
        "sender": Sender(from_address="Acme Growth <growth@acme.example>"),
        "to_address": "ann@lead.example",
        "to_name": "Ann Lee",
        "reply_to": "Rep One <rep@acme.example>",
        "message_id": MESSAGE_ID,
        "unsubscribe_url": UNSUBSCRIBE,
        "unsubscribe_mailto": "unsub@acme.example",
        "campaign_id": "welcome",
        "step_id": "day0_welcome",
        "sent_date": SENT,
    }
    arguments.update(overrides)
    return compose(**arguments)


def parse(message: OutgoingEmail) -> EmailMessage:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def with_subject(subject: str) -> RenderedEmail:
    return RenderedEmail(subject=subject, html="<p>x</p>", text="x")


def display_name_as_read(message: OutgoingEmail) -> str:
    """The To display name as RFC 2047 readers (mail clients) show it.

    The stdlib's structured parser keeps the folding space between two adjacent encoded words of a phrase
    (RFC 2047 §6.2 says to drop it), so it mis-reads any name longer than one encoded word; the legacy
    `decode_header` follows the RFC and is used for encoded names.
    """
    parsed = parse(message)
    raw = email.message_from_bytes(message.data, policy=email.policy.compat32)["To"]
    if "=?" not in raw:
        return str(parsed["To"].addresses[0].display_name)
    decoded = str(make_header(decode_header(raw)))
    assert decoded.endswith(" <ann@lead.example>")
    return decoded.removesuffix(" <ann@lead.example>")


def canonical(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def test_compose_writes_every_header_in_order() -> None:
    parsed = parse(make())
    assert list(parsed.keys()) == HEADERS
    assert parsed["From"] == "Acme Growth <growth@acme.example>"
    assert parsed["To"] == "Ann Lee <ann@lead.example>"
    assert parsed["Reply-To"] == "Rep One <rep@acme.example>"
    assert parsed["Subject"] == "Your forecast guide"
    assert parsed["Date"].datetime == SENT
    assert parsed["Message-ID"] == MESSAGE_ID
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>, <mailto:unsub@acme.example>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["X-Nurture-Campaign"] == "welcome"
    assert parsed["X-Nurture-Step"] == "day0_welcome"
    assert parsed.get_content_type() == "multipart/alternative"
    assert not parsed.defects


def test_compose_sets_the_envelope_from_the_sender_and_recipient() -> None:
    message = make()
    assert message.envelope_from == "growth@acme.example"
    assert message.recipients == ("ann@lead.example",)
    assert message.message_id == MESSAGE_ID


def test_compose_uses_crlf_line_ends_only() -> None:
    data = make(rendered=RenderedEmail(subject="s", html="<p>a</p>\n<p>b</p>\n", text="a\nb\rc\r\n")).data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


def test_compose_leaves_out_optional_headers_when_not_given() -> None:
    parsed = parse(make(reply_to=None, unsubscribe_mailto=None))
    assert "Reply-To" not in parsed
    assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert list(parsed.keys()) == [h for h in HEADERS if h != "Reply-To"]


def test_compose_accepts_a_mailto_url_with_a_query() -> None:
    parsed = parse(make(unsubscribe_mailto="mailto:unsub@acme.example?subject=unsubscribe"))
    assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>, <mailto:unsub@acme.example?subject=unsubscribe>"


def test_compose_puts_text_before_html_and_both_decode_exactly() -> None:
    text = "Hello Ann,\n\nA line with trailing space \nand a very long line " + "x" * 300 + "\n.\nFrom here"
    html = '<p style="color: red">Héllo = Ann</p>\n<p>' + "€ " * 100 + "</p>"
    parts = list(parse(make(rendered=RenderedEmail(subject="s", html=html, text=text))).iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    assert parts[0].get_content() == canonical(text)
    assert parts[1].get_content() == canonical(html)


def test_compose_uses_base64_for_mostly_non_latin_text() -> None:
    text = "你好\uff0c欢迎来到我们的平台\u3002" * 20  # full-width comma and full stop
    parts = list(parse(make(rendered=RenderedEmail(subject="s", html=text, text=text))).iter_parts())
    assert parts[0]["Content-Transfer-Encoding"] == "base64"
    assert parts[0].get_content() == text


@given(text=st.text(), html=st.text())
def test_compose_bodies_round_trip_for_any_text(text: str, html: str) -> None:
    parts = list(parse(make(rendered=RenderedEmail(subject="s", html=html, text=text))).iter_parts())
    assert parts[0].get_content() == canonical(text)
    assert parts[1].get_content() == canonical(html)


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("张伟", "你好\uff0c张伟\uff1a您的 21 天指南"),
        ("Zoë Ångström", "Ünïcødé — with an em dash"),
        ("O'Brien, Pat", 'A "quoted" subject; with (specials) <and> @signs'),
        ("=?utf-8?q?not_an_encoded_word?=", "=?utf-8?q?not_an_encoded_word?="),
        ("Ann " * 40, "A long subject that cannot fit on one header line, " * 6),
        ("", "  leading and trailing blanks  "),
        ("😀 emoji", "😀" * 60),
    ],
)
def test_compose_round_trips_names_and_subjects(name: str, subject: str) -> None:
    message = make(to_name=name, rendered=with_subject(subject))
    parsed = parse(message)
    (address,) = parsed["To"].addresses
    assert address.addr_spec == "ann@lead.example"
    assert display_name_as_read(message) == clean_display_name(name)
    assert parsed["Subject"] == subject
    # every line but the unsubscribe URL's (a URL cannot be folded) keeps to RFC 5322's 78 characters
    assert max(len(line) for line in message.data.split(b"\r\n") if b"://" not in line) <= 78


def test_compose_writes_a_short_non_ascii_name_as_one_encoded_word() -> None:
    # one word: even the stdlib's structured parser reads it right
    assert parse(make(to_name="张伟 Zhang"))["To"].addresses[0].display_name == "张伟 Zhang"


def test_compose_encodes_non_ascii_sender_names() -> None:
    parsed = parse(
        make(sender=Sender(from_address='"Acme 增长" <growth@acme.example>'), reply_to="rep@acme.example")
    )
    (sender,) = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Acme 增长", "growth@acme.example")
    assert parsed["Reply-To"] == "rep@acme.example"


def test_clean_display_name_makes_one_line() -> None:
    assert clean_display_name(" Ann\r\n\tLee\x00\u2028Jr \x85") == "Ann Lee Jr"
    assert clean_display_name(None) == ""


@given(name=hostile_text, subject=hostile_text)
def test_compose_lets_no_lead_field_add_a_header_or_recipient(name: str, subject: str) -> None:
    try:
        message = make(to_name=name, rendered=with_subject(subject))
    except HeaderInjectionError:
        # only the subject may be refused (the name is cleaned), and only for a control or line break
        assert any(c in "\u2028\u2029" or (unicodedata.category(c) == "Cc" and c != "\t") for c in subject)
        return
    parsed = parse(message)
    assert list(parsed.keys()) == HEADERS
    assert not parsed.defects
    (address,) = parsed["To"].addresses
    assert address.addr_spec == "ann@lead.example"
    assert display_name_as_read(message) == clean_display_name(name)
    assert parsed["Subject"] == subject
    assert message.recipients == ("ann@lead.example",)


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\x00", "\u2028", "\u2029", "\x85", "\x1e", "\x7f"])
@pytest.mark.parametrize(
    "field",
    [
        "subject",
        "to_address",
        "reply_to",
        "sender",
        "message_id",
        "unsubscribe_url",
        "unsubscribe_mailto",
        "campaign_id",
        "step_id",
    ],
)
def test_compose_refuses_line_breaks_in_header_values(field: str, bad: str) -> None:
    cases: dict[str, dict[str, Any]] = {
        "subject": {"rendered": with_subject(f"Hi{bad}Bcc: evil@x.example")},
        "to_address": {"to_address": f"ann@lead.example{bad}"},
        "reply_to": {"reply_to": f"Rep <rep@acme.example>{bad}Bcc: evil@x.example"},
        "sender": {"sender": Sender(from_address=f"Acme{bad}Bcc: x <growth@acme.example>")},
        "message_id": {"message_id": f"<d1.a@acme.example>{bad}"},
        "unsubscribe_url": {"unsubscribe_url": f"{UNSUBSCRIBE}{bad}"},
        "unsubscribe_mailto": {"unsubscribe_mailto": f"unsub@acme.example{bad}"},
        "campaign_id": {"campaign_id": f"welcome{bad}X-Evil: 1"},
        "step_id": {"step_id": f"{bad}day0"},
    }
    with pytest.raises(HeaderInjectionError):
        make(**cases[field])


@pytest.mark.parametrize(
    "address",
    [
        "ann@lead.example, evil@x.example",
        "Ann <ann@lead.example>",
        "ann lee@lead.example",
        "ann",
        "änn@lead.example",
    ],
)
def test_compose_refuses_a_recipient_that_is_not_one_plain_address(address: str) -> None:
    with pytest.raises(HeaderInjectionError, match="to_address"):
        make(to_address=address)


@pytest.mark.parametrize("url", ["javascript:alert(1)", "https://t.example/u/a b", "https://t.example/u/>x"])
def test_compose_refuses_an_unsubscribe_url_that_is_not_one_http_url(url: str) -> None:
    with pytest.raises(HeaderInjectionError, match="unsubscribe_url"):
        make(unsubscribe_url=url)


def test_compose_refuses_a_naive_sent_date() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make(sent_date=datetime(2025, 3, 4, 9, 30))  # noqa: DTZ001


def test_compose_keeps_the_offset_of_an_aware_sent_date() -> None:
    sent = datetime(2025, 3, 4, 9, 30, tzinfo=timezone(timedelta(hours=8)))
    assert parse(make(sent_date=sent))["Date"].datetime == sent


@given(st.binary(max_size=2000))
def test_base64_length_is_the_length_of_the_encoded_part(data: bytes) -> None:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    assert _base64_length(len(data)) == len(encoded)
