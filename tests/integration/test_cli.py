"""The `nurture` command run as a real subprocess, as an operator or a cron job runs it (DESIGN.md §7).

Each test gets its own working folder and data folder through the `cli` fixture (tests/harness/cli.py).
"""

from __future__ import annotations

import csv
import email
import json
import re
import sqlite3
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from tests.harness.cli import Cli, line_of, ok, one_line_error, problems, tick
from tests.project import PROJECT, project_copy

pytestmark = pytest.mark.integration

REPO = PROJECT  # the tests' own project files (tests/project.py)
LEADS_CSV = REPO / "examples" / "leads.csv"
LEADS_WITH_ERRORS_CSV = REPO / "examples" / "leads-with-errors.csv"
# Monday 2026-03-02 10:00 in Taipei: inside the send window of the Asian leads, outside the Americas'.
MONDAY_TAIPEI_10 = "2026-03-02T02:00:00Z"
WEDNESDAY_TAIPEI_10 = "2026-03-04T02:00:00Z"
SECRET_KEY = "cli-test-secret-key-0123456789"


def outbox_files(outbox: Path) -> dict[str, int]:
    """Every .eml in the outbox by name, with its inode: a re-sent message is written anew (new inode)."""
    return {p.name: p.stat().st_ino for p in outbox.glob("*.eml")} if outbox.is_dir() else {}


def read_eml(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def step_ids_by_campaign() -> dict[str, set[str]]:
    campaigns = (yaml.safe_load(p.read_text(encoding="utf-8")) for p in (REPO / "campaigns").glob("*.yaml"))
    return {c["id"]: {s["id"] for s in c["steps"]} for c in campaigns}


def inject(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in `path` with `new`."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not unique in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


# -- --help --------------------------------------------------------------------------------------------------

HELP_TARGETS = [
    [],
    ["run"],
    ["scheduler"],
    ["worker"],
    ["tick"],
    ["validate"],
    ["db"],
    ["db", "upgrade"],
    ["leads"],
    ["leads", "import"],
]


@pytest.mark.parametrize("command", HELP_TARGETS, ids=lambda c: " ".join(c) or "nurture")
def test_help_is_shown_for_every_command_and_group_with_exit_status_0(cli: Cli, command: list[str]) -> None:
    result = ok(cli(*command, "--help"))
    assert f"Usage: nurture {' '.join(command)}".rstrip() in " ".join(result.stdout.split())
    assert "Traceback" not in result.stderr


# -- leads import (embedded default: SQLite under NURTURE_DATA_DIR) ------------------------------------------


def test_leads_import_counts_new_rows_then_reports_them_updated_on_a_second_import(cli: Cli) -> None:
    # Given the 300 sample leads imported once
    first = ok(cli("leads", "import", LEADS_CSV))
    assert "imported 300 row(s): 300 new, 0 updated, 0 rejected" in first.stdout
    # When the same file is imported again, as text and as JSON
    second = ok(cli("leads", "import", LEADS_CSV))
    third = ok(cli("leads", "import", LEADS_CSV, "--format", "json"))
    # Then nothing is new, everything is updated, and the JSON carries the same counts
    assert "imported 300 row(s): 0 new, 300 updated, 0 rejected" in second.stdout
    data = json.loads(third.stdout)
    assert data["inserted"] == 0
    assert data["updated"] == 300
    assert data["rejected"] == []


def test_leads_import_reports_every_bad_row_by_number_and_writes_exactly_those_rows_to_rejects(
    cli: Cli,
) -> None:
    # Given a file whose rows 3, 5, 7, 9 and 11 are bad (line 1 is the header, so row N is line N)
    with LEADS_WITH_ERRORS_CSV.open(newline="", encoding="utf-8") as handle:
        email_at_row = {n: row["email"] for n, row in enumerate(csv.DictReader(handle), start=2)}
    bad_rows = [3, 5, 7, 9, 11]
    # When it is imported with --rejects
    result = ok(cli("leads", "import", LEADS_WITH_ERRORS_CSV, "--rejects", "rejects.csv"))
    # Then the good rows go in, each bad row is reported on stderr with its number...
    total = len(email_at_row)
    assert f"imported {total} row(s): {total - len(bad_rows)} new, 0 updated, 5 rejected" in result.stdout
    reported = [int(m) for m in re.findall(r"^row (\d+): \S", result.stderr, flags=re.MULTILINE)]
    assert reported == bad_rows
    # ...and the rejects file holds exactly those rows, with the email found at that row of the input
    with (cli.cwd / "rejects.csv").open(newline="", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert [(int(r["row"]), r["email"]) for r in rejects] == [(n, email_at_row[n]) for n in bad_rows]
    assert all(r["reason"] for r in rejects)


def test_leads_import_strict_exits_1_when_any_row_was_rejected_yet_the_good_rows_go_in(cli: Cli) -> None:
    result = cli("leads", "import", LEADS_WITH_ERRORS_CSV, "--strict")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"imported \d+ row\(s\): 7 new, 0 updated, 5 rejected", result.stdout)


def test_leads_import_of_a_missing_file_fails_with_a_one_line_reason(cli: Cli) -> None:
    line = one_line_error(cli("leads", "import", "no-such-file.csv"))
    assert "no-such-file.csv" in line


def test_leads_import_of_a_file_without_an_email_column_fails_with_a_one_line_reason(cli: Cli) -> None:
    (cli.cwd / "contacts.csv").write_text("name,company\nMei Lin,Kaohsiung Port\n", encoding="utf-8")
    line = one_line_error(cli("leads", "import", "contacts.csv"))
    assert "contacts.csv" in line
    assert "email" in line


def test_leads_import_of_a_latin1_file_fails_with_a_one_line_reason_and_no_traceback(cli: Cli) -> None:
    (cli.cwd / "latin1.csv").write_bytes("email,first_name\njurgen@example.com,Jürgen\n".encode("latin-1"))
    line = one_line_error(cli("leads", "import", "latin1.csv"))
    assert "latin1.csv" in line
    assert "UTF-8" in line


def test_leads_import_names_the_line_of_a_non_utf8_byte_deep_in_the_file(cli: Cli) -> None:
    # Given 3000 good UTF-8 rows and then one latin-1 row, on line 3002 of the file
    rows = [
        "email,first_name",
        *(f"lead{i}@example.com,Lead" for i in range(3000)),
        "jurgen@example.com,Jürgen",
    ]
    (cli.cwd / "deep.csv").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    # When it is imported, then the reason points at that line
    line = one_line_error(cli("leads", "import", "deep.csv"))
    assert re.search(r"\b3002\b", line), line


# -- tick ----------------------------------------------------------------------------------------------------


def test_tick_sends_each_due_step_once_as_an_eml_file_with_the_contract_headers(cli: Cli) -> None:
    # Given the 300 sample leads
    ok(cli("leads", "import", LEADS_CSV))
    # When one pass runs on Monday at 10:00 in Taipei
    first = tick(cli, MONDAY_TAIPEI_10)
    # Then leads are enrolled and every dispatched delivery is one .eml file in the outbox
    sent_first = outbox_files(cli.outbox)
    assert first["enrolled"] > 0
    assert first["sent"] > 0
    assert len(sent_first) == first["sent"]
    assert first["sent"] + first["deferred"] + first["skipped"] + first["failed"] == first["dispatched"]
    steps = step_ids_by_campaign()
    for name in sent_first:
        message = read_eml(cli.outbox / name)
        assert message["X-Nurture-Step"] in steps[message["X-Nurture-Campaign"]], name
        assert message["List-Unsubscribe"].startswith("<http"), name
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click", name

    # When the same pass runs again, then nothing is sent or rewritten
    again = tick(cli, MONDAY_TAIPEI_10)
    assert again["dispatched"] == 0
    assert outbox_files(cli.outbox) == sent_first

    # When a pass runs two days later
    tick(cli, WEDNESDAY_TAIPEI_10)
    # Then more mail goes out, Monday's files are left alone, and no lead has any step twice
    sent_later = outbox_files(cli.outbox)
    assert len(sent_later) > len(sent_first)
    assert {name: sent_later[name] for name in sent_first} == sent_first
    keys = []
    for name in sent_later:
        message = read_eml(cli.outbox / name)
        recipient = message["To"].addresses[0].addr_spec.lower()
        keys.append((recipient, message["X-Nurture-Campaign"], message["X-Nurture-Step"]))
    assert len(keys) == len(set(keys)), "a lead got the same step twice"


def test_tick_with_a_now_that_is_not_iso8601_fails_with_a_one_line_reason(cli: Cli) -> None:
    line = one_line_error(cli("tick", "--now", "next tuesday", "--drain"))
    assert "--now" in line
    assert "next tuesday" in line


# -- validate ------------------------------------------------------------------------------------------------


def test_validate_accepts_the_project_files_with_an_ok_line(cli: Cli) -> None:
    result = ok(cli("validate"))
    campaigns = len(list((REPO / "campaigns").glob("*.yaml")))
    assert result.stdout.startswith(f"ok: {campaigns} campaign(s), ")


def test_validate_reports_every_problem_in_every_campaign_as_file_line_message_at_once(
    cli: Cli, tmp_path: Path
) -> None:
    # Given a copy of the project with three problems in two campaigns
    project = project_copy(tmp_path / "project")
    saas = project / "campaigns" / "saas-nurture.yaml"
    webinar = project / "campaigns" / "webinar-followup.yaml"
    inject(saas, "\npriority: 10\n", "\npriority: 10\ncolour: blue\n")
    inject(saas, "  - id: case-study\n    day: 5\n", "  - id: case-study\n    day: 1 # out of order\n")
    inject(webinar, "webinar-followup/templates.html.j2", "webinar-followup/no-such-template.html.j2")
    expected = {
        ("saas-nurture.yaml", line_of(saas, "colour: blue")),
        ("saas-nurture.yaml", line_of(saas, "# out of order")),
        ("webinar-followup.yaml", line_of(webinar, "no-such-template.html.j2")),
    }
    # When that folder is validated (its own campaigns/, templates/ and reps.yaml)
    validate = cli.with_env(NURTURE_CAMPAIGNS_DIR=None, NURTURE_TEMPLATES_DIR=None, NURTURE_REPS_FILE=None)
    result = validate("validate", project)
    # Then it fails with one file:line: message per problem, all of them in one run
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    found = problems(result.stderr)
    assert {(Path(m["file"]).name, int(m["line"])) for m in found} == expected
    messages = " | ".join(m["message"] for m in found)
    assert "colour" in messages
    assert "day" in messages
    assert "no-such-template.html.j2" in messages
    assert result.stderr.rstrip().endswith("error: 3 problem(s) found")


def test_validate_reports_a_missing_template_even_when_its_campaign_has_other_errors(
    cli: Cli, tmp_path: Path
) -> None:
    # Given one campaign with an unknown key and a step whose template does not exist
    project = project_copy(tmp_path / "project")
    saas = project / "campaigns" / "saas-nurture.yaml"
    inject(saas, "\npriority: 10\n", "\npriority: 10\ncolour: blue\n")
    inject(saas, "saas-nurture/objections.html.j2", "saas-nurture/no-such-template.html.j2")
    missing_at = line_of(saas, "no-such-template.html.j2")
    # When the folder is validated, then both problems are reported in the same run
    validate = cli.with_env(NURTURE_CAMPAIGNS_DIR=None, NURTURE_TEMPLATES_DIR=None, NURTURE_REPS_FILE=None)
    result = validate("validate", project)
    assert result.returncode == 1, result.stderr
    lines = {(Path(m["file"]).name, int(m["line"])) for m in problems(result.stderr)}
    assert ("saas-nurture.yaml", missing_at) in lines


def test_validate_checks_the_given_folder_even_when_the_environment_names_absolute_folders(
    cli: Cli, tmp_path: Path
) -> None:
    # Given a broken copy of the project, and NURTURE_CAMPAIGNS_DIR etc. naming the repository's folders
    project = project_copy(tmp_path / "project")
    inject(project / "campaigns" / "saas-nurture.yaml", "\npriority: 10\n", "\npriority: 10\ncolour: blue\n")
    # When the copy is validated, then its problem is found rather than the repository's files passing
    result = cli("validate", project)
    assert result.returncode == 1, result.stdout


# -- db upgrade on PostgreSQL --------------------------------------------------------------------------------


def test_db_upgrade_on_an_up_to_date_postgresql_database_is_idempotent(cli: Cli, pg_url: str) -> None:
    result = ok(cli.with_env(NURTURE_DATABASE_URL=pg_url, NURTURE_SECRET_KEY=SECRET_KEY)("db", "upgrade"))
    assert "up to date" in result.stdout


@pytest.mark.parametrize("secret", [None, "too-short"], ids=["missing", "short"])
def test_db_upgrade_on_postgresql_without_a_real_secret_key_fails_naming_the_variable(
    cli: Cli, secret: str | None
) -> None:
    # The settings refuse before any connection, so no server is needed at this address.
    scaled_out = cli.with_env(
        NURTURE_DATABASE_URL="postgresql://nurture@127.0.0.1:1/nurture", NURTURE_SECRET_KEY=secret
    )
    line = one_line_error(scaled_out("db", "upgrade"))
    assert "NURTURE_SECRET_KEY" in line


ONLY_THE_DATABASE = {"NURTURE_DATABASE_URL": "postgresql://u:db-pass-4711@h/d"}
DATABASE_AND_SHORT_SECRET = {**ONLY_THE_DATABASE, "NURTURE_SECRET_KEY": "short-4711"}


@pytest.mark.parametrize(
    "settings", [ONLY_THE_DATABASE, DATABASE_AND_SHORT_SECRET], ids=["database-url", "short-secret"]
)
def test_db_upgrade_settings_error_does_not_echo_the_database_password_or_the_secret(
    cli: Cli, settings: dict[str, str]
) -> None:
    # Given an operator's environment that sets only these (pydantic shortens a longer input to its two ends)
    scaled_out = cli.with_env(
        NURTURE_CAMPAIGNS_DIR=None,
        NURTURE_TEMPLATES_DIR=None,
        NURTURE_REPS_FILE=None,
        NURTURE_DATA_DIR=None,
        **settings,
    )
    # When the settings are refused, then the reason names the variable and echoes no secret
    line = one_line_error(scaled_out("db", "upgrade"))
    assert "NURTURE_SECRET_KEY" in line
    assert "4711" not in line


def test_db_upgrade_against_an_unreachable_database_fails_with_a_one_line_reason(cli: Cli) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    scaled_out = cli.with_env(
        NURTURE_DATABASE_URL="postgresql://nurture@127.0.0.1:1/nurture", NURTURE_SECRET_KEY=SECRET_KEY
    )
    line = one_line_error(scaled_out("db", "upgrade"))
    assert "cannot connect to postgresql+asyncpg://nurture@127.0.0.1:1/nurture" in line


# -- scheduler and worker need Redis -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["scheduler", "worker"])
def test_scaled_out_process_without_redis_fails_with_a_one_line_reason(cli: Cli, command: str) -> None:
    # Without the check it would serve until killed: the subprocess timeout turns that into a failure.
    line = one_line_error(cli(command, timeout=30))
    assert "NURTURE_REDIS_URL" in line


# -- leads import: files that are not clean CSV ------------------------------------------------------------


def stored_leads(cli: Cli) -> dict[str, str | None]:
    """email -> first_name of every lead in the embedded database."""
    with sqlite3.connect(cli.cwd / "var" / "nurture.db") as conn:
        return dict(conn.execute("SELECT email, first_name FROM leads").fetchall())


GOOD = "good@example.com,Good\n"
ROW_CASES = {
    # the defect report's file: the quote on line 2 is never closed
    "unterminated quote": (
        'email,first_name\nmei@example.com,"unterminated\nnext@example.com,x\n',
        [(2, "line 2: a quote opened on line 2 is never closed")],
        {"next@example.com": "x"},
    ),
    "stray quote": (
        f'email,first_name\nbob@example.com,"Bobby" Smith\n{GOOD}',
        [(2, "line 2: stray quote")],
        {"good@example.com": "Good"},
    ),
    "too many fields": (
        f"email,first_name\nbob@example.com,Bob,Acme,CEO\n{GOOD}",
        [(2, "line 2: has 4 fields, the header has 2")],
        {"good@example.com": "Good"},
    ),
    "too few fields": (
        "email,first_name,company\nbob@example.com\ngood@example.com,Good,Acme\n",
        [(2, "line 2: has 1 fields, the header has 3")],
        {"good@example.com": "Good"},
    ),
    "NUL byte": (
        f"email,first_name\n{GOOD}bob@example.com,B\0b\n",
        [(3, "line 3: contains a NUL byte")],
        {"good@example.com": "Good"},
    ),
    "multi-line value": (
        'email,first_name,company\nmei@example.com,Mei,"Kaohsiung\nPort"\ngood@example.com,Good,Acme\n',
        [],
        {"mei@example.com": "Mei", "good@example.com": "Good"},
    ),
}


@pytest.mark.parametrize(("text", "rejected", "stored"), ROW_CASES.values(), ids=ROW_CASES.keys())
def test_leads_import_rejects_a_malformed_row_with_its_line_and_takes_the_good_rows(
    cli: Cli, text: str, rejected: list[tuple[int, str]], stored: dict[str, str]
) -> None:
    (cli.cwd / "in.csv").write_bytes(text.encode("utf-8"))
    # When the file is imported with --rejects
    result = ok(cli("leads", "import", "in.csv", "--rejects", "rejects.csv"))
    # Then each bad row is on stderr and in the rejects file with its row, line and reason...
    with (cli.cwd / "rejects.csv").open(newline="", encoding="utf-8") as handle:
        rejects = [(int(r["row"]), r["reason"]) for r in csv.DictReader(handle)]
    assert len(rejects) == len(rejected)
    for (row, reason), (want_row, want_reason) in zip(rejects, rejected, strict=True):
        assert row == want_row
        assert reason.startswith(want_reason), reason
        assert f"row {row}: {reason}" in result.stderr
    assert f"{len(stored)} new, 0 updated, {len(rejected)} rejected" in result.stdout
    # ...and exactly the good rows went in, with their own values
    assert stored_leads(cli) == stored


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (b"email;first_name\ngood@example.com;Good\n", "read as semicolon-separated"),
        (b"email\tfirst_name\ngood@example.com\tGood\n", "read as tab-separated"),
        ("email\tfirst_name\ngood@example.com\tGood\n".encode("utf-16"), "decoded as UTF-16"),
    ],
    ids=["semicolon", "tab", "utf-16"],
)
def test_leads_import_reads_a_semicolon_tab_or_utf16_file_and_says_how(
    cli: Cli, content: bytes, note: str
) -> None:
    (cli.cwd / "in.csv").write_bytes(content)
    result = ok(cli("leads", "import", "in.csv"))
    assert f"note: in.csv: {note}" in result.stderr
    assert "1 new, 0 updated, 0 rejected" in result.stdout
    assert stored_leads(cli) == {"good@example.com": "Good"}


def test_leads_import_reads_utf8_with_a_bom(cli: Cli) -> None:
    (cli.cwd / "in.csv").write_bytes(b"\xef\xbb\xbf" + GOOD.join(["email,first_name\n", ""]).encode())
    ok(cli("leads", "import", "in.csv"))
    assert stored_leads(cli) == {"good@example.com": "Good"}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "in.csv: the file is empty: no header row; nothing imported"),
        (
            f"email,first_name,Email\n{GOOD}".encode(),
            "in.csv:1: column `Email` appears twice in the header (columns 1 and 3); nothing imported",
        ),
        (
            f"email,,company\n{GOOD}".encode(),
            "in.csv:1: column 2 of the header has no name; nothing imported",
        ),
        (
            "email,first_name\n".encode("utf-16-le"),
            "in.csv:1: the header contains NUL bytes (a UTF-16 file without a byte-order mark?)",
        ),
    ],
    ids=["empty", "duplicate column", "empty column name", "utf-16 without bom"],
)
def test_leads_import_refuses_a_file_it_cannot_read_as_a_whole_with_one_line(
    cli: Cli, content: bytes, reason: str
) -> None:
    (cli.cwd / "in.csv").write_bytes(content)
    line = one_line_error(cli("leads", "import", "in.csv"))
    assert line.startswith(f"error: {reason}"), line
    assert not (cli.cwd / "var" / "nurture.db").exists() or stored_leads(cli) == {}


def test_leads_import_of_a_folder_fails_with_a_one_line_reason(cli: Cli) -> None:
    (cli.cwd / "exports").mkdir()
    assert one_line_error(cli("leads", "import", "exports")) == "error: exports: is a folder, not a CSV file"
