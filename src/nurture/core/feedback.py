"""Complaint feedback reports (ARF, RFC 5965): parse one and find which of our emails it is about. Pure.

A report is a `multipart/report; report-type=feedback-report` with a human part, a `message/feedback-report`
part (`Feedback-Type`, `Original-Rcpt-To`, ...) and the original message or its headers. Our Message-IDs are
signed (`core.tracking.message_id_for`), so one found in a report names a delivery only if its tag verifies.
"""

from __future__ import annotations

import email
import hmac
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from typing import Final

from nurture.core.tracking import MAX_ID, message_id_for

MAX_REPORT_BYTES: Final = 1024 * 1024
MAX_MIME_DEPTH: Final = 16  # the default of NURTURE_MAX_MIME_DEPTH
# A part that holds parts: the email parser recurses once for each. A header may fold after its colon.
_CONTAINER: Final = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)?(?:multipart|message)/", re.I | re.M)
_MESSAGE_ID: Final = re.compile(r"<d(\d{1,19})\.[0-9a-f]{16}@[A-Za-z0-9.-]{1,253}>")
_FEEDBACK_TYPE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    feedback_type: str  # abuse, fraud, virus, other, not-spam, ...
    message_id: str | None  # the original message's Message-ID
    recipient: str | None  # the original recipient's address, as written in the report


def parse_feedback_report(raw: bytes, *, max_depth: int = MAX_MIME_DEPTH) -> FeedbackReport:
    """Read an ARF report that declares at most `max_depth` multipart/* and message/* parts.

    The parts are counted in the raw bytes before the parser (which recurses into each) sees them: their
    number bounds the nesting, and a real report has three or four.

    Raises:
        ValueError: with a one-line reason when `raw` is not a feedback report, declares more parts, or
            names no message and no recipient.
    """
    if not raw.strip():
        raise ValueError("the body is empty; post the feedback report as message/rfc822")
    if len(raw) > MAX_REPORT_BYTES:
        raise ValueError(f"a feedback report is at most {MAX_REPORT_BYTES} bytes")
    if len(_CONTAINER.findall(raw)) > max_depth:
        raise ValueError(f"a feedback report nests at most {max_depth} multipart or message parts")
    message = email.message_from_bytes(raw)
    if message.get_content_type() != "multipart/report":
        raise ValueError(f"not a feedback report: the message is {message.get_content_type()}")
    if (message.get_param("report-type") or "") != "feedback-report":
        raise ValueError("not a feedback report: report-type is not feedback-report")
    fields = _feedback_fields(message)
    feedback_type = _clean(fields.get("Feedback-Type")).lower()
    if not _FEEDBACK_TYPE.fullmatch(feedback_type):
        raise ValueError("the feedback report has no valid Feedback-Type")
    original = _original_headers(message)
    message_id = (_clean(original.get("Message-ID")) or None) if original is not None else None
    recipient = _recipient(_clean(fields.get("Original-Rcpt-To")), original)
    if message_id is None and recipient is None:
        raise ValueError("the report names neither the original Message-ID nor the original recipient")
    return FeedbackReport(feedback_type, message_id, recipient)


def delivery_id_of(message_id: str, *, key: bytes) -> int | None:
    """The delivery whose signed Message-ID this is, or None for any other (or a forged) id."""
    match = _MESSAGE_ID.fullmatch(message_id.strip())
    if match is None or int(match.group(1)) > MAX_ID:
        return None
    delivery_id = int(match.group(1))
    domain = message_id.strip()[1:-1].rpartition("@")[2]
    try:
        expected = message_id_for(delivery_id, domain=domain, key=key)
    except ValueError:
        return None
    return delivery_id if hmac.compare_digest(expected, message_id.strip()) else None


def _feedback_fields(message: Message) -> Message:
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            # The parser reads a message/* part as an embedded message: its headers are the report's fields.
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            if isinstance(payload, str):
                return HeaderParser().parsestr(payload.lstrip())
    raise ValueError("the report has no message/feedback-report part")


def _original_headers(message: Message) -> Message | None:
    for part in message.walk():
        kind = part.get_content_type()
        payload = part.get_payload()
        if kind == "message/rfc822" and isinstance(payload, list) and payload:
            first = payload[0]
            return first if isinstance(first, Message) else None
        if kind == "text/rfc822-headers" and isinstance(payload, str):
            return HeaderParser().parsestr(payload.lstrip())
    return None


def _recipient(original_rcpt_to: str, original: Message | None) -> str | None:
    # "Original-Rcpt-To: rfc822;mei@example.com" names the envelope recipient; the original To is second best.
    address = original_rcpt_to.partition(";")[2] if ";" in original_rcpt_to else original_rcpt_to
    if not address and original is not None:
        found = getaddresses([_clean(original.get("To"))])
        address = found[0][1] if len(found) == 1 else ""
    address = address.strip().strip("<>").strip()
    return address if "@" in address and len(address) <= 320 and address.isprintable() else None


def _clean(value: object) -> str:
    """A header value as one trimmed line; anything else (absent, a Header object) as its text."""
    text = "" if value is None else str(value)
    return " ".join(text.split())[:1000]
