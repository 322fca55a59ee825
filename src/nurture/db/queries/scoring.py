"""Queries behind scoring: a lead's event log as the core sees it, its stored score and stage, owner
assignment, and the leads `rescore --all` walks through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Row, String, bindparam, cast, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.context import LeadProfile
from nurture.core.scoring import EngagementEvent
from nurture.core.stages import Stage
from nurture.db.queries.tables import (
    catalog_state,
    deliveries,
    dialect_insert,
    enrollments,
    events,
    lead_profile,
    leads,
    touchpoints,
)

ROUND_ROBIN_KEY = "owner_round_robin"
MOMENT = "moment"  # the touchpoint kind that records an event which hit a moment


@dataclass(frozen=True, slots=True)
class ScoringLead:
    """What rescoring reads from a lead row, which stays locked until the transaction ends."""

    id: int
    stage: Stage
    score: int
    owner: str | None
    grade: str | None
    suppressed: bool
    score_updated_at: datetime | None
    score_points: float | None = None  # unrounded, at `score_points_at`
    score_points_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DecayingScore:
    """A stored score whose instant to fall by decay has come: its anchor, to decay it from."""

    id: int
    score: int
    points: float
    points_at: datetime


@dataclass(frozen=True, slots=True)
class ScoreRefresh:
    id: int
    score: int
    drops_at: datetime | None


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event of the log as scoring sees it, and when it reached us."""

    event: EngagementEvent
    received_at: datetime


@dataclass(frozen=True, slots=True)
class LeadRecord:
    """A lead as `nurture lead show` presents it."""

    id: int
    profile: LeadProfile
    suppressed: bool
    suppressed_reason: str | None
    score_updated_at: datetime | None
    created_at: datetime
    score_points: float | None = None  # unrounded, at `score_points_at` (the last rescore)
    score_points_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EnrollmentRow:
    id: int
    campaign_id: str
    state: str
    exit_reason: str | None
    enrolled_at: datetime
    ended_at: datetime | None


async def lock_lead_for_scoring(conn: AsyncConnection, lead_id: int) -> ScoringLead | None:
    """Read a lead's scoring state and hold its row until commit, so rescores of one lead run one after the
    other (on SQLite, BEGIN IMMEDIATE already serialises writers); None for an unknown or erased lead."""
    stmt = select(
        leads.c.id,
        leads.c.stage,
        leads.c.score,
        leads.c.owner,
        leads.c.grade,
        leads.c.suppressed,
        leads.c.score_updated_at,
        leads.c.score_points,
        leads.c.score_points_at,
    ).where(leads.c.id == lead_id, leads.c.erased_at.is_(None))
    row = (await conn.execute(stmt.with_for_update())).first()
    if row is None:
        return None
    return ScoringLead(
        id=row.id,
        stage=Stage(row.stage),
        score=row.score,
        owner=row.owner,
        grade=row.grade,
        suppressed=bool(row.suppressed),
        score_updated_at=row.score_updated_at,
        score_points=row.score_points,
        score_points_at=row.score_points_at,
    )


async def fetch_engagement_events(conn: AsyncConnection, lead_id: int) -> list[LoggedEvent]:
    """Every event of a lead, oldest first, with the send time of the email it came from (if any) and the
    machine flag it was stored with."""
    stmt = (
        select(
            events.c.id,
            events.c.type,
            events.c.occurred_at,
            events.c.received_at,
            events.c.delivery_id,
            events.c.properties,
            deliveries.c.sent_at,
        )
        .outerjoin(deliveries, deliveries.c.id == events.c.delivery_id)
        .where(events.c.lead_id == lead_id)
        .order_by(events.c.occurred_at, events.c.id)
    )
    return [
        LoggedEvent(
            event=EngagementEvent(
                id=row.id,
                type=row.type,
                occurred_at=row.occurred_at,
                url=_text(row.properties, "url"),
                user_agent=_text(row.properties, "user_agent"),
                delivery_sent_at=row.sent_at,
                delivery_id=row.delivery_id,
                machine_reason=_stored_machine_reason(row.properties),
                repeat=(row.properties or {}).get("repeat") is True,
            ),
            received_at=row.received_at,
        )
        for row in await conn.execute(stmt)
    ]


async def fetch_moment_event_ids(conn: AsyncConnection, lead_id: int, *, since: datetime) -> set[int]:
    """Ids of the lead's events recorded, at `since` or later, as having hit a moment already."""
    stmt = select(touchpoints.c.detail).where(
        touchpoints.c.lead_id == lead_id, touchpoints.c.kind == MOMENT, touchpoints.c.occurred_at >= since
    )
    details = [detail or {} for detail in (await conn.execute(stmt)).scalars()]
    # "moment" is a valid custom event type too: only rescoring's touchpoints name the moment.
    found = (detail.get("event_id") for detail in details if "moment" in detail)
    return {event_id for event_id in found if isinstance(event_id, int)}


def _stored_machine_reason(properties: Mapping[str, Any] | None) -> str | None:
    """Why the event was flagged as machine-made when stored (`machine` is exactly JSON true), or None."""
    if (properties or {}).get("machine") is not True:
        return None
    return _text(properties, "machine_reason") or "flagged when recorded"


def _text(properties: Mapping[str, Any] | None, key: str) -> str | None:
    value = (properties or {}).get(key)
    return value if isinstance(value, str) else None


async def save_score(
    conn: AsyncConnection, lead_id: int, *, score: int, scored_at: datetime | None, changed: bool
) -> None:
    """Store a lead's score, computed at `scored_at` (None keeps the previous time); its stage moves only
    through `db.queries.stages.change_stage`.

    A `changed` score may fit another campaign's audience now: the lead is flagged for the next enrollment
    check.
    """
    values: dict[str, Any] = {"score": score}
    if scored_at is not None:
        values["score_updated_at"] = scored_at
    if changed:
        values["enroll_pending"] = True
    await conn.execute(update(leads).where(leads.c.id == lead_id).values(**values))


async def save_score_decay(
    conn: AsyncConnection, lead_id: int, *, points: float, points_at: datetime, drops_at: datetime | None
) -> None:
    """Store the unrounded score computed at `points_at`, and when the stored score next falls by decay."""
    values = {"score_points": points, "score_points_at": points_at, "score_drops_at": drops_at}
    await conn.execute(update(leads).where(leads.c.id == lead_id).values(**values))


async def fetch_decaying_scores(conn: AsyncConnection, *, now: datetime, limit: int) -> list[DecayingScore]:
    """Leads whose stored score falls by decay at `now` or earlier, soonest first (an index range scan)."""
    stmt = (
        select(leads.c.id, leads.c.score, leads.c.score_points, leads.c.score_points_at)
        .where(leads.c.score_drops_at <= now)
        .order_by(leads.c.score_drops_at, leads.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [
        DecayingScore(
            id=row.id, score=row.score, points=row.score_points or 0.0, points_at=row.score_points_at
        )
        for row in await conn.execute(stmt)
    ]


async def apply_score_refreshes(conn: AsyncConnection, refreshes: Sequence[ScoreRefresh]) -> None:
    """Store each decayed score and its next instant; a lead whose score fell is flagged for the next
    enrollment check, as a lower score may fit another audience now."""
    if not refreshes:
        return
    stmt = (
        update(leads)
        .where(leads.c.id == bindparam("lead_id"))
        .values(
            score=bindparam("new_score"),
            score_drops_at=bindparam("drops_at"),
            enroll_pending=leads.c.enroll_pending | (leads.c.score != bindparam("new_score")),
        )
    )
    await conn.execute(
        stmt, [{"lead_id": r.id, "new_score": r.score, "drops_at": r.drops_at} for r in refreshes]
    )


async def set_lead_owner(conn: AsyncConnection, lead_id: int, *, owner: str, now: datetime) -> None:
    await conn.execute(update(leads).where(leads.c.id == lead_id).values(owner=owner, updated_at=now))


async def next_round_robin(conn: AsyncConnection) -> int:
    """Return the next value (0, 1, 2, ...) of the owner round-robin counter, atomically on every database."""
    stmt = dialect_insert(conn, catalog_state).values(key=ROUND_ROBIN_KEY, value="0")
    stmt = stmt.on_conflict_do_update(
        index_elements=[catalog_state.c.key],
        set_={"value": cast(cast(catalog_state.c.value, Integer) + 1, String)},
    ).returning(catalog_state.c.value)
    return int((await conn.execute(stmt)).scalar_one())


async def fetch_active_enrollment(conn: AsyncConnection, lead_id: int) -> EnrollmentRow | None:
    """The lead's active enrollment (a lead is in at most one campaign at a time), or None."""
    rows = await fetch_enrollments(conn, lead_id, active_only=True)
    return rows[0] if rows else None


async def fetch_enrollments(
    conn: AsyncConnection, lead_id: int, *, active_only: bool = False
) -> list[EnrollmentRow]:
    """A lead's enrollments, oldest first."""
    stmt = select(enrollments).where(enrollments.c.lead_id == lead_id).order_by(enrollments.c.id)
    if active_only:
        stmt = stmt.where(enrollments.c.state == "active")
    return [
        EnrollmentRow(
            id=row.id,
            campaign_id=row.campaign_id,
            state=row.state,
            exit_reason=row.exit_reason,
            enrolled_at=row.enrolled_at,
            ended_at=row.ended_at,
        )
        for row in await conn.execute(stmt)
    ]


async def fetch_lead_ids(conn: AsyncConnection, *, after_id: int, limit: int) -> list[int]:
    """The next `limit` lead ids above `after_id`, in order: `rescore --all` pages through leads with it."""
    stmt = select(leads.c.id).where(leads.c.id > after_id).order_by(leads.c.id).limit(limit)
    return list((await conn.execute(stmt)).scalars())


async def fetch_lead_by_email(conn: AsyncConnection, email: str) -> LeadRecord | None:
    """A lead by its normalised email, or None."""
    row = (await conn.execute(select(leads).where(leads.c.email == email))).first()
    return None if row is None else _lead_record(row)


async def fetch_lead_by_id(conn: AsyncConnection, lead_id: int) -> LeadRecord | None:
    """A lead by its id, or None."""
    row = (await conn.execute(select(leads).where(leads.c.id == lead_id))).first()
    return None if row is None else _lead_record(row)


def _lead_record(row: Row[Any]) -> LeadRecord:
    return LeadRecord(
        id=row.id,
        profile=lead_profile(row),
        suppressed=bool(row.suppressed),
        suppressed_reason=row.suppressed_reason,
        score_updated_at=row.score_updated_at,
        created_at=row.created_at,
        score_points=row.score_points,
        score_points_at=row.score_points_at,
    )


async def fetch_leads_with_unscored_events(
    conn: AsyncConnection, *, received_after: datetime, received_before: datetime
) -> list[int]:
    """Leads, not erased, with an event received in the window but not scored since (its re-score message
    was lost). A repeat within the replay window (`properties.repeat`) is not such an event: it never
    enqueues a re-score, and would not change the score."""
    repeat = func.coalesce(events.c.properties["repeat"].as_boolean(), false())
    stmt = (
        select(events.c.lead_id)
        .distinct()
        .join(leads, leads.c.id == events.c.lead_id)
        .where(
            events.c.received_at > received_after,
            events.c.received_at <= received_before,
            ~repeat,
            leads.c.erased_at.is_(None),  # an erased lead is never rescored: nothing to find again
            (leads.c.score_updated_at.is_(None)) | (leads.c.score_updated_at < events.c.received_at),
        )
    )
    return list((await conn.execute(stmt)).scalars())
