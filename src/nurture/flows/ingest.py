"""Leads in: validate every inbound row in the core, upsert the good ones in batches, report the rest.

Nothing is enqueued here: enrolling is the scheduler tick's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from nurture.core.lead import LeadRow, RowError, normalise_row
from nurture.db.engine import Database
from nurture.db.queries.leads import UpsertCounts, upsert_leads
from nurture.db.queries.suppressions import suppress_listed_addresses

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ImportReport:
    total: int = 0
    inserted: int = 0
    updated: int = 0
    rejected: list[RowError] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.inserted + self.updated


async def import_leads(
    db: Database,
    rows: Iterable[Mapping[str, str | None] | RowError],
    *,
    now: datetime,
    first_row_number: int = 2,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert `rows` (e.g. from `nurture.csv_input`) by email; every bad row is reported, the good rows go in.

    An item that is already a RowError (a row the CSV reader could not take) is reported as it is.
    Row numbers count from `first_row_number` (2 for a CSV file whose line 1 is the header). A row whose email
    appears again later in the same batch is merged into it. `on_progress` is called with the number of rows
    handled after each batch.

    Reading and validating (CPU) run in a thread while the previous batch is written, so the database works
    on one batch while the next one is checked; at most one batch is in flight.
    """
    report = ImportReport()
    numbered = enumerate(rows, start=first_row_number)
    writing: asyncio.Task[UpsertCounts] | None = None
    written_through = 0  # rows handled up to the end of the batch being written
    reported = 0
    try:
        while True:
            batch = await asyncio.to_thread(_validate_batch, numbered, batch_size, report)
            if writing is not None:
                counts = await writing
                writing = None
                report.inserted += counts.inserted
                report.updated += counts.updated
                reported = _progress(on_progress, written_through)
            if not batch:
                break
            written_through = report.total
            writing = asyncio.create_task(_write(db, list(batch.values()), now))
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
    if reported != report.total:  # rows after the last batch were all rejected, or there were none
        _progress(on_progress, report.total)
    log.info(
        "import finished rows=%d inserted=%d updated=%d rejected=%d",
        report.total,
        report.inserted,
        report.updated,
        len(report.rejected),
    )
    return report


def _validate_batch(
    numbered: Iterator[tuple[int, Mapping[str, str | None] | RowError]], batch_size: int, report: ImportReport
) -> dict[str, LeadRow]:
    """Read and check rows until `batch_size` distinct emails are ready (or the rows end); bad rows go to
    the report."""
    batch: dict[str, LeadRow] = {}
    for number, raw in numbered:
        report.total += 1
        result = raw if isinstance(raw, RowError) else normalise_row(raw, row_number=number)
        if isinstance(result, RowError):
            report.rejected.append(result)
            continue
        batch[result.email] = _merge(batch.get(result.email), result)
        if len(batch) >= batch_size:
            break
    return batch


async def _write(db: Database, rows: list[LeadRow], now: datetime) -> UpsertCounts:
    async with db.transaction() as conn:
        counts = await upsert_leads(conn, rows, now=now)
        await suppress_listed_addresses(conn, [r.email for r in rows], now=now)  # complained or erased before
    return counts


def _progress(on_progress: Callable[[int], None] | None, rows: int) -> int:
    if on_progress is not None:
        on_progress(rows)
    return rows


def _merge(earlier: LeadRow | None, later: LeadRow) -> LeadRow:
    """Two rows for one email in a batch: later non-empty values win, tags are combined."""
    if earlier is None:
        return later
    return LeadRow(
        email=later.email,
        profile={**earlier.profile, **later.profile},
        grade=later.grade or earlier.grade,
        stage=later.stage or earlier.stage,
        tags={**earlier.tags, **later.tags},
    )
