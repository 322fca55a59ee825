"""The batch send path on a real database (SQLite and PostgreSQL): claims, frequency caps, per-domain backoff,
shadow mode and step decisions."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from nurture.catalog import Catalog
from nurture.core.caps import FrequencyCap
from nurture.core.privacy import address_hash
from nurture.db.engine import Database
from nurture.db.queries.send_domains import paused_domains
from nurture.db.queries.suppressions import suppressions
from nurture.db.queries.tables import deliveries, leads, touchpoints
from nurture.errors import PermanentSendError, TransientSendError
from nurture.flows import decide
from nurture.flows.deliver import Mailer, Outcome, deliver_batch
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.ports import OutgoingEmail, RenderedEmail, Renderer, SendReceipt
from nurture.transports.smtp import SmtpConfig, SmtpTransport
from tests.fakes import RecordingTransport
from tests.smtp_sink import SmtpSink, smtp_sink_fixture  # noqa: F401

MONDAY_TAIPEI_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei
LEASE, STALE = timedelta(minutes=10), timedelta(minutes=5)


def _lead(address: str) -> dict[str, str]:
    return {"email": address, "first_name": "Mei", "grade": "nurturable", "timezone": "Asia/Taipei"}


async def _claimed(db: Database, catalog: Catalog, addresses: Sequence[str], now: datetime) -> list[int]:
    await import_leads(db, [_lead(a) for a in addresses], now=now)
    await enroll(db, catalog, now)
    return (await dispatch(db, now, lease=LEASE, limit=1000, stale_after=STALE)).claimed


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _make_due_and_claim(db: Database, step_id: str, now: datetime) -> list[int]:
    async with db.transaction() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.step_id == step_id).values(due_at=now))
    return (await dispatch(db, now, lease=LEASE, limit=1000, stale_after=STALE)).claimed


async def test_a_batch_sends_each_delivery_once_and_a_duplicate_batch_finds_them_taken(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    claimed = await _claimed(db, catalog, [f"lead{i}@example.com" for i in range(5)], MONDAY_TAIPEI_10)
    # Given the same ids twice in one message, and the same message delivered twice
    first = await deliver_batch(claimed + claimed, db=db, mailer=mailer, now=MONDAY_TAIPEI_10)
    again = await deliver_batch(claimed, db=db, mailer=mailer, now=MONDAY_TAIPEI_10)
    assert set(first.outcomes.values()) == {Outcome.SENT}
    assert set(again.outcomes.values()) == {Outcome.NOT_CLAIMED}
    assert len(transport.sent) == 5
    sent = await _rows(db, select(touchpoints.c.detail).where(touchpoints.c.kind == "email_sent"))
    assert len(sent) == 5
    # The SMTP window (reply -> outcome written) is measured for every send
    assert all(0 <= row["detail"]["smtp_window_ms"] < 60_000 for row in sent)


async def test_shadow_mode_records_the_full_headers_and_sends_nothing(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    shadow = dataclasses.replace(mailer, dry_run=True)
    [delivery_id] = await _claimed(db, catalog, ["fit@example.com"], MONDAY_TAIPEI_10)
    result = await deliver_batch([delivery_id], db=db, mailer=shadow, now=MONDAY_TAIPEI_10)
    assert result.outcomes == {delivery_id: Outcome.SHADOWED}
    assert transport.sent == []
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == delivery_id))
    assert (row["status"], row["sent_at"]) == ("shadowed", MONDAY_TAIPEI_10)
    kinds = [t["kind"] for t in await _rows(db, select(touchpoints).order_by(touchpoints.c.id))]
    assert "email_sent" not in kinds
    [touch] = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "email_shadowed"))
    headers = touch["detail"]["headers"]
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in headers
    assert f"Message-ID: {touch['message_id']}" in headers
    assert touch["detail"]["recipients"] == ["fit@example.com"]


async def test_a_lead_over_its_daily_cap_is_deferred_to_when_the_cap_allows_not_dropped(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    capped = dataclasses.replace(mailer, cap=FrequencyCap(per_day=1, per_week=6))
    [welcome] = await _claimed(db, catalog, ["fit@example.com"], MONDAY_TAIPEI_10)
    assert (await deliver_batch([welcome], db=db, mailer=capped, now=MONDAY_TAIPEI_10)).outcomes == {
        welcome: Outcome.SENT
    }
    # Given the next step made due one hour later, the same day
    later = MONDAY_TAIPEI_10 + timedelta(hours=1)
    [second] = await _make_due_and_claim(db, "case-study", later)
    # Then it is put back, due once 24 h have passed since the first email (inside the window), attempt kept
    assert (await deliver_batch([second], db=db, mailer=capped, now=later)).outcomes == {
        second: Outcome.CAPPED
    }
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == second))
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 0, "frequency cap")
    assert row["due_at"] == MONDAY_TAIPEI_10 + timedelta(days=1)
    assert len(transport.sent) == 1


async def test_two_workers_holding_one_leads_deliveries_send_only_what_its_cap_allows(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    capped = dataclasses.replace(mailer, cap=FrequencyCap(per_day=1, per_week=6))
    await import_leads(db, [_lead("fit@example.com")], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    [first, second] = await _make_due_and_claim(db, "case-study", MONDAY_TAIPEI_10)  # welcome is due too
    # When two workers take one delivery each at the same moment
    results = await asyncio.gather(
        deliver_batch([first], db=db, mailer=capped, now=MONDAY_TAIPEI_10),
        deliver_batch([second], db=db, mailer=capped, now=MONDAY_TAIPEI_10),
    )
    outcomes = sorted(o for r in results for o in r.outcomes.values())
    assert outcomes == sorted([Outcome.SENT, Outcome.CAPPED])
    assert len(transport.sent) == 1


async def test_a_try_later_pauses_the_recipient_domain_while_other_domains_carry_on(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    # Given a2 imported after a1 (so it comes later in the batch), sent one at a time
    await import_leads(db, [_lead("a1@slow.example"), _lead("b1@fast.example")], now=MONDAY_TAIPEI_10)
    claimed = await _claimed(db, catalog, ["a2@slow.example"], MONDAY_TAIPEI_10)
    transport.fail_first_to("a1@slow.example", TransientSendError("SMTP 421: 4.7.0 try again later"))
    one_at_a_time = dataclasses.replace(mailer, send_slots=asyncio.Semaphore(1))
    result = await deliver_batch(claimed, db=db, mailer=one_at_a_time, now=MONDAY_TAIPEI_10)
    by_address = await _outcomes_by_address(db, result.outcomes)
    assert by_address == {
        "a1@slow.example": Outcome.RETRY,
        "b1@fast.example": Outcome.SENT,
        "a2@slow.example": Outcome.PAUSED,  # not tried: its domain had just said "later"
    }
    async with db.transaction() as conn:
        assert await paused_domains(conn, MONDAY_TAIPEI_10) == {"slow.example"}
        assert await paused_domains(conn, MONDAY_TAIPEI_10 + mailer.domain_backoff) == set()
    rows = await _rows(
        db, select(deliveries).where(deliveries.c.status == "pending", deliveries.c.step_id == "welcome")
    )
    assert {r["due_at"] for r in rows} == {MONDAY_TAIPEI_10 + mailer.domain_backoff}
    assert sorted(r["attempts"] for r in rows) == [0, 1]  # the one not tried keeps its attempt
    # After the pause both go out, and a success clears the domain's backoff
    resumed = MONDAY_TAIPEI_10 + mailer.domain_backoff
    again = (await dispatch(db, resumed, lease=LEASE, limit=10, stale_after=STALE)).claimed
    assert set((await deliver_batch(again, db=db, mailer=mailer, now=resumed)).outcomes.values()) == {
        Outcome.SENT
    }
    async with db.transaction() as conn:
        assert await paused_domains(conn, resumed - timedelta(seconds=1)) == set()


async def test_a_domain_is_paused_by_the_errors_deferral_field_not_by_its_wording(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    claimed = await _claimed(db, catalog, ["a1@slow.example", "b1@relay.example"], MONDAY_TAIPEI_10)
    # Given a deferral worded in no way the send path knows, and a "421" text that is not a deferral
    transport.fail_first_to("a1@slow.example", TransientSendError("come back soon", code=421, deferral=True))
    transport.fail_first_to("b1@relay.example", TransientSendError("SMTP 421: our session", deferral=False))
    result = await deliver_batch(claimed, db=db, mailer=mailer, now=MONDAY_TAIPEI_10)
    assert set(result.outcomes.values()) == {Outcome.RETRY}
    # Then only the deferral pauses its domain; the other is only retried
    async with db.transaction() as conn:
        assert await paused_domains(conn, MONDAY_TAIPEI_10) == {"slow.example"}


async def test_a_hard_bounce_in_a_batch_suppresses_that_lead_at_once_and_only_that_lead(
    db: Database,
    catalog: Catalog,
    mailer: Mailer,
    transport: RecordingTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nurture")
    claimed = await _claimed(db, catalog, ["gone@example.com", "ok@example.com"], MONDAY_TAIPEI_10)
    transport.fail_first_to(
        "gone@example.com",
        PermanentSendError("SMTP 550: 5.1.1 <gone@example.com>: Recipient address rejected"),
    )
    result = await deliver_batch(claimed, db=db, mailer=mailer, now=MONDAY_TAIPEI_10)
    by_address = await _outcomes_by_address(db, result.outcomes)
    assert by_address == {"gone@example.com": Outcome.BOUNCED, "ok@example.com": Outcome.SENT}
    suppressed = {
        r["email"]: r["suppressed"] for r in await _rows(db, select(leads.c.email, leads.c.suppressed))
    }
    assert suppressed == {"gone@example.com": True, "ok@example.com": False}
    gone = await _rows(
        db,
        select(deliveries.c.status)
        .join(leads, leads.c.id == deliveries.c.lead_id)
        .where(leads.c.email == "gone@example.com"),
    )
    assert {r["status"] for r in gone} == {"failed", "cancelled"}  # every later step of every campaign
    # The address itself stays unsendable, even if the lead is erased and imported again
    hashes = await _rows(db, select(suppressions.c.email_hash, suppressions.c.reason))
    assert hashes == [{"email_hash": address_hash("gone@example.com"), "reason": "bounced"}]
    # The server's text quotes the address: the logs name the kind of error and the ids only
    assert "delivery bounced" in caplog.text
    assert "@example.com" not in caplog.text


async def test_step_decisions_skip_a_step_and_send_the_chosen_variant(
    db: Database,
    catalog: Catalog,
    mailer: Mailer,
    transport: RecordingTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claimed = await _claimed(db, catalog, ["skip@example.com", "variant@example.com"], MONDAY_TAIPEI_10)
    skip_id, variant_id = claimed

    async def decide_steps(
        _conn: Any, refs: Sequence[decide.StepRef], _catalog: Catalog, _now: datetime
    ) -> dict[int, decide.StepDecision]:
        return {
            ref.delivery_id: decide.StepDecision("skip", reason="not_opened: welcome")
            if ref.delivery_id == skip_id
            else decide.StepDecision("send", variant="b")
            for ref in refs
        }

    monkeypatch.setattr(decide, "decide_steps", decide_steps)
    renderer = VariantRenderer(mailer.renderer)
    result = await deliver_batch(
        claimed, db=db, mailer=dataclasses.replace(mailer, renderer=renderer), now=MONDAY_TAIPEI_10
    )
    assert result.outcomes == {skip_id: Outcome.SKIPPED, variant_id: Outcome.SENT}
    assert renderer.variants == ["b"]
    rows = {r["id"]: r for r in await _rows(db, select(deliveries).where(deliveries.c.id.in_(claimed)))}
    assert (rows[skip_id]["status"], rows[skip_id]["last_error"]) == ("skipped", None)
    assert (rows[variant_id]["status"], rows[variant_id]["variant"]) == ("sent", "b")
    touches = {
        t["kind"]: t
        for t in await _rows(db, select(touchpoints).where(touchpoints.c.delivery_id.in_(claimed)))
    }
    assert touches["step_skipped"]["detail"] == {"reason": "not_opened: welcome"}
    assert touches["email_sent"]["detail"]["variant"] == "b"


async def test_a_task_step_hands_the_rep_an_alert_instead_of_an_email(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    await import_leads(db, [_lead("fit@example.com")], now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    claimed = await _make_due_and_claim(db, "rep-call", MONDAY_TAIPEI_10)
    result = await deliver_batch(claimed, db=db, mailer=mailer, now=MONDAY_TAIPEI_10)
    [task_id] = [d for d, o in result.outcomes.items() if o is Outcome.TASK]
    assert len(result.alert_ids) == 1  # for the send_alert actor
    assert len(transport.sent) == 1  # the welcome email; the task sends none
    kinds = [
        t["kind"] for t in await _rows(db, select(touchpoints).where(touchpoints.c.delivery_id == task_id))
    ]
    assert kinds == ["task_created"]


async def test_a_relay_answering_421_over_smtp_pauses_the_domain(
    db: Database, catalog: Catalog, mailer: Mailer, smtp_sink: SmtpSink
) -> None:
    transport = SmtpTransport(SmtpConfig.from_url(smtp_sink.url, timeout_s=5, pool_size=2))
    smtp = dataclasses.replace(mailer, transport=transport)
    [delivery_id] = await _claimed(db, catalog, ["fit@busy.example"], MONDAY_TAIPEI_10)
    smtp_sink.answer_next("421 4.7.0 try again later", at="RCPT")
    try:
        result = await deliver_batch([delivery_id], db=db, mailer=smtp, now=MONDAY_TAIPEI_10)
    finally:
        await transport.aclose()
    assert result.outcomes == {delivery_id: Outcome.RETRY}
    async with db.transaction() as conn:
        assert await paused_domains(conn, MONDAY_TAIPEI_10) == {"busy.example"}
    assert smtp_sink.messages == []


async def test_a_slow_reply_does_not_hold_back_the_committed_outcomes_of_the_other_messages(
    db: Database, catalog: Catalog, mailer: Mailer, smtp_sink: SmtpSink
) -> None:
    transport = SmtpTransport(SmtpConfig.from_url(smtp_sink.url, timeout_s=10, pool_size=3))
    smtp = dataclasses.replace(mailer, transport=transport)
    claimed = await _claimed(db, catalog, [f"lead{i}@example.com" for i in range(3)], MONDAY_TAIPEI_10)
    smtp_sink.stall_after_data(2.0)  # the first message's 250 comes late
    batch = asyncio.create_task(deliver_batch(claimed, db=db, mailer=smtp, now=MONDAY_TAIPEI_10))
    seen: list[str] = []
    try:
        while not batch.done() and seen != ["sending", "sent", "sent"]:
            rows = await _rows(db, select(deliveries.c.status).where(deliveries.c.id.in_(claimed)))
            seen = sorted(r["status"] for r in rows)
            await asyncio.sleep(0.02)
        await batch
    finally:
        await transport.aclose()
    # The two quick ones were committed while the slow one was still waiting for its reply
    assert seen == ["sending", "sent", "sent"]
    assert set(batch.result().outcomes.values()) == {Outcome.SENT}


async def test_a_worker_stopped_mid_batch_leaves_the_messages_it_never_started_claimed(
    db: Database, catalog: Catalog, mailer: Mailer
) -> None:
    # Given a batch of 4, one message at a time (none moved to `sending` ahead of its turn), and a server
    # that never answers the first
    hanging = HangingTransport()
    one_at_a_time = dataclasses.replace(
        mailer, transport=hanging, send_slots=asyncio.Semaphore(1), mark_ahead=0
    )
    claimed = await _claimed(db, catalog, [f"lead{i}@example.com" for i in range(4)], MONDAY_TAIPEI_10)
    batch = asyncio.create_task(deliver_batch(claimed, db=db, mailer=one_at_a_time, now=MONDAY_TAIPEI_10))
    await hanging.started.wait()
    # When the worker stops there (a kill leaves the same rows: each state below was committed)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    # Then only the message on the wire is `sending` (reported `unknown` later); the rest are `claimed`,
    # to be claimed again when their lease lapses, and sent
    rows = await _rows(
        db, select(deliveries.c.status, deliveries.c.attempts).where(deliveries.c.id.in_(claimed))
    )
    assert sorted((r["status"], r["attempts"]) for r in rows) == [("claimed", 0)] * 3 + [("sending", 1)]
    later = MONDAY_TAIPEI_10 + LEASE
    again = (await dispatch(db, later, lease=LEASE, limit=10, stale_after=STALE)).claimed
    assert len(again) == 3


class HangingTransport:
    """A `Transport` whose server takes the message and never answers."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.message: OutgoingEmail | None = None

    async def send(self, message: OutgoingEmail) -> SendReceipt:
        self.started.set()
        self.message = message
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


class VariantRenderer:
    """A `Renderer` that renders variants as the base step and records which it was asked for."""

    def __init__(self, inner: Renderer) -> None:
        self.inner = inner
        self.variants: list[str | None] = []

    def render_step(
        self, campaign_id: str, step_id: str, context: Mapping[str, Any], variant: str | None = None
    ) -> RenderedEmail:
        self.variants.append(variant)
        return self.inner.render_step(campaign_id, step_id, context)


async def _outcomes_by_address(db: Database, outcomes: Mapping[int, Outcome]) -> dict[str, Outcome]:
    rows = await _rows(
        db,
        select(deliveries.c.id, leads.c.email)
        .join(leads, leads.c.id == deliveries.c.lead_id)
        .where(deliveries.c.id.in_(list(outcomes))),
    )
    return {r["email"]: outcomes[r["id"]] for r in rows}


def _with_window(catalog: Catalog, campaign_id: str, **window: Any) -> Catalog:
    """The catalog with one campaign's send window changed (say, to skip public holidays)."""
    campaign = catalog.campaigns[campaign_id]
    changed = dataclasses.replace(campaign, send_window=dataclasses.replace(campaign.send_window, **window))
    return dataclasses.replace(
        catalog, campaigns=MappingProxyType({**catalog.campaigns, campaign_id: changed})
    )


async def _enrolled_delivery(db: Database, catalog: Catalog, lead: dict[str, str], at: datetime) -> int:
    await import_leads(db, [lead], now=at)
    await enroll(db, catalog, at)
    [row] = await _rows(db, select(deliveries.c.id).where(deliveries.c.step_id == "welcome"))
    return int(row["id"])


async def test_a_touch_whose_window_closed_unsent_is_skipped_with_its_reason_when_the_campaign_says_so(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    skipping = dataclasses.replace(mailer, catalog=_with_window(catalog, "saas-nurture", missed="skip"))
    welcome = await _enrolled_delivery(db, catalog, _lead("late@example.com"), MONDAY_TAIPEI_10)
    # Given the welcome, due Monday 10:00 in Taipei, taken up only at 18:00 (the window closed at 17:00)
    evening = MONDAY_TAIPEI_10 + timedelta(hours=8)
    assert welcome in (await dispatch(db, evening, lease=LEASE, limit=1000, stale_after=STALE)).claimed
    result = await deliver_batch([welcome], db=db, mailer=skipping, now=evening)
    # Then it is skipped, never sent, and the reason is on the lead's timeline
    assert result.outcomes == {welcome: Outcome.SKIPPED}
    assert transport.sent == []
    [touch] = await _rows(db, select(touchpoints).where(touchpoints.c.kind == "step_skipped"))
    assert "missed its send window of 2026-03-02" in touch["detail"]["reason"]


async def test_a_touch_whose_window_closed_waits_for_the_next_window_by_default(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    welcome = await _enrolled_delivery(db, catalog, _lead("late@example.com"), MONDAY_TAIPEI_10)
    evening = MONDAY_TAIPEI_10 + timedelta(hours=8)
    await dispatch(db, evening, lease=LEASE, limit=1000, stale_after=STALE)
    assert (await deliver_batch([welcome], db=db, mailer=mailer, now=evening)).outcomes == {
        welcome: Outcome.DEFERRED
    }
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == welcome))
    assert row["due_at"] == datetime(2026, 3, 3, 1, 0, tzinfo=UTC)  # Tuesday 09:00 in Taipei
    assert transport.sent == []


async def test_a_public_holiday_of_the_leads_country_is_not_a_send_day_when_the_campaign_skips_them(
    db: Database, catalog: Catalog, mailer: Mailer, transport: RecordingTransport
) -> None:
    holidays_off = dataclasses.replace(
        mailer, catalog=_with_window(catalog, "saas-nurture", skip_holidays=True)
    )
    # Given a Taiwanese lead whose touch is taken up at 10:00 on New Year's Day, a public holiday there
    new_year = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    welcome = await _enrolled_delivery(db, catalog, {**_lead("tw@example.com"), "country": "TW"}, new_year)
    await dispatch(db, new_year, lease=LEASE, limit=1000, stale_after=STALE)
    result = await deliver_batch([welcome], db=db, mailer=holidays_off, now=new_year)
    # Then nothing goes out that day: it waits for the next send day's window
    assert result.outcomes == {welcome: Outcome.DEFERRED}
    assert transport.sent == []
    [row] = await _rows(db, select(deliveries).where(deliveries.c.id == welcome))
    local = row["due_at"].astimezone(ZoneInfo("Asia/Taipei"))
    assert local.date() > new_year.date()
    assert local.date() not in holidays_off.catalog.days_off(
        holidays_off.catalog.campaigns["saas-nurture"], "TW"
    )
    assert (local.hour, local.minute) == (9, 0)
