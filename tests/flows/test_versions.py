"""Campaign versions on a real database: snapshots, `on_change: keep | follow`, and validate's warnings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from sqlalchemy import delete, select

from nurture.catalog import Catalog
from nurture.core.campaign import Campaign, parse_campaign
from nurture.db.engine import Database
from nurture.db.queries.campaign_language import EnrolledVersion, campaign_versions
from nurture.db.queries.tables import deliveries, enrollments
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from nurture.flows.versions import apply_campaign_versions, describe_change, warn_enrolled_changes

START = datetime(2026, 3, 2, 10, tzinfo=UTC)  # a Monday
HEAD = """\
id: trial
name: Trial
sender: {from: "Acme <growth@acme.example>"}
send_window: {days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59", default_timezone: UTC}
"""
V1 = (
    HEAD
    + """\
steps:
  - {id: a, day: 0, subject: A, template: a.html.j2}
  - {id: b, day: 2, subject: B, template: b.html.j2}
  - {id: c, day: 4, subject: C, template: c.html.j2}
"""
)
V2 = """\
steps:
  - {id: a, day: 0, subject: A, template: a.html.j2}
  - {id: c, day: 5, subject: C, template: c.html.j2}
  - {id: d, day: 6, subject: D, template: d.html.j2}
"""


def _catalog(text: str) -> Catalog:
    campaign: Campaign = parse_campaign(text, source="campaigns/trial.yaml")
    return Catalog(MappingProxyType({campaign.id: campaign}), MappingProxyType({}), Path("templates"))


async def _plan(db: Database) -> dict[str, tuple[str, datetime, str | None]]:
    async with db.transaction() as conn:
        rows = await conn.execute(
            select(deliveries.c.step_id, deliveries.c.status, deliveries.c.due_at, deliveries.c.last_error)
        )
        return {r.step_id: (r.status, r.due_at, r.last_error) for r in rows}


async def _enroll_three(db: Database) -> Catalog:
    async with db.transaction() as conn:  # the shared test database keeps versions between tests
        await conn.execute(delete(campaign_versions))
    leads = [{"email": f"l{i}@example.com", "grade": "nurturable"} for i in range(3)]
    await import_leads(db, leads, now=START - timedelta(days=1))
    catalog = _catalog(V1)
    assert await enroll(db, catalog, START) == 3
    return catalog


async def test_enroll_keeps_a_snapshot_of_the_version_leads_started(db: Database) -> None:
    catalog = await _enroll_three(db)
    await enroll(db, catalog, START + timedelta(hours=1))  # the same version is stored once
    async with db.transaction() as conn:
        stored = (
            await conn.execute(select(campaign_versions).where(campaign_versions.c.campaign_id == "trial"))
        ).all()
    assert [(r.campaign_id, r.content_hash, r.text) for r in stored] == [
        ("trial", catalog.campaigns["trial"].content_hash, V1)
    ]


async def test_on_change_keep_leaves_enrolled_plans_alone_and_validate_says_what_the_edit_does(
    db: Database,
) -> None:
    await _enroll_three(db)
    before = await _plan(db)
    edited = _catalog(HEAD + V2)
    warnings = [str(w) for w in await warn_enrolled_changes(db, edited)]
    async with db.transaction() as conn:
        assert await apply_campaign_versions(conn, edited, START + timedelta(days=1)) == 0
    assert await _plan(db) == before
    assert warnings == [
        "campaigns/trial.yaml: 3 enrolled lead(s) started an earlier version (on_change: keep)",
        "campaigns/trial.yaml: 3 enrolled lead(s): step 'b' removed → 3 pending deliveries will be skipped",
        "campaigns/trial.yaml: 3 enrolled lead(s): step 'd' added → not planned: only new enrollments get it",
        "campaigns/trial.yaml: step 'c' moved from day 4 to day 5 → pending deliveries keep their time",
    ]


async def test_on_change_follow_replans_pending_deliveries_to_the_new_steps(db: Database) -> None:
    await _enroll_three(db)
    edited = _catalog(HEAD + "on_change: follow\n" + V2)
    warnings = [str(w) for w in await warn_enrolled_changes(db, edited)]
    now = START + timedelta(days=1)
    async with db.transaction() as conn:
        assert await apply_campaign_versions(conn, edited, now) == 3
        assert await apply_campaign_versions(conn, edited, now) == 0  # done once
        hashes = {r.campaign_hash for r in await conn.execute(select(enrollments.c.campaign_hash))}
    plan = await _plan(db)
    assert plan["b"][0] == "skipped"
    assert "step removed in version" in (plan["b"][2] or "")
    assert plan["c"][:2] == ("pending", START + timedelta(days=5))
    assert plan["d"][:2] == ("pending", START + timedelta(days=6))
    assert hashes == {edited.campaigns["trial"].content_hash}
    assert await warn_enrolled_changes(db, edited) == []
    assert "3 enrolled lead(s): step 'd' added → planned where it still lies ahead" in " ".join(warnings)


async def test_two_schedulers_applying_a_new_version_at_once_replan_each_enrollment_once(
    db: Database,
) -> None:
    await _enroll_three(db)
    edited = _catalog(HEAD + "on_change: follow\n" + V2)

    async def apply() -> int:
        async with db.transaction() as conn:
            return await apply_campaign_versions(conn, edited, START + timedelta(days=1))

    done = await asyncio.gather(apply(), apply())
    async with db.transaction() as conn:
        added = (await conn.execute(select(deliveries.c.id).where(deliveries.c.step_id == "d"))).all()
        versions = (
            await conn.execute(select(campaign_versions).where(campaign_versions.c.campaign_id == "trial"))
        ).all()
    assert sum(done) == 3
    assert len(added) == 3
    assert edited.campaigns["trial"].content_hash in {r.content_hash for r in versions}


def test_describe_change_tells_what_renders_anew_and_admits_versions_it_never_saw() -> None:
    old = parse_campaign(V1, source="campaigns/trial.yaml")
    new = parse_campaign(
        V1.replace("subject: B", "subject: B2, when: {opened: a}"), source="campaigns/trial.yaml"
    )
    seen = EnrolledVersion("trial", old.content_hash, 5, {"b": 5, "c": 5})
    unseen = EnrolledVersion("trial", "f" * 64, 2, {"zz": 2})
    assert describe_change(new, [(seen, old), (unseen, None)]) == [
        "7 enrolled lead(s) started an earlier version (on_change: keep)",
        "2 enrolled lead(s): step 'zz' removed → 2 pending deliveries will be skipped",
        "step 'b' changed (subject, when) → enrolled leads get it as it is now",
        "some enrolled leads started a version not on record: only removed steps can be told",
    ]
