"""Unsubscribing on a real database (SQLite and PostgreSQL): one call stops every campaign of the lead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries, enrollments, leads, touchpoints
from nurture.errors import PermanentSendError
from nurture.flows.deliver import Mailer, Outcome, deliver
from nurture.flows.engage import unsubscribe
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from tests.fakes import RecordingTransport

# Monday 2026-03-02 10:00 in Taipei: the first step is due at once.
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
LEASE = timedelta(minutes=10)
STALE = timedelta(minutes=5)
LEADS = [
    {"email": "mei@example.com", "grade": "nurturable", "timezone": "Asia/Taipei"},
    {"email": "other@example.com", "grade": "nurturable", "timezone": "Asia/Taipei"},
]


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _lead_id(db: Database, address: str) -> int:
    return int((await _rows(db, select(leads.c.id).where(leads.c.email == address)))[0]["id"])


async def _enrolled_and_first_step_sent(db: Database, catalog: Catalog, mailer: Mailer) -> int:
    """Two enrolled leads; each got its first email. Return that email's delivery id for the first lead."""
    await import_leads(db, LEADS, now=START)
    assert await enroll(db, catalog, START) == 2
    claimed = (await dispatch(db, START, lease=LEASE, limit=10, stale_after=STALE)).claimed
    assert [await deliver(i, db=db, mailer=mailer, now=START) for i in claimed] == [Outcome.SENT] * 2
    lead_id = await _lead_id(db, "mei@example.com")
    [sent] = await _rows(
        db, select(deliveries.c.id).where(deliveries.c.lead_id == lead_id, deliveries.c.status == "sent")
    )
    return int(sent["id"])


async def _unsubscribed_touchpoints(db: Database) -> list[dict[str, Any]]:
    return await _rows(db, select(touchpoints).where(touchpoints.c.kind == "unsubscribed"))


async def test_unsubscribe_suppresses_the_lead_exits_its_enrollment_and_cancels_what_is_not_sent(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    # Given a lead that got its first email, with the later steps pending
    delivery_id = await _enrolled_and_first_step_sent(db, catalog, mailer)
    lead_id = await _lead_id(db, "mei@example.com")
    later = START + timedelta(hours=1)

    # When the link in that email is used
    assert await unsubscribe(db, lead_id=lead_id, delivery_id=delivery_id, now=later) is True

    # Then the lead is suppressed, its enrollment exited, its unsent deliveries cancelled
    [lead] = await _rows(db, select(leads).where(leads.c.id == lead_id))
    assert (lead["suppressed"], lead["suppressed_reason"]) == (True, "unsubscribed")
    [enrollment] = await _rows(db, select(enrollments).where(enrollments.c.lead_id == lead_id))
    assert (enrollment["state"], enrollment["exit_reason"], enrollment["ended_at"]) == (
        "exited",
        "unsubscribed",
        later,
    )
    statuses = await _rows(
        db, select(deliveries.c.id, deliveries.c.status).where(deliveries.c.lead_id == lead_id)
    )
    assert {d["id"]: d["status"] for d in statuses} == {
        d["id"]: "sent" if d["id"] == delivery_id else "cancelled" for d in statuses
    }
    assert len(statuses) > 1
    # And the touchpoint names the email the link came from
    [touch] = await _unsubscribed_touchpoints(db)
    [sent] = await _rows(db, select(deliveries).where(deliveries.c.id == delivery_id))
    assert (touch["lead_id"], touch["delivery_id"], touch["occurred_at"]) == (lead_id, delivery_id, later)
    assert (touch["campaign_id"], touch["step_id"]) == (sent["campaign_id"], sent["step_id"])
    # And the other lead is untouched
    other = await _lead_id(db, "other@example.com")
    [other_lead] = await _rows(db, select(leads.c.suppressed).where(leads.c.id == other))
    assert other_lead["suppressed"] is False


async def test_after_unsubscribing_no_later_tick_mails_or_enrolls_the_lead(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    delivery_id = await _enrolled_and_first_step_sent(db, catalog, mailer)
    lead_id = await _lead_id(db, "mei@example.com")
    await unsubscribe(db, lead_id=lead_id, delivery_id=delivery_id, now=START + timedelta(hours=1))
    # Even when the lead is flagged for a new enrollment check (it changed, e.g. re-imported)
    await import_leads(db, LEADS[:1], now=START + timedelta(hours=2))

    for day in range(1, 30, 3):
        now = START + timedelta(days=day)
        await enroll(db, catalog, now)
        for i in (await dispatch(db, now, lease=LEASE, limit=100, stale_after=STALE)).claimed:
            await deliver(i, db=db, mailer=mailer, now=now)

    mailed = [m for m in transport.sent if "mei@example.com" in m.recipients]
    assert len(mailed) == 1  # the first email only, sent before the unsubscribe
    active = await _rows(
        db, select(enrollments).where(enrollments.c.lead_id == lead_id, enrollments.c.state == "active")
    )
    assert active == []


async def test_unsubscribing_twice_changes_nothing_the_second_time(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    delivery_id = await _enrolled_and_first_step_sent(db, catalog, mailer)
    lead_id = await _lead_id(db, "mei@example.com")
    assert await unsubscribe(db, lead_id=lead_id, delivery_id=delivery_id, now=START + timedelta(hours=1))
    before = await _rows(db, select(leads).where(leads.c.id == lead_id))

    again = await unsubscribe(db, lead_id=lead_id, delivery_id=delivery_id, now=START + timedelta(days=3))
    without_delivery = await unsubscribe(db, lead_id=lead_id, delivery_id=None, now=START + timedelta(days=4))

    assert (again, without_delivery) == (False, False)
    assert await _rows(db, select(leads).where(leads.c.id == lead_id)) == before
    assert len(await _unsubscribed_touchpoints(db)) == 1


async def test_unsubscribing_an_unknown_lead_returns_false_and_records_nothing(db: Database) -> None:
    await import_leads(db, LEADS[:1], now=START)
    assert await unsubscribe(db, lead_id=987_654, delivery_id=None, now=START) is False
    assert await unsubscribe(db, lead_id=987_654, delivery_id=1, now=START) is False
    assert await _unsubscribed_touchpoints(db) == []
    [lead] = await _rows(db, select(leads.c.suppressed))
    assert lead["suppressed"] is False


async def test_a_delivery_of_another_lead_does_not_label_the_touchpoint(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    await _enrolled_and_first_step_sent(db, catalog, mailer)
    mei, other = await _lead_id(db, "mei@example.com"), await _lead_id(db, "other@example.com")
    [others] = await _rows(
        db, select(deliveries.c.id).where(deliveries.c.lead_id == other, deliveries.c.status == "sent")
    )

    assert await unsubscribe(db, lead_id=mei, delivery_id=others["id"], now=START) is True

    [touch] = await _unsubscribed_touchpoints(db)
    assert (touch["lead_id"], touch["delivery_id"], touch["campaign_id"], touch["step_id"]) == (
        mei,
        None,
        None,
        None,
    )
    # The other lead's campaign goes on
    others_pending = await _rows(
        db, select(deliveries.c.id).where(deliveries.c.lead_id == other, deliveries.c.status == "pending")
    )
    assert others_pending != []


async def test_a_bounced_lead_that_unsubscribes_is_recorded_as_unsubscribed(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    # Given a lead whose first email bounced (suppressed for that reason)
    await import_leads(db, LEADS[:1], now=START)
    await enroll(db, catalog, START)
    transport.fail_next(PermanentSendError("SMTP 550: no such mailbox"))
    [delivery_id] = (await dispatch(db, START, lease=LEASE, limit=10, stale_after=STALE)).claimed
    assert await deliver(delivery_id, db=db, mailer=mailer, now=START) is Outcome.BOUNCED
    lead_id = await _lead_id(db, "mei@example.com")

    # When the person unsubscribes all the same (from an earlier email, say)
    assert await unsubscribe(db, lead_id=lead_id, delivery_id=None, now=START + timedelta(days=1)) is True

    # Then their own request is what the lead now carries, and it is on the timeline once
    [lead] = await _rows(db, select(leads).where(leads.c.id == lead_id))
    assert (lead["suppressed"], lead["suppressed_reason"]) == (True, "unsubscribed")
    assert await unsubscribe(db, lead_id=lead_id, delivery_id=None, now=START + timedelta(days=2)) is False
    assert len(await _unsubscribed_touchpoints(db)) == 1
