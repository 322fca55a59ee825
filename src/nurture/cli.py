"""The `nurture` command line. The only caller of `load_settings()`.

Every command has --help, exits non-zero with a one-line reason on failure, and offers --format json where
its output is data.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nurture.catalog import load_catalog
from nurture.clock import FrozenClock, parse_instant
from nurture.db.engine import Database
from nurture.db.migrate import upgrade
from nurture.errors import ConfigErrors, NurtureError
from nurture.flows.ingest import ImportReport, import_leads
from nurture.logs import configure_logging
from nurture.runtime import build_clock
from nurture.service import run_forever, run_tick
from nurture.settings import Settings, load_settings
from nurture.web.server import WebAddress

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Campaigns-as-code B2B lead nurturing.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
leads_app = typer.Typer(no_args_is_help=True, help="Leads in and out.")
app.add_typer(db_app, name="db")
app.add_typer(leads_app, name="leads")
err = Console(stderr=True, soft_wrap=True)


class Format(StrEnum):
    table = "table"
    json = "json"


@contextmanager
def _reported() -> Iterator[None]:
    """Turn our errors into a one-line reason (or one line per config error) and exit status 1."""
    try:
        yield
    except ConfigErrors as exc:
        for error in exc.errors:
            err.print(str(error), markup=False, highlight=False)
        err.print(f"error: {len(exc.errors)} problem(s) found", markup=False)
        raise typer.Exit(1) from None
    except NurtureError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    return settings


Host = Annotated[str, typer.Option(help="Address the tracking web listens on.")]
Port = Annotated[int, typer.Option(help="Port the tracking web listens on.", min=1, max=65535)]


@app.command()
def run(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run everything in one process: scheduler, worker threads, tracking web."""
    with _reported():
        web = WebAddress(host, port)
        asyncio.run(run_forever(_settings(), with_scheduler=True, with_worker=True, web=web))


@app.command()
def scheduler() -> None:
    """Run the scheduler (enroll and dispatch jobs); safe to run several: one leads at a time."""
    with _reported():
        settings = _require_broker(_settings(), "scheduler")
        asyncio.run(run_forever(settings, with_scheduler=True, with_worker=False))


@app.command()
def worker() -> None:
    """Run the Dramatiq worker that sends deliveries (threads: NURTURE_WORKER_THREADS)."""
    with _reported():
        settings = _require_broker(_settings(), "worker")
        asyncio.run(run_forever(settings, with_scheduler=False, with_worker=True))


@app.command("web")
def web_command(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run the tracking web: one-click unsubscribe and the health check (GET /healthz)."""
    with _reported():
        web = WebAddress(host, port)
        asyncio.run(run_forever(_settings(), with_scheduler=False, with_worker=False, web=web))


@app.command()
def tick(
    now: Annotated[
        str | None, typer.Option(help="Run the pass at this instant (ISO-8601; UTC if no offset).")
    ] = None,
    drain: Annotated[
        bool, typer.Option(help="Also run the queued work in-process until the queue is empty.")
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Run one scheduler pass (enroll, then dispatch what is due), for cron-style deployments and tests."""
    with _reported():
        settings = _settings()
        clock = FrozenClock(_parse_now(now)) if now else build_clock(settings)
        # The in-process broker lives only as long as this command: its queue must be drained now.
        drain = drain or settings.redis_url is None
        result = asyncio.run(run_tick(settings, clock=clock, drain_queue=drain))
        summary = {
            "at": clock.now().isoformat(),
            "enrolled": result.enrolled,
            "dispatched": result.claimed,
            "unknown": result.unknown,
            "drained": drain,
        }
        _print_data(
            summary,
            fmt,
            lambda: (
                f"tick at {summary['at']}: enrolled {result.enrolled}, "
                f"dispatched {result.claimed}, unknown {result.unknown}"
            ),
        )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the latest version."""
    with _reported():
        settings = _settings()
        asyncio.run(_upgrade(Database(settings.effective_database_url)))
        typer.echo("database is up to date")


async def _upgrade(db: Database) -> None:
    try:
        await upgrade(db)
    finally:
        await db.aclose()


@app.command()
def validate(
    directory: Annotated[
        Path | None, typer.Argument(help="A project folder with campaigns/ and templates/.")
    ] = None,
) -> None:
    """Check campaigns, templates and the reps file; report every problem as file:line: message."""
    with _reported():
        settings = _settings()
        if directory is None:
            catalog = load_catalog(
                campaigns_dir=settings.campaigns_dir,
                templates_dir=settings.templates_dir,
                reps_file=settings.reps_file,
            )
        else:  # a project folder laid out like this repository
            catalog = load_catalog(
                campaigns_dir=directory / "campaigns",
                templates_dir=directory / "templates",
                reps_file=directory / "reps.yaml",
            )
        steps = sum(len(c.steps) for c in catalog.campaigns.values())
        typer.echo(f"ok: {len(catalog.campaigns)} campaign(s), {steps} step(s), {len(catalog.reps)} rep(s)")


@leads_app.command("import")
def leads_import(
    file: Annotated[Path, typer.Argument(help="CSV file, UTF-8, with a header row including `email`.")],
    rejects: Annotated[
        Path | None, typer.Option(help="Write rejected rows (row, email, reason) to this CSV.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit with status 1 when any row was rejected.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Upsert leads by email; every bad row is reported with its row number while the good rows go in."""
    with _reported():
        settings = _settings()
        if not file.is_file():
            raise NurtureError(f"{file}: no such file")
        report = asyncio.run(_import(settings, file))
        if rejects is not None:
            _write_rejects(rejects, report)
        _print_import(report, fmt)
        if strict and report.rejected:
            raise typer.Exit(1)


async def _import(settings: Settings, file: Path) -> ImportReport:
    db = Database(settings.effective_database_url)
    try:
        if settings.is_embedded:
            await upgrade(db)
        total = _count_rows(file)  # also refuses a file that is not UTF-8, before anything goes in
        with file.open(newline="", encoding="utf-8-sig") as handle, _progress(total) as advance:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "email" not in [f.strip().lower() for f in reader.fieldnames]:
                raise NurtureError(f"{file}:1: the header has no `email` column")
            return await import_leads(db, reader, now=datetime.now(UTC), on_progress=advance)
    finally:
        await db.aclose()


def _count_rows(file: Path) -> int:
    """Count the data lines, checking on the way that every line is UTF-8."""
    lines = 0
    with file.open("rb") as handle:
        for lines, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NurtureError(
                    f"{file}:{lines}: not UTF-8 ({exc.reason} at column {exc.start + 1}); nothing imported"
                ) from None
    return max(lines - 1, 0)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("import", total=total)
        yield lambda done: progress.update(task, completed=done)


def _write_rejects(path: Path, report: ImportReport) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "email", "reason"])
        writer.writerows((r.row, r.email, r.reason) for r in report.rejected)


def _print_import(report: ImportReport, fmt: Format) -> None:
    data = {
        "rows": report.total,
        "inserted": report.inserted,
        "updated": report.updated,
        "rejected": [{"row": r.row, "email": r.email, "reason": r.reason} for r in report.rejected],
    }
    if fmt is Format.json:
        typer.echo(json.dumps(data, ensure_ascii=False))
        return
    for r in report.rejected[:50]:
        err.print(f"row {r.row}: {r.reason}", markup=False, highlight=False)
    if len(report.rejected) > 50:
        err.print(f"... and {len(report.rejected) - 50} more (use --rejects FILE)", markup=False)
    typer.echo(
        f"imported {report.total} row(s): {report.inserted} new, {report.updated} updated, "
        f"{len(report.rejected)} rejected"
    )


def _print_data(data: dict[str, Any], fmt: Format, text: Callable[[], str]) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False) if fmt is Format.json else text())


def _parse_now(value: str) -> datetime:
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise NurtureError(f"--now: {value!r} is not an ISO-8601 instant") from exc


def _require_broker(settings: Settings, command: str) -> Settings:
    if settings.redis_url is None:
        raise NurtureError(f"`nurture {command}` needs NURTURE_REDIS_URL; use `nurture run` for one process")
    return settings


def main() -> None:
    app(prog_name="nurture")


if __name__ == "__main__":
    main()
