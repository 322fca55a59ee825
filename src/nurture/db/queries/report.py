"""Set-based reads behind `nurture report` and the dashboard: a few grouped queries, never one per lead.

Every figure is read from the timeline (touchpoints) and the event log, the rows it reports on:

* a *send* is an `email_sent` touchpoint, or an `email_failed` one whose error is a permanent refusal by the
  mail server (a *bounce*); shadow sends (`email_shadowed`), skipped steps and rep tasks are not sends;
* an *open* or *click* is an `email_open` / `email_click` event tied to a delivery and not flagged
  `properties.machine` (image proxies, link scanners); counted once per lead;
* an *unsubscribe* is an `unsubscribed` touchpoint carrying the campaign and step of the link used;
* a lead *crossed MQL* at its first `stage_change` to `mql` or later; the campaign it was in is the one it
  left as `qualified` at that instant, and the step is that campaign's last touch (email or rep task) before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Subquery

from nurture.core.report import MQL_RANK, STAGE_RANK
from nurture.core.scoring import score_as_of
from nurture.db.queries.tables import alerts, deliveries, enrollments, events, leads, touchpoints

SENT: Final = "email_sent"
FAILED: Final = "email_failed"
# What the transports write for a permanent refusal (PermanentSendError): "SMTP 550: ..." and an address the
# client would not even send. A render failure or a give-up after retries is a failure, not a bounce.
BOUNCE_ERRORS: Final = ("SMTP 5%", "address cannot be sent%")
TOUCH_KINDS: Final = (SENT, "task_created")  # what counts as a touch before qualification
NO_GROUP: Final = "(none)"


class GroupBy(StrEnum):
    source = "source"  # the lead's `source` tag, else its `utm_source`
    campaign = "campaign"  # each campaign the lead was enrolled in
    step = "step"  # each campaign step that touched the lead ("campaign/step")
    owner = "owner"  # the lead's rep


@dataclass(frozen=True, slots=True)
class Scope:
    """Which leads a report covers: created at or after `since`, and enrolled in `campaign_id`."""

    campaign_id: str | None = None
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class QualifiedRow:
    lead_id: int
    group: str | None
    created_at: datetime
    mql_at: datetime
    touches: int
    campaign_id: str | None
    step_id: str | None


@dataclass(frozen=True, slots=True)
class SendRow:
    campaign_id: str
    step_id: str | None
    sent: int
    bounced: int
    unsubscribes: int
    order: int


@dataclass(frozen=True, slots=True)
class EngagementRow:
    campaign_id: str
    step_id: str | None
    unique_opens: int
    unique_clicks: int


@dataclass(frozen=True, slots=True)
class HotLeadRow:
    lead_id: int
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    stage: str
    score: int
    owner: str | None
    trigger: str
    reason: str
    alerted_at: datetime


async def fetch_campaign_ids(conn: AsyncConnection) -> set[str]:
    """Every campaign that ever enrolled a lead: one removed from the files keeps its history to report."""
    rows = await conn.execute(select(enrollments.c.campaign_id).distinct())
    return set(rows.scalars())


def _rank(stage: ColumnElement[Any]) -> ColumnElement[int]:
    return case(dict(STAGE_RANK), value=stage, else_=0)


def _scoped_leads(scope: Scope) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if scope.since is not None:
        conditions.append(leads.c.created_at >= scope.since)
    if scope.campaign_id is not None:
        enrolled = select(enrollments.c.id).where(
            enrollments.c.lead_id == leads.c.id, enrollments.c.campaign_id == scope.campaign_id
        )
        conditions.append(enrolled.exists())
    return and_(*conditions) if conditions else literal(True)


def _reach(scope: Scope) -> Subquery:
    """Per lead in scope: its creation, the furthest stage rank it reached, and when it first crossed MQL."""
    after = _rank(touchpoints.c.detail["after"].as_string())
    changes = (
        select(
            touchpoints.c.lead_id,
            func.max(after).label("max_rank"),
            func.min(case((after >= MQL_RANK, touchpoints.c.occurred_at))).label("mql_at"),
        )
        .where(touchpoints.c.kind == "stage_change")
        .group_by(touchpoints.c.lead_id)
        .subquery()
    )
    current = _rank(leads.c.stage)
    changed = func.coalesce(changes.c.max_rank, 0)
    return (
        select(
            leads.c.id.label("lead_id"),
            leads.c.created_at,
            case((current > changed, current), else_=changed).label("rank"),
            changes.c.mql_at,
        )
        .select_from(leads.outerjoin(changes, changes.c.lead_id == leads.c.id))
        .where(_scoped_leads(scope))
        .subquery()
    )


def _members(by: GroupBy | None) -> Subquery:
    """(lead_id, group) pairs: one per lead for source and owner, one per campaign or step it took."""
    if by is None:
        return select(leads.c.id.label("lead_id"), literal(None).label("grp")).subquery()
    if by is GroupBy.source:
        tags = leads.c.tags
        key = func.coalesce(tags["source"].as_string(), tags["utm_source"].as_string(), NO_GROUP)
        return select(leads.c.id.label("lead_id"), key.label("grp")).subquery()
    if by is GroupBy.owner:
        return select(
            leads.c.id.label("lead_id"), func.coalesce(leads.c.owner, NO_GROUP).label("grp")
        ).subquery()
    if by is GroupBy.campaign:
        return select(enrollments.c.lead_id, enrollments.c.campaign_id.label("grp")).distinct().subquery()
    step = touchpoints.c.campaign_id + "/" + touchpoints.c.step_id
    return (
        select(touchpoints.c.lead_id, step.label("grp"))
        .where(touchpoints.c.kind.in_(TOUCH_KINDS), touchpoints.c.step_id.is_not(None))
        .distinct()
        .subquery()
    )


async def fetch_reach_counts(
    conn: AsyncConnection, scope: Scope, by: GroupBy | None
) -> list[tuple[str | None, int, int]]:
    """(group, furthest stage rank, leads) for the leads in `scope`."""
    reach, members = _reach(scope), _members(by)
    stmt = (
        select(members.c.grp, reach.c.rank, func.count())
        .select_from(reach.join(members, members.c.lead_id == reach.c.lead_id))
        .group_by(members.c.grp, reach.c.rank)
    )
    return [(row[0], int(row[1]), int(row[2])) for row in await conn.execute(stmt)]


async def fetch_qualified(conn: AsyncConnection, scope: Scope, by: GroupBy | None) -> list[QualifiedRow]:
    """Every lead in `scope` that crossed MQL on its timeline, once per group it is in."""
    reach, members = _reach(scope), _members(by)
    ex = touchpoints.alias("ex")
    left_as_qualified = (
        select(ex.c.campaign_id)
        .where(
            ex.c.lead_id == reach.c.lead_id,
            ex.c.kind == "exited",
            ex.c.occurred_at == reach.c.mql_at,
            ex.c.detail["reason"].as_string() == "qualified",
        )
        .order_by(ex.c.id)
        .limit(1)
        .scalar_subquery()
    )
    # The campaign first, in a subquery of its own: the step lookup below correlates with it by name.
    crossed = (
        select(reach.c.lead_id, reach.c.created_at, reach.c.mql_at, left_as_qualified.label("campaign_id"))
        .where(reach.c.mql_at.is_not(None))
        .subquery()
    )
    tp = touchpoints.alias("tp")
    touches = (
        select(func.count())
        .where(
            tp.c.lead_id == crossed.c.lead_id,
            tp.c.kind.in_(TOUCH_KINDS),
            tp.c.occurred_at <= crossed.c.mql_at,
        )
        .scalar_subquery()
    )
    last = touchpoints.alias("last")
    last_step = (
        select(last.c.step_id)
        .where(
            last.c.lead_id == crossed.c.lead_id,
            last.c.kind.in_(TOUCH_KINDS),
            last.c.occurred_at <= crossed.c.mql_at,
            last.c.campaign_id == crossed.c.campaign_id,
        )
        .order_by(last.c.occurred_at.desc(), last.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    stmt = select(
        crossed.c.lead_id,
        members.c.grp,
        crossed.c.created_at,
        crossed.c.mql_at,
        touches.label("touches"),
        crossed.c.campaign_id,
        last_step.label("step_id"),
    ).select_from(crossed.join(members, members.c.lead_id == crossed.c.lead_id))
    return [QualifiedRow(*row) for row in await conn.execute(stmt)]


def _in_scope(lead_id: ColumnElement[int], scope: Scope) -> ColumnElement[bool]:
    if scope.since is None and scope.campaign_id is None:
        return literal(True)
    return lead_id.in_(select(leads.c.id).where(_scoped_leads(scope)))


def _campaign_filter(campaign_id: ColumnElement[str | None], scope: Scope) -> ColumnElement[bool]:
    return campaign_id == scope.campaign_id if scope.campaign_id is not None else campaign_id.is_not(None)


async def fetch_sends(conn: AsyncConnection, scope: Scope) -> list[SendRow]:
    """Sends, bounces and unsubscribes per campaign step, from the touchpoints."""
    tp = touchpoints
    bounce = and_(
        tp.c.kind == FAILED, or_(*(tp.c.detail["error"].as_string().like(p) for p in BOUNCE_ERRORS))
    )
    keys = [tp.c.campaign_id, tp.c.step_id]
    stmt: Select[Any] = (
        select(
            *keys,
            func.sum(case((or_(tp.c.kind == SENT, bounce), 1), else_=0)),
            func.sum(case((bounce, 1), else_=0)),
            func.count(func.distinct(case((tp.c.kind == "unsubscribed", tp.c.lead_id)))),
            func.coalesce(func.min(deliveries.c.step_index), 0),
        )
        .select_from(tp.outerjoin(deliveries, deliveries.c.id == tp.c.delivery_id))
        .where(
            tp.c.kind.in_((SENT, FAILED, "unsubscribed")),
            _campaign_filter(tp.c.campaign_id, scope),
            _in_scope(tp.c.lead_id, scope),
        )
        .group_by(*keys)
    )
    rows = await conn.execute(stmt)
    return [SendRow(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]


async def fetch_engagement(conn: AsyncConnection, scope: Scope, *, per_step: bool) -> list[EngagementRow]:
    """Leads with a human open, and with a human click, per campaign (and step) of the email they hit."""
    machine = func.coalesce(events.c.properties["machine"].as_boolean(), false())
    keys = [deliveries.c.campaign_id, deliveries.c.step_id if per_step else literal(None)]
    stmt: Select[Any] = (
        select(
            *keys,
            func.count(func.distinct(case((events.c.type == "email_open", events.c.lead_id)))),
            func.count(func.distinct(case((events.c.type == "email_click", events.c.lead_id)))),
        )
        .select_from(events.join(deliveries, deliveries.c.id == events.c.delivery_id))
        .where(
            events.c.type.in_(("email_open", "email_click")),
            ~machine,
            _campaign_filter(deliveries.c.campaign_id, scope),
            _in_scope(events.c.lead_id, scope),
        )
        .group_by(*keys)
    )
    return [EngagementRow(r[0], r[1], int(r[2]), int(r[3])) for r in await conn.execute(stmt)]


async def fetch_hot_leads(
    conn: AsyncConnection,
    *,
    since: datetime,
    limit: int,
    now: datetime,
    half_life: timedelta,
    triggers: Sequence[str] | None = None,
) -> list[HotLeadRow]:
    """Leads alerted to their rep since `since`, each with its latest alert, newest first.

    Each score is the lead's as of `now`, decay included (the stored one can be a scheduler pass old); a
    page of rows, so it is computed as they are read."""
    latest = func.row_number().over(
        partition_by=alerts.c.lead_id, order_by=(alerts.c.created_at.desc(), alerts.c.id.desc())
    )
    recent = select(alerts, latest.label("nth")).where(alerts.c.created_at >= since)
    if triggers is not None:
        recent = recent.where(alerts.c.trigger.in_(triggers))
    found = recent.subquery()
    stmt = (
        select(
            leads.c.id,
            leads.c.email,
            leads.c.first_name,
            leads.c.last_name,
            leads.c.company,
            leads.c.stage,
            leads.c.score,
            leads.c.owner,
            found.c.trigger,
            found.c.reason,
            found.c.created_at,
            leads.c.score_points,
            leads.c.score_points_at,
        )
        .join(found, found.c.lead_id == leads.c.id)
        .where(found.c.nth == 1)
        .order_by(found.c.created_at.desc(), found.c.id.desc())
        .limit(limit)
    )
    rows = []
    for *fields, points, points_at in await conn.execute(stmt):
        row = HotLeadRow(*fields)
        if points is not None and points_at is not None:
            row = dataclasses.replace(row, score=score_as_of(points, points_at, now, half_life))
        rows.append(row)
    return rows
