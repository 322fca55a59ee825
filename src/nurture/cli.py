"""The `nurture` command line. The only caller of `load_settings()`.

Every command has --help, exits non-zero with a one-line reason on failure, and offers --format json where
its output is data.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nurture.catalog import CAMPAIGN_SUFFIXES, Catalog, load_catalog
from nurture.cli_errors import run_guarded
from nurture.clock import FrozenClock, parse_instant
from nurture.core.context import LEAD_FIELDS
from nurture.core.lead import RowError, normalise_email
from nurture.core.tracking import share_url
from nurture.csv_input import CsvLimits, lead_rows, open_csv
from nurture.csv_output import CsvOutput
from nurture.db.engine import Database
from nurture.db.migrate import upgrade
from nurture.db.queries.apikeys import StoredApiKey
from nurture.errors import ConfigErrors, NurtureError
from nurture.flows.engage import find_leads_by_email
from nurture.flows.escalate import RescoreSummary, rescore, rescore_all
from nurture.flows.explain import LeadExplanation, explain_lead, find_lead, scored_event_data
from nurture.flows.ingest import ImportReport, StagePolicy, import_leads
from nurture.flows.versions import ChangeWarning, warn_enrolled_changes
from nurture.logs import configure_logging
from nurture.runtime import build_clock, secret_key
from nurture.scheduler import TickResult
from nurture.service import run_forever, run_tick
from nurture.settings import DEFAULT_HOST, DEFAULT_PORT, Settings, load_settings
from nurture.web.auth import IssuedApiKey, find_active_key, issue_api_key, list_api_keys, revoke_key
from nurture.web.server import WebAddress
from nurture.web.sessions import IssuedLoginLink, issue_login_link, local_path

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Campaigns-as-code B2B lead nurturing.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
leads_app = typer.Typer(no_args_is_help=True, help="Leads in and out.")
lead_app = typer.Typer(
    no_args_is_help=True, help="One lead: its score explained, its campaigns and timeline."
)
app.add_typer(db_app, name="db")
app.add_typer(leads_app, name="leads")
app.add_typer(lead_app, name="lead")
apikey_app = typer.Typer(no_args_is_help=True, help="API keys for POST /api/leads and /api/events.")
link_app = typer.Typer(no_args_is_help=True, help="Tracked links that reps share with a lead.")
app.add_typer(apikey_app, name="apikey")
app.add_typer(link_app, name="link")
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
            err.print(str(error), markup=False, highlight=False, emoji=False)  # "x.yaml:100:" is no emoji
        err.print(f"error: {len(exc.errors)} problem(s) found", markup=False)
        raise typer.Exit(1) from None
    except NurtureError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None


# Services log what they do; every other command prints its result, and logs only when asked to.
SERVICES = frozenset({"run", "scheduler", "worker", "web"})


@dataclass(slots=True)
class _Invocation:
    verbose: bool = False
    service: bool = False


_invocation = _Invocation()


@app.callback()
def _global_options(
    ctx: typer.Context,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Log what the command does on stderr (INFO, or NURTURE_LOG_LEVEL)."
        ),
    ] = False,
) -> None:
    """Campaigns-as-code B2B lead nurturing."""
    _invocation.verbose = verbose
    _invocation.service = ctx.invoked_subcommand in SERVICES


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(fmt=settings.log_format, level=_log_level(settings))
    return settings


def _log_level(settings: Settings) -> str | None:
    """Services and --verbose log at NURTURE_LOG_LEVEL (INFO when unset); other commands only if it is set."""
    if _invocation.service or _invocation.verbose:
        return settings.log_level or "INFO"
    return settings.log_level


KEY_PREFIX_HELP = "its prefix as `nurture apikey list` shows it (nk_1d9f231d_...), or its first 4+ digits."


Host = Annotated[str, typer.Option(help="Address the tracking web listens on.")]
Port = Annotated[int, typer.Option(help="Port the tracking web listens on.", min=1, max=65535)]


@app.command()
def run(host: Host = DEFAULT_HOST, port: Port = DEFAULT_PORT) -> None:
    """Run everything in one process: scheduler, worker threads, tracking web.

    Links point to http://HOST:PORT unless NURTURE_BASE_URL is set.
    """
    with _reported():
        web = WebAddress(host, port)
        settings = _settings().listening_on(host, port)
        asyncio.run(run_forever(settings, with_scheduler=True, with_worker=True, web=web))


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
def web_command(host: Host = DEFAULT_HOST, port: Port = DEFAULT_PORT) -> None:
    """Run the tracking web: pixel, click redirects, site events, the API, unsubscribe, health, metrics.

    Links point to http://HOST:PORT unless NURTURE_BASE_URL is set.
    """
    with _reported():
        web = WebAddress(host, port)
        # Without Redis, re-scores would queue in this process's memory with no worker to run them.
        settings = _require_broker(_settings(), "web").listening_on(host, port)
        asyncio.run(run_forever(settings, with_scheduler=False, with_worker=False, web=web))


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
        data = tick_data(result, at=clock.now(), drained=drain)
        _print_data(data, fmt, lambda: tick_line(data))


def tick_data(result: TickResult, *, at: datetime, drained: bool) -> dict[str, Any]:
    """The pass in figures: what was enrolled and claimed, and (when drained) what the sends came to."""
    data: dict[str, Any] = {
        "at": at.isoformat(),
        "enrolled": result.enrolled,
        "dispatched": result.claimed,  # claimed and handed to the send queue
        "skipped_late": result.skipped_late,  # later than their campaign's skip_late_after: never claimed
        "drained": drained,
    }
    sends = result.sends
    if sends is None:  # the workers send them: their outcomes are theirs to log
        return data | {"unknown": result.unknown}
    skipped = dict(sends.skipped) | ({"late": result.skipped_late} if result.skipped_late else {})
    return data | {
        "sent": sends.sent,
        "shadowed": sends.shadowed,
        "deferred": sends.deferred_total,
        "deferred_reasons": dict(sends.deferred),
        "skipped": sum(skipped.values()),
        "skipped_reasons": skipped,
        "tasks": sends.tasks,
        "failed": sends.failed,
        "bounced": sends.bounced,
        "unknown": result.unknown + sends.unknown,  # abandoned earlier, and in this pass
        "not_claimed": sends.not_claimed,
        # claimed, but no outcome came back here: their batch failed (logged), or another worker has them
        "not_counted": max(result.claimed - sends.counted, 0),
    }


def tick_line(data: dict[str, Any]) -> str:
    """One line: `enrolled 3, sent 48, deferred 86 (frequency cap 80, send window 6), skipped 0, ...`."""
    head = f"tick at {data['at']}: enrolled {data['enrolled']}"
    if "sent" not in data:
        return (
            f"{head}, queued {data['dispatched']} for the workers, skipped {data['skipped_late']} (late), "
            f"unknown {data['unknown']}"
        )
    parts = [f"sent {data['sent']}"]
    parts += [f"shadowed {data['shadowed']} (dry run)"] if data["shadowed"] else []
    parts.append(f"deferred {data['deferred']}{_reasons(data['deferred_reasons'])}")
    parts.append(f"skipped {data['skipped']}{_reasons(data['skipped_reasons'])}")
    parts += [f"rep tasks {data['tasks']}"] if data["tasks"] else []
    parts.append(f"failed {data['failed']}" + (f" (bounced {data['bounced']})" if data["bounced"] else ""))
    parts.append(f"unknown {data['unknown']}")
    parts += [f"taken by another worker {data['not_claimed']}"] if data["not_claimed"] else []
    if data["not_counted"]:
        parts.append(
            f"not counted {data['not_counted']} (their batch failed, see the log, or another worker has them)"
        )
    return f"{head}, {', '.join(parts)}"


def _reasons(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{why} {n}' for why, n in counts.items())})" if counts else ""


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
        Path | None,
        typer.Argument(
            help="A project folder with campaigns/ and templates/, or the campaigns folder itself "
            "(templates/, reps.yaml and scoring.yaml then beside it)."
        ),
    ] = None,
) -> None:
    """Check campaigns, templates and the reps file; report every problem as file:line: message."""
    with _reported():
        settings = _settings()
        if directory is None:
            campaigns_dir, project = settings.campaigns_dir, None
        else:
            campaigns_dir, project = _validated_folders(directory)
        catalog = load_catalog(
            campaigns_dir=campaigns_dir,
            templates_dir=project / "templates" if project else settings.templates_dir,
            reps_file=project / "reps.yaml" if project else settings.reps_file,
            scoring_file=project / "scoring.yaml" if project else settings.scoring_file,
            require_postal_address=True,
            postal_address=settings.postal_address,
        )
        steps = sum(len(c.steps) for c in catalog.campaigns.values())
        typer.echo(
            f"ok: {len(catalog.campaigns)} campaign(s), {steps} step(s), {len(catalog.reps)} rep(s), "
            f"scoring from {catalog.scoring.source}"
        )
        for line in _enrolled_change_lines(settings, catalog):
            typer.echo(line)


# The YAML files of a project folder that are not campaigns: a folder with only these is no campaigns folder.
_PROJECT_FILES = frozenset(
    {"reps.yaml", "scoring.yaml", "webhooks.yaml", "docker-compose.yml", "docker-compose.yaml", "compose.yml"}
)


def _validated_folders(directory: Path) -> tuple[Path, Path]:
    """The campaigns folder and the project folder of `nurture validate DIR`: DIR is a project folder (it
    has campaigns/), or the campaigns folder itself (it holds campaign files; the project is its parent)."""
    if (directory / "campaigns").is_dir():
        return directory / "campaigns", directory
    if not directory.is_dir():
        raise NurtureError(f"{directory}: no such folder; give the project folder or the campaigns folder")
    if any(
        p.suffix in CAMPAIGN_SUFFIXES and p.is_file() and p.name not in _PROJECT_FILES
        for p in directory.iterdir()
    ):
        return directory, directory.resolve().parent
    raise NurtureError(
        f"{directory} has no campaigns/ folder and no campaign files (*.yaml); "
        "give the project folder or the campaigns folder"
    )


def _enrolled_change_lines(settings: Settings, catalog: Catalog) -> list[str]:
    """What the campaign files would do to leads already enrolled, or one line saying it cannot be told."""
    embedded_file = settings.data_dir / "nurture.db"
    if settings.database_url is None and not embedded_file.exists():
        return ["note: no database, so what these changes do to enrolled leads cannot be told"]

    async def warn(db: Database) -> list[ChangeWarning]:
        return await warn_enrolled_changes(db, catalog)

    try:
        warnings = asyncio.run(_on_database(settings, warn))
    except NurtureError as exc:
        return [f"note: {exc}; what these changes do to enrolled leads cannot be told"]
    return [f"warning: {w}" for w in warnings]


@leads_app.command("import")
def leads_import(
    file: Annotated[Path, typer.Argument(help="CSV file, UTF-8, with a header row including `email`.")],
    rejects: Annotated[
        Path | None, typer.Option(help="Write rejected rows (row, email, reason) to this CSV.")
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Exit with status 1 when any row was rejected or kept its stage.")
    ] = False,
    allow_stage_downgrade: Annotated[
        bool,
        typer.Option(
            help="Let rows move known leads' stages backwards (e.g. mql to lead); needs --stage-reason."
        ),
    ] = False,
    stage_reason: Annotated[
        str | None, typer.Option(help="Why this import changes stages; recorded with every stage change.")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Upsert leads by email; every bad row is reported with its row number while the good rows go in.

    A known lead's stage never moves backwards unless --allow-stage-downgrade is given with a reason: such a
    row keeps the stage, its other fields go in, and it is reported like a bad row.
    """
    with _reported():
        stages = _stage_policy(allow_stage_downgrade, stage_reason)
        settings = _settings()
        report = asyncio.run(_import(settings, file, stages))
        if rejects is not None:
            _write_rejects(rejects, report)
        _print_import(report, fmt)
        if strict and (report.rejected or report.stage_refused):
            raise typer.Exit(1)


def _stage_policy(allow_downgrade: bool, reason: str | None) -> StagePolicy:
    reason = " ".join(reason.split()) if reason is not None else None
    if reason == "":
        raise NurtureError("--stage-reason must not be empty")
    if allow_downgrade and reason is None:
        raise NurtureError("--allow-stage-downgrade needs --stage-reason TEXT: why the stages move back")
    return StagePolicy(reason=reason, allow_backward=allow_downgrade)


async def _import(settings: Settings, file: Path, stages: StagePolicy) -> ImportReport:
    # The reader checks the whole file (encoding, header) before anything goes in, then streams its rows.
    with open_csv(file, CsvLimits.of(settings)) as source:
        source.require_column("email")
        for note in source.notes:
            err.print(f"note: {file}: {note}", markup=False, highlight=False)
        db = Database(settings.effective_database_url)
        try:
            if settings.is_embedded:
                await upgrade(db)
            with _progress(max(source.lines - 1, 0)) as advance:
                return await import_leads(
                    db,
                    lead_rows(source),
                    now=datetime.now(UTC),
                    on_progress=advance,
                    stages=stages,
                    limits=settings.lead_limits,
                )
        finally:
            await db.aclose()


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("import", total=total)
        yield lambda done: progress.update(task, completed=done)


def _row_errors(report: ImportReport) -> list[RowError]:
    """Rejected rows and rows that kept their stage, in row order."""
    return sorted([*report.rejected, *report.stage_refused], key=lambda r: r.row)


def _write_rejects(path: Path, report: ImportReport) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = CsvOutput(handle)
        writer.writerow(["row", "email", "reason"])
        writer.writerows((r.row, r.email, r.reason) for r in _row_errors(report))


def _print_import(report: ImportReport, fmt: Format) -> None:
    data = {
        "rows": report.total,
        "inserted": report.inserted,
        "updated": report.updated,
        "rejected": [{"row": r.row, "email": r.email, "reason": r.reason} for r in report.rejected],
        "stages_changed": report.stages_changed,
        "stage_refused": [{"row": r.row, "email": r.email, "reason": r.reason} for r in report.stage_refused],
    }
    if fmt is Format.json:
        typer.echo(json.dumps(data, ensure_ascii=False))
        return
    errors = _row_errors(report)
    for r in errors[:50]:
        err.print(f"row {r.row}: {r.reason}", markup=False, highlight=False)
    if len(errors) > 50:
        err.print(f"... and {len(errors) - 50} more (use --rejects FILE)", markup=False)
    refused = f", {len(report.stage_refused)} kept their stage" if report.stage_refused else ""
    typer.echo(
        f"imported {report.total} row(s): {report.inserted} new, {report.updated} updated, "
        f"{len(report.rejected)} rejected{refused}"
    )


@lead_app.command("show")
def lead_show(
    email: Annotated[str, typer.Argument(help="The lead's email address.")],
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Show a lead: profile, stage, the events that make up its score, its campaigns and timeline."""
    with _reported():
        settings = _settings()
        address = _lead_email(email)
        found = asyncio.run(_explain(settings, address))
        if found is None:
            raise NurtureError(f"no lead with email {address}")
        if fmt is Format.json:
            typer.echo(json.dumps(_explanation_data(found), ensure_ascii=False))
        else:
            typer.echo("\n".join(_explanation_lines(found)))


async def _explain(settings: Settings, email: str) -> LeadExplanation | None:
    catalog = _catalog(settings)
    db = Database(settings.effective_database_url)
    try:
        if settings.is_embedded:
            await upgrade(db)
        return await explain_lead(email, db=db, catalog=catalog, now=build_clock(settings).now())
    finally:
        await db.aclose()


def _explanation_data(found: LeadExplanation) -> dict[str, Any]:
    lead, profile = found.lead, found.lead.profile
    return {
        "id": lead.id,
        **{name: getattr(profile, name) for name in LEAD_FIELDS},
        "tags": dict(profile.tags),
        "suppressed": lead.suppressed,
        "suppressed_reason": lead.suppressed_reason,
        "score_updated_at": _iso(lead.score_updated_at),
        "score_now": found.breakdown.total,
        "scored_at": _iso(found.scored_at),
        "score_rescored": found.rescored,
        "score_rescored_at": _iso(lead.score_points_at),
        "below_by_decay": [
            {"threshold": d.name, "value": d.threshold, "since": _iso(d.since)} for d in found.below_by_decay
        ],
        "rules": found.rules_source,
        "events": [scored_event_data(item) for item in found.breakdown.items],
        "enrollments": [
            {
                "campaign": e.campaign_id,
                "state": e.state,
                "exit_reason": e.exit_reason,
                "enrolled_at": _iso(e.enrolled_at),
                "ended_at": _iso(e.ended_at),
            }
            for e in found.enrollments
        ],
        "timeline": [
            {"at": _iso(t.occurred_at), "kind": t.kind, "subject": t.subject} for t in found.timeline
        ],
        "stage_history": [
            {"at": _iso(h.occurred_at), "from": h.before, "to": h.after, "path": h.path, "reason": h.reason}
            for h in found.stage_history
        ],
        "alerts": [
            {
                "id": a.id,
                "trigger": a.trigger,
                "reason": a.reason,
                "status": a.status,
                "owner": a.owner,
                "attempts": a.attempts,
                "created_at": _iso(a.created_at),
            }
            for a in found.alerts
        ],
    }


def _score_line(found: LeadExplanation) -> str:
    """ "Score 8 as of now by scoring.yaml (16 at the last rescore, 2026-03-02 02:00)"."""
    lead = found.lead
    now = f"Score {found.breakdown.total} as of now by {found.rules_source}"
    if lead.score_points_at is not None and found.rescored is not None:
        return f"{now} ({found.rescored} at the last rescore, {_when(lead.score_points_at)})"
    stored_at = _when(lead.score_updated_at) if lead.score_updated_at else "never"
    return f"{now} ({lead.profile.score} stored, computed {stored_at})"


def _explanation_lines(found: LeadExplanation) -> list[str]:
    lead, p = found.lead, found.lead.profile
    name = " ".join(x for x in (p.first_name, p.last_name) if x)
    lines = [f"{name} <{p.email}> (lead {lead.id})" if name else f"{p.email} (lead {lead.id})"]
    lines.append(", ".join(x for x in (p.title, p.company, p.industry, p.country) if x) or "-")
    lines.append(f"grade {p.grade or '-'}, stage {p.stage}, owner {p.owner or '-'}")
    if lead.suppressed:
        lines.append(f"suppressed: {lead.suppressed_reason or 'yes'}")
    lines += ["", _score_line(found)]
    lines += [
        f"  below the {d.name.upper()} threshold {d.threshold} since {_when(d.since)} by decay"
        + (" (the stage stays MQL: decay never moves a stage back)" if d.name == "mql" else "")
        for d in found.below_by_decay
    ]
    lines.append(f"  {'when (UTC)':<16}  {'event':<16} {'base':>5} {'now':>6}  url, or why it does not count")
    for item in found.breakdown.items:
        why = f"not counted: {item.ignored}" if item.ignored else (item.event.url or "")
        lines.append(
            f"  {_when(item.event.occurred_at):<16}  {item.event.type:<16} {item.base_points:>5} "
            f"{item.points:>6.1f}  {why}".rstrip()
        )
    return lines + _history_lines(found)


def _history_lines(found: LeadExplanation) -> list[str]:
    lines = ["", "Campaigns:" if found.enrollments else "Campaigns: none"]
    for e in found.enrollments:
        ended = f", ended {_when(e.ended_at)}" if e.ended_at else ""
        reason = f" ({e.exit_reason})" if e.exit_reason else ""
        lines.append(f"  {e.campaign_id}: {e.state}{reason}, enrolled {_when(e.enrolled_at)}{ended}")
    lines += ["", "Stage history (newest first):" if found.stage_history else "Stage history: none"]
    lines += [
        f"  {_when(h.occurred_at)}  {h.before} -> {h.after} ({h.path}): {h.reason}"
        for h in found.stage_history
    ]
    lines += ["", "Timeline (newest first):" if found.timeline else "Timeline: empty"]
    lines += [f"  {_when(t.occurred_at)}  {t.kind}  {t.subject or ''}".rstrip() for t in found.timeline]
    lines += ["", "Alerts:" if found.alerts else "Alerts: none"]
    lines += [
        f"  #{a.id} {_when(a.created_at)} {a.trigger} {a.status} -> {a.owner or 'no owner'}: {a.reason}"
        for a in found.alerts
    ]
    return lines


@app.command("rescore")
def rescore_command(
    email: Annotated[str | None, typer.Argument(help="The lead to rescore (or --all).")] = None,
    all_leads: Annotated[bool, typer.Option("--all", help="Rescore every lead.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Recompute scores from the event log after scoring.yaml changed.

    Stage changes are recorded (an MQL leaves its campaign); no alert goes out: rules changed, not the lead.
    """
    with _reported():
        if (email is None) != all_leads:
            raise NurtureError("give one lead's EMAIL or --all")
        settings = _settings()
        summary = asyncio.run(_rescore(settings, _lead_email(email) if email else None))
        _print_data(
            {
                "leads": summary.leads,
                "scores_changed": summary.scores_changed,
                "stages_changed": summary.stages_changed,
            },
            fmt,
            lambda: (
                f"rescored {summary.leads} lead(s): {summary.scores_changed} score(s) changed, "
                f"{summary.stages_changed} stage change(s)"
            ),
        )


async def _rescore(settings: Settings, email: str | None) -> RescoreSummary:
    catalog = _catalog(settings)
    db = Database(settings.effective_database_url)
    now = build_clock(settings).now()
    try:
        if settings.is_embedded:
            await upgrade(db)
        if email is None:
            with _batch_progress("rescoring") as advance:
                return await rescore_all(db=db, catalog=catalog, now=now, on_progress=advance)
        lead = await find_lead(email, db=db)
        result = (
            None
            if lead is None
            else await rescore(lead.id, db=db, catalog=catalog, now=now, send_alerts=False)
        )
        if result is None:
            raise NurtureError(f"no lead with email {email}")
        return RescoreSummary(
            leads=1,
            scores_changed=int(result.score_after != result.score_before),
            stages_changed=int(result.stage_change is not None),
        )
    finally:
        await db.aclose()


@contextmanager
def _batch_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(label, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _catalog(settings: Settings) -> Catalog:
    return load_catalog(
        campaigns_dir=settings.campaigns_dir,
        templates_dir=settings.templates_dir,
        reps_file=settings.reps_file,
        scoring_file=settings.scoring_file,
    )


def _lead_email(value: str) -> str:
    try:
        return normalise_email(value)
    except ValueError as exc:
        raise NurtureError(f"{value!r} is not an email address: {exc}") from None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


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


T = TypeVar("T")


async def _on_database(settings: Settings, use: Callable[[Database], Awaitable[T]]) -> T:
    """Run `use` on the configured database (the embedded one is migrated first), then close it."""
    db = Database(settings.effective_database_url)
    try:
        if settings.is_embedded:
            await upgrade(db)
        return await use(db)
    finally:
        await db.aclose()


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Argument(help="What the key is for, such as `crm-sync`.")],
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Create an API key and print it once: only its prefix and SHA-256 are kept."""
    with _reported():
        settings = _settings()
        now = build_clock(settings).now()

        async def issue(db: Database) -> IssuedApiKey:
            try:
                return await issue_api_key(db, name=name, now=now)
            except ValueError as exc:
                raise NurtureError(f"name: {exc}") from None

        issued = asyncio.run(_on_database(settings, issue))
        if fmt is Format.table:
            err.print("Store this key now: it cannot be shown again.", markup=False)
        data = {"key": issued.key, "prefix": issued.prefix, "name": issued.name}
        _print_data(data, fmt, lambda: issued.key)


@apikey_app.command("list")
def apikey_list(
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """List API keys (prefix, name, created, revoked); the keys themselves are not stored."""
    with _reported():
        keys = asyncio.run(_on_database(_settings(), list_api_keys))
        if fmt is Format.json:
            rows = [
                {
                    "prefix": k.prefix,
                    "name": k.name,
                    "created_at": _iso(k.created_at),
                    "revoked_at": _iso(k.revoked_at),
                }
                for k in keys
            ]
            typer.echo(json.dumps(rows, ensure_ascii=False))
            return
        for k in keys:
            state = f"revoked {_when(k.revoked_at)}" if k.revoked_at else "active"
            typer.echo(f"nk_{k.prefix}_...  created {_when(k.created_at)}  {state:<24}  {k.name}")


@apikey_app.command("revoke")
def apikey_revoke(
    prefix: Annotated[str, typer.Argument(help=KEY_PREFIX_HELP)],
) -> None:
    """Revoke an API key: requests that present it are refused from now on."""
    with _reported():
        settings = _settings()
        now = build_clock(settings).now()

        async def revoke(db: Database) -> str | None:
            stored = await _active_key(db, prefix)
            return stored.prefix if await revoke_key(db, stored.prefix, now=now) else None

        revoked = asyncio.run(_on_database(settings, revoke))
        if revoked is None:  # revoked by someone else in the meantime
            raise NurtureError(f"no active API key with prefix {prefix!r}")
        typer.echo(f"revoked nk_{revoked}")


async def _active_key(db: Database, reference: str) -> StoredApiKey:
    try:
        return await find_active_key(db, reference)
    except ValueError as exc:
        raise NurtureError(str(exc)) from None


@link_app.command("create")
def link_create(
    lead: Annotated[str, typer.Option("--lead", help="The lead's email address.")],
    url: Annotated[str, typer.Option("--url", help="The page to share: an absolute http(s) URL.")],
    kind: Annotated[str, typer.Option("--kind", help="What it is; each opening is a <kind>_view event.")] = (
        "proposal"
    ),
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Print a tracked link to URL for one lead: each opening is recorded (proposal_view) and redirected."""
    with _reported():
        settings = _settings()
        address = _lead_email(lead)
        key = secret_key(settings)
        try:  # checked before the lead is looked up: a typo in --url is the likelier mistake
            share_url(settings.base_url, lead_id=1, url=url, kind=kind, key=key)
        except ValueError as exc:
            raise NurtureError(f"--url/--kind: {exc}") from None
        found = asyncio.run(_on_database(settings, lambda db: find_leads_by_email(db, {address})))
        if address not in found:
            raise NurtureError(f"no lead with email {address}")
        link = share_url(settings.base_url, lead_id=found[address], url=url, kind=kind, key=key)
        data = {"url": link, "lead": address, "lead_id": found[address], "kind": kind, "target": url}
        _print_data(data, fmt, lambda: link)


@app.command("login-link")
def login_link(
    api_key: Annotated[str, typer.Option("--key", help=f"The rep's API key: {KEY_PREFIX_HELP}")],
    lead: Annotated[
        int | None, typer.Option("--lead", help="Then open this lead (its id, as in alerts).", min=1)
    ] = None,
    next_path: Annotated[
        str | None,
        typer.Option("--next", help="Then open this page of the site, such as /dashboard?days=7 (a path)."),
    ] = None,
    minutes: Annotated[int, typer.Option(help="How long the link works.", min=1, max=1440)] = 15,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Print a one-time link that signs a rep's browser in with their key, for a rep reading an alert.

    It lands on the lead (--lead), on a page (--next), or else on the dashboard.
    """
    with _reported():
        if lead is not None and next_path is not None:
            raise NurtureError("give --lead ID or --next PATH, not both")
        settings = _settings()
        now = build_clock(settings).now()
        key = secret_key(settings)
        if lead is not None:
            next_path = f"/leads/{lead}"
        elif next_path is not None and local_path(next_path) != next_path:
            raise NurtureError(f"--next: {next_path!r} is not a path on this site (such as /leads/42)")

        async def issue(db: Database) -> IssuedLoginLink:
            try:
                return await issue_login_link(
                    db,
                    api_key,
                    base_url=settings.base_url,
                    key=key,
                    now=now,
                    ttl=timedelta(minutes=minutes),
                    next_path=next_path,
                )
            except ValueError as exc:
                raise NurtureError(str(exc)) from None

        link = asyncio.run(_on_database(settings, issue))
        if fmt is Format.table:
            err.print(f"Works once, until {_when(link.expires_at)} UTC.", markup=False)
        data = {"url": link.url, "key_prefix": link.key_prefix, "expires_at": _iso(link.expires_at)}
        _print_data(data, fmt, lambda: link.url)


# Commands kept in modules of their own register on `app` when imported.
from nurture import cli_compliance, cli_deliveries, cli_marketing, cli_report  # noqa: E402

__all__ = ["app", "cli_compliance", "cli_deliveries", "cli_marketing", "cli_report", "main"]


def main() -> None:
    run_guarded(lambda: app(prog_name="nurture"))


if __name__ == "__main__":
    main()
