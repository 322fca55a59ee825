"""Build the running service from settings: the one place embedded and scaled-out setups diverge.

Embedded: SQLite under `data_dir`, the outbox folder instead of SMTP, a secret key kept in `data_dir`.
Scaled out: PostgreSQL, SMTP, and the secret from the environment (settings refuse to start without it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path

from nurture.alerts import AppriseAlertSink, EmailAlertSink, split_alert_urls
from nurture.catalog import Catalog, load_catalog
from nurture.clock import Clock, FileClock, SystemClock
from nurture.core.caps import FrequencyCap
from nurture.db.engine import Database
from nurture.flows.deliver import Mailer
from nurture.ports import AlertSink, Transport
from nurture.settings import Settings, redact_url
from nurture.transports.outbox import OutboxTransport
from nurture.transports.smtp import SmtpConfig, SmtpTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    db: Database
    catalog: Catalog
    mailer: Mailer
    clock: Clock
    sinks: tuple[AlertSink, ...] = ()  # where alerts go: the owner's email, then notification URLs

    async def aclose(self) -> None:
        await self.mailer.transport.aclose()
        await self.db.aclose()


def build_runtime(
    settings: Settings, *, clock: Clock | None = None, catalog: Catalog | None = None
) -> Runtime:
    """Wire database, catalog, renderer, transport and clock; nothing connects until first use."""
    catalog = catalog or load_catalog(
        campaigns_dir=settings.campaigns_dir,
        templates_dir=settings.templates_dir,
        reps_file=settings.reps_file,
        scoring_file=settings.scoring_file,
    )
    db = Database(settings.effective_database_url)
    transport = build_transport(settings)
    mailer = Mailer(
        catalog=catalog,
        renderer=catalog.renderer(),
        transport=transport,
        secret_key=secret_key(settings),
        base_url=settings.base_url,
        postal_address=settings.postal_address,
        max_attempts=settings.max_send_attempts,
        cap=FrequencyCap(per_day=settings.lead_daily_cap, per_week=settings.lead_weekly_cap),
        domain_backoff=timedelta(seconds=settings.domain_backoff_s),
        domain_backoff_max=timedelta(seconds=settings.domain_backoff_max_s),
        dry_run=settings.dry_run,
        send_slots=asyncio.Semaphore(settings.smtp_pool_size + 1),
    )
    log.info("runtime ready database=%s dry_run=%s", redact_url(db.url), settings.dry_run)
    return Runtime(
        settings=settings,
        db=db,
        catalog=catalog,
        mailer=mailer,
        clock=clock or build_clock(settings),
        sinks=build_alert_sinks(settings, catalog, transport),
    )


def build_alert_sinks(settings: Settings, catalog: Catalog, transport: Transport) -> tuple[AlertSink, ...]:
    """The rep's email (on the campaigns' mail transport) and the notification URLs (Apprise).

    Raises `ConfigError` for a `NURTURE_ALERT_URLS` entry Apprise does not understand.
    """
    return (
        EmailAlertSink(transport, alert_sender(catalog)),
        AppriseAlertSink(split_alert_urls(settings.alert_urls)),
    )


def alert_sender(catalog: Catalog) -> str:
    """Alerts come from the first campaign's sender address, a mailbox the relay already sends for."""
    campaigns = catalog.ordered()
    address = parseaddr(campaigns[0].sender.from_address)[1] if campaigns else ""
    return f"nurture alerts <{address or 'nurture@localhost'}>"


def build_transport(settings: Settings) -> Transport:
    if settings.smtp_url is None:
        return OutboxTransport(settings.outbox_dir)
    config = SmtpConfig.from_url(
        settings.smtp_url.get_secret_value(),
        timeout_s=settings.smtp_timeout_s,
        pool_size=settings.smtp_pool_size,
    )
    return SmtpTransport(config)


def build_clock(settings: Settings) -> Clock:
    return FileClock(settings.clock_file) if settings.clock_file else SystemClock()


def secret_key(settings: Settings) -> bytes:
    """The tracking-link key: from the environment, or (embedded only) generated once and kept in data_dir."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / "secret.key"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32))
    return path.read_text(encoding="utf-8").strip().encode()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
