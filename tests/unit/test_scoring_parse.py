"""parse_scoring: scoring.yaml text to frozen ScoringRules, or every problem with its line."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from nurture.core.scoring import (
    DEFAULT_RULES,
    DEFAULT_SCANNER_USER_AGENTS,
    Moment,
    ScoringRules,
    Thresholds,
    UrlRule,
    parse_scoring,
)
from nurture.errors import ConfigError, ConfigErrors
from tests.project import PROJECT

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SOURCE = "scoring.yaml"

# Line numbers matter: the tests below assert them.
BASE = """\
points:
  email_open: 1
  page_visit: 3
thresholds:
  mql: 50
  hot: 80
"""

FULL = """\
points: {email_open: 2, page_visit: 3, webinar_attended: 20}
thresholds: {mql: 40, hot: 70}
half_life: 1w
daily_caps: {email_open: 2}
url_rules:
  - {pattern: /pricing, points: 15}
  - {pattern: "*/case-studies/*", points: 8, event_types: [page_visit, email_click]}
  - {pattern: /careers, points: 0, event_types: page_visit}
min_open_delay: 0s
click_burst: 4
scanner_user_agents: [Mimecast, "My Corporate Scanner", mimecast]
moments:
  - {name: pricing_visit, event_type: page_visit, url_pattern: /pricing}
  - {name: came-back, event_type: page_visit, after_silence: 1d12h}
alert_cooldown: 90m
"""


def parse(text: str) -> ScoringRules:
    return parse_scoring(text, source=SOURCE)


def errors_of(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigErrors) as info:
        parse(text)
    assert all(isinstance(e, ConfigError) and e.source == SOURCE for e in info.value.errors)
    return [(e.line, e.reason) for e in info.value.errors]


def assert_one_error(text: str, line: int, fragment: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0][0] == line, errors
    assert fragment in errors[0][1], errors


def test_parse_scoring_reads_the_shipped_scoring_file_as_the_default_rules() -> None:
    text = (ROOT / "scoring.yaml").read_text(encoding="utf-8")

    rules = parse_scoring(text, source="scoring.yaml")

    assert rules.source == "scoring.yaml"
    assert dataclasses.replace(rules, source=DEFAULT_RULES.source) == DEFAULT_RULES


def test_parse_scoring_shows_the_built_in_user_agent_list_in_the_shipped_file_as_it_is() -> None:
    # Given the shipped file with its commented scanner_user_agents list uncommented
    lines = (ROOT / "scoring.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# scanner_user_agents:"))
    block = [lines[start][2:]] + [line[1:] for line in lines[start + 1 :] if line.startswith("#   ")]

    # When it is parsed, Then the list is exactly the built-in one
    rules = parse_scoring("\n".join([*lines[:start], *block]), source="scoring.yaml")
    assert rules.scanner_user_agents == DEFAULT_SCANNER_USER_AGENTS


def test_parse_scoring_reads_a_minimal_file_with_every_default() -> None:
    rules = parse(BASE)

    assert rules == ScoringRules(
        points={"email_open": 1, "page_visit": 3},
        thresholds=Thresholds(mql=50, hot=80),
        half_life=timedelta(days=14),
        source=SOURCE,
    )
    assert rules.daily_caps == {}
    assert rules.scanner_user_agents == DEFAULT_SCANNER_USER_AGENTS
    assert (rules.min_open_delay, rules.click_burst) == (timedelta(seconds=10), 3)
    assert rules.alert_cooldown == timedelta(hours=24)


def test_parse_scoring_reads_a_full_file_into_the_expected_values() -> None:
    rules = parse(FULL)

    assert rules == ScoringRules(
        points={"email_open": 2, "page_visit": 3, "webinar_attended": 20},
        thresholds=Thresholds(mql=40, hot=70),
        half_life=timedelta(weeks=1),
        daily_caps={"email_open": 2},
        url_rules=(
            UrlRule("/pricing", 15, frozenset({"page_visit"})),
            UrlRule("*/case-studies/*", 8, frozenset({"page_visit", "email_click"})),
            UrlRule("/careers", 0, frozenset({"page_visit"})),
        ),
        min_open_delay=timedelta(0),
        scanner_user_agents=("mimecast", "my corporate scanner"),
        click_burst=4,
        moments=(
            Moment("pricing_visit", "page_visit", url_pattern="/pricing"),
            Moment("came-back", "page_visit", after_silence=timedelta(days=1, hours=12)),
        ),
        alert_cooldown=timedelta(minutes=90),
        source=SOURCE,
    )


def test_parse_scoring_returns_read_only_mappings() -> None:
    rules = parse(FULL)

    with pytest.raises(TypeError):
        rules.points["email_open"] = 100  # type: ignore[index]
    with pytest.raises(TypeError):
        rules.daily_caps["email_open"] = 100  # type: ignore[index]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2w", timedelta(weeks=2)),
        ("14d", timedelta(days=14)),
        ("14D", timedelta(days=14)),
        ("36h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1h30m15s", timedelta(hours=1, minutes=30, seconds=15)),
    ],
)
def test_parse_scoring_reads_durations_with_their_units(written: str, expected: timedelta) -> None:
    assert parse(BASE + f"half_life: {written}\n").half_life == expected


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        pytest.param(
            "email_open: 1", "email_open: -1", 2, "points.email_open: must be 0 or more", id="negative"
        ),
        pytest.param(
            "email_open: 1", "email_open: high", 2, "points.email_open: expected a whole number", id="text"
        ),
        pytest.param(
            "email_open: 1", "email_open: true", 2, "points.email_open: expected a whole number", id="bool"
        ),
        pytest.param(
            "email_open: 1", "email_open: 1.5", 2, "points.email_open: expected a whole number", id="float"
        ),
        pytest.param("email_open: 1", "Email Open: 1", 2, "'Email Open' is not an event type", id="bad type"),
        pytest.param("email_open: 1", "email_opne: 1", 2, "did you mean 'email_open'?", id="typo of a type"),
        pytest.param("mql: 50", "mql: 0", 5, "thresholds.mql: must be 1 or more", id="mql zero"),
        pytest.param("hot: 80", "hot: 50", 6, "hot (50) must be above mql (50)", id="hot not above mql"),
        pytest.param(
            "hot: 80", "hot: 80\n  host: 90", 7, "unknown key 'thresholds.host' (did you mean", id="extra"
        ),
        pytest.param("  hot: 80\n", "", 4, "missing required key 'thresholds.hot'", id="missing hot"),
    ],
)
def test_parse_scoring_reports_a_bad_value_at_its_line(old: str, new: str, line: int, fragment: str) -> None:
    assert old in BASE
    assert_one_error(BASE.replace(old, new), line, fragment)


@pytest.mark.parametrize(
    ("section", "line", "fragment"),
    [
        ("half_life: 14", 7, "14 is not a duration: write one such as 14d, 24h, 90m or 10s"),
        ("half_life: fortnight", 7, "'fortnight' is not a duration"),
        ("half_life: 0d", 7, "half_life: must be longer than 0s"),
        ("alert_cooldown: [24h]", 7, "alert_cooldown: expected a duration such as 14d, 24h, 90m or 10s"),
        ("min_open_delay: -5s", 7, "'-5s' is not a duration"),
        ("daily_caps: {page_visit: 0}", 7, "daily_caps.page_visit: must be 1 or more"),
        ("daily_caps: [page_visit]", 7, "daily_caps: expected keys and values"),
        ("url_rules:\n  - {pattern: pricing, points: 15}", 8, "'pricing' is not a URL path pattern"),
        ("url_rules:\n  - {pattern: /a b, points: 15}", 8, "'/a b' is not a URL path pattern"),
        ("url_rules:\n  - {pattern: /pricing}", 8, "missing required key 'url_rules[0].points'"),
        (
            "url_rules:\n  - {pattern: /x, point: 1, points: 2}",
            8,
            "'url_rules[0].point' (did you mean 'points'?)",
        ),
        ("url_rules:\n  - {pattern: /x, points: 1, event_types: []}", 8, "needs at least one event type"),
        ("url_rules: /pricing", 7, "url_rules: expected a list"),
        ("click_burst: 1", 7, "click_burst: must be 2 or more"),
        ("scanner_user_agents: []", 7, "needs at least one user agent"),
        ('scanner_user_agents: ["  "]', 7, "a user agent fragment is one line of text"),
        (
            "moments:\n  - {name: Pricing Visit, event_type: page_visit}",
            8,
            "'Pricing Visit' is not a moment name",
        ),
        ("moments:\n  - {name: " + "x" * 33 + ", event_type: page_visit}", 8, "at most 32"),
        ("moments:\n  - {name: pricing, event_type: page_vist}", 8, "did you mean 'page_visit'?"),
        ("moments:\n  - {name: pricing, event_type: page_visit, after_silence: 0s}", 8, "longer than 0s"),
        (
            "moments:\n  - {name: pricing, url_pattern: /pricing}",
            8,
            "missing required key 'moments[0].event_type'",
        ),
        ("thresholds_: 1", 7, "unknown key 'thresholds_' (did you mean 'thresholds'?)"),
    ],
)
def test_parse_scoring_reports_a_bad_section_at_its_line(section: str, line: int, fragment: str) -> None:
    assert_one_error(BASE + section + "\n", line, fragment)


def test_parse_scoring_reports_a_moment_name_used_twice_at_the_second_use() -> None:
    text = (
        BASE + "moments:\n  - {name: pricing, event_type: page_visit}\n  - {name: pricing, event_type: x}\n"
    )

    assert_one_error(text, 9, "duplicate moment 'pricing' (first at line 8)")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "the file is empty"),
        ("# nothing but a comment\n", 1, "the file is empty"),
        ("- points\n- thresholds\n", 1, "a scoring file holds keys such as points, thresholds and half_life"),
        ("points: {email_open: 1\nthresholds: {}\n", 2, "YAML syntax"),
        ("thresholds: {mql: 50, hot: 80}\n", 1, "missing required key 'points'"),
        (
            "points: {}\npoints: {}\nthresholds: {mql: 1, hot: 2}\n",
            2,
            "duplicate key 'points' (first at line 1)",
        ),
    ],
)
def test_parse_scoring_rejects_a_file_that_is_not_a_scoring_file(text: str, line: int, fragment: str) -> None:
    assert_one_error(text, line, fragment)


def test_parse_scoring_stops_an_alias_bomb_before_expanding_it() -> None:
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        bomb += (
            f"{level}: &{level} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"
        )

    assert_one_error(bomb, 1, "the file is too large, or its aliases repeat too often")


def test_parse_scoring_reports_every_problem_in_a_file_at_once_in_line_order() -> None:
    text = """\
points:
  email_open: -1
  email_clik: 5
thresholds: {mql: 90, hot: 80}
half_life: 14
daily_caps: {page_visit: 0}
url_rules:
  - {pattern: pricing, points: 15}
moments:
  - {name: pricing, event_type: page_visit}
  - {name: pricing, event_type: page_visit, after_silence: forever}
click_burst: 0
colour: blue
"""

    errors = errors_of(text)

    assert [line for line, _ in errors] == [2, 3, 4, 5, 6, 8, 11, 11, 12, 13]
    assert "did you mean 'email_click'?" in errors[1][1]
    assert "hot (80) must be above mql (90)" in errors[2][1]
    reasons_on_11 = " | ".join(reason for _, reason in errors[6:8])
    assert "duplicate moment 'pricing' (first at line 10)" in reasons_on_11
    assert "'forever' is not a duration" in reasons_on_11
