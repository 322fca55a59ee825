"""The scheduler's queries on due work: claim due deliveries within per-domain caps, skip late ones, and
report sends abandoned mid-conversation.

Every query here reads through the partial index on open deliveries' `due_at`, so a tick costs O(due rows),
not O(all deliveries).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, exists, false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.ratelimit import RateLimits, WindowCount, grant
from nurture.db import models
from nurture.db.queries.deliveries import OPEN, append_touchpoints
from nurture.db.queries.tables import deliveries, dialect_insert, enrollments, leads

_windows = models.DomainSendWindow.__table__
assert isinstance(_windows, Table)
domain_windows: Table = _windows

# With caps, a claim reads this many times `limit` due rows, so one capped domain's backlog cannot fill the
# whole batch while other domains wait.
_SCAN_FACTOR = 2


def _claimable(now: datetime) -> Any:
    return and_(
        deliveries.c.status.in_(OPEN),
        deliveries.c.due_at <= now,
        or_(deliveries.c.status == "pending", deliveries.c.claimed_until <= now),
    )


async def claim_due_deliveries(
    conn: AsyncConnection,
    *,
    now: datetime,
    lease: timedelta,
    limit: int,
    limits: RateLimits | None = None,
    paused: Collection[str] = (),
) -> list[int]:
    """Claim up to `limit` due deliveries (and those whose earlier claim expired), earliest due first, and
    return their ids. Domains in `paused` (in SMTP backoff) are left alone; a capped domain gets at most
    what its current window still allows, counted in `domain_send_windows` so the caps hold across schedulers.

    On PostgreSQL the rows are locked with SKIP LOCKED, so concurrent schedulers claim disjoint sets.
    """
    limits = limits or RateLimits()
    if not limits.any_capped:
        return await _claim_uncapped(conn, now=now, lease=lease, limit=limit, paused=paused)
    known = await _window_counts(conn)
    exhausted = {
        domain
        for domain, count in known.items()
        if (rate := limits.rate_for(domain)) is not None and grant(count, rate, 1, now)[0] == 0
    }
    due = (
        select(deliveries.c.id, deliveries.c.recipient_domain)
        .where(_claimable(now), _not_in_domains({*paused, *exhausted}))
        .order_by(deliveries.c.due_at, deliveries.c.id)
        .limit(limit * _SCAN_FACTOR)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    candidates = [(row.id, row.recipient_domain) for row in await conn.execute(due)]
    wanted = Counter(domain for _, domain in candidates)
    rates = {d: rate for d in sorted(wanted) if (rate := limits.rate_for(d)) is not None}
    windows = await _lock_window_counts(conn, list(rates), now=now)
    allowed = {d: grant(windows.get(d), rate, wanted[d], now)[0] for d, rate in rates.items()}
    chosen = _earliest_within(candidates, allowed, limit)
    # Count only what was taken: the batch limit may have cut a domain's allowance short.
    picked = set(chosen)
    taken = Counter(domain for delivery_id, domain in candidates if delivery_id in picked)
    updated = [(d, grant(windows.get(d), rate, taken[d], now)[1]) for d, rate in rates.items()]
    if updated:
        await conn.execute(
            _store_count_statement(),
            [{"b_domain": d, "b_start": c.window_start, "b_used": c.used} for d, c in updated],
        )
    if chosen:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(chosen))
            .values(status="claimed", claimed_until=now + lease)
        )
    return chosen


def _earliest_within(
    candidates: Sequence[tuple[int, str]], allowed: Mapping[str, int], limit: int
) -> list[int]:
    """The first `limit` candidates (already earliest due first) that fit their domain's allowance."""
    chosen: list[int] = []
    taken: Counter[str] = Counter()
    for delivery_id, domain in candidates:
        if len(chosen) == limit:
            break
        if taken[domain] < allowed.get(domain, limit):
            chosen.append(delivery_id)
            taken[domain] += 1
    return chosen


async def _claim_uncapped(
    conn: AsyncConnection, *, now: datetime, lease: timedelta, limit: int, paused: Collection[str]
) -> list[int]:
    due = (
        select(deliveries.c.id)
        .where(_claimable(now), _not_in_domains(paused))
        .order_by(deliveries.c.due_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(deliveries)
        .where(deliveries.c.id.in_(due.scalar_subquery()))
        .values(status="claimed", claimed_until=now + lease)
        .returning(deliveries.c.id, deliveries.c.due_at)
    )
    rows = (await conn.execute(stmt)).all()
    return [row.id for row in sorted(rows, key=lambda r: (r.due_at, r.id))]


def _not_in_domains(domains: Collection[str]) -> Any:
    return deliveries.c.recipient_domain.not_in(sorted(domains)) if domains else ~false()


async def _window_counts(conn: AsyncConnection) -> dict[str, WindowCount]:
    """Every domain's count, unlocked: used to leave exhausted domains out of the scan."""
    rows = await conn.execute(select(domain_windows))
    return {row.domain: WindowCount(row.window_start, row.claimed) for row in rows}


async def _lock_window_counts(
    conn: AsyncConnection, domains: Sequence[str], *, now: datetime
) -> dict[str, WindowCount]:
    """Create missing rows for `domains` and lock them all until commit; return their counts.

    One upsert does both, row by row in sorted order, so two schedulers always take the locks in the same
    order and never deadlock (SQLite's BEGIN IMMEDIATE already serialises claims).
    """
    if not domains:
        return {}
    stmt = dialect_insert(conn, domain_windows).values(
        [{"domain": d, "window_start": now, "claimed": 0} for d in sorted(domains)]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[domain_windows.c.domain], set_={"claimed": domain_windows.c.claimed}
    ).returning(domain_windows.c.domain, domain_windows.c.window_start, domain_windows.c.claimed)
    rows = await conn.execute(stmt)
    return {row.domain: WindowCount(row.window_start, row.claimed) for row in rows}


def _store_count_statement() -> Any:
    return (
        update(domain_windows)
        .where(domain_windows.c.domain == bindparam("b_domain"))
        .values(
            window_start=bindparam("b_start", type_=domain_windows.c.window_start.type),
            claimed=bindparam("b_used"),
        )
    )


async def skip_late_deliveries(
    conn: AsyncConnection, *, now: datetime, late_after: Mapping[str, timedelta]
) -> list[int]:
    """Mark `skipped` (reason `late`, with a touchpoint) every open delivery of a campaign in `late_after`
    that fell due longer ago than the campaign allows; complete enrollments left with nothing open."""
    if not late_after:
        return []
    oldest_cutoff = now - min(late_after.values())
    stmt = (
        update(deliveries)
        .where(
            _claimable(now),
            deliveries.c.due_at < oldest_cutoff,
            or_(
                *(
                    and_(deliveries.c.campaign_id == campaign_id, deliveries.c.due_at < now - after)
                    for campaign_id, after in sorted(late_after.items())
                )
            ),
        )
        .values(status="skipped", last_error="late", claimed_until=None)
        .returning(
            deliveries.c.id,
            deliveries.c.lead_id,
            deliveries.c.enrollment_id,
            deliveries.c.campaign_id,
            deliveries.c.step_id,
            deliveries.c.due_at,
        )
    )
    skipped = (await conn.execute(stmt)).all()
    if not skipped:
        return []
    await append_touchpoints(
        conn,
        [
            {
                "lead_id": row.lead_id,
                "kind": "email_skipped",
                "occurred_at": now,
                "campaign_id": row.campaign_id,
                "step_id": row.step_id,
                "delivery_id": row.id,
                "detail": {"reason": "late", "due_at": row.due_at.isoformat()},
            }
            for row in skipped
        ],
    )
    await _complete_enrollments_without_open_work(conn, {row.enrollment_id for row in skipped}, now=now)
    return [row.id for row in skipped]


async def _complete_enrollments_without_open_work(
    conn: AsyncConnection, enrollment_ids: Collection[int], *, now: datetime
) -> None:
    open_work = exists().where(
        deliveries.c.enrollment_id == enrollments.c.id,
        deliveries.c.status.in_((*OPEN, "sending")),
    )
    done = (
        (
            await conn.execute(
                update(enrollments)
                .where(
                    enrollments.c.id.in_(sorted(enrollment_ids)), enrollments.c.state == "active", ~open_work
                )
                .values(state="completed", ended_at=now)
                .returning(enrollments.c.lead_id)
            )
        )
        .scalars()
        .all()
    )
    if done:  # the lead may now enter its next campaign
        await conn.execute(update(leads).where(leads.c.id.in_(done)).values(enroll_pending=True))


_STOPPED = "worker stopped during the SMTP conversation"


async def mark_stale_sending_unknown(
    conn: AsyncConnection, *, now: datetime, older_than: timedelta
) -> list[int]:
    """Deliveries stuck in `sending` (their worker died mid-send) become `unknown`: the message may or may
    not have left, so they are reported and never re-sent automatically."""
    rows = await conn.execute(
        update(deliveries)
        .where(deliveries.c.status == "sending", deliveries.c.sending_at <= now - older_than)
        .values(
            status="unknown",
            # what an earlier attempt heard (a 421, a held-back reason) stays readable
            last_error=_STOPPED + func.coalesce(" (before: " + deliveries.c.last_error + ")", ""),
        )
        .returning(
            deliveries.c.id,
            deliveries.c.lead_id,
            deliveries.c.campaign_id,
            deliveries.c.step_id,
            deliveries.c.last_error,
        )
    )
    found = rows.all()
    await append_touchpoints(
        conn,
        [
            {
                "lead_id": row.lead_id,
                "kind": "email_unknown",
                "occurred_at": now,
                "campaign_id": row.campaign_id,
                "step_id": row.step_id,
                "delivery_id": row.id,
                "detail": {"error": row.last_error},
            }
            for row in found
        ],
    )
    return [row.id for row in found]
