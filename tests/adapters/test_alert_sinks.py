"""The alert sinks against real receivers: an aiosmtpd server and a local HTTP server behind Apprise's json://."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from nurture.alerts import AppriseAlertSink, EmailAlertSink, split_alert_urls
from nurture.alerts.email import alert_message_id
from nurture.errors import AlertDeliveryError, ConfigError
from nurture.ports import AlertMessage, TimelineEntry
from nurture.transports.smtp import SmtpConfig, SmtpTransport
from tests.harness.ports import free_port
from tests.smtp_sink import SmtpSink, smtp_sink_fixture  # noqa: F401

CREATED = datetime(2026, 3, 2, 2, 5, tzinfo=UTC)
ALERT = AlertMessage(
    alert_id=17,
    lead_id=42,
    trigger="hot",
    reason="score crossed hot (80): 62 -> 85; pricing_visit: visited https://acme.example/pricing",
    score_before=62,
    score_after=85,
    score_now=85,
    stage="mql",
    created_at=CREATED,
    lead_email="mei.lin@example.com",
    lead_name="Mei Lin",
    lead_company="Example Logistics",
    lead_title="COO",
    lead_source="webinar",
    owner_email="lin.chen@acmeflow.example",
    owner_name="Lin Chen",
    recent=(
        TimelineEntry(CREATED, "page_visit", "https://acme.example/pricing"),
        TimelineEntry(datetime(2026, 2, 27, 1, 0, tzinfo=UTC), "email_sent", "saas-nurture/welcome"),
    ),
    timeline_url="https://nurture.example.com/leads/42",
)


# --- email --------------------------------------------------------------------------------------------------


@pytest.fixture
async def transport(smtp_sink: SmtpSink) -> AsyncIterator[SmtpTransport]:
    sender = SmtpTransport(SmtpConfig.from_url(smtp_sink.url, timeout_s=5.0, pool_size=1))
    yield sender
    await sender.aclose()


async def test_the_email_sink_mails_the_owner_a_plain_text_alert(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    sink = EmailAlertSink(transport, "nurture alerts <growth@acmeflow.example>")
    await sink.send(ALERT, notify_urls=["json://ignored.example/"])
    [received] = smtp_sink.messages
    assert (received.mail_from, received.rcpt_tos) == (
        "growth@acmeflow.example",
        ("lin.chen@acmeflow.example",),
    )
    msg = received.message
    assert msg["Subject"] == ALERT.title()
    assert msg["To"] == "Lin Chen <lin.chen@acmeflow.example>"
    assert msg["Message-ID"] == alert_message_id(ALERT, domain="acmeflow.example")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "text/plain"
    body = msg.get_content()
    assert "https://nurture.example.com/leads/42" in body
    assert "Score: 85 now, stage MQL (62 -> 85 when raised)" in body
    assert "List-Unsubscribe" not in msg


async def test_a_retried_alert_email_keeps_its_message_id(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    sink = EmailAlertSink(transport, "growth@acmeflow.example")
    await sink.send(ALERT, notify_urls=[])
    await sink.send(ALERT, notify_urls=[])
    first, second = smtp_sink.messages
    assert first["Message-ID"] == second["Message-ID"]
    other = replace(ALERT, alert_id=18)
    assert alert_message_id(other, domain="x.example") != alert_message_id(ALERT, domain="x.example")


@pytest.mark.parametrize("reply", ["451 4.3.0 try later", "550 5.1.1 no such user"])
async def test_a_refused_alert_email_is_an_alert_delivery_error(
    smtp_sink: SmtpSink, transport: SmtpTransport, reply: str
) -> None:
    smtp_sink.answer_next(reply)
    with pytest.raises(AlertDeliveryError, match=r"lin\.chen@acmeflow\.example"):
        await EmailAlertSink(transport, "growth@acmeflow.example").send(ALERT, notify_urls=[])
    assert smtp_sink.messages == []


async def test_an_alert_without_an_owner_sends_no_email(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    await EmailAlertSink(transport, "growth@acmeflow.example").send(
        replace(ALERT, owner_email=None, owner_name=None), notify_urls=[]
    )
    assert smtp_sink.messages == []


async def test_lead_data_cannot_add_a_header_to_the_alert_email(
    smtp_sink: SmtpSink, transport: SmtpTransport
) -> None:
    hostile = replace(ALERT, lead_name="Mei\r\nBcc: victim@example.com", lead_company="X\nY")
    await EmailAlertSink(transport, "growth@acmeflow.example").send(hostile, notify_urls=[])
    [received] = smtp_sink.messages
    assert received.message["Bcc"] is None
    assert received.rcpt_tos == ("lin.chen@acmeflow.example",)
    assert received.message["Subject"] == "Hot lead: Mei Bcc: victim@example.com, X Y (score 85, MQL)"


def test_the_email_sink_refuses_a_sender_that_is_not_an_address() -> None:
    with pytest.raises(ConfigError):
        EmailAlertSink(transport=None, from_address="nobody")  # type: ignore[arg-type]


# --- notification URLs (Apprise) ----------------------------------------------------------------------------


class _Receiver(HTTPServer):
    """Records every POST; answers with `status` (200 unless told otherwise)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.status = 200

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append((self.path, json.loads(body)))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


async def test_the_apprise_sink_posts_to_the_team_and_the_owner_urls(receiver: _Receiver) -> None:
    team = f"json://127.0.0.1:{receiver.port}/team"
    sink = AppriseAlertSink([team])
    await sink.send(ALERT, notify_urls=[f"json://127.0.0.1:{receiver.port}/lin", team])
    assert sorted(path for path, _ in receiver.posts) == ["/lin", "/team"]
    for _, payload in receiver.posts:
        assert payload["title"] == ALERT.title()
        assert payload["message"] == ALERT.text()


async def test_a_failing_notification_url_is_an_alert_delivery_error(receiver: _Receiver) -> None:
    receiver.status = 500
    sink = AppriseAlertSink([f"json://127.0.0.1:{receiver.port}/team"])
    with pytest.raises(AlertDeliveryError, match="json://"):
        await sink.send(ALERT, notify_urls=[])
    assert len(receiver.posts) == 1


async def test_an_unreachable_notification_url_is_an_alert_delivery_error() -> None:
    port = free_port()  # a port nobody listens on
    with pytest.raises(AlertDeliveryError):
        await AppriseAlertSink([]).send(ALERT, notify_urls=[f"json://127.0.0.1:{port}/x"])


async def test_with_no_url_at_all_the_apprise_sink_does_nothing(receiver: _Receiver) -> None:
    await AppriseAlertSink([]).send(ALERT, notify_urls=[])
    assert receiver.posts == []


async def test_a_rep_url_apprise_cannot_read_is_skipped_and_the_others_still_notified(
    receiver: _Receiver,
) -> None:
    team = f"json://127.0.0.1:{receiver.port}/team"
    await AppriseAlertSink([team]).send(ALERT, notify_urls=["nosuchscheme://token"])
    assert [path for path, _ in receiver.posts] == ["/team"]


def test_a_team_url_apprise_cannot_read_stops_the_service_without_showing_it() -> None:
    with pytest.raises(ConfigError, match="NURTURE_ALERT_URLS") as caught:
        AppriseAlertSink(["nosuchscheme://secret-token"])
    assert "secret-token" not in str(caught.value)


def test_alert_urls_are_split_on_commas_and_whitespace() -> None:
    assert split_alert_urls(" json://a/x, slack://T/B/C\n  json://a/x ") == ("json://a/x", "slack://T/B/C")
    assert split_alert_urls("") == ()
