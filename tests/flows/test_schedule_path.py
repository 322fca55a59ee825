"""The schedule path on a real database: recipient domains, per-domain caps (also under concurrent claims),
paused domains, late touches, and set-based enrollment."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.ratelimit import parse_rate_limits
from nurture.core.schedule import plan_deliveries
from nurture.db.engine import Database
from nurture.db.queries.claims import claim_due_deliveries
from nurture.db.queries.tables import deliveries, enrollments, leads, touchpoints
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll

MONDAY_TAIPEI_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
LEASE = timedelta(minutes=10)
STALE = timedelta(minutes=5)
DOMAINS = {"gmail.com": 12, "Outlook.com": 6, "example.org": 5}


def _leads() -> list[dict[str, str]]:
    return [
        {"email": f"lead{i}@{domain}", "grade": "nurturable", "timezone": "Asia/Taipei"}
        for domain, count in DOMAINS.items()
        for i in range(count)
    ]


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _enrolled(db: Database, catalog: Catalog) -> None:
    await import_leads(db, _leads(), now=MONDAY_TAIPEI_10)
    assert await enroll(db, catalog, MONDAY_TAIPEI_10) == sum(DOMAINS.values())


async def _domains_of(db: Database, ids: list[int]) -> dict[str, int]:
    rows = await _rows(db, select(deliveries.c.recipient_domain).where(deliveries.c.id.in_(ids)))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["recipient_domain"]] = counts.get(row["recipient_domain"], 0) + 1
    return counts


async def test_planned_deliveries_carry_the_lower_case_recipient_domain(
    db: Database, catalog: Catalog
) -> None:
    await _enrolled(db, catalog)
    joined = leads.join(deliveries, deliveries.c.lead_id == leads.c.id)
    rows = await _rows(db, select(leads.c.email, deliveries.c.recipient_domain).select_from(joined))
    assert rows
    assert all(r["recipient_domain"] == r["email"].rpartition("@")[2].lower() for r in rows)
    assert {r["recipient_domain"] for r in rows} == {"gmail.com", "outlook.com", "example.org"}


async def test_a_capped_domain_gets_at_most_its_window_and_others_are_not_held_back(
    db: Database, catalog: Catalog
) -> None:
    await _enrolled(db, catalog)
    limits = parse_rate_limits("gmail.com=5/h, outlook.com=2/h")
    first = await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=100, stale_after=STALE, limits=limits)
    assert await _domains_of(db, first.claimed) == {"gmail.com": 5, "outlook.com": 2, "example.org": 5}
    # The same window, even once the claims lapsed: nothing more for the capped domains.
    later = MONDAY_TAIPEI_10 + timedelta(minutes=55)
    again = await dispatch(db, later, lease=LEASE, limit=100, stale_after=STALE, limits=limits)
    assert set(await _domains_of(db, again.claimed)) <= {"example.org"}
    # The next hour opens a new window.
    nxt = MONDAY_TAIPEI_10 + timedelta(hours=1, minutes=1)
    third = await dispatch(db, nxt, lease=LEASE, limit=100, stale_after=STALE, limits=limits)
    assert (await _domains_of(db, third.claimed)).get("gmail.com") == 5


async def test_the_batch_limit_does_not_use_up_a_domains_window(db: Database, catalog: Catalog) -> None:
    await _enrolled(db, catalog)
    limits = parse_rate_limits("*=100/h")
    first = await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=4, stale_after=STALE, limits=limits)
    second = await dispatch(db, MONDAY_TAIPEI_10, lease=LEASE, limit=100, stale_after=STALE, limits=limits)
    assert len(first.claimed) == 4
    assert len(second.claimed) == sum(DOMAINS.values()) - 4


async def test_paused_domains_are_left_unclaimed(db: Database, catalog: Catalog) -> None:
    await _enrolled(db, catalog)
    result = await dispatch(
        db, MONDAY_TAIPEI_10, lease=LEASE, limit=100, stale_after=STALE, paused={"gmail.com"}
    )
    assert await _domains_of(db, result.claimed) == {"outlook.com": 6, "example.org": 5}


async def test_concurrent_claims_share_one_cap_and_never_overlap(db: Database, catalog: Catalog) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite serialises writers; the concurrency under test is PostgreSQL's")
    await _enrolled(db, catalog)
    limits = parse_rate_limits("gmail.com=7/h, *=3/h")

    async def claim(limit: int) -> list[int]:
        async with db.transaction() as conn:
            return await claim_due_deliveries(
                conn, now=MONDAY_TAIPEI_10, lease=LEASE, limit=limit, limits=limits
            )

    results = await asyncio.gather(*(claim(limit) for limit in (2, 3, 4, 5, 6, 50)))
    # SKIP LOCKED lets a claim pass over rows another one holds, so a contended pass may take fewer; one
    # more pass in the same window tops every domain up to its cap and never past it.
    results.append(await claim(100))
    everything = [i for r in results for i in r]
    assert len(everything) == len(set(everything))
    assert await _domains_of(db, everything) == {"gmail.com": 7, "outlook.com": 3, "example.org": 3}


async def test_touches_later_than_the_campaign_allows_are_skipped_with_a_touchpoint(
    db: Database, catalog: Catalog
) -> None:
    await _enrolled(db, catalog)
    # The scheduler was down since Monday: day 0 fell due two days ago, day 2 five hours ago.
    now = MONDAY_TAIPEI_10 + timedelta(days=2, hours=5)
    late_after = {"saas-nurture": timedelta(days=1)}
    result = await dispatch(db, now, lease=LEASE, limit=1000, stale_after=STALE, late_after=late_after)
    skipped = await _rows(db, select(deliveries).where(deliveries.c.id.in_(result.skipped_late)))
    assert skipped
    assert all(d["status"] == "skipped" and d["last_error"] == "late" for d in skipped)
    assert all(d["due_at"] < now - timedelta(days=1) for d in skipped)
    claimed = await _rows(db, select(deliveries).where(deliveries.c.id.in_(result.claimed)))
    assert claimed
    assert all(now - timedelta(days=1) <= d["due_at"] <= now for d in claimed)
    marks = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_skipped"))
    assert sorted(m["delivery_id"] for m in marks) == sorted(result.skipped_late)
    assert all(m["detail"]["reason"] == "late" for m in marks)


async def test_an_enrollment_whose_remaining_touches_are_all_late_completes(
    db: Database, catalog: Catalog
) -> None:
    await _enrolled(db, catalog)
    now = MONDAY_TAIPEI_10 + timedelta(days=60)
    result = await dispatch(
        db, now, lease=LEASE, limit=1000, stale_after=STALE, late_after={"saas-nurture": timedelta(hours=1)}
    )
    assert result.claimed == []
    states = await _rows(db, select(enrollments.c.state, leads.c.enroll_pending).join(leads))
    assert states
    assert all(s["state"] == "completed" and s["enroll_pending"] for s in states)


async def test_enrolling_twice_at_once_enrolls_each_lead_once(db: Database, catalog: Catalog) -> None:
    await import_leads(db, _leads(), now=MONDAY_TAIPEI_10)
    counts = await asyncio.gather(
        enroll(db, catalog, MONDAY_TAIPEI_10, batch_size=7),
        enroll(db, catalog, MONDAY_TAIPEI_10, batch_size=5),
    )
    assert sum(counts) == sum(DOMAINS.values())
    rows = await _rows(db, select(deliveries.c.enrollment_id, deliveries.c.step_id))
    assert len(rows) == len({(r["enrollment_id"], r["step_id"]) for r in rows})


async def test_two_imports_of_the_same_leads_at_once_give_one_lead_each(db: Database) -> None:
    rows = [{"email": f"Same{i}@Example.com", "grade": "nurturable", "utm_source": "a"} for i in range(30)]
    other = [{"email": f"same{i}@example.com", "utm_medium": "b"} for i in range(30)]
    garbage = [{"email": "not an address"}, {"email": ""}, {"grade": "nurturable"}]
    first, second = await asyncio.gather(
        import_leads(db, rows + garbage, now=MONDAY_TAIPEI_10, batch_size=7),
        import_leads(db, garbage + other, now=MONDAY_TAIPEI_10, batch_size=4),
    )
    assert first.accepted + second.accepted == 60
    assert len(first.rejected) == len(second.rejected) == 3
    stored = await _rows(db, select(leads.c.email, leads.c.tags))
    assert len(stored) == 30
    assert all(s["tags"] == {"utm_source": "a", "utm_medium": "b"} for s in stored)


async def test_a_restarted_scheduler_catches_up_once_within_the_caps(db: Database, catalog: Catalog) -> None:
    await _enrolled(db, catalog)
    # Stopped since Monday morning; restarted on Wednesday afternoon with caps and a one-day lateness rule.
    now = MONDAY_TAIPEI_10 + timedelta(days=2, hours=5)
    limits = parse_rate_limits("gmail.com=4/h, *=0")
    rules = {"saas-nurture": timedelta(days=1)}
    workers_down = timedelta(hours=3)  # claims outlive the test, as if no worker had picked them up yet
    first = await dispatch(
        db, now, lease=workers_down, limit=1000, stale_after=STALE, limits=limits, late_after=rules
    )
    assert len(first.skipped_late) == sum(DOMAINS.values())  # every day-0 touch, once
    assert await _domains_of(db, first.claimed) == {"gmail.com": 4, "outlook.com": 6, "example.org": 5}
    # The next pass in the same hour finds nothing new; the gmail backlog drains hour by hour.
    again = await dispatch(
        db, now, lease=workers_down, limit=1000, stale_after=STALE, limits=limits, late_after=rules
    )
    assert (again.claimed, again.skipped_late) == ([], [])
    later = await dispatch(
        db,
        now + timedelta(hours=1),
        lease=workers_down,
        limit=1000,
        stale_after=STALE,
        limits=limits,
        late_after=rules,
    )
    assert await _domains_of(db, later.claimed) == {"gmail.com": 4}
    assert not set(later.claimed) & set(first.claimed)


def _skipping_holidays(catalog: Catalog) -> Catalog:
    changed = {
        cid: dataclasses.replace(c, send_window=dataclasses.replace(c.send_window, skip_holidays=True))
        for cid, c in catalog.campaigns.items()
    }
    return dataclasses.replace(catalog, campaigns=MappingProxyType(changed))


async def test_a_campaign_that_skips_holidays_plans_no_touch_on_a_public_holiday_of_the_leads_country(
    db: Database, catalog: Catalog
) -> None:
    # Given a Taiwanese lead enrolled on Tuesday 30 December: day 2 of the plan is New Year's Day
    tuesday = datetime(2025, 12, 30, 2, 0, tzinfo=UTC)
    taipei = ZoneInfo("Asia/Taipei")
    lead = {"email": "tw@example.com", "grade": "nurturable", "timezone": "Asia/Taipei", "country": "TW"}
    await import_leads(db, [lead, {**lead, "email": "tw2@example.com"}], now=tuesday)
    holidays_on = _skipping_holidays(catalog)
    assert await enroll(db, holidays_on, tuesday) == 2
    rows = await _rows(db, select(deliveries.c.step_id, deliveries.c.due_at))
    local_days = {r["due_at"].astimezone(taipei).date() for r in rows}
    holidays = holidays_on.days_off(holidays_on.campaigns["saas-nurture"], "TW")
    # Then nothing is planned on a holiday, though the same plan without the rule has a touch on one
    assert not any(day in holidays for day in local_days)
    plain = plan_deliveries(
        catalog.campaigns["saas-nurture"].steps,
        enrolled_at=tuesday,
        window=catalog.campaigns["saas-nurture"].send_window,
        tz=taipei,
    )
    assert any(p.due_at.astimezone(taipei).date() in holidays for p in plain)
