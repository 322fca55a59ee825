"""The sales-ops dashboard, behind the reps' login: campaign funnels, hot leads and source quality."""

from __future__ import annotations

from starlette.routing import BaseRoute

from nurture.runtime import Runtime
from nurture.web.login import RepAuth
from nurture.web.views import Views


def dashboard_routes(runtime: Runtime, views: Views, reps: RepAuth) -> list[BaseRoute]:
    del runtime, views, reps
    return []
