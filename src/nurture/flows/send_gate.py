"""Move the messages of a batch to `sending` shortly before they go to the mail server, committed first.

The first message that asks moves itself and the next `ahead` messages of the batch (in send order) in one
transaction (`mark_sending`); the next ones asking find themselves moved already and go at once. So a batch
costs a few small transactions, no message goes out before its `sending` is committed, and a worker killed
mid-batch leaves at most about `ahead` messages it never started `sending` (reported `unknown`); the rest
stay `claimed`, to be sent again once their lease lapses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from nurture.db.engine import Database
from nurture.db.queries.sending import mark_sending


class SendingGate:
    """`await gate.start(delivery_id)` -> True once the delivery is committed `sending` by us."""

    def __init__(self, db: Database, now: datetime, order: Sequence[int], *, ahead: int) -> None:
        self._db, self._now, self._ahead = db, now, ahead
        self._order = list(order)
        self._position = {delivery_id: index for index, delivery_id in enumerate(self._order)}
        self._asked: dict[int, asyncio.Future[bool]] = {}  # each delivery's answer, once its mark began

    async def start(self, delivery_id: int) -> bool:
        """True when the delivery is now `sending` (ours to send); False when another worker moved it on.

        Raises what the database raised; the deliveries of a failed mark stay `claimed`.
        """
        future = self._asked.get(delivery_id)
        if future is None:
            future = self._mark_from(delivery_id)
        return await asyncio.shield(future)

    def _mark_from(self, delivery_id: int) -> asyncio.Future[bool]:
        start = self._position.get(delivery_id, len(self._order))
        chunk = [delivery_id, *(d for d in self._order[start + 1 :] if d not in self._asked)][
            : self._ahead + 1
        ]
        loop = asyncio.get_running_loop()
        futures = {d: loop.create_future() for d in chunk}
        self._asked |= futures
        task = asyncio.ensure_future(self._mark(futures))
        task.add_done_callback(_retrieve)  # failures reach the senders through their futures
        return futures[delivery_id]

    async def _mark(self, futures: dict[int, asyncio.Future[bool]]) -> None:
        try:
            async with self._db.transaction() as conn:
                marked = await mark_sending(conn, list(futures), now=self._now)
        except Exception as exc:
            for future in futures.values():
                future.set_exception(exc)
            raise
        for delivery_id, future in futures.items():
            future.set_result(delivery_id in marked)

    def is_marked(self, delivery_id: int) -> bool:
        """True when the delivery was moved to `sending` by us (whether or not it was sent since)."""
        future = self._asked.get(delivery_id)
        return future is not None and future.done() and not future.exception() and future.result()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
