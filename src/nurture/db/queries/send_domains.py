"""Per-recipient-domain backoff: a domain whose mail servers said "try later" (421/451, or could not be
reached) is paused, with a pause that doubles per consecutive failure up to a cap, while other domains carry
on. A successful send to the domain clears it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.backoff import backoff
from nurture.db import models
from nurture.db.queries.tables import dialect_insert

_table = models.SendDomain.__table__
assert isinstance(_table, Table)
send_domains: Table = _table


@dataclass(frozen=True, slots=True)
class DomainState:
    domain: str
    paused_until: datetime | None
    failures: int


async def paused_domains(conn: AsyncConnection, now: datetime) -> set[str]:
    """Domains nothing may be sent to at `now` (the scheduler leaves their deliveries unclaimed)."""
    rows = await conn.execute(select(send_domains.c.domain).where(send_domains.c.paused_until > now))
    return set(rows.scalars())


async def domain_states(conn: AsyncConnection, domains: Collection[str]) -> dict[str, DomainState]:
    """The backoff state of those of `domains` that have one (a domain never deferred has none)."""
    if not domains:
        return {}
    rows = await conn.execute(select(send_domains).where(send_domains.c.domain.in_(sorted(domains))))
    return {r.domain: DomainState(r.domain, r.paused_until, r.failures) for r in rows}


async def pause_domain(
    conn: AsyncConnection, domain: str, *, error: str, now: datetime, base: timedelta, cap: timedelta
) -> datetime:
    """Count one more failure of `domain` and pause it; return the end of the pause.

    A failure reported while the domain is already paused (a send that started before the pause) does not
    lengthen it again, so one burst of refusals counts as one failure.
    """
    row = (
        await conn.execute(
            select(send_domains.c.paused_until, send_domains.c.failures)
            .where(send_domains.c.domain == domain)
            .with_for_update()
        )
    ).first()
    if row is not None and row.paused_until is not None and row.paused_until > now:
        paused_until: datetime = row.paused_until
        return paused_until
    failures = (row.failures if row is not None else 0) + 1
    until = now + backoff(failures, base=base, cap=cap)
    values = {"paused_until": until, "failures": failures, "last_error": error[:500], "updated_at": now}
    insert = dialect_insert(conn, send_domains).values(domain=domain, **values)
    await conn.execute(insert.on_conflict_do_update(index_elements=["domain"], set_=values))
    return until


async def clear_domains(conn: AsyncConnection, domains: Collection[str]) -> None:
    """Forget the backoff of `domains`: their servers took a message again."""
    if domains:
        await conn.execute(delete(send_domains).where(send_domains.c.domain.in_(sorted(domains))))


async def unpause_domain(conn: AsyncConnection, domain: str, *, now: datetime) -> None:
    """End a domain's pause now, keeping its failure count (an operator's override)."""
    await conn.execute(
        update(send_domains).where(send_domains.c.domain == domain).values(paused_until=now, updated_at=now)
    )
