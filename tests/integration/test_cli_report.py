"""`nurture report` as a user runs it: on the embedded database, every format, and bad options."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.harness.cli import Cli
from tests.project import PROJECT

pytestmark = pytest.mark.integration

ROOT = PROJECT  # the tests' own project files (tests/project.py)


def test_report_of_imported_leads_in_every_format(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "leads.csv").write_text(
        "email,stage,source\na@example.com,lead,webinar\nb@example.com,sql,webinar\nc@example.com,lead,\n"
    )
    assert cli("leads", "import", "leads.csv").returncode == 0

    table = cli("report")
    assert table.returncode == 0, table.stderr
    assert "mql              1          33.3%" in table.stdout
    assert "webinar" in table.stdout
    assert "(none)" in table.stdout

    data = json.loads(cli("report", "--format", "json", "--by", "owner").stdout)
    assert [s["leads"] for s in data["funnel"]] == [3, 1, 1, 0, 0]
    assert data["groups"][0]["key"] == "(none)"

    rows = list(csv.reader(io.StringIO(cli("report", "--format", "csv").stdout)))
    assert rows[0] == ["section", "key", "metric", "value"]
    assert ["funnel", "sql", "leads", "1"] in rows

    later = json.loads(cli("report", "--format", "json", "--since", "2999-01-01").stdout)
    assert later["funnel"][0]["leads"] == 0


def test_report_refuses_a_since_that_is_not_a_date_with_one_clear_line(cli: Cli) -> None:
    result = cli("report", "--since", "last week")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --since: 'last week' is not an ISO date (2026-03-01) or instant"
