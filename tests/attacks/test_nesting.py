"""Deeply nested bodies, over real HTTP: every JSON and MIME parser refuses nesting past its limit with a 400
and a one-line reason, before it recurses; no nesting yields a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.feedback import MAX_MIME_DEPTH, parse_feedback_report
from nurture.web.http import json_depth
from tests.attacks.conftest import Site, SiteFactory

pytestmark = pytest.mark.integration

LIMIT = 6


def _nested(prefix: str, depth: int) -> str:
    """A JSON object `{prefix "x": [[...]]}` nested `depth` deep in all (the object is the first level)."""
    inner = "[" * (depth - 1) + "]" * (depth - 1) or "0"
    return "{" + prefix + '"x": ' + inner + "}"


def _deep_report(depth: int) -> bytes:
    """A feedback report declaring `depth` multipart/message parts: report, feedback fields, and the original
    message as `depth - 2` nested multipart/mixed parts."""
    original = "Content-Type: text/plain\n\nhello\n"
    for level in range(depth - 3):
        original = (
            f'Content-Type: multipart/mixed; boundary="m{level}"\n\n--m{level}\n{original}--m{level}--\n'
        )
    return (
        "From: fbl@isp.example\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nOriginal-Rcpt-To: rfc822;mei@example.com\n\n"
        f"--b\nContent-Type: message/rfc822\n\nFrom: growth@acmeflow.example\nMessage-ID: <x@y>\n{original}"
        "--b--\n"
    ).encode()


@pytest.mark.parametrize("path", ["/t/v", "/api/events", "/api/leads"])
async def test_json_nested_past_the_limit_is_a_400_at_limit_plus_one_only(
    site_factory: SiteFactory, path: str
) -> None:
    site: Site = await site_factory(max_json_depth=LIMIT)
    async with site.client:
        prefix = (
            '"email": "mei@example.com", "type": "content_download", "token": "t", "url": "https://a.b/",'
        )
        answers = {
            depth: await site.client.post(path, content=_nested(prefix, depth), headers=site.auth)
            for depth in (LIMIT - 1, LIMIT, LIMIT + 1)
        }
    refusal = f"the body is JSON nested deeper than {LIMIT} arrays or objects"
    for depth in (LIMIT - 1, LIMIT):
        assert answers[depth].status_code < 500
        assert refusal not in answers[depth].text, depth
    assert answers[LIMIT + 1].status_code == 400
    assert refusal in answers[LIMIT + 1].text
    assert "\n" not in answers[LIMIT + 1].text


@pytest.mark.parametrize("path", ["/t/v", "/api/events", "/api/leads"])
# Within /t/v's 8 KiB, and each past the parser's recursion limit (about 1,000) but the last, a string
@pytest.mark.parametrize("shape", ["[" * 8000, '{"a":' * 1600, "[" * 4000 + "]" * 4000, '["' + "[" * 8000])
async def test_json_nested_far_past_any_recursion_limit_is_a_400_never_a_500(
    site: Site, path: str, shape: str
) -> None:
    answer = await site.client.post(path, content=shape, headers=site.auth)
    assert answer.status_code == 400, answer.text[:200]


@pytest.mark.parametrize("depth", [MAX_MIME_DEPTH - 1, MAX_MIME_DEPTH, MAX_MIME_DEPTH + 1, 5000])
async def test_a_complaint_nested_past_the_mime_limit_is_a_400(site: Site, depth: int) -> None:
    answer = await site.client.post("/api/complaints", content=_deep_report(depth), headers=site.auth)
    if depth <= MAX_MIME_DEPTH:
        assert answer.status_code == 200, answer.text  # the address is suppressed
    else:
        assert answer.status_code == 400
        assert answer.json()["error"] == (
            f"a feedback report nests at most {MAX_MIME_DEPTH} multipart or message parts"
        )


async def test_the_mime_limit_is_a_setting(site_factory: SiteFactory) -> None:
    site: Site = await site_factory(max_mime_depth=4)
    async with site.client:
        statuses = [
            (
                await site.client.post("/api/complaints", content=_deep_report(d), headers=site.auth)
            ).status_code
            for d in (3, 4, 5)
        ]
    assert statuses == [200, 200, 400]


def test_each_report_declares_the_parts_it_is_built_with() -> None:
    for depth in (3, 4, 10):
        parse_feedback_report(_deep_report(depth), max_depth=depth)
        with pytest.raises(ValueError, match="nests at most"):
            parse_feedback_report(_deep_report(depth), max_depth=depth - 1)


def _true_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_true_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_true_depth, value.values()), default=0)
    return 0


bracket_text = st.text(alphabet='[]{}"\\ab:,\n', max_size=12)
json_values = st.recursive(
    st.none() | st.integers() | bracket_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(bracket_text, inner, max_size=3),
    max_leaves=30,
)


@given(value=json_values, indent=st.sampled_from([None, 1]))
def test_the_pre_scan_reads_the_depth_of_any_json_even_with_brackets_in_strings(
    value: Any, indent: Any
) -> None:
    assert json_depth(json.dumps(value, indent=indent)) == _true_depth(value)


@given(text=st.text(alphabet='[]{}"\\a,:', max_size=60))
def test_the_pre_scan_never_reads_less_than_the_parser_recurses(text: str) -> None:
    """For any text, valid or not, a body the pre-scan lets through parses without a RecursionError."""
    try:
        value = json.loads(text)
    except ValueError:
        return
    assert json_depth(text) >= _true_depth(value)
