"""No test reads the checkout's live campaigns/, templates/, scoring.yaml or reps.yaml: a campaign being
written there (half-done, or broken) must not break `make test`. Tests use tests/project.py."""

from __future__ import annotations

import re

from tests.project import CHECKOUT, PROJECT

TESTS = CHECKOUT / "tests"
# Finding the checkout from a test module's own path: only tests/project.py may do that.
LOCATES_CHECKOUT = re.compile(r"Path\(__file__\)[^\n]*\.parents?\b")
PROJECT_FILES = re.compile(r"campaigns|templates|scoring\.yaml|reps\.yaml|examples")


def _modules() -> dict[str, str]:
    return {
        str(path.relative_to(TESTS)): path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("*.py"))
        if path != TESTS / "project.py" and PROJECT not in path.parents
    }


def test_only_the_project_helper_finds_the_checkout_from_a_test_module() -> None:
    offenders = [name for name, text in _modules().items() if LOCATES_CHECKOUT.search(text)]
    assert offenders == [], f"use tests.project (PROJECT, project_copy, CHECKOUT) in: {offenders}"


def test_no_test_module_reads_project_files_from_the_checkout() -> None:
    offenders = [
        f"{name}:{number}: {line.strip()}"
        for name, text in _modules().items()
        for number, line in enumerate(text.splitlines(), 1)
        if "CHECKOUT" in line and PROJECT_FILES.search(line)
    ]
    assert offenders == [], "use tests.project.PROJECT instead:\n" + "\n".join(offenders)


def test_the_tests_project_folder_holds_a_whole_project() -> None:
    for name in ("campaigns", "campaigns/tests", "templates", "examples"):
        assert (PROJECT / name).is_dir(), name
    for name in ("scoring.yaml", "reps.yaml", "README.md"):
        assert (PROJECT / name).is_file(), name
    assert list((PROJECT / "campaigns").glob("*.yaml")), "no campaign in the tests' project"
