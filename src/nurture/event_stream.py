"""The Redis stream that carries tracking events from the web to the worker that stores them.

    web:       XADD nurture:events * e <json>           one write per pixel, click or visit, then the answer
    consumer:  XREADGROUP GROUP recorders <name> ...    a batch, stored in one transaction (event_consumer)
               XACK + XDEL                              only after the commit
               XAUTOCLAIM                               entries a dead consumer read but never acknowledged

An entry is acknowledged only once its events are committed, so a consumer that dies mid-batch leaves its
entries pending, and another consumer (or itself, restarted) claims them again. Each event's idempotency key
is derived from its entry id (`entry_key`), so an entry stored twice is recorded once. Entries that cannot be
decoded are copied to `nurture:events:rejected` (with the reason, capped in length) and acknowledged: one bad
entry never blocks the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio
from redis.exceptions import ResponseError

from nurture.core.events import InboundEvent

STREAM: Final = "nurture:events"
GROUP: Final = "recorders"
REJECTED_MAX: Final = 10_000  # rejected entries kept for inspection (approximately; oldest dropped first)
FIELD: Final = b"e"
KEY_PREFIX: Final = "stream:"  # reserved: the events API refuses client keys that start with it


def entry_key(entry_id: str) -> str:
    """The idempotency key of the event carried by stream entry `entry_id` (`KEY_PREFIX` + the id)."""
    return f"{KEY_PREFIX}{entry_id}"


def encode_event(event: InboundEvent) -> bytes:
    """The compact JSON one stream entry carries (times as UTC microseconds since the epoch)."""
    body: dict[str, Any] = {
        "l": event.lead_id,
        "t": event.type,
        "at": round(event.occurred_at.timestamp() * 1_000_000),
    }
    optional = {"u": event.url, "ua": event.user_agent, "d": event.delivery_id}
    body.update((k, v) for k, v in optional.items() if v is not None)
    if event.properties:
        body["p"] = dict(event.properties)
    if event.head_request:
        body["h"] = True
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_event(entry_id: str, fields: Mapping[bytes, bytes] | None) -> InboundEvent:
    """The event in a stream entry, keyed by its entry id; ValueError (one line) when it is not one."""
    if not fields or FIELD not in fields:
        raise ValueError("no event field")
    try:
        body = json.loads(fields[FIELD])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    lead_id, at, delivery_id = body.get("l"), body.get("at"), body.get("d")
    properties = body.get("p", {})
    if not (isinstance(lead_id, int) and isinstance(at, int)) or isinstance(lead_id, bool):
        raise ValueError("l and at must be integers, d an integer when present")
    if not _is_int(delivery_id, optional=True):
        raise ValueError("l and at must be integers, d an integer when present")
    if not isinstance(properties, dict) or not all(_is_text(body.get(k)) for k in ("u", "ua")):
        raise ValueError("u and ua must be strings when present, p an object")
    head_request = body.get("h", False)
    if not isinstance(head_request, bool):
        raise ValueError("h must be a boolean when present")
    try:
        occurred_at = datetime.fromtimestamp(at / 1_000_000, tz=UTC)
        return InboundEvent(
            lead_id=lead_id,
            type=str(body.get("t")),
            occurred_at=occurred_at,
            url=body.get("u"),
            user_agent=body.get("ua"),
            delivery_id=delivery_id,
            idempotency_key=entry_key(entry_id),
            properties=properties,
            head_request=head_request,
        )
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(str(exc)) from None


def _is_int(value: Any, *, optional: bool) -> bool:
    return (optional and value is None) or (isinstance(value, int) and not isinstance(value, bool))


def _is_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    fields: Mapping[bytes, bytes] | None  # None: the entry was deleted while it was pending


class EventStream:
    """The stream, its consumer group and its rejected entries, on one async Redis client."""

    def __init__(self, client: redis.asyncio.Redis, *, stream: str = STREAM, group: str = GROUP) -> None:
        self._client = client
        self._waiting: list[tuple[bytes, asyncio.Future[str]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.stream = stream
        self.group = group
        self.rejected = f"{stream}:rejected"

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, stream: str = STREAM) -> EventStream:
        """A stream on `url` whose commands fail after `timeout_s` (the caller decides what then)."""
        client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0
        )
        return cls(client, stream=stream)

    async def append(self, event: InboundEvent) -> str:
        """Add `event` (one XADD) and return its entry id once Redis has it.

        Appends made while the previous round trip is under way go together in the next one (a pipeline of
        XADDs): under load, many requests share one round trip instead of queueing for connections.
        """
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((encode_event(event), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for body, _ in batch:
                        pipe.xadd(self.stream, {FIELD: body})
                    replies = await pipe.execute(raise_on_error=False)
            except BaseException as exc:  # the connection failed (or we are cancelled): no entry is known
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            exc if isinstance(exc, Exception) else ConnectionError("cancelled")
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():  # its request went away; the entry is stored all the same
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(_text(reply))

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists; a new group reads from the start."""
        try:
            await self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, *, count: int, block_ms: int | None, own: bool) -> list[StreamEntry]:
        """New entries for `consumer` (waiting up to `block_ms`), or with `own` those it read, not acked."""
        reply = await self._client.xreadgroup(
            self.group,
            consumer,
            {self.stream: "0" if own else ">"},
            count=count,
            block=None if own else block_ms,
        )
        return [StreamEntry(_text(i), f) for _, entries in (reply or []) for i, f in entries]  # type: ignore[str-unpack, union-attr, arg-type]

    async def claim_stale(self, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Take over up to `count` entries other consumers read but left unacknowledged for `min_idle_ms`."""
        reply = await self._client.xautoclaim(
            self.stream, self.group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        return [StreamEntry(_text(i), f) for i, f in reply[1]]

    async def settle(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge and delete entries whose events are committed (one round trip)."""
        if entry_ids:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, self.group, *entry_ids)
                pipe.xdel(self.stream, *entry_ids)
                await pipe.execute()

    async def reject(self, entry: StreamEntry, reason: str) -> None:
        """Keep an entry that cannot be recorded in the rejected stream, with `reason`, and settle it."""
        fields: dict[Any, Any] = {"id": entry.entry_id, "reason": reason[:500], **(entry.fields or {})}
        await self._client.xadd(self.rejected, fields, maxlen=REJECTED_MAX, approximate=True)
        await self.settle([entry.entry_id])

    async def pending(self) -> int:
        """Entries read by some consumer and not yet acknowledged."""
        info = await self._client.xpending(self.stream, self.group)
        return int(info["pending"])

    async def length(self) -> int:
        """Entries in the stream: not yet read, or read and not yet acknowledged."""
        return int(await self._client.xlen(self.stream))

    async def aclose(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
