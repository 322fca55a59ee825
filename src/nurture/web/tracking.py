"""The tracking endpoints: open pixel, click redirect, reps' share links, and the website's visit beacon.

    GET  /t/o/{token}   1x1 GIF, never cached; records email_open
    GET  /t/c/{token}   307 to the token's URL with `nl=<visitor token>` appended (not for a HEAD: a link
                        checker never learns the visitor token); records email_click
    GET  /t/p/{token}   307 to the token's URL; records `<kind>_view` (proposal_view)
    GET  /t/site.js     the snippet the marketing site embeds (see `site_js`)
    POST /t/v           {token, url, referrer} from site.js; records page_visit (CORS: any origin)

A visit counts only for a page of the company's own sites (`NURTURE_SITE_HOSTS`, else the hosts of the
templates' links; `core.site_hosts`): any other URL is a 400 and records nothing. Visits are rate-limited
per visitor token (`NURTURE_VISIT_RATE_PER_S`, `NURTURE_VISIT_BURST`) and per client address
(`NURTURE_VISIT_CLIENT_RATE_PER_S`, `NURTURE_VISIT_CLIENT_BURST`): over it, a 429 with `Retry-After`.
The same page again within the replay window counts once (`flows.engage`).

A token that does not verify, is of another kind, or is an erased lead's (`web.erased`), is a 404 and
records nothing; query parameters are never
read, so no request can choose where a redirect goes. A valid token is always answered, even when recording
fails (logged and counted as `error`): a lead's click must reach its page whatever our database does. A HEAD
of a pixel or click URL gets the same answer and is recorded as machine engagement (`head_request`: people's
mail clients and browsers GET; link checkers and previewers ask HEAD). With Redis configured, recording an
event is one append to the event stream, stored in batches by the workers; without it, each handler records
one event and enqueues (through the recorder's `on_event`). Nothing else happens inside the request (see
`TrackingRecorder`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from nurture.core.events import InboundEvent
from nurture.core.site_hosts import is_site_page, parse_site_hosts
from nurture.core.token_bucket import BucketLimit, retry_after_header
from nurture.core.tracking import (
    TrackedLink,
    is_trackable_url,
    read_token,
    visitor_token,
    with_visitor_param,
    without_visitor_param,
)
from nurture.errors import TrackingTokenError
from nurture.runtime import Runtime
from nurture.web.auth import RateLimiter
from nurture.web.erased import ErasedLeads
from nurture.web.http import BodyError, read_json
from nurture.web.metrics import WebMetrics
from nurture.web.pages import not_found_page
from nurture.web.recorder import EventRecorder, TrackingRecorder
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
        self._recorder = TrackingRecorder.for_redis(
            recorder, runtime.settings.redis_url, rules=runtime.catalog.scoring
        )
        self._metrics = metrics
        self._key = runtime.mailer.secret_key
        settings = runtime.settings
        self._erased = ErasedLeads(runtime.db, refresh_s=settings.erased_refresh_s)
        self._site_hosts = parse_site_hosts(settings.site_hosts) or runtime.catalog.link_hosts()
        if not self._site_hosts:
            log.warning("no site hosts: NURTURE_SITE_HOSTS is empty and no template links a site")
        per_token = BucketLimit(rate=settings.visit_rate_per_s, burst=settings.visit_burst)
        per_client = BucketLimit(rate=settings.visit_client_rate_per_s, burst=settings.visit_client_burst)
        self._visit_tokens = RateLimiter(per_token, runtime.clock)
        self._visit_clients = RateLimiter(per_client, runtime.clock)
        self._script = site_script(f"{runtime.mailer.base_url.rstrip('/')}/t/v")

    async def aclose(self) -> None:
        """Close the event stream's connections and stop a read of the erased leads under way (the server
        does, once it stopped answering)."""
        await self._erased.aclose()
        await self._recorder.aclose()

    async def open_pixel(self, request: Request) -> Response:
        head = request.method == "HEAD"
        found = await self.record_open(
            request.path_params["token"], request.headers.get("user-agent"), head=head
        )
        if not found:
            return HTMLResponse(not_found_page(), status_code=404)
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)

    async def click(self, request: Request) -> Response:
        head = request.method == "HEAD"
        landing = await self.record_click(
            request.path_params["token"], request.headers.get("user-agent"), head=head
        )
        if landing is None:
            return HTMLResponse(not_found_page(), status_code=404)
        return RedirectResponse(landing, status_code=307)

    async def record_open(self, token: str, user_agent: str | None, *, head: bool = False) -> bool:
        """Record the open that a GET (or `head`: HEAD) of pixel `token` means; False (nothing recorded) for a
        bad token."""
        link = await self._live(token, "o")
        if link is None:
            self._metrics.request("open", "invalid")
            return False
        await self._record(user_agent, "open", link, "email_open", head_request=head)
        return True

    async def record_click(self, token: str, user_agent: str | None, *, head: bool = False) -> str | None:
        """Record the click a GET (or `head`: HEAD) of link `token` means, and return where it goes; None for
        a bad token."""
        link = await self._live(token, "c")
        if link is None:
            self._metrics.request("click", "invalid")
            return None
        assert link.url is not None  # read_token requires it of a click
        await self._record(user_agent, "click", link, "email_click", url=link.url, head_request=head)
        return link.url if head else self._landing(link)

    def _landing(self, link: TrackedLink) -> str:
        assert link.url is not None
        return with_visitor_param(link.url, visitor_token(link.lead_id, key=self._key))

    async def share_link(self, request: Request) -> Response:
        link = await self._link(request, "p", route="share")
        if link is None:
            return HTMLResponse(not_found_page(), status_code=404)
        assert link.url is not None  # read_token requires a URL and a label of a share link
        assert link.label is not None
        if request.method == "GET":
            await self._record(
                request.headers.get("user-agent"), "share", link, f"{link.label}_view", url=link.url
            )
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
        client = request.client.host if request.client is not None else "-"
        limited = self._limited(self._visit_clients, client, "too many visits from this address")
        if limited is not None:
            return limited
        try:
            body = await read_json(
                request, max_bytes=MAX_VISIT_BYTES, max_depth=self._runtime.settings.max_json_depth
            )
        except BodyError as exc:
            self._metrics.request("visit", "rejected")
            return Response(exc.message, status_code=exc.status_code, headers=CORS)
        token = body.get("token") if isinstance(body, dict) else None
        link = await self._live(token, "v")
        if link is None:
            self._metrics.request("visit", "invalid")
            return Response("unknown visitor", status_code=404, headers=CORS)
        limited = self._limited(self._visit_tokens, str(token), "too many visits for this visitor")
        if limited is not None:
            return limited
        url = body.get("url")
        if not isinstance(url, str) or not is_trackable_url(url):
            self._metrics.request("visit", "rejected")
            return Response("url: an absolute http(s) URL is required", status_code=400, headers=CORS)
        if not is_site_page(url, self._site_hosts):
            self._metrics.request("visit", "rejected")
            return Response("url: not a page of this company's sites", status_code=400, headers=CORS)
        referrer = body.get("referrer")
        extra = {"referrer": referrer} if isinstance(referrer, str) and is_trackable_url(referrer) else {}
        await self._record(
            request.headers.get("user-agent"),
            "visit",
            link,
            "page_visit",
            url=without_visitor_param(url),
            properties=extra,
        )
        return Response(status_code=204, headers=CORS)

    def _limited(self, limiter: RateLimiter, key: str, message: str) -> Response | None:
        wait = limiter.take(key)
        if wait is None:
            return None
        self._metrics.request("visit", "limited")
        return Response(message, status_code=429, headers={**CORS, "Retry-After": retry_after_header(wait)})

    async def _link(self, request: Request, kind: str, *, route: str) -> TrackedLink | None:
        link = await self._live(request.path_params["token"], kind)
        if link is None:
            self._metrics.request(route, "invalid")
        return link

    async def _live(self, token: Any, kind: str) -> TrackedLink | None:
        """The link `token` makes, unless it does not verify or names an erased lead."""
        link = self._read(token, kind)
        if link is None or await self._erased.contains(link.lead_id):
            return None
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
        user_agent: str | None,
        route: str,
        link: TrackedLink,
        event_type: str,
        *,
        url: str | None = None,
        head_request: bool = False,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        event = InboundEvent(
            lead_id=link.lead_id,
            type=event_type,
            occurred_at=self._runtime.clock.now(),
            url=url,
            user_agent=user_agent[:MAX_USER_AGENT_CHARS] if user_agent else None,
            delivery_id=link.delivery_id,
            properties=properties or {},
            head_request=head_request,
        )
        try:
            outcome = await self._recorder.accept(event)
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
        self._metrics.request(route, outcome)


def tracking_routes(endpoints: TrackingEndpoints) -> list[Route]:
    return [
        Route("/t/o/{token}", endpoints.open_pixel, methods=["GET"]),
        Route("/t/c/{token}", endpoints.click, methods=["GET"]),
        Route("/t/p/{token}", endpoints.share_link, methods=["GET"]),
        Route("/t/site.js", endpoints.site_js, methods=["GET"]),
        Route("/t/v", endpoints.visit, methods=["POST", "OPTIONS"]),
    ]
