"""The command line's last line of defence: a known error becomes one line on stderr and exit status 1.

Commands turn our own errors into a reason where they happen (`cli._reported`); this catches what gets past
them: a `NurtureError` raised inside a task group, or a library error from a service that went away
mid-command (the database, Redis, the network). It is the one place outside the adapters that names
SQLAlchemy's and Redis's exceptions, because it is the one place that must word any of them for a person.
An error not listed here is a bug, and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable

import dramatiq.errors
import redis
from rich.console import Console
from sqlalchemy import exc as sa

from nurture.errors import ConfigErrors, NurtureError

__all__ = ["known_reason", "run_guarded"]

err = Console(stderr=True, soft_wrap=True)


def known_reason(exc: BaseException) -> str | None:
    """The one-line reason for a known error, or None for an unknown one (a bug)."""
    if isinstance(exc, BaseExceptionGroup):  # an asyncio.TaskGroup's: known when every part is
        reasons = [known_reason(part) for part in exc.exceptions]
        return reasons[0] if all(r is not None for r in reasons) else None
    if isinstance(exc, ConfigErrors):
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        return f"{exc.errors[0]}{more}" if exc.errors else "configuration error"
    if isinstance(exc, NurtureError):
        return str(exc)
    if isinstance(exc, sa.ArgumentError):
        return f"invalid database URL: {_first_line(exc)}"
    if isinstance(exc, sa.DBAPIError):  # OperationalError, InterfaceError, ...: the driver's own words
        return f"database error: {_first_line(exc.orig or exc)}"
    if isinstance(exc, redis.RedisError | dramatiq.errors.ConnectionError):
        return f"Redis: {_first_line(exc)}"
    if isinstance(exc, OSError):  # connection refused, name not known, a file that cannot be written
        return _first_line(exc)
    return None


def run_guarded(app: Callable[[], object]) -> None:
    """Run the command line; print a known error that reached here as one line and exit 1."""
    try:
        app()
    except Exception as exc:  # broad: sorted into known (one line) and unknown (re-raised) just below
        reason = known_reason(exc)
        if reason is None:
            raise
        err.print(f"error: {reason}", markup=False, highlight=False, emoji=False)
        raise SystemExit(1) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
