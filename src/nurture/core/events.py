"""Engagement events as they arrive and what became of them: the value types the tracking web, the events
API, the event stream and the recording flow share."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

# An event's type is also its touchpoint's kind, a 40-character column.
EVENT_TYPE: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One engagement signal about a lead, as received (pixel, click, site beacon or the events API)."""

    lead_id: int
    type: str  # email_open, email_click, page_visit, content_download, ..., or a custom slug
    occurred_at: datetime
    url: str | None = None
    user_agent: str | None = None
    delivery_id: int | None = None  # the email it came from, when known
    idempotency_key: str | None = None  # a replay with the same key is recorded once
    properties: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    head_request: bool = False  # the tracking URL was fetched with HTTP HEAD: a machine, never a person

    def __post_init__(self) -> None:
        if not EVENT_TYPE.fullmatch(self.type):
            raise ValueError(f"event type {self.type!r} is not a lower-case slug of up to 40 characters")
        if self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    event_id: int
    lead_id: int
    repeat: bool = False  # the same signal as one stored within the replay window: stored, never scored


class NotRecorded(StrEnum):
    DUPLICATE = "duplicate"  # its idempotency key is already stored
    UNKNOWN_LEAD = "unknown_lead"  # no such lead, or an erased one
    FOREIGN_DELIVERY = "foreign_delivery"  # it names an email that is not its lead's: refused
