"""Listing and settling deliveries whose outcome is unknown, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.db.engine import Database
from nurture.db.queries.deliveries import start_sending
from nurture.db.queries.tables import deliveries, touchpoints
from nurture.errors import NurtureError, SendOutcomeUnknownError, TransientSendError
from nurture.flows.deliver import Mailer, Outcome, deliver
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.flows.unknown import Resolution, list_unknown, resolve_unknown
from nurture.transports.smtp import SmtpConfig, SmtpTransport
from tests.fakes import RecordingTransport
from tests.faults.fault_smtp import FaultSmtpServer
from tests.faults.invariants import check_invariants

MONDAY_TAIPEI_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # inside the welcome's send window
LEASE = timedelta(minutes=10)
STALE = timedelta(minutes=5)
LEAD = {"email": "fit@example.com", "first_name": "Mei", "grade": "nurturable", "timezone": "Asia/Taipei"}


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _send_all_due(db: Database, mailer: Mailer, now: datetime) -> list[Outcome]:
    claimed = (await dispatch(db, now, lease=LEASE, limit=1000, stale_after=STALE)).claimed
    return [await deliver(i, db=db, mailer=mailer, now=now) for i in claimed]


async def _unknown_welcome(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> int:
    """The welcome of one lead, cut off after DATA began: `unknown`."""
    await import_leads(db, [LEAD], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    transport.fail_next(SendOutcomeUnknownError("SMTPServerDisconnected after DATA began: lost"))
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10) == [Outcome.UNKNOWN]
    [welcome] = await list_unknown(db)
    return welcome.delivery_id


async def _died_mid_send(db: Database, catalog: Catalog) -> tuple[int, datetime]:
    """The welcome of one lead, whose worker died inside the SMTP conversation; the time it was found."""
    await import_leads(db, [LEAD], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    [delivery_id] = (await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=10, stale_after=STALE)).claimed
    async with db.transaction() as conn:
        assert await start_sending(conn, delivery_id, now=MONDAY_TAIPEI_10) is not None
    found = MONDAY_TAIPEI_10 + LEASE + STALE
    assert (await dispatch(db, found, lease=LEASE, limit=10, stale_after=STALE)).unknown == [delivery_id]
    return delivery_id, found


async def test_unknown_lists_each_delivery_with_what_the_server_said_and_its_message_id(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    delivery_id = await _unknown_welcome(db, catalog, mailer, transport)
    [listed] = await list_unknown(db)
    assert (listed.delivery_id, listed.email, listed.step_id) == (delivery_id, "fit@example.com", "welcome")
    assert listed.server_said == "SMTPServerDisconnected after DATA began: lost"
    assert listed.message_id is not None
    assert listed.message_id.startswith(f"<d{delivery_id}.")
    assert listed.sending_at == MONDAY_TAIPEI_10


async def test_a_worker_that_died_mid_send_is_listed_with_that_reason(db: Database, catalog: Catalog) -> None:
    delivery_id, _ = await _died_mid_send(db, catalog)
    [listed] = await list_unknown(db)
    assert listed.delivery_id == delivery_id
    assert listed.server_said == "worker stopped during the SMTP conversation"
    [touch] = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_unknown"))
    assert touch["detail"] == {"error": "worker stopped during the SMTP conversation"}


async def test_a_worker_that_died_mid_send_after_an_earlier_try_keeps_what_that_try_heard(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    # Given a welcome whose first try was refused for now (retried), and whose worker dies in the second
    await import_leads(db, [LEAD], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    transport.fail_next(TransientSendError("SMTP 454: TLS not available", code=454, deferral=False))
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10) == [Outcome.RETRY]
    retry = MONDAY_TAIPEI_10 + timedelta(hours=2)  # past any retry wait, still in the send window
    [delivery_id] = (await dispatch(db, retry, lease=LEASE, limit=10, stale_after=STALE)).claimed
    async with db.transaction() as conn:
        assert await start_sending(conn, delivery_id, now=retry) is not None
    # When the scheduler finds it stale
    found = retry + LEASE + STALE
    assert (await dispatch(db, found, lease=LEASE, limit=10, stale_after=STALE)).unknown == [delivery_id]
    # Then the delivery and its touchpoint say why it is unknown, and what the earlier try heard
    said = "worker stopped during the SMTP conversation (before: SMTP 454: TLS not available)"
    [listed] = await list_unknown(db)
    assert (listed.delivery_id, listed.server_said) == (delivery_id, said)
    [touch] = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_unknown"))
    assert touch["detail"] == {"error": said}


async def test_resolve_as_resend_sends_it_once_through_the_normal_dispatch_and_records_who_and_why(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    # Given an unknown welcome
    delivery_id = await _unknown_welcome(db, catalog, mailer, transport)
    later = MONDAY_TAIPEI_10 + timedelta(hours=1)
    # When the operator, having found no trace of it in the relay's log, resolves it as resend
    settled = await resolve_unknown(
        db, delivery_id, resolution=Resolution.RESEND, by="ops", reason="not in relay log", now=later
    )
    assert settled == [delivery_id]
    # Then the next dispatch sends it, and no later one sends it again
    assert await _send_all_due(db, mailer, later) == [Outcome.SENT]
    assert await _send_all_due(db, mailer, later + timedelta(minutes=30)) == []
    welcomes = [m for m in transport.sent if b"X-Nurture-Step: welcome\r\n" in m.data]
    assert len(welcomes) == 1
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == delivery_id))
    assert row["status"] == "sent"
    assert await list_unknown(db) == []
    # ...and the order to re-send is on the lead's timeline
    [order] = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_resend"))
    assert order["delivery_id"] == delivery_id
    assert order["occurred_at"] == later
    assert order["detail"]["resolved"] == {
        "as": "resend",
        "by": "ops",
        "reason": "not in relay log",
        "resolved_at": later.isoformat(),
        "server_said": "SMTPServerDisconnected after DATA began: lost",
    }


async def test_resolve_as_sent_marks_it_sent_with_a_record_and_never_sends_it(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    delivery_id = await _unknown_welcome(db, catalog, mailer, transport)
    later = MONDAY_TAIPEI_10 + timedelta(hours=1)
    await resolve_unknown(db, delivery_id, resolution=Resolution.SENT, by="ops", reason=None, now=later)
    assert await _send_all_due(db, mailer, later) == []
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == delivery_id))
    assert (row["status"], row["sent_at"]) == ("sent", MONDAY_TAIPEI_10)  # when it went, not when settled
    assert row["last_error"] == "resolved as sent by ops"
    [sent] = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_sent"))
    assert sent["occurred_at"] == MONDAY_TAIPEI_10
    assert sent["detail"]["resolved"]["as"] == "sent"
    assert sent["detail"]["resolved"]["resolved_at"] == later.isoformat()
    assert transport.sent == []


async def test_a_second_resolve_is_refused_with_the_reason(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    delivery_id = await _unknown_welcome(db, catalog, mailer, transport)
    await resolve_unknown(
        db, delivery_id, resolution=Resolution.RESEND, by="a", reason=None, now=MONDAY_TAIPEI_10
    )
    with pytest.raises(NurtureError, match=rf"^delivery {delivery_id} is pending, not unknown: nothing to"):
        await resolve_unknown(
            db, delivery_id, resolution=Resolution.RESEND, by="b", reason=None, now=MONDAY_TAIPEI_10
        )
    orders = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_resend"))
    assert len(orders) == 1


async def test_resolving_a_sent_or_missing_delivery_is_refused(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, [LEAD], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10) == [Outcome.SENT]
    [sent] = await _rows(db, select(deliveries.c.id).where(deliveries.c.status == "sent"))
    with pytest.raises(NurtureError, match=rf"^delivery {sent['id']} is sent, not unknown"):
        await resolve_unknown(
            db, sent["id"], resolution=Resolution.SENT, by="a", reason=None, now=MONDAY_TAIPEI_10
        )
    with pytest.raises(NurtureError, match=r"^no delivery 999999$"):
        await resolve_unknown(
            db, 999_999, resolution=Resolution.SENT, by="a", reason=None, now=MONDAY_TAIPEI_10
        )


async def test_resolve_all_settles_every_unknown_delivery_and_nothing_else(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, [LEAD, {**LEAD, "email": "two@example.com"}], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    transport.fail_next(SendOutcomeUnknownError("SMTPTimeoutError after DATA began: timed out"), times=2)
    assert await _send_all_due(db, mailer, MONDAY_TAIPEI_10) == [Outcome.UNKNOWN, Outcome.UNKNOWN]
    ids = sorted(d.delivery_id for d in await list_unknown(db))
    settled = await resolve_unknown(
        db, None, resolution=Resolution.SENT, by="a", reason="in log", now=MONDAY_TAIPEI_10
    )
    assert settled == ids
    assert await list_unknown(db) == []
    assert (
        await resolve_unknown(db, None, resolution=Resolution.SENT, by="a", reason=None, now=MONDAY_TAIPEI_10)
        == []
    )
    statuses = {r["status"] for r in await _rows(db, select(deliveries.c.status))}
    assert "unknown" not in statuses


async def test_a_resent_unknown_that_never_reached_the_server_keeps_the_fault_invariants(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    if db.is_sqlite:
        pytest.skip("the fault suite's invariant checker reads PostgreSQL rows (raw SQL, typed instants)")
    # Given a worker that died after marking the welcome `sending`, before a byte reached the server (what
    # the operator's check of the relay's log finds: the server never saw it)
    with FaultSmtpServer() as server:
        transport = SmtpTransport(SmtpConfig.from_url(server.url, timeout_s=5, pool_size=1))
        real = Mailer(
            catalog=mailer.catalog,
            renderer=mailer.renderer,
            transport=transport,
            secret_key=mailer.secret_key,
            base_url=mailer.base_url,
        )
        delivery_id, found = await _died_mid_send(db, catalog)
        # When it is resolved as resend and dispatch runs twice
        await resolve_unknown(db, delivery_id, resolution=Resolution.RESEND, by="ops", reason=None, now=found)
        assert await _send_all_due(db, real, found) == [Outcome.SENT]
        assert await _send_all_due(db, real, found + timedelta(minutes=30)) == []
        await transport.aclose()
        # Then the server has it exactly once, and I1-I4 hold with no unknown left
        assert [a.rcpt for a in server.snapshot()] == ["fit@example.com"]
        summary = await check_invariants(
            db, server, name="unknown resolved as resend", faults=1, due_before=found
        )
    assert (summary.duplicates, summary.unknown) == (0, 0)
