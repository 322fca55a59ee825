"""Complaint feedback (ARF, RFC 5965) posted by a mailbox provider's feedback loop: it suppresses the lead.

    POST /api/complaints   (API key) the raw report as the body (message/rfc822 or multipart/report)

200 `{"lead_id", "delivery_id", "duplicate"}` once the lead (or, with no lead, the address) is suppressed;
a replay answers `"duplicate": true` and changes nothing. 400 with the reason for a body that is not a
feedback report, 404 when it names no email or address of ours, 413 past the size limit, 401/429 as for
every `/api/*` endpoint.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nurture.core.feedback import MAX_REPORT_BYTES, parse_feedback_report
from nurture.errors import DatabaseUnavailableError
from nurture.flows.complaints import record_complaint
from nurture.runtime import Runtime
from nurture.web.api import api_gate
from nurture.web.auth import ApiGate, Refusal
from nurture.web.http import BodyError, json_error, read_body
from nurture.web.metrics import WebMetrics

ROUTE = "api_complaints"


class ComplaintEndpoint:
    def __init__(self, runtime: Runtime, metrics: WebMetrics, gate: ApiGate) -> None:
        self._runtime, self._metrics, self._gate = runtime, metrics, gate

    async def post(self, request: Request) -> Response:
        admitted = await self._gate.admit(request.headers.get("authorization"))
        if isinstance(admitted, Refusal):
            self._metrics.request(ROUTE, "unauthorized" if admitted.status_code == 401 else "limited")
            return json_error(admitted.status_code, admitted.message, headers=admitted.headers)
        try:
            raw = await read_body(request, max_bytes=MAX_REPORT_BYTES)
            report = parse_feedback_report(raw, max_depth=self._runtime.settings.max_mime_depth)
            outcome = await record_complaint(
                self._runtime.db,
                report,
                key=self._runtime.mailer.secret_key,
                now=self._runtime.clock.now(),
            )
        except BodyError as exc:
            self._metrics.request(ROUTE, "too_large" if exc.status_code == 413 else "rejected")
            return json_error(exc.status_code, exc.message)
        except ValueError as exc:
            self._metrics.request(ROUTE, "rejected")
            return json_error(400, str(exc))
        except DatabaseUnavailableError:
            self._metrics.request(ROUTE, "error")
            return json_error(503, "the database is unavailable; try again", headers={"Retry-After": "5"})
        if outcome is None:
            self._metrics.request(ROUTE, "rejected")
            return json_error(404, "the report names no email and no address of ours")
        self._metrics.request(ROUTE, "ok")
        data = {
            "lead_id": outcome.lead_id,
            "delivery_id": outcome.delivery_id,
            "duplicate": outcome.duplicate,
        }
        return JSONResponse(data)


def complaint_routes(runtime: Runtime, metrics: WebMetrics) -> list[BaseRoute]:
    endpoint = ComplaintEndpoint(runtime, metrics, api_gate(runtime))
    return [Route("/api/complaints", endpoint.post, methods=["POST"])]
