"""The one place tests find project files: their own frozen project folder, and the checkout.

`PROJECT` (tests/fixtures/project) holds the tests' copy of campaigns/, templates/, scoring.yaml, reps.yaml
and examples/, so a campaign being written in the checkout (half-done, or broken on purpose) changes no
test. `make test-project` refreshes the copy from the checkout. The shipped campaigns are checked on their
own by `make check-campaigns` (`nurture validate` and `nurture test`). `CHECKOUT` is for tests of
deployment files (Dockerfile, compose) only; tests/unit/test_test_isolation.py keeps it that way.

`README` and `TUTORIAL` (examples/tutorial, the self-contained project folder of the README's tutorial) are
read together by the test that runs the README's transcripts: they are documentation, and must agree.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

PROJECT: Final = Path(__file__).resolve().parent / "fixtures" / "project"
CHECKOUT: Final = Path(__file__).resolve().parents[1]
README: Final = CHECKOUT / "README.md"
TUTORIAL: Final = CHECKOUT / "examples" / "tutorial"


def project_copy(target: Path) -> Path:
    """Copy the tests' project folder to `target` (created) for a test that edits it; return `target`."""
    shutil.copytree(PROJECT, target, ignore=shutil.ignore_patterns("README.md"), dirs_exist_ok=True)
    return target
