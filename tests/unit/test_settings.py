"""Settings: the embedded default, the scaled-out secret rule, and secrets kept out of messages and logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nurture.errors import ConfigError
from nurture.runtime import build_runtime
from nurture.settings import Settings, default_base_url, load_settings, redact_url
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
    monkeypatch: pytest.MonkeyPatch, host: str, port: int, base_url: str
) -> None:
    monkeypatch.chdir(ROOT / "tests")  # no .env here
    monkeypatch.delenv("NURTURE_BASE_URL", raising=False)
    assert default_base_url(host, port) == base_url
    assert load_settings().listening_on(host, port).base_url == base_url


def test_a_base_url_that_is_set_is_kept_whatever_the_web_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "tests")
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
