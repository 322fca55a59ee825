"""Lead import on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from nurture.db.engine import Database
from nurture.db.queries.tables import leads
from nurture.flows.ingest import import_leads

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def _leads(db: Database) -> dict[str, dict[str, object]]:
    async with db.transaction() as conn:
        rows = await conn.execute(select(leads))
        return {row.email: dict(row._mapping) for row in rows}


async def test_import_keeps_good_rows_and_reports_bad_ones_with_row_numbers(db: Database) -> None:
    rows = [
        {"email": "Wang@Example.com", "first_name": "王小明", "grade": "nurturable", "utm_source": "google"},
        {"email": "not-an-email", "grade": "nurturable"},
        {"email": "sato@example.jp", "first_name": "佐藤 花子", "grade": "gold"},
        {"email": "ana@example.com.br", "timezone": "Mars/Olympus"},
        {"email": "ok@example.org", "stage": "suspect", "timezone": "America/New_York"},
    ]
    report = await import_leads(db, rows, now=NOW)
    assert (report.total, report.inserted, report.updated) == (5, 2, 0)
    assert [(r.row, r.reason.split(":")[0]) for r in report.rejected] == [
        (3, "email"),
        (4, "grade"),
        (5, "timezone"),
    ]
    stored = await _leads(db)
    assert set(stored) == {"wang@example.com", "ok@example.org"}
    assert stored["wang@example.com"]["first_name"] == "王小明"
    assert stored["wang@example.com"]["tags"] == {"utm_source": "google"}
    assert stored["ok@example.org"]["stage"] == "suspect"
    assert stored["wang@example.com"]["stage"] == "lead"


async def test_import_upserts_by_email_keeping_values_a_row_leaves_empty(db: Database) -> None:
    await import_leads(
        db,
        [
            {
                "email": "a@example.com",
                "first_name": "Ann",
                "company": "Acme",
                "grade": "nurturable",
                "source": "webinar",
            }
        ],
        now=NOW,
    )
    report = await import_leads(
        db,
        [{"email": "A@example.com", "first_name": "", "company": "Acme Corp", "utm_source": "linkedin"}],
        now=NOW,
    )
    assert (report.inserted, report.updated) == (0, 1)
    lead = (await _leads(db))["a@example.com"]
    assert (lead["first_name"], lead["company"], lead["grade"]) == ("Ann", "Acme Corp", "nurturable")
    assert lead["tags"] == {"source": "webinar", "utm_source": "linkedin"}


async def test_import_merges_repeated_emails_within_one_batch(db: Database) -> None:
    rows = [
        {"email": "dup@example.com", "first_name": "Dee"},
        {"email": "DUP@example.com", "last_name": "Dup"},
    ]
    report = await import_leads(db, rows, now=NOW)
    assert (report.inserted, report.updated) == (1, 0)
    lead = (await _leads(db))["dup@example.com"]
    assert (lead["first_name"], lead["last_name"]) == ("Dee", "Dup")


async def test_import_in_small_batches_counts_and_reports_progress(db: Database) -> None:
    rows = [{"email": f"lead{i}@example.com", "grade": "nurturable"} for i in range(25)]
    seen: list[int] = []
    report = await import_leads(db, rows, now=NOW, batch_size=10, on_progress=seen.append)
    assert report.inserted == 25
    assert seen == [10, 20, 25]
    assert len(await _leads(db)) == 25


async def test_import_of_one_large_batch_of_new_leads_goes_in_whole(db: Database) -> None:
    # 2,500 new leads in one batch: more bind parameters than one PostgreSQL statement may carry.
    rows = [
        {
            "email": f"bulk{i}@example.com",
            "first_name": f"Lead {i}",
            "company": "Bulk Co",
            "grade": "nurturable",
            "utm_source": "import",
        }
        for i in range(2500)
    ]
    report = await import_leads(db, rows, now=NOW, batch_size=5000)
    assert (report.inserted, report.updated, report.rejected) == (2500, 0, [])
    assert len(await _leads(db)) == 2500
