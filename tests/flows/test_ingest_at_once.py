"""Imports that overlap: two at once over the same addresses, and new and known leads in one batch (on
PostgreSQL a batch is staged with COPY and inserted and merged from there)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from nurture.core.lead import LeadRow
from nurture.db.engine import Database
from nurture.db.queries.leads import UpsertCounts, upsert_leads
from nurture.db.queries.tables import leads, stage_changes
from nurture.flows.ingest import import_leads

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _rows(count: int, source: str) -> list[dict[str, str | None]]:
    return [
        {
            "email": f"Lead{n}@Example.com",
            "company": f"{source} {n}",
            source: "yes",
            "owner": "Rep@Example.com",
        }
        for n in range(count)
    ]


async def _stored(db: Database) -> dict[str, tuple[object, ...]]:
    async with db.transaction() as conn:
        rows = await conn.execute(select(leads.c.email, leads.c.tags, leads.c.owner, leads.c.enroll_pending))
        return {row.email: (row.tags, row.owner, row.enroll_pending) for row in rows}


@pytest.mark.integration
async def test_two_imports_of_the_same_addresses_at_once_store_each_lead_once_with_both_sources(
    db: Database,
) -> None:
    # When two files naming the same 300 addresses are imported at the same time, in small batches
    first, second = await asyncio.gather(
        import_leads(db, _rows(300, "webinar"), now=NOW, batch_size=50),
        import_leads(db, _rows(300, "fair"), now=NOW, batch_size=70),
    )
    # Then every address is inserted exactly once, merged once, and carries both files' tags
    assert first.inserted + second.inserted == 300
    assert first.accepted == second.accepted == 300
    stored = await _stored(db)
    assert len(stored) == 300
    assert all(tags == {"webinar": "yes", "fair": "yes"} for tags, _, _ in stored.values())
    assert {owner for _, owner, _ in stored.values()} == {"rep@example.com"}


@pytest.mark.integration
async def test_a_batch_of_new_and_known_leads_inserts_the_new_and_merges_the_known(db: Database) -> None:
    await import_leads(db, _rows(3, "webinar"), now=NOW)
    rows: list[dict[str, str | None]] = [*_rows(5, "fair"), {"email": "bad@", "company": "x"}]
    report = await import_leads(db, rows, now=NOW)
    assert (report.inserted, report.updated, len(report.rejected)) == (2, 3, 1)
    stored = await _stored(db)
    assert stored["lead0@example.com"][0] == {"webinar": "yes", "fair": "yes"}
    assert stored["lead4@example.com"][0] == {"fair": "yes"}
    assert all(pending for _, _, pending in stored.values())


@pytest.mark.integration
async def test_two_batches_upserted_in_one_transaction_both_go_in(db: Database) -> None:
    def batch(*emails: str) -> list[LeadRow]:
        return [LeadRow(email=e, profile={}, grade=None, stage=None, tags={"batch": e}) for e in emails]

    async with db.transaction() as conn:
        first = await upsert_leads(conn, batch("a@example.com", "b@example.com"), now=NOW)
        second = await upsert_leads(conn, batch("b@example.com", "c@example.com"), now=NOW)
    assert (first, second) == (UpsertCounts(2, 0), UpsertCounts(1, 1))
    assert sorted(await _stored(db)) == ["a@example.com", "b@example.com", "c@example.com"]


@pytest.mark.integration
async def test_two_imports_at_once_apply_the_forward_move_once_and_refuse_the_backward_one(
    db: Database,
) -> None:
    # Given 100 MQLs
    emails = [f"lead{n}@example.com" for n in range(100)]
    await import_leads(db, [{"email": e, "stage": "mql"} for e in emails], now=NOW)
    # When one file moves them to sql while another, at the same time, would put them back at lead
    forward, backward = await asyncio.gather(
        import_leads(db, [{"email": e, "stage": "sql"} for e in emails], now=NOW, batch_size=30),
        import_leads(db, [{"email": e, "stage": "lead"} for e in emails], now=NOW, batch_size=40),
    )
    # Then every lead is an SQL, moved once and recorded once, and every backward row was refused
    assert (forward.stages_changed, forward.stage_refused) == (100, [])
    assert (backward.stages_changed, len(backward.stage_refused)) == (0, 100)
    async with db.transaction() as conn:
        assert set((await conn.execute(select(leads.c.stage))).scalars()) == {"sql"}
        moves = (await conn.execute(select(stage_changes.c.from_stage, stage_changes.c.to_stage))).all()
    assert [tuple(m) for m in moves] == [("mql", "sql")] * 100
