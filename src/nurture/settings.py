"""Service configuration from `NURTURE_*` environment variables or a `.env` file.

Unset means the embedded default: a SQLite file and an outbox folder under `./var/`, an in-process broker.
`load_settings()` is called by the command line only; everything else is handed what it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from nurture.core.lead import LeadLimits
from nurture.core.ratelimit import parse_rate_limits
from nurture.core.site_hosts import parse_site_hosts
from nurture.errors import ConfigError

# The database URLs a SQLAlchemy user writes, mapped to the async drivers nurture runs on.
# Any other driver (psycopg, psycopg2, mysql, ...) would pass a URL check and then fail deep inside a query.
_DATABASE_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
ACCEPTED_DATABASE_URLS = (
    "postgresql://, postgres://, postgresql+asyncpg://, sqlite:///PATH or sqlite+aiosqlite:///PATH"
)
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The CSV reader's limits (nurture.csv_input): one field, one record, the header's columns.
CSV_MAX_FIELD_CHARS: Final = 131_072  # Python's csv field limit
CSV_MAX_ROW_CHARS: Final = 1_048_576
CSV_MAX_COLUMNS: Final = 1_000


def async_database_url(url: str) -> str:
    """Map a database URL to the async driver nurture uses; refuse, in one line, any other driver.

    The message names the URL's scheme, never the rest of it (it may hold a password).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL (no scheme://); accepted: {ACCEPTED_DATABASE_URLS}")
    driver = _DATABASE_DRIVERS.get(scheme.lower())
    if driver is None:
        raise ValueError(
            f"unsupported database URL scheme {scheme[:40]!r}; accepted: {ACCEPTED_DATABASE_URLS}"
        )
    normalised = f"{driver}://{rest}"
    try:
        _ = make_url(normalised).port  # a port that is not a number only shows when read
    except (ArgumentError, ValueError):
        raise ValueError(
            f"malformed {scheme} URL (host, port or path); accepted: {ACCEPTED_DATABASE_URLS}"
        ) from None
    return normalised


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NURTURE_", env_file=".env", extra="ignore", frozen=True)

    database_url: str | None = None
    redis_url: str | None = None
    smtp_url: SecretStr | None = None
    campaigns_dir: Path = Path("campaigns")
    templates_dir: Path = Path("templates")
    scoring_file: Path = Path("scoring.yaml")
    reps_file: Path = Path("reps.yaml")
    secret_key: SecretStr | None = None
    base_url: str = Field(default_factory=lambda: default_base_url())  # see listening_on
    alert_urls: str = ""
    postal_address: str | None = None
    dry_run: bool = False

    data_dir: Path = Path("var")
    clock_file: Path | None = None
    tick_interval_s: float = Field(default=10.0, gt=0)
    claim_batch: int = Field(default=1000, gt=0)
    claim_lease_s: int = Field(default=600, gt=0)
    worker_threads: int = Field(default=8, gt=0)
    smtp_pool_size: int = Field(default=4, gt=0)
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    max_send_attempts: int = Field(default=8, gt=0)
    log_format: str = Field(default="text", pattern="^(text|json)$")
    # Unset: services log at INFO, interactive commands not at all (their output is their result).
    log_level: str | None = None

    # --- sending like a good citizen and fast (send path) ---
    lead_daily_cap: int = Field(default=2, ge=0)  # emails per lead in any 24 h, all campaigns; 0: no cap
    lead_weekly_cap: int = Field(default=6, ge=0)  # emails per lead in any 7 days, all campaigns; 0: no cap
    domain_backoff_s: int = Field(default=60, gt=0)  # first pause of a domain that answered 421/451
    domain_backoff_max_s: int = Field(default=3600, gt=0)  # the pause doubles per failure up to this
    send_batch_size: int = Field(default=50, gt=0, le=1000)  # deliveries per broker message

    # --- scheduling and per-domain rate limits (schedule path) ---
    # Claims per recipient domain and window, e.g. "gmail.com=600/h, outlook.com=300/h, *=0" (0: no cap).
    domain_rate_limits: str = ""

    @field_validator("domain_rate_limits")
    @classmethod
    def _rate_limits_parse(cls, value: str) -> str:
        parse_rate_limits(value)  # a bad rule fails at start-up, named in the message
        return value

    # --- the CSV reader of `leads import` and `simulate --leads` (hostile files) ---
    csv_max_field_chars: int = Field(default=CSV_MAX_FIELD_CHARS, gt=0)  # a longer field is a row error
    csv_max_row_chars: int = Field(default=CSV_MAX_ROW_CHARS, gt=0)  # a longer record is a row error
    csv_max_columns: int = Field(default=CSV_MAX_COLUMNS, gt=0)  # a wider header refuses the file

    # --- the HTTP API and tracking web ---
    api_rate_per_s: float = Field(default=20.0, gt=0)  # sustained /api requests per second, per API key
    api_burst: int = Field(default=200, gt=0)  # requests a key may make at once before the rate applies
    # a tracking event read from the Redis stream and not stored this long is taken over by another worker
    event_claim_idle_s: float = Field(default=30.0, gt=0)
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)  # how long a rep's browser session lasts
    max_json_depth: int = Field(default=32, gt=0, le=200)  # arrays/objects nested in a JSON body
    max_mime_depth: int = Field(default=16, gt=0, le=100)  # multipart/message parts declared in a complaint

    # --- limits on lead data at ingest (CSV and API alike) ---
    max_tags_per_lead: int = Field(default=100, gt=0)  # source tags in one row
    max_tag_key_chars: int = Field(default=64, gt=0, le=200)  # a tag's name
    max_tag_value_chars: int = Field(default=1000, gt=0)  # a tag's value
    max_field_chars: int = Field(default=500, gt=0)  # a profile field (name, company, title, ...)

    # --- the HTTP server (per connection) ---
    max_request_line_bytes: int = Field(default=8192, ge=256)  # the request target (path and query)
    max_header_bytes: int = Field(default=32768, ge=1024)  # header names and values of one request
    max_header_count: int = Field(default=100, ge=10)  # header fields of one request
    header_timeout_s: float = Field(default=10.0, gt=0)  # to send a request's line and headers
    keep_alive_s: int = Field(default=5, gt=0)  # an idle connection between requests
    # Host names the web answers to besides NURTURE_BASE_URL's (comma-separated); others get 400.
    allowed_hosts: str = "localhost,127.0.0.1,::1"
    # --- hostile tracking input ---
    # the hosts whose pages a visit may name (a host also covers its subdomains); empty: the hosts of the
    # absolute links in the campaigns' templates
    site_hosts: str = ""
    visit_rate_per_s: float = Field(default=0.2, gt=0)  # sustained visits per second, per visitor token
    visit_burst: int = Field(default=10, gt=0)  # visits a visitor token may post at once
    visit_client_rate_per_s: float = Field(default=2.0, gt=0)  # sustained visits per second, per client IP
    visit_client_burst: int = Field(default=60, gt=0)  # visits one client address may post at once
    replay_window_s: float = Field(default=600.0, ge=0)  # the same event within this counts once; 0: off
    erased_refresh_s: float = Field(default=5.0, gt=0)  # how stale the web's list of erased leads may be

    @field_validator("site_hosts")
    @classmethod
    def _site_hosts_parse(cls, value: str) -> str:
        parse_site_hosts(value)  # a bad host fails at start-up, named in the message
        return value

    @field_validator("database_url")
    @classmethod
    def _database_driver(cls, value: str | None) -> str | None:
        return async_database_url(value) if value else None  # empty, as `NURTURE_DATABASE_URL=`: unset

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme = value.partition("://")[0].lower()
        if scheme not in _REDIS_SCHEMES:
            raise ValueError(
                f"unsupported Redis URL scheme {scheme[:40]!r}; accepted: redis://, rediss://, unix://"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        return value.upper()

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _scaled_out_needs_a_real_secret(self) -> Settings:
        if not self.is_embedded and (self.secret_key is None or len(self.secret_key.get_secret_value()) < 16):
            raise ValueError(
                "NURTURE_SECRET_KEY must be set (16+ characters) when PostgreSQL or Redis is configured"
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs may carry passwords: show them redacted wherever settings are printed or logged.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in ("database_url", "redis_url") and value else value

    @property
    def session_ttl(self) -> timedelta:
        """How long a rep's browser session lasts (NURTURE_SESSION_HOURS)."""
        return timedelta(hours=self.session_hours)

    @property
    def lead_limits(self) -> LeadLimits:
        return LeadLimits(
            self.max_tags_per_lead, self.max_tag_key_chars, self.max_tag_value_chars, self.max_field_chars
        )

    @property
    def is_embedded(self) -> bool:
        """True when no external database or broker is configured."""
        return self.database_url is None and self.redis_url is None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'nurture.db'}"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    def listening_on(self, host: str, port: int) -> Settings:
        """These settings for a process whose web listens on `host`:`port` (`nurture run`, `nurture web`).

        Unless NURTURE_BASE_URL is set, links then point where the web really is (`default_base_url`).
        """
        if "base_url" in self.model_fields_set:
            return self
        return self.model_copy(update={"base_url": default_base_url(host, port)})


DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
# A web listening on every address is reached, from this machine, at the loopback one.
_LOOPBACK_FOR: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def default_base_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The base URL of a web listening on `host`:`port` when NURTURE_BASE_URL is unset: `http://host:port`.

    A wildcard host (`0.0.0.0`, `::`) becomes its loopback address, and an IPv6 address is bracketed.
    """
    host = _LOOPBACK_FOR.get(host.strip("[]"), host.strip("[]"))
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value becomes a `ConfigError` naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:  # `from None`: the cause would show the values
        (source, first), *more = _problems(exc)
        raise ConfigError("; ".join([first, *(f"{s}: {m}" for s, m in more)]), source=source) from None


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by `***`, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Each bad variable (`settings` for a rule across several) and what is wrong with it, never its value
    (it may be a password)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        source = f"NURTURE_{field.upper()}" if field else "settings"
        problems.append((source, error["msg"].removeprefix("Value error, ")))
    return problems
