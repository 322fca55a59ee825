"""The untrusted shapes of `/api/leads` and `/api/events` bodies, checked item by item.

A bad item is rejected with the field at fault and the reason, and the good items of the same request still
go in, as with a CSV import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from nurture.core.events import EVENT_TYPE
from nurture.core.lead import PROFILE_FIELDS
from nurture.core.tracking import MAX_ID, is_trackable_url

MAX_URL_CHARS: Final = 2048
MAX_STAGE_REASON_CHARS: Final = 500
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
# Kinds nurture writes on the timeline itself: an API event of one of these would pass for our own record.
RESERVED_TYPES: Final = frozenset(
    {
        "email_sent",
        "email_failed",
        "email_unknown",
        "email_resend",
        "enrolled",
        "exited",
        "unsubscribed",
        "score_change",
        "stage_change",
        "alert",
        "owner_assigned",
    }
)
_LEAD_FIELDS: Final = frozenset({"email", "grade", "stage", "stage_reason", *PROFILE_FIELDS})


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    field: str | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


class EventPayload(BaseModel):
    """One event of `POST /api/events`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    email: StrictStr | None = Field(default=None, min_length=1, max_length=320)
    lead_id: StrictInt | None = Field(default=None, gt=0, le=MAX_ID)
    type: StrictStr = Field(max_length=40)
    occurred_at: AwareDatetime | None = None
    url: StrictStr | None = Field(default=None, max_length=MAX_URL_CHARS)
    user_agent: StrictStr | None = Field(default=None, max_length=512)
    properties: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> EventPayload:
        if (self.email is None) == (self.lead_id is None):
            raise ValueError("give exactly one of email and lead_id")
        if not EVENT_TYPE.fullmatch(self.type):
            raise ValueError("type: a lower-case slug of up to 40 characters, such as content_download")
        if self.type in RESERVED_TYPES:
            raise ValueError(f"type: {self.type!r} is recorded by nurture itself")
        if self.url is not None and not is_trackable_url(self.url):
            raise ValueError("url: an absolute http(s) URL")
        if self.type == "page_visit" and self.url is None:
            raise ValueError("url: a page_visit needs the URL of the page")
        return self


def parse_event(item: Any, *, index: int, now: datetime) -> EventPayload | Rejected:
    """Validate one item of an events body; an event more than 5 minutes in the future is rejected."""
    try:
        event = EventPayload.model_validate(item)
    except ValidationError as exc:
        return _rejection(index, exc)
    if event.occurred_at is not None and event.occurred_at > now + MAX_CLOCK_SKEW:
        return Rejected(index, "occurred_at", "in the future")
    return event


def _rejection(index: int, exc: ValidationError) -> Rejected:
    error = exc.errors(include_url=False, include_input=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    field = ".".join(str(part) for part in error["loc"])
    if field:
        return Rejected(index, field, message)
    return Rejected(index, *split_reason(message))


def split_reason(message: str) -> tuple[str | None, str]:
    """Split "field: reason" into its field and reason; a message without a field prefix has none."""
    field, colon, reason = message.partition(": ")
    if colon and field and " " not in field:
        return field, reason
    return None, message


@dataclass(frozen=True, slots=True)
class LeadItem:
    row: dict[str, str | None]  # the same columns as a CSV file
    stage_reason: str | None  # given: the lead's `stage` may move it backwards, recorded with this reason


def lead_row(item: Any, *, index: int) -> LeadItem | Rejected:
    """Turn one item of a leads body into a row for `import_leads` and the item's `stage_reason`.

    Values are strings (numbers are accepted and written out); `tags` may be an object of source tags.
    """
    if not isinstance(item, Mapping):
        return Rejected(index, None, "a lead is a JSON object")
    reason = _stage_reason(item.get("stage_reason"), index=index)
    if isinstance(reason, Rejected):
        return reason
    row: dict[str, str | None] = {}
    for key, value in item.items():
        if key == "stage_reason":
            continue
        if key == "tags":
            tags = _tags(value, index=index)
            if isinstance(tags, Rejected):
                return tags
            row.update(tags)
            continue
        if not _is_cell(value):
            return Rejected(index, key, "must be a string or a number")
        row[key] = _cell(value)
    return LeadItem(row, reason)


def _stage_reason(value: Any, *, index: int) -> str | Rejected | None:
    if value is None:
        return None
    text = " ".join(value.split()) if isinstance(value, str) else ""
    if not text or len(text) > MAX_STAGE_REASON_CHARS:
        return Rejected(
            index, "stage_reason", f"a non-empty string of at most {MAX_STAGE_REASON_CHARS} characters"
        )
    return text


def _tags(value: Any, *, index: int) -> dict[str, str | None] | Rejected:
    if not isinstance(value, Mapping):
        return Rejected(index, "tags", "must be an object of tag names and values")
    tags: dict[str, str | None] = {}
    for name, tag in value.items():
        if not _is_cell(tag):
            return Rejected(index, f"tags.{name}", "must be a string or a number")
        if name.strip().lower() in _LEAD_FIELDS:
            return Rejected(index, f"tags.{name}", "is a lead field, not a tag")
        tags[name] = _cell(tag)
    return tags


def _is_cell(value: Any) -> bool:
    """Whether a JSON value can stand for a CSV cell: null, a string or a number."""
    return value is None or isinstance(value, str) or type(value) in (int, float)


def _cell(value: str | float | None) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)
