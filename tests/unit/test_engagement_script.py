"""The engagement script of `nurture simulate --engagement`: what it accepts, and how it reports bad lines."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.core.engagement_script import DEFAULT_DELAY, DEFAULT_TIME, parse_duration, parse_script
from nurture.errors import ConfigErrors

SCRIPT = """\
# what Mei does
opens welcome
clicks case-study /pricing after 1d
replies to breakup
unsubscribes from objections
visits /pricing on day 9          # a comment after an action
downloads whitepaper on day 4 at 15:30
submits demo-request on day 6
views proposal on day 20
books meeting on day 11
does webinar_attended https://acme.example/live on day 3
Mei.Lin@Example.com: visits /demo on day 2
"""


def test_every_action_of_the_script_language_is_read_with_its_event_type_and_timing() -> None:
    script = parse_script(SCRIPT, source="mei.txt")
    got = [(a.line, a.event_type, a.step, a.day, a.url) for a in script.actions]
    assert got == [
        (2, "email_open", "welcome", None, None),
        (3, "email_click", "case-study", None, "/pricing"),
        (4, "email_reply", "breakup", None, None),
        (5, "unsubscribe", "objections", None, None),
        (6, "page_visit", None, 9, "/pricing"),
        (7, "content_download", None, 4, "whitepaper"),
        (8, "form_submit", None, 6, "demo-request"),
        (9, "proposal_view", None, 20, None),
        (10, "meeting_booked", None, 11, None),
        (11, "webinar_attended", None, 3, "https://acme.example/live"),
        (12, "page_visit", None, 2, "/demo"),
    ]
    opens, clicks = script.actions[0], script.actions[1]
    assert opens.after == DEFAULT_DELAY
    assert clicks.after == timedelta(days=1)
    assert script.actions[5].at == time(15, 30)
    assert script.actions[4].at == DEFAULT_TIME
    assert script.actions[3].is_unsubscribe


def test_a_lead_prefix_limits_an_action_to_that_lead_and_the_rest_apply_to_everyone() -> None:
    script = parse_script(SCRIPT, source="mei.txt")
    assert len(script.for_lead("mei.lin@example.com")) == 11
    assert len(script.for_lead("someone@example.com")) == 10
    assert script.steps == {"welcome", "case-study", "breakup", "objections"}


def test_every_bad_line_is_reported_at_once_with_its_file_and_line() -> None:
    bad = (
        "opens\nvisits pricing on day 3\njumps around\nvisits /x\nopens welcome on day 2\nviews a on day 1\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        parse_script(bad, source="bad.txt", first_line=10)
    lines = [str(e) for e in caught.value.errors]
    assert [line.split(":")[1] for line in lines] == ["10", "11", "12", "13", "14", "15"]
    assert all(line.startswith("bad.txt:") for line in lines)
    assert "unknown action 'jumps'" in lines[2]
    assert "needs a day" in lines[3]


@pytest.mark.parametrize(("text", "expected"), [("2h", timedelta(hours=2)), ("1d12h", timedelta(days=1.5))])
def test_durations_are_read_as_written(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "-1h", "1h 2m"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.text(max_size=200))
def test_any_text_either_parses_or_is_refused_with_config_errors_never_another_exception(text: str) -> None:
    errors: list[str] = []
    try:
        script = parse_script(text, source="fuzz.txt")
    except ConfigErrors as exc:
        errors = [str(e) for e in exc.errors]
    else:
        assert all(a.line >= 1 for a in script.actions)
    assert all(e.startswith("fuzz.txt:") for e in errors)
