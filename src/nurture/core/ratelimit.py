"""Per-recipient-domain rate limits: parsing `NURTURE_DOMAIN_RATE_LIMITS` and the window arithmetic.

A limit such as `gmail.com=600/h` means at most 600 deliveries to gmail.com are claimed in each clock hour
(windows are aligned to the Unix epoch, so every scheduler agrees on them). `*` is the limit of every domain
not named; a count of 0, or no rule at all, means no cap. The counts themselves live in the database; this
module only decides how many more a domain may get.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PERIODS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_RULE = re.compile(r"^(?P<domain>\*|[a-z0-9.-]+)=(?P<count>\d+)(?:/(?P<period>[smhd]))?$")
WILDCARD = "*"


class RateLimitSyntaxError(ValueError):
    """A rate-limit rule that cannot be read; the message names the rule."""


@dataclass(frozen=True, slots=True)
class Rate:
    count: int  # at most this many per window; 0 means no cap
    period: timedelta

    @property
    def capped(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class RateLimits:
    rules: Mapping[str, Rate] = field(default_factory=lambda: MappingProxyType({}))

    def rate_for(self, domain: str) -> Rate | None:
        """The cap on `domain`, or None when it has none."""
        rate = self.rules.get(domain.lower()) or self.rules.get(WILDCARD)
        return rate if rate is not None and rate.capped else None

    @property
    def any_capped(self) -> bool:
        return any(rate.capped for rate in self.rules.values())


@dataclass(frozen=True, slots=True)
class WindowCount:
    """How many deliveries a domain got in the window that starts at `window_start`."""

    window_start: datetime
    used: int


def parse_rate_limits(text: str) -> RateLimits:
    """Read rules like `gmail.com=600/h, outlook.com=300/h, *=0` (comma or space separated; period s, m, h
    or d, default h). Raises `RateLimitSyntaxError` naming the first bad rule."""
    rules: dict[str, Rate] = {}
    for raw in re.split(r"[,\s]+", text.strip()):
        if not raw:
            continue
        match = _RULE.match(raw.lower())
        if match is None:
            raise RateLimitSyntaxError(
                f"bad domain rate limit {raw!r}: expected DOMAIN=COUNT/PERIOD, e.g. gmail.com=600/h"
            )
        domain = match["domain"]
        if domain in rules:
            raise RateLimitSyntaxError(f"domain rate limit for {domain!r} is given twice")
        rules[domain] = Rate(int(match["count"]), _PERIODS[match["period"] or "h"])
    return RateLimits(MappingProxyType(rules))


def window_start(now: datetime, period: timedelta) -> datetime:
    """The start of the window of length `period` that holds `now` (aligned to the Unix epoch)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    elapsed = now.astimezone(UTC) - _EPOCH
    return _EPOCH + period * (elapsed // period)


def grant(count: WindowCount | None, rate: Rate, wanted: int, now: datetime) -> tuple[int, WindowCount]:
    """How many of `wanted` deliveries a domain may get at `now`, and its count afterwards.

    A count from an earlier window no longer applies; the grant never takes the window past `rate.count`.
    """
    start = window_start(now, rate.period)
    used = count.used if count is not None and count.window_start == start else 0
    granted = max(0, min(wanted, rate.count - used))
    return granted, WindowCount(start, used + granted)


def recipient_domain(email: str) -> str:
    """The lower-case domain of an address ('' when it has none)."""
    return email.rpartition("@")[2].lower() if "@" in email else ""
