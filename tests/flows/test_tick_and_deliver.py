"""Enroll, dispatch and deliver on a real database (SQLite and PostgreSQL) with a recording transport."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.tracking import TrackedLink, read_token
from nurture.db.engine import Database
from nurture.db.queries.deliveries import start_sending
from nurture.db.queries.tables import deliveries, enrollments, leads, touchpoints
from nurture.errors import PermanentSendError, SendOutcomeUnknownError, TransientSendError
from nurture.flows.deliver import Mailer, Outcome, deliver
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from tests.fakes import RecordingTransport

# Monday 2026-03-02 10:00 in Taipei.
MONDAY_TAIPEI_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
LEASE = timedelta(minutes=10)
STALE = timedelta(minutes=5)

LEADS = [
    {
        "email": "fit@example.com",
        "first_name": "Mei",
        "grade": "nurturable",
        "timezone": "Asia/Taipei",
        "owner": "lin.chen@acmeflow.example",
    },
    {"email": "webinar@example.com", "grade": "nurturable", "source": "webinar", "timezone": "Asia/Taipei"},
    {"email": "invalid@example.com", "grade": "invalid"},
    {"email": "ready@example.com", "grade": "intent", "stage": "opportunity"},
    {"email": "mql@example.com", "grade": "nurturable", "stage": "mql"},
    {"email": "ungraded@example.com"},
]


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _lead_id(db: Database, address: str) -> int:
    return int((await _rows(db, select(leads.c.id).where(leads.c.email == address)))[0]["id"])


async def _send_all_due(db: Database, mailer: Mailer, now: datetime) -> list[Outcome]:
    claimed = (await dispatch(db, now, lease=LEASE, limit=1000, stale_after=STALE)).claimed
    return [await deliver(i, db=db, mailer=mailer, now=now) for i in claimed]


async def test_enroll_takes_only_fitting_leads_into_the_first_campaign_by_priority(
    db: Database, catalog: Catalog
) -> None:
    await import_leads(db, LEADS, now=MONDAY_TAIPEI_10)
    assert await enroll(db, catalog, MONDAY_TAIPEI_10) == 2
    rows = await _rows(db, select(leads.c.email, enrollments.c.campaign_id).join(enrollments))
    assert {(r["email"], r["campaign_id"]) for r in rows} == {
        ("fit@example.com", "saas-nurture"),
        ("webinar@example.com", "webinar-followup"),
    }
    planned = await _rows(db, select(deliveries).where(deliveries.c.campaign_id == "saas-nurture"))
    assert [d["step_id"] for d in sorted(planned, key=lambda d: d["step_index"])] == [
        s.id for s in catalog.campaigns["saas-nurture"].steps
    ]
    # A second pass finds nothing new: leads are only looked at again when they change.
    assert await enroll(db, catalog, MONDAY_TAIPEI_10 + timedelta(minutes=1)) == 0


async def test_dispatch_claims_only_due_deliveries_and_a_claim_is_not_given_twice(
    db: Database, catalog: Catalog
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    first = await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=100, stale_after=STALE)
    assert len(first.claimed) == 1  # only day 0 is due
    again = await dispatch(
        db, MONDAY_TAIPEI_10 + timedelta(minutes=1), lease=LEASE, limit=100, stale_after=STALE
    )
    assert again.claimed == []
    # Once the lease lapses (the broker lost the message), the same delivery is claimed again.
    later = await dispatch(db, MONDAY_TAIPEI_10 + LEASE, lease=LEASE, limit=100, stale_after=STALE)
    assert later.claimed == first.claimed


async def test_deliver_sends_once_with_contract_headers_and_records_a_touchpoint(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    [delivery_id] = (await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=10, stale_after=STALE)).claimed

    assert await deliver(delivery_id, db=db, mailer=mailer, now=MONDAY_TAIPEI_10) is Outcome.SENT
    # A duplicate broker message finds the delivery taken.
    assert await deliver(delivery_id, db=db, mailer=mailer, now=MONDAY_TAIPEI_10) is Outcome.NOT_CLAIMED

    [sent] = transport.sent
    msg = email.message_from_bytes(sent.data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["X-Nurture-Campaign"] == "saas-nurture"
    assert msg["X-Nurture-Step"] == "welcome"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Unsubscribe"].startswith("<https://track.example.com/u/")
    assert msg["Reply-To"] == "lin.chen@acmeflow.example"
    assert msg["Message-ID"] == sent.message_id
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == delivery_id))
    assert (row["status"], row["message_id"], row["attempts"]) == ("sent", sent.message_id, 1)
    kinds = [t["kind"] for t in await _rows(db, select(touchpoints).order_by(touchpoints.c.id))]
    assert kinds == ["enrolled", "email_sent"]


async def test_a_delivered_email_tracks_its_html_links_and_opens_but_not_its_unsubscribe_link(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    [delivery_id] = (await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=10, stale_after=STALE)).claimed
    lead_id = await _lead_id(db, "fit@example.com")

    assert await deliver(delivery_id, db=db, mailer=mailer, now=MONDAY_TAIPEI_10) is Outcome.SENT

    [sent] = transport.sent
    msg = email.message_from_bytes(sent.data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html_part is not None
    assert text_part is not None
    html, text = html_part.get_content(), text_part.get_content()
    unsubscribe = msg["List-Unsubscribe"].strip("<>")
    base = "https://track.example.com"
    # Every web link of the HTML part is a click URL that leads to the template's link, for this delivery
    hrefs = re.findall(r'href="([^"]+)"', html)
    clicks = [h.removeprefix(f"{base}/t/c/") for h in hrefs if h.startswith(f"{base}/t/c/")]
    targets = {read_token(t, kind="c", key=mailer.secret_key).url for t in clicks}
    assert "https://acmeflow.example/tour/first-three-workflows" in targets
    assert "https://acmeflow.example/privacy" in targets
    for token in clicks:
        link = read_token(token, kind="c", key=mailer.secret_key)
        assert (link.lead_id, link.delivery_id) == (lead_id, delivery_id)
    # The unsubscribe link is the one of the List-Unsubscribe header, untouched; nothing else is left
    assert [h for h in hrefs if not h.startswith(f"{base}/t/c/")] == [unsubscribe]
    # One open pixel, just before </body>
    [pixel] = re.findall(
        rf'<img src="{re.escape(base)}/t/o/([^"]+)" width="1" height="1"[^>]*>\s*</body>', html
    )
    assert read_token(pixel, kind="o", key=mailer.secret_key) == TrackedLink("o", lead_id, delivery_id)
    # The text part keeps the plain URLs
    assert "https://acmeflow.example/tour/first-three-workflows" in text
    assert unsubscribe in text
    assert "/t/c/" not in text


async def test_a_transient_failure_is_retried_later_with_the_same_message_id(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    transport.fail_next(TransientSendError("SMTP 421: try later"))
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10) == [Outcome.RETRY]
    # Not due again until the backoff passes; then it goes out once.
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10 + timedelta(seconds=30)) == []
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10 + timedelta(minutes=2)) == [Outcome.SENT]
    [row] = await _rows(db, select(deliveries).where(deliveries.c.status == "sent"))
    assert row["attempts"] == 2
    assert row["message_id"] == transport.sent[0].message_id


async def test_retries_are_bounded_and_end_failed(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    transport.fail_next(TransientSendError("SMTP 451: local error"), times=10)
    outcomes: list[Outcome] = []
    for hour in range(6):
        outcomes += await _send_all_due(db, mailer, MONDAY_TAIPEI_10 + timedelta(hours=hour))
    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.FAILED]  # max_attempts == 3
    assert transport.sent == []


async def test_a_permanent_failure_suppresses_the_lead_and_stops_every_later_step(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    transport.fail_next(PermanentSendError("SMTP 550: no such user"))
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10) == [Outcome.BOUNCED]
    [lead] = await _rows(db, select(leads))
    assert lead["suppressed"]
    assert lead["suppressed_reason"].startswith("bounced: SMTP 550")
    statuses = {d["status"] for d in await _rows(db, select(deliveries))}
    assert statuses == {"failed", "cancelled"}
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10 + timedelta(days=30)) == []
    [enrollment] = await _rows(db, select(enrollments))
    assert enrollment["state"] == "exited"


async def test_a_lead_that_became_mql_is_held_and_leaves_the_campaign(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    await _send_all_due(db, mailer, MONDAY_TAIPEI_10)
    await import_leads(db, [{"email": "fit@example.com", "stage": "mql"}], now=MONDAY_TAIPEI_10)
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10 + timedelta(days=3)) == [Outcome.HELD]
    [enrollment] = await _rows(db, select(enrollments))
    assert (enrollment["state"], enrollment["exit_reason"]) == ("exited", "stage: mql")
    assert len(transport.sent) == 1


async def test_a_whole_campaign_completes_and_the_lead_moves_on_to_the_next_one(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, [LEADS[1]], now=MONDAY_TAIPEI_10)
    now = MONDAY_TAIPEI_10
    for _ in range(24 * 10):  # ten days, hourly ticks
        await enroll(db, catalog, now)
        await _send_all_due(db, mailer, now)
        now += timedelta(hours=1)
    steps = [m.data.split(b"X-Nurture-Step: ")[1].split(b"\r\n")[0].decode() for m in transport.sent]
    webinar_steps = [s.id for s in catalog.campaigns["webinar-followup"].steps]
    assert steps[: len(webinar_steps)] == webinar_steps
    rows = await _rows(db, select(enrollments.c.campaign_id, enrollments.c.state).order_by(enrollments.c.id))
    assert rows[0] == {"campaign_id": "webinar-followup", "state": "completed"}
    assert rows[1] == {"campaign_id": "saas-nurture", "state": "active"}
    assert await _lead_id(db, "webinar@example.com") > 0


async def test_a_delivery_dispatched_after_its_window_closed_waits_for_the_next_window(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    # Given a day-0 delivery due Monday 10:00 Taipei that nobody dispatched until 20:00 Taipei
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    late = MONDAY_TAIPEI_10 + timedelta(hours=10)
    # When it is dispatched late, it is not sent but deferred to Tuesday 09:00 Taipei, attempts untouched
    assert await _send_all_due(db, mailer, late) == [Outcome.DEFERRED]
    [row] = await _rows(db, select(deliveries).where(deliveries.c.step_id == "welcome"))
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert row["due_at"] == datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
    # Then it goes out when the window opens
    assert await _send_all_due(db, mailer, row["due_at"]) == [Outcome.SENT]
    assert len(transport.sent) == 1


async def test_a_send_whose_outcome_is_unknown_is_reported_and_never_sent_again(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    transport.fail_next(SendOutcomeUnknownError("SMTPServerDisconnected after DATA began"))
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10) == [Outcome.UNKNOWN]
    # Later ticks send the later steps but never the welcome again.
    for day in range(1, 4):
        await _send_all_due(db, mailer, MONDAY_TAIPEI_10 + timedelta(days=day))
    [welcome] = await _rows(db, select(deliveries).where(deliveries.c.step_id == "welcome"))
    assert welcome["status"] == "unknown"
    assert all(b"X-Nurture-Step: welcome\r\n" not in m.data for m in transport.sent)
    kinds = [t["kind"] for t in await _rows(db, select(touchpoints).order_by(touchpoints.c.id))]
    assert kinds.count("email_unknown") == 1


async def test_a_worker_that_died_mid_send_leaves_the_delivery_unknown_not_resent(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    # Given a delivery a worker moved to `sending` and then died on (it never recorded an outcome)
    await import_leads(db, LEADS[:1], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    [delivery_id] = (await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=10, stale_after=STALE)).claimed
    async with db.transaction() as conn:
        assert await start_sending(conn, delivery_id, now=MONDAY_TAIPEI_10) is not None
    # When dispatch runs after the stale limit, the delivery is reported unknown and not claimed again
    result = await dispatch(db, MONDAY_TAIPEI_10 + LEASE + STALE, lease=LEASE, limit=10, stale_after=STALE)
    assert (result.unknown, result.claimed) == ([delivery_id], [])
    assert (
        await deliver(delivery_id, db=db, mailer=mailer, now=MONDAY_TAIPEI_10 + LEASE) is Outcome.NOT_CLAIMED
    )
    assert transport.sent == []
