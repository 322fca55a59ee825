"""The one place that reads the wall clock.

Everything that needs "now" asks a `Clock`, so a 21-day campaign can be simulated and `nurture tick --now`
can run one pass at any instant. `FileClock` lets separate processes share one simulated time.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Return the current instant as an aware UTC datetime."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to."""

    def __init__(self, at: datetime) -> None:
        self._at = _aware_utc(at)

    def now(self) -> datetime:
        return self._at

    def set(self, at: datetime) -> None:
        self._at = _aware_utc(at)

    def advance(self, by: timedelta) -> None:
        self._at += by


class FileClock:
    """Reads "now" (ISO-8601) from a file at every call.

    Used for staging runs and tests in which a scheduler and separate worker processes must agree on a
    simulated time (`NURTURE_CLOCK_FILE`).
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def now(self) -> datetime:
        return parse_instant(self._path.read_text(encoding="utf-8").strip())

    @staticmethod
    def write(path: Path, at: datetime) -> None:
        """Set the shared time atomically (write, then rename)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(_aware_utc(at).isoformat(), encoding="utf-8")
        os.replace(tmp, path)


def parse_instant(text: str) -> datetime:
    """Parse ISO-8601; a value without an offset is taken as UTC."""
    return _aware_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _aware_utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
