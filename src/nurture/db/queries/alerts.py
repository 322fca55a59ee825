"""Queries on alerts: the cooldown's last alert, inserting one, revising a pending one with a handoff,
loading what its message says, and recording each delivery attempt.

pending --(every sink delivered)--> delivered
pending --(a sink failed)--> pending, attempts + 1 ... --(attempts reach the limit)--> failed
pending --(revised while a delivery was under way)--> pending, every sink to be sent the revision
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.context import LeadProfile
from nurture.db.queries.tables import alerts, lead_profile, leads, touchpoints
from nurture.ports import TimelineEntry

# Written by rescoring itself: an alert already says the score before and after, and why.
_NOT_IN_ALERTS = ("score_change", "moment")
_WITH_REASON = frozenset({"email_failed", "step_skipped"})  # their subject says why


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert row, its lead, and the lead's latest activity."""

    id: int
    lead_id: int
    trigger: str
    reason: str
    score_before: int
    score_after: int
    owner: str | None
    status: str
    attempts: int
    created_at: datetime
    detail: Mapping[str, Any]
    lead: LeadProfile
    recent: tuple[TimelineEntry, ...]
    score_points: float | None = None  # the lead's unrounded score at `score_points_at`, to decay to now
    score_points_at: datetime | None = None

    @property
    def delivered_by(self) -> frozenset[str]:
        """The sinks that already delivered this alert: a retry skips them."""
        return frozenset(self.detail.get("delivered_by", ()))

    @property
    def revision(self) -> int:
        """How many times a handoff revised the alert while it was pending (0: never)."""
        value = self.detail.get("revision", 0)
        return value if isinstance(value, int) else 0

    @property
    def updates(self) -> int | None:
        """The earlier alert, already sent inside the cooldown, that this handoff alert updates."""
        value = self.detail.get("updates")
        return value if isinstance(value, int) else None


@dataclass(frozen=True, slots=True)
class LastAlert:
    id: int
    created_at: datetime
    pending: bool


async def fetch_last_alert(conn: AsyncConnection, lead_id: int) -> LastAlert | None:
    """The lead's latest hot-lead alert, whatever became of it; None if it never had one.

    A campaign's rep task (`task:<step>`) is not such an alert: it must not hold back the next real one."""
    stmt = (
        select(alerts.c.id, alerts.c.created_at, alerts.c.status)
        .where(alerts.c.lead_id == lead_id, alerts.c.trigger.not_like("task:%"))
        .order_by(alerts.c.created_at.desc(), alerts.c.id.desc())
        .limit(1)
    )
    row = (await conn.execute(stmt)).first()
    return None if row is None else LastAlert(row.id, row.created_at, row.status == "pending")


async def revise_pending_alert(
    conn: AsyncConnection,
    alert_id: int,
    *,
    triggers: Sequence[tuple[str, str]],
    events: Sequence[int],
    score_after: int,
    now: datetime,
) -> bool:
    """Put a handoff on an alert not delivered yet: its `(trigger, reason)`s go first, the score is the new
    one, and every sink sends the revision (also those that had delivered the alert as it was).

    Returns False when the alert is no longer pending (delivered or given up on meanwhile)."""
    row = (
        await conn.execute(
            select(alerts.c.status, alerts.c.reason, alerts.c.detail)
            .where(alerts.c.id == alert_id)
            .with_for_update()
        )
    ).first()
    if row is None or row.status != "pending":
        return False
    detail = dict(row.detail or {})
    names = [name for name, _ in triggers]
    detail["triggers"] = [*names, *(t for t in detail.get("triggers", ()) if t not in names)]
    detail["events"] = [*detail.get("events", ()), *(e for e in events if e not in detail.get("events", ()))]
    detail["revision"] = int(detail.get("revision", 0)) + 1
    detail["revised_at"] = now.isoformat()
    detail["delivered_by"] = []
    reason = "; ".join([*(r for _, r in triggers), row.reason])
    values = {"trigger": names[0], "reason": reason, "score_after": score_after, "detail": detail}
    await conn.execute(update(alerts).where(alerts.c.id == alert_id).values(**values))
    return True


async def insert_alert(
    conn: AsyncConnection,
    *,
    lead_id: int,
    trigger: str,
    reason: str,
    score_before: int,
    score_after: int,
    owner: str | None,
    created_at: datetime,
    detail: Mapping[str, Any],
) -> int:
    stmt = (
        alerts.insert()
        .values(
            lead_id=lead_id,
            trigger=trigger,
            reason=reason,
            score_before=score_before,
            score_after=score_after,
            owner=owner,
            status="pending",
            attempts=0,
            created_at=created_at,
            detail=dict(detail),
        )
        .returning(alerts.c.id)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def fetch_alert(conn: AsyncConnection, alert_id: int, *, recent: int = 10) -> AlertRecord | None:
    """An alert with its lead and the lead's `recent` latest touchpoints and events; None if unknown."""
    row = (
        await conn.execute(
            select(
                leads,
                alerts.c.id.label("alert_id"),
                alerts.c.trigger,
                alerts.c.reason,
                alerts.c.score_before,
                alerts.c.score_after,
                alerts.c.owner.label("alert_owner"),
                alerts.c.status,
                alerts.c.attempts,
                alerts.c.created_at.label("alert_created_at"),
                alerts.c.detail,
            )
            .join(alerts, alerts.c.lead_id == leads.c.id)
            .where(alerts.c.id == alert_id)
        )
    ).first()
    if row is None:
        return None
    return AlertRecord(
        id=row.alert_id,
        lead_id=row.id,
        trigger=row.trigger,
        reason=row.reason,
        score_before=row.score_before,
        score_after=row.score_after,
        owner=row.alert_owner,
        status=row.status,
        attempts=row.attempts,
        created_at=row.alert_created_at,
        detail=dict(row.detail or {}),
        lead=lead_profile(row),
        recent=await fetch_timeline(conn, row.id, limit=recent, skip_kinds=_NOT_IN_ALERTS),
        score_points=row.score_points,
        score_points_at=row.score_points_at,
    )


async def fetch_timeline(
    conn: AsyncConnection, lead_id: int, *, limit: int, skip_kinds: Sequence[str] = ()
) -> tuple[TimelineEntry, ...]:
    """The lead's latest `limit` touchpoints (every event recorded has one), newest first."""
    stmt = (
        select(touchpoints)
        .where(touchpoints.c.lead_id == lead_id, touchpoints.c.kind.not_in(skip_kinds))
        .order_by(touchpoints.c.occurred_at.desc(), touchpoints.c.id.desc())
        .limit(limit)
    )
    return tuple(
        TimelineEntry(row.occurred_at, row.kind, _touchpoint_subject(dict(row._mapping)))
        for row in await conn.execute(stmt)
    )


def _touchpoint_subject(row: Mapping[str, Any]) -> str | None:
    """What a touchpoint was about: the URL of an event, the campaign step of an email (with the reason it
    failed or was skipped), a stage change."""
    detail = row["detail"] or {}
    url = detail.get("url")
    if isinstance(url, str) and url:
        return url
    if row["campaign_id"] and row["step_id"]:
        step = f"{row['campaign_id']}/{row['step_id']}"
        why = detail.get("error") or detail.get("reason") if row["kind"] in _WITH_REASON else None
        return f"{step}: {why}" if why else step
    if "before" in detail and "after" in detail:
        return f"{detail['before']} -> {detail['after']}"
    subject = row["campaign_id"] or detail.get("moment") or detail.get("owner")
    return str(subject) if subject else None


async def record_alert_attempt(
    conn: AsyncConnection,
    alert_id: int,
    *,
    delivered_by: Sequence[str],
    errors: Mapping[str, str],
    now: datetime,
    max_attempts: int,
    revision: int = 0,
) -> str:
    """Count one delivery attempt of the alert's `revision`: add the sinks that delivered, set the status.

    `errors` maps each sink that failed to why. No error: `delivered`; errors and `max_attempts` reached:
    `failed` (never tried again); otherwise it stays `pending`. A handoff that revised the alert since
    `revision` was read leaves it `pending` for every sink, and `revised` is returned so it is sent again at
    once. An alert that stopped being pending meanwhile (withdrawn: its lead was erased) keeps its status,
    which is returned, and only notes the sinks that delivered it. Returns the new status.
    """
    row = (
        await conn.execute(
            select(alerts.c.status, alerts.c.attempts, alerts.c.detail)
            .where(alerts.c.id == alert_id)
            .with_for_update()
        )
    ).one()
    attempts = row.attempts + 1
    detail = dict(row.detail or {})
    detail["last_attempt_at"] = now.isoformat()
    if row.status != "pending":
        detail["delivered_by"] = sorted({*detail.get("delivered_by", ()), *delivered_by})
        await conn.execute(update(alerts).where(alerts.c.id == alert_id).values(detail=detail))
        return str(row.status)
    if int(detail.get("revision", 0)) != revision:
        detail["delivered_before_revision"] = sorted(delivered_by)
        await conn.execute(update(alerts).where(alerts.c.id == alert_id).values(detail=detail))
        return "revised"
    detail["delivered_by"] = sorted({*detail.get("delivered_by", ()), *delivered_by})
    values: dict[str, Any] = {"attempts": attempts, "detail": detail}
    if not errors:
        values.update(status="delivered", delivered_at=now, last_error=None)
    else:
        last_error = "; ".join(f"{sink}: {error}" for sink, error in errors.items())
        status = "failed" if attempts >= max_attempts else "pending"
        values.update(status=status, last_error=last_error)
    await conn.execute(update(alerts).where(alerts.c.id == alert_id).values(**values))
    return str(values["status"])


@dataclass(frozen=True, slots=True)
class AlertSummary:
    id: int
    trigger: str
    reason: str
    status: str
    owner: str | None
    attempts: int
    created_at: datetime
    delivered_at: datetime | None


async def fetch_alerts_of_lead(conn: AsyncConnection, lead_id: int, *, limit: int) -> list[AlertSummary]:
    """The lead's latest `limit` alerts, newest first."""
    stmt = (
        select(alerts)
        .where(alerts.c.lead_id == lead_id)
        .order_by(alerts.c.created_at.desc(), alerts.c.id.desc())
        .limit(limit)
    )
    return [
        AlertSummary(
            id=row.id,
            trigger=row.trigger,
            reason=row.reason,
            status=row.status,
            owner=row.owner,
            attempts=row.attempts,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
        )
        for row in await conn.execute(stmt)
    ]


async def fetch_quiet_pending_alerts(conn: AsyncConnection, *, quiet_since: datetime) -> list[int]:
    """Pending alerts neither created nor attempted since `quiet_since`: their broker message is lost."""
    stmt = (
        select(alerts.c.id, alerts.c.detail)
        .where(alerts.c.status == "pending", alerts.c.created_at <= quiet_since)
        .order_by(alerts.c.created_at)
    )
    found = []
    for row in await conn.execute(stmt):
        last = (row.detail or {}).get("last_attempt_at")
        if last is None or datetime.fromisoformat(last) <= quiet_since:
            found.append(row.id)
    return found
