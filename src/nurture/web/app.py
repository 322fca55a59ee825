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
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nurture.runtime import Runtime
from nurture.web.api import ApiEndpoints, api_routes
from nurture.web.complaints import complaint_routes
from nurture.web.dashboard import dashboard_routes
from nurture.web.hosts import AllowedHostsMiddleware, allowed_hosts
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
    hosts = allowed_hosts(runtime.settings)
    app = Starlette(
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
        middleware=[Middleware(SecurityHeadersMiddleware), Middleware(AllowedHostsMiddleware, hosts=hosts)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.allowed_hosts = hosts  # read by the sign-in and sign-out checks of Origin
    app.router.redirect_slashes = False  # Starlette's redirect is absolute, built from Host: see _http_error
    return app


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


def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods get a plain page instead of Starlette's bare text; a path that is
    known with or without its trailing slash is redirected to that one, by a relative URL."""
    assert isinstance(exc, HTTPException)
    twin = _slash_twin(request) if exc.status_code == 404 and "endpoint" not in request.scope else None
    if twin is not None:
        query = request.scope.get("query_string", b"").decode("latin-1")
        return RedirectResponse(quote(twin) + (f"?{query}" if query else ""), status_code=307)
    body = not_found_page() if exc.status_code == 404 else error_page(exc.status_code, exc.detail)
    return HTMLResponse(body, status_code=exc.status_code, headers=exc.headers)


def _slash_twin(request: Request) -> str | None:
    """The path with its trailing slash added or removed, when a route takes that one."""
    path: str = request.scope["path"]
    if path == "/":
        return None
    twin = path.removesuffix("/") if path.endswith("/") else f"{path}/"
    scope = {**request.scope, "path": twin}
    if any(route.matches(scope)[0] != Match.NONE for route in request.app.router.routes):
        return f"{request.scope.get('root_path', '')}{twin}"
    return None


def _server_error(_request: Request, _exc: Exception) -> Response:
    """An unexpected error: a plain page with the security headers (this answer is sent outside the
    middleware). The error itself is logged by the server."""
    return HTMLResponse(error_page(500, "Internal Server Error"), status_code=500, headers=SECURITY_HEADERS)
