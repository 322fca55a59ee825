"""The seams flows depend on: Protocols for mail transport, rendering and alert sinks, and the values they
exchange."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """A composed message, ready for the wire.

    `data` is the full RFC 5322 message (headers and body, CRLF line ends); the envelope is kept apart so a
    transport never has to parse the message again.
    """

    message_id: str  # "<...@...>", derived from the delivery: a retry reuses it
    envelope_from: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """What the mail server said when it accepted a message."""

    message_id: str
    response: str  # e.g. "250 2.0.0 Ok: queued as 1234"


class Transport(Protocol):
    """Hands composed messages to a mail server (or an outbox).

    `send` raises `TransientSendError` (try again later), `PermanentSendError` (refused for good) or
    `SendOutcomeUnknownError` (the connection failed after DATA began: the server may hold the message, so it
    is never re-sent), and nothing else. Each carries the SMTP `code` (None without a reply) and `deferral`:
    whether the receiving side said "try later", which pauses the recipient's domain."""

    async def send(self, message: OutgoingEmail) -> SendReceipt: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str  # one line, whitespace collapsed
    html: str
    text: str


class Renderer(Protocol):
    """Renders one campaign step for one lead (Jinja2 sandbox behind it)."""

    def render_step(
        self, campaign_id: str, step_id: str, context: Mapping[str, Any], variant: str | None = None
    ) -> RenderedEmail:
        """Render `step_id` for the lead in `context`; `variant` (an A/B variant's id) picks its content."""
        ...


_TRIGGER_TITLES = {"hot": "Hot lead", "mql": "New MQL"}
_DEFAULT_TITLE = "Buying signal"  # moments ("moment:<name>") and anything newer
_UPPER_STAGES = frozenset({"mql", "sql"})


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a lead's recent activity: a touchpoint or an engagement event."""

    occurred_at: datetime
    kind: str  # email_sent, page_visit, stage_change, ...
    subject: str | None = None  # "campaign/step" (": why" when failed or skipped), or an event's URL


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """Everything a rep is told about a lead worth a call, ready for any channel.

    `title()` and `text()` render it as plain text that reads well on a phone: no markup, short lines, the
    lead first, then why, then what it did. Lead fields are lead data: they are put on one line each.
    """

    alert_id: int
    lead_id: int
    trigger: str  # mql | hot | moment:<name>: the first of the triggers
    reason: str  # every trigger's reason, joined with "; "
    score_before: int  # when the alert was raised (or last revised by a handoff)
    score_after: int
    score_now: int  # the lead's score and stage as the alert is sent, decay included
    stage: str
    created_at: datetime
    lead_email: str
    lead_name: str | None
    lead_company: str | None
    lead_title: str | None
    lead_source: str | None
    owner_email: str | None
    owner_name: str | None
    recent: tuple[TimelineEntry, ...]  # newest first
    timeline_url: str
    updates: int | None = None  # the earlier alert, sent inside the cooldown, this handoff updates
    revision: int = 0  # how many handoffs revised the alert before it was sent

    def who(self) -> str:
        """The lead as a rep names it: "Mei Lin, Example Logistics", or its email address."""
        name = _one_line(self.lead_name)
        company = _one_line(self.lead_company)
        return ", ".join(p for p in (name, company) if p) or _one_line(self.lead_email)

    def title(self) -> str:
        """One line: what kind of alert, who, and the score and stage now.

        A handoff that updates an alert sent inside the cooldown says so: "Now MQL: Mei Lin (score 71, MQL)".
        """
        stage = stage_label(self.stage)
        if self.updates is not None and self.trigger in _TRIGGER_TITLES:
            kind = f"Now {stage}" if self.trigger == "mql" else f"Now {_TRIGGER_TITLES[self.trigger].lower()}"
        else:
            kind = _TRIGGER_TITLES.get(self.trigger, _DEFAULT_TITLE)
        return f"{kind}: {self.who()} (score {self.score_now}, {stage})"

    def text(self) -> str:
        """The body: who, why, the score, the recent activity and the link to the lead's timeline."""
        lines = [self.who()]
        role = _one_line(self.lead_title)
        if role:
            lines.append(role)
        lines.append(_one_line(self.lead_email))
        if self.lead_source:
            lines.append(f"Source: {_one_line(self.lead_source)}")
        lines += ["", "Why now:"]
        lines += [f"- {_one_line(part)}" for part in self.reason.split("; ") if part.strip()]
        score = f"Score: {self.score_now} now, stage {stage_label(self.stage)}"
        if (self.score_before, self.score_after) != (self.score_now, self.score_now):
            score += f" ({self.score_before} -> {self.score_after} when raised)"
        lines.append(score)
        if self.updates is not None:
            lines.append(f"Updates alert {self.updates}, sent earlier inside the cooldown")
        if self.owner_email:
            owner = _one_line(self.owner_name)
            lines.append(f"Owner: {owner} <{self.owner_email}>" if owner else f"Owner: {self.owner_email}")
        if self.recent:
            lines += ["", f"Last {len(self.recent)} touchpoints (newest first, UTC):"]
            lines += [_timeline_line(entry) for entry in self.recent]
        lines += ["", f"Timeline: {self.timeline_url}"]
        return "\n".join(lines)


def stage_label(stage: str) -> str:
    """A stage as a rep reads it: "MQL", "SQL", or the stage's own name."""
    return stage.upper() if stage in _UPPER_STAGES else _one_line(stage)


def _timeline_line(entry: TimelineEntry) -> str:
    when = entry.occurred_at.strftime("%b %d %H:%M")
    subject = _one_line(entry.subject)
    return f"{when}  {entry.kind}  {subject}" if subject else f"{when}  {entry.kind}"


def _one_line(value: str | None) -> str:
    """`value` with control characters and line breaks turned into single spaces, ends stripped."""
    if not value:
        return ""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())


class AlertSink(Protocol):
    """One channel alerts go out on (the owner's email, notification URLs).

    `name` is stable: it records in the alert which sinks already delivered it, so a retry skips them.
    """

    name: str

    async def send(self, alert: AlertMessage, *, notify_urls: Sequence[str]) -> None:
        """Deliver `alert`; `notify_urls` are the owner's own notification URLs (from the reps file).

        Raises:
            AlertDeliveryError: the channel did not take the alert; it is tried again later.
        """
        ...
