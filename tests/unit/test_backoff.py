"""The one backoff formula: a delivery's retries and a recipient domain's pauses."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from nurture.core.backoff import backoff

failures = st.integers(min_value=-5, max_value=10_000)
bases = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=2))
caps = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=30))


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    minute, cap = timedelta(minutes=1), timedelta(minutes=10)
    waits = [backoff(n, base=minute, cap=cap) for n in range(0, 7)]
    assert waits == [minute, minute, 2 * minute, 4 * minute, 8 * minute, cap, cap]


@given(failures, failures, bases, caps)
def test_backoff_never_shortens_as_failures_add_up(a: int, b: int, base: timedelta, cap: timedelta) -> None:
    fewer, more = sorted((a, b))
    assert backoff(fewer, base=base, cap=cap) <= backoff(more, base=base, cap=cap)


@given(failures, bases, caps)
def test_backoff_is_capped_and_never_below_the_first_wait(n: int, base: timedelta, cap: timedelta) -> None:
    wait = backoff(n, base=base, cap=cap)
    assert min(base, cap) <= wait <= cap
    assert wait == cap or wait in {base * 2**k for k in range(21)}  # a doubling of the base, or the cap
