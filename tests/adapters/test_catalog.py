"""load_catalog: campaigns, templates and reps read from disk, with every error reported at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest

from nurture.catalog import Catalog, load_catalog
from nurture.core.campaign import RepTask
from nurture.core.context import SAMPLE_LEAD, SAMPLE_REP, Rep, template_context
from nurture.core.scoring import DEFAULT_RULES, Thresholds
from nurture.errors import ConfigErrors, TemplateError
from tests.project import PROJECT

TEMPLATE = '<p>Hi {{ lead.first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
TEMPLATE += "<p>{{ postal_address }}</p>"  # the opt-out footer validation requires
REPS = """\
- email: Sam.Rivera@Example.com
  name: Sam Rivera
  title: Account Executive
- {email: kim@example.com, name: Kim Lee, phone: 0912345678}
"""


def campaign_yaml(campaign_id: str, *, priority: int = 100, template: str = "shared/hello.html.j2") -> str:
    return f"""\
id: {campaign_id}
name: Campaign {campaign_id}
priority: {priority}
sender: {{from: "Acme <growth@acme.example>"}}
steps:
  - {{id: hello, day: 0, subject: "Hi {{{{ lead.first_name }}}}", template: {template}}}
"""


Load = Callable[..., Catalog]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "templates" / "shared").mkdir(parents=True)
    (tmp_path / "templates" / "shared" / "hello.html.j2").write_text(TEMPLATE, encoding="utf-8")
    return tmp_path


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


ROOT = PROJECT  # the tests' own project files (tests/project.py)
SCORING = """\
points: {email_open: 1, page_visit: 2}
thresholds: {mql: 30, hot: 60}
half_life: 7d
"""


def load(root: Path, *, reps: str | None = "reps.yaml", scoring: str | None = None) -> Catalog:
    if scoring is None:  # as existing callers do: no scoring_file argument at all
        return load_catalog(
            campaigns_dir=root / "campaigns",
            templates_dir=root / "templates",
            reps_file=root / reps if reps else None,
        )
    return load_catalog(
        campaigns_dir=root / "campaigns",
        templates_dir=root / "templates",
        reps_file=root / reps if reps else None,
        scoring_file=root / scoring,
    )


def errors_of(root: Path, **kwargs: str | None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigErrors) as info:
        load(root, **kwargs)
    return [(Path(e.source).name, e.line, e.reason) for e in info.value.errors]


def test_load_catalog_loads_campaigns_and_orders_them_by_priority_then_id(root: Path) -> None:
    write(root, "campaigns/b.yaml", campaign_yaml("bravo", priority=10))
    write(root, "campaigns/a.yml", campaign_yaml("alpha", priority=20))
    write(root, "campaigns/c.yaml", campaign_yaml("charlie", priority=10))

    catalog = load(root)

    assert [c.id for c in catalog.ordered()] == ["bravo", "charlie", "alpha"]
    assert catalog.campaigns["alpha"].source == str(root / "campaigns" / "a.yml")
    assert catalog.templates_dir == root / "templates"


def test_load_catalog_reads_only_yaml_files_at_the_top_of_the_campaigns_folder(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(root, "campaigns/tests/spec.yaml", "not: a campaign\n")
    write(root, "campaigns/README.md", "# campaigns\n")
    write(root, "campaigns/.#a.yaml", "editor lock file\n")

    assert list(load(root).campaigns) == ["alpha"]


def test_load_catalog_reads_reps_keyed_by_normalised_email(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(root, "reps.yaml", REPS)

    reps = load(root).reps

    assert reps == {
        "sam.rivera@example.com": Rep(
            email="sam.rivera@example.com", name="Sam Rivera", title="Account Executive"
        ),
        "kim@example.com": Rep(email="kim@example.com", name="Kim Lee", phone="0912345678"),
    }


@pytest.mark.parametrize("reps", ["missing.yaml", None])
def test_load_catalog_treats_a_missing_reps_file_as_no_reps(root: Path, reps: str | None) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))

    assert load(root, reps=reps).reps == {}


def test_load_catalog_reports_bad_rep_entries_with_their_lines(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(
        root,
        "reps.yaml",
        REPS
        + "- {email: not-an-address, name: X}\n"
        + "- {email: kim@EXAMPLE.com, name: Kim Again}\n"
        + "- email: lee@example.com\n"
        + "- {email: a@example.com, name: A, team: west}\n"
        + '- {email: b@example.com, name: "B\\nBcc: x"}\n'
        + "- just a name\n",
    )

    errors = errors_of(root)

    assert [(line, reason.split(" (")[0].split(":")[0]) for _, line, reason in errors] == [
        (5, "email"),
        (6, "duplicate rep 'kim@example.com'"),
        (7, "missing required key 'name'"),
        (8, "unknown key 'team'"),
        (9, "name"),
        (10, "a rep is a mapping such as {email"),
    ]
    assert "first at line 4" in errors[1][2]
    assert "must be on one line" in errors[4][2]


def test_load_catalog_reports_a_reps_file_that_is_not_a_list(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(root, "reps.yaml", "# reps\nsam@example.com: Sam\n")

    assert errors_of(root) == [
        ("reps.yaml", 2, "the reps file is a list of entries such as `- {email: ..., name: ...}`")
    ]


def test_load_catalog_reports_two_campaigns_with_the_same_id_naming_both_files(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(root, "campaigns/b.yaml", "# copied from a.yaml\n" + campaign_yaml("alpha"))

    errors = errors_of(root)

    assert errors == [
        ("b.yaml", 2, f"duplicate campaign id 'alpha': {root / 'campaigns' / 'a.yaml'} already defines it")
    ]


def test_load_catalog_reports_a_missing_campaigns_folder(tmp_path: Path) -> None:
    errors = errors_of(tmp_path)

    assert errors == [("campaigns", None, "campaigns folder not found")]


def test_load_catalog_reports_a_missing_templates_folder(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))

    with pytest.raises(ConfigErrors, match="templates folder not found"):
        load_catalog(campaigns_dir=root / "campaigns", templates_dir=root / "nowhere", reps_file=None)


def test_load_catalog_reports_a_campaign_file_that_is_not_utf8(root: Path) -> None:
    (root / "campaigns" / "a.yaml").write_bytes(b"id: caf\xe9\n")

    [(name, line, reason)] = errors_of(root)

    assert (name, line) == ("a.yaml", None)
    assert reason.startswith("not UTF-8 text")


def test_load_catalog_reports_every_error_from_every_file_at_once_sorted_by_file_and_line(root: Path) -> None:
    # Given a bad campaign file, a template with a typo, a missing template and a bad rep
    write(root, "campaigns/a.yaml", campaign_yaml("alpha").replace("priority: 100", "priority: high"))
    write(root, "campaigns/b.yaml", campaign_yaml("bravo", template="bravo/typo.html.j2"))
    write(root, "campaigns/c.yaml", campaign_yaml("charlie", template="charlie/missing.html.j2"))
    write(root, "templates/bravo/typo.html.j2", "<p>Hi</p>\n<p>{{ lead.frist_name }}</p>\n")
    write(root, "reps.yaml", "- {email: nobody}\n")

    # When the catalog loads
    with pytest.raises(ConfigErrors) as info:
        load(root)

    # Then every problem is in one error, sorted by file and line
    found = [(e.source, e.line) for e in info.value.errors]
    assert found == [
        (str(root / "campaigns" / "a.yaml"), 3),
        (str(root / "campaigns" / "c.yaml"), 6),
        (str(root / "reps.yaml"), 1),
        (str(root / "templates" / "bravo" / "typo.html.j2"), 2),
    ]
    assert (
        str(info.value)
        .splitlines()[3]
        .endswith("typo.html.j2:2: undefined: 'dict object' has no attribute 'frist_name'")
    )


def test_load_catalog_reports_a_template_shared_by_two_campaigns_once(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha", template="shared/bad.html.j2"))
    write(root, "campaigns/b.yaml", campaign_yaml("bravo", template="shared/bad.html.j2"))
    write(root, "templates/shared/bad.html.j2", "{{ nope }}")

    assert len(errors_of(root)) == 1


def test_catalog_renderer_is_built_once_and_renders_a_step(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    catalog = load(root)
    campaign = catalog.campaigns["alpha"]
    context = template_context(
        SAMPLE_LEAD,
        owner=SAMPLE_REP,
        campaign=campaign,
        step=campaign.steps[0],
        unsubscribe_url="https://t.example/u/x",
        postal_address="Acme",
    )

    email = catalog.renderer().render_step("alpha", "hello", context)

    assert catalog.renderer() is catalog.renderer()
    assert email.subject == "Hi Mei"
    assert "https://t.example/u/x" in email.text


# --- scoring ---------------------------------------------------------------------------------------------


def test_load_catalog_reads_the_scoring_file(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(root, "scoring.yaml", SCORING)

    scoring = load(root, scoring="scoring.yaml").scoring

    assert scoring.points == {"email_open": 1, "page_visit": 2}
    assert (scoring.thresholds, scoring.half_life) == (Thresholds(mql=30, hot=60), timedelta(days=7))
    assert scoring.source == str(root / "scoring.yaml")


@pytest.mark.parametrize("scoring", ["missing.yaml", None])
def test_load_catalog_uses_the_default_rules_without_a_scoring_file(root: Path, scoring: str | None) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))

    assert load(root, scoring=scoring).scoring is DEFAULT_RULES


def test_load_catalog_reports_scoring_errors_with_every_other_error_at_once(root: Path) -> None:
    # Given a bad campaign, a bad rep and a scoring file with two problems
    write(root, "campaigns/a.yaml", campaign_yaml("alpha").replace("priority: 100", "priority: high"))
    write(root, "reps.yaml", "- {email: nobody}\n")
    write(root, "scoring.yaml", SCORING.replace("page_visit: 2", "page_visit: -2").replace("7d", "7"))

    # When the catalog loads, Then every problem is reported, sorted by file and line
    errors = errors_of(root, scoring="scoring.yaml")

    assert [(name, line) for name, line, _ in errors] == [
        ("a.yaml", 3),
        ("reps.yaml", 1),
        ("scoring.yaml", 1),
        ("scoring.yaml", 3),
    ]
    assert errors[2][2] == "points.page_visit: must be 0 or more"


def test_load_catalog_reports_a_scoring_file_that_is_not_utf8(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    (root / "scoring.yaml").write_bytes(b"points: {caf\xe9: 1}\n")

    [(name, line, reason)] = errors_of(root, scoring="scoring.yaml")

    assert (name, line) == ("scoring.yaml", None)
    assert reason.startswith("not UTF-8 text")


def test_load_catalog_reads_the_shipped_scoring_and_reps_files() -> None:
    catalog = load_catalog(
        campaigns_dir=ROOT / "campaigns",
        templates_dir=ROOT / "templates",
        reps_file=ROOT / "reps.yaml",
        scoring_file=ROOT / "scoring.yaml",
    )

    assert dataclasses.replace(catalog.scoring, source=DEFAULT_RULES.source) == DEFAULT_RULES
    assert [rep.email for rep in catalog.reps.values() if not rep.active] == ["katrin.vogel@acmeflow.example"]
    assert len(catalog.active_reps()) == len(catalog.reps) - 1


# --- reps: notification URLs and away --------------------------------------------------------------------


def test_load_catalog_reads_notify_urls_and_away_and_lists_active_reps_in_file_order(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(
        root,
        "reps.yaml",
        """\
- {email: zoe@example.com, name: Zoe, notify: "slack://xoxb-token/C012AB3CD"}
- email: ann@example.com
  name: Ann
  away: true
  notify:
    - mailto://user:pass@example.com
    - msteams://a/b/c
    - mailto://user:pass@example.com
- {email: max@example.com, name: Max, away: false, notify: []}
- {email: bea@example.com, name: Bea, notify: null}
""",
    )

    catalog = load(root)

    assert list(catalog.reps.values()) == [
        Rep(email="zoe@example.com", name="Zoe", notify_urls=("slack://xoxb-token/C012AB3CD",)),
        Rep(
            email="ann@example.com",
            name="Ann",
            notify_urls=("mailto://user:pass@example.com", "msteams://a/b/c"),
            active=False,
        ),
        Rep(email="max@example.com", name="Max"),
        Rep(email="bea@example.com", name="Bea"),
    ]
    assert [rep.name for rep in catalog.active_reps()] == ["Zoe", "Max", "Bea"]


def test_load_catalog_reports_bad_notify_urls_and_away_flags_with_their_lines(root: Path) -> None:
    write(root, "campaigns/a.yaml", campaign_yaml("alpha"))
    write(
        root,
        "reps.yaml",
        """\
- email: a@example.com
  name: A
  notify:
    - slack://ok
    - hooks.slack.com/services/T000
- {email: b@example.com, name: B, notify: {slack: x}}
- {email: c@example.com, name: C, away: sometimes}
- {email: d@example.com, name: D, away: [true]}
- {email: e@example.com, name: E, notify: "json://x y"}
""",
    )

    errors = errors_of(root)

    assert [(line, reason.split(" such as")[0]) for _, line, reason in errors] == [
        (5, "notify: 'hooks.slack.com/services/T000' is not a notification URL"),
        (6, "notify: expected text"),
        (7, "away: expected true or false"),
        (8, "away: expected true or false"),
        (9, "notify: 'json://x y' is not a notification URL"),
    ]


# --- holidays and rep task titles -----------------------------------------------------------------------

TASK_CAMPAIGN = """\
id: calls
name: Calls
sender: {from: "Acme <growth@acme.example>", postal_address: "Acme Inc., 1 Main St"}
send_window: {skip_holidays: true}
steps:
  - {id: hello, day: 0, subject: "Hi", template: shared/hello.html.j2}
  - id: call
    day: 3
    task: {title: "Call {{ lead.first_name or 'the lead' }} at {{ lead.company or 'their company' }}"}
"""


def test_days_off_are_the_public_holidays_of_the_leads_country_when_the_window_skips_them(root: Path) -> None:
    write(root, "campaigns/calls.yaml", TASK_CAMPAIGN)
    write(root, "campaigns/plain.yaml", campaign_yaml("plain"))
    catalog = load_catalog(campaigns_dir=root / "campaigns", templates_dir=root / "templates", reps_file=None)
    calls, plain = catalog.campaigns["calls"], catalog.campaigns["plain"]
    assert date(2026, 10, 10) in catalog.days_off(calls, "TW")  # National Day
    assert date(2026, 10, 10) in catalog.days_off(calls, " tw ")
    assert date(2026, 7, 4) not in catalog.days_off(calls, "TW")
    assert date(2026, 12, 25) in catalog.days_off(calls, "DE")
    assert date(2026, 10, 10) not in catalog.days_off(plain, "TW")  # this window does not skip holidays
    assert date(2026, 12, 25) not in catalog.days_off(calls, "Atlantis")  # unknown: no holidays, no error
    assert date(2026, 12, 25) not in catalog.days_off(calls, None)


def test_a_rep_task_title_renders_in_the_sandbox_on_one_line(root: Path) -> None:
    write(root, "campaigns/calls.yaml", TASK_CAMPAIGN)
    catalog = load_catalog(campaigns_dir=root / "campaigns", templates_dir=root / "templates", reps_file=None)
    campaign = catalog.campaigns["calls"]
    step = campaign.step("call")
    assert step is not None
    context = template_context(
        dataclasses.replace(SAMPLE_LEAD, first_name="Mei\r\nBcc: x@evil.example", company=None),
        owner=SAMPLE_REP,
        campaign=campaign,
        step=step,
        unsubscribe_url="",
        postal_address="",
    )
    assert (
        catalog.render_task_title(campaign, step, context) == "Call Mei Bcc: x@evil.example at their company"
    )
    broken = dataclasses.replace(step, task=RepTask("Call {{ lead.frist_name }}"))
    with pytest.raises(TemplateError, match="step call task title"):
        catalog.render_task_title(campaign, broken, context)
