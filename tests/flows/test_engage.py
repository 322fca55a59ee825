"""Engagement on a real database (SQLite and PostgreSQL): recording events once, and unsubscribing, which
stops every campaign of the lead."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.events import InboundEvent, NotRecorded, RecordedEvent
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries, enrollments, events, leads, touchpoints
from nurture.errors import PermanentSendError
from nurture.flows.deliver import Mailer, Outcome, deliver
from nurture.flows.engage import (
    find_leads_by_email,
    record_event,
    record_events,
    record_keyed_events,
    unsubscribe,
)
from nurture.flows.erase import erase_lead
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


# --- record_event -----------------------------------------------------------------------------------------


async def _event_rows(db: Database) -> list[dict[str, Any]]:
    return await _rows(db, select(events).order_by(events.c.id))


async def _engagement_touchpoints(db: Database) -> list[dict[str, Any]]:
    kinds = ("enrolled", "email_sent", "unsubscribed")
    return await _rows(
        db, select(touchpoints).where(touchpoints.c.kind.not_in(kinds)).order_by(touchpoints.c.id)
    )


async def test_record_event_stores_the_event_and_a_touchpoint_naming_the_campaign_step(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    # Given a lead that got its first email
    delivery_id = await _enrolled_and_first_step_sent(db, catalog, mailer)
    lead_id = await _lead_id(db, "mei@example.com")
    clicked_at, received_at = START + timedelta(hours=2), START + timedelta(hours=2, seconds=1)

    # When it clicks a link of that email
    recorded = await record_event(
        db,
        InboundEvent(
            lead_id=lead_id,
            type="email_click",
            occurred_at=clicked_at,
            url="https://acmeflow.example/tour",
            user_agent="Mozilla/5.0",
            delivery_id=delivery_id,
            properties={"button": "tour"},
        ),
        now=received_at,
    )

    # Then the event and its touchpoint are stored, both labelled with the email they came from
    [event] = await _event_rows(db)
    assert recorded == RecordedEvent(event_id=event["id"], lead_id=lead_id)
    assert (event["lead_id"], event["type"], event["delivery_id"]) == (lead_id, "email_click", delivery_id)
    assert (event["occurred_at"], event["received_at"], event["idempotency_key"]) == (
        clicked_at,
        received_at,
        None,
    )
    assert event["properties"] == {
        "button": "tour",
        "url": "https://acmeflow.example/tour",
        "user_agent": "Mozilla/5.0",
    }
    [touch] = await _engagement_touchpoints(db)
    [sent] = await _rows(db, select(deliveries).where(deliveries.c.id == delivery_id))
    assert (touch["lead_id"], touch["kind"], touch["occurred_at"], touch["delivery_id"]) == (
        lead_id,
        "email_click",
        clicked_at,
        delivery_id,
    )
    assert (touch["campaign_id"], touch["step_id"]) == (sent["campaign_id"], sent["step_id"])
    assert touch["detail"] == {"event_id": event["id"], "url": "https://acmeflow.example/tour"}


async def test_an_event_replayed_with_the_same_idempotency_key_is_recorded_once(db: Database) -> None:
    await import_leads(db, LEADS, now=START)
    lead_id = await _lead_id(db, "mei@example.com")
    event = InboundEvent(
        lead_id=lead_id, type="content_download", occurred_at=START, idempotency_key="crm-42"
    )

    first = await record_event(db, event, now=START)
    replay = await record_event(db, event, now=START + timedelta(minutes=5))
    # A replay that differs in its body is still the same event
    other = await record_event(
        db,
        InboundEvent(lead_id=lead_id, type="form_submit", occurred_at=START, idempotency_key="crm-42"),
        now=START,
    )

    assert isinstance(first, RecordedEvent)
    assert (replay, other) == (None, None)
    assert [e["id"] for e in await _event_rows(db)] == [first.event_id]
    assert [t["kind"] for t in await _engagement_touchpoints(db)] == ["content_download"]


async def test_events_without_a_key_are_each_recorded(db: Database) -> None:
    await import_leads(db, LEADS, now=START)
    lead_id = await _lead_id(db, "mei@example.com")
    opened = InboundEvent(lead_id=lead_id, type="email_open", occurred_at=START)

    assert await record_event(db, opened, now=START) is not None
    assert await record_event(db, opened, now=START) is not None

    assert [e["type"] for e in await _event_rows(db)] == ["email_open", "email_open"]
    assert len(await _engagement_touchpoints(db)) == 2


async def test_record_event_for_an_unknown_lead_returns_none_and_stores_nothing(db: Database) -> None:
    await import_leads(db, LEADS, now=START)
    event = InboundEvent(lead_id=987_654, type="page_visit", occurred_at=START, url="https://a.example/")

    assert await record_event(db, event, now=START) is None

    assert await _event_rows(db) == []
    assert await _engagement_touchpoints(db) == []


async def test_an_event_naming_a_delivery_of_another_lead_is_refused(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    await _enrolled_and_first_step_sent(db, catalog, mailer)
    mei, other = await _lead_id(db, "mei@example.com"), await _lead_id(db, "other@example.com")
    [others] = await _rows(
        db, select(deliveries.c.id).where(deliveries.c.lead_id == other, deliveries.c.status == "sent")
    )
    later = START + timedelta(hours=1)
    crossed = InboundEvent(lead_id=mei, type="email_open", occurred_at=later, delivery_id=others["id"])
    keyed = InboundEvent(mei, "email_click", later, delivery_id=others["id"], idempotency_key="k1")
    missing = InboundEvent(mei, "email_open", later, delivery_id=999_999)

    assert await record_events(db, [crossed, missing], now=later) == [NotRecorded.FOREIGN_DELIVERY] * 2
    assert await record_keyed_events(db, [keyed], now=later) == [NotRecorded.FOREIGN_DELIVERY]

    assert await _event_rows(db) == []
    assert await _engagement_touchpoints(db) == []


async def test_record_events_reports_each_event_of_a_batch(db: Database) -> None:
    await import_leads(db, LEADS, now=START)
    mei, other = await _lead_id(db, "mei@example.com"), await _lead_id(db, "other@example.com")
    batch = [
        InboundEvent(lead_id=mei, type="meeting_booked", occurred_at=START, idempotency_key="m-1"),
        InboundEvent(lead_id=404_404, type="form_submit", occurred_at=START),
        InboundEvent(lead_id=mei, type="meeting_booked", occurred_at=START, idempotency_key="m-1"),
        InboundEvent(lead_id=other, type="webinar_attended", occurred_at=START),
    ]

    outcomes = await record_events(db, batch, now=START)

    assert [type(o) if isinstance(o, RecordedEvent) else o for o in outcomes] == [
        RecordedEvent,
        NotRecorded.UNKNOWN_LEAD,
        NotRecorded.DUPLICATE,
        RecordedEvent,
    ]
    assert [(e["lead_id"], e["type"]) for e in await _event_rows(db)] == [
        (mei, "meeting_booked"),
        (other, "webinar_attended"),
    ]


async def test_find_leads_by_email_maps_known_addresses_only(db: Database) -> None:
    await import_leads(db, LEADS, now=START)
    found = await find_leads_by_email(db, {"mei@example.com", "nobody@example.com"})
    assert found == {"mei@example.com": await _lead_id(db, "mei@example.com")}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "Page Visit"}, "slug"),
        ({"type": "x" * 41}, "slug"),
        ({"occurred_at": datetime(2026, 3, 2)}, "timezone-aware"),  # noqa: DTZ001 - the point of the test
    ],
)
def test_an_inbound_event_refuses_what_its_tables_cannot_hold(changes: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"lead_id": 1, "type": "page_visit", "occurred_at": START, **changes}
    with pytest.raises(ValueError, match=message):
        InboundEvent(**values)


async def test_an_unsubscribed_address_stays_unsubscribed_when_erased_and_imported_again(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    # Given a lead who unsubscribed, whose data was then erased
    delivery_id = await _enrolled_and_first_step_sent(db, catalog, mailer)
    mei = await _lead_id(db, "mei@example.com")
    assert await unsubscribe(db, lead_id=mei, delivery_id=delivery_id, now=START + timedelta(hours=1))
    await erase_lead(db, "mei@example.com", now=START + timedelta(days=1))

    # When the address comes back in an import
    await import_leads(db, LEADS[:1], now=START + timedelta(days=2))

    # Then the new lead is suppressed as unsubscribed: the person's request outlived the erasure
    [lead] = await _rows(db, select(leads).where(leads.c.email == "mei@example.com"))
    assert (lead["id"] != mei, lead["suppressed"], lead["suppressed_reason"]) == (True, True, "unsubscribed")


# --- the machine flag, stored -------------------------------------------------------------------------------


async def _properties(db: Database) -> list[dict[str, Any]]:
    return [dict(row["properties"]) for row in await _event_rows(db)]


async def test_machine_events_are_stored_with_the_flag_and_why_on_both_record_paths(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    delivery_id = await _enrolled_and_first_step_sent(db, catalog, mailer)
    mei = await _lead_id(db, "mei@example.com")
    later = START + timedelta(hours=1)
    proxy = "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"
    events = [
        InboundEvent(mei, "email_open", START + timedelta(seconds=2), delivery_id=delivery_id),
        InboundEvent(mei, "email_click", later, url="https://a.example/", head_request=True),
        InboundEvent(mei, "email_open", later, user_agent=proxy, delivery_id=delivery_id),
        InboundEvent(mei, "page_visit", later, url="https://a.example/"),  # a person
    ]

    await record_events(db, events[:2], now=later)
    keyed = [replace(e, idempotency_key=f"k{i}") for i, e in enumerate(events[2:])]
    await record_keyed_events(db, keyed, now=later)

    stored = await _properties(db)
    assert [(p.get("machine"), p.get("machine_reason")) for p in stored] == [
        (True, "open 2s after delivery"),
        (True, "HEAD request"),
        (True, "scanner user agent (googleimageproxy)"),
        (None, None),
    ]


async def test_a_senders_machine_mark_is_kept_only_as_json_true(db: Database) -> None:
    await import_leads(db, LEADS, now=START)
    mei = await _lead_id(db, "mei@example.com")
    marks: list[dict[str, Any]] = [
        {"machine": True},
        {"machine": True, "machine_reason": "our crawler"},
        {"machine": "yes", "machine_reason": "spoofed"},  # not JSON true: not a flag
        {"machine": False, "plan": "pro"},
    ]
    events = [InboundEvent(mei, "page_visit", START, properties=m) for m in marks]

    await record_events(db, events, now=START, replay_window=timedelta(0))  # four of one page: no repeats

    assert await _properties(db) == [
        {"machine": True, "machine_reason": "marked by its sender"},
        {"machine": True, "machine_reason": "our crawler"},
        {},
        {"plan": "pro"},
    ]
