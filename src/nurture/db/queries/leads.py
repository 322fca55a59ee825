"""Queries on leads: upsert from imports, suppression.

An upsert never writes a known lead's stage: it reports the known leads whose row asks for another stage,
and the caller decides (`core.stages`) and moves them through `db.queries.stages.change_stage`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.lead import PROFILE_FIELDS, LeadRow
from nurture.core.stages import Stage
from nurture.db.queries.tables import deliveries, dialect_insert, enrollments, leads


@dataclass(frozen=True, slots=True)
class KnownStage:
    """A known lead whose imported row asks for another stage than the one it has."""

    lead_id: int
    email: str
    stage: Stage  # as stored


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    inserted: int
    updated: int
    other_stage: tuple[KnownStage, ...] = ()  # merged leads whose row gives another stage; left unchanged


async def upsert_leads(conn: AsyncConnection, rows: Sequence[LeadRow], *, now: datetime) -> UpsertCounts:
    """Insert new leads and merge the rest by email: given fields overwrite, empty ones keep the old value,
    tags are merged; a known lead's stage is left as it is and reported in `other_stage` when the row gives
    another. `rows` must not repeat an email. Every touched lead is marked for an enrollment check."""
    if not rows:
        return UpsertCounts(0, 0)
    if conn.dialect.name == "postgresql":
        return await _upsert_leads_staged(conn, rows, now=now)
    # Insert every row, skipping emails that exist: the unique index decides, so no lookup is planned
    # against the stale statistics of a table an import is filling. executemany is paged into multi-row
    # INSERTs by SQLAlchemy: one statement with every row would pass asyncpg's 32,767 bind parameters.
    stmt = dialect_insert(conn, leads).on_conflict_do_nothing().returning(leads.c.email)
    inserted = set((await conn.execute(stmt, [_insert_values(r, now) for r in rows])).scalars())
    # Rows that existed (or that a concurrent import inserted first) are merged.
    to_update = [_update_values(r, now) for r in rows if r.email not in inserted]
    if to_update:
        await conn.execute(_merge_statement(conn), to_update)
    asked = {r.email: r.stage for r in rows if r.stage is not None and r.email not in inserted}
    other = await _other_stages(conn, asked)
    return UpsertCounts(inserted=len(inserted), updated=len(to_update), other_stage=other)


async def _other_stages(conn: AsyncConnection, asked: dict[str, Stage]) -> tuple[KnownStage, ...]:
    """The known leads among `asked` (email -> stage the row gives) that are at another stage: one lookup
    for the batch, as `suppress_listed_addresses` makes in the same transaction."""
    if not asked:
        return ()
    stmt = select(leads.c.id, leads.c.email, leads.c.stage).where(leads.c.email.in_(list(asked)))
    return tuple(
        KnownStage(row.id, row.email, Stage(row.stage))
        for row in await conn.execute(stmt)
        if row.stage != asked[row.email]
    )


# The columns an import writes, in the order they are staged.
_STAGED = ("email", *PROFILE_FIELDS, "grade", "stage", "tags")
_STAGED_LIST = ", ".join(_STAGED)
_MERGED_FIELDS = (*PROFILE_FIELDS, "grade")  # a given value overwrites, an empty one keeps the old
_INSERTED_VALUES = _STAGED_LIST.replace("stage", "coalesce(stage, 'lead')")


async def _upsert_leads_staged(
    conn: AsyncConnection, rows: Sequence[LeadRow], *, now: datetime
) -> UpsertCounts:
    """PostgreSQL: COPY the batch into a temporary table, then insert and merge from it with one statement
    each (the merge also answers which known leads the rows ask to move). Binding 15 values per row through
    multi-row INSERTs cost more than validating the rows."""
    # Same column types as `leads` (a too-long value fails as an INSERT would), no constraints; dropped at
    # commit, so a pooled connection carries nothing over.
    await conn.execute(
        text(
            f"CREATE TEMPORARY TABLE lead_import ON COMMIT DROP AS SELECT {_STAGED_LIST} FROM leads "
            "WITH NO DATA"
        )
    )
    raw = await conn.get_raw_connection()
    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
        "lead_import", records=[_staged_record(r) for r in rows], columns=_STAGED
    )
    # The unique index on email decides what is new; rows that existed (or that a concurrent import
    # inserted first) are merged: given fields overwrite, empty ones keep the old value, tags are merged.
    inserted = (
        (
            await conn.execute(
                text(
                    f"INSERT INTO leads ({_STAGED_LIST}, score, suppressed, enroll_pending, created_at, "
                    f"updated_at) SELECT {_INSERTED_VALUES}, 0, false, true, :now, :now "
                    "FROM lead_import ON CONFLICT (email) DO NOTHING RETURNING email"
                ),
                {"now": now},
            )
        )
        .scalars()
        .all()
    )
    updated = len(rows) - len(inserted)
    known: tuple[KnownStage, ...] = ()
    if updated:
        # The merge never writes the stage, so what it returns is the stage as stored; it holds the rows,
        # so that stays true until commit. A lead inserted just now has the row's stage and is not merged.
        merged = ", ".join(f"{name} = coalesce(s.{name}, leads.{name})" for name in _MERGED_FIELDS)
        other = await conn.execute(
            text(
                f"WITH merged AS (UPDATE leads SET {merged}, tags = leads.tags || s.tags, updated_at = :now, "
                "enroll_pending = true FROM lead_import s "
                "WHERE leads.email = s.email AND s.email <> ALL(:inserted) "
                "RETURNING leads.id, leads.email, leads.stage, s.stage AS asked) "
                "SELECT id, email, stage FROM merged WHERE asked IS NOT NULL AND asked <> stage"
            ),
            {"now": now, "inserted": list(inserted)},
        )
        known = tuple(KnownStage(row.id, row.email, Stage(row.stage)) for row in other)
    await conn.execute(text("DROP TABLE lead_import"))  # the transaction may stage another batch
    return UpsertCounts(inserted=len(inserted), updated=updated, other_stage=known)


def _staged_record(row: LeadRow) -> tuple[str | None, ...]:
    profile = [row.profile.get(name) for name in PROFILE_FIELDS]
    stage = str(row.stage) if row.stage is not None else None
    return (row.email, *profile, row.grade, stage, json.dumps(dict(row.tags)))


def _merge_statement(conn: AsyncConnection) -> Any:
    merged: dict[str, ColumnElement[Any]] = {
        name: func.coalesce(bindparam(f"p_{name}", type_=leads.c[name].type), leads.c[name])
        for name in _MERGED_FIELDS
    }
    new_tags = bindparam("p_tags", type_=leads.c.tags.type)
    if conn.dialect.name == "postgresql":
        merged["tags"] = leads.c.tags.op("||")(new_tags)
    else:
        merged["tags"] = func.json_patch(leads.c.tags, func.json(new_tags))
    return (
        update(leads)
        .where(leads.c.email == bindparam("p_email"))
        .values(**merged, updated_at=bindparam("p_now", type_=leads.c.updated_at.type), enroll_pending=True)
    )


def _insert_values(row: LeadRow, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {name: row.profile.get(name) for name in PROFILE_FIELDS}
    values.update(
        email=row.email,
        grade=row.grade,
        stage=row.stage or "lead",
        score=0,
        tags=dict(row.tags),
        suppressed=False,
        enroll_pending=True,
        created_at=now,
        updated_at=now,
    )
    return values


def _update_values(row: LeadRow, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {f"p_{name}": row.profile.get(name) for name in PROFILE_FIELDS}
    values.update(p_email=row.email, p_grade=row.grade, p_tags=dict(row.tags), p_now=now)
    return values


async def suppress_lead(conn: AsyncConnection, lead_id: int, *, reason: str, now: datetime) -> None:
    """Stop all mail to a lead: flag it, end its active enrollments and cancel their open deliveries."""
    await conn.execute(
        update(leads)
        .where(leads.c.id == lead_id)
        .values(suppressed=True, suppressed_reason=reason, updated_at=now)
    )
    await conn.execute(
        update(enrollments)
        .where(enrollments.c.lead_id == lead_id, enrollments.c.state == "active")
        .values(state="exited", exit_reason=reason, ended_at=now)
    )
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.lead_id == lead_id, deliveries.c.status.in_(("pending", "claimed")))
        .values(status="cancelled", last_error=reason)
    )


async def count_leads(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(leads))).scalar_one())


@dataclass(frozen=True, slots=True)
class Suppression:
    suppressed: bool
    reason: str | None


async def lock_lead_suppression(conn: AsyncConnection, lead_id: int) -> Suppression | None:
    """Read a lead's suppression and hold its row until commit, so two concurrent changes of one lead run one
    after the other (on SQLite, BEGIN IMMEDIATE already serialises writers); None for an unknown lead."""
    stmt = select(leads.c.suppressed, leads.c.suppressed_reason).where(leads.c.id == lead_id)
    row = (await conn.execute(stmt.with_for_update())).first()
    return None if row is None else Suppression(bool(row.suppressed), row.suppressed_reason)
