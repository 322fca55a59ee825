"""Database tables (SQLAlchemy 2 typed ORM). Plain data: no behaviour lives here.

Every instant is stored as UTC; `UTCDateTime` gives SQLite the same aware datetimes PostgreSQL returns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BigInteger ids on PostgreSQL, but INTEGER on SQLite so that they stay rowid aliases (autoincrement).
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDict = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, _dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JsonDict}


class Lead(Base):
    __tablename__ = "leads"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(300))
    title: Mapped[str | None] = mapped_column(String(300))
    industry: Mapped[str | None] = mapped_column(String(200))
    company_size: Mapped[str | None] = mapped_column(String(50))
    country: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str | None] = mapped_column(String(64))
    phone: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(320))
    grade: Mapped[str | None] = mapped_column(String(20))
    stage: Mapped[str] = mapped_column(String(20), default="lead", server_default="lead")
    score: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    suppressed_reason: Mapped[str | None] = mapped_column(String(200))
    # Set when the lead changed (or the catalog did) and may now fit a campaign: the tick only looks at
    # these, so enrolling costs O(changed leads), not O(all leads).
    enroll_pending: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    score_updated_at: Mapped[datetime | None]
    # The unrounded score at `score_points_at` (a rescore): with no event since, `core.scoring.score_as_of`
    # decays it to any later instant. `score_drops_at` is when `score` next falls by decay; the scheduler's
    # pass refreshes the leads whose instant has come (None: a score of 0 never falls).
    score_points: Mapped[float | None] = mapped_column(Float)
    score_points_at: Mapped[datetime | None]
    score_drops_at: Mapped[datetime | None]
    # Set when the lead's personal data was erased: the row keeps only ids, stage and the address's hash.
    erased_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index(
            "ix_leads_enroll_pending",
            "id",
            postgresql_where=text("enroll_pending"),
            sqlite_where=text("enroll_pending"),
        ),
        Index(
            "ix_leads_score_drops_at",
            "score_drops_at",
            postgresql_where=text("score_drops_at IS NOT NULL"),
            sqlite_where=text("score_drops_at IS NOT NULL"),
        ),
    )


class Enrollment(Base):
    __tablename__ = "enrollments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    campaign_id: Mapped[str] = mapped_column(String(100))
    campaign_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="active")  # active | completed | exited
    exit_reason: Mapped[str | None] = mapped_column(String(200))
    enrolled_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]

    __table_args__ = (
        # A lead takes a campaign once, ever; and is in at most one campaign at a time.
        UniqueConstraint("lead_id", "campaign_id", name="uq_enrollments_lead_campaign"),
        Index(
            "uq_enrollments_one_active",
            "lead_id",
            unique=True,
            postgresql_where=text("state = 'active'"),
            sqlite_where=text("state = 'active'"),
        ),
    )


class Delivery(Base):
    """One planned email: a step of an enrollment. Its status is the send state machine:

    pending -> claimed -> sending -> sent | failed | unknown, or -> skipped | cancelled.
    A transient failure puts it back to pending with a later due_at.
    """

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"))
    # No foreign key (migration 0007): the enrollment's cascade already removes a lead's deliveries.
    lead_id: Mapped[int] = mapped_column(BigId)
    campaign_id: Mapped[str] = mapped_column(String(100))
    step_id: Mapped[str] = mapped_column(String(100))
    step_index: Mapped[int] = mapped_column(Integer)
    # The lead's mail domain, lower-case: per-domain rate limits and backoff group deliveries by it.
    recipient_domain: Mapped[str] = mapped_column(String(255), default="", server_default="")
    variant: Mapped[str | None] = mapped_column(String(64))  # the A/B variant sent, when the step has any
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    claimed_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255))
    sending_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id", name="uq_deliveries_enrollment_step"),
        # Only open work is indexed, so finding due rows costs O(due rows), not O(all deliveries).
        Index(
            "ix_deliveries_open_due",
            "due_at",
            postgresql_where=text("status IN ('pending', 'claimed')"),
            sqlite_where=text("status IN ('pending', 'claimed')"),
        ),
        Index(
            "ix_deliveries_sending",
            "sending_at",
            postgresql_where=text("status = 'sending'"),
            sqlite_where=text("status = 'sending'"),
        ),
        Index("ix_deliveries_lead", "lead_id"),
    )


class Touchpoint(Base):
    """The append-only timeline of every contact with a lead."""

    __tablename__ = "touchpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))  # email_sent, email_failed, enrolled, exited, ...
    occurred_at: Mapped[datetime]
    campaign_id: Mapped[str | None] = mapped_column(String(100))
    step_id: Mapped[str | None] = mapped_column(String(100))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    message_id: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        Index("ix_touchpoints_lead_time", "lead_id", "occurred_at"),
        # The funnel report reads every stage change: a few per cent of the timeline.
        Index(
            "ix_touchpoints_stage_changes",
            "lead_id",
            "occurred_at",
            postgresql_where=text("kind = 'stage_change'"),
            sqlite_where=text("kind = 'stage_change'"),
        ),
    )


class StageChange(Base):
    """The stage history: one row per move of a lead's stage, written by `db.queries.stages.change_stage`
    with the path it came by (scoring, import, api, cli, crm) and why. A replayed change with the same
    `idempotency_key` is recorded once."""

    __tablename__ = "stage_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    from_stage: Mapped[str] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    occurred_at: Mapped[datetime]
    path: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_stage_changes_lead_time", "lead_id", "occurred_at"),
        UniqueConstraint("idempotency_key", name="uq_stage_changes_idempotency_key"),
    )


class Event(Base):
    """An engagement signal (open, click, page visit, download, ...) as received."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(60))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # SHA-256 of the request body that used the key: the same key with another body is a conflict (409).
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        Index("ix_events_lead_time", "lead_id", "occurred_at"),
        Index("ix_events_received", "received_at"),  # recent events whose re-score may have been lost
    )


class SchedulerLease(Base):
    """Leader election for scheduler processes: whoever holds an unexpired lease runs the jobs."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class CatalogState(Base):
    """Small key/value facts: about the loaded catalog (the hash the leads were last checked against), the
    round-robin counter, and, each until it would have expired, the used login links and the sessions signed
    out of (`queries.apikeys`; a key is at most 50 characters)."""

    __tablename__ = "catalog_state"

    key: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class ApiKey(Base):
    """A key for the HTTP API. Only its SHA-256 is kept; the prefix finds the row without a scan."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Alert(Base):
    """An alert to a lead's rep (it crossed mql or hot, or hit a moment); the alert actor retries it until
    delivered. `detail` holds the triggers, the moment events and the sinks that already delivered it."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(80))  # mql | hot | moment:<name> | task:<step id>
    reason: Mapped[str] = mapped_column(Text)
    score_before: Mapped[int] = mapped_column(Integer)
    score_after: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|delivered|failed|withdrawn
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        Index("ix_alerts_lead_time", "lead_id", "created_at"),
        Index(
            "ix_alerts_pending",
            "created_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class Suppression(Base):
    """An address that must never be mailed again (complaint, erasure, bounce), kept only as the SHA-256 of
    its normalised form, so it outlives the lead's personal data."""

    __tablename__ = "suppressions"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class CampaignVersion(Base):
    """The text of each version of a campaign file that leads were enrolled on (`enrollments.campaign_hash`),
    kept so that a later edit can be compared with what enrolled leads started."""

    __tablename__ = "campaign_versions"

    campaign_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class SendDomain(Base):
    """Backoff state of one recipient domain: after a 421/451 from its servers, nothing goes to the domain
    until `paused_until`, while other domains carry on."""

    __tablename__ = "send_domains"

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    paused_until: Mapped[datetime | None]
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class DomainSendWindow(Base):
    """Per-recipient-domain rate limits: how many deliveries to `domain` were claimed in the window that
    starts at `window_start` (the scheduler locks the row while it claims, so caps hold across schedulers)."""

    __tablename__ = "domain_send_windows"

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime]
    claimed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
