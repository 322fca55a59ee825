"""Token-bucket arithmetic: never more than burst + rate * elapsed requests, and Retry-After is honest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.token_bucket import Bucket, BucketLimit, full_bucket, retry_after_header, take

limits = st.builds(
    BucketLimit,
    rate=st.floats(min_value=0.01, max_value=1000, allow_nan=False),
    burst=st.integers(min_value=1, max_value=1000),
)
gaps = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=200)


@given(limit=limits, steps=gaps)
def test_allowed_requests_never_exceed_the_burst_plus_what_the_rate_refilled(
    limit: BucketLimit, steps: list[float]
) -> None:
    bucket, now, allowed = full_bucket(limit, 0.0), 0.0, 0
    for gap in steps:
        now += gap
        decision = take(bucket, limit, now)
        bucket, allowed = decision.bucket, allowed + decision.allowed
        assert 0.0 <= bucket.tokens <= limit.burst
    assert allowed <= limit.burst + limit.rate * now + 1e-6


@given(limit=limits, tokens=st.floats(min_value=0, max_value=0.999), at=st.floats(min_value=0, max_value=1e6))
def test_a_refused_request_is_allowed_once_retry_after_has_passed(
    limit: BucketLimit, tokens: float, at: float
) -> None:
    refused = take(Bucket(tokens, at), limit, at)

    assert not refused.allowed
    assert refused.retry_after > 0
    assert take(refused.bucket, limit, at + refused.retry_after * 1.000001 + 1e-9).allowed


@given(limit=limits, back=st.floats(min_value=0.001, max_value=1e6))
def test_a_clock_that_goes_backwards_mints_no_tokens(limit: BucketLimit, back: float) -> None:
    empty = Bucket(0.0, 1e6)
    assert not take(empty, limit, 1e6 - back).allowed


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (float("inf"), 1), (float("nan"), 1)])
def test_a_limit_without_a_positive_rate_and_burst_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        BucketLimit(rate=rate, burst=burst)
