"""Every report figure reconciles with the log: seeded random histories made by the real flows (import,
enroll, dispatch and deliver with bounces, recorded events incl. machine ones, unsubscribes, rescores), then
each figure recomputed here from the raw rows and compared exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.events import InboundEvent
from nurture.db.engine import Database
from nurture.db.queries.report import GroupBy, Scope
from nurture.db.queries.tables import deliveries, enrollments, events, leads, touchpoints
from nurture.errors import InputError, PermanentSendError, TransientSendError
from nurture.flows.deliver import Mailer, deliver
from nurture.flows.engage import record_events, unsubscribe
from nurture.flows.escalate import rescore
from nurture.flows.ingest import import_leads
from nurture.flows.report import Report, build_report
from nurture.flows.tick import dispatch, enroll
from tests.fakes import RecordingTransport

START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday, 10:00 in Taipei
RANK = {"mql": 1, "sql": 2, "opportunity": 3, "customer": 4}
FUNNEL = ("lead", "mql", "sql", "opportunity", "customer")
TOUCHES = ("email_sent", "task_created")


async def _history(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport, seed: int
) -> None:
    """30 leads through three weeks of the shipped campaigns, with random engagement."""
    rnd = random.Random(seed)
    rows = []
    for i in range(30):
        row: dict[str, str | None] = {"email": f"lead{i}@example.com", "timezone": "Asia/Taipei"}
        row["grade"] = rnd.choice(["nurturable"] * 5 + ["intent"])
        row["stage"] = "lead" if row["grade"] == "nurturable" else rnd.choice(["mql", "sql", "customer"])
        row["source"] = rnd.choice(["webinar", "google", None])
        row["utm_source"] = rnd.choice(["linkedin", None])
        row["owner"] = rnd.choice(["lin.chen@acmeflow.example", None])
        rows.append(row)
    for day in range(22):
        now = START + timedelta(days=day, minutes=rnd.randint(0, 50))
        if day < 4:  # leads arrive over a few days, so days-to-MQL differ
            await import_leads(db, rows[day::4], now=now - timedelta(hours=rnd.randint(1, 9)))
        async with db.transaction() as conn:
            lead_ids = sorted(r.id for r in await conn.execute(select(leads.c.id)))
        await enroll(db, catalog, now)
        claimed = (
            await dispatch(db, now, lease=timedelta(minutes=10), limit=1000, stale_after=timedelta(minutes=5))
        ).claimed
        sent: list[tuple[int, int]] = []
        for delivery_id in claimed:
            roll = rnd.random()
            if roll < 0.08:
                transport.fail_next(PermanentSendError("SMTP 550: 5.1.1 no such user"))
            elif roll < 0.12:
                transport.fail_next(TransientSendError("SMTP 421: try later"))
            await deliver(delivery_id, db=db, mailer=mailer, now=now)
        async with db.transaction() as conn:
            sent = [
                (r.lead_id, r.id)
                for r in await conn.execute(
                    select(deliveries.c.lead_id, deliveries.c.id).where(
                        deliveries.c.status == "sent", deliveries.c.sent_at == now
                    )
                )
            ]
        booked = [lead_id for lead_id in lead_ids if rnd.random() < 0.04]
        await _engage(db, catalog, rnd, sent, booked, now + timedelta(hours=2))


async def _engage(
    db: Database,
    catalog: Catalog,
    rnd: random.Random,
    sent: list[tuple[int, int]],
    booked: list[int],
    at: datetime,
) -> None:
    inbound: list[InboundEvent] = []
    unsubscribing: list[tuple[int, int]] = []
    for lead_id, delivery_id in sent:
        for kind, chance in (("email_open", 0.6), ("email_click", 0.3)):
            for _ in range(rnd.choice([1, 1, 2])):
                if rnd.random() < chance:
                    machine = rnd.random() < 0.3
                    props = {"machine": True} if machine else {}
                    inbound.append(InboundEvent(lead_id, kind, at, delivery_id=delivery_id, properties=props))
        if rnd.random() < 0.04:
            unsubscribing.append((lead_id, delivery_id))
    inbound += [InboundEvent(lead_id, "meeting_booked", at) for lead_id in booked]
    await record_events(db, inbound, now=at)
    for lead_id, delivery_id in unsubscribing:
        await unsubscribe(db, lead_id=lead_id, delivery_id=delivery_id, now=at)
    for lead_id in sorted({e.lead_id for e in inbound}):
        await rescore(lead_id, db=db, catalog=catalog, now=at + timedelta(minutes=1), send_alerts=False)


@dataclass
class Log:
    leads: list[dict[str, Any]]
    touchpoints: list[dict[str, Any]]
    events: list[dict[str, Any]]
    deliveries: dict[int, dict[str, Any]]
    enrollments: list[dict[str, Any]]


async def _log(db: Database) -> Log:
    async with db.transaction() as conn:

        async def rows(table: Any) -> list[dict[str, Any]]:
            return [dict(r._mapping) for r in await conn.execute(select(table))]

        return Log(
            await rows(leads),
            sorted(await rows(touchpoints), key=lambda t: t["id"]),
            await rows(events),
            {d["id"]: d for d in await rows(deliveries)},
            await rows(enrollments),
        )


def _p90(values: list[float]) -> float | None:
    return sorted(values)[math.ceil(0.9 * len(values)) - 1] if values else None


Row = dict[str, Any]
StepKey = tuple[str, str | None]


def _expected(log: Log, scope: Scope, by: GroupBy) -> dict[str, Any]:
    """Every figure of the report, recomputed from the raw rows by the definitions in the README."""
    enrolled: dict[int, set[str]] = defaultdict(set)
    for e in log.enrollments:
        enrolled[e["lead_id"]].add(e["campaign_id"])
    in_scope = {
        lead["id"]: lead
        for lead in log.leads
        if (scope.since is None or lead["created_at"] >= scope.since)
        and (scope.campaign_id is None or scope.campaign_id in enrolled[lead["id"]])
    }
    tps = [t for t in log.touchpoints if t["lead_id"] in in_scope]
    reached, qualified = _reach(in_scope, tps)

    def funnel(ids: set[int]) -> list[tuple[str, int]]:
        return [(stage, sum(1 for i in ids if reached[i] >= n)) for n, stage in enumerate(FUNNEL)]

    def spreads(ids: set[int]) -> tuple[Any, ...]:
        days = [qualified[i][0] for i in ids if i in qualified]
        touches = [float(qualified[i][1]) for i in ids if i in qualified]
        return (
            len(days),
            statistics.median(days) if days else None,
            _p90(days),
            statistics.median(touches) if touches else None,
            _p90(touches),
        )

    members: dict[str, set[int]] = defaultdict(set)
    for lead_id, lead in in_scope.items():
        for key in _groups(lead, by, enrolled[lead_id], tps):
            members[key].add(lead_id)
    return {
        "funnel": funnel(set(in_scope)),
        "spreads": spreads(set(in_scope)),
        "steps": _steps(log, scope, in_scope, tps, qualified),
        "groups": {key: (funnel(ids), spreads(ids)) for key, ids in members.items()},
    }


def _reach(in_scope: dict[int, Row], tps: list[Row]) -> tuple[dict[int, int], dict[int, tuple[Any, ...]]]:
    """Each lead's furthest stage rank; and for those that crossed MQL: days, touches, campaign, step."""
    reached, qualified = {}, {}
    for lead_id, lead in in_scope.items():
        mine = [t for t in tps if t["lead_id"] == lead_id]
        changes = [t for t in mine if t["kind"] == "stage_change"]
        reached[lead_id] = max(
            [RANK.get(lead["stage"], 0)] + [RANK.get(t["detail"]["after"], 0) for t in changes]
        )
        crossings = [t["occurred_at"] for t in changes if RANK.get(t["detail"]["after"], 0) >= 1]
        if not crossings:
            continue
        at = min(crossings)
        touches = [t for t in mine if t["kind"] in TOUCHES and t["occurred_at"] <= at]
        exited = [
            t
            for t in mine
            if t["kind"] == "exited" and t["occurred_at"] == at and t["detail"].get("reason") == "qualified"
        ]
        campaign = exited[0]["campaign_id"] if exited else None
        last = [t for t in touches if t["campaign_id"] == campaign]
        step = max(last, key=lambda t: (t["occurred_at"], t["id"]))["step_id"] if last else None
        days = (at - lead["created_at"]).total_seconds() / 86_400
        qualified[lead_id] = (days, len(touches), campaign, step)
    return reached, qualified


def _is_bounce(t: Row) -> bool:
    error = t["detail"].get("error") or ""
    return bool(t["kind"] == "email_failed" and error.startswith(("SMTP 5", "address cannot be sent")))


def _engaged(
    log: Log, scope: Scope, in_scope: dict[int, Row]
) -> tuple[dict[StepKey, set[int]], dict[StepKey, set[int]]]:
    """Leads with a human open, and a human click, per campaign step and per campaign."""
    opened: dict[StepKey, set[int]] = defaultdict(set)
    clicked: dict[StepKey, set[int]] = defaultdict(set)
    for e in log.events:
        delivery = log.deliveries.get(e["delivery_id"])
        if delivery is None or e["lead_id"] not in in_scope or e["properties"].get("machine"):
            continue
        if scope.campaign_id not in (None, delivery["campaign_id"]):
            continue
        for key in ((delivery["campaign_id"], delivery["step_id"]), (delivery["campaign_id"], None)):
            if e["type"] == "email_open":
                opened[key].add(e["lead_id"])
            elif e["type"] == "email_click":
                clicked[key].add(e["lead_id"])
    return opened, clicked


def _steps(
    log: Log, scope: Scope, in_scope: dict[int, Row], tps: list[Row], qualified: dict[int, tuple[Any, ...]]
) -> dict[StepKey, tuple[int, ...]]:
    sent: dict[StepKey, int] = defaultdict(int)
    bounced: dict[StepKey, int] = defaultdict(int)
    unsubscribed: dict[StepKey, set[int]] = defaultdict(set)
    wanted = [
        t
        for t in tps
        if t["kind"] in ("email_sent", "email_failed", "unsubscribed")
        and t["campaign_id"] is not None
        and scope.campaign_id in (None, t["campaign_id"])
    ]
    for t in wanted:
        for key in ((t["campaign_id"], t["step_id"]), (t["campaign_id"], None)):
            sent[key] += t["kind"] == "email_sent" or _is_bounce(t)
            bounced[key] += _is_bounce(t)
            if t["kind"] == "unsubscribed":
                unsubscribed[key].add(t["lead_id"])
    opened, clicked = _engaged(log, scope, in_scope)
    by_step: dict[StepKey, int] = defaultdict(int)
    for _, _, campaign, step in qualified.values():
        if campaign is not None:
            by_step[campaign, None] += 1
            if step is not None:
                by_step[campaign, step] += 1
    keys = set(sent) | set(opened) | set(clicked) | set(by_step)
    return {
        k: (sent[k], bounced[k], len(opened[k]), len(clicked[k]), len(unsubscribed[k]), by_step[k])
        for k in keys
    }


def _groups(lead: dict[str, Any], by: GroupBy, campaigns: set[str], tps: list[dict[str, Any]]) -> set[str]:
    if by is GroupBy.source:
        return {lead["tags"].get("source") or lead["tags"].get("utm_source") or "(none)"}
    if by is GroupBy.owner:
        return {lead["owner"] or "(none)"}
    if by is GroupBy.campaign:
        return campaigns
    return {
        f"{t['campaign_id']}/{t['step_id']}"
        for t in tps
        if t["lead_id"] == lead["id"] and t["kind"] in TOUCHES and t["step_id"] is not None
    }


def _actual(report: Report) -> dict[str, Any]:
    def spreads(days: Any, touches: Any) -> tuple[Any, ...]:
        return (days.count, days.median, days.p90, touches.median, touches.p90)

    return {
        "funnel": [(s.stage, s.leads) for s in report.funnel],
        "spreads": spreads(report.days_to_mql, report.touches_to_mql),
        "steps": {
            (f.campaign_id, f.step_id): (
                f.sent,
                f.bounced,
                f.unique_opens,
                f.unique_clicks,
                f.unsubscribes,
                f.qualified,
            )
            for f in (*report.steps, *report.campaigns)
        },
        "groups": {
            g.key: ([(s.stage, s.leads) for s in g.funnel], spreads(g.days_to_mql, g.touches_to_mql))
            for g in report.groups
        },
    }


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_report_figure_reconciles_with_the_touchpoint_and_event_log(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport, seed: int
) -> None:
    # Given three weeks of history made by the real flows
    await _history(db, catalog, mailer, transport, seed)
    log = await _log(db)
    assert any(t["kind"] == "stage_change" for t in log.touchpoints), "the history must qualify someone"
    assert any(e["properties"].get("machine") for e in log.events)
    scopes = [Scope(), Scope(since=START + timedelta(days=2)), Scope(campaign_id="saas-nurture")]
    for scope in scopes:
        for by in GroupBy:
            # When the report is built, Then each figure equals the one recomputed from the raw rows
            report = await build_report(db, scope=scope, by=by)
            actual, expected = _actual(report), _expected(log, scope, by)
            for section in ("funnel", "spreads", "steps", "groups"):
                assert actual[section] == expected[section], (scope, by, section)


async def test_conversion_is_the_share_of_the_previous_stage(db: Database) -> None:
    rows = [
        {"email": f"l{i}@example.com", "stage": stage}
        for i, stage in enumerate(["lead", "lead", "lead", "mql", "sql", "customer", "suspect", "visitor"])
    ]
    await import_leads(db, rows, now=START)
    report = await build_report(db, scope=Scope())
    assert [(s.stage, s.leads, s.conversion) for s in report.funnel] == [
        ("lead", 8, None),
        ("mql", 3, 3 / 8),
        ("sql", 2, 2 / 3),
        ("opportunity", 1, 1 / 2),
        ("customer", 1, 1.0),
    ]
    assert report.days_to_mql.count == 0  # imported at those stages: never crossed on the timeline
    assert report.days_to_mql.median is None


async def test_an_empty_database_gives_an_empty_report(db: Database) -> None:
    # a campaign in the files that enrolled nobody yet
    report = await build_report(db, scope=Scope(campaign_id="quiet"), by=GroupBy.owner, campaigns=["quiet"])
    assert [s.leads for s in report.funnel] == [0, 0, 0, 0, 0]
    assert report.funnel[1].conversion is None
    assert report.steps == ()
    assert report.campaigns == ()
    assert report.groups == ()


async def test_a_campaign_filter_naming_no_campaign_is_refused_with_the_nearest_names(db: Database) -> None:
    # Given one campaign known from its enrollments and two from the files
    await import_leads(db, [{"email": "a@example.com"}], now=START)
    async with db.transaction() as conn:
        [lead_id] = (await conn.execute(select(leads.c.id))).scalars()
        await conn.execute(
            enrollments.insert().values(
                lead_id=lead_id,
                campaign_id="retired-nurture",
                campaign_hash="h",
                state="exited",
                enrolled_at=START,
            )
        )
    files = ["saas-nurture", "webinar-followup"]
    # When a report names a campaign that none of them is, Then it is refused, naming the nearest
    with pytest.raises(InputError, match=r"--campaign: no campaign 'saas-nurtur'; did you mean saas-nurture"):
        await build_report(db, scope=Scope(campaign_id="saas-nurtur"), campaigns=files)
    # ... or listing them all when none is near
    with pytest.raises(InputError, match=r"campaigns: retired-nurture, saas-nurture, webinar-followup$"):
        await build_report(db, scope=Scope(campaign_id="nope"), campaigns=files)
    # And a campaign only the database still knows is reported on
    report = await build_report(db, scope=Scope(campaign_id="retired-nurture"), campaigns=files)
    assert report.funnel[0].leads == 1
