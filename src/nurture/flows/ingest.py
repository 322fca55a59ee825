"""Leads in: validate every inbound row in the core, upsert the good ones in batches, report the rest.

Nothing is enqueued here: enrolling is the scheduler tick's job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from nurture.core.lead import LeadRow, RowError, normalise_row
from nurture.db.engine import Database
from nurture.db.queries.leads import upsert_leads

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
    rows: Iterable[Mapping[str, str | None]],
    *,
    now: datetime,
    first_row_number: int = 2,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert `rows` (e.g. from csv.DictReader) by email; every bad row is reported and the good rows go in.

    Row numbers count from `first_row_number` (2 for a CSV file whose line 1 is the header). A row whose email
    appears again later in the same batch is merged into it. `on_progress` is called with the number of rows
    handled after each batch.
    """
    report = ImportReport()
    batch: dict[str, LeadRow] = {}
    for number, raw in enumerate(rows, start=first_row_number):
        report.total += 1
        result = normalise_row(raw, row_number=number)
        if isinstance(result, RowError):
            report.rejected.append(result)
            continue
        batch[result.email] = _merge(batch.get(result.email), result)
        if len(batch) >= batch_size:
            await _flush(db, batch, report, now, on_progress)
    await _flush(db, batch, report, now, on_progress)
    log.info(
        "import finished rows=%d inserted=%d updated=%d rejected=%d",
        report.total,
        report.inserted,
        report.updated,
        len(report.rejected),
    )
    return report


async def _flush(
    db: Database,
    batch: dict[str, LeadRow],
    report: ImportReport,
    now: datetime,
    on_progress: Callable[[int], None] | None,
) -> None:
    if batch:
        async with db.transaction() as conn:
            counts = await upsert_leads(conn, list(batch.values()), now=now)
        report.inserted += counts.inserted
        report.updated += counts.updated
        batch.clear()
    if on_progress is not None:
        on_progress(report.total)


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
