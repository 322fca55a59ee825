"""Is one engagement event the work of a machine? The single rule, applied when an event is stored and again
when it is scored, so a stored `machine` flag and a score never disagree.

An event is machine-made, for the first reason that holds:

- it came as an HTTP HEAD request (link checkers and previews ask whether a URL exists; people never do);
- its user agent contains one of `scanner_user_agents` (case-insensitive substrings: image proxies, security
  gateways, link scanners);
- it is an `email_open` or `email_click` dated before its email was sent, or an open less than
  `min_open_delay` after it, or a click less than `MIN_CLICK_DELAY` after it (a gateway that fetches the
  pixel or follows one link while the message is in transit).

Bursts of clicks need the lead's other events, so they are decided when scoring (`core.scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

__all__ = ["HEAD_REQUEST", "MIN_CLICK_DELAY", "machine_reason"]

HEAD_REQUEST: Final = "HEAD request"
MIN_CLICK_DELAY: Final = timedelta(seconds=1)
_VERBS: Final = {"email_open": "open", "email_click": "click"}


def machine_reason(
    event_type: str,
    *,
    occurred_at: datetime,
    user_agent: str | None,
    delivery_sent_at: datetime | None,
    scanner_user_agents: Sequence[str],
    min_open_delay: timedelta,
    head_request: bool = False,
) -> str | None:
    """Why the event looks machine-made ("HEAD request", "scanner user agent (barracuda)", ...), or None.

    `delivery_sent_at` is when the email an open or click belongs to was sent (None: unknown or not sent).
    """
    if head_request:
        return HEAD_REQUEST
    agent = (user_agent or "").casefold()
    scanner = next((ua for ua in scanner_user_agents if ua and ua.casefold() in agent), None)
    if scanner is not None:
        return f"scanner user agent ({scanner})"
    verb = _VERBS.get(event_type)
    if verb is None or delivery_sent_at is None:
        return None
    delay = occurred_at - delivery_sent_at
    if delay < timedelta(0):
        return f"{verb} before delivery"
    if delay < (min_open_delay if verb == "open" else MIN_CLICK_DELAY):
        return f"{verb} {_duration(delay)} after delivery"
    return None


def _duration(delay: timedelta) -> str:
    seconds = delay.total_seconds()
    return f"{int(seconds)}s" if seconds >= 1 else f"{int(seconds * 1000)}ms"
