"""`python -m nurture` as a user runs it, for the attack tests that go through the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.project import PROJECT


def nurture(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run one command in `cwd` on its own embedded database (cwd/var), with extra NURTURE_* `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_") and k != "FORCE_COLOR"}
    clean.update(
        NURTURE_CAMPAIGNS_DIR=str(PROJECT / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(PROJECT / "templates"),
        NURTURE_REPS_FILE=str(PROJECT / "reps.yaml"),
        NURTURE_SCORING_FILE=str(PROJECT / "scoring.yaml"),
        NURTURE_DATA_DIR=str(cwd / "var"),
        NURTURE_LOG_LEVEL="WARNING",
        PYTHONIOENCODING="utf-8",
        COLUMNS="200",
        NO_COLOR="1",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "nurture", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
