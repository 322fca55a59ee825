"""The `nurture` command run as a real subprocess, as an operator or a cron job runs it (DESIGN.md §7).

`Cli.in_folder(folder)` runs `python -m nurture` in `folder`, on its own embedded database (folder/var), on
the tests' own project files (tests/project.py) passed as absolute `NURTURE_*` paths, with every other
`NURTURE_*` of the caller's environment dropped. The `cli` fixture (tests/conftest.py) is one in tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.project import PROJECT

TIMEOUT_S = 120
FILE_LINE_MESSAGE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<message>\S.*)$")


def nurture_env(data_dir: Path, /, **names: str) -> dict[str, str]:
    """The caller's environment without its `NURTURE_*` (and FORCE_COLOR), plus the campaigns, templates,
    reps and scoring files of the tests' project (tests/project.py), `data_dir`, plain UTF-8 output 200
    columns wide, and `names` (full names, e.g. `NURTURE_LOG_LEVEL="WARNING"`, `COLUMNS="80"`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_") and k != "FORCE_COLOR"}
    env.update(
        NURTURE_CAMPAIGNS_DIR=str(PROJECT / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(PROJECT / "templates"),
        NURTURE_REPS_FILE=str(PROJECT / "reps.yaml"),
        NURTURE_SCORING_FILE=str(PROJECT / "scoring.yaml"),
        NURTURE_DATA_DIR=str(data_dir),
        PYTHONIOENCODING="utf-8",
        COLUMNS="200",  # no line of output is wrapped
        NO_COLOR="1",
    )
    env.update(names)
    return env


@dataclass(frozen=True)
class Cli:
    """Runs `python -m nurture` in `cwd` with `env`; `with_env` derives a variant (None removes a name)."""

    cwd: Path
    env: Mapping[str, str] = field(repr=False)

    @classmethod
    def in_folder(cls, folder: Path, **names: str) -> Cli:
        """Commands run in `folder`, on the database in folder/var and the tests' project (`nurture_env`)."""
        return cls(folder, nurture_env(folder / "var", **names))

    def __call__(
        self, *args: str | Path, timeout: float = TIMEOUT_S, **run: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run one command and wait for it; `run` goes to `subprocess.run` (e.g. `preexec_fn`)."""
        return subprocess.run(
            [sys.executable, "-m", "nurture", *map(str, args)],
            cwd=self.cwd,
            env=dict(self.env),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
            check=False,
            **run,
        )

    def with_env(self, **changes: str | None) -> Cli:
        env = dict(self.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return Cli(self.cwd, env)

    @property
    def outbox(self) -> Path:
        return self.cwd / "var" / "outbox"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert the command exited 0 (showing its output if not); return it."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed with exit status 1 and exactly one `error:` line on stderr; return it."""
    assert result.returncode == 1, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line of reason, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def tick(cli: Cli, now: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(cli("tick", "--now", now, "--drain", "--format", "json")).stdout)
    return data


def line_of(path: Path, needle: str) -> int:
    """The 1-based number of the one line of `path` that contains `needle`."""
    numbers = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    assert len(numbers) == 1, f"{needle!r} is on lines {numbers} of {path}"
    return numbers[0]


def problems(stderr: str) -> list[re.Match[str]]:
    """The `file:line: message` lines of a failed `validate`, after asserting the stderr has nothing else."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no problems reported"
    assert re.fullmatch(r"error: \d+ problem\(s\) found", lines[-1]), lines[-1]
    matches = [FILE_LINE_MESSAGE.match(line) for line in lines[:-1]]
    assert all(matches), f"not every line is file:line: message:\n{stderr}"
    return [m for m in matches if m is not None]
