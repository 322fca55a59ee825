"""Engagement that comes back from a lead: events (opens, clicks, site visits, API events) and unsubscribing.

`record_event` stores one event and the touchpoint that puts it on the lead's timeline, once: an event that
carries an idempotency key already stored is a replay, and changes nothing. So is a repeat: an event with
the same lead, type, email and URL, and the same machine flag, as one stored (or taken earlier in the same
batch) less than the replay window (`NURTURE_REPLAY_WINDOW_S`) before or after it. A repeat is stored (the
log stays complete) with `properties.repeat = true`, and its outcome says `repeat`: it never scores
(`core.scoring`) and its caller enqueues no re-score for it, so a pixel URL fetched 6,000 times, or a page
posted by a script in a loop, is one signal. A human event after a machine one of the same key is not a
repeat; a repeat does not extend the window. An erased lead, like an unknown one, records nothing
(`UNKNOWN_LEAD`).
Re-scoring is not done here; the caller enqueues it for the leads this returns.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.core.events import InboundEvent, NotRecorded, RecordedEvent
from nurture.core.machine import machine_reason
from nurture.core.privacy import address_hash
from nurture.core.scoring import DEFAULT_RULES, ScoringRules
from nurture.db.engine import Database
from nurture.db.queries.deliveries import append_touchpoint, append_touchpoints, fetch_delivery_of_lead
from nurture.db.queries.events import (
    EventSource,
    fetch_deliveries_of_leads,
    fetch_existing_lead_ids,
    fetch_lead_email,
    fetch_lead_ids_by_email,
    fetch_recent_events,
    insert_event,
    insert_keyed_events,
)
from nurture.db.queries.leads import lock_lead_suppression, suppress_lead
from nurture.db.queries.suppressions import add_suppression

log = logging.getLogger(__name__)

UNSUBSCRIBED = "unsubscribed"
MACHINE: Final = "machine"  # events.properties keys of the machine flag (see `_properties`)
MACHINE_REASON: Final = "machine_reason"
REPEAT: Final = "repeat"  # events.properties key of a repeat within the replay window (JSON true)
REPLAY_WINDOW: Final = timedelta(minutes=10)  # NURTURE_REPLAY_WINDOW_S
RepeatKey = tuple[int, str, int | None, str | None, bool]  # lead, type, delivery, URL, machine
_Seen = tuple[datetime, str | None]  # when an event with a repeat key occurred, and its idempotency key


async def record_event(
    db: Database,
    event: InboundEvent,
    *,
    now: datetime,
    rules: ScoringRules = DEFAULT_RULES,
    replay_window: timedelta = REPLAY_WINDOW,
) -> RecordedEvent | None:
    """Store `event` and its touchpoint; None when it is a replay, or its lead is unknown or erased, or its
    email is not its lead's."""
    [outcome] = await record_events(db, [event], now=now, rules=rules, replay_window=replay_window)
    return outcome if isinstance(outcome, RecordedEvent) else None


async def record_events(
    db: Database,
    events: Sequence[InboundEvent],
    *,
    now: datetime,
    rules: ScoringRules = DEFAULT_RULES,
    replay_window: timedelta = REPLAY_WINDOW,
) -> list[RecordedEvent | NotRecorded]:
    """Store several events in one transaction; return what became of each, in order.

    The touchpoint of an event has the event's type as its kind and names the campaign step of the event's
    delivery. An event whose delivery is not its lead's is refused (`FOREIGN_DELIVERY`): only a holder of
    the signing key could make such a token. An event that `core.machine` finds machine-made is stored with
    `properties.machine = true` and `properties.machine_reason` (under `rules`); see `_properties`.
    """
    if not events:
        return []
    async with db.transaction() as conn:
        known = await fetch_existing_lead_ids(conn, {e.lead_id for e in events})
        recent = await _Recent.load(conn, [e for e in events if e.lead_id in known], replay_window)
        outcomes = [
            await _record(conn, e, now, rules, recent) if e.lead_id in known else NotRecorded.UNKNOWN_LEAD
            for e in events
        ]
    for event, outcome in zip(events, outcomes, strict=True):
        if isinstance(outcome, RecordedEvent):
            log.debug(
                "event recorded event_id=%s lead_id=%s type=%s", outcome.event_id, event.lead_id, event.type
            )
        else:
            log.info("event not recorded lead_id=%s type=%s reason=%s", event.lead_id, event.type, outcome)
    return outcomes


async def record_keyed_events(
    db: Database,
    events: Sequence[InboundEvent],
    *,
    now: datetime,
    rules: ScoringRules = DEFAULT_RULES,
    replay_window: timedelta = REPLAY_WINDOW,
) -> list[RecordedEvent | NotRecorded]:
    """`record_events` for a batch in which every event has an idempotency key, in five statements at most.

    This is how the buffered tracking events are stored: their keys come from their stream entries, so a
    batch stored again after a crash records nothing twice.
    """
    if any(e.idempotency_key is None for e in events):
        raise ValueError("record_keyed_events needs an idempotency key on every event")
    if not events:
        return []
    async with db.transaction() as conn:
        known = await fetch_existing_lead_ids(conn, {e.lead_id for e in events})
        sources = await fetch_deliveries_of_leads(
            conn,
            {(e.delivery_id, e.lead_id) for e in events if e.delivery_id is not None and e.lead_id in known},
        )
        refusals = [_refusal(e, known, sources) for e in events]
        storable = [e for e, refusal in zip(events, refusals, strict=True) if refusal is None]
        firsts: dict[str, InboundEvent] = {}
        for e in storable:  # a key twice: the first one counts; rows go in in the batch's order
            firsts.setdefault(str(e.idempotency_key), e)
        recent = await _Recent.load(conn, storable, replay_window)
        keyed: list[tuple[str, InboundEvent, EventSource | None, dict[str, Any]]] = []
        repeats: set[str] = set()
        for key, e in firsts.items():
            source = _source_of(e, sources)
            row = _event_row(e, source, now, key, rules)
            if not recent.take(row):
                row["properties"][REPEAT] = True
                repeats.add(key)
            keyed.append((key, e, source, row))
        ids = await insert_keyed_events(conn, [row for _, _, _, row in keyed])
        await append_touchpoints(conn, [_touchpoint(e, ids[key], s) for key, e, s, _ in keyed if key in ids])
    outcomes: list[RecordedEvent | NotRecorded] = []
    for e, refusal in zip(events, refusals, strict=True):
        event_id = ids.pop(str(e.idempotency_key), None)
        if refusal is not None:
            outcomes.append(refusal)
        elif event_id is not None:
            repeat = str(e.idempotency_key) in repeats
            outcomes.append(RecordedEvent(event_id=event_id, lead_id=e.lead_id, repeat=repeat))
        else:
            outcomes.append(NotRecorded.DUPLICATE)
    return outcomes


def _refusal(
    event: InboundEvent, known: Collection[int], sources: Mapping[tuple[int, int], EventSource]
) -> NotRecorded | None:
    if event.lead_id not in known:
        return NotRecorded.UNKNOWN_LEAD
    if event.delivery_id is not None and (event.delivery_id, event.lead_id) not in sources:
        return NotRecorded.FOREIGN_DELIVERY
    return None


def _source_of(event: InboundEvent, sources: Mapping[tuple[int, int], EventSource]) -> EventSource | None:
    return None if event.delivery_id is None else sources.get((event.delivery_id, event.lead_id))


def _event_row(
    event: InboundEvent, source: EventSource | None, now: datetime, key: str | None, rules: ScoringRules
) -> dict[str, Any]:
    return {
        "lead_id": event.lead_id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "received_at": now,
        "delivery_id": source.delivery_id if source is not None else None,
        "idempotency_key": key,
        "properties": _properties(event, source, rules),
    }


def _properties(event: InboundEvent, source: EventSource | None, rules: ScoringRules) -> dict[str, Any]:
    """The stored properties: the event's own, its URL and user agent, and the machine flag.

    `machine` is stored only as JSON true (reports and scoring rely on exactly that), with `machine_reason`:
    when `core.machine` finds the event machine-made, or when its sender marked it `machine: true`.
    """
    stored = {k: v for k, v in event.properties.items() if k not in (MACHINE, MACHINE_REASON, REPEAT)}
    stored.update((k, v) for k, v in (("url", event.url), ("user_agent", event.user_agent)) if v is not None)
    reason = machine_reason(
        event.type,
        occurred_at=event.occurred_at,
        user_agent=event.user_agent,
        delivery_sent_at=source.sent_at if source is not None else None,
        scanner_user_agents=rules.scanner_user_agents,
        min_open_delay=rules.min_open_delay,
        head_request=event.head_request,
    )
    if reason is None and event.properties.get(MACHINE) is True:
        given = event.properties.get(MACHINE_REASON)
        reason = given if isinstance(given, str) and given else "marked by its sender"
    if reason is not None:
        stored.update({MACHINE: True, MACHINE_REASON: reason})
    return stored


def _touchpoint(event: InboundEvent, event_id: int, source: EventSource | None) -> dict[str, Any]:
    return {
        "lead_id": event.lead_id,
        "kind": event.type,
        "occurred_at": event.occurred_at,
        "campaign_id": source.campaign_id if source is not None else None,
        "step_id": source.step_id if source is not None else None,
        "delivery_id": source.delivery_id if source is not None else None,
        "detail": {"event_id": event_id, **({"url": event.url} if event.url else {})},
    }


class _Recent:
    """The repeat keys (see the module doc) of the events stored near a batch's, and of those it takes."""

    def __init__(self, window: timedelta, seen: Mapping[RepeatKey, list[_Seen]]) -> None:
        self._window = window
        self._seen: defaultdict[RepeatKey, list[_Seen]] = defaultdict(list, seen)

    @classmethod
    async def load(cls, conn: AsyncConnection, events: Sequence[InboundEvent], window: timedelta) -> _Recent:
        if window <= timedelta(0) or not events:
            return cls(window, {})
        times = [e.occurred_at for e in events]
        stored = await fetch_recent_events(
            conn, {e.lead_id for e in events}, after=min(times) - window, before=max(times) + window
        )
        seen: dict[RepeatKey, list[_Seen]] = {}
        for row in stored:
            key = _repeat_key(row.lead_id, row.type, row.delivery_id, row.properties)
            seen.setdefault(key, []).append((row.occurred_at, row.idempotency_key))
        return cls(window, seen)

    def take(self, row: Mapping[str, Any]) -> bool:
        """True (and remembered) unless the event of `row` repeats one seen within the window."""
        if self._window <= timedelta(0):
            return True
        key = _repeat_key(row["lead_id"], row["type"], row["delivery_id"], row["properties"])
        at, own = row["occurred_at"], row["idempotency_key"]
        # An event stored with this very idempotency key is its own replay: the insert says DUPLICATE.
        if any(abs(at - t) < self._window and (own is None or k != own) for t, k in self._seen[key]):
            return False
        self._seen[key].append((at, own))
        return True


def _repeat_key(
    lead_id: int, event_type: str, delivery_id: int | None, properties: Mapping[str, Any]
) -> RepeatKey:
    url = properties.get("url")
    machine = properties.get(MACHINE) is True
    return (lead_id, event_type, delivery_id, url if isinstance(url, str) else None, machine)


async def _record(
    conn: AsyncConnection, event: InboundEvent, now: datetime, rules: ScoringRules, recent: _Recent
) -> RecordedEvent | NotRecorded:
    source = None
    if event.delivery_id is not None:
        pair = (event.delivery_id, event.lead_id)
        source = (await fetch_deliveries_of_leads(conn, [pair])).get(pair)
        if source is None:
            return NotRecorded.FOREIGN_DELIVERY
    row = _event_row(event, source, now, event.idempotency_key, rules)
    repeat = not recent.take(row)
    if repeat:
        row["properties"][REPEAT] = True
    event_id = await insert_event(
        conn,
        lead_id=row["lead_id"],
        event_type=row["type"],
        occurred_at=row["occurred_at"],
        received_at=row["received_at"],
        delivery_id=row["delivery_id"],
        idempotency_key=row["idempotency_key"],
        properties=row["properties"],
    )
    if event_id is None:
        return NotRecorded.DUPLICATE
    await append_touchpoints(conn, [_touchpoint(event, event_id, source)])
    return RecordedEvent(event_id=event_id, lead_id=event.lead_id, repeat=repeat)


async def find_leads_by_email(db: Database, emails: Collection[str]) -> dict[str, int]:
    """Map each normalised address in `emails` that names a lead to the lead's id."""
    async with db.transaction() as conn:
        return await fetch_lead_ids_by_email(conn, emails)


async def unsubscribe(db: Database, *, lead_id: int, delivery_id: int | None, now: datetime) -> bool:
    """Suppress a lead for good: end its enrollments, cancel its open deliveries, record the touchpoint, and
    add its address's hash to `suppressions` (so the address stays unsubscribed if erased and imported again).

    `delivery_id` names the email whose link was used; it labels the touchpoint with that campaign and step
    when it is a delivery of this lead, and is ignored otherwise.

    Returns:
        True if this call unsubscribed the lead; False if it was unsubscribed already or does not exist.
    """
    async with db.transaction() as conn:
        lead = await lock_lead_suppression(conn, lead_id)
        if lead is None:
            log.info("unsubscribe for an unknown lead lead_id=%s", lead_id)
            return False
        if lead.suppressed and lead.reason == UNSUBSCRIBED:
            return False
        # A lead suppressed for another reason (a bounce) is still recorded as unsubscribed: the person's
        # own request must outlive a mailbox that may start working again.
        await suppress_lead(conn, lead_id, reason=UNSUBSCRIBED, now=now)
        # The address hash outlives the lead: erased and imported again, the address stays unsubscribed.
        email = await fetch_lead_email(conn, lead_id)
        if email is not None:
            await add_suppression(conn, address_hash(email), reason=UNSUBSCRIBED, now=now)
        source = await fetch_delivery_of_lead(conn, delivery_id, lead_id) if delivery_id is not None else None
        await append_touchpoint(
            conn,
            lead_id=lead_id,
            kind=UNSUBSCRIBED,
            occurred_at=now,
            campaign_id=source.campaign_id if source is not None else None,
            step_id=source.step_id if source is not None else None,
            delivery_id=source.delivery_id if source is not None else None,
        )
    log.info(
        "lead unsubscribed lead_id=%s delivery_id=%s",
        lead_id,
        source.delivery_id if source is not None else None,
    )
    return True
