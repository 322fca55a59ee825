"""Lead fields that try to inject headers or recipients through the Subject and the display name.

A hostile first name or company is rendered into the subject by the real renderer, composed with the lead's
name as the To display name, and sent over SMTP to the aiosmtpd sink: the message that arrives has exactly the
headers and the one recipient a harmless lead's message has.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nurture.core.campaign import Sender, parse_campaign
from nurture.core.context import SAMPLE_REP, LeadProfile, template_context
from nurture.core.message import compose
from nurture.render import TemplateRenderer
from nurture.transports.smtp import SmtpConfig, SmtpTransport
from tests.smtp_sink import ReceivedMessage, SmtpSink, smtp_sink_fixture  # noqa: F401

CAMPAIGN = """\
id: c
name: C
sender: {from: "Acme <growth@acme.example>", postal_address: "Acme Inc., 1 Main St"}
steps:
  - {id: s, day: 0, subject: "{{ lead.first_name }}, a guide for {{ lead.company }}", template: b.html.j2}
"""
BODY = '<p>Hi {{ lead.first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
BODY += "<p>{{ postal_address }}</p>"
SENDER = Sender(from_address="Acme <growth@acme.example>")
ADDRESS = "lead@example.com"

BREAKS = ["\r\n", "\n", "\r", "%0d%0a", "%0A", "\u2028", "\u2029", "\x85", "\x00", "\x0b", "\x0c", "\t"]
INJECTED = [
    "Bcc: victim@evil.example",
    "To: other@evil.example",
    "Content-Type: text/html",
    "=?utf-8?q?x=0D=0ABcc:_victim@evil.example?=",
    "=?utf-8?b?DQpCY2M6IHZpY3RpbUBldmlsLmV4YW1wbGU=?=",
    "<script>alert(1)</script>",
]
hostile = st.builds(
    lambda a, brk, inj, b: f"{a}{brk}{inj}{brk}{b}",
    st.text(max_size=8),
    st.sampled_from(BREAKS),
    st.sampled_from(INJECTED),
    st.text(max_size=8),
)


def _send(sink: SmtpSink, tmp_path: Path, *, first_name: str, company: str) -> ReceivedMessage:
    (tmp_path / "b.html.j2").write_text(BODY, encoding="utf-8")
    campaign = parse_campaign(CAMPAIGN, source="c.yaml")
    renderer = TemplateRenderer(tmp_path, {"c": campaign})
    lead = LeadProfile(email=ADDRESS, first_name=first_name, company=company)
    context = template_context(
        lead,
        owner=SAMPLE_REP,
        campaign=campaign,
        step=campaign.steps[0],
        unsubscribe_url="https://t.acme.example/u/tok",
        postal_address="Acme Inc., 1 Main St",
    )
    outgoing = compose(
        rendered=renderer.render_step("c", "s", context),
        sender=SENDER,
        to_address=ADDRESS,
        to_name=f"{first_name} {company}",
        reply_to=None,
        message_id="<d1.0123456789abcdef@acme.example>",
        unsubscribe_url="https://t.acme.example/u/tok",
        unsubscribe_mailto=None,
        campaign_id="c",
        step_id="s",
        sent_date=datetime(2026, 3, 2, tzinfo=UTC),
    )

    async def send() -> None:
        transport = SmtpTransport(SmtpConfig.from_url(sink.url, timeout_s=5, pool_size=1))
        try:
            await transport.send(outgoing)
        finally:
            await transport.aclose()

    before = len(sink.messages)
    asyncio.run(send())
    assert len(sink.messages) == before + 1
    return sink.messages[-1]


def _shape(received: ReceivedMessage) -> tuple[Counter[str], tuple[str, ...]]:
    return Counter(k.lower() for k in received.message), received.rcpt_tos


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first_name=hostile, company=hostile)
def test_no_lead_field_adds_a_header_or_a_recipient(
    smtp_sink: SmtpSink, tmp_path: Path, first_name: str, company: str
) -> None:
    expected = _shape(_send(smtp_sink, tmp_path, first_name="Mei", company="Example"))

    received = _send(smtp_sink, tmp_path, first_name=first_name, company=company)

    assert _shape(received) == expected
    assert received.rcpt_tos == (ADDRESS,)
    for name in ("subject", "to"):
        value = str(received[name])
        assert not any(c in value for c in "\r\n\x00\x85\u2028\u2029"), (name, value)
    assert received.message["bcc"] is None
    html = received.message.get_body(("html",))
    assert html is not None
    assert "<script" not in html.get_content().lower()  # lead fields are escaped in the HTML part
