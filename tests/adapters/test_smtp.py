"""SmtpTransport against a real SMTP server (aiosmtpd in this process); aiosmtplib is never mocked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from nurture.core.campaign import Sender
from nurture.core.message import compose
from nurture.errors import (
    ConfigError,
    PermanentSendError,
    SendError,
    SendOutcomeUnknownError,
    TransientSendError,
)
from nurture.ports import OutgoingEmail, RenderedEmail
from nurture.transports import smtp as smtp_module
from nurture.transports.smtp import SmtpConfig, SmtpTransport
from tests.harness.ports import free_port
from tests.smtp_sink import SmtpSink, smtp_sink_fixture  # noqa: F401

PASSWORD = "s3cr:t/p@ss w%rd"
PASSWORD_IN_URL = "s3cr%3At%2Fp%40ss%20w%25rd"


def message(n: int = 1, *, to_address: str = "ann@lead.example") -> OutgoingEmail:
    return compose(
        rendered=RenderedEmail(subject=f"Guide {n}: 你好", html=f"<p>Hello {n}</p>", text=f"Hello {n}"),
        sender=Sender(from_address="Acme Growth <growth@acme.example>"),
        to_address=to_address,
        to_name="张伟",
        reply_to=None,
        message_id=f"<d{n}.0123456789abcdef@acme.example>",
        unsubscribe_url=f"https://t.acme.example/u/token{n}",
        unsubscribe_mailto="unsub@acme.example",
        campaign_id="welcome",
        step_id="day0_welcome",
        sent_date=datetime(2025, 3, 4, 9, 30, tzinfo=UTC),
    )


def make_transport(url: str, *, pool_size: int = 2, timeout_s: float = 5.0) -> SmtpTransport:
    return SmtpTransport(SmtpConfig.from_url(url, timeout_s=timeout_s, pool_size=pool_size))


@pytest.fixture
async def transport(smtp_sink: SmtpSink) -> AsyncIterator[SmtpTransport]:
    sender = make_transport(smtp_sink.url)
    yield sender
    await sender.aclose()


async def test_send_delivers_the_message_intact_with_its_envelope(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    sent = message()
    receipt = await transport.send(sent)
    assert receipt.message_id == sent.message_id
    assert "Ok: queued" in receipt.response
    (received,) = smtp_sink.messages
    assert received.data == sent.data
    assert (received.mail_from, received.rcpt_tos) == ("growth@acme.example", ("ann@lead.example",))
    assert received["Message-ID"] == sent.message_id
    assert received["Subject"] == "Guide 1: 你好"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["X-Nurture-Campaign"] == "welcome"
    assert received.message["To"].addresses[0].display_name == "张伟"


async def test_send_reuses_one_connection_for_sequential_messages(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    for n in range(5):
        await transport.send(message(n))
    assert smtp_sink.connections_opened == 1
    assert len(smtp_sink.messages) == 5


async def test_send_opens_at_most_pool_size_connections_under_concurrency(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    receipts = await asyncio.gather(*(transport.send(message(n)) for n in range(20)))
    assert len(receipts) == 20
    assert sorted(m["Message-ID"] for m in smtp_sink.messages) == sorted(r.message_id for r in receipts)
    assert smtp_sink.connections_opened <= 2
    assert smtp_sink.peak_connections <= 2


@pytest.mark.parametrize(
    ("at", "reply", "error", "deferral"),
    [
        ("MAIL", "421 4.7.0 try later", TransientSendError, True),
        ("RCPT", "421 4.7.0 try later", TransientSendError, True),
        ("DATA", "421 4.7.0 try later", TransientSendError, True),
        ("RCPT", "450 4.2.1 mailbox busy", TransientSendError, True),
        ("DATA", "451 4.3.0 local error", TransientSendError, True),
        ("RCPT", "452 4.2.2 mailbox full", TransientSendError, True),
        ("MAIL", "454 4.7.0 TLS not available", TransientSendError, False),  # our session: retried only
        ("RCPT", "550 5.1.1 no such user", PermanentSendError, False),
        ("DATA", "552 5.3.4 message too big", PermanentSendError, False),
        ("DATA", "554 5.7.1 rejected as spam", PermanentSendError, False),
        ("MAIL", "553 5.1.8 sender rejected", PermanentSendError, False),
    ],
)
async def test_a_refusal_is_transient_or_permanent_and_carries_its_smtp_code_and_whether_it_is_a_deferral(
    smtp_sink: SmtpSink,
    transport: SmtpTransport,
    at: str,
    reply: str,
    error: type[SendError],
    deferral: bool,
) -> None:
    smtp_sink.answer_next(reply, at=at)  # type: ignore[arg-type]
    with pytest.raises(error, match=reply[:3]) as raised:
        await transport.send(message())
    assert raised.type is error
    assert raised.value.__cause__ is not None  # the aiosmtplib error is chained
    assert (raised.value.code, raised.value.deferral) == (int(reply[:3]), deferral)
    assert smtp_sink.messages == []


async def test_errors_without_a_reply_carry_no_code_and_only_an_unreachable_relay_is_a_deferral(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    smtp_sink.drop_next_connection(at="RCPT")
    with pytest.raises(TransientSendError) as dropped:
        await transport.send(message(1))
    smtp_sink.drop_next_connection(at="DATA")
    with pytest.raises(SendOutcomeUnknownError) as after_data:
        await transport.send(message(2))
    sender = make_transport(f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(TransientSendError) as unreachable:
        await sender.send(message(3))
    await sender.aclose()
    found = [(e.value.code, e.value.deferral) for e in (dropped, after_data, unreachable)]
    assert found == [(None, False), (None, False), (None, True)]


async def test_send_works_again_after_a_refusal(smtp_sink: SmtpSink, transport: SmtpTransport) -> None:
    smtp_sink.answer_next("550 5.1.1 no such user", at="RCPT")
    with pytest.raises(PermanentSendError):
        await transport.send(message(1))
    await transport.send(message(2))
    assert [m["Message-ID"] for m in smtp_sink.messages] == [message(2).message_id]


async def test_send_reports_a_dropped_connection_as_transient_then_reconnects(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    # Given a warm connection that the server then drops in the middle of a transaction
    await transport.send(message(1))
    smtp_sink.drop_next_connection(at="MAIL")
    # When the next message is sent, it fails as transient
    with pytest.raises(TransientSendError) as raised:
        await transport.send(message(2))
    assert raised.value.__cause__ is not None
    # Then the message after it goes out on a fresh connection, and nothing was sent twice
    await transport.send(message(3))
    assert smtp_sink.connections_opened == 2
    assert [m["Message-ID"] for m in smtp_sink.messages] == [message(1).message_id, message(3).message_id]


async def test_send_never_resends_when_the_reply_to_data_never_comes(smtp_sink: SmtpSink) -> None:
    # Given a server that keeps the message but answers only after the client has given up
    smtp_sink.stall_after_data(3.0)
    sender = make_transport(smtp_sink.url, timeout_s=0.3)
    try:
        # When the message is sent, the outcome is reported as unknown, not as something to retry
        with pytest.raises(SendOutcomeUnknownError, match="after DATA began"):
            await sender.send(message(1))
    finally:
        await sender.aclose()
    # Then the server holds exactly one copy: the transport did not try again by itself
    assert [m["Message-ID"] for m in smtp_sink.messages] == [message(1).message_id]


async def test_send_reports_a_connection_dropped_after_data_as_unknown(smtp_sink: SmtpSink) -> None:
    # Given a server that hangs up once the message body has been sent
    smtp_sink.drop_next_connection(at="DATA")
    sender = make_transport(smtp_sink.url, timeout_s=2)
    try:
        with pytest.raises(SendOutcomeUnknownError):
            await sender.send(message(1))
        # Then a later message goes out on a fresh connection
        await sender.send(message(2))
    finally:
        await sender.aclose()
    assert [m["Message-ID"] for m in smtp_sink.messages] == [message(2).message_id]


async def test_send_replaces_a_pooled_connection_the_server_closed(
    smtp_sink: SmtpSink, transport: SmtpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pooled connection, probed before every reuse, that the server has since hung up on
    monkeypatch.setattr(smtp_module, "IDLE_PROBE_S", 0.0)
    await transport.send(message(1))
    smtp_sink.close_connections()
    # When the next message is sent, it succeeds on a fresh connection
    await transport.send(message(2))
    assert smtp_sink.connections_opened == 2
    assert len(smtp_sink.messages) == 2


async def test_send_reports_an_unreachable_relay_as_transient() -> None:
    sender = make_transport(f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(TransientSendError, match="cannot reach"):
        await sender.send(message())
    await sender.aclose()


async def test_send_logs_in_with_url_decoded_credentials() -> None:
    with SmtpSink(credentials=("mailer@acme", PASSWORD)) as sink:
        sender = make_transport(f"smtp://mailer%40acme:{PASSWORD_IN_URL}@{sink.host}:{sink.port}")
        try:
            await sender.send(message())
        finally:
            await sender.aclose()
        assert len(sink.messages) == 1


async def test_send_treats_a_refused_login_as_transient_not_as_the_recipients_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with SmtpSink(credentials=("mailer", "right")) as sink:
        sender = make_transport(f"smtp://mailer:{PASSWORD_IN_URL}@{sink.host}:{sink.port}")
        with pytest.raises(TransientSendError, match="535"):
            await sender.send(message())
        await sender.aclose()
    assert PASSWORD not in caplog.text
    assert PASSWORD_IN_URL not in caplog.text


async def test_send_logs_the_message_id_but_no_address(
    smtp_sink: SmtpSink, transport: SmtpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nurture.transports.smtp")
    await transport.send(message(1))
    smtp_sink.answer_next("550 5.1.1 <ann@lead.example>: no such user", at="RCPT")
    with pytest.raises(PermanentSendError):
        await transport.send(message(2))
    assert message(1).message_id in caplog.text
    assert message(2).message_id in caplog.text
    assert "ann@lead.example" not in caplog.text
    assert "growth@acme.example" not in caplog.text


async def test_aclose_quits_idle_connections_and_refuses_later_sends(smtp_sink: SmtpSink) -> None:
    sender = make_transport(smtp_sink.url)
    await asyncio.gather(*(sender.send(message(n)) for n in range(4)))
    await sender.aclose()
    assert smtp_sink.quits == smtp_sink.connections_opened
    with pytest.raises(TransientSendError, match="closed"):
        await sender.send(message(9))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://relay.example", {"host": "relay.example", "port": 25, "use_tls": False, "start_tls": None}),
        ("smtp://relay.example:2525", {"port": 2525, "start_tls": None, "username": None, "password": None}),
        ("smtp://relay.example:587?starttls=true", {"port": 587, "start_tls": True, "use_tls": False}),
        ("smtp://relay.example?starttls=false", {"port": 25, "start_tls": False}),
        ("smtps://relay.example", {"port": 465, "use_tls": True, "start_tls": False}),
        (
            "smtps://relay.example:1465?tls_verify=false",
            {"port": 1465, "use_tls": True, "validate_certs": False},
        ),
        ("smtp://relay.example?tls_verify=true", {"validate_certs": True}),
        (f"smtp://u%40acme:{PASSWORD_IN_URL}@relay.example", {"username": "u@acme", "password": PASSWORD}),
        ("smtp://apikey@relay.example", {"username": "apikey", "password": None}),
    ],
)
def test_smtp_config_from_url_parses_every_form(url: str, expected: dict[str, object]) -> None:
    config = SmtpConfig.from_url(url, timeout_s=7.5, pool_size=3)
    assert {name: getattr(config, name) for name in expected} == expected
    assert (config.timeout_s, config.pool_size) == (7.5, 3)


def test_smtp_config_never_shows_the_password() -> None:
    config = SmtpConfig.from_url(f"smtp://user:{PASSWORD_IN_URL}@relay.example", timeout_s=5, pool_size=1)
    assert config.password == PASSWORD
    for shown in (repr(config), str(config), f"{config}", f"{config!r}"):
        assert PASSWORD not in shown
        assert PASSWORD_IN_URL not in shown
        assert "user" in shown


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{PASSWORD_IN_URL}@relay.example",
        f"smtp://user:{PASSWORD_IN_URL}@",
        f"smtp://user:{PASSWORD_IN_URL}@relay.example:notaport",
        f"smtp://user:{PASSWORD_IN_URL}@relay.example?starttls=maybe",
        f"smtp://user:{PASSWORD_IN_URL}@relay.example?tls=off",
        f"smtps://user:{PASSWORD_IN_URL}@relay.example?starttls=true",
    ],
)
def test_smtp_config_from_url_rejects_bad_urls_without_repeating_them(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        SmtpConfig.from_url(url, timeout_s=5, pool_size=1)
    assert PASSWORD not in str(raised.value)
    assert PASSWORD_IN_URL not in str(raised.value)
    assert raised.value.__cause__ is None  # a chained ValueError could carry the URL into a traceback
