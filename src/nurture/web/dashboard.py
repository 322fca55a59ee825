"""The sales-ops dashboard, behind the reps' login: campaign funnels, hot leads and source quality.

    GET /dashboard[?days=7]   the funnel per stage, hot leads of the last `days` (1, 7, 30 or 90) linking to
                              their timelines, each campaign's step-by-step funnel, and source quality

The report behind it reads the whole timeline, so one process computes it at most once a minute
(`REPORT_TTL`; concurrent requests wait for the same computation) and the page says how old it is; hot
leads are read on every request. Charts are SVG drawn on the server (`charts`), so the page runs no
script; its own stylesheet is allowed by its hash next to the reps' pages' one. Sign-in works as on the
lead page: a browser without a session is sent to the login form, any other client gets 401.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import datetime, timedelta
from importlib.resources import files
from typing import Final

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nurture.core.report import GroupFigures, StepFigures
from nurture.db.queries.report import GroupBy, Scope
from nurture.flows.report import Report, build_report, hot_leads
from nurture.runtime import Runtime
from nurture.web.charts import Chart, Series, bar_chart
from nurture.web.http import is_browser_navigation, json_error
from nurture.web.login import RepAuth, database_guard, login_redirect
from nurture.web.views import Views

PERIODS: Final = (1, 7, 30, 90)
DEFAULT_PERIOD: Final = 7
HOT_LEADS: Final = 50
REPORT_TTL: Final = timedelta(minutes=1)
TOP_SOURCES: Final = 12
STEP_SERIES: Final = (
    Series("sent", "#94a3b8"),
    Series("delivered", "#0b5cad"),
    Series("opened", "#2f855a"),
    Series("clicked", "#d97706"),
    Series("qualified", "#7c3aed"),
)
FUNNEL_SERIES: Final = (Series("leads", "#0b5cad"),)
SOURCE_SERIES: Final = (Series("leads", "#94a3b8"), Series("reached MQL", "#7c3aed"))
VARY: Final = {"Vary": "Cookie, Authorization"}


class DashboardEndpoints:
    def __init__(self, runtime: Runtime, views: Views, auth: RepAuth) -> None:
        self._runtime = runtime
        self._views = views
        self._auth = auth
        style = files("nurture.web").joinpath("templates/dashboard.css").read_text(encoding="utf-8")
        self._style = Markup(style)  # our own file: trusted
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        policy = views.content_security_policy
        self._policy = policy.replace("style-src ", f"style-src 'sha256-{digest}' ", 1)
        self._report: tuple[datetime, Report] | None = None
        self._computing = asyncio.Lock()

    async def report(self) -> tuple[datetime, Report]:
        """The report by source as of at most `REPORT_TTL` ago, and when it was computed."""
        async with self._computing:
            now = self._runtime.clock.now()
            if self._report is None or now - self._report[0] >= REPORT_TTL:
                self._report = (now, await build_report(self._runtime.db, scope=Scope(), by=GroupBy.source))
            return self._report

    async def show(self, request: Request) -> Response:
        identity = await self._auth.identify(request)
        if identity is None:
            if "authorization" not in request.headers and is_browser_navigation(request):
                return login_redirect(request)
            return json_error(401, "sign in, or send a valid API key", headers=VARY)
        raw = request.query_params.get("days", str(DEFAULT_PERIOD))
        if raw not in {str(p) for p in PERIODS}:
            return self._views.page(
                "message.html",
                status_code=400,
                headers=VARY,
                signed_in=identity.session,
                title="Unknown period",
                sentence=f"days must be one of {', '.join(map(str, PERIODS))}.",
            )
        period = int(raw)
        rt = self._runtime
        as_of, report = await self.report()
        hot = await hot_leads(
            rt.db, now=rt.clock.now(), days=period, half_life=rt.catalog.scoring.half_life, limit=HOT_LEADS
        )
        return self._views.page(
            "dashboard.html",
            headers={"Content-Security-Policy": self._policy, **VARY},
            signed_in=identity.session,
            dashboard_style=self._style,
            report=report,
            as_of=as_of,
            funnel_chart=funnel_chart(report),
            campaign_charts=campaign_charts(report),
            source_chart=source_chart(report.groups),
            hot=hot,
            period=period,
            periods=PERIODS,
            days=_days,
        )


def _days(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f" ({value:.0%})"


def funnel_chart(report: Report) -> Chart:
    rows = [(s.stage.upper() if s.stage != "lead" else "Leads", [float(s.leads)]) for s in report.funnel]
    texts = [[f"{s.leads:,}{_percent(s.conversion)}"] for s in report.funnel]
    return bar_chart("Leads per stage reached", rows, FUNNEL_SERIES, texts=texts)


def campaign_charts(report: Report) -> list[Chart]:
    """One chart per campaign: a group of bars per step, all on the campaign's own scale."""
    charts = []
    for campaign in report.campaigns:
        steps = [s for s in report.steps if s.campaign_id == campaign.campaign_id]
        rows = [(s.step_id or "", _step_values(s)) for s in steps]
        title = (
            f"{campaign.campaign_id}: {campaign.sent:,} sent, {campaign.unique_opens:,} opened, "
            f"{campaign.qualified:,} qualified"
        )
        charts.append(bar_chart(title, rows, STEP_SERIES))
    return charts


def _step_values(s: StepFigures) -> list[float]:
    return [float(v) for v in (s.sent, s.delivered, s.unique_opens, s.unique_clicks, s.qualified)]


def source_chart(groups: tuple[GroupFigures, ...]) -> Chart:
    """The biggest sources: leads and those that reached MQL, with the MQL rate and median days to MQL."""
    top = groups[:TOP_SOURCES]
    rows = [
        (
            f"{g.key} · MQL{_percent(g.mql_rate)} · median {_days(g.days_to_mql.median)} days",
            [float(g.leads), float(g.funnel[1].leads)],
        )
        for g in top
    ]
    return bar_chart("Leads and MQLs per source", rows, SOURCE_SERIES)


def dashboard_routes(runtime: Runtime, views: Views, reps: RepAuth) -> list[BaseRoute]:
    endpoints = DashboardEndpoints(runtime, views, reps)
    return [Route("/dashboard", database_guard(views, endpoints.show), methods=["GET"])]
