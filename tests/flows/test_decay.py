"""Scores as of now on a real database (SQLite and PostgreSQL): the scheduler's pass lowers stored scores
that decay lowered, audiences and exit rules decide on them, and the hot list and `lead show` read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.cli import _explanation_lines
from nurture.core.campaign import parse_campaign
from nurture.core.events import InboundEvent
from nurture.db.engine import Database
from nurture.db.queries.tables import enrollments, leads, touchpoints
from nurture.flows.decay import refresh_scores
from nurture.flows.engage import record_event
from nurture.flows.escalate import rescore
from nurture.flows.explain import explain_lead
from nurture.flows.ingest import import_leads
from nurture.flows.report import hot_leads
from nurture.flows.tick import enroll

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
HALF_LIFE = timedelta(days=14)  # DEFAULT_RULES
CAMPAIGN = """\
id: cooled-{suffix}
name: Cooled off
sender: {{from: "Acme <growth@acme.example>"}}
audience: {{grade: [nurturable], stage: [lead], tags: {{cohort: [{suffix}]}}{audience}}}
{exit}steps:
  - {{id: a, day: 0, subject: A, template: a.html.j2}}
"""


def _catalog(suffix: str, *, audience: str = "", exit_rule: str = "") -> Catalog:
    text = CAMPAIGN.format(suffix=suffix, audience=audience, exit=exit_rule)
    campaign = parse_campaign(text, source=f"campaigns/cooled-{suffix}.yaml")
    return Catalog(MappingProxyType({campaign.id: campaign}), MappingProxyType({}), Path("templates"))


async def _lead_scored_16(db: Database, catalog: Catalog, email: str, cohort: str) -> int:
    """A lead that downloads a paper and visits two pages (16 points) at NOW, rescored then."""
    await import_leads(
        db, [{"email": email, "grade": "nurturable", "cohort": cohort}], now=NOW - timedelta(days=1)
    )
    async with db.transaction() as conn:
        lead_id = int((await conn.execute(select(leads.c.id).where(leads.c.email == email))).scalar_one())
    for type_, url in (
        ("content_download", None),
        ("page_visit", "https://a.example/x"),
        ("page_visit", "https://a.example/y"),
    ):
        await record_event(db, InboundEvent(lead_id=lead_id, type=type_, occurred_at=NOW, url=url), now=NOW)
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert result is not None
    assert result.score_after == 16
    return lead_id


async def _row(db: Database, lead_id: int) -> dict[str, Any]:
    async with db.transaction() as conn:
        return dict((await conn.execute(select(leads).where(leads.c.id == lead_id))).one()._mapping)


async def _campaigns_of(db: Database, lead_id: int) -> list[str]:
    async with db.transaction() as conn:
        stmt = select(enrollments.c.campaign_id).where(enrollments.c.lead_id == lead_id)
        return list((await conn.execute(stmt)).scalars())


async def test_the_scheduler_pass_lowers_a_stored_score_by_decay_once(db: Database) -> None:
    catalog = _catalog("refresh")
    lead_id = await _lead_scored_16(db, catalog, "refresh@example.com", "none")
    # One half-life later the stored 16 is 8, after the pass; a second pass at once changes nothing
    later = NOW + HALF_LIFE
    await enroll(db, catalog, later)
    row = await _row(db, lead_id)
    assert row["score"] == 8
    assert row["score_drops_at"] > later
    assert await refresh_scores(db, catalog, later) == 0
    assert (await _row(db, lead_id))["score"] == 8


async def test_a_fall_by_decay_is_not_on_the_timeline_and_the_next_rescore_starts_from_it(
    db: Database,
) -> None:
    catalog = _catalog("timeline")
    lead_id = await _lead_scored_16(db, catalog, "timeline@example.com", "none")
    scored = await _score_changes(db, lead_id)
    # The pass that lowers the stored 16 to 8 puts nothing on the timeline (`lead show` explains it)
    later = NOW + HALF_LIFE
    await enroll(db, catalog, later)
    assert (await _row(db, lead_id))["score"] == 8
    assert await _score_changes(db, lead_id) == scored
    # And the next rescore's change starts from the decayed score, not from the 16 of the last rescore
    visit = InboundEvent(lead_id=lead_id, type="page_visit", occurred_at=later, url="https://a.example/z")
    await record_event(db, visit, now=later)
    result = await rescore(lead_id, db=db, catalog=catalog, now=later)
    assert result is not None
    changes = await _score_changes(db, lead_id)
    assert changes[len(scored) :] == [(8, result.score_after)]


async def _score_changes(db: Database, lead_id: int) -> list[tuple[int, int]]:
    stmt = (
        select(touchpoints.c.detail)
        .where(touchpoints.c.lead_id == lead_id, touchpoints.c.kind == "score_change")
        .order_by(touchpoints.c.id)
    )
    async with db.transaction() as conn:
        return [(d["before"], d["after"]) for d in (await conn.execute(stmt)).scalars()]


@pytest.mark.parametrize(
    ("audience", "exit_rule"),
    [
        pytest.param(", max_score: 10", "", id="audience max_score"),
        pytest.param("", "exit: {score_at_least: 15}\n", id="exit rule score_at_least"),
    ],
)
async def test_a_lead_whose_score_decayed_enrolls_on_its_score_as_of_now(
    db: Database, audience: str, exit_rule: str
) -> None:
    suffix = "max" if audience else "exit"
    catalog = _catalog(suffix, audience=audience, exit_rule=exit_rule)
    # Given a lead at 16: over the audience's max_score 10, or meeting the exit rule 15
    lead_id = await _lead_scored_16(db, catalog, f"cooled-{suffix}@example.com", suffix)
    await enroll(db, catalog, NOW)
    assert await _campaigns_of(db, lead_id) == []
    # When a half-life passes with no event, the scheduler's pass decides on its score as of now (8)
    await enroll(db, catalog, NOW + HALF_LIFE)
    assert await _campaigns_of(db, lead_id) == [f"cooled-{suffix}"]


async def test_the_hot_list_shows_the_score_as_of_now(db: Database, catalog: Catalog) -> None:
    # Given a lead alerted for a pricing visit (a moment), with no scheduler pass since
    await import_leads(db, [{"email": "hotlist@example.com", "grade": "nurturable"}], now=NOW)
    async with db.transaction() as conn:
        stmt = select(leads.c.id).where(leads.c.email == "hotlist@example.com")
        lead_id = int((await conn.execute(stmt)).scalar_one())
    event = InboundEvent(lead_id=lead_id, type="page_visit", occurred_at=NOW, url="https://a.example/pricing")
    await record_event(db, event, now=NOW)
    await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    # When the hot list is read two half-lives later, its score is the decayed one, as `lead show` says
    later = NOW + 2 * HALF_LIFE
    rows = await hot_leads(db, now=later, days=30, half_life=HALF_LIFE, limit=1000)
    [row] = [r for r in rows if r.lead_id == lead_id]
    shown = await explain_lead("hotlist@example.com", db=db, catalog=catalog, now=later)
    assert shown is not None
    assert (row.score, shown.breakdown.total) == (4, 4)
    assert (await _row(db, lead_id))["score"] == 15


async def test_lead_show_explains_a_lead_that_fell_under_the_mql_threshold_by_decay(
    db: Database, catalog: Catalog
) -> None:
    # Given an MQL at 53 (a meeting and a page visit)
    await import_leads(db, [{"email": "fell@example.com", "grade": "nurturable"}], now=NOW)
    async with db.transaction() as conn:
        stmt = select(leads.c.id).where(leads.c.email == "fell@example.com")
        lead_id = int((await conn.execute(stmt)).scalar_one())
    for type_ in ("meeting_booked", "page_visit"):
        await record_event(db, InboundEvent(lead_id=lead_id, type=type_, occurred_at=NOW), now=NOW)
    await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    # When it is shown three days later, after decay took it to 46
    shown = await explain_lead("fell@example.com", db=db, catalog=catalog, now=NOW + timedelta(days=3))
    assert shown is not None
    assert (shown.breakdown.total, shown.rescored) == (46, 53)
    [drop] = shown.below_by_decay
    assert (drop.name, drop.threshold) == ("mql", 50)
    assert NOW + timedelta(days=1) < drop.since < NOW + timedelta(days=2)
    lines = _explanation_lines(shown)
    assert "Score 46 as of now by <defaults> (53 at the last rescore, 2026-03-02 02:00)" in lines
    assert any(line.strip().startswith("below the MQL threshold 50 since 2026-03-0") for line in lines)
