"""Every command, run as a real subprocess, against a bad database URL, an unreachable PostgreSQL and an
unreachable Redis: each ends with one line on stderr and a non-zero status, never a traceback or a hang.

The commands are read from the typer app itself, so a new command is covered without touching this file;
its required arguments get values by name from `VALUES` (a new argument name fails here until it has one).
Commands that need neither service for what they were asked (`validate`, `preview`, ...) may succeed, and
then must still show no traceback. The subprocesses of one scenario run in parallel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main

from nurture.cli import app
from tests import services
from tests.harness.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT_S = 45  # a service that waits for the unreachable one instead of failing fast ends here, as a failure
PARALLEL = 6
SECRET_KEY = "cli-errors-secret-key-0123456789"
CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1: a connection is refused at once
CAMPAIGN = """\
id: mini
name: Mini
sender: {from: "Acme <growth@acme.example>", postal_address: "Acme, 1 Main St, Springfield"}
steps:
  - {id: hello, day: 0, subject: "Hello", template: mini/mail.html.j2}
"""
TEMPLATE = '<p>Hi. {{ postal_address }} <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
# A value for every required argument or option, by parameter name.
VALUES = {
    "campaign": "mini",
    "step": "hello",
    "file": "leads.csv",
    "email": "ada@example.com",
    "to": "ada@example.com",
    "lead": "ada@example.com",
    "url": "https://acme.example/proposal",
    "name": "crm-sync",
    "prefix": "0123abcd",
    "api_key": "0123abcd",
}
# Commands that use neither the database nor Redis for their minimal arguments: they may succeed.
NEEDS_NEITHER = {"validate", "preview", "simulate", "test", "test-send"}
# Commands that need Redis (the broker) with their minimal arguments; the others may succeed without it.
NEEDS_REDIS = {"run", "scheduler", "worker", "web", "tick"}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def commands() -> Iterator[tuple[str, ...]]:
    """Every leaf command of the app, as its words (`("leads", "import")`)."""

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        children = getattr(command, "commands", None)
        if children is None:
            yield path
            return
        for name, child in sorted(children.items()):
            yield from walk(child, (*path, name))

    yield from walk(typer.main.get_command(app), ())


def arguments(words: tuple[str, ...], port: int) -> list[str]:
    """The command's words and the least it needs to run: its required parameters, and a free port."""
    command: Any = typer.main.get_command(app)
    for word in words:
        command = command if word.startswith("-") else command.commands[word]  # a global option
    args: list[str] = list(words)
    for param in command.params:
        if param.name == "port":
            args += ["--port", str(port)]
        if not param.required:
            continue
        assert param.name in VALUES, f"`nurture {' '.join(words)}`: add a value for {param.name!r} to VALUES"
        value = VALUES[param.name]
        args += [value] if param.param_type_name == "argument" else [param.opts[0], value]
    return args


@dataclass(frozen=True)
class Run:
    words: tuple[str, ...]
    returncode: int | None  # None: still running at the timeout
    stdout: str
    stderr: str

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def problem(self, *, may_succeed: bool) -> str | None:
        """What is wrong with how this run ended, or None."""
        if self.returncode is None:
            return f"still running after {TIMEOUT_S} s"
        if "Traceback" in self.stdout + self.stderr:
            return f"showed a traceback:\n{self.stderr[-2000:]}"
        if self.returncode == 0:
            return None if may_succeed else f"exit 0 (expected a failure); stdout: {self.stdout[-300:]!r}"
        message = [line for line in self.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
        if len(message) != 1:
            return f"exit {self.returncode} with {len(message)} line(s) of message on stderr: {message[:5]}"
        return None


def run(words: tuple[str, ...], cwd: Path, env: Mapping[str, str]) -> Run:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nurture", *arguments(words, free_port())],
            cwd=cwd,
            env=dict(env),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return Run(words, None, str(exc.stdout or ""), str(exc.stderr or ""))
    return Run(words, done.returncode, done.stdout, done.stderr)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with one campaign, its template, a reps file and a one-lead CSV."""
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "mini.yaml").write_text(CAMPAIGN, encoding="utf-8")
    (tmp_path / "templates" / "mini").mkdir(parents=True)
    (tmp_path / "templates" / "mini" / "mail.html.j2").write_text(TEMPLATE, encoding="utf-8")
    (tmp_path / "reps.yaml").write_text("[]\n", encoding="utf-8")
    (tmp_path / "leads.csv").write_text("email,first_name\nada@example.com,Ada\n", encoding="utf-8")
    return tmp_path


def base_env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_") and k != "FORCE_COLOR"}
    return env | {
        "NURTURE_CAMPAIGNS_DIR": str(project / "campaigns"),
        "NURTURE_TEMPLATES_DIR": str(project / "templates"),
        "NURTURE_REPS_FILE": str(project / "reps.yaml"),
        "NURTURE_SCORING_FILE": str(project / "scoring.yaml"),
        "NURTURE_DATA_DIR": str(project / "var"),
        "NURTURE_SECRET_KEY": SECRET_KEY,
        "NURTURE_TICK_INTERVAL_S": "1",
        "NO_COLOR": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def check_every_command(project: Path, env: Mapping[str, str], may_succeed: set[str]) -> None:
    every = list(commands())
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        runs = list(pool.map(lambda words: run(words, project, env), every))
    problems = [
        f"nurture {r.name}: {problem}"
        for r in runs
        if (problem := r.problem(may_succeed=r.words[0] in may_succeed)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_every_command_refuses_a_malformed_database_url_in_one_line(project: Path) -> None:
    env = base_env(project) | {"NURTURE_DATABASE_URL": "postgresql://db:not-a-port/nurture"}
    check_every_command(project, env, may_succeed=set())


def test_leads_import_refuses_a_psycopg_url_in_one_line_naming_the_scheme(project: Path) -> None:
    # Given the URL a SQLAlchemy user writes for psycopg 3 (it used to pass, then fail deep in the import)
    env = base_env(project) | {"NURTURE_DATABASE_URL": "postgresql+psycopg://app:pw@127.0.0.1/nurture"}
    done = run(("leads", "import"), project, env)
    # Then the refusal names the scheme and the accepted forms, and nothing went further
    assert done.problem(may_succeed=False) is None
    assert "'postgresql+psycopg'" in done.stderr
    assert "postgresql+asyncpg://" in done.stderr


def test_every_command_fails_in_one_line_when_postgresql_is_unreachable(project: Path) -> None:
    services.require_service(
        services.REDIS_URL, "Redis"
    )  # so the services get past the broker to the database
    env = base_env(project) | {
        "NURTURE_DATABASE_URL": f"postgresql://nurture@127.0.0.1:{CLOSED_PORT}/nurture",
        "NURTURE_REDIS_URL": services.REDIS_URL,
    }
    check_every_command(project, env, may_succeed=NEEDS_NEITHER)


def test_every_command_fails_in_one_line_when_redis_is_unreachable(project: Path) -> None:
    database = project / "nurture.db"
    services.create_sqlite_database(database)  # a database that works: only Redis is missing
    env = base_env(project) | {
        "NURTURE_DATABASE_URL": f"sqlite:///{database}",
        "NURTURE_REDIS_URL": f"redis://127.0.0.1:{CLOSED_PORT}/0",
    }
    every = {words[0] for words in commands()}
    check_every_command(project, env, may_succeed=every - NEEDS_REDIS)


@pytest.mark.parametrize("words", [("leads", "import"), ("tick",)], ids=["leads-import", "tick"])
def test_interactive_commands_print_their_result_and_log_only_when_asked(
    project: Path, words: tuple[str, ...]
) -> None:
    env = base_env(project)
    # Given the embedded default, When the command runs as it is, Then stderr holds no log line
    quiet = run(words, project, env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip()
    assert not [line for line in quiet.stderr.splitlines() if LOG_LINE.match(line)], quiet.stderr
    # When it runs with --verbose, or with NURTURE_LOG_LEVEL set, Then its INFO lines are back on stderr
    for verbose, extra in (((), {"NURTURE_LOG_LEVEL": "INFO"}), (("--verbose",), {})):
        loud = run((*verbose, *words), project, env | extra)
        assert loud.returncode == 0, loud.stderr
        assert any(" INFO nurture." in line for line in loud.stderr.splitlines()), loud.stderr
