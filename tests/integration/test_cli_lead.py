"""`nurture lead show` and `nurture rescore`, run as real subprocesses on the embedded SQLite database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.harness.cli import Cli, ok, one_line_error

pytestmark = pytest.mark.integration


@pytest.fixture
def project_cli(request: pytest.FixtureRequest) -> Cli:
    """test_cli's `cli` fixture (a parameter named like the imported fixture would trip ruff's F811)."""
    found: Cli = request.getfixturevalue("cli")
    return found


NOW = "2026-03-02T02:00:00+00:00"


def _seed(run: Cli, tmp_path: Path) -> None:
    """One lead that booked a meeting and visited the pricing page, none of it scored yet."""
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,first_name,company,owner\nmei@example.com,Mei,Example Logistics,lin.chen@acmeflow.example\n"
    )
    ok(run("leads", "import", csv))
    with sqlite3.connect(run.cwd / "var" / "nurture.db") as conn:
        conn.executemany(
            "INSERT INTO events (lead_id, type, occurred_at, received_at, properties) VALUES (1, ?, ?, ?, ?)",
            [
                ("meeting_booked", "2026-03-02 01:00:00", "2026-03-02 01:00:00", "{}"),
                (
                    "page_visit",
                    "2026-03-02 01:05:00",
                    "2026-03-02 01:05:00",
                    '{"url": "https://acme.example/pricing"}',
                ),
                (
                    "email_open",
                    "2026-03-02 01:06:00",
                    "2026-03-02 01:06:00",
                    '{"user_agent": "Barracuda scanner"}',
                ),
            ],
        )


def test_rescore_all_recomputes_from_the_event_log_and_reports_what_changed(
    project_cli: Cli, tmp_path: Path
) -> None:
    run = project_cli
    _seed(run, tmp_path)
    clock = tmp_path / "clock"
    clock.write_text(NOW)
    run = run.with_env(NURTURE_CLOCK_FILE=str(clock))
    summary = json.loads(ok(run("rescore", "--all", "--format", "json")).stdout)
    assert summary == {"leads": 1, "scores_changed": 1, "stages_changed": 1}
    # A second pass finds nothing to change
    again = ok(run("rescore", "--all")).stdout
    assert again.strip() == "rescored 1 lead(s): 0 score(s) changed, 0 stage change(s)"
    # And the lead's score is explained event by event
    shown = json.loads(ok(run("lead", "show", "MEI@example.com", "--format", "json")).stdout)
    assert (shown["stage"], shown["score"], shown["score_now"]) == ("mql", shown["score_now"], 65)
    by_type = {e["type"]: e for e in shown["events"]}
    assert by_type["page_visit"]["base_points"] == 15
    assert by_type["page_visit"]["url"] == "https://acme.example/pricing"
    assert by_type["email_open"]["ignored"].startswith("machine: scanner")
    assert [e["state"] for e in shown["enrollments"]] == []
    assert "stage_change" in [t["kind"] for t in shown["timeline"]]
    assert shown["alerts"] == []  # a rule-driven rescore alerts nobody
    table = ok(run("lead", "show", "mei@example.com")).stdout
    assert "Mei <mei@example.com>" in table
    assert "not counted: machine: scanner" in table


def test_rescore_of_one_lead_and_the_errors_an_operator_can_make(project_cli: Cli, tmp_path: Path) -> None:
    run = project_cli
    _seed(run, tmp_path)
    assert json.loads(ok(run("rescore", "mei@example.com", "--format", "json")).stdout)["leads"] == 1
    assert "EMAIL or --all" in one_line_error(run("rescore"))
    assert "EMAIL or --all" in one_line_error(run("rescore", "mei@example.com", "--all"))
    assert "no lead with email nobody@example.com" in one_line_error(
        run("lead", "show", "nobody@example.com")
    )
    assert "not an email address" in one_line_error(run("lead", "show", "not-an-address"))
