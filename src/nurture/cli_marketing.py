"""Commands for writing campaigns: `preview`, `simulate`, `test-send` and `test`.

Registered on `nurture.cli.app` when `nurture.cli` imports this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import webbrowser
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nurture.catalog import Catalog, missing_postal_address
from nurture.cli import (
    Format,
    _catalog,
    _lead_email,
    _on_database,
    _parse_now,
    _reported,
    _settings,
    app,
    err,
)
from nurture.core.campaign import Campaign
from nurture.core.campaign_tests import CampaignCase, check, observed_from, parse_cases
from nurture.core.context import SAMPLE_LEAD
from nurture.core.engagement_script import EngagementScript, parse_script
from nurture.csv_input import CsvLimits, CsvRowError, open_csv
from nurture.errors import ConfigError, ConfigErrors, NurtureError
from nurture.flows.deliver import Mailer
from nurture.flows.explain import find_lead
from nurture.flows.preview import Preview, PreviewLead, find_step, preview_step, send_test
from nurture.flows.simulate import LeadRun, Simulation, TimelineItem, sample_lead_row, simulate
from nurture.runtime import build_clock, build_runtime
from nurture.settings import Settings

__all__ = ["app"]

MAX_SIMULATED_LEADS = 500
# Piped output (files, CI logs) gets wide tables rather than an 80-column wrap.
out = Console(highlight=False, width=None if Console().is_terminal else 200)

CampaignArg = Annotated[str, typer.Argument(help="The campaign's id.")]
StepArg = Annotated[str, typer.Argument(help="The step's id.")]
LeadOpt = Annotated[str | None, typer.Option("--lead", help="Build it for this stored lead (email).")]
SampleOpt = Annotated[bool, typer.Option("--sample", help="Build it for the sample lead (the default).")]
VariantOpt = Annotated[
    str | None, typer.Option("--variant", help="This A/B variant (default: the one the lead gets).")
]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]


@app.command()
def preview(
    campaign: CampaignArg,
    step: StepArg,
    lead: LeadOpt = None,
    sample: SampleOpt = False,
    variant: VariantOpt = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML part to this file.")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML part in a browser.")] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """Render a step exactly as it would be sent (tracking links included): subject, headers, text, HTML."""
    with _reported():
        settings = _settings()
        _quiet_flows()
        shown = asyncio.run(_preview(settings, campaign, step, lead, sample, variant))
        if html is not None:
            _write(html, shown.html)
        if open_browser:
            target = html or Path(tempfile.mkstemp(prefix=f"{campaign}-{step}-", suffix=".html")[1])
            if html is None:
                _write(target, shown.html)
            webbrowser.open(target.resolve().as_uri())
        if fmt is Format.json:
            typer.echo(json.dumps(_preview_data(shown), ensure_ascii=False))
            return
        for name, value in shown.headers:
            out.print(f"[bold]{name}:[/bold] {_escape(value)}")
        if shown.variant:
            out.print(f"[bold]Variant:[/bold] {_escape(shown.variant)}")
        out.print("")
        typer.echo(shown.text)
        where = f"written to {html}" if html else "use --html FILE to write it, --open to view it"
        out.print(f"\n[dim]HTML part: {len(shown.html)} characters, {where}[/dim]")


@app.command("test-send")
def send_test_command(
    campaign: CampaignArg,
    step: StepArg,
    to: Annotated[str, typer.Option("--to", help="The test inbox.")],
    lead: LeadOpt = None,
    sample: SampleOpt = False,
    variant: VariantOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Send one step to a test inbox over the configured SMTP, marked `[TEST]`; never counted in reports."""
    with _reported():
        settings = _settings()
        address = _lead_email(to)
        shown, response = asyncio.run(_test_send(settings, campaign, step, lead, sample, variant, address))
        data = {
            "campaign": shown.campaign_id,
            "step": shown.step_id,
            "to": address,
            "lead": shown.lead_email,
            "variant": shown.variant,
            "response": response,
        }
        what = f"{shown.campaign_id}/{shown.step_id} ({shown.lead_email})"
        text = f"sent a test of {what} to {address}: {response}"
        typer.echo(json.dumps(data, ensure_ascii=False) if fmt is Format.json else text)


async def _preview(
    settings: Settings, campaign_id: str, step_id: str, lead: str | None, sample: bool, variant: str | None
) -> Preview:
    catalog = _catalog(settings)
    campaign = _campaign(catalog, campaign_id)
    find_step(campaign, step_id)  # before anything else: a typo is the likelier mistake
    unaddressed = missing_postal_address(campaign, settings.postal_address)
    if unaddressed is not None:  # shown all the same, so the address can be placed; sends refuse it
        err.print(f"note: {unaddressed}; test-send and real sends refuse it", markup=False, highlight=False)
    who = await _preview_lead(settings, lead, sample)
    runtime = build_runtime(settings, catalog=catalog)
    try:
        now = runtime.clock.now()
        return preview_step(campaign, step_id, who, mailer=runtime.mailer, now=now, variant=variant)
    finally:
        await runtime.aclose()


async def _test_send(
    settings: Settings,
    campaign_id: str,
    step_id: str,
    lead: str | None,
    sample: bool,
    variant: str | None,
    to: str,
) -> tuple[Preview, str]:
    catalog = _catalog(settings)
    campaign = _campaign(catalog, campaign_id)
    find_step(campaign, step_id)
    unaddressed = missing_postal_address(campaign, settings.postal_address)
    if unaddressed is not None:  # refused as a real send is: no marketing email goes out without one
        raise unaddressed
    who = await _preview_lead(settings, lead, sample)
    runtime = build_runtime(settings, catalog=catalog)
    try:
        now = runtime.clock.now()
        shown = preview_step(
            campaign, step_id, who, mailer=runtime.mailer, now=now, variant=variant, sign_links=False
        )
        receipt = await send_test(shown, to, mailer=runtime.mailer)
        return shown, receipt.response
    finally:
        await runtime.aclose()


async def _preview_lead(settings: Settings, lead: str | None, sample: bool) -> PreviewLead:
    if lead is not None and sample:
        raise NurtureError("give --lead EMAIL or --sample, not both")
    if lead is None:
        return PreviewLead(id=0, profile=SAMPLE_LEAD)
    address = _lead_email(lead)
    found = await _on_database(settings, lambda db: find_lead(address, db=db))
    if found is None:
        raise NurtureError(f"no lead with email {address}")
    return PreviewLead(id=found.id, profile=found.profile)


def _campaign(catalog: Catalog, campaign_id: str) -> Campaign:
    found = catalog.campaigns.get(campaign_id)
    if found is None:
        known = ", ".join(sorted(catalog.campaigns)) or "none"
        raise NurtureError(f"no campaign {campaign_id!r} (campaigns: {known})")
    return found


def _preview_data(shown: Preview) -> dict[str, Any]:
    return {
        "campaign": shown.campaign_id,
        "step": shown.step_id,
        "lead": shown.lead_email,
        "variant": shown.variant,
        "subject": shown.subject,
        "headers": dict(shown.headers),
        "text": shown.text,
        "html": shown.html,
    }


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise NurtureError(f"{path}: cannot write: {exc.strerror}") from None


# --- simulate -----------------------------------------------------------------------------------------------


@app.command("simulate")
def simulate_command(
    campaign: CampaignArg,
    leads: Annotated[
        Path | None,
        typer.Option("--leads", help="CSV of leads (as for `leads import`); default: a sample lead."),
    ] = None,
    start: Annotated[
        str | None, typer.Option("--start", help="When the leads enrol (ISO-8601; UTC if no offset).")
    ] = None,
    engagement: Annotated[
        Path | None, typer.Option("--engagement", help="A script of what the leads do (see README).")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Play a campaign over a virtual clock without sending anything, and print each lead's timeline."""
    with _reported():
        settings = _settings()
        catalog = _catalog(settings)
        chosen = _campaign(catalog, campaign)
        rows = _read_leads(leads, CsvLimits.of(settings)) if leads is not None else [sample_lead_row(chosen)]
        script = _read_script(engagement)
        at = _parse_now(start) if start else build_clock(settings).now()
        _quiet_flows()
        result = asyncio.run(_simulate(settings, catalog, chosen, rows, at, script))
        sample = None if leads is not None else rows[0]["email"]
        if fmt is Format.json:
            typer.echo(json.dumps(simulation_data(result, sample), ensure_ascii=False))
        else:
            _print_simulation(result, sample)


async def _simulate(
    settings: Settings,
    catalog: Catalog,
    campaign: Campaign,
    rows: Sequence[Mapping[str, str | None]],
    start: datetime,
    script: EngagementScript,
) -> Simulation:
    runtime = build_runtime(settings, catalog=catalog)  # its mailer settings; nothing of it is used to send
    try:
        return await simulate(
            campaign, catalog, leads=rows, start=start, script=script, mailer=runtime.mailer
        )
    finally:
        await runtime.aclose()


def _quiet_flows() -> None:
    """A simulation runs the real flows: their INFO lines would bury the timeline."""
    logging.getLogger("nurture").setLevel(logging.WARNING)


def _read_leads(path: Path, limits: CsvLimits) -> list[dict[str, str | None]]:
    rows: list[dict[str, str | None]] = []
    with open_csv(path, limits) as source:
        source.require_column("email")
        for item in source:
            if isinstance(item, CsvRowError):
                raise NurtureError(f"{path}:{item.line}: lead row {item.row}: {item.reason}")
            rows.append(dict(item.values))
            if len(rows) > MAX_SIMULATED_LEADS:
                raise NurtureError(f"{path}: simulate at most {MAX_SIMULATED_LEADS} leads at a time")
    if not rows:
        raise NurtureError(f"{path}: no leads in the file")
    return rows


def _read_script(path: Path | None) -> EngagementScript:
    if path is None:
        return EngagementScript(source="<none>")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NurtureError(f"{path}: cannot read the engagement script: {exc}") from None
    return parse_script(text, source=str(path))


def simulation_data(result: Simulation, sample: str | None = None) -> dict[str, Any]:
    return {
        "campaign": result.campaign_id,
        "start": result.start.isoformat(),
        "end": result.end.isoformat(),
        "sample_lead": sample,
        "leads": [_run_data(run) for run in result.leads],
    }


def _run_data(run: LeadRun) -> dict[str, Any]:
    return {
        "email": run.email,
        "timezone": run.zone,
        "enrolled": run.enrolled,
        "state": run.state,
        "exit_reason": run.exit_reason,
        "stage": run.stage,
        "score": run.score,
        "owner": run.owner,
        "timeline": [
            {
                "day": i.day,
                "local": i.local.isoformat(),
                "utc": i.at.isoformat(),
                "kind": i.kind,
                "step": i.step,
                "variant": i.variant,
                "detail": i.detail,
            }
            for i in run.items
        ],
        "alerts": [
            {
                "day": a.day,
                "utc": a.at.isoformat(),
                "trigger": a.trigger,
                "reason": a.reason,
                "score_before": a.score_before,
                "score_after": a.score_after,
                "owner": a.owner,
                "title": a.title,
            }
            for a in run.alerts
        ],
    }


def _print_simulation(result: Simulation, sample: str | None) -> None:
    if sample:
        out.print(f"[dim]No --leads given: simulating the sample lead {sample}.[/dim]")
    for run in result.leads:
        outcome = _outcome(run)
        out.print(
            f"\n[bold]{_escape(run.email)}[/bold] ({run.zone}): {outcome}; "
            f"stage {run.stage}, score {run.score}, {len(run.sends)} email(s), {len(run.alerts)} alert(s)"
        )
        if not run.enrolled:
            continue
        table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
        for column in ("day", "local time", "UTC", "what", "step", "detail"):
            table.add_column(column, no_wrap=column != "detail")
        for row in _rows(run):
            table.add_row(*(_escape(cell) for cell in row))
        with out.capture() as captured:
            out.print(table)
        typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _outcome(run: LeadRun) -> str:
    if not run.enrolled:
        return "not enrolled: the lead is outside the campaign's audience"
    if run.state == "exited":
        return f"left the campaign ({run.exit_reason})"
    return "completed the campaign" if run.state == "completed" else f"still {run.state}"


def _rows(run: LeadRun) -> list[tuple[str, ...]]:
    rows = [(item.at, _item_row(item)) for item in run.items]
    for alert in run.alerts:
        local = alert.at.astimezone(run.items[0].local.tzinfo) if run.items else alert.at
        score = f"score {alert.score_before} -> {alert.score_after}"
        detail = f"{alert.trigger} to {alert.owner or 'no owner'} ({score}): {alert.reason}"
        rows.append((alert.at, (str(alert.day), _local(local), _utc(alert.at), "alert", "", detail)))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def _item_row(item: TimelineItem) -> tuple[str, ...]:
    step = f"{item.step} ({item.variant})" if item.step and item.variant else (item.step or "")
    return (str(item.day), _local(item.local), _utc(item.at), item.kind, step, item.detail)


def _local(at: datetime) -> str:
    return at.strftime("%a %d %b %H:%M")


def _utc(at: datetime) -> str:
    return at.strftime("%d %b %H:%MZ")


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


# --- campaign tests -----------------------------------------------------------------------------------------


@app.command("test")
def campaign_tests_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Test files or folders (default: campaigns/tests/ under NURTURE_CAMPAIGNS_DIR)."),
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Run the campaign tests: each case simulates a lead and its engagement and checks the outcome."""
    with _reported():
        settings = _settings()
        catalog = _catalog(settings)
        cases = load_case_files(paths or [settings.campaigns_dir / "tests"])
        _quiet_flows()
        results = asyncio.run(_run_cases(settings, catalog, cases))
        failed = [r for r in results if not r.passed]
        if fmt is Format.json:
            typer.echo(json.dumps(_results_data(results), ensure_ascii=False))
        else:
            _print_results(results)
        if failed:
            raise typer.Exit(1)


def _results_data(results: Sequence[CaseResult]) -> dict[str, Any]:
    return {
        "passed": sum(r.passed for r in results),
        "failed": sum(not r.passed for r in results),
        "cases": [
            {
                "file": r.case.source,
                "line": r.case.line,
                "name": r.case.name,
                "passed": r.passed,
                "diff": r.diff,
            }
            for r in results
        ],
    }


def _print_results(results: Sequence[CaseResult]) -> None:
    for r in results:
        mark = "[green]ok  [/green]" if r.passed else "[red]FAIL[/red]"
        out.print(f"{mark} {r.case.source}:{r.case.line} {_escape(r.case.name)}")
        for line in r.diff:
            out.print(f"       {_escape(line)}")
    failed = sum(not r.passed for r in results)
    summary = f"{len(results) - failed} passed, {failed} failed"
    out.print(f"[red]{summary}[/red]" if failed else f"[green]{summary}[/green]")


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: CampaignCase
    diff: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.diff


def load_case_files(paths: Sequence[Path]) -> list[CampaignCase]:
    """Every case in the given files and in the `*.yaml` files of the given folders; all problems at once."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise NurtureError(f"{path}: no such file or folder")
    cases: list[CampaignCase] = []
    errors: list[ConfigError] = []
    for file in files:
        try:
            cases += parse_cases(file.read_text(encoding="utf-8"), source=str(file))
        except UnicodeDecodeError as exc:
            errors.append(ConfigError(f"not UTF-8 ({exc.reason})", source=str(file)))
        except ConfigErrors as exc:
            errors += exc.errors
    if errors:
        raise ConfigErrors(errors)
    if not cases:
        raise NurtureError(f"no campaign tests found in {', '.join(str(p) for p in paths)}")
    return cases


async def _run_cases(settings: Settings, catalog: Catalog, cases: Sequence[CampaignCase]) -> list[CaseResult]:
    runtime = build_runtime(settings, catalog=catalog)
    try:
        return await run_cases(cases, catalog, mailer=runtime.mailer)
    finally:
        await runtime.aclose()


async def run_cases(cases: Sequence[CampaignCase], catalog: Catalog, *, mailer: Mailer) -> list[CaseResult]:
    """Simulate each case's lead and compare the outcome with its expectations."""
    results = []
    for case in cases:
        campaign = catalog.campaigns.get(case.campaign)
        if campaign is None:
            results.append(CaseResult(case, (f"no campaign {case.campaign!r}",)))
            continue
        result = await simulate(
            campaign,
            catalog,
            leads=[dict(case.lead)],
            start=case.start,
            script=case.script,
            mailer=mailer,
        )
        [run] = result.leads
        sends = [(i.step or "", i.day, i.local.date()) for i in run.sends]
        exit_ = (
            run.exit_reason if run.state == "exited" else ("completed" if run.state == "completed" else None)
        )
        observed = observed_from(sends, run.stage, [a.trigger for a in run.alerts], exit_, run.enrolled)
        results.append(CaseResult(case, tuple(check(case.expect, observed))))
    return results
