"""`deliveries.lead_id` has no foreign key of its own (migration 0007): a lead's deliveries still go with it,
and the SQLite migration keeps every link to a delivery."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.engine import Database
from nurture.db.migrate import alembic_config, upgrade
from nurture.db.queries.tables import deliveries, enrollments, leads, touchpoints

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


async def _lead_with_a_sent_delivery(conn: AsyncConnection, email: str) -> tuple[int, int]:
    """Insert a lead, its enrollment, one delivery and the touchpoint that records it; return the lead id and
    the delivery id. Only columns every revision since 0001 has are written."""
    lead_id = (
        await conn.execute(
            insert(leads).values(email=email, tags={}, created_at=NOW, updated_at=NOW).returning(leads.c.id)
        )
    ).scalar_one()
    enrollment_id = (
        await conn.execute(
            insert(enrollments)
            .values(
                lead_id=lead_id, campaign_id="welcome", campaign_hash="h", state="active", enrolled_at=NOW
            )
            .returning(enrollments.c.id)
        )
    ).scalar_one()
    delivery_id = (
        await conn.execute(
            text(
                "INSERT INTO deliveries (enrollment_id, lead_id, campaign_id, step_id, step_index, due_at, "
                "status) VALUES (:enrollment, :lead, 'welcome', 'day0', 0, :now, 'sent') RETURNING id"
            ),
            {"enrollment": enrollment_id, "lead": lead_id, "now": NOW},
        )
    ).scalar_one()
    await conn.execute(
        text(
            "INSERT INTO touchpoints (lead_id, kind, occurred_at, delivery_id, detail) "
            "VALUES (:lead, 'email_sent', :now, :delivery, '{}')"
        ),
        {"lead": lead_id, "now": NOW, "delivery": delivery_id},
    )
    return int(lead_id), int(delivery_id)


@pytest.mark.integration
async def test_deleting_a_lead_deletes_its_deliveries_through_its_enrollments(db: Database) -> None:
    async with db.transaction() as conn:
        gone, _ = await _lead_with_a_sent_delivery(conn, "gone@example.com")
        kept, kept_delivery = await _lead_with_a_sent_delivery(conn, "kept@example.com")
    async with db.transaction() as conn:
        await conn.execute(leads.delete().where(leads.c.id == gone))
    async with db.transaction() as conn:
        left = (await conn.execute(select(deliveries.c.id, deliveries.c.lead_id))).all()
        linked = (await conn.execute(select(touchpoints.c.delivery_id))).scalars().all()
    assert [tuple(row) for row in left] == [(kept_delivery, kept)]
    assert linked == [kept_delivery]


async def _lead_keys(db: Database) -> list[str]:
    async with db.transaction() as conn:
        rows = (await conn.execute(text("PRAGMA foreign_key_list(deliveries)"))).all()
    return sorted(f"{row[3]}->{row[2]}" for row in rows)


async def _migrate_to(db: Database, revision: str, *, down: bool = False) -> None:
    if not down:
        await upgrade(db, revision)
        return
    async with db.transaction() as conn:
        await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))


async def test_migration_0007_on_sqlite_drops_only_that_key_and_keeps_delivery_links(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'nurture.db'}")
    try:
        await _migrate_to(db, "0006")
        async with db.transaction() as conn:
            _, delivery = await _lead_with_a_sent_delivery(conn, "a@example.com")
        assert await _lead_keys(db) == ["enrollment_id->enrollments", "lead_id->leads"]

        await _migrate_to(db, "0007")
        assert await _lead_keys(db) == ["enrollment_id->enrollments"]
        await _migrate_to(db, "0006", down=True)
        assert await _lead_keys(db) == ["enrollment_id->enrollments", "lead_id->leads"]

        async with db.transaction() as conn:
            linked = (await conn.execute(select(touchpoints.c.delivery_id))).scalars().all()
            count = (await conn.execute(select(func.count()).select_from(deliveries))).scalar_one()
            problems = (await conn.execute(text("PRAGMA integrity_check"))).scalars().all()
        assert (linked, count, problems) == ([delivery], 1, ["ok"])
    finally:
        await db.aclose()
