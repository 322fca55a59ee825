"""The README's transcripts run as a reader runs them, and must print what the README shows: every `$ ` line
of the tutorial ("From a new campaign to production"), in order, in a fresh copy of examples/tutorial, and
the `nurture tick` transcript of "Commands" on the tests' copy of the shipped project."""

from __future__ import annotations

import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.project import README, TUTORIAL, project_copy
from tests.readme_transcripts import blocks, command_env, run_section, transcripts

SECTION = "From a new campaign to production"
# How many blocks of the tutorial run, and which do not (with the reason the README shows), so a collector
# that silently finds fewer fails here.
RAN = 6
NOT_RUN = ["needs an SMTP server listening on 127.0.0.1:2526"]
NURTURE_COMMANDS_RUN = 6
# The files the README shows in full, by their first line.
SHOWN_FILES = {
    "id: trial-nudge": "campaigns/trial-nudge.yaml",
    "campaign: trial-nudge": "campaigns/tests/trial-nudge.yaml",
}


def _ignored() -> list[str]:
    """What following the tutorial leaves in its folder (its .gitignore), never copied into a test."""
    lines = (TUTORIAL / ".gitignore").read_text(encoding="utf-8").splitlines()
    return [line.rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _tutorial_copy(target: Path) -> Path:
    shutil.copytree(TUTORIAL, target, ignore=shutil.ignore_patterns(*_ignored()))
    return target


def _files(folder: Path) -> dict[str, bytes]:
    """The files of `folder`, but for the ones .gitignore names."""
    patterns = _ignored()
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and not any(fnmatch(part, pattern) for part in path.relative_to(folder).parts for pattern in patterns)
    }


def _env() -> dict[str, str]:
    """The commands find `nurture` as the reader does with the virtual environment active."""
    return command_env(Path(sys.executable).parent)


@pytest.mark.slow
def test_every_tutorial_transcript_prints_what_the_readme_shows(tmp_path: Path) -> None:
    folder = _tutorial_copy(tmp_path / "tutorial")
    before = _files(folder)

    outcome = run_section(transcripts(README.read_text(encoding="utf-8")), SECTION, folder, _env())

    assert outcome.failures == [], "\n\n".join(outcome.failures)
    assert len(outcome.ran) == RAN
    assert [transcript.not_run for transcript in outcome.not_run] == NOT_RUN
    run = [c.command for t in outcome.ran for c in t.commands if c.command.startswith("nurture ")]
    assert len(run) == NURTURE_COMMANDS_RUN, run
    # The tutorial puts back what it edits: all it leaves beside the shipped files is what .gitignore names.
    assert _files(folder) == before


def test_a_changed_output_line_in_the_readme_fails_the_run(tmp_path: Path) -> None:
    readme = README.read_text(encoding="utf-8")
    shown = "    2 passed, 0 failed\n"
    assert readme.count(shown) == 1
    changed = readme.replace(shown, "    3 passed, 0 failed\n")
    folder = _tutorial_copy(tmp_path / "tutorial")
    only_the_test_run = [
        t for t in transcripts(changed) if t.section == SECTION and t.commands[0].command == "nurture test"
    ]
    assert len(only_the_test_run) == 1

    outcome = run_section(only_the_test_run, SECTION, folder, _env())

    assert len(outcome.failures) == 1
    assert "-3 passed, 0 failed" in outcome.failures[0]
    assert "+2 passed, 0 failed" in outcome.failures[0]
    assert "README.md:" in outcome.failures[0]


def test_the_files_the_tutorial_shows_are_the_shipped_ones() -> None:
    shown = {
        block.content.splitlines()[0]: block.content
        for block in blocks(README.read_text(encoding="utf-8"))
        if block.section == SECTION and block.info == "yaml"
    }
    assert sorted(shown) == sorted(SHOWN_FILES)
    for first_line, name in SHOWN_FILES.items():
        assert shown[first_line] == (TUTORIAL / name).read_text(encoding="utf-8"), name


@pytest.mark.slow
def test_the_tick_transcript_prints_what_the_readme_shows(tmp_path: Path) -> None:
    folder = project_copy(tmp_path / "project")
    env = _env() | {"NURTURE_DATA_DIR": "var/tick-example"}  # as the README has the reader export it

    outcome = run_section(transcripts(README.read_text(encoding="utf-8")), "Commands", folder, env)

    assert outcome.failures == [], "\n\n".join(outcome.failures)
    assert [len(transcript.commands) for transcript in outcome.ran] == [4]
    assert outcome.not_run == []


@pytest.mark.parametrize(
    ("section", "ran", "not_run"),
    [
        (
            "Campaigns",
            ["nurture validate templates"],
            [
                "it needs a saas-nurture.yaml with these three mistakes, which is not shipped",
                "it needs a database of leads enrolled in the earlier version, and that edit",
            ],
        ),
        (
            "Reports and the dashboard",
            ["nurture report --since yesterday"],
            ["it needs the 2,000-lead history that bench/dashboard.py makes"],
        ),
    ],
)
def test_the_reference_transcripts_print_what_the_readme_shows(
    tmp_path: Path, section: str, ran: list[str], not_run: list[str]
) -> None:
    folder = project_copy(tmp_path / "project")

    outcome = run_section(transcripts(README.read_text(encoding="utf-8")), section, folder, _env())

    assert outcome.failures == [], "\n\n".join(outcome.failures)
    assert [t.commands[0].command for t in outcome.ran] == ran
    assert [t.not_run for t in outcome.not_run] == not_run


# Sections whose transcripts are not run yet: each needs a project state that no shipped file holds (a
# populated database, a web server), so each is listed here rather than skipped unseen.
NOT_RUN_YET = {"Compliance"}
RUN = {SECTION, "Commands", "Campaigns", "Reports and the dashboard"}


def test_every_section_with_transcripts_is_either_run_or_listed_as_not_run_yet() -> None:
    sections = {transcript.section for transcript in transcripts(README.read_text(encoding="utf-8"))}

    assert sections == RUN | NOT_RUN_YET
