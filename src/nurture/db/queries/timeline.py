"""Queries behind a lead's timeline page: its touchpoints a page at a time, those of given kinds, a count.

Touchpoints are ordered newest first by when they happened, then by id (an event may be reported late, so
ids alone are not in time order). A page after the first starts below a cursor: the id of the last
touchpoint of the page before, so a page is found by the `(lead_id, occurred_at)` index however deep it is.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.queries.tables import touchpoints


@dataclass(frozen=True, slots=True)
class TouchpointRow:
    """One touchpoint as stored: what happened to or with the lead, and when."""

    id: int
    occurred_at: datetime
    kind: str  # email_sent, page_visit, score_change, stage_change, alert, ...
    campaign_id: str | None
    step_id: str | None
    delivery_id: int | None
    detail: Mapping[str, Any]


async def fetch_touchpoint_page(
    conn: AsyncConnection, lead_id: int, *, limit: int, before: int | None = None
) -> list[TouchpointRow]:
    """The lead's latest `limit` touchpoints, newest first; with `before`, those older than that touchpoint.

    A `before` that is not a touchpoint of this lead gives no rows.
    """
    stmt = _newest_first(select(touchpoints).where(touchpoints.c.lead_id == lead_id))
    if before is not None:
        at = (
            select(touchpoints.c.occurred_at)
            .where(touchpoints.c.id == before, touchpoints.c.lead_id == lead_id)
            .scalar_subquery()
        )
        same_time_older_id = and_(touchpoints.c.occurred_at == at, touchpoints.c.id < before)
        stmt = stmt.where(or_(touchpoints.c.occurred_at < at, same_time_older_id))
    return [_row(row) for row in await conn.execute(stmt.limit(limit))]


async def fetch_touchpoints_of_kinds(
    conn: AsyncConnection, lead_id: int, kinds: Collection[str], *, limit: int
) -> list[TouchpointRow]:
    """The lead's latest `limit` touchpoints of `kinds` (such as `score_change`), newest first."""
    stmt = select(touchpoints).where(touchpoints.c.lead_id == lead_id, touchpoints.c.kind.in_(kinds))
    return [_row(row) for row in await conn.execute(_newest_first(stmt).limit(limit))]


async def count_touchpoints(conn: AsyncConnection, lead_id: int) -> int:
    stmt = select(func.count()).select_from(touchpoints).where(touchpoints.c.lead_id == lead_id)
    return int((await conn.execute(stmt)).scalar_one())


def _newest_first(stmt: Select[Any]) -> Select[Any]:
    return stmt.order_by(touchpoints.c.occurred_at.desc(), touchpoints.c.id.desc())


def _row(row: Row[Any]) -> TouchpointRow:
    return TouchpointRow(
        id=row.id,
        occurred_at=row.occurred_at,
        kind=row.kind,
        campaign_id=row.campaign_id,
        step_id=row.step_id,
        delivery_id=row.delivery_id,
        detail=dict(row.detail or {}),
    )
