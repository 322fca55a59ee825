"""The one place a lead's stage changes: `change_stage` moves the stage, appends the `stage_changes` row and
the `stage_change` touchpoint the timeline and the funnel report read, all in the caller's transaction.

Scoring, import and the API call it; what may move (`core.stages`) is decided before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.stages import Stage, StageChange, StagePath
from nurture.db.queries.tables import leads, stage_changes, touchpoints

STAGE_CHANGE: Final = "stage_change"  # the touchpoint kind of a stage change


@dataclass(frozen=True, slots=True)
class LeadStageChange:
    lead_id: int
    change: StageChange
    idempotency_key: str | None = None  # a change replayed with the same key is recorded once


@dataclass(frozen=True, slots=True)
class StageHistoryRow:
    occurred_at: datetime
    before: Stage
    after: Stage
    path: StagePath
    reason: str


async def change_stage(
    conn: AsyncConnection, changes: Sequence[LeadStageChange], *, path: StagePath, occurred_at: datetime
) -> list[LeadStageChange]:
    """Apply `changes` (at most one per lead; the caller holds the leads' rows) with one statement per table.

    Each lead's stage is set to the change's `after` and the lead is marked for an enrollment check; the
    change is recorded in `stage_changes` and on the timeline. A change whose idempotency key is already
    recorded is skipped.

    Returns:
        The changes applied.
    """
    changes = await _not_recorded(conn, changes)
    if not changes:
        return []
    await conn.execute(
        update(leads)
        .where(leads.c.id == bindparam("p_id"))
        .values(stage=bindparam("p_stage"), enroll_pending=True, updated_at=bindparam("p_now")),
        [{"p_id": c.lead_id, "p_stage": str(c.change.after), "p_now": occurred_at} for c in changes],
    )
    await conn.execute(stage_changes.insert(), [_history_values(c, path, occurred_at) for c in changes])
    await conn.execute(touchpoints.insert(), [_touchpoint_values(c, path, occurred_at) for c in changes])
    return changes


async def _not_recorded(conn: AsyncConnection, changes: Sequence[LeadStageChange]) -> list[LeadStageChange]:
    keys = {c.idempotency_key for c in changes if c.idempotency_key is not None}
    if not keys:
        return list(changes)
    stmt = select(stage_changes.c.idempotency_key).where(stage_changes.c.idempotency_key.in_(keys))
    seen = set((await conn.execute(stmt)).scalars())
    return [c for c in changes if c.idempotency_key is None or c.idempotency_key not in seen]


def _history_values(change: LeadStageChange, path: StagePath, occurred_at: datetime) -> dict[str, Any]:
    return {
        "lead_id": change.lead_id,
        "from_stage": str(change.change.before),
        "to_stage": str(change.change.after),
        "occurred_at": occurred_at,
        "path": str(path),
        "reason": change.change.reason,
        "idempotency_key": change.idempotency_key,
    }


def _touchpoint_values(change: LeadStageChange, path: StagePath, occurred_at: datetime) -> dict[str, Any]:
    move = change.change
    return {
        "lead_id": change.lead_id,
        "kind": STAGE_CHANGE,
        "occurred_at": occurred_at,
        "campaign_id": None,
        "step_id": None,
        "delivery_id": None,
        "message_id": None,
        "detail": {"before": str(move.before), "after": str(move.after), "reason": move.reason, "path": path},
    }


async def fetch_stage_history(conn: AsyncConnection, lead_id: int, *, limit: int) -> list[StageHistoryRow]:
    """The lead's latest `limit` stage changes, newest first."""
    stmt = (
        select(stage_changes)
        .where(stage_changes.c.lead_id == lead_id)
        .order_by(stage_changes.c.occurred_at.desc(), stage_changes.c.id.desc())
        .limit(limit)
    )
    return [
        StageHistoryRow(
            occurred_at=row.occurred_at,
            before=Stage(row.from_stage),
            after=Stage(row.to_stage),
            path=StagePath(row.path),
            reason=row.reason,
        )
        for row in await conn.execute(stmt)
    ]
