"""The buffered tracking path on real Redis and a real database (SQLite and PostgreSQL): events appended to
the stream are stored once by the consumer, whatever happens to it in between.

Each test uses a stream of its own in the test Redis database (NURTURE_TEST_REDIS).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from nurture.clock import FrozenClock
from nurture.core.events import InboundEvent, NotRecorded, RecordedEvent
from nurture.db.engine import Database
from nurture.db.queries.tables import events, leads, touchpoints
from nurture.event_consumer import EventConsumer
from nurture.event_stream import EventStream, decode_event, encode_event, entry_key
from nurture.flows.engage import record_keyed_events
from nurture.flows.ingest import import_leads
from nurture.web.metrics import WebMetrics
from nurture.web.recorder import EventRecorder, TrackingRecorder
from tests.services import REDIS_URL, require_service

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
UA = "Mozilla/5.0"


# --- the entry format (no services) -----------------------------------------------------------------------


@given(
    lead_id=st.integers(min_value=1, max_value=2**53),
    micros=st.integers(min_value=0, max_value=4_000_000_000 * 1_000_000),
    url=st.none() | st.text(max_size=50),
    agent=st.none() | st.text(max_size=50),
    delivery_id=st.none() | st.integers(min_value=1, max_value=2**53),
)
def test_an_event_survives_the_stream_format(
    lead_id: int, micros: int, url: str | None, agent: str | None, delivery_id: int | None
) -> None:
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    event = InboundEvent(lead_id, "email_click", at, url=url, user_agent=agent, delivery_id=delivery_id)
    decoded = decode_event("1-0", {b"e": encode_event(event)})
    assert decoded.occurred_at == at
    assert (decoded.lead_id, decoded.url, decoded.user_agent, decoded.delivery_id) == (
        lead_id,
        url,
        agent,
        delivery_id,
    )
    assert decoded.idempotency_key == entry_key("1-0")


@pytest.mark.parametrize(
    "fields",
    [
        None,
        {},
        {b"x": b"1"},
        {b"e": b"\xff\xfe"},
        {b"e": b"{not json"},
        {b"e": b"[1, 2]"},
        {b"e": b'{"l": "7", "t": "email_open", "at": 1}'},
        {b"e": b'{"l": true, "t": "email_open", "at": 1}'},
        {b"e": b'{"l": 7, "t": "Email Open!", "at": 1}'},
        {b"e": b'{"l": 7, "t": "email_open", "at": 1, "d": "x"}'},
        {b"e": b'{"l": 7, "t": "email_open", "at": 1, "p": [1]}'},
        {b"e": b'{"l": 7, "t": "email_open", "at": 1, "u": 5}'},
        {b"e": b'{"l": 7, "t": "email_open", "at": 99999999999999999999999}'},
    ],
)
def test_garbage_is_not_an_event(fields: dict[bytes, bytes] | None) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        decode_event("1-0", fields)
    assert "\n" not in str(caught.value)


# --- the consumer ------------------------------------------------------------------------------------------


@pytest.fixture
async def stream() -> AsyncIterator[EventStream]:
    require_service(REDIS_URL, "Redis")
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    name = f"test:events:{uuid.uuid4().hex}"
    events_stream = EventStream(client, stream=name)
    await events_stream.ensure_group()
    yield events_stream
    await client.delete(name, events_stream.rejected)
    await events_stream.aclose()


@pytest.fixture
async def lead_ids(db: Database) -> list[int]:
    rows = [{"email": f"lead{i}@example.com", "grade": "nurturable"} for i in range(3)]
    await import_leads(db, rows, now=NOW)
    async with db.transaction() as conn:
        return list((await conn.execute(select(leads.c.id).order_by(leads.c.id))).scalars())


class Rescores:
    """The consumer's `enqueue_rescores`; `hold()` makes it block (a process stuck after its commit)."""

    def __init__(self) -> None:
        self.leads: list[int] = []
        self.entered = threading.Event()
        self._release = threading.Event()
        self._release.set()

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def __call__(self, lead_ids: Sequence[int]) -> None:
        self.entered.set()
        self._release.wait(timeout=30)
        self.leads.extend(lead_ids)


def _consumer(
    stream: EventStream, db: Database, rescores: Rescores, name: str, **options: Any
) -> EventConsumer:
    return EventConsumer(stream, db, FrozenClock(NOW), rescores, name=name, block_ms=50, **options)


async def _append(stream: EventStream, lead_ids: Sequence[int], count: int) -> list[str]:
    return [
        await stream.append(
            InboundEvent(lead_ids[i % len(lead_ids)], "email_open", NOW - timedelta(seconds=i), user_agent=UA)
        )
        for i in range(count)
    ]


async def _count(db: Database, table: Any) -> int:
    async with db.transaction() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def _keys(db: Database) -> list[str]:
    async with db.transaction() as conn:
        return sorted((await conn.execute(select(events.c.idempotency_key))).scalars())


async def test_the_consumer_stores_a_batch_enqueues_its_leads_and_empties_the_stream(
    db: Database, stream: EventStream, lead_ids: list[int]
) -> None:
    ids = await _append(stream, lead_ids, 7)
    rescores = Rescores()
    report = await _consumer(stream, db, rescores, "a").step()
    assert report.recorded == 7
    assert await _keys(db) == sorted(entry_key(i) for i in ids)
    assert await _count(db, touchpoints) == 7
    assert sorted(rescores.leads) == lead_ids  # each lead once per batch
    assert (await stream.length(), await stream.pending()) == (0, 0)


async def test_a_consumer_killed_after_its_commit_is_redelivered_and_nothing_doubles(
    db: Database, stream: EventStream, lead_ids: list[int]
) -> None:
    ids = await _append(stream, lead_ids, 20)
    stuck = Rescores()
    stuck.hold()
    first = _consumer(stream, db, stuck, "first", batch_size=8)
    task = asyncio.create_task(first.step())
    await asyncio.to_thread(stuck.entered.wait, 10)  # its batch is committed; the acknowledgement not sent
    task.cancel()  # the process dies here
    stuck.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _count(db, events) == 8
    assert await stream.pending() == 8

    rescores = Rescores()
    second = _consumer(stream, db, rescores, "second", claim_idle_ms=0)
    claimed = await second.step()  # the dead consumer's entries first
    assert (claimed.recorded, claimed.duplicates) == (0, 8)
    while (await second.step()).recorded:
        pass
    assert await _keys(db) == sorted(entry_key(i) for i in ids)
    assert await _count(db, touchpoints) == 20
    assert set(rescores.leads) == set(lead_ids)  # re-enqueued for the redelivered batch too
    assert (await stream.length(), await stream.pending()) == (0, 0)


async def test_garbage_in_the_stream_is_rejected_and_reported_and_the_rest_recorded(
    db: Database, stream: EventStream, lead_ids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        good_before = await _append(stream, lead_ids, 2)
        garbage = [
            await client.xadd(stream.stream, {"e": b"{broken"}),
            await client.xadd(stream.stream, {"other": "field"}),
            await client.xadd(stream.stream, {"e": b'{"l": 1, "t": "DROP TABLE", "at": 0}'}),
        ]
        good_after = await _append(stream, lead_ids, 2)
        unknown = await stream.append(InboundEvent(999_999, "email_open", NOW))  # an erased lead
        report = await _consumer(stream, db, Rescores(), "a").step()
        rejected: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(stream.rejected)  # type: ignore[assignment]
    finally:
        await client.aclose()
    assert (report.recorded, report.rejected, report.unknown_leads) == (4, 3, 1)
    assert await _keys(db) == sorted(entry_key(i) for i in good_before + good_after)
    assert [fields[b"id"] for _, fields in rejected] == garbage
    assert all(fields[b"reason"].startswith(b"not an event: ") for _, fields in rejected)
    assert sum("rejected entry" in r.message for r in caplog.records) == 3
    assert unknown not in {key.removeprefix("stream:") for key in await _keys(db)}
    assert (await stream.length(), await stream.pending()) == (0, 0)


async def test_an_entry_naming_an_email_not_its_leads_is_rejected_and_the_rest_recorded(
    db: Database, stream: EventStream, lead_ids: list[int]
) -> None:
    # Given a batch in which one click names delivery 999999, which is not its lead's (no such email)
    good = await _append(stream, lead_ids, 2)
    crossed = await stream.append(InboundEvent(lead_ids[0], "email_click", NOW, delivery_id=999_999))
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        # When the consumer stores it
        report = await _consumer(stream, db, Rescores(), "a").step()
        rejected: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(stream.rejected)  # type: ignore[assignment]
    finally:
        await client.aclose()

    # Then the click is set aside with the reason, and nothing of it is written
    assert (report.recorded, report.rejected) == (2, 1)
    assert await _keys(db) == sorted(entry_key(i) for i in good)
    assert [(f[b"id"], f[b"reason"]) for _, f in rejected] == [
        (crossed.encode(), f"delivery 999999 is not lead {lead_ids[0]}'s".encode())
    ]
    assert await _count(db, touchpoints) == 2
    assert (await stream.length(), await stream.pending()) == (0, 0)


def test_a_head_request_survives_the_stream_format() -> None:
    event = InboundEvent(7, "email_open", NOW, head_request=True)
    assert decode_event("1-0", {b"e": encode_event(event)}).head_request is True
    assert decode_event("1-0", {b"e": encode_event(InboundEvent(7, "email_open", NOW))}).head_request is False
    with pytest.raises(ValueError, match="h must be a boolean"):
        decode_event("1-0", {b"e": b'{"l": 7, "t": "email_open", "at": 1, "h": "yes"}'})


async def test_a_batch_stored_twice_records_each_event_once(db: Database, lead_ids: list[int]) -> None:
    batch = [
        InboundEvent(lead_ids[0], "email_click", NOW, url="https://a.example/", idempotency_key="stream:1-0"),
        InboundEvent(lead_ids[1], "email_open", NOW, idempotency_key="stream:1-1"),
        InboundEvent(lead_ids[1], "email_open", NOW, idempotency_key="stream:1-1"),  # twice in one batch
    ]
    first = await record_keyed_events(db, batch, now=NOW)
    again = await record_keyed_events(db, batch, now=NOW)
    assert [type(o) for o in first[:2]] == [RecordedEvent, RecordedEvent]
    assert first[2] is NotRecorded.DUPLICATE
    assert again == [NotRecorded.DUPLICATE] * 3
    assert (await _count(db, events), await _count(db, touchpoints)) == (2, 2)
    with pytest.raises(ValueError, match="idempotency key"):
        await record_keyed_events(db, [InboundEvent(lead_ids[0], "email_open", NOW)], now=NOW)


async def test_with_redis_down_the_web_records_in_the_database_instead(
    db: Database, lead_ids: list[int]
) -> None:
    dead = EventStream.from_url("redis://127.0.0.1:9/0", timeout_s=0.5)  # nothing listens on port 9
    recorder = TrackingRecorder(EventRecorder(db, WebMetrics(), on_event=None), dead)
    try:
        outcomes = [await recorder.accept(InboundEvent(lead_ids[0], "email_open", NOW)) for _ in range(3)]
    finally:
        await recorder.aclose()
    assert outcomes == ["ok", "repeat", "repeat"]  # one pixel again within the replay window: stored, once
    assert await _count(db, events) == 3


async def test_the_consumer_outlives_a_redis_flush_and_stores_what_comes_after(
    db: Database, stream: EventStream, lead_ids: list[int]
) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    consumer = _consumer(stream, db, Rescores(), "a")
    running = asyncio.create_task(consumer.run())
    try:
        await _append(stream, lead_ids, 3)
        await _until(lambda: _count(db, events), 3)
        await client.delete(stream.stream)  # as FLUSHDB would: the stream and its consumer group are gone
        await _append(stream, lead_ids, 2)  # a new stream, with no group until the consumer makes one
        await _until(lambda: _count(db, events), 5)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await client.aclose()
    assert (await stream.length(), await stream.pending()) == (0, 0)


async def _until(count: Any, expected: int) -> None:
    for _ in range(200):  # up to about 20 s: the consumer backs off after a failure
        if await count() == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {expected}, have {await count()}")


async def test_a_pixel_replayed_within_the_window_enqueues_one_rescore_on_either_path(
    db: Database, stream: EventStream, lead_ids: list[int]
) -> None:
    # Given one open replayed 20 times, recorded directly and through the stream
    enqueued: list[int] = []
    direct = EventRecorder(db, WebMetrics(), on_event=enqueued.append)
    for _ in range(20):
        await direct.record([InboundEvent(lead_ids[0], "email_open", NOW)], now=NOW)
    await _append(stream, [lead_ids[1]], 20)  # twenty identical opens of another lead
    rescores = Rescores()

    report = await _consumer(stream, db, rescores, "a").step()

    # Then each lead is re-scored once, every event is stored, and all but the first are repeats
    assert enqueued == [lead_ids[0]]
    assert rescores.leads == [lead_ids[1]]
    assert (report.recorded, report.repeats) == (20, 19)
    assert await _count(db, events) == 40
