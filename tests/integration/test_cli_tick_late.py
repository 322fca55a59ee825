"""`nurture tick` says how many touches it skipped as late, in text and in JSON."""

from __future__ import annotations

import json
import re

import pytest

from tests.harness.cli import Cli, ok
from tests.project import PROJECT

REPO = PROJECT  # the tests' own project files (tests/project.py)
MONDAY = "2026-03-02T02:00:00Z"  # 10:00 in Taipei
THREE_WEEKS_LATER = "2026-03-23T02:00:00Z"


@pytest.mark.integration
def test_tick_reports_the_touches_it_skipped_as_late(cli: Cli) -> None:
    # Given the sample leads, enrolled and sent their first step on a Monday
    ok(cli("leads", "import", str(REPO / "examples" / "leads.csv")))
    first = ok(cli("tick", "--now", MONDAY)).stdout
    assert re.search(
        r"enrolled [1-9]\d*, sent \d+, deferred \d+( \(.*\))?, skipped 0, failed 0, unknown 0$", first.strip()
    ), first
    # When the next pass runs three weeks later, then the steps more than 48 hours overdue are skipped
    late = json.loads(ok(cli("tick", "--now", THREE_WEEKS_LATER, "--format", "json")).stdout)
    assert late["skipped_late"] > 0
    assert late["unknown"] == 0
