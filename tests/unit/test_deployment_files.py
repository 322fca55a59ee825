"""The Dockerfile, .dockerignore and docker-compose.yml agree with the settings and the command line.

These files are only exercised by a deployment, so a renamed setting or command would otherwise break
`docker compose up` silently. They are read as data here; `docker compose config` runs when it is installed.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from nurture.cli import app
from nurture.settings import Settings
from tests.project import CHECKOUT

ROOT = CHECKOUT  # deployment files are the checkout's
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("scheduler", "worker", "web")
MARKETING_FILES = {
    "campaigns": "/app/campaigns",
    "templates": "/app/templates",
    "reps.yaml": "/app/reps.yaml",
    "scoring.yaml": "/app/scoring.yaml",
}
SETTINGS_VARIABLES = frozenset(f"NURTURE_{name.upper()}" for name in Settings.model_fields)
NURTURE_VARIABLE = re.compile(r"\bNURTURE_[A-Z0-9_]+")


# --- helpers ---------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _image_services() -> dict[str, dict[str, Any]]:
    """The services that run the nurture image (they build it), migrate included."""
    return {name: spec for name, spec in _services().items() if "build" in spec}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in logical.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _exec_form(instruction: str) -> list[str]:
    # JSON is YAML: the exec form parses to a list, the shell form to a plain string.
    found = [yaml.safe_load(rest) for keyword, rest in _final_stage() if keyword == instruction]
    assert found, f"the final stage has no {instruction}"
    value = found[-1]
    assert isinstance(value, list), f"{instruction} must use the exec (JSON array) form"
    return value


def _subcommands(command: Any) -> dict[str, Any] | None:
    """A group's subcommands, or None for a leaf (duck-typed: typer may ship its own copy of click)."""
    commands = getattr(command, "commands", None)
    return commands if isinstance(commands, dict) else None


def _cli_command(argv: list[str]) -> Any:
    """Resolve `nurture ARGV` to the command it runs, failing on unknown commands and options."""
    command: Any = typer.main.get_command(app)
    words = list(argv)
    while words and not words[0].startswith("-") and (subcommands := _subcommands(command)) is not None:
        assert words[0] in subcommands, f"`nurture {' '.join(argv)}`: no command {words[0]!r}"
        command, words = subcommands[words[0]], words[1:]
    assert _subcommands(command) is None, f"`nurture {' '.join(argv)}` names a group, not a command"
    known = {opt for param in command.params for opt in param.opts}
    unknown = [word for word in words if word.startswith("--") and word.split("=")[0] not in known]
    assert not unknown, f"`nurture {' '.join(argv)}`: unknown option(s) {unknown}"
    return command


def _cli_has(name: str) -> bool:
    return name in (_subcommands(typer.main.get_command(app)) or {})


def _compose_executable() -> list[str] | None:
    """`docker compose` (v2) when it answers, else `docker-compose`; None when neither is installed."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    executable = shutil.which("docker-compose")
    return [executable] if executable else None


def _compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    executable = _compose_executable()
    if executable is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # An empty --env-file keeps a developer's own .env from answering for the test.
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("", encoding="utf-8")
    argv = [*executable, "--env-file", str(empty_env), "-f", str(COMPOSE_FILE), "config", "-q"]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def _env_without_nurture() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(("NURTURE_", "POSTGRES_"))}


# --- docker-compose.yml ----------------------------------------------------------------------------------


def test_compose_file_uses_the_compose_spec_without_a_version_key() -> None:
    assert "version" not in _compose()


def test_compose_image_services_are_migrate_and_the_three_app_processes() -> None:
    assert set(_image_services()) == {"migrate", *APP_SERVICES}


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_app_service_waits_for_healthy_postgres_redis_and_a_finished_migration(service: str) -> None:
    depends_on = _services()[service]["depends_on"]
    assert depends_on["postgres"] == {"condition": "service_healthy"}
    assert depends_on["redis"] == {"condition": "service_healthy"}
    assert depends_on["migrate"] == {"condition": "service_completed_successfully"}


def test_compose_migrate_upgrades_the_database_once_after_postgres_is_healthy() -> None:
    migrate = _services()["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert migrate["restart"] == "no"


@pytest.mark.parametrize(("service", "probe"), [("postgres", "pg_isready"), ("redis", "redis-cli")])
def test_compose_backing_service_has_a_healthcheck_that_runs_its_probe(service: str, probe: str) -> None:
    healthcheck = _services()[service]["healthcheck"]
    test = healthcheck["test"]
    command = test if isinstance(test, str) else " ".join(test)
    assert probe in command
    assert healthcheck.get("disable") is not True


def test_compose_postgres_keeps_its_data_in_a_named_volume() -> None:
    compose = _compose()
    sources = [volume.split(":")[0] for volume in compose["services"]["postgres"]["volumes"]]
    assert any(source in (compose.get("volumes") or {}) for source in sources)


@pytest.mark.parametrize("service", ["migrate", *APP_SERVICES])
def test_compose_secret_key_is_required_rather_than_defaulted(service: str) -> None:
    secret = _services()[service]["environment"]["NURTURE_SECRET_KEY"]
    assert secret.startswith("${NURTURE_SECRET_KEY:?")  # ":?" also refuses an empty value
    assert secret.endswith("}")


@pytest.mark.parametrize("service", ["migrate", *APP_SERVICES])
def test_compose_app_service_is_configured_for_the_scaled_out_mode(service: str) -> None:
    environment = _services()[service]["environment"]
    assert environment["NURTURE_DATABASE_URL"].startswith("postgresql://nurture:")
    assert environment["NURTURE_DATABASE_URL"].endswith("@postgres:5432/nurture")
    assert environment["NURTURE_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["NURTURE_SMTP_URL"] == "smtp://mailpit:1025"
    assert environment["NURTURE_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("path", [COMPOSE_FILE, DOCKERFILE], ids=lambda path: path.name)
def test_deployment_file_names_only_nurture_variables_that_are_settings_fields(path: Path) -> None:
    used = set(NURTURE_VARIABLE.findall(path.read_text(encoding="utf-8")))
    assert used - SETTINGS_VARIABLES == set()


def test_compose_environment_sets_only_settings_fields() -> None:
    # Given every NURTURE_* key that any service sets
    keys = {key for spec in _services().values() for key in spec.get("environment") or {}}
    nurture_keys = {key for key in keys if key.startswith("NURTURE_")}
    # Then there are some, and each one is a field of Settings
    assert "NURTURE_SECRET_KEY" in nurture_keys
    assert nurture_keys <= SETTINGS_VARIABLES


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_app_service_mounts_marketing_files_read_only(service: str) -> None:
    mounts = {}
    for volume in _services()[service].get("volumes") or []:
        source, target, *mode = volume.split(":")
        mounts[posixpath.normpath(source)] = (target, mode)
    for name, target in MARKETING_FILES.items():
        assert mounts.get(name) == (target, ["ro"]), f"{service} must mount ./{name} at {target}:ro"


def test_compose_worker_runs_two_replicas_and_publishes_no_port() -> None:
    worker = _services()["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "ports" not in worker


def test_compose_web_publishes_port_8000_and_checks_healthz() -> None:
    web = _services()["web"]
    assert any(str(port).endswith("8000:8000") for port in web["ports"])
    assert "http://127.0.0.1:8000/healthz" in " ".join(web["healthcheck"]["test"])


def test_compose_mailpit_publishes_its_web_inbox_on_8025() -> None:
    mailpit = _services()["mailpit"]
    assert mailpit["image"].startswith("axllent/mailpit")
    assert any(str(port).endswith("8025:8025") for port in mailpit["ports"])


def test_compose_commands_other_than_web_are_real_cli_commands() -> None:
    commands = {name: spec["command"] for name, spec in _image_services().items() if name != "web"}
    assert set(commands) == {"migrate", "scheduler", "worker"}
    for argv in commands.values():
        _cli_command(argv)


def test_compose_web_command_is_a_real_cli_command() -> None:
    command = _cli_command(_services()["web"]["command"])
    assert command.name == "web"


def test_compose_config_is_accepted_by_docker_compose(tmp_path: Path) -> None:
    env = _env_without_nurture() | {"NURTURE_SECRET_KEY": "x" * 32}
    result = _compose_config(tmp_path, env)
    assert result.returncode == 0, result.stderr


def test_compose_config_refuses_to_run_without_a_secret_key(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, _env_without_nurture())
    assert result.returncode != 0
    assert "NURTURE_SECRET_KEY" in result.stderr


# --- Dockerfile ------------------------------------------------------------------------------------------


def test_dockerfile_builds_in_stages_from_python_311_slim() -> None:
    instructions = _dockerfile()
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    resolved = [re.sub(r"\$\{(\w+)\}", lambda match: args.get(match[1], match[0]), base) for base in bases]
    assert len(resolved) >= 2
    assert set(resolved) == {"python:3.11-slim"}


def test_dockerfile_installs_the_project_wheel_without_dev_extras() -> None:
    runs = " ".join(rest for keyword, rest in _dockerfile() if keyword == "RUN")
    assert "pip wheel" in runs
    assert "[dev]" not in runs
    assert "pip install" in " ".join(rest for keyword, rest in _final_stage() if keyword == "RUN")


def test_dockerfile_entrypoint_is_nurture_and_the_default_command_is_a_real_one() -> None:
    assert _exec_form("ENTRYPOINT") == ["nurture"]
    command = _exec_form("CMD")
    assert command == ["run", "--host", "0.0.0.0"]
    _cli_command(command)


def test_dockerfile_copies_campaigns_templates_and_reps_into_the_working_directory() -> None:
    copied: dict[str, str] = {}
    workdir = "/"
    for keyword, rest in _final_stage():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        if keyword == "COPY" and "--from" not in rest:
            *sources, dest = [word for word in shlex.split(rest) if not word.startswith("--")]
            target = posixpath.normpath(posixpath.join(workdir, dest))
            for source in sources:
                name = source.rstrip("/")
                is_file = (ROOT / name).is_file()
                copied[name] = posixpath.join(target, name) if is_file and dest.endswith("/") else target
    assert workdir == "/app"
    assert {name: copied.get(name) for name in MARKETING_FILES} == MARKETING_FILES


def test_dockerfile_final_stage_runs_as_a_non_root_user() -> None:
    users = [rest.split(":")[0] for keyword, rest in _final_stage() if keyword == "USER"]
    assert users, "the final stage has no USER"
    assert users[-1] not in {"root", "0"}


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".git", ".venv", "var"} <= patterns
    assert not patterns & {"src", "campaigns", "templates", "reps.yaml", "pyproject.toml"}
