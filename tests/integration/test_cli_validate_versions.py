"""`nurture validate` on a live installation: what an edit to a campaign would do to enrolled leads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.cli import Cli, ok, tick
from tests.project import PROJECT, project_copy

pytestmark = pytest.mark.integration

ROI_STEP = """\
  - id: roi-calculator
    day: 8
"""


def test_validate_without_a_database_says_in_one_line_that_it_cannot_warn(cli: Cli) -> None:
    result = ok(cli("validate"))
    assert result.stdout.splitlines()[1:] == [
        "note: no database, so what these changes do to enrolled leads cannot be told"
    ]


def test_validate_warns_that_removing_a_step_skips_the_pending_deliveries_of_enrolled_leads(
    cli: Cli,
    tmp_path: Path,
) -> None:
    # Given leads enrolled in the shipped campaigns (embedded database)
    project = project_copy(tmp_path / "project")
    live = cli.with_env(NURTURE_CAMPAIGNS_DIR=str(project / "campaigns"))
    ok(live("leads", "import", PROJECT / "examples" / "leads.csv"))
    enrolled = tick(live, "2026-03-02T02:00:00Z")
    assert enrolled
    assert ok(live("validate")).stdout.splitlines()[1:] == []  # nothing changed: nothing to say

    # When marketing deletes the roi-calculator step
    path = project / "campaigns" / "saas-nurture.yaml"
    text = path.read_text(encoding="utf-8")
    start = text.index(ROI_STEP)
    end = text.index("\n\n", start)
    path.write_text(text[:start] + text[end + 2 :], encoding="utf-8")
    result = ok(live("validate"))

    # Then validate still passes, and says what the change does to the leads enrolled now
    lines = result.stdout.splitlines()[1:]
    assert lines[0].startswith(f"warning: {path}: ")
    assert lines[0].endswith("enrolled lead(s) started an earlier version (on_change: keep)")
    removed = [line for line in lines if "step 'roi-calculator' removed" in line]
    assert len(removed) == 1, lines
    leads = int(lines[0].split(": ")[2].split(" ")[0])
    effect = f"{leads} pending deliveries will be skipped"
    assert removed[0].endswith(f"{leads} enrolled lead(s): step 'roi-calculator' removed → {effect}")


def test_validate_prints_a_line_number_that_looks_like_an_emoji_code_as_it_is(
    cli: Cli,
    tmp_path: Path,
) -> None:
    project = project_copy(tmp_path / "project")
    path = project / "campaigns" / "saas-nurture.yaml"
    path.write_text("#\n" * 99 + "bogus: 1\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    result = cli.with_env(NURTURE_CAMPAIGNS_DIR=str(project / "campaigns"))("validate")
    assert result.returncode == 1
    assert f"{path}:100: unknown key 'bogus'" in result.stderr
