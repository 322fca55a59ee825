"""Read-only queries a simulation uses to step its clock and to report what happened to each lead."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db import models
from nurture.db.engine import Database
from nurture.db.queries.tables import alerts, deliveries, enrollments, leads, touchpoints


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    lead_id: int
    step_id: str
    step_index: int
    status: str
    due_at: datetime
    sent_at: datetime | None
    variant: str | None
    reason: str | None  # why it was skipped or cancelled, or its last error


@dataclass(frozen=True, slots=True)
class TouchpointRow:
    lead_id: int
    kind: str
    occurred_at: datetime
    step_id: str | None
    detail: dict[str, Any]
    delivery_id: int | None = None


@dataclass(frozen=True, slots=True)
class AlertRow:
    id: int
    lead_id: int
    trigger: str
    reason: str
    score_before: int
    score_after: int
    owner: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LeadState:
    id: int
    email: str
    stage: str
    score: int
    timezone: str | None
    owner: str | None


@dataclass(frozen=True, slots=True)
class EnrollmentState:
    lead_id: int
    state: str
    exit_reason: str | None
    enrolled_at: datetime
    ended_at: datetime | None


async def create_schema(db: Database) -> None:
    """Create every table of the models in an empty database.

    A throwaway simulation database is built from the models rather than by Alembic: its migration context
    is process-global, so two simulations at once could not migrate side by side. A test keeps the models
    and the migrations equal.
    """
    async with db.engine.begin() as conn:
        await conn.run_sync(models.Base.metadata.create_all)


async def next_pending_due_at(conn: AsyncConnection) -> datetime | None:
    """When the earliest delivery still waiting is due, or None when none waits."""
    result = await conn.execute(select(func.min(deliveries.c.due_at)).where(deliveries.c.status == "pending"))
    value: datetime | None = result.scalar()
    return value


async def fetch_delivery_rows(conn: AsyncConnection) -> list[DeliveryRow]:
    rows = await conn.execute(select(deliveries).order_by(deliveries.c.lead_id, deliveries.c.step_index))
    return [
        DeliveryRow(
            id=r.id,
            lead_id=r.lead_id,
            step_id=r.step_id,
            step_index=r.step_index,
            status=r.status,
            due_at=r.due_at,
            sent_at=r.sent_at,
            variant=r.variant,
            reason=r.last_error,
        )
        for r in rows
    ]


async def fetch_touchpoint_rows(conn: AsyncConnection) -> list[TouchpointRow]:
    rows = await conn.execute(select(touchpoints).order_by(touchpoints.c.occurred_at, touchpoints.c.id))
    return [
        TouchpointRow(r.lead_id, r.kind, r.occurred_at, r.step_id, dict(r.detail or {}), r.delivery_id)
        for r in rows
    ]


async def fetch_alert_rows(conn: AsyncConnection) -> list[AlertRow]:
    rows = await conn.execute(select(alerts).order_by(alerts.c.created_at, alerts.c.id))
    return [
        AlertRow(r.id, r.lead_id, r.trigger, r.reason, r.score_before, r.score_after, r.owner, r.created_at)
        for r in rows
    ]


async def fetch_lead_states(conn: AsyncConnection) -> list[LeadState]:
    rows = await conn.execute(select(leads).order_by(leads.c.id))
    return [LeadState(r.id, r.email, r.stage, r.score, r.timezone, r.owner) for r in rows]


async def fetch_enrollment_states(conn: AsyncConnection) -> list[EnrollmentState]:
    rows = await conn.execute(select(enrollments).order_by(enrollments.c.id))
    return [EnrollmentState(r.lead_id, r.state, r.exit_reason, r.enrolled_at, r.ended_at) for r in rows]
