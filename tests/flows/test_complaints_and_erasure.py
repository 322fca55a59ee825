"""Complaints and erasure on a real database (SQLite and PostgreSQL): one effect, everywhere, for good."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.events import InboundEvent
from nurture.core.feedback import parse_feedback_report
from nurture.core.privacy import address_hash
from nurture.core.tracking import message_id_for
from nurture.db.engine import Database
from nurture.db.models import Suppression
from nurture.db.queries.tables import deliveries, enrollments, events, leads, touchpoints
from nurture.flows.complaints import record_complaint
from nurture.flows.engage import record_event
from nurture.flows.erase import erase_lead
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
KEY = b"test-secret-key-0123456789"
LEAD = {
    "email": "mei@example.com",
    "first_name": "Mei",
    "last_name": "Lin",
    "company": "Example Logistics",
    "phone": "+886 2 1234 5678",
    "grade": "nurturable",
    "timezone": "Asia/Taipei",
    "utm_source": "google",
}


def arf(*, message_id: str | None = None, recipient: str | None = "mei@example.com") -> bytes:
    """A feedback report as a mailbox provider sends it (RFC 5965 §3 and its appendix B)."""
    rcpt = f"Original-Rcpt-To: rfc822;{recipient}\n" if recipient else ""
    mid = f"Message-ID: {message_id}\n" if message_id else ""
    return (
        "From: fbl@isp.example\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nThis is an abuse report.\n\n"
        f"--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nVersion: 1\n{rcpt}\n"
        "--b\nContent-Type: text/rfc822-headers\n\n"
        f"From: growth@acmeflow.example\n{mid}Subject: hi\n\n--b--\n"
    ).encode()


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _enrolled_lead(db: Database, catalog: Catalog) -> tuple[int, int]:
    """A lead in a campaign with pending deliveries: its id and its first delivery's id."""
    await import_leads(db, [LEAD], now=NOW)
    assert await enroll(db, catalog, NOW) == 1
    [lead] = await _rows(db, select(leads.c.id))
    first = await _rows(db, select(deliveries.c.id).order_by(deliveries.c.step_index).limit(1))
    return lead["id"], first[0]["id"]


async def _state(db: Database, lead_id: int) -> dict[str, Any]:
    [lead] = await _rows(
        db, select(leads.c.suppressed, leads.c.suppressed_reason).where(leads.c.id == lead_id)
    )
    return {
        "lead": lead,
        "deliveries": {d["status"] for d in await _rows(db, select(deliveries.c.status))},
        "enrollments": {e["state"] for e in await _rows(db, select(enrollments.c.state))},
        "complaints": len(await _rows(db, select(touchpoints).where(touchpoints.c.kind == "complained"))),
        "hashes": [s["email_hash"] for s in await _rows(db, select(Suppression.__table__))],
    }


async def test_a_complaint_about_our_message_id_suppresses_the_lead_everywhere_once(
    db: Database, catalog: Catalog
) -> None:
    lead_id, delivery_id = await _enrolled_lead(db, catalog)
    report = parse_feedback_report(arf(message_id=message_id_for(delivery_id, domain="a.example", key=KEY)))

    # When the same report arrives three times, two of them at once
    first = await record_complaint(db, report, key=KEY, now=NOW)
    replays = await asyncio.gather(*(record_complaint(db, report, key=KEY, now=NOW) for _ in range(2)))

    assert first is not None
    assert (first.lead_id, first.delivery_id, first.duplicate) == (
        lead_id,
        delivery_id,
        False,
    )
    assert [r.duplicate for r in replays if r is not None] == [True, True]
    assert await _state(db, lead_id) == {
        "lead": {"suppressed": True, "suppressed_reason": "complained"},
        "deliveries": {"cancelled"},
        "enrollments": {"exited"},
        "complaints": 1,
        "hashes": [address_hash("mei@example.com")],
    }


async def test_a_forged_message_id_is_ignored_and_the_recipient_decides(
    db: Database, catalog: Catalog
) -> None:
    lead_id, delivery_id = await _enrolled_lead(db, catalog)
    forged = message_id_for(delivery_id, domain="a.example", key=b"another-key-entirely")

    nobody = await record_complaint(
        db, parse_feedback_report(arf(message_id=forged, recipient=None)), key=KEY, now=NOW
    )
    by_recipient = await record_complaint(
        db, parse_feedback_report(arf(message_id=forged, recipient="MEI@example.com")), key=KEY, now=NOW
    )

    assert nobody is None
    assert by_recipient is not None
    assert (by_recipient.lead_id, by_recipient.delivery_id) == (lead_id, None)


async def test_erasure_removes_personal_data_and_a_later_import_is_suppressed(
    db: Database, catalog: Catalog
) -> None:
    lead_id, _delivery_id = await _enrolled_lead(db, catalog)
    await record_event(
        db,
        InboundEvent(
            lead_id=lead_id,
            type="page_visit",
            occurred_at=NOW,
            url="https://acmeflow.example/pricing?who=mei",
            user_agent="Mozilla/5.0 Mei's laptop",
            idempotency_key=None,
            properties={"referrer": "https://mail.example/mei", "ip": "203.0.113.9", "pages": 3},
        ),
        now=NOW,
    )

    done = await erase_lead(db, "mei@example.com", now=NOW + timedelta(hours=1))

    assert done.lead_id == lead_id
    [lead] = await _rows(db, select(leads).where(leads.c.id == lead_id))
    text = repr(lead) + repr(await _rows(db, select(events))) + repr(await _rows(db, select(touchpoints)))
    for personal in ("mei", "Mei", "Lin", "Example Logistics", "1234", "google", "203.0.113", "Mozilla"):
        assert personal not in text, personal
    assert lead["erased_at"] == NOW + timedelta(hours=1)
    assert lead["suppressed"] is True
    assert {d["status"] for d in await _rows(db, select(deliveries.c.status))} == {"cancelled"}
    # Then the same address, imported again, becomes a new lead that is never mailed
    again = await import_leads(db, [{"email": " Mei@Example.com ", "grade": "nurturable"}], now=NOW)
    assert again.inserted == 1
    [new] = await _rows(db, select(leads).where(leads.c.email == "mei@example.com"))
    assert (new["suppressed"], new["suppressed_reason"]) == (True, "erased")
    assert await enroll(db, catalog, NOW + timedelta(hours=2)) == 0
