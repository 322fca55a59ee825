"""The reps' pages: Jinja2 templates shipped in `web/templates`, autoescaped, with no script.

Their one stylesheet (`templates/app.css`) is inlined and allowed by its hash, so these pages' policy, like
the other pages', refuses every script, every other style, frames and foreign form targets. Values shown on
them are lead data and are escaped wherever they appear; URLs a lead visited are shown as text, never as
links, because anyone holding a visitor token can report any URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.responses import HTMLResponse

from nurture.db.queries.timeline import TouchpointRow
from nurture.web.pages import content_security_policy

_LABELS: Final = {
    "email_sent": "Email sent",
    "email_failed": "Email failed",
    "email_unknown": "Email outcome unknown",
    "email_resend": "Email to be sent again (outcome was unknown)",
    "email_open": "Opened an email",
    "email_click": "Clicked an email link",
    "email_reply": "Replied to an email",
    "page_visit": "Visited a page",
    "content_download": "Downloaded content",
    "form_submit": "Submitted a form",
    "proposal_view": "Opened the proposal",
    "meeting_booked": "Booked a meeting",
    "enrolled": "Enrolled",
    "exited": "Left the campaign",
    "unsubscribed": "Unsubscribed",
    "score_change": "Score changed",
    "stage_change": "Stage changed",
    "alert": "Rep alerted",
    "moment": "Buying signal",
    "owner_assigned": "Owner assigned",
}
_TRIGGERS: Final = {"hot": "Hot lead", "mql": "New MQL"}
_NOT_PHONE: Final = re.compile(r"[^0-9+]")


@dataclass(frozen=True, slots=True)
class TouchpointLine:
    """A touchpoint as one item of the page: what happened, a note (campaign, change, reason), a URL."""

    title: str
    note: str | None
    url: str | None


class Views:
    """Renders the reps' pages and answers with them, with the policy that allows their stylesheet."""

    def __init__(self) -> None:
        env = Environment(
            loader=PackageLoader("nurture.web", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        assert env.loader is not None
        style, _, _ = env.loader.get_source(env, "app.css")
        self.content_security_policy = content_security_policy(style)
        env.globals.update(style=Markup(style), signed_in=False, describe=describe)  # our own file: trusted
        env.filters.update(local=local_time, label=event_label, trigger=trigger_label, points=points, tel=tel)
        self._env = env

    def render(self, template: str, **context: Any) -> str:
        return self._env.get_template(template).render(**context)

    def page(
        self,
        template: str,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        return HTMLResponse(
            self.render(template, **context),
            status_code=status_code,
            headers={"Content-Security-Policy": self.content_security_policy, **(headers or {})},
        )


def local_time(at: datetime, zone: str) -> str:
    """`at` on the wall clock of `zone` (an IANA name already checked): "Mon 2 Mar 2026, 10:00"."""
    local = at.astimezone(ZoneInfo(zone))
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M}"


def event_label(kind: str) -> str:
    """A touchpoint kind or event type in words: `page_visit` is "Visited a page"."""
    return _LABELS.get(kind) or kind.replace("_", " ").capitalize()


def trigger_label(trigger: str) -> str:
    """An alert's trigger in words: "Hot lead", "New MQL", "Buying signal: pricing visit"."""
    if trigger in _TRIGGERS:
        return _TRIGGERS[trigger]
    _, _, moment = trigger.partition(":")
    return f"Buying signal: {moment.replace('_', ' ')}" if moment else trigger


def points(value: float) -> str:
    return f"{value:.1f}"


def tel(phone: str) -> str:
    """A phone number as a `tel:` URI's digits: only digits and "+" are kept."""
    return _NOT_PHONE.sub("", phone)


def describe(tp: TouchpointRow) -> TouchpointLine:
    """What a touchpoint says, from its kind, campaign and detail."""
    detail = tp.detail
    notes: list[str] = []
    if tp.campaign_id:
        notes.append(f"{tp.campaign_id} / {tp.step_id}" if tp.step_id else tp.campaign_id)
    before, after = detail.get("before"), detail.get("after")
    if before is not None and after is not None:
        notes.append(f"{before} → {after}")
    if tp.kind == "alert" and detail.get("trigger"):
        notes.append(trigger_label(str(detail["trigger"])))
    for key in ("moment", "reason", "error", "owner"):
        value = detail.get(key)
        if isinstance(value, str) and value:
            notes.append(value.replace("_", " ") if key == "moment" else value)
    if detail.get("recomputed") is True:
        notes.append("recomputed after the scoring rules changed")
    url = detail.get("url")
    return TouchpointLine(
        event_label(tp.kind), " · ".join(notes) or None, url if isinstance(url, str) and url else None
    )
