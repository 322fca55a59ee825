"""Serve the tracking web with uvicorn on the caller's event loop, leaving signals to the caller.

uvicorn's `Server.serve()` installs its own SIGINT/SIGTERM handlers for as long as it runs (and re-raises the
signal afterwards). In `nurture run` the web shares the process with the scheduler and the worker, so one
handler must decide when everything stops: the server here never touches signal handlers, and is stopped by
setting `server.should_exit = True`.

The server runs on uvloop with httptools' parser when they are installed (they are dependencies; uvicorn's
pure-Python fallbacks cost more CPU per request), answers the GETs and HEADs of pixel and click URLs on a fast
path (`FastTrackingPaths`), and closes the tracking endpoints' Redis connections once it stopped answering.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import HTTPProtocolType, LoopFactoryType

from nurture.runtime import Runtime
from nurture.web.app import SECURITY_HEADERS, create_app
from nurture.web.hosts import allowed_hosts, host_name
from nurture.web.pages import not_found_page
from nurture.web.protocol import HeadLimits, bounded_httptools
from nurture.web.tracking import NO_CACHE, PIXEL_GIF, TrackingEndpoints

STOP_TIMEOUT_S: Final = 10  # in-flight requests get this long to finish once we are told to stop


@dataclass(frozen=True, slots=True)
class WebAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, endpoints: list[TrackingEndpoints]) -> None:
        super().__init__(config)
        self._endpoints = endpoints

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: Any = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            for endpoints in self._endpoints:
                await endpoints.aclose()


def fastest_stack() -> tuple[LoopFactoryType, HTTPProtocolType]:
    """uvicorn's `loop` and `http` options: uvloop and httptools when installed, else uvicorn's defaults."""
    loop: LoopFactoryType = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http: HTTPProtocolType = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def build_server(
    runtime: Runtime, address: WebAddress, *, on_event: Callable[[int], None] | None = None
) -> uvicorn.Server:
    """Return a uvicorn server for `create_app(runtime, on_event=...)` that runs until `should_exit` is set.

    Access logs are off: tracking and unsubscribe URLs carry tokens that act for a lead, and logs carry ids
    only. A request's head is bounded in size and in time (`nurture.web.protocol`).
    """
    app = create_app(runtime, on_event=on_event)
    endpoints = tracking_endpoints(app)
    loop, http = fastest_stack()
    limits = HeadLimits.of(runtime.settings)
    config = uvicorn.Config(
        FastTrackingPaths(app, endpoints[0], allowed_hosts(runtime.settings)) if len(endpoints) == 1 else app,
        loop=loop,
        http=bounded_httptools(limits) if http == "httptools" else http,
        h11_max_incomplete_event_size=limits.head_bytes,  # h11 has no count nor timeout of its own
        timeout_keep_alive=runtime.settings.keep_alive_s,
        host=address.host,
        port=address.port,
        lifespan="off",
        ws="none",
        log_config=None,  # keep nurture's logging setup
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=STOP_TIMEOUT_S,
    )
    return _Server(config, endpoints)


def tracking_endpoints(app: Starlette) -> list[TrackingEndpoints]:
    """The `TrackingEndpoints` whose handlers `app` routes to (they hold connections to close)."""
    bound = (getattr(getattr(route, "endpoint", None), "__self__", None) for route in app.routes)
    return list({id(e): e for e in bound if isinstance(e, TrackingEndpoints)}.values())


LOCATION_SAFE: Final = ":/%#?=@[]!$&'()*+,;"  # what Starlette's RedirectResponse leaves unquoted


class FastTrackingPaths:
    """The GETs and HEADs of pixel and click URLs, answered without Starlette's routing, middleware and
    request objects.

    Every email open and link click is one of these, so they are most of the web's load. The answers are the
    app's own, byte for byte: the same `TrackingEndpoints` records the event and chooses the redirect, and
    the same headers are set (`SECURITY_HEADERS` where the endpoint set none), a token that does not
    verify gets the same 404 page. Anything else, and a request
    for a host not in `hosts` (which the app refuses), goes to `app`.
    """

    def __init__(self, app: ASGIApp, endpoints: TrackingEndpoints, hosts: frozenset[str]) -> None:
        self._app = app
        self._endpoints = endpoints
        self._hosts = hosts
        self._pixel_headers = _with_security_headers(
            Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE).raw_headers
        )
        # A redirect's headers but its Location, in Starlette's order: content-length, location, the rest.
        redirect = _with_security_headers(RedirectResponse("/", status_code=307).raw_headers)
        self._redirect_head, self._redirect_tail = redirect[:1], redirect[2:]
        not_found = HTMLResponse(not_found_page(), status_code=404)
        self._not_found = (_with_security_headers(not_found.raw_headers), bytes(not_found.body))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            kind, token = path[:5], path[5:]
            if kind in ("/t/o/", "/t/c/") and token and "/" not in token:
                host, user_agent = _host_and_user_agent(scope)
                if host_name(host) in self._hosts:
                    await self._track(send, kind, token, user_agent, head=scope["method"] == "HEAD")
                    return
        await self._app(scope, receive, send)

    async def _track(self, send: Send, kind: str, token: str, user_agent: str | None, *, head: bool) -> None:
        # A HEAD is recorded as a machine; uvicorn sends no body.
        if kind == "/t/o/":
            if await self._endpoints.record_open(token, user_agent, head=head):
                await _answer(send, 200, self._pixel_headers, PIXEL_GIF)
                return
        else:
            landing = await self._endpoints.record_click(token, user_agent, head=head)
            if landing is not None:
                location = (b"location", quote(landing, safe=LOCATION_SAFE).encode("latin-1"))
                headers = [*self._redirect_head, location, *self._redirect_tail]
                await _answer(send, 307, headers, b"")
                return
        await _answer(send, 404, *self._not_found)  # counted as `invalid` by the endpoints


def _host_and_user_agent(scope: Scope) -> tuple[str, str | None]:
    host, user_agent = "", None
    for key, value in scope["headers"]:
        if key == b"host":
            host = bytes(value).decode("latin-1")
        elif key == b"user-agent":
            user_agent = bytes(value).decode("latin-1")
    return host, user_agent


def _with_security_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    headers = MutableHeaders(raw=list(raw))
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    return headers.raw


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
