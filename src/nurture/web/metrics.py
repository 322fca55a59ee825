"""Prometheus metrics of the tracking web, in a registry of its own (one per app, so apps never collide)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    ProcessCollector,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response


class WebMetrics:
    """The counters the endpoints update, and the `/metrics` endpoint that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nurture_tracking_requests",
            "Tracking and API requests by route and outcome "
            "(ok, buffered: appended to the event stream, duplicate, unknown_lead, foreign_delivery, "
            "invalid, rejected, unauthorized, too_large, error).",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "nurture_events_recorded",
            "Engagement events recorded, by type.",
            ["type"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "nurture_events_duplicate",
            "Events received again with an idempotency key already stored: counted once, not recorded.",
            ["type"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)

    def request(self, route: str, outcome: str) -> None:
        self.requests.labels(route=route, outcome=outcome).inc()

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
