"""The HTTP API, authenticated with API keys (`Authorization: Bearer nk_...`).

    POST /api/leads    one lead (object) or many (array): upserted by email as a CSV import would
    POST /api/events   one event (object) or many (array): {email | lead_id, type, occurred_at?, url?, id?,
                       user_agent?, properties?}

Answers are JSON. 401 without a valid, unrevoked key; 400 for a body that is not JSON or not an object or an
array; 413 for a body over the limit. Bad items are rejected one by one with the field and the reason while
the good ones go in.

Events: an `id` (or, for a single event, the `Idempotency-Key` header) makes a replay count once (one that
starts with `stream:`, the tracking events' own, is refused: 400, or rejected in an array); a replay is
answered 200 `{"duplicate": true}` and enqueues nothing. The same `Idempotency-Key` with another body is a 409
(the hash of the first body is kept in `events.idempotency_hash`). A single new event is answered 202 with its
id, a single bad one 422. An array is answered 200 with what became of each item.

Every request passes `ApiGate` first: 429 with `Retry-After` once its key is over the rate limit
(NURTURE_API_RATE_PER_S, NURTURE_API_BURST).

Leads: 200 with the counts and the rejected items; 422 when every item was rejected. A known lead's `stage`
never moves it backwards (mql to lead) unless the item gives `stage_reason`, which is recorded with the
change: such an item is applied but for its stage, counted as updated and listed under `stage_refused`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nurture.core.events import InboundEvent, NotRecorded, RecordedEvent
from nurture.core.lead import normalise_email
from nurture.core.stages import StagePath
from nurture.core.token_bucket import BucketLimit
from nurture.db.queries.idempotency import fetch_request_hash, remember_request_hash
from nurture.errors import DatabaseUnavailableError
from nurture.event_stream import KEY_PREFIX
from nurture.flows.engage import find_leads_by_email
from nurture.flows.ingest import StagePolicy, import_leads
from nurture.runtime import Runtime
from nurture.web.auth import ApiGate, RateLimiter, Refusal
from nurture.web.http import BodyError, json_error, read_json
from nurture.web.metrics import WebMetrics
from nurture.web.payloads import EventPayload, Rejected, lead_row, parse_event, split_reason
from nurture.web.recorder import EventRecorder

MAX_BODY_BYTES: Final = 10 * 1024 * 1024
MAX_LEADS: Final = 10_000
MAX_EVENTS: Final = 1_000
# The event stream keys tracking events `stream:<entry id>`: a client key of that form could shadow one.
RESERVED_KEY: Final = f"event ids and Idempotency-Keys may not start with {KEY_PREFIX!r} (reserved)"

Body = dict[str, Any] | list[Any]
Handler = Callable[[Request, Body], Awaitable[Response]]


class ApiEndpoints:
    def __init__(self, runtime: Runtime, recorder: EventRecorder, metrics: WebMetrics) -> None:
        self._runtime = runtime
        self._recorder = recorder
        self._metrics = metrics
        self._gate = api_gate(runtime)

    async def leads(self, request: Request) -> Response:
        return await self._guarded(request, "api_leads", MAX_LEADS, self._upsert_leads)

    async def events(self, request: Request) -> Response:
        return await self._guarded(request, "api_events", MAX_EVENTS, self._record_events)

    async def _guarded(self, request: Request, route: str, max_items: int, handle: Handler) -> Response:
        """Authenticate, read the body as one item or an array of them, and hand it to `handle`."""
        try:
            admitted = await self._gate.admit(request.headers.get("authorization"))
            if isinstance(admitted, Refusal):
                self._metrics.request(route, "unauthorized" if admitted.status_code == 401 else "limited")
                return json_error(admitted.status_code, admitted.message, headers=admitted.headers)
            body = await read_json(
                request, max_bytes=MAX_BODY_BYTES, max_depth=self._runtime.settings.max_json_depth
            )
            if not isinstance(body, dict | list):
                raise BodyError(400, "the body is a JSON object or an array of objects")
            if isinstance(body, list) and len(body) > max_items:
                raise BodyError(413, f"at most {max_items} items per request")
            response = await handle(request, body)
        except BodyError as exc:
            self._metrics.request(route, "too_large" if exc.status_code == 413 else "rejected")
            return json_error(exc.status_code, exc.message)
        except DatabaseUnavailableError:
            self._metrics.request(route, "error")
            return json_error(503, "the database is unavailable; try again", headers={"Retry-After": "5"})
        self._metrics.request(route, "ok" if response.status_code < 300 else "rejected")
        return response

    async def _upsert_leads(self, _request: Request, body: Body) -> Response:
        items = body if isinstance(body, list) else [body]
        rows: list[dict[str, str | None]] = []
        positions: list[int] = []  # the item index of each row handed to the import
        reasons: dict[int, str] = {}  # row number -> the item's stage_reason
        rejected: list[Rejected] = []
        for index, item in enumerate(items):
            parsed = lead_row(item, index=index)
            if isinstance(parsed, Rejected):
                rejected.append(parsed)
                continue
            if parsed.stage_reason is not None:
                reasons[len(rows)] = parsed.stage_reason
            rows.append(parsed.row)
            positions.append(index)
        stages = StagePolicy(path=StagePath.API, row_reasons=reasons)
        now = self._runtime.clock.now()
        report = await import_leads(
            self._runtime.db,
            rows,
            now=now,
            first_row_number=0,
            stages=stages,
            limits=self._runtime.settings.lead_limits,
        )
        for error in report.rejected:
            field, reason = split_reason(error.reason)
            rejected.append(Rejected(positions[error.row], field, reason))
        rejected.sort(key=lambda r: r.index)
        refused = [Rejected(positions[e.row], *split_reason(e.reason)) for e in report.stage_refused]
        data = {
            "received": len(items),
            "inserted": report.inserted,
            "updated": report.updated,
            "rejected": [r.as_json() for r in rejected],
            "stage_refused": [r.as_json() for r in refused],
        }
        return JSONResponse(data, status_code=422 if items and not report.accepted else 200)

    async def _record_events(self, request: Request, body: Body) -> Response:
        now = self._runtime.clock.now()
        items = body if isinstance(body, list) else [_with_idempotency_key(body, request)]
        if isinstance(body, list) and "idempotency-key" in request.headers:
            raise BodyError(400, "Idempotency-Key is for a single event; give each event of an array an id")
        parsed = [_unreserved(parse_event(item, index=i, now=now), i) for i, item in enumerate(items)]
        events, rejected = await self._resolve(parsed, now)
        rules = self._runtime.catalog.scoring
        outcomes = await self._recorder.record([e for _, e in events], now=now, rules=rules) if events else []
        results: list[dict[str, Any]] = []
        for (index, event), outcome in zip(events, outcomes, strict=True):
            if outcome is NotRecorded.UNKNOWN_LEAD:
                rejected.append(Rejected(index, "lead_id", "no such lead"))
            elif isinstance(outcome, RecordedEvent):
                result = {"index": index, "event_id": outcome.event_id, "lead_id": event.lead_id}
                results.append({**result, "repeat": True} if outcome.repeat else result)
            else:
                results.append({"index": index, "duplicate": True, "lead_id": event.lead_id})
        rejected.sort(key=lambda r: r.index)
        if isinstance(body, list):
            return JSONResponse(_batch_answer(len(items), results, rejected))
        if rejected:
            return json_error(422, rejected[0].reason, field=rejected[0].field)
        [result] = results
        key = request.headers.get("idempotency-key")
        if key is not None:
            conflict = await self._same_request(
                key.strip(), _request_hash(body), first=not result.get("duplicate")
            )
            if conflict:
                return json_error(409, "this Idempotency-Key was already used with another body")
        if result.get("duplicate"):
            return JSONResponse({"duplicate": True, "lead_id": result["lead_id"]})
        return JSONResponse({**result, "duplicate": False}, status_code=202)

    async def _same_request(self, key: str, request_hash: str, *, first: bool) -> bool:
        """Keep the hash of the body that first used `key`; True when a replay's body differs from it.

        The hash is written just after the event, so a replay racing the first request may find none yet;
        it is then answered as a replay, which is what it most likely is.
        """
        async with self._runtime.db.transaction() as conn:
            if first:
                await remember_request_hash(conn, key, request_hash)
                return False
            stored = await fetch_request_hash(conn, key)
        return stored is not None and stored != request_hash

    async def _resolve(
        self, parsed: list[EventPayload | Rejected], now: datetime
    ) -> tuple[list[tuple[int, InboundEvent]], list[Rejected]]:
        """Find each event's lead by email or id: the events to record (with their index) and the rejects."""
        rejected = [p for p in parsed if isinstance(p, Rejected)]
        emails: dict[int, str] = {}
        for index, payload in enumerate(parsed):
            if isinstance(payload, EventPayload) and payload.email is not None:
                try:
                    emails[index] = normalise_email(payload.email)
                except ValueError as exc:
                    rejected.append(Rejected(index, "email", str(exc)))
        lead_ids = await find_leads_by_email(self._runtime.db, set(emails.values())) if emails else {}
        events: list[tuple[int, InboundEvent]] = []
        for index, payload in enumerate(parsed):
            if not isinstance(payload, EventPayload) or (payload.email is not None and index not in emails):
                continue
            lead_id = lead_ids.get(emails[index]) if index in emails else payload.lead_id
            if lead_id is None:
                rejected.append(Rejected(index, "email", "no lead with this email"))
                continue
            events.append((index, _inbound(payload, lead_id, now)))
        return events, rejected


def _with_idempotency_key(body: dict[str, Any], request: Request) -> dict[str, Any]:
    """A single event with the request's `Idempotency-Key` as its id (which it must agree with)."""
    key = request.headers.get("idempotency-key")
    for given in (key, body.get("id")):
        if isinstance(given, str) and given.strip().startswith(KEY_PREFIX):
            raise BodyError(400, RESERVED_KEY)
    if key is None:
        return body
    key = key.strip()
    if not 0 < len(key) <= 200 or not key.isprintable() or body.get("id", key) != key:
        raise BodyError(400, "Idempotency-Key must be 1-200 characters and agree with the event's id")
    return {**body, "id": key}


def _unreserved(parsed: EventPayload | Rejected, index: int) -> EventPayload | Rejected:
    """The event, or its rejection when its id could be taken for a tracking event's (`KEY_PREFIX`)."""
    if isinstance(parsed, EventPayload) and parsed.id is not None and parsed.id.startswith(KEY_PREFIX):
        return Rejected(index, "id", RESERVED_KEY)
    return parsed


def api_gate(runtime: Runtime) -> ApiGate:
    """The key check and per-key rate limit of the API's endpoints, sized by the runtime's settings."""
    limit = BucketLimit(rate=runtime.settings.api_rate_per_s, burst=runtime.settings.api_burst)
    return ApiGate(runtime.db, RateLimiter(limit, runtime.clock))


def _request_hash(body: Body) -> str:
    """SHA-256 of the body as canonical JSON: the same event spelt with other spacing or order is equal."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _inbound(payload: EventPayload, lead_id: int, now: datetime) -> InboundEvent:
    return InboundEvent(
        lead_id=lead_id,
        type=payload.type,
        occurred_at=payload.occurred_at or now,
        url=payload.url,
        user_agent=payload.user_agent,
        idempotency_key=payload.id,
        properties=payload.properties,
    )


def _batch_answer(received: int, results: list[dict[str, Any]], rejected: list[Rejected]) -> dict[str, Any]:
    return {
        "received": received,
        "recorded": sum(1 for r in results if not r.get("duplicate")),
        "duplicates": sum(1 for r in results if r.get("duplicate")),
        "rejected": [r.as_json() for r in rejected],
        "events": results,
    }


def api_routes(endpoints: ApiEndpoints) -> list[Route]:
    return [
        Route("/api/leads", endpoints.leads, methods=["POST"]),
        Route("/api/events", endpoints.events, methods=["POST"]),
    ]
