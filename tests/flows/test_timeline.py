"""The rep's view of a lead (`lead_timeline`) on a real database (SQLite and PostgreSQL), built from what the
real flows write: imports, enrollment, recorded events, rescores, stage changes and alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.events import InboundEvent
from nurture.db.engine import Database
from nurture.db.queries.tables import leads, touchpoints
from nurture.flows.engage import record_event
from nurture.flows.escalate import rescore
from nurture.flows.explain import LeadTimeline, lead_timeline
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei
OWNER = "lin.chen@acmeflow.example"  # Lin Chen in reps.yaml
PRICING = "https://acmeflow.example/pricing"


async def _add_lead(db: Database, email: str, **fields: str) -> int:
    row = {"email": email, "grade": "nurturable", "timezone": "Asia/Taipei", **fields}
    await import_leads(db, [row], now=NOW - timedelta(days=1))
    async with db.transaction() as conn:
        return int((await conn.execute(select(leads.c.id).where(leads.c.email == email))).scalar_one())


async def _add_event(db: Database, lead_id: int, type_: str, at: datetime, **extra: Any) -> int:
    recorded = await record_event(
        db, InboundEvent(lead_id=lead_id, type=type_, occurred_at=at, **extra), now=max(at, NOW)
    )
    assert recorded is not None
    return recorded.event_id


async def _touchpoint_order(db: Database, lead_id: int) -> list[int]:
    """Every touchpoint id of the lead, newest first: by when it happened, then by id."""
    stmt = (
        select(touchpoints.c.id)
        .where(touchpoints.c.lead_id == lead_id)
        .order_by(touchpoints.c.occurred_at.desc(), touchpoints.c.id.desc())
    )
    async with db.transaction() as conn:
        return list((await conn.execute(stmt)).scalars())


async def _timeline(db: Database, catalog: Catalog, lead_id: int, **kwargs: Any) -> LeadTimeline:
    found = await lead_timeline(lead_id, db=db, catalog=catalog, now=kwargs.pop("now", NOW), **kwargs)
    assert found is not None
    return found


async def test_lead_timeline_has_the_events_scores_stage_change_alert_and_touchpoints(
    db: Database, catalog: Catalog
) -> None:
    # Given an enrolled lead that visits the pricing page (a moment), then books a meeting (mql)
    lead_id = await _add_lead(
        db, "mei@example.com", owner=OWNER, first_name="Mei", company="Example Logistics", source="webinar"
    )
    assert await enroll(db, catalog, NOW - timedelta(hours=3)) == 1
    await _add_event(db, lead_id, "page_visit", NOW - timedelta(hours=2), url=PRICING)
    await rescore(lead_id, db=db, catalog=catalog, now=NOW - timedelta(hours=2))
    await _add_event(db, lead_id, "meeting_booked", NOW - timedelta(hours=1))
    await rescore(lead_id, db=db, catalog=catalog, now=NOW - timedelta(hours=1))

    # When its timeline is read
    t = await _timeline(db, catalog, lead_id)

    # Then the lead is there with its owner, and its times are shown in its zone
    assert (t.lead.id, t.lead.profile.first_name, t.lead.profile.stage) == (lead_id, "Mei", "mql")
    assert t.lead.profile.tags["source"] == "webinar"
    assert t.owner is not None
    assert t.owner.name == "Lin Chen"
    assert t.zone == "Asia/Taipei"
    # The score is explained event by event, oldest first, and adds up
    assert [(i.event.type, i.event.url, i.base_points) for i in t.breakdown.items] == [
        ("page_visit", PRICING, 15),
        ("meeting_booked", None, 50),
    ]
    assert t.breakdown.total == round(sum(i.points for i in t.breakdown.items))
    assert all(i.ignored is None and 0 < i.points <= i.base_points for i in t.breakdown.items)
    assert (t.scored_at, t.rules_source) == (NOW, catalog.scoring.source)
    # The score history and the stage change are newest first
    assert [(c.before, c.after, c.occurred_at) for c in t.score_history] == [
        (15, 65, NOW - timedelta(hours=1)),
        (0, 15, NOW - timedelta(hours=2)),
    ]
    assert [(c.before, c.after) for c in t.stage_changes] == [("lead", "mql")]
    assert t.stage_changes[0].reason is not None
    # The campaign was left on qualifying; the moment's alert, still pending, was revised with the handoff
    [enrollment] = t.enrollments
    assert (enrollment.state, enrollment.exit_reason) == ("exited", "qualified")
    assert [a.trigger for a in t.alerts] == ["mql"]
    assert "crossed mql" in t.alerts[0].reason
    assert "pricing" in t.alerts[0].reason
    # Every touchpoint is there, newest first, on one page
    assert [tp.id for tp in t.touchpoints] == await _touchpoint_order(db, lead_id)
    assert t.touchpoint_count == len(t.touchpoints)
    # (written in one rescore at one instant, the last written comes first)
    assert [tp.kind for tp in t.touchpoints][:5] == [
        "alert_revised",
        "exited",
        "stage_change",
        "score_change",
        "meeting_booked",
    ]
    assert t.touchpoints[-1].kind == "enrolled"
    assert (t.before, t.older) == (None, None)


async def test_lead_timeline_explains_why_an_event_does_not_count(db: Database, catalog: Catalog) -> None:
    lead_id = await _add_lead(db, "scanned@example.com")
    await _add_event(db, lead_id, "email_click", NOW, url="https://acmeflow.example/x", user_agent="curl/8.5")
    await _add_event(db, lead_id, "webinar_watched", NOW)  # a custom type that scoring.yaml gives no points

    t = await _timeline(db, catalog, lead_id)

    reasons = {i.event.type: i.ignored for i in t.breakdown.items}
    assert reasons["email_click"] is not None
    assert reasons["email_click"].startswith("machine: ")
    assert reasons["webinar_watched"] == "no points for webinar_watched"
    assert t.breakdown.total == 0
    assert all(i.points == 0 for i in t.breakdown.items)


async def test_lead_timeline_pages_through_every_touchpoint_newest_first(
    db: Database, catalog: Catalog
) -> None:
    # Given seven touchpoints, two at the same instant, and one reported late (older time, newer id)
    lead_id = await _add_lead(db, "busy@example.com")
    for minutes in (50, 40, 40, 30, 20, 10):
        await _add_event(
            db, lead_id, "page_visit", NOW - timedelta(minutes=minutes), url="https://a.example/"
        )
    await _add_event(db, lead_id, "email_open", NOW - timedelta(minutes=45))
    expected = await _touchpoint_order(db, lead_id)
    assert len(expected) == 7

    # When it is read three at a time, each page continuing below the last
    pages: list[LeadTimeline] = [await _timeline(db, catalog, lead_id, limit=3)]
    while pages[-1].older is not None:
        pages.append(await _timeline(db, catalog, lead_id, limit=3, before=pages[-1].older))

    # Then the pages hold every touchpoint once, in order, and only the last has no older page
    assert [len(p.touchpoints) for p in pages] == [3, 3, 1]
    assert [tp.id for p in pages for tp in p.touchpoints] == expected
    assert [p.before for p in pages] == [None, expected[2], expected[5]]
    assert all(p.touchpoint_count == 7 for p in pages)


async def test_lead_timeline_has_no_older_page_when_the_last_page_is_full(
    db: Database, catalog: Catalog
) -> None:
    lead_id = await _add_lead(db, "even@example.com")
    for minutes in range(4):
        await _add_event(db, lead_id, "email_open", NOW - timedelta(minutes=minutes))

    first = await _timeline(db, catalog, lead_id, limit=2)
    assert first.older is not None
    second = await _timeline(db, catalog, lead_id, limit=2, before=first.older)
    assert len(second.touchpoints) == 2
    assert second.older is None


async def test_lead_timeline_with_a_cursor_of_another_lead_has_no_touchpoints(
    db: Database, catalog: Catalog
) -> None:
    mine = await _add_lead(db, "mine@example.com")
    other = await _add_lead(db, "other@example.com")
    await _add_event(db, mine, "email_open", NOW - timedelta(minutes=5))
    await _add_event(db, other, "email_open", NOW)
    [others] = await _touchpoint_order(db, other)

    t = await _timeline(db, catalog, mine, before=others)

    assert (t.touchpoints, t.older, t.touchpoint_count) == ((), None, 1)


async def test_lead_timeline_of_an_unknown_lead_is_none(db: Database, catalog: Catalog) -> None:
    assert await lead_timeline(404, db=db, catalog=catalog, now=NOW) is None


@pytest.mark.parametrize("zone", [None, "Mars/Olympus_Mons"])
async def test_lead_timeline_shows_utc_when_the_lead_has_no_usable_zone(
    db: Database, catalog: Catalog, zone: str | None
) -> None:
    lead_id = await _add_lead(db, "nozone@example.com", timezone="")
    if zone is not None:  # an import refuses an unknown zone; an older row may still hold one
        async with db.transaction() as conn:
            await conn.execute(leads.update().where(leads.c.id == lead_id).values(timezone=zone))
    t = await _timeline(db, catalog, lead_id)
    assert t.zone == "UTC"
    assert t.owner is None


async def test_lead_timeline_refuses_an_empty_page(db: Database, catalog: Catalog) -> None:
    lead_id = await _add_lead(db, "x@example.com")
    with pytest.raises(ValueError, match="limit"):
        await lead_timeline(lead_id, db=db, catalog=catalog, now=NOW, limit=0)
