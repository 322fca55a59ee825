"""Complaint feedback (ARF, RFC 5965) posted by a mailbox provider's feedback loop: it suppresses the lead."""

from __future__ import annotations

from starlette.routing import BaseRoute

from nurture.runtime import Runtime
from nurture.web.metrics import WebMetrics


def complaint_routes(runtime: Runtime, metrics: WebMetrics) -> list[BaseRoute]:
    del runtime, metrics
    return []
