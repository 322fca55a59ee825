"""`nurture lead erase`: personal data gone, the address unsendable, JSON output, a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nurture.core.privacy import address_hash
from tests.harness.cli import Cli
from tests.project import PROJECT

pytestmark = pytest.mark.integration
ROOT = PROJECT  # the tests' own project files (tests/project.py)


@pytest.mark.slow  # five command runs, each starting Python
def test_erase_then_reimport_leaves_a_suppressed_lead_without_the_old_data(tmp_path: Path, cli: Cli) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text("email,first_name,company,grade\nmei@example.com,Mei,Example Logistics,nurturable\n")
    assert cli("leads", "import", str(csv)).returncode == 0

    erased = cli("lead", "erase", "Mei@Example.com", "--format", "json")
    again = cli("leads", "import", str(csv))
    shown = cli("lead", "show", "mei@example.com", "--format", "json")
    garbage = cli("lead", "erase", "not an address")

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
