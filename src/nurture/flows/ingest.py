"""Leads in: validate every inbound row in the core, upsert the good ones in batches, report the rest.

A known lead's stage moves only as `core.stages` allows: forward or sideways with a record, backwards only
when the caller gives an explicit reason (`StagePolicy`); a refused move leaves the stage and applies the
rest of the row, which counts as updated and is listed in `ImportReport.stage_refused`. Each batch decides
its moves at once from one lookup and writes them through `change_stage`, in the batch's transaction.

Nothing is enqueued here: enrolling is the scheduler tick's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from nurture.core.lead import DEFAULT_LEAD_LIMITS, LeadLimits, LeadRow, RowError, normalise_row, too_many_tags
from nurture.core.stages import StageChange, StagePath, StageRefusal, decide_stage_move
from nurture.db.engine import Database
from nurture.db.queries.leads import UpsertCounts, upsert_leads
from nurture.db.queries.stages import LeadStageChange, change_stage
from nurture.db.queries.suppressions import suppress_listed_addresses

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StagePolicy:
    """How an import records stage moves, and which may go backwards.

    `reason` is recorded with every move (default: the path's name). `allow_backward` lets every row move
    its lead backwards and needs a `reason`; `row_reasons` (row number -> reason) lets only those rows do so,
    each with its own reason (`POST /api/leads`' `stage_reason`).
    """

    path: StagePath = StagePath.IMPORT
    reason: str | None = None
    allow_backward: bool = False
    row_reasons: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.allow_backward and not self.reason:
            raise ValueError("moving stages backwards needs a reason")

    def explicit_reason(self, row_number: int) -> str | None:
        """The reason that lets row `row_number` move its lead backwards, or None."""
        return self.row_reasons.get(row_number) or (self.reason if self.allow_backward else None)


@dataclass(slots=True)
class ImportReport:
    total: int = 0
    inserted: int = 0
    updated: int = 0
    rejected: list[RowError] = field(default_factory=list)
    stage_refused: list[RowError] = field(default_factory=list)  # updated, but the stage kept
    stages_changed: int = 0

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
    stages: StagePolicy = StagePolicy(),
    limits: LeadLimits = DEFAULT_LEAD_LIMITS,
) -> ImportReport:
    """Upsert `rows` (e.g. from `nurture.csv_input`) by email; every bad row is reported, the good rows go in.

    An item that is already a RowError (a row the CSV reader could not take) is reported as it is.
    Row numbers count from `first_row_number` (2 for a CSV file whose line 1 is the header). A row whose email
    appears again later in the same batch is merged into it. `on_progress` is called with the number of rows
    handled after each batch. `stages` says how stage moves of known leads are recorded and which may go
    backwards.

    Reading and validating (CPU) run in a thread while the previous batch is written, so the database works
    on one batch while the next one is checked; at most one batch is in flight.
    """
    report = ImportReport()
    numbered = enumerate(rows, start=first_row_number)
    writing: asyncio.Task[_Written] | None = None
    written_through = 0  # rows handled up to the end of the batch being written
    reported = 0
    try:
        while True:
            batch = await asyncio.to_thread(_validate_batch, numbered, batch_size, report, stages, limits)
            if writing is not None:
                _count(report, await writing)
                writing = None
                reported = _progress(on_progress, written_through)
            if not batch:
                break
            written_through = report.total
            writing = asyncio.create_task(_write(db, batch, now, stages))
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
    if reported != report.total:  # rows after the last batch were all rejected, or there were none
        _progress(on_progress, report.total)
    report.stage_refused.sort(key=lambda r: r.row)
    log.info(
        "import finished rows=%d inserted=%d updated=%d rejected=%d stages_changed=%d stage_refused=%d",
        report.total,
        report.inserted,
        report.updated,
        len(report.rejected),
        report.stages_changed,
        len(report.stage_refused),
    )
    return report


@dataclass(frozen=True, slots=True)
class _Batch:
    rows: dict[str, LeadRow]  # by email
    stage_rows: dict[str, int]  # email -> number of the row whose stage the merged row carries


@dataclass(frozen=True, slots=True)
class _Written:
    counts: UpsertCounts
    stages_changed: int
    refused: list[RowError]


def _validate_batch(
    numbered: Iterator[tuple[int, Mapping[str, str | None] | RowError]],
    batch_size: int,
    report: ImportReport,
    stages: StagePolicy,
    limits: LeadLimits,
) -> _Batch | None:
    """Read and check rows until `batch_size` distinct emails are ready (or the rows end); bad rows go to
    the report. None when no row was left to write."""
    batch = _Batch({}, {})
    for number, raw in numbered:
        report.total += 1
        result = raw if isinstance(raw, RowError) else normalise_row(raw, row_number=number, limits=limits)
        if isinstance(result, RowError):
            report.rejected.append(result)
            continue
        explicit = stages.explicit_reason(number) if result.stage is not None else None
        if explicit is not None:
            result = replace(result, stage_reason=explicit)
        merged = _merge(batch.rows.get(result.email), result)
        if len(merged.tags) > limits.max_tags:  # each row is within the cap, but not the two together
            report.rejected.append(RowError(number, result.email, too_many_tags(limits)))
            continue
        if result.stage is not None:  # a refused move is reported at the row whose stage was asked
            batch.stage_rows[result.email] = number
        batch.rows[result.email] = merged
        if len(batch.rows) >= batch_size:
            break
    return batch if batch.rows else None


async def _write(db: Database, batch: _Batch, now: datetime, stages: StagePolicy) -> _Written:
    rows = list(batch.rows.values())
    async with db.transaction() as conn:
        counts = await upsert_leads(conn, rows, now=now)
        moves: list[LeadStageChange] = []
        refused: list[RowError] = []
        default_reason = stages.reason or str(stages.path)
        for known in counts.other_stage:
            row = batch.rows[known.email]
            if row.stage is None:  # upsert_leads reports only rows that give a stage
                continue
            move = decide_stage_move(
                known.stage, row.stage, reason=default_reason, explicit_reason=row.stage_reason
            )
            if isinstance(move, StageChange):
                moves.append(LeadStageChange(known.lead_id, move))
            elif isinstance(move, StageRefusal):
                refused.append(RowError(batch.stage_rows[known.email], known.email, move.reason))
        await change_stage(conn, moves, path=stages.path, occurred_at=now)
        await suppress_listed_addresses(conn, [r.email for r in rows], now=now)  # complained or erased before
    return _Written(counts, len(moves), refused)


def _count(report: ImportReport, written: _Written) -> None:
    report.inserted += written.counts.inserted
    report.updated += written.counts.updated
    report.stages_changed += written.stages_changed
    report.stage_refused += written.refused


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
        stage_reason=later.stage_reason if later.stage else earlier.stage_reason,
    )
