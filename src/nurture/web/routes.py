"""The tracking web's endpoints: a health check and RFC 8058 one-click unsubscribe.

`GET /u/{token}` only shows a confirmation form, because link scanners and previews fetch every link in a
message; `POST /u/{token}` (the mail client's `List-Unsubscribe=One-Click` request, or the form's button)
unsubscribes. A token that does not verify under our key, or is not an unsubscribe token carrying exactly
its fields (read by `core.tracking.read_token`, as every tracking route reads its token), is a 404.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nurture.core.tracking import read_token
from nurture.db.engine import Database
from nurture.errors import TrackingTokenError
from nurture.flows.engage import unsubscribe
from nurture.runtime import Runtime
from nurture.web.pages import not_found_page, unsubscribe_confirm_page, unsubscribed_page

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S: Final = 5.0


class Endpoints:
    """The request handlers, bound to one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def healthz(self, _request: Request) -> Response:
        if await database_is_up(self._runtime.db):
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    async def unsubscribe_link(self, request: Request) -> Response:
        try:
            link = read_token(request.path_params["token"], kind="u", key=self._runtime.mailer.secret_key)
        except TrackingTokenError:
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
