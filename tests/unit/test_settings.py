"""Settings: the embedded default, the scaled-out secret rule, and secrets kept out of messages and logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.errors import ConfigError
from nurture.runtime import build_runtime
from nurture.settings import (
    ACCEPTED_DATABASE_URLS,
    Settings,
    async_database_url,
    default_base_url,
    load_settings,
    redact_url,
)
from tests.project import PROJECT

ROOT = PROJECT  # the tests' own project files (tests/project.py)


def test_settings_with_nothing_configured_are_the_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # no .env here
    settings = Settings.model_validate({})
    assert settings.is_embedded
    assert settings.effective_database_url == "sqlite+aiosqlite:///var/nurture.db"
    assert settings.smtp_url is None


@pytest.mark.parametrize(
    ("host", "port", "base_url"),
    [
        ("127.0.0.1", 8000, "http://127.0.0.1:8000"),
        ("127.0.0.1", 8001, "http://127.0.0.1:8001"),
        ("0.0.0.0", 9000, "http://127.0.0.1:9000"),
        ("localhost", 8080, "http://localhost:8080"),
        ("::", 8001, "http://[::1]:8001"),
        ("::1", 8001, "http://[::1]:8001"),
        ("[2001:db8::5]", 80, "http://[2001:db8::5]:80"),
        ("nurture.internal", 443, "http://nurture.internal:443"),
    ],
)
def test_the_default_base_url_follows_the_host_and_port_the_web_listens_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str, port: int, base_url: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("NURTURE_BASE_URL", raising=False)
    assert default_base_url(host, port) == base_url
    assert load_settings().listening_on(host, port).base_url == base_url


def test_a_base_url_that_is_set_is_kept_whatever_the_web_listens_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NURTURE_BASE_URL", "https://track.acme.example/")
    assert load_settings().listening_on("0.0.0.0", 8001).base_url == "https://track.acme.example"


@pytest.mark.parametrize("secret", [None, "short"])
def test_settings_refuse_a_missing_or_weak_secret_once_postgresql_is_configured(secret: str | None) -> None:
    values = {"database_url": "postgresql://db/nurture", **({"secret_key": secret} if secret else {})}
    with pytest.raises(ValueError, match="NURTURE_SECRET_KEY"):
        Settings.model_validate(values)


def test_load_settings_reports_a_bad_value_as_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NURTURE_WORKER_THREADS", "many")
    with pytest.raises(
        ConfigError, match="NURTURE_WORKER_THREADS: Input should be a valid integer"
    ) as caught:
        load_settings()
    assert "many" not in str(caught.value)  # values are never echoed: they may be passwords
    assert str(caught.value).startswith("NURTURE_WORKER_THREADS: Input should")  # no `environment:?:`
    assert caught.value.source == "NURTURE_WORKER_THREADS"


def test_load_settings_names_every_bad_variable_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NURTURE_WORKER_THREADS", "many")
    monkeypatch.setenv("NURTURE_SEND_BATCH_SIZE", "0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("NURTURE_")
    assert "NURTURE_WORKER_THREADS: " in message
    assert "NURTURE_SEND_BATCH_SIZE: Input should be greater than 0" in message


def test_a_config_error_without_a_line_reads_source_then_reason() -> None:
    assert str(ConfigError("a host is required", source="NURTURE_SMTP_URL")) == (
        "NURTURE_SMTP_URL: a host is required"
    )
    located = ConfigError("unknown key", source="campaigns/a.yaml", line=3)
    assert str(located) == "campaigns/a.yaml:3: unknown key"


def test_redact_url_hides_the_password_and_keeps_the_rest() -> None:
    assert redact_url("postgresql://app:s3cr%40t@db:5432/n") == "postgresql://app:***@db:5432/n"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_building_the_runtime_logs_no_password_or_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.model_validate(
        {
            "database_url": "postgresql://app:db-pass-123@127.0.0.1:5432/nurture",
            "smtp_url": "smtp://mailer:smtp-pass-456@127.0.0.1:2525",
            "secret_key": "tracking-secret-789-0123456789",
            "data_dir": tmp_path,
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
        }
    )
    with caplog.at_level(logging.DEBUG):
        runtime = build_runtime(settings)
    text = caplog.text + repr(runtime.mailer.transport) + repr(settings)
    assert "runtime ready" in caplog.text
    for secret in ("db-pass-123", "smtp-pass-456", "tracking-secret-789"):
        assert secret not in text


# -- database URLs -------------------------------------------------------------------------------------------

HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5})?", fullmatch=True)
NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True)
PORTS = st.one_of(st.none(), st.integers(min_value=1, max_value=65535))


def _server_url(scheme: str, user: str, password: str, host: str, port: int | None, name: str) -> str:
    return f"{scheme}://{user}:{password}@{host}{f':{port}' if port else ''}/{name}"


@given(
    scheme=st.sampled_from(["postgresql", "postgres", "postgresql+asyncpg", "POSTGRESQL", "Postgres"]),
    user=NAMES,
    password=st.from_regex(r"[A-Za-z0-9%]{1,20}", fullmatch=True),
    host=HOSTS,
    port=PORTS,
    name=NAMES,
)
def test_every_postgresql_url_form_maps_to_asyncpg_keeping_the_rest(
    scheme: str, user: str, password: str, host: str, port: int | None, name: str
) -> None:
    url = _server_url(scheme, user, password, host, port, name)
    mapped = async_database_url(url)
    assert mapped == "postgresql+asyncpg://" + url.partition("://")[2]
    assert async_database_url(mapped) == mapped  # mapping twice is mapping once
    assert Settings.model_validate({"database_url": url, "secret_key": "k" * 16}).database_url == mapped


@given(path=st.from_regex(r"(/[a-z0-9_.-]{1,12}){1,4}", fullmatch=True), relative=st.booleans())
def test_sqlite_urls_map_to_aiosqlite(path: str, relative: bool) -> None:
    rest = path.lstrip("/") if relative else path
    for scheme in ("sqlite", "sqlite+aiosqlite"):
        assert async_database_url(f"{scheme}:///{rest}") == f"sqlite+aiosqlite:///{rest}"
    assert async_database_url("sqlite://") == "sqlite+aiosqlite://"  # in memory


@given(
    scheme=st.sampled_from(
        [
            "postgresql+psycopg",
            "postgresql+psycopg2",
            "postgresql+pg8000",
            "mysql",
            "mysql+aiomysql",
            "sqlite+pysqlite",
            "oracle",
            "mssql+pyodbc",
            "redis",
            "http",
        ]
    )
    | st.from_regex(r"[a-z][a-z0-9+]{0,15}", fullmatch=True).filter(
        lambda s: s not in ("postgresql", "postgres", "postgresql+asyncpg", "sqlite", "sqlite+aiosqlite")
    ),
    host=HOSTS,
)
def test_a_url_of_any_other_driver_is_refused_in_one_line_naming_its_scheme(scheme: str, host: str) -> None:
    url = f"{scheme}://app:hunter2-secret@{host}/nurture"
    with pytest.raises(ValueError, match="unsupported database URL scheme") as caught:
        async_database_url(url)
    message = str(caught.value)
    assert repr(scheme) in message
    assert "postgresql+asyncpg://" in message
    assert "\n" not in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url", ["not a url", "app:hunter2@db/nurture", "postgresql://db:port/nurture", "postgres://[::1/x"]
)
def test_load_settings_refuses_a_malformed_database_url_in_one_line_without_its_password(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_DATABASE_URL", url)
    monkeypatch.setenv("NURTURE_SECRET_KEY", "k" * 16)
    with pytest.raises(ConfigError, match=r"NURTURE_DATABASE_URL: (not a database URL|malformed)") as caught:
        load_settings()
    assert "\n" not in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_load_settings_refuses_psycopg_naming_the_scheme_and_the_accepted_forms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NURTURE_DATABASE_URL", "postgresql+psycopg://app@127.0.0.1/nurture")
    monkeypatch.setenv("NURTURE_SECRET_KEY", "k" * 16)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "'postgresql+psycopg'" in str(caught.value)
    assert ACCEPTED_DATABASE_URLS in str(caught.value)


@pytest.mark.parametrize("url", ["http://cache:6379", "cache:6379", "memcached://cache"])
def test_load_settings_refuses_a_redis_url_of_another_scheme(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_REDIS_URL", url)
    monkeypatch.setenv("NURTURE_SECRET_KEY", "k" * 16)
    with pytest.raises(ConfigError, match="NURTURE_REDIS_URL: unsupported Redis URL scheme"):
        load_settings()


def test_an_empty_database_or_redis_url_means_the_embedded_default() -> None:
    assert Settings.model_validate({"database_url": "", "redis_url": ""}).is_embedded
