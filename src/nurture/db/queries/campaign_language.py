"""Queries behind the campaign language: an enrollment's engagement with its earlier steps (for `when:`),
campaign version snapshots, and the pending deliveries a new campaign version affects."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, and_, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.branching import StepEngagement
from nurture.core.context import LeadProfile
from nurture.db import models
from nurture.db.queries.tables import deliveries, enrollments, events, lead_profile, leads
from nurture.errors import DatabaseUnavailableError

_versions = models.CampaignVersion.__table__
assert isinstance(_versions, Table)
campaign_versions: Table = _versions


async def fetch_step_histories(
    conn: AsyncConnection, enrollment_ids: Iterable[int]
) -> dict[int, dict[str, StepEngagement]]:
    """The engagement with every sent step of each enrollment (opened, clicked), in one query."""
    ids = sorted(set(enrollment_ids))
    if not ids:
        return {}
    opened = func.max(case((events.c.type == "email_open", 1), else_=0))
    clicked = func.max(case((events.c.type == "email_click", 1), else_=0))
    stmt = (
        select(
            deliveries.c.enrollment_id, deliveries.c.step_id, opened.label("opened"), clicked.label("clicked")
        )
        .select_from(
            deliveries.outerjoin(
                events,
                and_(
                    # By lead first: events are indexed by (lead_id, occurred_at), not by delivery.
                    events.c.lead_id == deliveries.c.lead_id,
                    events.c.delivery_id == deliveries.c.id,
                    events.c.type.in_(("email_open", "email_click")),
                ),
            )
        )
        .where(deliveries.c.enrollment_id.in_(ids), deliveries.c.status == "sent")
        .group_by(deliveries.c.enrollment_id, deliveries.c.step_id)
    )
    histories: dict[int, dict[str, StepEngagement]] = defaultdict(dict)
    for row in await conn.execute(stmt):
        histories[row.enrollment_id][row.step_id] = StepEngagement(
            sent=True, opened=bool(row.opened), clicked=bool(row.clicked)
        )
    return dict(histories)


async def remember_versions(
    conn: AsyncConnection, versions: Sequence[tuple[str, str, str]], *, now: datetime
) -> set[str]:
    """Store each (campaign_id, content_hash, text) not stored yet; return the campaign ids this
    transaction stored a version for (a second scheduler storing the same version at once gets none)."""
    if not versions:
        return set()
    known = {
        (row.campaign_id, row.content_hash)
        for row in await conn.execute(
            select(campaign_versions.c.campaign_id, campaign_versions.c.content_hash).where(
                campaign_versions.c.content_hash.in_([h for _, h, _ in versions])
            )
        )
    }
    stored: set[str] = set()
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for campaign_id, content_hash, text in versions:
        if (campaign_id, content_hash) in known:
            continue
        row = {"campaign_id": campaign_id, "content_hash": content_hash, "text": text, "created_at": now}
        # Two schedulers may store the same version at once: the later insert waits, then does nothing.
        inserted = await conn.execute(
            insert(campaign_versions)
            .values(row)
            .on_conflict_do_nothing()
            .returning(campaign_versions.c.campaign_id)
        )
        stored.update(inserted.scalars())
    return stored


async def fetch_version_text(conn: AsyncConnection, campaign_id: str, content_hash: str) -> str | None:
    stmt = select(campaign_versions.c.text).where(
        campaign_versions.c.campaign_id == campaign_id, campaign_versions.c.content_hash == content_hash
    )
    text: str | None = (await conn.execute(stmt)).scalar_one_or_none()
    return text


@dataclass(frozen=True, slots=True)
class EnrolledVersion:
    """The active enrollments of one campaign planned from one version, and their pending deliveries."""

    campaign_id: str
    content_hash: str
    enrollments: int
    pending_by_step: dict[str, int]  # pending (or claimed) deliveries per step id


async def fetch_enrolled_versions(
    conn: AsyncConnection, campaign_ids: Iterable[str]
) -> list[EnrolledVersion]:
    """For each campaign, the versions its active enrollments were planned from, with pending deliveries."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return []
    active = and_(enrollments.c.campaign_id.in_(ids), enrollments.c.state == "active")
    try:
        await conn.execute(select(campaign_versions.c.campaign_id).limit(1))
    except DBAPIError as exc:  # no such table: a database older than this code
        raise DatabaseUnavailableError(
            "the database schema is not up to date: run `nurture db upgrade`"
        ) from exc
    counts = await conn.execute(
        select(enrollments.c.campaign_id, enrollments.c.campaign_hash, func.count())
        .where(active)
        .group_by(enrollments.c.campaign_id, enrollments.c.campaign_hash)
    )
    found = {(c, h): EnrolledVersion(c, h, n, {}) for c, h, n in counts}
    pending = await conn.execute(
        select(enrollments.c.campaign_id, enrollments.c.campaign_hash, deliveries.c.step_id, func.count())
        .join(deliveries, deliveries.c.enrollment_id == enrollments.c.id)
        .where(active, deliveries.c.status.in_(("pending", "claimed")))
        .group_by(enrollments.c.campaign_id, enrollments.c.campaign_hash, deliveries.c.step_id)
    )
    for campaign_id, content_hash, step_id, n in pending:
        version = found.get((campaign_id, content_hash))
        if version is not None:
            version.pending_by_step[step_id] = n
    return sorted(found.values(), key=lambda v: (v.campaign_id, v.content_hash))


@dataclass(frozen=True, slots=True)
class StalePlan:
    """An active enrollment planned from an older version of a campaign that follows changes."""

    enrollment_id: int
    lead_id: int
    enrolled_at: datetime
    pending: dict[str, int]  # step id -> pending delivery id
    planned: frozenset[str]  # every step id the enrollment has a delivery for, in any state


async def fetch_stale_plans(
    conn: AsyncConnection, campaign_id: str, content_hash: str, *, limit: int
) -> list[StalePlan]:
    """Up to `limit` active enrollments of `campaign_id` not planned from version `content_hash`."""
    rows = (
        await conn.execute(
            select(enrollments.c.id, enrollments.c.lead_id, enrollments.c.enrolled_at)
            .where(
                enrollments.c.campaign_id == campaign_id,
                enrollments.c.state == "active",
                enrollments.c.campaign_hash != content_hash,
            )
            .order_by(enrollments.c.id)
            .limit(limit)
            # A second scheduler re-planning at the same moment skips what this one holds (PostgreSQL).
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        return []
    steps: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
    for row in await conn.execute(
        select(deliveries.c.enrollment_id, deliveries.c.step_id, deliveries.c.id, deliveries.c.status).where(
            deliveries.c.enrollment_id.in_([r.id for r in rows])
        )
    ):
        steps[row.enrollment_id].append((row.step_id, row.id, row.status))
    return [
        StalePlan(
            enrollment_id=r.id,
            lead_id=r.lead_id,
            enrolled_at=r.enrolled_at,
            pending={s: d for s, d, status in steps[r.id] if status == "pending"},
            planned=frozenset(s for s, _, _ in steps[r.id]),
        )
        for r in rows
    ]


async def skip_pending(conn: AsyncConnection, delivery_ids: Sequence[int], *, reason: str) -> None:
    if delivery_ids:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(delivery_ids), deliveries.c.status == "pending")
            .values(status="skipped", last_error=reason, claimed_until=None)
        )


async def retime_pending(conn: AsyncConnection, due: Sequence[tuple[int, datetime, int]]) -> None:
    """Move pending deliveries (id, new due_at, new step index) to their new plan."""
    for delivery_id, due_at, step_index in due:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.status == "pending")
            .values(due_at=due_at, step_index=step_index)
        )


async def mark_replanned(conn: AsyncConnection, enrollment_ids: Sequence[int], content_hash: str) -> None:
    if enrollment_ids:
        await conn.execute(
            update(enrollments).where(enrollments.c.id.in_(enrollment_ids)).values(campaign_hash=content_hash)
        )


async def fetch_profile(conn: AsyncConnection, lead_id: int) -> LeadProfile | None:
    """A lead as templates see it (for a rep task's title); None when it is gone."""
    row = (await conn.execute(select(leads).where(leads.c.id == lead_id))).first()
    return None if row is None else lead_profile(row)


async def finish_task_delivery(conn: AsyncConnection, delivery_id: int, *, now: datetime) -> bool:
    """Mark the delivery of a rep task done (`sent`); False when it is not ours any more."""
    finished = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status.in_(("claimed", "sending")))
        .values(status="sent", sent_at=now, claimed_until=None, last_error=None)
    )
    return finished.rowcount > 0


@dataclass(frozen=True, slots=True)
class LeadPlace:
    """Where a lead is mailed: what re-planning its deliveries needs."""

    email: str
    timezone: str | None
    country: str | None


async def fetch_lead_places(conn: AsyncConnection, lead_ids: Iterable[int]) -> dict[int, LeadPlace]:
    rows = await conn.execute(
        select(leads.c.id, leads.c.email, leads.c.timezone, leads.c.country).where(
            leads.c.id.in_(sorted(set(lead_ids)))
        )
    )
    return {r.id: LeadPlace(r.email, r.timezone, r.country) for r in rows}
