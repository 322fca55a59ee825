"""`nurture report`: the funnel per stage, campaign and step, and lead quality per source.

Registered on `nurture.cli.app` when `nurture.cli` imports this module.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from nurture.cli import _catalog, _on_database, _reported, _settings, app
from nurture.core.report import GroupFigures, Spread, StepFigures
from nurture.csv_output import CsvOutput
from nurture.db.engine import Database
from nurture.db.queries.report import GroupBy, Scope
from nurture.errors import ConfigError, ConfigErrors, NurtureError
from nurture.flows.report import Report, build_report
from nurture.settings import Settings

__all__ = ["app"]


class ReportFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


STEP_COLUMNS = ("sent", "delivered", "bounced", "unique_opens", "unique_clicks", "unsubscribes", "qualified")


@app.command("report")
def report_command(
    campaign: Annotated[
        str | None, typer.Option(help="Only this campaign's figures, and only leads it enrolled.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only leads created on or after this ISO date or instant (UTC).")
    ] = None,
    by: Annotated[GroupBy, typer.Option(help="Group the funnel and qualification figures by this.")] = (
        GroupBy.source
    ),
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = ReportFormat.table,
) -> None:
    """The funnel per stage, each campaign step's results, time and touches to MQL, and quality per group."""
    with _reported():
        scope = Scope(campaign_id=campaign, since=_parse_since(since) if since else None)
        settings = _settings()
        known = _campaign_ids(settings) if campaign is not None else ()

        async def use(db: Database) -> Report:
            return await build_report(db, scope=scope, by=by, campaigns=known)

        report = asyncio.run(_on_database(settings, use))
        data = report_data(report)
        if fmt is ReportFormat.json:
            typer.echo(json.dumps(data, ensure_ascii=False))
        elif fmt is ReportFormat.csv:
            typer.echo(report_csv(report), nl=False)
        else:
            typer.echo(report_table(report))


def _campaign_ids(settings: Settings) -> tuple[str, ...]:
    """The campaigns in the files. Files that do not load leave the ones the database knows, which are
    enough to report on: a report must not depend on today's campaign files being valid."""
    try:
        return tuple(_catalog(settings).campaigns)
    except (ConfigError, ConfigErrors):
        return ()


def _parse_since(value: str) -> datetime:
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise NurtureError(f"--since: {value!r} is not an ISO date (2026-03-01) or instant") from None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _spread(s: Spread) -> dict[str, Any]:
    return {"leads": s.count, "median": _round(s.median), "p90": _round(s.p90)}


def _round(value: float | None, digits: int = 2) -> float | None:
    return round(value, digits) if value is not None else None


def _step(f: StepFigures) -> dict[str, Any]:
    return {"campaign": f.campaign_id, "step": f.step_id, **{c: getattr(f, c) for c in STEP_COLUMNS}}


def _group(g: GroupFigures) -> dict[str, Any]:
    return {
        "key": g.key,
        "funnel": {s.stage: s.leads for s in g.funnel},
        "mql_rate": _round(g.mql_rate, 4),
        "days_to_mql": _spread(g.days_to_mql),
        "touches_to_mql": _spread(g.touches_to_mql),
    }


def report_data(report: Report) -> dict[str, Any]:
    """The report as JSON data: counts, rates as fractions (4 places), days and touches (2 places)."""
    scope = report.scope
    return {
        "scope": {
            "campaign": scope.campaign_id,
            "since": scope.since.isoformat() if scope.since is not None else None,
            "by": str(report.by),
        },
        "funnel": [
            {"stage": s.stage, "leads": s.leads, "conversion": _round(s.conversion, 4)} for s in report.funnel
        ],
        "days_to_mql": _spread(report.days_to_mql),
        "touches_to_mql": _spread(report.touches_to_mql),
        "campaigns": [_step(f) for f in report.campaigns],
        "steps": [_step(f) for f in report.steps],
        "groups": [_group(g) for g in report.groups],
    }


def report_csv(report: Report) -> str:
    """Every figure as one row of `section,key,metric,value`, for spreadsheets."""
    out = io.StringIO()
    writer = CsvOutput(out, lineterminator="\n")
    writer.writerow(["section", "key", "metric", "value"])
    for s in report.funnel:
        writer.writerow(["funnel", s.stage, "leads", s.leads])
        writer.writerow(["funnel", s.stage, "conversion", _fraction(s.conversion)])
    for name in ("days_to_mql", "touches_to_mql"):
        spread: Spread = getattr(report, name)
        writer.writerow(["qualification", name, "median", _text(spread.median)])
        writer.writerow(["qualification", name, "p90", _text(spread.p90)])
    for f in (*report.campaigns, *report.steps):
        key = f.campaign_id if f.step_id is None else f"{f.campaign_id}/{f.step_id}"
        section = "campaign" if f.step_id is None else "step"
        writer.writerows([section, key, c, getattr(f, c)] for c in STEP_COLUMNS)
    for g in report.groups:
        section = f"by_{report.by}"
        writer.writerows([section, g.key, f"reached_{s.stage}", s.leads] for s in g.funnel)
        writer.writerow([section, g.key, "mql_rate", _fraction(g.mql_rate)])
        writer.writerow([section, g.key, "days_to_mql_median", _text(g.days_to_mql.median)])
        writer.writerow([section, g.key, "days_to_mql_p90", _text(g.days_to_mql.p90)])
        writer.writerow([section, g.key, "touches_to_mql_median", _text(g.touches_to_mql.median)])
    return out.getvalue()


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _text(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _columns(rows: list[list[str]]) -> list[str]:
    """Left-align the first column and right-align the others, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def report_table(report: Report) -> str:
    """The report for people: the funnel, the campaign steps, and the groups, as aligned columns."""
    lines = ["Funnel (a lead counts in every stage it reached)"]
    lines += _columns(
        [["stage", "leads", "from previous"]]
        + [[s.stage, str(s.leads), _percent(s.conversion)] for s in report.funnel]
    )
    d, t = report.days_to_mql, report.touches_to_mql
    lines += [
        "",
        f"Crossed MQL on the timeline: {d.count} leads; days to MQL median {_days(d.median)}, p90 "
        f"{_days(d.p90)}; touches before median {_days(t.median)}, p90 {_days(t.p90)}",
        "",
        "Campaigns and steps (opens and clicks: unique leads, machines excluded)",
    ]
    header = ["campaign / step", "sent", "delivered", "bounced", "opens", "clicks", "unsubs", "qualified"]
    rows = [header]
    for campaign in report.campaigns:
        steps = [s for s in report.steps if s.campaign_id == campaign.campaign_id]
        for f in (campaign, *steps):
            label = f.campaign_id if f.step_id is None else f"  {f.step_id}"
            rows.append([label, *(str(getattr(f, c)) for c in STEP_COLUMNS)])
    lines += _columns(rows) if len(rows) > 1 else ["(nothing sent)"]
    lines += ["", f"By {report.by} (leads, reached each stage, MQL rate, days to MQL)"]
    rows = [[str(report.by), "leads", "mql", "sql", "opp", "customer", "mql rate", "median d", "p90 d"]]
    for g in report.groups:
        counts = [str(s.leads) for s in g.funnel]
        rows.append(
            [g.key, *counts, _percent(g.mql_rate), _days(g.days_to_mql.median), _days(g.days_to_mql.p90)]
        )
    lines += _columns(rows) if len(rows) > 1 else ["(no leads)"]
    return "\n".join(lines)
