"""The company's own websites: which pages a visit beacon may name (`NURTURE_SITE_HOSTS`).

A host listed covers itself and every subdomain: `acmeflow.example` takes `https://acmeflow.example/demo`
and `https://www.acmeflow.example:8443/demo`, not `https://acmeflow.example.attacker.example/` nor
`https://evilacmeflow.example/`. Hosts compare as IDNA (punycode), case-insensitively, without a trailing dot;
a URL's host is what `urllib` reads after any `user@` part and before the port, so
`https://acmeflow.example@attacker.example/` names attacker.example. A URL whose host cannot be read names
no site.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Final
from urllib.parse import urlsplit

__all__ = ["hosts_of_urls", "is_site_page", "normal_host", "parse_site_hosts", "url_host"]

_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_SEPARATORS: Final = re.compile(r"[\s,]+")


def normal_host(host: str) -> str | None:
    """`host` lower-cased, in IDNA (punycode) form, without a trailing dot; None if it is no host name."""
    text = host.strip().rstrip(".")
    if not text:
        return None
    try:
        ascii_host = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_host


def parse_site_hosts(text: str) -> frozenset[str]:
    """The hosts of a comma- or space-separated list such as `acmeflow.example, docs.acmeflow.example`.

    Raises:
        ValueError: an entry is not a bare host name (a scheme, port, path or `@` included), named.
    """
    hosts: set[str] = set()
    for entry in (e for e in _SEPARATORS.split(text) if e):
        host = normal_host(entry)
        if host is None:
            raise ValueError(f"site host {entry!r} is not a host name such as acmeflow.example")
        hosts.add(host)
    return frozenset(hosts)


def url_host(url: str) -> str | None:
    """The normalised host of `url`, or None when it has none that can be read."""
    try:
        host = urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    return normal_host(host) if host else None


def is_site_page(url: str, hosts: Collection[str]) -> bool:
    """True when `url` is a page of one of `hosts` (normalised, as `parse_site_hosts` returns them)."""
    host = url_host(url)
    return host is not None and any(host == site or host.endswith("." + site) for site in hosts)


def hosts_of_urls(urls: Iterable[str]) -> frozenset[str]:
    """The normalised hosts of the absolute http(s) URLs among `urls`."""
    found: set[str] = set()
    for url in urls:
        if url.split(":", 1)[0].lower() in ("http", "https"):
            host = url_host(url)
            if host is not None:
                found.add(host)
    return frozenset(found)
