"""`nurture validate` reports every problem of every file in one run, and takes the campaigns folder itself.

Each test builds its own project in tmp_path: campaigns/, templates/ and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.cli import Cli, line_of, ok, one_line_error, problems

pytestmark = pytest.mark.integration

FOOTER = '<a href="{{ unsubscribe_url }}">Unsubscribe</a><p>{{ postal_address }}</p>'
POSTAL = "Acme Flow Inc., 548 Market St, San Francisco"


def campaign(campaign_id: str, template: str, *, postal: bool = True, extra: str = "") -> str:
    address = f', postal_address: "{POSTAL}"' if postal else ""
    return f"""\
id: {campaign_id}
name: Campaign {campaign_id}
sender: {{from: "Acme <growth@acme.example>"{address}}}
{extra}steps:
  - id: hello
    day: 0
    subject: "Hi {{{{ lead.first_name }}}}"
    template: {template}
"""


def project(root: Path, campaigns: dict[str, str], templates: dict[str, str]) -> Path:
    for name, text in campaigns.items():
        (root / "campaigns").mkdir(parents=True, exist_ok=True)
        (root / "campaigns" / name).write_text(text, encoding="utf-8")
    for name, text in templates.items():
        (root / "templates").mkdir(parents=True, exist_ok=True)
        (root / "templates" / name).write_text(text, encoding="utf-8")
    return root


def own_files(base: Cli) -> Cli:
    """`base` with no NURTURE_* folders, so `validate DIR` reads only DIR's files."""
    return base.with_env(
        NURTURE_CAMPAIGNS_DIR=None,
        NURTURE_TEMPLATES_DIR=None,
        NURTURE_REPS_FILE=None,
        NURTURE_POSTAL_ADDRESS=None,
    )


def test_one_validate_run_reports_yaml_and_template_errors_every_missing_opt_out_and_postal_address(
    cli: Cli,
    tmp_path: Path,
) -> None:
    # Given a campaign with an unknown key and a broken template, one template lacking both its
    # unsubscribe link and the postal address, one lacking only its link, and a campaign with no address
    root = project(
        tmp_path / "project",
        campaigns={
            "broken.yaml": campaign("broken", "broken.html.j2", extra="colour: blue\n"),
            "bare.yaml": campaign("bare", "bare.html.j2"),
            "nolink.yaml": campaign("nolink", "nolink.html.j2"),
            "unaddressed.yaml": campaign("unaddressed", "good.html.j2", postal=False),
        },
        templates={
            "broken.html.j2": "<p>{{ lead.first_name }</p>\n" + FOOTER,
            "bare.html.j2": "<p>Hello</p>",
            "nolink.html.j2": "<p>Hello</p><p>{{ postal_address }}</p>",
            "good.html.j2": "<p>Hello</p>" + FOOTER,
        },
    )
    campaigns = root / "campaigns"
    # When the project is validated once
    result = own_files(cli)("validate", root)
    # Then every problem of every file is listed, each at its file and line
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    found = [(Path(m["file"]).name, int(m["line"]), m["message"]) for m in problems(result.stderr)]
    template_line = line_of(campaigns / "bare.yaml", "template:")
    assert sorted((name, line) for name, line, _ in found) == sorted(
        [
            ("broken.yaml", line_of(campaigns / "broken.yaml", "colour: blue")),
            ("broken.html.j2", 1),  # the unclosed `{{`, though its campaign's YAML is invalid
            ("bare.yaml", template_line),  # no unsubscribe link ...
            ("bare.yaml", template_line),  # ... and no postal address, in the same run
            ("nolink.yaml", template_line),
            ("unaddressed.yaml", line_of(campaigns / "unaddressed.yaml", "sender:")),
        ]
    )
    messages = {name: [m for n, _, m in found if n == name] for name, _, _ in found}
    assert "colour" in messages["broken.yaml"][0]
    assert "syntax error" in messages["broken.html.j2"][0]
    assert any("unsubscribe link" in m for m in messages["bare.yaml"])
    assert any("postal address" in m for m in messages["bare.yaml"])
    assert "unsubscribe link" in messages["nolink.yaml"][0]
    assert "NURTURE_POSTAL_ADDRESS" in messages["unaddressed.yaml"][0]
    assert result.stderr.rstrip().endswith("error: 6 problem(s) found")


def test_a_campaign_without_a_postal_address_passes_when_nurture_postal_address_is_set(
    cli: Cli,
    tmp_path: Path,
) -> None:
    root = project(
        tmp_path / "project",
        campaigns={"unaddressed.yaml": campaign("unaddressed", "good.html.j2", postal=False)},
        templates={"good.html.j2": "<p>Hello</p>" + FOOTER},
    )
    result = own_files(cli).with_env(NURTURE_POSTAL_ADDRESS=POSTAL)("validate", root)
    assert ok(result).stdout.startswith("ok: 1 campaign(s), 1 step(s)")


def test_validate_given_the_campaigns_folder_itself_reads_the_templates_beside_it(
    cli: Cli,
    tmp_path: Path,
) -> None:
    # Given a project whose one campaign's template lacks its unsubscribe link
    root = project(
        tmp_path / "project",
        campaigns={"nolink.yaml": campaign("nolink", "nolink.html.j2")},
        templates={"nolink.html.j2": "<p>Hello</p><p>{{ postal_address }}</p>"},
    )
    # When the campaigns folder itself is validated, then the template beside it is checked
    result = own_files(cli)("validate", root / "campaigns")
    assert result.returncode == 1, result.stdout
    [found] = problems(result.stderr)
    assert (Path(found["file"]).name, "unsubscribe link" in found["message"]) == ("nolink.yaml", True)
    # And once fixed, the folder validates
    (root / "templates" / "nolink.html.j2").write_text("<p>Hello</p>" + FOOTER, encoding="utf-8")
    assert ok(own_files(cli)("validate", root / "campaigns")).stdout.startswith("ok: 1 campaign(s)")


def test_validate_of_a_folder_with_neither_campaigns_nor_a_campaigns_folder_says_what_it_expected(
    cli: Cli,
    tmp_path: Path,
) -> None:
    root = project(tmp_path / "project", campaigns={}, templates={"good.html.j2": FOOTER})
    (root / "scoring.yaml").write_text("points: {email_open: 1}\n", encoding="utf-8")
    line = one_line_error(own_files(cli)("validate", root))
    assert "has no campaigns/ folder" in line
    assert "give the project folder or the campaigns folder" in line
