"""No marketing email goes out without the sender's postal address (real database, SQLite and PostgreSQL): a
delivery whose campaign and NURTURE_POSTAL_ADDRESS give none fails with the reason, and nothing is sent."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog, load_catalog
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries, touchpoints
from nurture.flows.deliver import Mailer, Outcome, deliver_batch
from nurture.flows.explain import explain_lead
from nurture.flows.ingest import import_leads
from nurture.flows.send_triage import NO_POSTAL_ADDRESS
from nurture.flows.tick import dispatch, enroll
from tests.fakes import RecordingTransport

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei
LEASE, STALE = timedelta(minutes=10), timedelta(minutes=5)
CAMPAIGN = """\
id: unaddressed
name: No postal address
sender: {from: "Acme <growth@acme.example>"}
steps:
  - {id: welcome, day: 0, subject: "Hi {{ lead.first_name }}", template: mail.html.j2}
"""
TEMPLATE = '<p>Hi</p><a href="{{ unsubscribe_url }}">Unsubscribe</a><p>{{ postal_address }}</p>'


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    """This module's catalog (the `mailer` fixture sends from it): one campaign with no postal address."""
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "unaddressed.yaml").write_text(CAMPAIGN, encoding="utf-8")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mail.html.j2").write_text(TEMPLATE, encoding="utf-8")
    return load_catalog(
        campaigns_dir=tmp_path / "campaigns", templates_dir=tmp_path / "templates", reps_file=None
    )


async def _claimed(db: Database, catalog: Catalog) -> list[int]:
    row = {"email": "mei@example.com", "first_name": "Mei", "grade": "nurturable", "timezone": "Asia/Taipei"}
    await import_leads(db, [row], now=NOW)
    await enroll(db, catalog, NOW)
    return (await dispatch(db, NOW, lease=LEASE, limit=100, stale_after=STALE)).claimed


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def test_a_delivery_whose_campaign_has_no_postal_address_fails_with_the_reason_and_sends_nothing(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    # Given a due email of a campaign with no sender.postal_address, and no NURTURE_POSTAL_ADDRESS
    [delivery_id] = await _claimed(db, catalog)
    # When it is sent
    result = await deliver_batch([delivery_id], db=db, mailer=mailer, now=NOW)
    # Then nothing goes out, and the delivery is failed with the reason, on the delivery and its touchpoint
    assert result.outcomes == {delivery_id: Outcome.FAILED}
    assert transport.sent == []
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == delivery_id))
    assert (row["status"], row["last_error"]) == ("failed", NO_POSTAL_ADDRESS)
    [touch] = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_failed"))
    assert touch["detail"]["error"] == NO_POSTAL_ADDRESS
    # And `lead show` tells why
    shown = await explain_lead("mei@example.com", db=db, catalog=catalog, now=NOW)
    assert shown is not None
    [failed] = [t for t in shown.timeline if t.kind == "email_failed"]
    assert failed.subject == f"unaddressed/welcome: {NO_POSTAL_ADDRESS}"
    # And a second batch with the same id finds nothing left to send
    again = await deliver_batch([delivery_id], db=db, mailer=mailer, now=NOW)
    assert again.outcomes == {delivery_id: Outcome.NOT_CLAIMED}
    assert transport.sent == []


async def test_nurture_postal_address_is_the_address_of_a_campaign_that_gives_none(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    addressed = dataclasses.replace(mailer, postal_address="Acme Inc., 1 Main St, Springfield")
    [delivery_id] = await _claimed(db, catalog)
    result = await deliver_batch([delivery_id], db=db, mailer=addressed, now=NOW)
    assert result.outcomes == {delivery_id: Outcome.SENT}
    [message] = transport.sent
    assert b"Acme Inc., 1 Main St, Springfield" in message.data


async def test_a_blank_nurture_postal_address_is_no_address(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    blank = dataclasses.replace(mailer, postal_address="  ")
    [delivery_id] = await _claimed(db, catalog)
    assert (await deliver_batch([delivery_id], db=db, mailer=blank, now=NOW)).outcomes == {
        delivery_id: Outcome.FAILED
    }
    assert transport.sent == []
