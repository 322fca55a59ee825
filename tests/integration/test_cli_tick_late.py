"""`nurture tick` says how many touches it skipped as late, in text and in JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import PROJECT

REPO = PROJECT  # the tests' own project files (tests/project.py)
MONDAY = "2026-03-02T02:00:00Z"  # 10:00 in Taipei
THREE_WEEKS_LATER = "2026-03-23T02:00:00Z"


def _nurture(tmp_path: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_CAMPAIGNS_DIR=str(REPO / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(REPO / "templates"),
        NURTURE_REPS_FILE=str(REPO / "reps.yaml"),
        NURTURE_DATA_DIR=str(tmp_path / "var"),
        NO_COLOR="1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "nurture", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.integration
def test_tick_reports_the_touches_it_skipped_as_late(tmp_path: Path) -> None:
    # Given the sample leads, enrolled and sent their first step on a Monday
    _nurture(tmp_path, "leads", "import", str(REPO / "examples" / "leads.csv"))
    first = _nurture(tmp_path, "tick", "--now", MONDAY)
    assert re.search(
        r"enrolled [1-9]\d*, sent \d+, deferred \d+( \(.*\))?, skipped 0, failed 0, unknown 0$", first.strip()
    ), first
    # When the next pass runs three weeks later, then the steps more than 48 hours overdue are skipped
    late = json.loads(_nurture(tmp_path, "tick", "--now", THREE_WEEKS_LATER, "--format", "json"))
    assert late["skipped_late"] > 0
    assert late["unknown"] == 0
