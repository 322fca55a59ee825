"""The seams flows depend on: Protocols for mail transport and rendering, and the values they exchange."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    """Hands composed messages to a mail server (or an outbox). Raises `TransientSendError` or
    `PermanentSendError` and nothing else."""

    async def send(self, message: OutgoingEmail) -> SendReceipt: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str  # one line, whitespace collapsed
    html: str
    text: str


class Renderer(Protocol):
    """Renders one campaign step for one lead (Jinja2 sandbox behind it)."""

    def render_step(self, campaign_id: str, step_id: str, context: Mapping[str, Any]) -> RenderedEmail: ...
