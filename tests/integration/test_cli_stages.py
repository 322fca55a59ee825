"""`make run` twice: `nurture leads import examples/leads.csv`, scoring, the same import again, through the
real command on the embedded SQLite database. No lead's stage moves back, and every move is on record."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from tests.harness.cli import Cli, ok, one_line_error
from tests.project import PROJECT

pytestmark = pytest.mark.integration

LEADS_CSV = PROJECT / "examples" / "leads.csv"
NOW = "2026-03-02T02:00:00+00:00"
QUALIFIED = 5  # leads that engagement makes MQLs between the two imports


@pytest.fixture
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    """test_cli's `cli` fixture with a frozen clock for `rescore`."""
    found: Cli = request.getfixturevalue("cli")
    clock = tmp_path / "clock"
    clock.write_text(NOW)
    return found.with_env(NURTURE_CLOCK_FILE=str(clock))


def _db(run: Cli) -> sqlite3.Connection:
    return sqlite3.connect(run.cwd / "var" / "nurture.db")


def _stages(run: Cli) -> dict[str, str]:
    with _db(run) as conn:
        return dict(conn.execute("SELECT email, stage FROM leads"))


def _qualify(run: Cli, count: int = QUALIFIED) -> list[str]:
    """Give a few early-stage leads a booked meeting and a pricing visit, and rescore: they become MQLs."""
    with _db(run) as conn:
        chosen = conn.execute(
            "SELECT id, email FROM leads WHERE stage IN ('lead', 'suspect', 'visitor') ORDER BY id LIMIT ?",
            (count,),
        ).fetchall()
        for lead_id, _ in chosen:
            conn.executemany(
                "INSERT INTO events (lead_id, type, occurred_at, received_at, properties) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (lead_id, "meeting_booked", "2026-03-02 01:00:00", "2026-03-02 01:00:00", "{}"),
                    (
                        lead_id,
                        "page_visit",
                        "2026-03-02 01:05:00",
                        "2026-03-02 01:05:00",
                        '{"url": "https://acme.example/pricing"}',
                    ),
                ],
            )
    ok(run("rescore", "--all"))
    return [email for _, email in chosen]


def test_importing_the_sample_leads_again_after_scoring_keeps_every_stage_and_lists_the_kept_rows(
    run: Cli,
) -> None:
    # Given the sample leads imported, and scoring making a few of them MQLs
    ok(run("leads", "import", LEADS_CSV))
    qualified = _qualify(run)
    before = _stages(run)
    assert [before[email] for email in qualified] == ["mql"] * QUALIFIED
    # When the same file is imported again (`make run` a second time)
    second = ok(run("leads", "import", LEADS_CSV, "--rejects", "rejects.csv"))
    # Then no lead changed its stage, every row counts as updated, and the MQLs' rows are listed as kept
    assert _stages(run) == before
    assert f"0 new, 300 updated, 0 rejected, {QUALIFIED} kept their stage" in second.stdout
    with (run.cwd / "rejects.csv").open(newline="", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert sorted(r["email"] for r in rejects) == sorted(qualified)
    assert all("would move the lead back from mql; kept mql" in r["reason"] for r in rejects)
    # And the only stage changes on record are scoring's
    with _db(run) as conn:
        history = conn.execute("SELECT from_stage, to_stage, path FROM stage_changes").fetchall()
    assert sorted(history) == sorted((before_csv, "mql", "scoring") for before_csv in _csv_stages(qualified))
    # And `lead show` lists the lead's stage history
    shown = json.loads(ok(run("lead", "show", qualified[0], "--format", "json")).stdout)
    assert [(h["to"], h["path"]) for h in shown["stage_history"]] == [("mql", "scoring")]
    assert "(scoring): qualified: score" in ok(run("lead", "show", qualified[0])).stdout


def test_an_import_moves_stages_back_only_with_allow_stage_downgrade_and_a_reason(run: Cli) -> None:
    ok(run("leads", "import", LEADS_CSV))
    [email] = _qualify(run, 1)
    # Without a reason the option is refused before anything is imported
    assert "--stage-reason" in one_line_error(run("leads", "import", LEADS_CSV, "--allow-stage-downgrade"))
    assert _stages(run)[email] == "mql"
    # With one, the MQL goes back to the file's stage and the move is recorded with the reason
    reason = "reset after the CRM migration"
    result = ok(run("leads", "import", LEADS_CSV, "--allow-stage-downgrade", "--stage-reason", reason))
    assert "kept their stage" not in result.stdout
    assert _stages(run)[email] == _csv_stages([email])[0]
    with _db(run) as conn:
        last = conn.execute("SELECT from_stage, path, reason FROM stage_changes ORDER BY id DESC").fetchone()
    assert last == ("mql", "import", reason)


def test_a_strict_import_fails_when_a_row_kept_its_stage(run: Cli) -> None:
    ok(run("leads", "import", LEADS_CSV))
    _qualify(run, 1)
    result = run("leads", "import", LEADS_CSV, "--strict")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr


def _csv_stages(emails: list[str]) -> list[str]:
    with LEADS_CSV.open(newline="", encoding="utf-8") as handle:
        by_email = {row["email"].lower(): row["stage"] or "lead" for row in csv.DictReader(handle)}
    return [by_email[email] for email in emails]
