"""Which `Host` the web answers to, and which `Origin` is this site's own.

The host names are NURTURE_BASE_URL's and those of NURTURE_ALLOWED_HOSTS (loopback by default, for health
checks). A request naming any other host gets 400 before it reaches an endpoint, so no answer is built from a
host a stranger chose (DNS rebinding, poisoned caches and password-reset style links). Starlette's
TrustedHostMiddleware is not used: before Starlette 1.x it cut `[::1]:8000` at the first colon, and
`host_name` is needed anyway for the `Origin` check and the tracking fast path (`web.server`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from nurture.settings import Settings

BAD_HOST: Final = "this web does not answer to that Host"
# RFC 9110's `Host = uri-host [ ":" port ]`: a name or IPv4 address, or an IPv6 address in brackets.
_AUTHORITY: Final = re.compile(r"(?:\[(?P<ipv6>[0-9a-f.]*:[0-9a-f:.]*)\]|(?P<name>[^\[\]@:/\s]*))(?::\d*)?")


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The host names (lower-case, no port, IPv6 without brackets) the web answers to."""
    extra = (name.strip() for name in settings.allowed_hosts.split(","))
    base = urlsplit(settings.base_url).hostname or ""
    return frozenset(host_name(name) for name in (base, *extra) if name)


def host_name(host: str) -> str:
    """`host` as in a Host header or URL authority, without its port or brackets, lower-case.

    Anything else (`[::1]evil`, `evil@localhost`, a bare `::1` as NURTURE_ALLOWED_HOSTS may name it) is
    returned whole, lower-case: it names an allowed host only when configured exactly so.
    """
    host = host.strip().lower()
    match = _AUTHORITY.fullmatch(host)
    if match is None:
        return host
    return match["ipv6"] or match["name"]


def is_foreign_origin(origin: str | None, hosts: Iterable[str]) -> bool:
    """True when `origin` (an `Origin` header) names a site other than ours; False when absent."""
    if origin is None:
        return False
    try:
        authority = urlsplit(origin.strip()).netloc
    except ValueError:  # `http://[::1` and other authorities urllib refuses
        return True
    return not authority or host_name(authority) not in hosts  # `null` (a sandboxed page) is foreign


class AllowedHostsMiddleware:
    """Answer 400 to an HTTP request whose Host (or, without one, nothing) is not an allowed host."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and host_name(Headers(scope=scope).get("host", "")) not in self.hosts:
            await PlainTextResponse(BAD_HOST, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)
