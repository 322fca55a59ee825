"""Deciding due steps on a real database: conditions over recorded engagement, variants, and rep tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select, update

from nurture.catalog import Catalog
from nurture.core.branching import choose_variant
from nurture.db.engine import Database
from nurture.db.queries.tables import alerts, deliveries, events, leads, touchpoints
from nurture.flows.decide import StepDecision, StepRef, decide_steps, record_rep_task
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll

MONDAY_TAIPEI_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
LEAD = {
    "email": "mei@example.com",
    "first_name": "Mei",
    "company": "Kestrel Freight",
    "grade": "nurturable",
    "timezone": "Asia/Taipei",
    "owner": "lin.chen@acmeflow.example",
}


async def _enrolled(db: Database, catalog: Catalog) -> dict[str, StepRef]:
    """Import and enroll one lead in saas-nurture; return a ref for each of its deliveries by step id."""
    await import_leads(db, [LEAD], now=MONDAY_TAIPEI_10 - timedelta(days=1))
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    async with db.transaction() as conn:
        rows = (await conn.execute(select(deliveries))).all()
    return {
        r.step_id: StepRef(r.id, r.enrollment_id, r.lead_id, r.campaign_id, r.step_id, score=0) for r in rows
    }


async def _sent(db: Database, ref: StepRef, *, opened: bool = False, clicked: bool = False) -> None:
    """Mark a delivery sent and record the engagement with it."""
    async with db.transaction() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.id == ref.delivery_id).values(status="sent"))
        for kind, happened in (("email_open", opened), ("email_click", clicked), ("email_open", opened)):
            if happened:
                await conn.execute(
                    events.insert().values(
                        lead_id=ref.lead_id,
                        type=kind,
                        occurred_at=MONDAY_TAIPEI_10,
                        received_at=MONDAY_TAIPEI_10,
                        delivery_id=ref.delivery_id,
                        properties={},
                    )
                )


@contextmanager
def _counting_queries(db: Database) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)


async def test_decide_steps_resends_the_welcome_only_to_leads_who_did_not_open_it(
    db: Database, catalog: Catalog
) -> None:
    refs = await _enrolled(db, catalog)
    await _sent(db, refs["welcome"])
    async with db.transaction() as conn:
        before = await decide_steps(conn, [refs["welcome-resend"]], catalog, MONDAY_TAIPEI_10)
    await _sent(db, refs["welcome"], opened=True)
    async with db.transaction() as conn:
        after = await decide_steps(conn, [refs["welcome-resend"]], catalog, MONDAY_TAIPEI_10)
    assert before == {refs["welcome-resend"].delivery_id: StepDecision("send")}
    assert after == {
        refs["welcome-resend"].delivery_id: StepDecision("skip", reason="when: not_opened welcome was false")
    }


async def test_decide_steps_answers_a_whole_batch_with_one_query(db: Database, catalog: Catalog) -> None:
    refs = await _enrolled(db, catalog)
    await _sent(db, refs["welcome"], clicked=True)  # a click counts as an open
    step = catalog.campaigns["saas-nurture"].step("case-study")
    assert step is not None
    chosen = choose_variant(step, refs["case-study"].lead_id)
    assert chosen is not None
    async with db.transaction() as conn:
        with _counting_queries(db) as statements:
            decided = await decide_steps(conn, list(refs.values()), catalog, MONDAY_TAIPEI_10)
    assert len(statements) == 1
    assert decided[refs["welcome-resend"].delivery_id].action == "skip"
    assert decided[refs["case-study"].delivery_id] == StepDecision("send", variant=chosen.id)
    assert decided[refs["rep-call"].delivery_id] == StepDecision("task")
    assert decided[refs["ops-checklist"].delivery_id] == StepDecision("send")


async def test_decide_steps_sends_a_step_the_catalog_no_longer_has_so_the_hold_rules_skip_it(
    db: Database, catalog: Catalog
) -> None:
    gone = StepRef(1, 1, 1, "saas-nurture", "removed-step", score=0)
    async with db.transaction() as conn:
        assert await decide_steps(conn, [gone], catalog, MONDAY_TAIPEI_10) == {1: StepDecision("send")}


async def test_record_rep_task_alerts_the_rep_once_and_finishes_the_delivery(
    db: Database, catalog: Catalog
) -> None:
    refs = await _enrolled(db, catalog)
    task = refs["rep-call"]
    async with db.transaction() as conn:
        await conn.execute(
            update(deliveries).where(deliveries.c.id == task.delivery_id).values(status="claimed")
        )

    async def record() -> int | None:
        async with db.transaction() as conn:
            return await record_rep_task(conn, task, catalog, MONDAY_TAIPEI_10)

    # Two workers got the same message: exactly one alert.
    results = await asyncio.gather(record(), record())
    assert sorted(results, key=lambda r: r is None)[1] is None
    alert_id = next(r for r in results if r is not None)
    async with db.transaction() as conn:
        alert = (await conn.execute(select(alerts))).one()
        delivery = (await conn.execute(select(deliveries).where(deliveries.c.id == task.delivery_id))).one()
        kinds = [
            r.kind
            for r in await conn.execute(select(touchpoints.c.kind).where(touchpoints.c.step_id == "rep-call"))
        ]
    assert alert.id == alert_id
    assert (alert.trigger, alert.reason, alert.owner) == (
        "task:rep-call",
        "Call Mei at Kestrel Freight",
        "lin.chen@acmeflow.example",
    )
    assert alert.detail["note"]
    assert delivery.status == "sent"
    assert kinds == ["task_created"]


async def test_record_rep_task_refuses_an_email_step(db: Database, catalog: Catalog) -> None:
    refs = await _enrolled(db, catalog)
    async with db.transaction() as conn:
        assert await record_rep_task(conn, refs["welcome"], catalog, MONDAY_TAIPEI_10) is None
        assert (await conn.execute(select(alerts))).all() == []
        lead = (await conn.execute(select(leads.c.id))).scalar_one()
    assert lead == refs["welcome"].lead_id
