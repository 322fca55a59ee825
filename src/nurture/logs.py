"""Structured logs: `key=value` text for people, one JSON object per line for machines (NURTURE_LOG_FORMAT).

Log lines carry ids, never email addresses, names or secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(*, fmt: str = "text", level: str | None = "INFO") -> None:
    """Send log lines of `level` and above to stderr; `level=None` sends them nowhere (not even warnings)."""
    root = logging.getLogger()
    if level is None:
        root.handlers[:] = [logging.NullHandler()]  # also keeps logging's last-resort stderr handler out
        root.setLevel(logging.CRITICAL + 1)
        return
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Dramatiq and APScheduler are chatty at INFO about their own lifecycle.
    for noisy in ("dramatiq", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
