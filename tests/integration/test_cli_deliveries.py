"""`nurture deliveries unknown|resolve` run as a real subprocess on the embedded SQLite database."""

from __future__ import annotations

import email
import json
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any

import pytest

from nurture.clock import FileClock
from tests.harness.cli import Cli

pytestmark = pytest.mark.integration

MONDAY_TAIPEI_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # inside the welcome's send window
LEAD_CSV = "email,first_name,grade,timezone\nmei@example.com,Mei,nurturable,Asia/Taipei\n"


class Nurture:
    """`python -m nurture` in a folder of its own, on the tests' project files and a clock file."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.clock = folder, folder / "now.txt"
        self.cli = Cli.in_folder(folder, NURTURE_CLOCK_FILE=str(self.clock), NURTURE_LOG_LEVEL="WARNING")

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, timeout=60)

    def ok(self, *args: str) -> Any:
        result = self(*args, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def refused(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 1, result.stdout
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        return line

    def outbox(self) -> dict[str, int]:
        """Each .eml by Message-ID, with its inode: a message written again gets a new one."""
        found = {}
        for path in (self.folder / "var" / "outbox").glob("*.eml"):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            found[str(message["Message-ID"])] = path.stat().st_ino
        return found

    def kill_worker_mid_send(self) -> int:
        """What a worker killed inside an SMTP conversation leaves: the next touch stuck in `sending`."""
        with sqlite3.connect(self.folder / "var" / "nurture.db") as conn:
            (delivery_id,) = conn.execute(
                "SELECT min(id) FROM deliveries WHERE status = 'pending'"
            ).fetchone()
            conn.execute(
                "UPDATE deliveries SET status = 'sending', attempts = 1, "
                "sending_at = (SELECT sent_at FROM deliveries WHERE status = 'sent') WHERE id = ?",
                (delivery_id,),
            )
        return int(delivery_id)


@pytest.mark.slow  # a dozen command runs, each starting Python
def test_an_unknown_delivery_is_listed_resolved_once_as_resend_and_sent_exactly_once(tmp_path: Path) -> None:
    # Given a lead whose welcome went out, and whose next touch a killed worker left mid-send
    nurture = Nurture(tmp_path)
    (tmp_path / "leads.csv").write_text(LEAD_CSV, encoding="utf-8")
    FileClock.write(nurture.clock, MONDAY_TAIPEI_10)
    nurture.ok("leads", "import", "leads.csv")
    nurture.ok("tick", "--drain")
    [welcome_id] = nurture.outbox()
    stuck = nurture.kill_worker_mid_send()
    FileClock.write(nurture.clock, MONDAY_TAIPEI_10 + timedelta(hours=1))
    assert nurture.ok("tick", "--drain")["unknown"] == 1

    # When the operator lists unknown deliveries
    [listed] = nurture.ok("deliveries", "unknown")["unknown"]
    # Then it is there with what is known of its conversation
    assert (listed["id"], listed["email"]) == (stuck, "mei@example.com")
    assert listed["server_said"] == "worker stopped during the SMTP conversation"
    assert nurture("deliveries", "unknown").stdout.startswith("1 delivery(ies) with an unknown outcome:")

    # When it is resolved as resend, then a second resolve is refused before anything is sent
    done = nurture.ok("deliveries", "resolve", str(stuck), "--as", "resend", "--reason", "not in relay log")
    assert (done["resolved"], done["as"], done["reason"]) == ([stuck], "resend", "not in relay log")
    assert nurture.refused("deliveries", "resolve", str(stuck), "--as", "resend") == (
        f"error: delivery {stuck} is pending, not unknown: nothing to resolve"
    )

    # When dispatch runs twice
    nurture.ok("tick", "--drain")
    once = nurture.outbox()
    nurture.ok("tick", "--drain")
    # Then it was sent exactly once (one new file, never written again) and nothing is unknown any more
    assert len(once) == 2
    [resent_id] = set(once) - {welcome_id}
    assert resent_id.startswith(f"<d{stuck}.")
    assert nurture.outbox() == once
    assert nurture.ok("deliveries", "unknown") == {"unknown": []}
    assert nurture("deliveries", "unknown").stdout.strip() == "no delivery has an unknown outcome"
    # ...and resolving it now, or the welcome, is refused in one line
    assert nurture.refused("deliveries", "resolve", str(stuck), "--as", "sent") == (
        f"error: delivery {stuck} is sent, not unknown: nothing to resolve"
    )
    assert nurture.refused("deliveries", "resolve", "1", "--as", "sent").endswith(
        "is sent, not unknown: nothing to resolve"
    )
    assert nurture.ok("deliveries", "resolve", "--all", "--as", "sent")["resolved"] == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["1"], "error: --as sent|resend is required"),
        (["--as", "sent"], "error: give one delivery ID or --all"),
        (["1", "--all", "--as", "sent"], "error: give one delivery ID or --all"),
        (["99", "--as", "resend"], "error: no delivery 99"),
    ],
)
def test_resolve_without_what_it_needs_fails_with_a_one_line_reason(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    nurture = Nurture(tmp_path)
    FileClock.write(nurture.clock, MONDAY_TAIPEI_10)
    assert nurture.refused("deliveries", "resolve", *args) == reason
