"""Exponential backoff, the one formula behind a delivery's retries and a recipient domain's pauses."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

_MAX_DOUBLINGS: Final = 20  # 2**20 times the base is past any cap in use; it keeps the shift small


def backoff(failures: int, *, base: timedelta, cap: timedelta) -> timedelta:
    """The wait after the `failures`-th consecutive failure: base, 2x, 4x, ... at most `cap`.

    A count below 1 waits `base` (at most `cap`), as the first failure does.
    """
    return min(base * (1 << min(max(failures - 1, 0), _MAX_DOUBLINGS)), cap)
