"""The tracking web's endpoints: a health check and RFC 8058 one-click unsubscribe.

`GET /u/{token}` only shows a confirmation form, because link scanners and previews fetch every link in a
message; `POST /u/{token}` (the mail client's `List-Unsubscribe=One-Click` request, or the form's button)
unsubscribes. A token that does not verify under our key, or is not an unsubscribe token, is a 404.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nurture.core.tracking import verify_token
from nurture.db.engine import Database
from nurture.errors import TrackingTokenError
from nurture.flows.engage import unsubscribe
from nurture.runtime import Runtime
from nurture.web.pages import not_found_page, unsubscribe_confirm_page, unsubscribed_page

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S: Final = 5.0
_MAX_ID: Final = 2**63 - 1  # ids are BIGINT; a larger number can only be a token we never issued


@dataclass(frozen=True, slots=True)
class UnsubscribeLink:
    lead_id: int
    delivery_id: int | None


def read_unsubscribe_token(token: str, *, key: bytes) -> UnsubscribeLink | None:
    """Return the lead (and delivery) an unsubscribe token names, or None for any token we did not issue."""
    try:
        payload = verify_token(token, key=key)
    except TrackingTokenError:
        return None
    lead_id, delivery_id = payload.get("l"), payload.get("d")
    if payload.get("k") != "u" or not isinstance(lead_id, int) or not 0 < lead_id <= _MAX_ID:
        return None
    if delivery_id is None:
        return UnsubscribeLink(lead_id, None)
    if not isinstance(delivery_id, int) or not 0 < delivery_id <= _MAX_ID:
        return None
    return UnsubscribeLink(lead_id, delivery_id)


class Endpoints:
    """The request handlers, bound to one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def healthz(self, _request: Request) -> Response:
        if await database_is_up(self._runtime.db):
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    async def unsubscribe_link(self, request: Request) -> Response:
        link = read_unsubscribe_token(request.path_params["token"], key=self._runtime.mailer.secret_key)
        if link is None:
            return HTMLResponse(not_found_page(), status_code=404)
        if request.method != "POST":  # GET and HEAD: scanners fetch links, so only a POST acts
            return HTMLResponse(unsubscribe_confirm_page())
        await unsubscribe(
            self._runtime.db,
            lead_id=link.lead_id,
            delivery_id=link.delivery_id,
            now=self._runtime.clock.now(),
        )
        # Unknown and already-unsubscribed leads get the same answer: either way no more mail goes out.
        return HTMLResponse(unsubscribed_page())


async def database_is_up(db: Database) -> bool:
    """Return whether the database answers `SELECT 1` within HEALTH_TIMEOUT_S."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S), db.transaction() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # an entry point: whatever the failure, the answer is "not ready"
        reason = next(iter(str(exc).splitlines()), "")
        log.warning("health check failed: database unreachable: %s: %s", type(exc).__name__, reason)
        return False
    return True


def routes(runtime: Runtime) -> list[Route]:
    endpoints = Endpoints(runtime)
    return [
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/u/{token}", endpoints.unsubscribe_link, methods=["GET", "POST"]),
    ]
