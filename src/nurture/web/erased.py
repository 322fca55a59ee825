"""Which leads were erased, as the tracking web sees it: a set read from the database, kept briefly.

An erased lead's tokens answer 404 (`web.tracking`). Asking the database on every pixel and click would put
a query on the hot path that the event stream keeps free of one, so each web process keeps the ids of the
erased leads and, at most every `refresh_s` (`NURTURE_ERASED_REFRESH_S`), reads those erased since the last
read (a small query: erasures are rare). A request waits for that read at most `READ_WAIT_S`, then answers
from the set it has while the read goes on beside it: a slow or unreachable database holds a pixel or a
click that long at most, once per `refresh_s`, never for its own timeouts. A token of a lead erased a moment
ago may answer for up to `refresh_s` more (and while a slow read lasts); what it sends is still stored
nowhere, because recording refuses an erased lead (`db.queries.events.fetch_existing_lead_ids`, on both the
direct and the batched path). A token version bumped on erasure would need every token ever mailed to carry
a version, and the database read to check it: the same query per request this avoids. A failed read keeps
the set it had and tries again `refresh_s` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Final

from nurture.db.engine import Database
from nurture.db.queries.events import fetch_erased_since

log = logging.getLogger(__name__)

ERASED_REFRESH_S: Final = 5.0
READ_WAIT_S: Final = 0.1  # how long a request waits at most for a read of the set under way


class ErasedLeads:
    def __init__(
        self, db: Database, *, refresh_s: float = ERASED_REFRESH_S, read_wait_s: float = READ_WAIT_S
    ) -> None:
        self._db = db
        self._refresh_s = refresh_s
        self._read_wait_s = read_wait_s
        self._ids: set[int] = set()
        self._latest: datetime | None = None
        self._fresh_until = float("-inf")
        self._read: asyncio.Task[None] | None = None
        self._read_started = float("-inf")

    async def contains(self, lead_id: int) -> bool:
        """True when lead `lead_id` was erased, as of at most `refresh_s` ago while the database answers
        within `read_wait_s` (else as of the last read that ended)."""
        now = time.monotonic()
        if now >= self._fresh_until and (self._read is None or self._read.done()):
            self._read = asyncio.create_task(self._refresh())
            self._read_started = now
        if self._read is not None and not self._read.done():
            wait = self._read_started + self._read_wait_s - now
            if wait > 0:
                await asyncio.wait([self._read], timeout=wait)
        return lead_id in self._ids

    async def aclose(self) -> None:
        """Stop a read under way (the server does, once it stopped answering)."""
        if self._read is not None and not self._read.done():
            self._read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read

    async def _refresh(self) -> None:
        try:
            async with self._db.transaction() as conn:
                erased = await fetch_erased_since(conn, self._latest)
        except Exception as exc:  # the database is down: answer from what is known, try again later
            log.warning("could not read the erased leads: %s: %s", type(exc).__name__, exc)
        else:
            self._ids.update(lead_id for lead_id, _ in erased)
            self._latest = max((at for _, at in erased), default=self._latest)
        finally:
            self._fresh_until = time.monotonic() + self._refresh_s
