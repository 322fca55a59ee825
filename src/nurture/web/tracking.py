"""The tracking endpoints: open pixel, click redirect, reps' share links, and the website's visit beacon.

    GET  /t/o/{token}   1x1 GIF, never cached; records email_open
    GET  /t/c/{token}   307 to the token's URL with `nl=<visitor token>` appended; records email_click
    GET  /t/p/{token}   307 to the token's URL; records `<kind>_view` (proposal_view)
    GET  /t/site.js     the snippet the marketing site embeds (see `site_js`)
    POST /t/v           {token, url, referrer} from site.js; records page_visit (CORS: any origin)

A token that does not verify, or is of another kind, is a 404 and records nothing; query parameters are never
read, so no request can choose where a redirect goes. A valid token is always answered, even when recording
fails (logged and counted as `error`): a lead's click must reach its page whatever our database does. HEAD
requests get the same answer and record nothing. Each handler records one event and enqueues (through the
recorder's `on_event`); nothing else happens inside the request.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from nurture.core.tracking import (
    TrackedLink,
    is_trackable_url,
    read_token,
    visitor_token,
    with_visitor_param,
    without_visitor_param,
)
from nurture.errors import TrackingTokenError
from nurture.flows.engage import InboundEvent, NotRecorded
from nurture.runtime import Runtime
from nurture.web.http import BodyError, read_json
from nurture.web.metrics import WebMetrics
from nurture.web.pages import not_found_page
from nurture.web.recorder import EventRecorder
from nurture.web.site_js import site_script

log = logging.getLogger(__name__)

# The smallest transparent GIF: 1x1, one palette entry, transparent.
PIXEL_GIF: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_CACHE: Final = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}
CORS: Final = {"Access-Control-Allow-Origin": "*"}  # no credentials are ever involved
_PREFLIGHT: Final = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
}
MAX_VISIT_BYTES: Final = 8192
MAX_USER_AGENT_CHARS: Final = 512


class TrackingEndpoints:
    """The tracking handlers, bound to one runtime, recorder and metrics."""

    def __init__(self, runtime: Runtime, recorder: EventRecorder, metrics: WebMetrics) -> None:
        self._runtime = runtime
        self._recorder = recorder
        self._metrics = metrics
        self._key = runtime.mailer.secret_key
        self._script = site_script(f"{runtime.mailer.base_url.rstrip('/')}/t/v")

    async def open_pixel(self, request: Request) -> Response:
        link = self._link(request, "o", route="open")
        if link is None:
            return HTMLResponse(not_found_page(), status_code=404)
        if request.method == "GET":
            await self._record(request, "open", link, "email_open")
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)

    async def click(self, request: Request) -> Response:
        link = self._link(request, "c", route="click")
        if link is None:
            return HTMLResponse(not_found_page(), status_code=404)
        assert link.url is not None  # read_token requires it of a click
        if request.method == "GET":
            await self._record(request, "click", link, "email_click", url=link.url)
        landing = with_visitor_param(link.url, visitor_token(link.lead_id, key=self._key))
        return RedirectResponse(landing, status_code=307)

    async def share_link(self, request: Request) -> Response:
        link = self._link(request, "p", route="share")
        if link is None:
            return HTMLResponse(not_found_page(), status_code=404)
        assert link.url is not None  # read_token requires a URL and a label of a share link
        assert link.label is not None
        if request.method == "GET":
            await self._record(request, "share", link, f"{link.label}_view", url=link.url)
        # No `nl` here: a shared document may be a presigned URL that any added parameter would break.
        return RedirectResponse(link.url, status_code=307)

    async def site_js(self, _request: Request) -> Response:
        return Response(
            self._script,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600", "Cross-Origin-Resource-Policy": "cross-origin"},
        )

    async def visit(self, request: Request) -> Response:
        if request.method == "OPTIONS":  # a preflight; site.js itself never needs one
            return Response(status_code=204, headers={**CORS, **_PREFLIGHT})
        try:
            body = await read_json(request, max_bytes=MAX_VISIT_BYTES)
        except BodyError as exc:
            self._metrics.request("visit", "rejected")
            return Response(exc.message, status_code=exc.status_code, headers=CORS)
        token = body.get("token") if isinstance(body, dict) else None
        link = self._read(token, "v")
        if link is None:
            self._metrics.request("visit", "invalid")
            return Response("unknown visitor", status_code=404, headers=CORS)
        url = body.get("url")
        if not isinstance(url, str) or not is_trackable_url(url):
            self._metrics.request("visit", "rejected")
            return Response("url: an absolute http(s) URL is required", status_code=400, headers=CORS)
        referrer = body.get("referrer")
        extra = {"referrer": referrer} if isinstance(referrer, str) and is_trackable_url(referrer) else {}
        await self._record(request, "visit", link, "page_visit", url=without_visitor_param(url), **extra)
        return Response(status_code=204, headers=CORS)

    def _link(self, request: Request, kind: str, *, route: str) -> TrackedLink | None:
        link = self._read(request.path_params["token"], kind)
        if link is None:
            self._metrics.request(route, "invalid")
        return link

    def _read(self, token: Any, kind: str) -> TrackedLink | None:
        if not isinstance(token, str):
            return None
        try:
            return read_token(token, kind=kind, key=self._key)
        except TrackingTokenError:
            return None

    async def _record(
        self,
        request: Request,
        route: str,
        link: TrackedLink,
        event_type: str,
        *,
        url: str | None = None,
        **properties: str,
    ) -> None:
        user_agent = request.headers.get("user-agent")
        event = InboundEvent(
            lead_id=link.lead_id,
            type=event_type,
            occurred_at=self._runtime.clock.now(),
            url=url,
            user_agent=user_agent[:MAX_USER_AGENT_CHARS] if user_agent else None,
            delivery_id=link.delivery_id,
            properties=properties,
        )
        try:
            [outcome] = await self._recorder.record([event], now=event.occurred_at)
        except Exception as exc:  # an entry point that always answers: the lead gets its page or pixel
            reason = next(iter(str(exc).splitlines()), "")  # one line: an outage must not flood the log
            log.error(
                "could not record %s lead_id=%s delivery_id=%s: %s: %s",
                event_type,
                link.lead_id,
                link.delivery_id,
                type(exc).__name__,
                reason,
            )
            self._metrics.request(route, "error")
            return
        self._metrics.request(route, outcome.value if isinstance(outcome, NotRecorded) else "ok")


def tracking_routes(endpoints: TrackingEndpoints) -> list[Route]:
    return [
        Route("/t/o/{token}", endpoints.open_pixel, methods=["GET"]),
        Route("/t/c/{token}", endpoints.click, methods=["GET"]),
        Route("/t/p/{token}", endpoints.share_link, methods=["GET"]),
        Route("/t/site.js", endpoints.site_js, methods=["GET"]),
        Route("/t/v", endpoints.visit, methods=["POST", "OPTIONS"]),
    ]
