"""The tracking web as an ASGI app: `create_app(runtime, on_event=...)`.

Routes: `/healthz` and `/u/{token}` (routes), `/t/...` (tracking), `/api/leads` and `/api/events` (api),
`/metrics` (Prometheus, in a registry of the app's own), and the reps' pages: `/login`, `/login/{token}`,
`/logout` and `/` (login), `/leads/{id}` (leads).

Every answer carries `Cache-Control: no-store` unless its endpoint chose otherwise (an unsubscribe page must
never be served from a cache; site.js may be) and a Content-Security-Policy that allows no script, no frame
and no form target but ourselves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Final

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nurture.runtime import Runtime
from nurture.web.api import ApiEndpoints, api_routes
from nurture.web.complaints import complaint_routes
from nurture.web.dashboard import dashboard_routes
from nurture.web.leads import LeadEndpoints, lead_routes
from nurture.web.login import LoginEndpoints, RepAuth, login_routes
from nurture.web.metrics import WebMetrics
from nurture.web.pages import CONTENT_SECURITY_POLICY, error_page, not_found_page
from nurture.web.recorder import EventRecorder
from nurture.web.routes import routes
from nurture.web.tracking import TrackingEndpoints, tracking_routes
from nurture.web.views import Views

SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",  # the URL carries a token
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def create_app(runtime: Runtime, *, on_event: Callable[[int], None] | None = None) -> Starlette:
    """Build the tracking web on `runtime`; the caller owns the runtime and closes it.

    `on_event(lead_id)` is called once per request for each lead that got a new event (not for replays),
    right after the commit and on the event loop: it must only enqueue (the lead's re-score).
    """
    metrics = WebMetrics()
    window = timedelta(seconds=runtime.settings.replay_window_s)
    recorder = EventRecorder(runtime.db, metrics, on_event, replay_window=window)
    views = Views()
    reps = RepAuth(runtime)
    return Starlette(
        routes=[
            *routes(runtime),
            *tracking_routes(TrackingEndpoints(runtime, recorder, metrics)),
            *api_routes(ApiEndpoints(runtime, recorder, metrics)),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            *login_routes(LoginEndpoints(runtime, views, reps), views),
            *lead_routes(LeadEndpoints(runtime, views, reps), views),
            *dashboard_routes(runtime, views, reps),
            *complaint_routes(runtime, metrics),
        ],
        middleware=[Middleware(SecurityHeadersMiddleware)],
        exception_handlers={HTTPException: _http_error},
    )


class SecurityHeadersMiddleware:
    """Set SECURITY_HEADERS on every HTTP response the app sends, unless the endpoint set one itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _http_error(_request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods get a plain page instead of Starlette's bare text."""
    assert isinstance(exc, HTTPException)
    body = not_found_page() if exc.status_code == 404 else error_page(exc.status_code, exc.detail)
    return HTMLResponse(body, status_code=exc.status_code, headers=exc.headers)
