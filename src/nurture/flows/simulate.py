"""Play a campaign over a virtual clock: the real flows on a throwaway SQLite database, nothing sent.

`simulate` imports the leads, then steps a frozen "now" from one instant that matters to the next: the
enrolment, each delivery's due time, each scripted engagement event. At each instant it runs what the
service runs — the scheduler's `enroll` and `dispatch`, `deliver` (into a recording transport), the tracking
web's `record_event`/`unsubscribe`, the worker's `rescore` and `deliver_alert` (into a recording sink) — so
the timeline it reports is what the service will do, send windows, branches, variants and exits included.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from nurture.catalog import Catalog
from nurture.core.campaign import Campaign
from nurture.core.context import SAMPLE_LEAD
from nurture.core.engagement_script import EngagementScript, ScriptedAction
from nurture.core.events import InboundEvent
from nurture.core.schedule import due_at, lead_zone
from nurture.db.engine import Database
from nurture.db.queries.simulation import (
    AlertRow,
    DeliveryRow,
    TouchpointRow,
    create_schema,
    fetch_alert_rows,
    fetch_delivery_rows,
    fetch_enrollment_states,
    fetch_lead_states,
    fetch_touchpoint_rows,
    next_pending_due_at,
)
from nurture.errors import ConfigError, ConfigErrors, NurtureError
from nurture.flows.alert import deliver_alert
from nurture.flows.deliver import Mailer, deliver_batch
from nurture.flows.engage import record_event, unsubscribe
from nurture.flows.escalate import rescore
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.ports import AlertMessage, OutgoingEmail, SendReceipt

SIMULATION_KEY: Final = b"simulation-only-key-never-used-to-send"
MAX_INSTANTS: Final = 20_000  # a guard against a campaign that never settles
_LEASE: Final = timedelta(minutes=10)
_READER_AGENT: Final = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (simulated reader)"
# Touchpoints shown as they are; sends come from the deliveries table, which also knows skips and tasks.
_SEND_KINDS: Final = frozenset(
    {
        "email_sent",
        "email_failed",
        "email_skipped",
        "email_unknown",
        "email_shadowed",
        "task_created",
        "rep_task",
        "step_skipped",
    }
)


class RecordingTransport:
    """A `Transport` that keeps every message instead of sending it."""

    def __init__(self) -> None:
        self.messages: list[OutgoingEmail] = []

    async def send(self, message: OutgoingEmail) -> SendReceipt:
        self.messages.append(message)
        return SendReceipt(message_id=message.message_id, response="250 simulated, not sent")

    async def aclose(self) -> None:
        return None


class RecordingSink:
    """An `AlertSink` that keeps every alert instead of notifying anyone."""

    name = "simulation"

    def __init__(self) -> None:
        self.alerts: list[AlertMessage] = []

    async def send(self, alert: AlertMessage, *, notify_urls: Sequence[str]) -> None:
        del notify_urls
        self.alerts.append(alert)


@dataclass(frozen=True, slots=True)
class TimelineItem:
    at: datetime  # UTC
    local: datetime  # in the lead's zone
    day: int  # local calendar days since the simulation started
    kind: str  # sent, skipped, cancelled, task, failed, event, score, stage, alert, exited, ...
    step: str | None = None
    detail: str = ""
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class SimulatedAlert:
    at: datetime
    day: int
    trigger: str
    reason: str
    score_before: int
    score_after: int
    owner: str | None
    title: str


@dataclass(frozen=True, slots=True)
class LeadRun:
    """What happened to one lead."""

    email: str
    zone: str
    enrolled: bool
    stage: str
    score: int
    state: str | None  # the enrolment's end state: active, completed, exited; None when not enrolled
    exit_reason: str | None
    items: tuple[TimelineItem, ...]
    alerts: tuple[SimulatedAlert, ...]
    owner: str | None = None

    @property
    def sends(self) -> tuple[TimelineItem, ...]:
        return tuple(item for item in self.items if item.kind == "sent")


@dataclass(frozen=True, slots=True)
class Simulation:
    campaign_id: str
    start: datetime
    end: datetime
    leads: tuple[LeadRun, ...]
    sample: str | None = None  # the sample lead's email, when no leads were given
    messages: int = 0


@dataclass(slots=True)
class _Pending:
    """A scripted action waiting for its time (or, for an email action, for its email to be sent)."""

    action: ScriptedAction
    lead_id: int
    at: datetime | None = None
    delivery_id: int | None = None
    done: bool = False
    notes: list[str] = field(default_factory=list)


def sample_lead_row(campaign: Campaign) -> dict[str, str]:
    """The sample lead (Mei Lin, Asia/Taipei), adjusted so that it fits the campaign's audience."""
    audience = campaign.audience
    lead = SAMPLE_LEAD
    row = {
        "email": lead.email,
        "first_name": lead.first_name or "",
        "last_name": lead.last_name or "",
        "company": lead.company or "",
        "title": lead.title or "",
        "industry": lead.industry or "",
        "company_size": lead.company_size or "",
        "country": lead.country or "",
        "timezone": lead.timezone or "",
        "grade": "nurturable" if "nurturable" in audience.grades else min(audience.grades, default=""),
        "stage": "lead" if "lead" in audience.stages else min(audience.stages, default="lead"),
    }
    if audience.countries and row["country"].upper() not in audience.countries:
        row["country"] = min(audience.countries)
    tags = dict(lead.tags)
    if audience.sources:
        tags["source"] = min(audience.sources)
    for key, allowed in audience.tags.items():
        tags[key] = min(allowed)
    return row | tags


def check_script(script: EngagementScript, campaign: Campaign, emails: Iterable[str]) -> None:
    """Every email action names a step of the campaign, every lead prefix a lead being simulated.

    Raises:
        ConfigErrors: one error per bad line, as `script:line: message`.
    """
    known = set(emails)
    steps = [s.id for s in campaign.steps]
    errors: list[ConfigError] = []
    for action in script.actions:
        if action.step is not None and action.step not in steps:
            message = f"campaign {campaign.id!r} has no step {action.step!r} (steps: {', '.join(steps)})"
            errors.append(ConfigError(message, source=script.source, line=action.line))
        if action.lead is not None and action.lead not in known:
            message = f"{action.lead} is not one of the simulated leads"
            errors.append(ConfigError(message, source=script.source, line=action.line))
    if errors:
        raise ConfigErrors(errors)


async def simulate(
    campaign: Campaign,
    catalog: Catalog,
    *,
    leads: Sequence[Mapping[str, str | None]],
    start: datetime,
    script: EngagementScript,
    mailer: Mailer,
    work_dir: Path | None = None,
) -> Simulation:
    """Run `campaign` for `leads` from `start` with the scripted engagement; nothing leaves the process.

    `mailer` is the service's own (same base URL, postal address, frequency cap, ...): the simulation swaps
    in its recording transport and signing key. Only this campaign is in play (a lead that fits it enrolls
    in it, whatever other campaigns exist).

    Raises:
        NurtureError: a lead row is invalid; ConfigErrors: the script names an unknown step or lead.
    """
    with tempfile.TemporaryDirectory(prefix="nurture-simulation-", dir=work_dir) as folder:
        db = Database(f"sqlite:///{Path(folder) / 'simulation.db'}")
        try:
            await create_schema(db)
            return await _run(db, campaign, catalog, leads, start, script, mailer)
        finally:
            await db.aclose()


async def _run(
    db: Database,
    campaign: Campaign,
    catalog: Catalog,
    rows: Sequence[Mapping[str, str | None]],
    start: datetime,
    script: EngagementScript,
    service_mailer: Mailer,
) -> Simulation:
    start = start.astimezone(UTC)
    report = await import_leads(db, rows, now=start)
    if report.rejected:
        bad = report.rejected[0]
        raise NurtureError(f"lead row {bad.row}: {bad.reason}")
    async with db.transaction() as conn:
        states = await fetch_lead_states(conn)
    check_script(script, campaign, (s.email for s in states))
    catalog = replace(catalog, campaigns={campaign.id: campaign})
    transport, sink = RecordingTransport(), RecordingSink()
    mailer = replace(
        service_mailer,
        catalog=catalog,
        renderer=catalog.renderer(),
        transport=transport,
        secret_key=SIMULATION_KEY,
        dry_run=False,  # the recording transport is the shadow: deliveries read as sent
    )
    base_url = mailer.base_url
    zones = {s.id: lead_zone(s.timezone, campaign.send_window) for s in states}
    pending = [
        _Pending(action, s.id, at=_dated_instant(action, start, zones[s.id]))
        for s in states
        for action in script.for_lead(s.email)
    ]
    now = start
    for _ in range(MAX_INSTANTS):
        await enroll(db, catalog, now)
        claimed = await dispatch(db, now, lease=_LEASE, limit=100_000, stale_after=timedelta(hours=1))
        if claimed.claimed:
            batch = await deliver_batch(claimed.claimed, db=db, mailer=mailer, now=now)
            for alert_id in batch.alert_ids:  # rep tasks, handed on as the worker does
                await deliver_alert(
                    alert_id, db=db, sinks=(sink,), catalog=catalog, base_url=base_url, now=now
                )
        await _attach_email_actions(db, pending)
        due_now = [p for p in pending if not p.done and p.at is not None and p.at <= now]
        for item in sorted(due_now, key=_when):
            await _perform(db, catalog, item, sink, base_url, now)
        following = await _next_instant(db, pending)
        if following is None:
            break
        now = max(following, now + timedelta(seconds=1))
    return await _report(db, campaign, start, now, zones, pending, sink, len(transport.messages))


def _when(item: _Pending) -> datetime:
    assert item.at is not None
    return item.at


def _dated_instant(action: ScriptedAction, start: datetime, zone: ZoneInfo) -> datetime | None:
    if action.day is None:
        return None  # an email action: timed once its email is sent
    local_day = start.astimezone(zone).date() + timedelta(days=action.day)
    return datetime.combine(local_day, action.at, tzinfo=zone).astimezone(UTC)


async def _attach_email_actions(db: Database, pending: list[_Pending]) -> None:
    """Time each email action whose email has now been sent: `after` its sending."""
    waiting = [p for p in pending if p.at is None and p.action.step is not None]
    if not waiting:
        return
    async with db.transaction() as conn:
        sent = {(d.lead_id, d.step_id): d for d in await fetch_delivery_rows(conn) if d.sent_at is not None}
    for item in waiting:
        delivery = sent.get((item.lead_id, item.action.step or ""))
        if delivery is not None and delivery.sent_at is not None:
            item.at, item.delivery_id = delivery.sent_at + item.action.after, delivery.id


async def _perform(
    db: Database, catalog: Catalog, item: _Pending, sink: RecordingSink, base_url: str, now: datetime
) -> None:
    """What the tracking web and the scoring worker do with one engagement signal."""
    item.done = True
    action = item.action
    if action.is_unsubscribe:
        await unsubscribe(db, lead_id=item.lead_id, delivery_id=item.delivery_id, now=now)
        return
    event = InboundEvent(
        lead_id=item.lead_id,
        type=action.event_type,
        occurred_at=now,
        url=action.url,
        user_agent=_READER_AGENT,
        delivery_id=item.delivery_id,
        idempotency_key=f"simulation-{action.line}-{item.lead_id}",
    )
    if await record_event(db, event, now=now) is None:
        return
    result = await rescore(item.lead_id, db=db, catalog=catalog, now=now)
    for alert_id in result.alert_ids if result is not None else ():
        await deliver_alert(alert_id, db=db, sinks=(sink,), catalog=catalog, base_url=base_url, now=now)


async def _next_instant(db: Database, pending: Sequence[_Pending]) -> datetime | None:
    async with db.transaction() as conn:
        due = await next_pending_due_at(conn)
    times = [p.at for p in pending if not p.done and p.at is not None]
    if due is not None:
        times.append(due)
    return min(times, default=None)


async def _report(
    db: Database,
    campaign: Campaign,
    start: datetime,
    end: datetime,
    zones: Mapping[int, ZoneInfo],
    pending: Sequence[_Pending],
    sink: RecordingSink,
    messages: int,
) -> Simulation:
    async with db.transaction() as conn:
        states = await fetch_lead_states(conn)
        deliveries = await fetch_delivery_rows(conn)
        touchpoints = await fetch_touchpoint_rows(conn)
        alerts = await fetch_alert_rows(conn)
        enrollments = {e.lead_id: e for e in await fetch_enrollment_states(conn)}
    titles = {a.alert_id: a.title() for a in sink.alerts}
    runs = []
    for state in states:
        clock = _LeadClock(start, zones[state.id])
        lead_touchpoints = [t for t in touchpoints if t.lead_id == state.id]
        reasons = {
            t.delivery_id: str(t.detail["reason"])
            for t in lead_touchpoints
            if t.delivery_id is not None and t.detail.get("reason")
        }
        lead_deliveries = [d for d in deliveries if d.lead_id == state.id]
        items = _send_items(campaign, clock, lead_deliveries, reasons)
        items += _touchpoint_items(clock, lead_touchpoints)
        items += _missed_actions(clock, [p for p in pending if p.lead_id == state.id])
        enrollment = enrollments.get(state.id)
        runs.append(
            LeadRun(
                email=state.email,
                zone=zones[state.id].key,
                enrolled=enrollment is not None,
                stage=state.stage,
                score=state.score,
                state=enrollment.state if enrollment else None,
                exit_reason=enrollment.exit_reason if enrollment else None,
                items=tuple(sorted(items, key=lambda i: (i.at, _KIND_ORDER.get(i.kind, 5)))),
                alerts=tuple(_alert(clock, a, titles) for a in alerts if a.lead_id == state.id),
                owner=state.owner,
            )
        )
    return Simulation(campaign.id, start, end, tuple(runs), messages=messages)


_KIND_ORDER: Final = {"enrolled": 0, "sent": 1, "skipped": 1, "task": 1, "event": 2, "score": 3, "stage": 4}


@dataclass(frozen=True, slots=True)
class _LeadClock:
    start: datetime
    zone: ZoneInfo

    def item(
        self,
        at: datetime,
        kind: str,
        *,
        step: str | None = None,
        detail: str = "",
        variant: str | None = None,
    ) -> TimelineItem:
        local = at.astimezone(self.zone)
        return TimelineItem(at, local, self.day(at), kind, step=step, detail=detail, variant=variant)

    def day(self, at: datetime) -> int:
        return (at.astimezone(self.zone).date() - self.start.astimezone(self.zone).date()).days


def _send_items(
    campaign: Campaign, clock: _LeadClock, rows: Sequence[DeliveryRow], reasons: Mapping[int, str]
) -> list[TimelineItem]:
    """A line per delivery: sent (with any send-window shift), skipped or cancelled (why), a rep task."""
    items = []
    first = due_at(clock.start, campaign.send_window, clock.zone).astimezone(clock.zone).date()
    first_day = campaign.steps[0].day if campaign.steps else 0
    days = {s.id: s.day for s in campaign.steps}
    tasks = {s.id for s in campaign.steps if s.task is not None}
    for row in rows:
        if row.step_id in tasks and row.status == "sent" and row.sent_at is not None:
            items.append(clock.item(row.sent_at, "task", step=row.step_id, detail="a task for the rep"))
            continue
        elif row.status == "sent" and row.sent_at is not None:
            planned = first + timedelta(days=days.get(row.step_id, first_day) - first_day)
            actual = row.sent_at.astimezone(clock.zone)
            shift = ""
            if actual.date() != planned:
                shift = f"send window: moved from {planned:%a %d %b}"
            elif row.step_index == 0 and row.sent_at > clock.start:
                enrolled = clock.start.astimezone(clock.zone)
                shift = f"send window: waited from {enrolled:%a %H:%M}"
            items.append(clock.item(row.sent_at, "sent", step=row.step_id, detail=shift, variant=row.variant))
        elif row.status in ("pending", "claimed", "sending"):
            detail = "still due when the simulation ended"
            items.append(clock.item(row.due_at, "due", step=row.step_id, detail=detail))
        else:
            why = reasons.get(row.id) or row.reason or ""
            items.append(clock.item(row.sent_at or row.due_at, row.status, step=row.step_id, detail=why))
    return items


def _touchpoint_items(clock: _LeadClock, rows: Sequence[TouchpointRow]) -> list[TimelineItem]:
    items = []
    for t in rows:
        if t.kind in _SEND_KINDS:
            continue
        d = t.detail
        if t.kind == "enrolled":
            items.append(clock.item(t.occurred_at, "enrolled"))
        elif t.kind == "score_change":
            detail = f"{d.get('before')} -> {d.get('after')}"
            items.append(clock.item(t.occurred_at, "score", detail=detail))
        elif t.kind == "stage_change":
            text = f"{d.get('before')} -> {d.get('after')} ({d.get('reason')})"
            items.append(clock.item(t.occurred_at, "stage", detail=text))
        elif t.kind == "exited":
            items.append(clock.item(t.occurred_at, "exited", detail=str(d.get("reason") or "")))
        elif t.kind in ("alert", "moment", "owner_assigned"):
            continue  # alerts are listed from the alerts table; the owner is part of the alert
        else:  # an engagement event or unsubscribing
            url = str(d.get("url") or "")
            detail = f"{t.kind} {url}".strip()
            items.append(clock.item(t.occurred_at, "event", step=t.step_id, detail=detail))
    return items


def _missed_actions(clock: _LeadClock, pending: Sequence[_Pending]) -> list[TimelineItem]:
    """Scripted email actions whose email never went out: they could not happen."""
    return [
        clock.item(
            clock.start,
            "not_applicable",
            step=p.action.step,
            detail=f"line {p.action.line} `{p.action.text}`: that email was not sent",
        )
        for p in pending
        if not p.done and p.action.step is not None
    ]


def _alert(clock: _LeadClock, row: AlertRow, titles: Mapping[int, str]) -> SimulatedAlert:
    return SimulatedAlert(
        at=row.created_at,
        day=clock.day(row.created_at),
        trigger=row.trigger,
        reason=row.reason,
        score_before=row.score_before,
        score_after=row.score_after,
        owner=row.owner,
        title=titles.get(row.id, row.trigger),
    )
