"""Every stage move goes through `change_stage`: a history row and a timeline entry, in the move's
transaction; an import never moves a stage backwards unless asked with a reason (SQLite and PostgreSQL,
where a batch is staged with COPY)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.events import InboundEvent
from nurture.core.lead import LeadLimits
from nurture.core.stages import Stage, StageChange, StagePath
from nurture.db.engine import Database
from nurture.db.queries.stages import LeadStageChange, change_stage
from nurture.db.queries.tables import leads, stage_changes, touchpoints
from nurture.flows.engage import record_event
from nurture.flows.escalate import rescore
from nurture.flows.ingest import StagePolicy, import_leads

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _stages(db: Database) -> dict[str, str]:
    return {r["email"]: r["stage"] for r in await _rows(db, select(leads.c.email, leads.c.stage))}


async def _history(db: Database) -> list[tuple[str, str, str, str]]:
    stmt = select(stage_changes).order_by(stage_changes.c.id)
    return [(r["from_stage"], r["to_stage"], r["path"], r["reason"]) for r in await _rows(db, stmt)]


async def _lead_id(db: Database, email: str) -> int:
    [row] = await _rows(db, select(leads.c.id).where(leads.c.email == email))
    return int(row["id"])


async def _make_mql(db: Database, catalog: Catalog, email: str) -> int:
    """Qualify a lead the way engagement does: a booked meeting and a pricing visit, then a rescore."""
    lead_id = await _lead_id(db, email)
    for type_, url in (("meeting_booked", None), ("page_visit", "https://acme.example/pricing")):
        event = InboundEvent(lead_id=lead_id, type=type_, occurred_at=NOW, url=url)
        assert await record_event(db, event, now=NOW) is not None
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert result is not None
    assert result.stage_change is not None
    assert (result.stage_change.before, result.stage_change.after) == (Stage.LEAD, Stage.MQL)
    return lead_id


@pytest.mark.integration
async def test_a_reimport_keeps_a_scored_mql_reports_the_row_and_applies_its_other_fields(
    db: Database, catalog: Catalog
) -> None:
    # Given a lead imported at `lead` that scoring made an MQL
    await import_leads(db, [{"email": "mei@example.com", "stage": "lead", "company": "Old"}], now=NOW)
    lead_id = await _make_mql(db, catalog, "mei@example.com")
    # When the same file, with a new company, is imported again
    rows = [{"email": "other@example.com", "stage": "lead"}, {"email": "Mei@Example.com", "stage": "lead"}]
    rows[1]["company"] = "New"
    report = await import_leads(db, rows, now=LATER)
    # Then the lead is still an MQL, its company is the new one, and the row counts as updated and refused
    [stored] = await _rows(db, select(leads).where(leads.c.id == lead_id))
    assert (stored["stage"], stored["company"]) == ("mql", "New")
    assert (report.inserted, report.updated, report.rejected) == (1, 1, [])
    [refused] = report.stage_refused
    assert (refused.row, refused.email) == (3, "mei@example.com")
    assert refused.reason.startswith("stage: lead would move the lead back from mql; kept mql")
    # And the only stage change is scoring's, in the history and on the timeline alike
    [(before, after, path, reason)] = await _history(db)
    assert (before, after, path) == ("lead", "mql", "scoring")
    timeline = await _rows(db, select(touchpoints.c.detail).where(touchpoints.c.kind == "stage_change"))
    assert [t["detail"] for t in timeline] == [
        {"before": "lead", "after": "mql", "reason": reason, "path": "scoring"}
    ]


@pytest.mark.integration
async def test_an_import_that_moves_a_lead_forward_records_the_move_with_its_path_and_reason(
    db: Database,
) -> None:
    await import_leads(db, [{"email": "mei@example.com", "stage": "lead"}], now=NOW)
    report = await import_leads(db, [{"email": "mei@example.com", "stage": "sql"}], now=LATER)
    assert (report.updated, report.stages_changed, report.stage_refused) == (1, 1, [])
    assert await _stages(db) == {"mei@example.com": "sql"}
    assert await _history(db) == [("lead", "sql", "import", "import")]
    [row] = await _rows(db, select(stage_changes.c.occurred_at, stage_changes.c.lead_id))
    assert (row["occurred_at"], row["lead_id"]) == (LATER, await _lead_id(db, "mei@example.com"))
    [enroll] = await _rows(db, select(leads.c.enroll_pending))
    assert enroll["enroll_pending"]  # a new stage may fit another campaign


@pytest.mark.integration
async def test_a_backward_move_asked_for_with_a_reason_goes_in_and_is_recorded_with_it(db: Database) -> None:
    await import_leads(db, [{"email": "mei@example.com", "stage": "customer"}], now=NOW)
    policy = StagePolicy(reason="churned: contract ended", allow_backward=True)
    report = await import_leads(db, [{"email": "mei@example.com", "stage": "lead"}], now=LATER, stages=policy)
    assert (report.stages_changed, report.stage_refused) == (1, [])
    assert await _stages(db) == {"mei@example.com": "lead"}
    assert await _history(db) == [("customer", "lead", "import", "churned: contract ended")]


def test_a_policy_that_allows_backward_moves_without_a_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        StagePolicy(allow_backward=True)


@pytest.mark.integration
async def test_lead_and_suspect_move_into_each_other_on_import_and_an_unchanged_stage_records_nothing(
    db: Database,
) -> None:
    await import_leads(db, [{"email": "mei@example.com", "stage": "lead"}], now=NOW)
    await import_leads(db, [{"email": "mei@example.com", "stage": "suspect"}], now=LATER)
    await import_leads(db, [{"email": "mei@example.com", "stage": "suspect"}], now=LATER)
    report = await import_leads(db, [{"email": "mei@example.com", "stage": "lead"}], now=LATER)
    assert report.stage_refused == []
    assert await _history(db) == [
        ("lead", "suspect", "import", "import"),
        ("suspect", "lead", "import", "import"),
    ]


@pytest.mark.integration
async def test_refusals_in_many_batches_name_the_row_whose_stage_was_refused(db: Database) -> None:
    # Given 30 leads, the even ones made MQLs
    emails = [f"lead{n}@example.com" for n in range(30)]
    await import_leads(db, [{"email": e, "stage": "lead"} for e in emails], now=NOW)
    ids = {e: await _lead_id(db, e) for e in emails}
    async with db.transaction() as conn:
        moves = [LeadStageChange(ids[e], StageChange(Stage.LEAD, Stage.MQL, "test")) for e in emails[::2]]
        await change_stage(conn, moves, path=StagePath.CRM, occurred_at=NOW)
    # When they are all imported again in batches of 7, each email twice, the later row giving `lead`
    rows = [{"email": e, "company": "Acme"} for e in emails] + [{"email": e, "stage": "lead"} for e in emails]
    report = await import_leads(db, rows, now=LATER, batch_size=7)
    # Then every MQL is kept and refused at the row of its later mention; the rest moved nowhere
    assert await _stages(db) == {e: "mql" if n % 2 == 0 else "lead" for n, e in enumerate(emails)}
    assert [(r.row, r.email) for r in report.stage_refused] == [(32 + n, emails[n]) for n in range(0, 30, 2)]
    assert len(await _history(db)) == 15  # the CRM's moves only


@pytest.mark.integration
async def test_change_stage_records_a_change_given_twice_with_one_idempotency_key_once(db: Database) -> None:
    await import_leads(db, [{"email": "mei@example.com"}], now=NOW)
    lead_id = await _lead_id(db, "mei@example.com")
    move = LeadStageChange(lead_id, StageChange(Stage.LEAD, Stage.SQL, "crm: won a call"), "crm:42")
    for _ in range(2):
        async with db.transaction() as conn:
            await change_stage(conn, [move], path=StagePath.CRM, occurred_at=NOW)
    assert await _history(db) == [("lead", "sql", "crm", "crm: won a call")]
    assert len(await _rows(db, select(touchpoints).where(touchpoints.c.kind == "stage_change"))) == 1


@pytest.mark.integration
async def test_a_batch_of_thousands_of_known_leads_moves_and_refuses_each_by_its_stage(
    db: Database,
) -> None:
    # Given 2,500 leads, the first 1,000 at `sql` and the rest at `lead`
    count = 2500
    emails = [f"k{i}@example.com" for i in range(count)]
    first = [{"email": e, "stage": "sql" if i < 1000 else "lead"} for i, e in enumerate(emails)]
    await import_leads(db, first, now=NOW)
    # When every one is imported again at `mql`, in one batch
    again = [{"email": e, "stage": "mql"} for e in emails]
    report = await import_leads(db, again, now=LATER, batch_size=count)
    # Then the 1,500 leads move forward and the 1,000 SQLs keep their stage, each reported with its row
    assert (report.updated, report.stages_changed) == (count, 1500)
    assert [r.row for r in report.stage_refused] == list(range(2, 1002))
    stages = await _stages(db)
    assert [stages[e] for e in emails] == ["sql"] * 1000 + ["mql"] * 1500
    assert len(await _history(db)) == 1500


@pytest.mark.integration
async def test_a_stage_kept_is_reported_at_the_row_that_asked_not_at_a_later_row_refused_for_its_tags(
    db: Database,
) -> None:
    # Given an SQL
    await import_leads(db, [{"email": "ana@example.com", "stage": "sql"}], now=NOW)
    # When one batch holds a row asking for `lead` and a later row for the same address, also asking for
    # `lead`, whose tags take the two over the cap
    rows = [
        {"email": "ana@example.com", "stage": "lead", "a": "1", "b": "2"},
        {"email": "ana@example.com", "stage": "lead", "c": "3", "d": "4"},
    ]
    report = await import_leads(db, rows, now=LATER, limits=LeadLimits(max_tags=3))
    # Then the later row is rejected for its tags, and the kept stage is reported at the first row, the one
    # whose stage the lead was asked to take
    assert [(r.row, r.reason.split(":")[0]) for r in report.rejected] == [(3, "tags")]
    assert [(r.row, r.email) for r in report.stage_refused] == [(2, "ana@example.com")]
    assert (await _stages(db))["ana@example.com"] == "sql"
