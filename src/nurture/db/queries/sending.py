"""Set-based queries of the send path: a whole batch of claimed deliveries is taken in one statement, each
message moves to `sending` just before its SMTP transaction (in groups: whatever is about to go at the same
moment), and a group of outcomes is recorded in a few statements however many it holds.

A taken delivery stays `claimed` (with `sending_at` set) until its own message is about to go, so a worker
killed mid-batch leaves the messages it never started `claimed`, to be claimed and sent again once their
lease lapses; only those between `sending` and their recorded outcome become `unknown`.

The leads of a batch are locked (PostgreSQL: `FOR UPDATE`, in id order, before the deliveries are touched,
the same order as every other writer of a lead), so two workers holding deliveries of one lead decide its
frequency cap one after the other. SQLite runs every transaction with BEGIN IMMEDIATE, one at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.queries.deliveries import SendJob
from nurture.db.queries.tables import deliveries, enrollments, lead_profile, lead_value, leads, touchpoints

IN_FLIGHT = ("pending", "claimed", "sending")
HELD = ("claimed", "sending")  # ours: taken by this worker, or on its way to the server
# The same as an OR: an IN list cannot be used in an executemany statement.
_IS_HELD = or_(*(deliveries.c.status == status for status in HELD))
# Emails a lead has been sent, or may have been: what a frequency cap counts (a shadowed one too, so a
# shadow run shows what the live run would do), with those a worker has taken to send now.
COUNTED = ("sending", "sent", "unknown", "shadowed")


async def take_batch(conn: AsyncConnection, delivery_ids: Collection[int], *, now: datetime) -> list[SendJob]:
    """Take those of `delivery_ids` that are still `claimed` (`sending_at` = now) and load what sending needs.

    The others (sent already, cancelled, or moved on by a duplicate message) are left alone and not
    returned. A job's `attempts` is the attempt about to be made; `mark_sending` counts it.
    """
    ids = sorted(set(delivery_ids))
    if not ids:
        return []
    load = (
        select(
            leads,
            deliveries.c.id.label("delivery_id"),
            deliveries.c.enrollment_id,
            deliveries.c.campaign_id,
            deliveries.c.step_id,
            deliveries.c.due_at.label("delivery_due_at"),
            enrollments.c.enrolled_at,
        )
        .join(deliveries, deliveries.c.lead_id == leads.c.id)
        .join(enrollments, enrollments.c.id == deliveries.c.enrollment_id)
        .where(deliveries.c.id.in_(ids), deliveries.c.status == "claimed")
        .order_by(leads.c.id, deliveries.c.id)
    )
    if conn.dialect.name == "postgresql":
        load = load.with_for_update(of=leads)
    rows = (await conn.execute(load)).all()
    if not rows:
        return []
    taken = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_([r.delivery_id for r in rows]), deliveries.c.status == "claimed")
        .values(sending_at=now)
        .returning(deliveries.c.id, deliveries.c.attempts)
    )
    attempts: dict[int, int] = {r.id: r.attempts + 1 for r in taken}
    return [
        SendJob(
            delivery_id=r.delivery_id,
            enrollment_id=r.enrollment_id,
            campaign_id=r.campaign_id,
            step_id=r.step_id,
            attempts=attempts[r.delivery_id],
            enrolled_at=r.enrolled_at,
            lead=lead_value(r),
            profile=lead_profile(r),
            due_at=r.delivery_due_at,
        )
        for r in rows
        if r.delivery_id in attempts
    ]


async def recent_sends(
    conn: AsyncConnection, lead_ids: Collection[int], *, since: datetime, excluding: Collection[int]
) -> dict[int, list[datetime]]:
    """When each lead was (or is being) emailed after `since`, leaving out the deliveries `excluding`."""
    if not lead_ids:
        return {}
    at = func.coalesce(deliveries.c.sent_at, deliveries.c.sending_at)
    counted = or_(
        deliveries.c.status.in_(COUNTED),
        and_(deliveries.c.status == "claimed", deliveries.c.sending_at.is_not(None)),  # taken by a worker
    )
    rows = await conn.execute(
        select(deliveries.c.lead_id, at.label("at")).where(
            deliveries.c.lead_id.in_(sorted(set(lead_ids))),
            counted,
            at > since,
            deliveries.c.id.not_in(sorted(set(excluding))),
        )
    )
    found: dict[int, list[datetime]] = defaultdict(list)
    for row in rows:
        found[row.lead_id].append(row.at)
    return found


@dataclass(slots=True)
class Finished:
    """Final states of deliveries, written together: the delivery rows and their touchpoints."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    touches: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        job: SendJob,
        *,
        status: str,
        kind: str,
        now: datetime,
        detail: dict[str, Any],
        message_id: str | None = None,
        variant: str | None = None,
    ) -> None:
        sent_at = now if status in ("sent", "shadowed") else None
        self.rows.append(
            {
                "d_id": job.delivery_id,
                "d_status": status,
                "d_message_id": message_id,
                "d_sent_at": sent_at,
                "d_error": detail.get("error"),
                "d_variant": variant,
            }
        )
        self.touches.append(
            {
                "lead_id": job.lead.id,
                "kind": kind,
                "occurred_at": now,
                "campaign_id": job.campaign_id,
                "step_id": job.step_id,
                "delivery_id": job.delivery_id,
                "message_id": message_id,
                "detail": detail,
            }
        )


_FINISH = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("d_id"), _IS_HELD)
    .values(
        status=bindparam("d_status"),
        message_id=bindparam("d_message_id"),
        sent_at=bindparam("d_sent_at"),
        last_error=bindparam("d_error"),
        variant=bindparam("d_variant"),
        claimed_until=None,
    )
)


async def record_finished(conn: AsyncConnection, finished: Finished) -> None:
    """Write the final states and their touchpoints: one UPDATE (executemany) and one multi-row INSERT."""
    if finished.rows:
        await conn.execute(_FINISH, finished.rows)
        await conn.execute(touchpoints.insert(), finished.touches)


_COMPLETE = (
    update(enrollments)
    .where(
        enrollments.c.id.in_(bindparam("e_ids", expanding=True)),
        enrollments.c.state == "active",
        ~exists().where(
            and_(deliveries.c.enrollment_id == enrollments.c.id, deliveries.c.status.in_(IN_FLIGHT))
        ),
    )
    .values(state="completed", exit_reason=None, ended_at=bindparam("e_now"))
    .returning(enrollments.c.id, enrollments.c.lead_id)
)


async def complete_finished_enrollments(
    conn: AsyncConnection, enrollment_ids: Collection[int], *, now: datetime
) -> list[int]:
    """Complete those of `enrollment_ids` that have no delivery left in flight; return their ids.

    Their leads may be enrolled in another campaign now. (The statement is built once: this runs for every
    group of outcomes.)
    """
    if not enrollment_ids:
        return []
    done = (await conn.execute(_COMPLETE, {"e_ids": sorted(set(enrollment_ids)), "e_now": now})).all()
    if done:
        lead_ids = sorted({r.lead_id for r in done})
        await conn.execute(update(leads).where(leads.c.id.in_(lead_ids)).values(enroll_pending=True))
    return [r.id for r in done]


_MARK = (
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("m_ids", expanding=True)), deliveries.c.status == "claimed")
    .values(status="sending", sending_at=bindparam("m_now"), attempts=deliveries.c.attempts + 1)
    .returning(deliveries.c.id)
)


async def mark_sending(conn: AsyncConnection, delivery_ids: Collection[int], *, now: datetime) -> set[int]:
    """Move those of `delivery_ids` still `claimed` to `sending`, counting the attempt; return their ids.

    Committed before their messages go to the server: a duplicate message finds them taken.
    """
    if not delivery_ids:
        return set()
    rows = await conn.execute(_MARK, {"m_ids": sorted(set(delivery_ids)), "m_now": now})
    return set(rows.scalars())


async def return_to_pending(
    conn: AsyncConnection, held: Sequence[tuple[int, datetime, str]], *, give_back_attempt: bool = False
) -> None:
    """Put deliveries we hold back to `pending`: (delivery id, due again at, why) each.

    An attempt made stays counted; `give_back_attempt` uncounts one that was marked `sending` but never
    went out (its domain was paused in between).
    """
    if not held:
        return
    values: dict[str, Any] = {
        "status": "pending",
        "due_at": bindparam("d_due_at"),
        "claimed_until": None,
        "sending_at": None,
        "last_error": bindparam("d_error"),
    }
    if give_back_attempt:
        values["attempts"] = deliveries.c.attempts - 1
    stmt = update(deliveries).where(deliveries.c.id == bindparam("d_id"), _IS_HELD).values(**values)
    await conn.execute(stmt, [{"d_id": i, "d_due_at": at, "d_error": why} for i, at, why in held])
