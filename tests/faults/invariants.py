"""The invariants every fault test ends with, checked on the database rows and what the SMTP server kept.

I1 at most one SMTP acceptance per delivery (per Message-ID, and per lead + campaign + step);
I2 every delivery due before the end reaches a final state; `unknown` only where the test allows it, and only
   for messages inside an SMTP conversation: the ones the server kept, plus at most one per open connection;
I3 deliveries marked sent == distinct Message-IDs accepted (less those of `unknown` deliveries);
I4 no message to an address after its suppression committed (after a 5xx, or a time the test gives).

Also the SMTP window: from the server keeping a message to the commit that records it, in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text

from nurture.db.engine import Database
from tests.faults.fault_smtp import FaultSmtpServer
from tests.faults.harness import FINAL


@dataclass(frozen=True, slots=True)
class Summary:
    faults: int
    deliveries: int
    duplicates: int
    lost: int
    unknown: int
    unknown_never_kept: int  # unknown deliveries the server never had: touches lost, not in doubt
    window_p99_ms: float | None

    def line(self, name: str) -> str:
        window = "n/a" if self.window_p99_ms is None else f"{self.window_p99_ms:.1f} ms"
        return (
            f"[faults] {name}: faults injected={self.faults} deliveries checked={self.deliveries} "
            f"duplicates={self.duplicates} lost={self.lost} unknown={self.unknown} "
            f"(never reached the server: {self.unknown_never_kept}) smtp window p99={window}"
        )


@dataclass(slots=True)
class CommitWatcher:
    """Polls the database for newly sent deliveries and notes when each Message-ID's commit became visible:
    the SMTP window measured from outside when the sender does not record it itself."""

    db: Database
    seen: dict[str, float] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with self.db.transaction() as conn:
                    rows = await conn.execute(
                        text(
                            "SELECT message_id FROM deliveries "
                            "WHERE status = 'sent' AND message_id IS NOT NULL"
                        )
                    )
                    now = time.time()
                    for (message_id,) in rows:
                        self.seen.setdefault(message_id, now)
            except Exception:  # the database may be the fault under test: keep watching
                pass
            await asyncio.sleep(0.005)


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def check_invariants(
    db: Database,
    server: FaultSmtpServer,
    *,
    name: str,
    faults: int,
    due_before: datetime,
    max_unknown: int = 0,
    suppressed_since: dict[str, float] | None = None,
    watcher: CommitWatcher | None = None,
) -> Summary:
    """Assert I1-I4 and print the summary line; return the figures."""
    async with db.transaction() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT d.id, d.status, d.due_at, d.message_id, d.campaign_id, d.step_id, l.email "
                    "FROM deliveries d JOIN leads l ON l.id = d.lead_id"
                )
            )
        ).all()
        windows = [
            float(ms)
            for (ms,) in await conn.execute(
                text("SELECT detail ->> 'smtp_window_ms' FROM touchpoints WHERE kind = 'email_sent'")
            )
            if ms is not None
        ]
    accepted = server.snapshot()
    by_key = {(r.email.lower(), r.campaign_id, r.step_id): r for r in rows}

    # I1: one acceptance per Message-ID and per delivery
    per_id = Counter(a.message_id for a in accepted)
    per_key = Counter((a.rcpt, a.campaign, a.step) for a in accepted)
    duplicates = sum(n - 1 for n in per_id.values() if n > 1) + sum(n - 1 for n in per_key.values() if n > 1)
    unmatched = [key for key in per_key if key not in by_key]

    # I2: everything due has a final state; `unknown` within what the test allows
    lost = [r.id for r in rows if r.due_at <= due_before and r.status not in FINAL]
    unknown = [r for r in rows if r.status == "unknown"]

    # I3: sent deliveries == accepted Message-IDs, apart from the unknown ones the server may have kept
    unknown_keys = {(r.email.lower(), r.campaign_id, r.step_id) for r in unknown}
    never_kept = unknown_keys - set(per_key)
    sent_ids = {r.message_id for r in rows if r.status == "sent"}
    accepted_ids = {a.message_id for a in accepted if (a.rcpt, a.campaign, a.step) not in unknown_keys}

    # I4: nothing kept for an address after a 5xx for it, or after a suppression time the test gives
    bounced_at: dict[str, float] = {}
    for attempt in server.attempts:
        if attempt.reply.startswith("5"):
            bounced_at.setdefault(attempt.rcpt, attempt.wall)
    for address, since in (suppressed_since or {}).items():
        bounced_at[address.lower()] = min(since, bounced_at.get(address.lower(), since))
    after_suppression = [a for a in server.attempts if a.rcpt in bounced_at and a.wall > bounced_at[a.rcpt]]

    if not windows and watcher is not None:
        accepted_wall = {a.message_id: a.wall for a in accepted}
        windows = [(seen - accepted_wall[m]) * 1000 for m, seen in watcher.seen.items() if m in accepted_wall]
    summary = Summary(
        faults=faults,
        deliveries=len(rows),
        duplicates=duplicates,
        lost=len(lost),
        unknown=len(unknown),
        unknown_never_kept=len(never_kept),
        window_p99_ms=p99(windows),
    )
    print(summary.line(name))
    assert duplicates == 0, (
        f"I1: {duplicates} duplicate acceptances: {[k for k, n in per_key.items() if n > 1][:5]}"
    )
    assert not unmatched, f"I1: the server kept messages of no delivery: {unmatched[:5]}"
    assert not lost, f"I2: {len(lost)} deliveries due but not final, e.g. {lost[:5]}"
    assert len(unknown) <= max_unknown, (
        f"I2: {len(unknown)} unknown deliveries, at most {max_unknown} allowed"
    )
    assert len(never_kept) <= server.peak_connections, (
        f"I2: {len(never_kept)} deliveries marked unknown were never sent to the server "
        f"(at most {server.peak_connections} connections were open to be mid-transfer)"
    )
    assert sent_ids == accepted_ids, (
        f"I3: sent but not kept {sorted(sent_ids - accepted_ids)[:3]}, kept but not sent "
        f"{sorted(accepted_ids - sent_ids)[:3]}"
    )
    assert not after_suppression, f"I4: mail after suppression: {after_suppression[:3]}"
    return summary
