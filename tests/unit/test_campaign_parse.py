"""parse_campaign: YAML text to a frozen Campaign, or every problem with its line."""

from __future__ import annotations

import hashlib
from datetime import time
from types import MappingProxyType

import pytest

from nurture.core.campaign import (
    Audience,
    Campaign,
    ExitRule,
    Sender,
    SendWindow,
    Step,
    parse_campaign,
)
from nurture.errors import CampaignError, ConfigErrors

# Line numbers matter: the tests below assert them.
BASE = """\
id: saas-nurture
name: Nurture
sender:
  from: "Acme Growth <growth@acme.example>"
steps:
  - id: welcome
    day: 0
    subject: Hello
    template: saas/welcome.html.j2
  - id: case-study
    day: 3
    subject: Case study
    template: saas/case-study.html.j2
"""

FULL = """\
id: saas-nurture            # slug
name: 21-day nurture for leads that fit but are not ready
priority: 10
audience:
  grade: [nurturable]
  stage: [lead, suspect]
  min_score: 0
  max_score: 49
  sources: [tbbanner, demo_homepage]
  countries: [TW, us]
  tags: {utm_campaign: [spring-launch]}
sender: {from: "Acme Growth <growth@acme.example>", reply_to: owner, postal_address: "Acme Inc., 1 Main St"}
send_window:
  days: [mon, Tuesday, fri]
  start: "08:30"
  end: "17:00"
  timezone: lead
  default_timezone: Asia/Taipei
exit: {score_at_least: 50, stage_in: [mql, sql]}
steps:
  - {id: welcome, day: 0, subject: "{{ lead.first_name or 'Hello' }}, hi", template: saas/welcome.html.j2}
  - {id: case-study, day: 3, subject: Study, template: saas/case.html.j2, text_template: saas/case.txt.j2}
"""


def errors_of(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigErrors) as info:
        parse_campaign(text, source="campaigns/c.yaml")
    assert all(isinstance(e, CampaignError) and e.source == "campaigns/c.yaml" for e in info.value.errors)
    return [(e.line, e.reason) for e in info.value.errors]


def assert_one_error(text: str, line: int, fragment: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0][0] == line, errors
    assert fragment in errors[0][1], errors


def test_parse_campaign_reads_a_minimal_file_with_every_default() -> None:
    campaign = parse_campaign(BASE, source="campaigns/c.yaml")

    assert campaign == Campaign(
        id="saas-nurture",
        name="Nurture",
        sender=Sender(from_address="Acme Growth <growth@acme.example>"),
        steps=(
            Step(id="welcome", day=0, subject="Hello", template="saas/welcome.html.j2"),
            Step(id="case-study", day=3, subject="Case study", template="saas/case-study.html.j2"),
        ),
        source="campaigns/c.yaml",
        content_hash=hashlib.sha256(BASE.encode()).hexdigest(),
    )
    assert campaign.send_window.timezone is None
    assert campaign.priority == 100


def test_parse_campaign_reads_a_full_file_into_the_expected_values() -> None:
    campaign = parse_campaign(FULL, source="full.yaml")

    assert campaign.priority == 10
    assert campaign.audience == Audience(
        grades=frozenset({"nurturable"}),
        stages=frozenset({"lead", "suspect"}),
        min_score=0,
        max_score=49,
        sources=frozenset({"tbbanner", "demo_homepage"}),
        countries=frozenset({"TW", "US"}),
        tags=MappingProxyType({"utm_campaign": frozenset({"spring-launch"})}),
    )
    assert campaign.sender == Sender(
        from_address="Acme Growth <growth@acme.example>",
        reply_to="owner",
        postal_address="Acme Inc., 1 Main St",
    )
    assert campaign.send_window == SendWindow(
        start=time(8, 30),
        end=time(17),
        weekdays=frozenset({0, 1, 4}),
        timezone=None,
        default_timezone="Asia/Taipei",
    )
    assert campaign.exit == ExitRule(score_at_least=50, stages=frozenset({"mql", "sql"}))
    assert campaign.steps[1] == Step(
        id="case-study",
        day=3,
        subject="Study",
        template="saas/case.html.j2",
        text_template="saas/case.txt.j2",
    )
    assert campaign.steps[0].subject == "{{ lead.first_name or 'Hello' }}, hi"
    assert campaign.source == "full.yaml"
    assert campaign.content_hash == hashlib.sha256(FULL.encode()).hexdigest()


def test_parse_campaign_keeps_a_send_window_zone_other_than_lead() -> None:
    text = BASE + "send_window: {timezone: Europe/Berlin}\n"

    assert parse_campaign(text, source="c.yaml").send_window.timezone == "Europe/Berlin"


def test_parse_campaign_reads_yaml_scalars_as_yaml_1_2_so_times_and_norway_stay_text() -> None:
    # Given YAML 1.1 traps: 17:00 is the integer 1020 there, NO is false, and 010 is octal 8
    text = (
        BASE.replace("day: 3", "day: 010")
        + "send_window: {start: 9:00, end: 17:00}\naudience: {countries: [NO]}\n"
    )

    campaign = parse_campaign(text, source="c.yaml")

    assert (campaign.send_window.start, campaign.send_window.end) == (time(9), time(17))
    assert campaign.audience.countries == frozenset({"NO"})
    assert campaign.steps[1].day == 10


def test_parse_campaign_accepts_one_value_where_a_list_is_expected() -> None:
    text = BASE + "audience: {grade: nurturable, stage: mql, tags: {utm_source: google}}\n"

    audience = parse_campaign(text, source="c.yaml").audience

    assert audience.grades == frozenset({"nurturable"})
    assert audience.stages == frozenset({"mql"})
    assert audience.tags == {"utm_source": frozenset({"google"})}


def test_parse_campaign_remembers_the_line_of_each_key() -> None:
    campaign = parse_campaign(BASE, source="c.yaml")

    assert campaign.line_of("id") == 1
    assert campaign.line_of("steps", 1, "template") == 13
    assert campaign.line_of("steps", 0, "subject") == 8
    assert campaign.line_of("audience") is None


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        ("id: saas-nurture", "id: Saas Nurture", 1, "'Saas Nurture' is not a slug"),
        ("  - id: welcome", "  - id: Welcome!", 6, "'Welcome!' is not a slug"),
        ("  - id: case-study", "  - id: welcome", 10, "duplicate step id 'welcome' (first used at line 6)"),
        ("    day: 3", "    day: 0", 11, "bad day order: day 0 must come after day 0"),
        ("    day: 0", "    day: -1", 7, "steps[0].day: must be 0 or more"),
        ("    day: 3", "    day: 1.5", 11, "steps[1].day: expected a whole number"),
        ("    day: 3", "    day: true", 11, "steps[1].day: expected a whole number"),
        ("    subject: Hello", '    subject: ""', 8, "steps[0].subject: must not be empty"),
        (
            "    template: saas/welcome.html.j2",
            "    template: ../secret.html",
            9,
            "not a path inside the templates",
        ),
        (
            '  from: "Acme Growth <growth@acme.example>"',
            "  from: growth",
            4,
            "'growth' is not an email address",
        ),
        (
            '  from: "Acme Growth <growth@acme.example>"',
            '  from: "A <a@acme.example>\\nBcc: x@evil.example"',
            4,
            "must be on one line",
        ),
        (
            '  from: "Acme Growth <growth@acme.example>"',
            "  from: a@acme.example\n  reply_to: nobody",
            5,
            "sender.reply_to: 'nobody' is not an email address",
        ),
        ("name: Nurture\n", "", 1, "missing required key 'name'"),
        (
            '  from: "Acme Growth <growth@acme.example>"',
            "  reply_to: owner",
            3,
            "missing required key 'sender.from'",
        ),
        ("    subject: Case study\n", "", 10, "missing required key 'steps[1].subject'"),
    ],
)
def test_parse_campaign_reports_a_bad_value_at_its_line(old: str, new: str, line: int, fragment: str) -> None:
    assert old in BASE
    assert_one_error(BASE.replace(old, new), line, fragment)


@pytest.mark.parametrize(
    ("section", "line", "fragment"),
    [
        ("send_window:\n  timezone: Mars/Olympus", 15, "'Mars/Olympus' is not an IANA time zone"),
        ("send_window:\n  default_timezone: lead", 15, "'lead' is not an IANA time zone"),
        ("send_window:\n  days: []", 15, "send_window.days: needs at least one weekday"),
        ("send_window:\n  days: [mon, funday]", 15, "unknown weekday 'funday'"),
        ("send_window:\n  start: '17:00'\n  end: '09:00'", 16, "end 09:00 must be after start 17:00"),
        ("send_window:\n  start: '10:00'\n  end: '9:30'", 16, "end 9:30 must be after start 10:00"),
        ("send_window:\n  start: 9am", 15, "'9am' is not a time of day"),
        ("send_window:\n  end: '24:00'", 15, "'24:00' is not a time of day"),
        ("audience:\n  grade: [nurturable, hot]", 15, "unknown grade 'hot'"),
        ("audience:\n  grade: [invalid]", 15, "grade 'invalid' is never contacted"),
        ("audience:\n  grade: []", 15, "audience.grade: needs at least one grade"),
        ("audience:\n  stage:\n    - lead\n    - prospect", 17, "unknown stage 'prospect'"),
        ("audience:\n  min_score: 60\n  max_score: 10", 16, "min_score 60 is above max_score 10"),
        ("audience:\n  countries: [Taiwan]", 15, "'Taiwan' is not a two-letter country code"),
        ("audience:\n  tags: {UTM_Source: [google]}", 15, "tag 'UTM_Source' never matches"),
        (
            "audience:\n  grade: nurturable\n  sorces: [x]",
            16,
            "unknown key 'audience.sorces' (did you mean 'sources'?)",
        ),
        ("exit:\n  stage_in: [won]", 15, "unknown stage 'won'"),
        ("exit:\n  score_at_least: high", 15, "exit.score_at_least: expected a whole number"),
        ("priorty: 5", 14, "unknown key 'priorty' (did you mean 'priority'?)"),
        ("priority: '5'", 14, "priority: expected a whole number"),
        ("name: Other", 14, "duplicate key 'name' (first at line 2)"),
        ("audience: [nurturable]", 14, "audience: expected keys and values"),
    ],
)
def test_parse_campaign_reports_a_bad_section_at_its_line(section: str, line: int, fragment: str) -> None:
    assert_one_error(BASE + section + "\n", line, fragment)


def test_parse_campaign_reports_a_misspelt_step_key_and_the_key_it_lacks() -> None:
    errors = errors_of(BASE.replace("    subject: Hello", "    subjet: Hello"))

    assert errors == [
        (6, "missing required key 'steps[0].subject'"),
        (8, "unknown key 'steps[0].subjet' (did you mean 'subject'?)"),
    ]


def test_parse_campaign_rejects_a_campaign_without_steps() -> None:
    steps_at = BASE.index("steps:")

    assert_one_error(BASE[:steps_at] + "steps: []\n", 5, "steps: needs at least one step")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            BASE.replace("    subject: Hello", "    subject: Hello: there"),
            8,
            "mapping values are not allowed here",
        ),
        (BASE.replace("name: Nurture", "name: [Nurture"), 3, "YAML syntax"),
        (BASE.replace("    day: 3", "\tday: 3"), 11, "YAML syntax"),
        (
            BASE.replace("subject: Case study", 'subject: "Case\x07study"'),
            12,
            "special characters are not allowed",
        ),
        (BASE + "---\nid: other\n", 14, "expected a single document"),
        ("a: !!python/object:os.system x\n", 1, "could not determine a constructor"),
    ],
)
def test_parse_campaign_reports_yaml_syntax_errors_at_the_marker_line(
    text: str, line: int, fragment: str
) -> None:
    assert_one_error(text, line, fragment)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- id: a\n- id: b\n", "holds keys such as id, name, sender and steps"),
        ("just text\n", "holds keys such as id, name, sender and steps"),
    ],
)
def test_parse_campaign_rejects_a_file_that_is_not_a_mapping(text: str, fragment: str) -> None:
    assert_one_error(text, 1, fragment)


def test_parse_campaign_stops_an_alias_bomb_before_expanding_it() -> None:
    bomb = 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
    for level in range(1, 9):
        previous = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        bomb += f"{name}: &{name} [{', '.join(['*' + previous] * 10)}]\n"

    assert_one_error(bomb, 1, "aliases repeat too often")


def test_parse_campaign_reports_every_problem_in_a_file_at_once_in_line_order() -> None:
    text = (
        BASE.replace("id: saas-nurture", "id: Bad Id")
        .replace("    day: 3", "    day: 0")
        .replace('  from: "Acme Growth <growth@acme.example>"', "  from: nobody")
        + "send_window: {timezone: Nowhere/City, days: []}\nextra: 1\n"
    )

    errors = errors_of(text)

    assert [line for line, _ in errors] == [1, 4, 11, 14, 14, 15]
    reasons = " | ".join(reason for _, reason in errors)
    for fragment in ("not a slug", "not an email address", "bad day order", "IANA", "weekday", "unknown key"):
        assert fragment in reasons
