"""`nurture lead erase`: personal data gone, the address unsendable, JSON output, a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nurture.core.privacy import address_hash
from tests.project import PROJECT

pytestmark = pytest.mark.integration
ROOT = PROJECT  # the tests' own project files (tests/project.py)


def _nurture(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATA_DIR=str(tmp_path / "var"),
        NURTURE_CAMPAIGNS_DIR=str(ROOT / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(ROOT / "templates"),
        NURTURE_REPS_FILE=str(ROOT / "reps.yaml"),
        NURTURE_LOG_LEVEL="WARNING",
    )
    return subprocess.run(
        [sys.executable, "-m", "nurture", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow  # five command runs, each starting Python
def test_erase_then_reimport_leaves_a_suppressed_lead_without_the_old_data(tmp_path: Path) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text("email,first_name,company,grade\nmei@example.com,Mei,Example Logistics,nurturable\n")
    assert _nurture(tmp_path, "leads", "import", str(csv)).returncode == 0

    erased = _nurture(tmp_path, "lead", "erase", "Mei@Example.com", "--format", "json")
    again = _nurture(tmp_path, "leads", "import", str(csv))
    shown = _nurture(tmp_path, "lead", "show", "mei@example.com", "--format", "json")
    garbage = _nurture(tmp_path, "lead", "erase", "not an address")

    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout)["lead_id"] == 1
    assert json.loads(erased.stdout)["address_hash"] == address_hash("mei@example.com")
    assert again.returncode == 0
    lead = json.loads(shown.stdout)
    assert (lead["id"], lead["suppressed"], lead["suppressed_reason"]) == (2, True, "erased")
    assert garbage.returncode == 1
    assert garbage.stderr.strip().splitlines() == [
        "error: 'not an address' is not an email address: An email address must have an @-sign."
    ]
