"""ARF feedback reports: the Message-ID is trusted only when its tag verifies; garbage is a ValueError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.feedback import delivery_id_of, parse_feedback_report
from nurture.core.tracking import message_id_for
from tests.flows.test_complaints_and_erasure import arf

KEY = b"feedback-test-key-0123456789"
REPORT = b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"'


def test_a_report_gives_its_type_message_id_and_original_recipient() -> None:
    mid = message_id_for(7, domain="acmeflow.example", key=KEY)
    report = parse_feedback_report(arf(message_id=mid, recipient="Mei@Example.com"))

    assert (report.feedback_type, report.message_id, report.recipient) == ("abuse", mid, "Mei@Example.com")
    assert delivery_id_of(mid, key=KEY) == 7


@pytest.mark.parametrize(
    "message_id",
    [
        message_id_for(7, domain="acmeflow.example", key=b"another-key-0123456789"),
        message_id_for(7, domain="acmeflow.example", key=KEY).replace("<d7.", "<d8."),
        message_id_for(7, domain="acmeflow.example", key=KEY).replace(".", ".0", 1),  # a longer tag
        "<d7.0000000000000000@acmeflow.example>",
        "<d99999999999999999999.0000000000000000@x.example>",
        "<CAF=abc@mail.gmail.com>",
        "",
    ],
)
def test_a_message_id_we_did_not_sign_names_no_delivery(message_id: str) -> None:
    assert delivery_id_of(message_id, key=KEY) is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"Subject: hi\n\nnot a report", "text/plain"),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b--\n",
            "report-type",
        ),
        (
            b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n--b--\n',
            "no message/",
        ),
        (arf(recipient=None), "neither"),
        (arf().replace(b"Feedback-Type: abuse", b"Feedback-Type: <script>"), "Feedback-Type"),
    ],
)
def test_what_is_not_a_usable_report_is_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_feedback_report(raw)


@given(st.binary(max_size=2000) | st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_are_a_report_or_a_value_error(raw: bytes) -> None:
    try:
        report = parse_feedback_report(raw)
    except ValueError as exc:
        reason = str(exc)
    else:
        # a report names what it is about: the message, or its recipient
        assert report.feedback_type
        assert report.message_id is not None or report.recipient is not None
        return
    # a refusal is a one-line reason the API can answer with
    assert reason
    assert "\n" not in reason


@given(st.text(max_size=300))
def test_any_header_text_in_a_report_is_a_report_or_a_value_error(junk: str) -> None:
    raw = arf(message_id=junk.replace("\n", " ") or None, recipient=junk or None)
    try:
        report = parse_feedback_report(raw.decode("utf-8", "replace").encode("utf-8", "surrogatepass"))
    except ValueError:
        return
    assert report.recipient is None or "\n" not in report.recipient
