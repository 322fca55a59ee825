"""The 25-day scenario both integration variants run, and the checks made on its outcome.

Simulated time moves from due instant to due instant (and at least every six hours), so every send a
worker makes happens at a time the scheduler would really have dispatched it.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from nurture.catalog import Catalog
from nurture.core.branching import StepEngagement, StepHistory, choose_variant, skip_reason
from nurture.core.campaign import Campaign
from nurture.db.engine import Database
from nurture.db.queries.campaign_language import fetch_step_histories
from nurture.db.queries.leads import suppress_lead
from nurture.db.queries.tables import alerts, deliveries, enrollments, leads, touchpoints
from nurture.flows.ingest import import_leads
from tests.project import PROJECT
from tests.smtp_sink import ReceivedMessage

ROOT = PROJECT  # the tests' own project files (tests/project.py)
LEADS_CSV = ROOT / "examples" / "leads.csv"
START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday
DAYS = 25
MAX_GAP = timedelta(hours=6)
SUPPRESSED = 5  # fitting leads suppressed before the run (earlier unsubscribes)


@dataclass(frozen=True, slots=True)
class Sent:
    email: str
    campaign: str
    step: str
    at: datetime
    message_id: str


async def seed(db: Database) -> set[str]:
    """Import the sample leads and suppress a few that would fit; return the suppressed addresses."""
    with LEADS_CSV.open(newline="", encoding="utf-8") as handle:
        report = await import_leads(db, list(csv.DictReader(handle)), now=START - timedelta(days=1))
    assert report.rejected == []
    async with db.transaction() as conn:
        rows = (
            await conn.execute(
                select(leads.c.id, leads.c.email)
                .where(leads.c.grade == "nurturable")
                .order_by(leads.c.id)
                .limit(SUPPRESSED)
            )
        ).all()
        for row in rows:
            await suppress_lead(conn, row.id, reason="unsubscribed earlier", now=START - timedelta(days=1))
    return {row.email for row in rows}


async def run_days(db: Database, tick: Callable[[datetime], Awaitable[None]]) -> int:
    """Tick from START through DAYS days; return the number of ticks."""
    now, end, ticks = START, START + timedelta(days=DAYS), 0
    while now <= end:
        await tick(now)
        ticks += 1
        async with db.transaction() as conn:
            next_due = (
                await conn.execute(
                    select(func.min(deliveries.c.due_at)).where(deliveries.c.status == "pending")
                )
            ).scalar_one_or_none()
        step = min(next_due, now + MAX_GAP) if next_due and next_due > now else now + MAX_GAP
        now = step
    return ticks


async def wait_until_idle(db: Database, *, timeout_s: float = 60) -> None:
    """Wait until no delivery is claimed or being sent (the worker has drained what it was given)."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        async with db.transaction() as conn:
            busy = (
                await conn.execute(
                    select(func.count())
                    .select_from(deliveries)
                    .where(deliveries.c.status.in_(("claimed", "sending")))
                )
            ).scalar_one()
        if busy == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{busy} deliveries still in flight after {timeout_s} s")
        await asyncio.sleep(0.02)


async def check_outcome(
    db: Database, catalog: Catalog, received: list[ReceivedMessage], suppressed: set[str]
) -> dict[str, int]:
    """Assert the promises of the nurture loop; return a few counts for the test to report."""
    async with db.transaction() as conn:
        people = {r.email: r for r in await conn.execute(select(leads))}
        sent = [
            Sent(r.email, r.campaign_id, r.step_id, r.occurred_at, r.message_id)
            for r in await conn.execute(
                select(
                    leads.c.email,
                    touchpoints.c.campaign_id,
                    touchpoints.c.step_id,
                    touchpoints.c.occurred_at,
                    touchpoints.c.message_id,
                )
                .join(touchpoints, touchpoints.c.lead_id == leads.c.id)
                .where(touchpoints.c.kind == "email_sent")
                .order_by(touchpoints.c.occurred_at, touchpoints.c.id)
            )
        ]
        open_or_lost = (
            await conn.execute(
                select(func.count())
                .select_from(deliveries)
                .where(deliveries.c.status.in_(("claimed", "sending", "unknown", "failed")))
            )
        ).scalar_one()
    assert open_or_lost == 0

    # Campaign emails only: rep task alerts may reach the same server as emails to the reps.
    received = [m for m in received if m["X-Nurture-Campaign"]]
    # Touchpoints equal what the SMTP server accepted: same Message-IDs, each exactly once.
    accepted = Counter(m["Message-ID"] for m in received)
    assert max(accepted.values()) == 1
    assert set(accepted) == {s.message_id for s in sent}
    assert len(sent) == len(received)
    by_id = {m["Message-ID"]: m for m in received}
    for s in sent:
        message = by_id[s.message_id]
        assert message.rcpt_tos == (s.email,)
        assert (message["X-Nurture-Campaign"], message["X-Nurture-Step"]) == (s.campaign, s.step)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    per_lead: dict[str, list[Sent]] = defaultdict(list)
    for s in sent:
        per_lead[s.email].append(s)
    fitting = {e for e, p in people.items() if _fits(p) and e not in suppressed}
    assert fitting, "the sample must contain leads to nurture"
    # Nobody else got anything: not invalid, suppressed, ready, customer or ungraded leads.
    assert set(per_lead) == fitting

    engagement = await _engagement(db)
    tasks = await _task_alerts(db)
    for address in fitting:
        person = people[address]
        got = [(s.campaign, s.step) for s in per_lead[address]]
        assert len(got) == len(set(got)), f"{address} got a step twice: {got}"
        saas, saas_tasks = _expected(catalog.campaigns["saas-nurture"], engagement[person.id], person.score)
        webinar, _ = _expected(catalog.campaigns["webinar-followup"], engagement[person.id], person.score)
        if person.tags.get("source") == "webinar":
            # The webinar follow-up first, in order; then saas-nurture from its first step, in order.
            assert got[: len(webinar)] == [("webinar-followup", s) for s in webinar]
            rest = got[len(webinar) :]
            assert rest
            assert rest == [("saas-nurture", s) for s in saas[: len(rest)]]
            assert tasks[person.id] <= saas_tasks
        else:
            assert got == [("saas-nurture", s) for s in saas]
            # A task step is no email: the lead's rep got one alert for it instead.
            assert tasks[person.id] == saas_tasks, f"{address}: rep tasks {tasks[person.id]}"
        zone = ZoneInfo(people[address].timezone or "Asia/Taipei")
        for s in per_lead[address]:
            local = s.at.astimezone(zone)
            assert local.weekday() < 5, f"{address} mailed on a weekend: {local}"
            assert 9 <= local.hour < 17, f"{address} mailed outside 09:00-17:00: {local}"
    await _check_variants(db, catalog)
    return {"leads": len(people), "fitting": len(fitting), "emails": len(sent)}


async def _check_variants(db: Database, catalog: Catalog) -> None:
    """Each sent delivery of an A/B step records the arm its lead is assigned, and every arm is used."""
    for campaign in catalog.campaigns.values():
        for step in (s for s in campaign.steps if s.variants):
            async with db.transaction() as conn:
                rows = (
                    await conn.execute(
                        select(deliveries.c.lead_id, deliveries.c.variant).where(
                            deliveries.c.campaign_id == campaign.id,
                            deliveries.c.step_id == step.id,
                            deliveries.c.status == "sent",
                        )
                    )
                ).all()
            for row in rows:
                chosen = choose_variant(step, row.lead_id)
                assert chosen is not None
                assert row.variant == chosen.id, (step.id, row)
            if len(rows) >= 20:
                assert {row.variant for row in rows} == {v.id for v in step.variants}


def _expected(campaign: Campaign, history: StepHistory, score: int) -> tuple[list[str], set[str]]:
    """The email steps and the rep task steps of `campaign` a lead with this engagement gets, in order."""
    emails = [s.id for s in campaign.steps if s.task is None and skip_reason(s, history, score) is None]
    tasks = {f"task:{s.id}" for s in campaign.steps if s.task and skip_reason(s, history, score) is None}
    return emails, tasks


async def _engagement(db: Database) -> dict[int, dict[str, StepEngagement]]:
    """What each lead did with each sent step (the run records no opens or clicks unless a test adds them)."""
    found: dict[int, dict[str, StepEngagement]] = defaultdict(dict)
    async with db.transaction() as conn:
        histories = await fetch_step_histories(
            conn, [r.id for r in await conn.execute(select(enrollments.c.id))]
        )
        owners = {
            r.id: r.lead_id for r in await conn.execute(select(enrollments.c.id, enrollments.c.lead_id))
        }
    for enrollment_id, history in histories.items():
        found[owners[enrollment_id]].update(history)
    return found


async def _task_alerts(db: Database) -> dict[int, set[str]]:
    found: dict[int, set[str]] = defaultdict(set)
    async with db.transaction() as conn:
        for row in await conn.execute(
            select(alerts.c.lead_id, alerts.c.trigger).where(alerts.c.trigger.like("task:%"))
        ):
            assert row.trigger not in found[row.lead_id], f"lead {row.lead_id} got {row.trigger} twice"
            found[row.lead_id].add(row.trigger)
    return found


def _fits(lead: Any) -> bool:
    return lead.grade == "nurturable" and lead.stage in ("lead", "suspect") and lead.score <= 49
