"""The rep's page of one lead, `GET /leads/{id}`: the link every alert carries.

It shows who the lead is, its alerts, why its score is what it is (every event, with its points or why it
does not count), its score history, stage changes, campaigns, and every touchpoint newest first, 200 a page
(`?before=<touchpoint id>` for older ones). Times are on the lead's wall clock, its zone named.

A browser gets HTML; `Accept: application/json` gets the same data as JSON (times ISO 8601, UTC). It needs a
session cookie (see `login`) or `Authorization: Bearer <API key>`; without either, a browser is sent to the
login form and comes back, and any other client (one that sent a bad key included) gets 401. An unknown lead
is a 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nurture.core.context import LEAD_FIELDS
from nurture.core.tracking import MAX_ID
from nurture.flows.explain import TIMELINE_PAGE, LeadTimeline, lead_timeline, scored_event_data
from nurture.runtime import Runtime
from nurture.web.http import is_browser_navigation, json_error, prefers_json
from nurture.web.login import RepAuth, database_guard, login_redirect
from nurture.web.views import Views

UNAUTHORIZED: Final = {"WWW-Authenticate": 'Bearer realm="nurture"'}
VARY: Final = {"Vary": "Accept, Authorization, Cookie"}


class LeadEndpoints:
    def __init__(self, runtime: Runtime, views: Views, auth: RepAuth) -> None:
        self._runtime = runtime
        self._views = views
        self._auth = auth

    async def show(self, request: Request) -> Response:
        as_json = prefers_json(request)
        identity = await self._auth.identify(request)
        if identity is None:
            # A client that sent a key (a bad one) is a program: it is told so, not shown a form.
            if not as_json and "authorization" not in request.headers and is_browser_navigation(request):
                return login_redirect(request)
            return json_error(401, "sign in, or send a valid API key", headers={**UNAUTHORIZED, **VARY})
        try:
            before = _cursor(request.query_params.get("before"))
        except ValueError as exc:
            return json_error(400, str(exc), headers=VARY)
        lead_id: int = request.path_params["lead_id"]
        found = None
        if 0 < lead_id <= MAX_ID:
            rt = self._runtime
            found = await lead_timeline(
                lead_id, db=rt.db, catalog=rt.catalog, now=rt.clock.now(), limit=TIMELINE_PAGE, before=before
            )
        if found is None:
            if as_json:
                return json_error(404, "no such lead", headers=VARY)
            return self._views.page(
                "message.html",
                status_code=404,
                headers=VARY,
                signed_in=identity.session,
                title="No such lead",
                sentence=f"There is no lead {lead_id}. It may have been deleted.",
            )
        if as_json:
            return JSONResponse(timeline_data(found), headers=VARY)
        return self._views.page(
            "lead.html", headers=VARY, signed_in=identity.session, t=found, reps=self._runtime.catalog.reps
        )


def _cursor(value: str | None) -> int | None:
    """The `before` cursor (a touchpoint id), or None when absent.

    Raises:
        ValueError: it is not a positive whole number that could be an id.
    """
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= MAX_ID:
        raise ValueError("before: a touchpoint id, a positive whole number")
    return int(value)


def timeline_data(t: LeadTimeline) -> dict[str, Any]:
    """The page's data as JSON: what the HTML shows, times as ISO 8601 in UTC."""
    lead, profile = t.lead, t.lead.profile
    older = f"/leads/{lead.id}?before={t.older}" if t.older is not None else None
    return {
        "lead": {
            "id": lead.id,
            **{name: getattr(profile, name) for name in LEAD_FIELDS},
            "tags": dict(profile.tags),
            "suppressed": lead.suppressed,
            "suppressed_reason": lead.suppressed_reason,
            "score_updated_at": _iso(lead.score_updated_at),
            "created_at": _iso(lead.created_at),
        },
        "owner": {"email": t.owner.email, "name": t.owner.name} if t.owner is not None else None,
        "zone": t.zone,
        "score": _score_data(t),
        "score_history": [
            {"at": _iso(c.occurred_at), "before": c.before, "after": c.after, "recomputed": c.recomputed}
            for c in t.score_history
        ],
        "stage_changes": [
            {"at": _iso(c.occurred_at), "before": c.before, "after": c.after, "reason": c.reason}
            for c in t.stage_changes
        ],
        "enrollments": [
            {
                "campaign": e.campaign_id,
                "state": e.state,
                "exit_reason": e.exit_reason,
                "enrolled_at": _iso(e.enrolled_at),
                "ended_at": _iso(e.ended_at),
            }
            for e in t.enrollments
        ],
        "alerts": [
            {
                "id": a.id,
                "trigger": a.trigger,
                "reason": a.reason,
                "status": a.status,
                "owner": a.owner,
                "created_at": _iso(a.created_at),
                "delivered_at": _iso(a.delivered_at),
            }
            for a in t.alerts
        ],
        "touchpoints": [
            {
                "id": tp.id,
                "at": _iso(tp.occurred_at),
                "kind": tp.kind,
                "campaign": tp.campaign_id,
                "step": tp.step_id,
                "detail": dict(tp.detail),
            }
            for tp in t.touchpoints
        ],
        "page": {"before": t.before, "older": t.older, "older_url": older, "total": t.touchpoint_count},
    }


def _score_data(t: LeadTimeline) -> dict[str, Any]:
    return {
        "stored": t.lead.profile.score,
        "now": t.breakdown.total,
        "scored_at": _iso(t.scored_at),
        "rules": t.rules_source,
        "events": [scored_event_data(item) for item in t.breakdown.items],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def lead_routes(endpoints: LeadEndpoints, views: Views) -> list[Route]:
    return [Route("/leads/{lead_id:int}", database_guard(views, endpoints.show), methods=["GET"])]
