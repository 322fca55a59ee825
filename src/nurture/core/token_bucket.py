"""Token-bucket arithmetic for per-key request limits. Pure: the caller passes the time and keeps the state.

A bucket holds at most `burst` tokens and gains `rate` tokens a second; a request takes one. An empty bucket
answers how long until the next token, which becomes the `Retry-After` of a 429.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketLimit:
    rate: float  # tokens gained per second
    burst: int  # the most tokens a bucket holds (and a fresh one starts with)

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)) or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    at: float  # seconds on the caller's monotonic clock when `tokens` was counted


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    bucket: Bucket  # the state to keep
    retry_after: float  # seconds until a request would be allowed; 0 when allowed


def full_bucket(limit: BucketLimit, now: float) -> Bucket:
    return Bucket(tokens=float(limit.burst), at=now)


def take(bucket: Bucket, limit: BucketLimit, now: float) -> Decision:
    """Take one token from `bucket` at `now`, or say how long to wait for one.

    A clock that went backwards adds nothing (the bucket's time stays), so it can never mint tokens.
    """
    elapsed = max(0.0, now - bucket.at)
    tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.rate)
    at = max(now, bucket.at)
    if tokens >= 1.0:
        return Decision(True, Bucket(tokens - 1.0, at), 0.0)
    return Decision(False, Bucket(tokens, at), (1.0 - tokens) / limit.rate)


def retry_after_header(seconds: float) -> str:
    """Whole seconds for `Retry-After`, rounded up and at least 1 (0 would invite an immediate retry)."""
    return str(max(1, math.ceil(seconds)))
