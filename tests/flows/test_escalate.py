"""Rescore and alert delivery on a real database (SQLite and PostgreSQL), with recording alert sinks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import select

from nurture.catalog import Catalog
from nurture.core.context import Rep
from nurture.core.events import InboundEvent
from nurture.core.scoring import DEFAULT_RULES, Thresholds
from nurture.db.engine import Database
from nurture.db.queries.alerts import insert_alert
from nurture.db.queries.tables import alerts, deliveries, enrollments, leads, touchpoints
from nurture.errors import AlertDeliveryError
from nurture.flows.alert import deliver_alert, find_stalled_alerts
from nurture.flows.engage import record_event
from nurture.flows.erase import erase_lead
from nurture.flows.escalate import find_unscored_leads, rescore, rescore_all
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from tests.fakes import RecordingAlertSink

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei
BASE_URL = "https://nurture.example.com"
OWNER = "lin.chen@acmeflow.example"


async def _rows(db: Database, stmt: Any) -> list[dict[str, Any]]:
    async with db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _add_lead(db: Database, email: str, **fields: str) -> int:
    row = {"email": email, "grade": "nurturable", "timezone": "Asia/Taipei", **fields}
    await import_leads(db, [row], now=NOW - timedelta(days=1))
    [found] = await _rows(db, select(leads.c.id).where(leads.c.email == email))
    return int(found["id"])


async def _add_event(db: Database, lead_id: int, type_: str, at: datetime, *, url: str | None = None) -> int:
    """Record an event the way the tracking web does, received at the instant it happened."""
    recorded = await record_event(
        db, InboundEvent(lead_id=lead_id, type=type_, occurred_at=at, url=url), now=at
    )
    assert recorded is not None
    return recorded.event_id


async def _lead(db: Database, lead_id: int) -> dict[str, Any]:
    [row] = await _rows(db, select(leads).where(leads.c.id == lead_id))
    return row


async def _alerts(db: Database, lead_id: int | None = None) -> list[dict[str, Any]]:
    stmt = select(alerts).order_by(alerts.c.id)
    if lead_id is not None:
        stmt = stmt.where(alerts.c.lead_id == lead_id)
    return await _rows(db, stmt)


async def _kinds(db: Database, lead_id: int) -> list[str]:
    stmt = select(touchpoints.c.kind).where(touchpoints.c.lead_id == lead_id).order_by(touchpoints.c.id)
    return [r["kind"] for r in await _rows(db, stmt)]


def _with_reps(catalog: Catalog, *reps: Rep) -> Catalog:
    return dataclasses.replace(catalog, reps=MappingProxyType({rep.email: rep for rep in reps}))


async def test_crossing_mql_moves_the_stage_exits_the_campaign_and_cancels_pending_deliveries(
    db: Database, catalog: Catalog
) -> None:
    # Given a lead enrolled in the nurture campaign, with its steps pending
    lead_id = await _add_lead(db, "fit@example.com", owner=OWNER)
    assert await enroll(db, catalog, NOW) == 1
    # When it books a meeting (50 points: the mql threshold) and is rescored
    await _add_event(db, lead_id, "meeting_booked", NOW)
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    # Then it is an MQL, out of its campaign, with nothing left to send
    assert result is not None
    assert (result.score_before, result.score_after) == (0, 50)
    assert result.stage_change is not None
    assert result.stage_change.after == "mql"
    lead = await _lead(db, lead_id)
    assert (lead["stage"], lead["score"], lead["score_updated_at"]) == ("mql", 50, NOW)
    [enrollment] = await _rows(db, select(enrollments))
    assert (enrollment["state"], enrollment["exit_reason"], enrollment["ended_at"]) == (
        "exited",
        "qualified",
        NOW,
    )
    statuses = {r["status"] for r in await _rows(db, select(deliveries.c.status))}
    assert statuses == {"cancelled"}
    assert await _kinds(db, lead_id) == [
        "enrolled",
        "meeting_booked",
        "score_change",
        "stage_change",
        "exited",
        "alert",
    ]
    [stage_change] = await _rows(db, select(touchpoints.c.detail).where(touchpoints.c.kind == "stage_change"))
    assert stage_change["detail"]["before"] == "lead"
    assert stage_change["detail"]["after"] == "mql"
    # And its rep hears about it once
    [alert] = await _alerts(db, lead_id)
    assert (alert["trigger"], alert["owner"], alert["status"]) == ("mql", OWNER, "pending")
    assert result.alert_ids == (alert["id"],)


async def test_crossing_hot_and_mql_at_once_makes_one_alert_that_lists_both(
    db: Database, catalog: Catalog
) -> None:
    lead_id = await _add_lead(db, "hot@example.com", owner=OWNER)
    await _add_event(db, lead_id, "meeting_booked", NOW - timedelta(minutes=5))
    await _add_event(db, lead_id, "proposal_view", NOW - timedelta(minutes=4))
    await _add_event(db, lead_id, "form_submit", NOW - timedelta(minutes=3))
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert result is not None
    assert result.score_after >= DEFAULT_RULES.thresholds.hot
    [alert] = await _alerts(db, lead_id)
    assert alert["trigger"] == "hot"
    assert "crossed hot" in alert["reason"]
    assert "crossed mql" in alert["reason"]
    assert (alert["score_before"], alert["score_after"]) == (0, result.score_after)
    assert alert["detail"]["triggers"] == ["hot", "mql"]


async def test_the_cooldown_holds_back_a_second_alert_until_it_has_passed(
    db: Database, catalog: Catalog
) -> None:
    # Given a lead whose rep was alerted a moment ago
    lead_id = await _add_lead(db, "busy@example.com", owner=OWNER)
    await _add_event(db, lead_id, "meeting_booked", NOW)
    await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert len(await _alerts(db, lead_id)) == 1
    # When it visits the pricing page (a moment) within the cooldown
    later = NOW + timedelta(hours=2)
    await _add_event(db, lead_id, "page_visit", later, url="https://acme.example/pricing")
    result = await rescore(lead_id, db=db, catalog=catalog, now=later)
    # Then no second alert is raised
    assert result is not None
    assert result.alert_ids == ()
    assert len(await _alerts(db, lead_id)) == 1
    # But once the cooldown has passed, a new moment alerts again
    after = NOW + DEFAULT_RULES.alert_cooldown + timedelta(hours=1)
    await _add_event(db, lead_id, "page_visit", after, url="https://acme.example/pricing/enterprise")
    result = await rescore(lead_id, db=db, catalog=catalog, now=after)
    assert result is not None
    assert len(result.alert_ids) == 1
    assert [a["trigger"] for a in await _alerts(db, lead_id)] == ["mql", "moment:pricing_visit"]


async def test_a_rep_task_from_a_campaign_does_not_hold_back_a_hot_lead_alert(
    db: Database, catalog: Catalog
) -> None:
    # Given a lead whose rep was handed a campaign task ("call this lead") a moment ago
    lead_id = await _add_lead(db, "tasked@example.com", owner=OWNER)
    async with db.transaction() as conn:
        await insert_alert(
            conn,
            lead_id=lead_id,
            trigger="task:rep-call",
            reason="Call the lead",
            score_before=0,
            score_after=0,
            owner=OWNER,
            created_at=NOW - timedelta(minutes=5),
            detail={},
        )
    # When the lead books a meeting
    await _add_event(db, lead_id, "meeting_booked", NOW)
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    # Then the hot-lead alert is raised all the same: the task started no cooldown
    assert result is not None
    assert len(result.alert_ids) == 1
    assert [a["trigger"] for a in await _alerts(db, lead_id)] == ["task:rep-call", "mql"]


async def test_a_moment_alerts_whatever_the_score_and_only_once(db: Database, catalog: Catalog) -> None:
    # Given a cold lead that visits the pricing page
    lead_id = await _add_lead(db, "cold@example.com", owner=OWNER)
    event_id = await _add_event(db, lead_id, "page_visit", NOW, url="https://acme.example/pricing")
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    # Then its rep is alerted although the score is far below mql
    assert result is not None
    assert result.score_after < DEFAULT_RULES.thresholds.mql
    assert result.stage_change is None
    [alert] = await _alerts(db, lead_id)
    assert alert["trigger"] == "moment:pricing_visit"
    assert "https://acme.example/pricing" in alert["reason"]
    assert alert["detail"]["events"] == [event_id]
    # And a later rescore (past the cooldown) does not count the same visit as a new moment
    later = NOW + timedelta(days=3)
    await _add_event(db, lead_id, "page_visit", later, url="https://acme.example/blog/ops")
    result = await rescore(lead_id, db=db, catalog=catalog, now=later)
    assert result is not None
    assert result.alert_ids == ()
    assert len(await _alerts(db, lead_id)) == 1


async def test_a_proposal_reopened_after_weeks_of_silence_alerts(db: Database, catalog: Catalog) -> None:
    lead_id = await _add_lead(db, "proposal@example.com", owner=OWNER)
    await _add_event(db, lead_id, "proposal_view", NOW - timedelta(days=20))
    await rescore(lead_id, db=db, catalog=catalog, now=NOW - timedelta(days=20))
    await _add_event(db, lead_id, "proposal_view", NOW)
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert result is not None
    assert len(result.alert_ids) == 1
    assert [a["trigger"] for a in await _alerts(db, lead_id)] == ["moment:proposal_reopened"]


async def test_owners_are_assigned_round_robin_among_active_reps_only(db: Database, catalog: Catalog) -> None:
    # Given three reps, one of them away, and three ownerless leads that turn hot
    reps = (
        Rep(email="a@acme.example", name="A"),
        Rep(email="away@acme.example", name="Away", active=False),
        Rep(email="c@acme.example", name="C"),
    )
    catalog = _with_reps(catalog, *reps)
    lead_ids = [await _add_lead(db, f"lead{i}@example.com") for i in range(3)]
    owned = await _add_lead(db, "owned@example.com", owner=OWNER)
    # When each is rescored (the owned lead in between)
    for lead_id in (lead_ids[0], owned, lead_ids[1], lead_ids[2]):
        await _add_event(db, lead_id, "meeting_booked", NOW)
        await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    # Then the active reps take turns, the rep who is away gets none, and an owner is kept
    owners = [(await _lead(db, i))["owner"] for i in lead_ids]
    assert owners == ["a@acme.example", "c@acme.example", "a@acme.example"]
    assert (await _lead(db, owned))["owner"] == OWNER
    assert [a["owner"] for a in await _alerts(db)] == [
        "a@acme.example",
        OWNER,
        "c@acme.example",
        "a@acme.example",
    ]
    assert "owner_assigned" in await _kinds(db, lead_ids[0])


async def test_a_lead_nobody_can_own_is_alerted_without_an_owner(db: Database, catalog: Catalog) -> None:
    catalog = _with_reps(catalog, Rep(email="away@acme.example", name="Away", active=False))
    lead_id = await _add_lead(db, "orphan@example.com")
    await _add_event(db, lead_id, "meeting_booked", NOW)
    await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    [alert] = await _alerts(db, lead_id)
    assert alert["owner"] is None
    assert (await _lead(db, lead_id))["owner"] is None


async def test_invalid_leads_are_scored_but_never_alerted(db: Database, catalog: Catalog) -> None:
    lead_id = await _add_lead(db, "invalid@example.com", grade="invalid", owner=OWNER)
    await _add_event(db, lead_id, "meeting_booked", NOW)
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert result is not None
    assert result.score_after == 50
    assert await _alerts(db, lead_id) == []


async def test_rescoring_an_unknown_lead_does_nothing(db: Database, catalog: Catalog) -> None:
    assert await rescore(424242, db=db, catalog=catalog, now=NOW) is None


async def _hot_alert(db: Database, catalog: Catalog, email: str = "hot@example.com") -> tuple[int, int]:
    lead_id = await _add_lead(
        db,
        email,
        owner=OWNER,
        first_name="Mei",
        last_name="Lin",
        company="Example Logistics",
        source="webinar",
    )
    await _add_event(db, lead_id, "page_visit", NOW - timedelta(minutes=1), url="https://acme.example/demo")
    await _add_event(db, lead_id, "meeting_booked", NOW)
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert result is not None
    [alert_id] = result.alert_ids
    return lead_id, alert_id


async def test_deliver_alert_sends_to_every_sink_once_and_marks_it_delivered(
    db: Database, catalog: Catalog
) -> None:
    # Given a pending alert for a lead whose owner has a notification URL
    catalog = _with_reps(
        catalog, Rep(email=OWNER, name="Lin Chen", notify_urls=("json://hooks.example/lin",))
    )
    lead_id, alert_id = await _hot_alert(db, catalog)
    email, hooks = RecordingAlertSink("email"), RecordingAlertSink("apprise")
    # When it is delivered, and the broker hands the same message over again
    assert await deliver_alert(
        alert_id, db=db, sinks=[email, hooks], catalog=catalog, base_url=BASE_URL, now=NOW
    )
    assert not await deliver_alert(
        alert_id, db=db, sinks=[email, hooks], catalog=catalog, base_url=BASE_URL, now=NOW
    )
    # Then each sink got it once, with the owner's URLs, and it is recorded as delivered
    assert len(email.sent) == len(hooks.sent) == 1
    message, notify_urls = hooks.sent[0]
    assert notify_urls == ("json://hooks.example/lin",)
    assert (message.owner_email, message.owner_name) == (OWNER, "Lin Chen")
    assert (message.lead_name, message.lead_company, message.lead_source) == (
        "Mei Lin",
        "Example Logistics",
        "webinar",
    )
    assert message.timeline_url == f"{BASE_URL}/leads/{lead_id}"
    assert ("page_visit", "https://acme.example/demo") in [(e.kind, e.subject) for e in message.recent]
    assert "score_change" not in [e.kind for e in message.recent]
    assert message.timeline_url in message.text()
    [alert] = await _alerts(db, lead_id)
    assert (alert["status"], alert["attempts"], alert["delivered_at"]) == ("delivered", 1, NOW)
    assert alert["detail"]["delivered_by"] == ["apprise", "email"]


async def test_a_failing_sink_leaves_the_alert_pending_and_a_retry_skips_the_sinks_that_delivered(
    db: Database, catalog: Catalog
) -> None:
    lead_id, alert_id = await _hot_alert(db, catalog)
    email, hooks = RecordingAlertSink("email"), RecordingAlertSink("apprise")
    hooks.fail_next()
    # When one sink fails, the attempt is recorded and the error raised for the broker to retry
    with pytest.raises(AlertDeliveryError, match="apprise is down"):
        await deliver_alert(
            alert_id, db=db, sinks=[email, hooks], catalog=catalog, base_url=BASE_URL, now=NOW
        )
    [alert] = await _alerts(db, lead_id)
    assert (alert["status"], alert["attempts"]) == ("pending", 1)
    assert "apprise is down" in alert["last_error"]
    # And the retry sends only to the sink that failed
    later = NOW + timedelta(minutes=1)
    assert await deliver_alert(
        alert_id, db=db, sinks=[email, hooks], catalog=catalog, base_url=BASE_URL, now=later
    )
    assert (len(email.sent), len(hooks.sent)) == (1, 1)
    [alert] = await _alerts(db, lead_id)
    assert (alert["status"], alert["attempts"], alert["last_error"], alert["delivered_at"]) == (
        "delivered",
        2,
        None,
        later,
    )


async def test_an_alert_is_marked_failed_on_its_last_attempt_and_not_raised(
    db: Database, catalog: Catalog
) -> None:
    lead_id, alert_id = await _hot_alert(db, catalog)
    sink = RecordingAlertSink("email")
    sink.fail_next(times=2)
    with pytest.raises(AlertDeliveryError):
        await deliver_alert(
            alert_id, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=NOW, max_attempts=2
        )
    assert not await deliver_alert(
        alert_id, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=NOW, max_attempts=2
    )
    [alert] = await _alerts(db, lead_id)
    assert (alert["status"], alert["attempts"]) == ("failed", 2)
    # A failed alert is not tried again
    assert not await deliver_alert(alert_id, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=NOW)
    assert sink.sent == []


async def test_deliver_alert_ignores_an_unknown_alert(db: Database, catalog: Catalog) -> None:
    sink = RecordingAlertSink()
    assert not await deliver_alert(424242, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=NOW)
    assert sink.sent == []


async def test_rescore_all_applies_new_rules_records_stage_changes_and_raises_no_alert(
    db: Database, catalog: Catalog
) -> None:
    # Given leads scored under the default rules: one at 30 points, one with no events
    warm = await _add_lead(db, "warm@example.com", owner=OWNER)
    quiet = await _add_lead(db, "quiet@example.com", owner=OWNER)
    await _add_event(db, warm, "proposal_view", NOW - timedelta(hours=1))
    await _add_event(db, warm, "email_click", NOW - timedelta(hours=1))
    await _add_event(db, warm, "email_click", NOW - timedelta(minutes=30))
    await rescore(warm, db=db, catalog=catalog, now=NOW)
    assert (await _lead(db, warm))["stage"] == "lead"
    # When marketing lowers the mql threshold and every score is recomputed
    lowered = dataclasses.replace(
        catalog, scoring=dataclasses.replace(DEFAULT_RULES, thresholds=Thresholds(25, 80))
    )
    progress: list[tuple[int, int]] = []
    summary = await rescore_all(
        db=db, catalog=lowered, now=NOW, batch_size=1, on_progress=lambda *p: progress.append(p)
    )
    # Then the warm lead is an MQL now, without any alert, and the quiet one did not change
    assert (summary.leads, summary.stages_changed) == (2, 1)
    assert (await _lead(db, warm))["stage"] == "mql"
    assert (await _lead(db, quiet))["stage"] == "lead"
    assert await _alerts(db) == []
    assert progress == [(1, 2), (2, 2)]
    assert "stage_change" in await _kinds(db, warm)


async def test_rescore_all_leaves_an_unprocessed_moment_to_the_rescore_its_event_queued(
    db: Database, catalog: Catalog
) -> None:
    # Given a pricing visit whose rescore is still queued when an operator runs rescore --all
    lead_id = await _add_lead(db, "pricing@example.com", owner=OWNER)
    await rescore(lead_id, db=db, catalog=catalog, now=NOW - timedelta(days=1))
    await _add_event(db, lead_id, "page_visit", NOW, url="https://acme.example/pricing")
    summary = await rescore_all(db=db, catalog=catalog, now=NOW + timedelta(minutes=5))
    assert summary.scores_changed == 1
    assert await _alerts(db) == []
    # When the queued rescore runs
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW + timedelta(minutes=6))
    # Then the moment still alerts
    assert result is not None
    assert len(result.alert_ids) == 1


async def test_rescore_all_takes_in_old_unscored_events_so_their_moments_never_alert_late(
    db: Database, catalog: Catalog
) -> None:
    # Given a pricing visit two days old that was never scored (its rescore was lost)
    lead_id = await _add_lead(db, "stale@example.com", owner=OWNER)
    await _add_event(db, lead_id, "page_visit", NOW - timedelta(days=2), url="https://acme.example/pricing")
    await rescore_all(db=db, catalog=catalog, now=NOW)
    assert (await _lead(db, lead_id))["score_updated_at"] == NOW
    # When the lead's next event is scored
    later = NOW + timedelta(hours=1)
    await _add_event(db, lead_id, "email_click", later)
    result = await rescore(lead_id, db=db, catalog=catalog, now=later)
    # Then the old visit raises no alert
    assert result is not None
    assert result.alert_ids == ()


async def test_pending_alerts_nobody_touched_for_a_while_are_found_for_the_scheduler(
    db: Database, catalog: Catalog
) -> None:
    # Given one alert never attempted (its message lost) and one whose last attempt failed just now
    _, lost = await _hot_alert(db, catalog, "lost@example.com")
    _, retrying = await _hot_alert(db, catalog, "retrying@example.com")
    sink = RecordingAlertSink()
    sink.fail_next()
    later = NOW + timedelta(hours=1)
    with pytest.raises(AlertDeliveryError):
        await deliver_alert(retrying, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=later)
    # Then only the lost one is stalled; nothing is, before the quiet time has passed
    assert await find_stalled_alerts(db=db, now=later + timedelta(minutes=1)) == [lost]
    assert await find_stalled_alerts(db=db, now=NOW + timedelta(minutes=1)) == []
    assert await find_stalled_alerts(db=db, now=later + timedelta(hours=1)) == [lost, retrying]


async def test_an_event_whose_rescore_was_lost_is_found_again_until_it_is_scored(
    db: Database, catalog: Catalog
) -> None:
    # Given a pricing visit recorded while the broker was down (its re-score never enqueued)
    lead_id = await _add_lead(db, "lost@example.com", owner=OWNER)
    other = await _add_lead(db, "scored@example.com", owner=OWNER)
    await _add_event(db, lead_id, "page_visit", NOW, url="https://acmeflow.example/pricing")
    await _add_event(db, other, "page_visit", NOW, url="https://acmeflow.example/blog/x")
    await rescore(other, db=db, catalog=catalog, now=NOW)
    # When the scheduler looks, it leaves it alone at first (its queued re-score may still be coming)
    assert await find_unscored_leads(db=db, now=NOW + timedelta(seconds=10)) == []
    # Then after the quiet period only the unscored lead is found, and once re-scored it is not again
    assert await find_unscored_leads(db=db, now=NOW + timedelta(minutes=2)) == [lead_id]
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW + timedelta(minutes=2))
    assert result is not None
    assert [a["trigger"] for a in await _alerts(db, lead_id)] == ["moment:pricing_visit"]
    assert await find_unscored_leads(db=db, now=NOW + timedelta(minutes=5)) == []


async def test_a_stored_repeat_is_never_found_for_a_rescore(db: Database, catalog: Catalog) -> None:
    # Given a lead scored after its pricing visit, and the same visit again within the replay window
    lead_id = await _add_lead(db, "twice@example.com", owner=OWNER)
    await _add_event(db, lead_id, "page_visit", NOW, url="https://acmeflow.example/pricing")
    await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    repeat = await record_event(
        db,
        InboundEvent(
            lead_id, "page_visit", NOW + timedelta(minutes=1), url="https://acmeflow.example/pricing"
        ),
        now=NOW + timedelta(minutes=1),
    )
    assert repeat is not None
    assert repeat.repeat  # stored, and it enqueued no re-score
    # Then the scheduler does not take the repeat for an event whose re-score was lost
    assert await find_unscored_leads(db=db, now=NOW + timedelta(minutes=3)) == []
    # (the control: a new signal after the scoring is found)
    await _add_event(
        db, lead_id, "page_visit", NOW + timedelta(minutes=2), url="https://acmeflow.example/demo"
    )
    assert await find_unscored_leads(db=db, now=NOW + timedelta(minutes=4)) == [lead_id]


async def test_an_erased_lead_with_unscored_events_is_never_found_for_a_rescore(db: Database) -> None:
    lead_id = await _add_lead(db, "mei@example.com")
    await _add_event(db, lead_id, "page_visit", NOW, url="https://acmeflow.example/pricing")
    assert await find_unscored_leads(db=db, now=NOW + timedelta(minutes=2)) == [lead_id]  # the control

    await erase_lead(db, "mei@example.com", now=NOW + timedelta(minutes=1))

    assert await find_unscored_leads(db=db, now=NOW + timedelta(minutes=2)) == []


# --- the handoff and the cooldown -----------------------------------------------------------------------

PRICING = "https://acme.example/pricing"


async def _lead_at_21_after_a_pricing_visit(db: Database, catalog: Catalog, email: str) -> int:
    """A lead at 6 points visits the pricing page (15, a moment): one pending moment alert, score 21."""
    lead_id = await _add_lead(db, email, owner=OWNER)
    await _add_event(db, lead_id, "page_visit", NOW - timedelta(seconds=2), url="https://acme.example/a")
    await _add_event(db, lead_id, "page_visit", NOW - timedelta(seconds=1), url="https://acme.example/b")
    await _add_event(db, lead_id, "page_visit", NOW, url=PRICING)
    result = await rescore(lead_id, db=db, catalog=catalog, now=NOW)
    assert result is not None
    assert result.score_after == 21
    assert len(result.alert_ids) == 1
    return lead_id


async def test_an_mql_crossing_17_ms_after_a_moment_alert_revises_it_and_the_rep_gets_mql_at_71(
    db: Database, catalog: Catalog
) -> None:
    # Given a pricing-page moment alert still pending (score 21)
    lead_id = await _lead_at_21_after_a_pricing_visit(db, catalog, "moment-then-mql@example.com")
    [moment_alert] = await _alerts(db, lead_id)
    # When the lead books a meeting 17 ms later and crosses MQL inside the cooldown
    later = NOW + timedelta(milliseconds=17)
    await _add_event(db, lead_id, "meeting_booked", later)
    result = await rescore(lead_id, db=db, catalog=catalog, now=later)
    assert result is not None
    assert (result.score_after, result.stage_change is not None) == (71, True)
    # Then the pending alert carries the handoff (its queued message sends it), no second alert is made
    assert result.alert_ids == ()
    [alert] = await _alerts(db, lead_id)
    assert alert["id"] == moment_alert["id"]
    assert (alert["trigger"], alert["score_after"]) == ("mql", 71)
    assert alert["detail"]["triggers"] == ["mql", "moment:pricing_visit"]
    assert "alert_revised" in await _kinds(db, lead_id)
    # And the rep gets one alert that says MQL at 71, and why
    sink = RecordingAlertSink()
    assert await deliver_alert(
        alert["id"], db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=later
    )
    [message] = sink.alerts
    assert message.title() == "New MQL: moment-then-mql@example.com (score 71, MQL)"
    assert "crossed mql" in message.reason
    assert "pricing_visit" in message.reason


async def test_an_mql_crossing_after_the_moment_alert_was_sent_raises_an_alert_that_updates_it(
    db: Database, catalog: Catalog
) -> None:
    # Given a pricing-page moment alert already delivered to the rep (score 21)
    lead_id = await _lead_at_21_after_a_pricing_visit(db, catalog, "sent-then-mql@example.com")
    [moment_alert] = await _alerts(db, lead_id)
    sink = RecordingAlertSink()
    await deliver_alert(moment_alert["id"], db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=NOW)
    # When the lead crosses MQL an hour later, inside the cooldown
    later = NOW + timedelta(hours=1)
    await _add_event(db, lead_id, "meeting_booked", later)
    result = await rescore(lead_id, db=db, catalog=catalog, now=later)
    # Then a new alert is raised for the handoff, marked as updating the one sent
    assert result is not None
    [alert_id] = result.alert_ids
    first, second = await _alerts(db, lead_id)
    assert (second["id"], second["trigger"], second["detail"]["updates"]) == (alert_id, "mql", first["id"])
    await deliver_alert(alert_id, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=later)
    assert [m.title() for m in sink.alerts] == [
        "Buying signal: sent-then-mql@example.com (score 21, lead)",
        "Now MQL: sent-then-mql@example.com (score 71, MQL)",
    ]
    assert f"Updates alert {first['id']}" in sink.alerts[1].text()


async def test_a_moment_held_back_by_the_cooldown_is_on_the_timeline(db: Database, catalog: Catalog) -> None:
    lead_id = await _lead_at_21_after_a_pricing_visit(db, catalog, "held@example.com")
    later = NOW + timedelta(hours=2)
    await _add_event(db, lead_id, "page_visit", later, url=PRICING + "/enterprise")
    result = await rescore(lead_id, db=db, catalog=catalog, now=later)
    assert result is not None
    assert result.alert_ids == ()
    [first] = await _alerts(db, lead_id)
    [held] = await _rows(db, select(touchpoints.c.detail).where(touchpoints.c.kind == "alert_held"))
    assert held["detail"]["alert_id"] == first["id"]
    assert held["detail"]["triggers"] == ["moment:pricing_visit"]


class _HandoffWhileSending(RecordingAlertSink):
    """A sink during whose first send the lead books a meeting and is rescored: the race of 17 ms."""

    def __init__(self, db: Database, catalog: Catalog, lead_id: int, at: datetime) -> None:
        super().__init__()
        self._handoff: tuple[Database, Catalog, int, datetime] | None = (db, catalog, lead_id, at)

    async def send(self, alert: Any, *, notify_urls: Any) -> None:
        await super().send(alert, notify_urls=notify_urls)
        if self._handoff is not None:
            db, catalog, lead_id, at = self._handoff
            self._handoff = None
            await _add_event(db, lead_id, "meeting_booked", at)
            await rescore(lead_id, db=db, catalog=catalog, now=at)


async def test_a_handoff_that_revises_an_alert_while_it_is_sent_is_sent_at_once(
    db: Database, catalog: Catalog
) -> None:
    lead_id = await _lead_at_21_after_a_pricing_visit(db, catalog, "race@example.com")
    [alert] = await _alerts(db, lead_id)
    later = NOW + timedelta(milliseconds=17)
    sink = _HandoffWhileSending(db, catalog, lead_id, later)
    assert await deliver_alert(
        alert["id"], db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=later
    )
    assert [m.title() for m in sink.alerts] == [
        "Buying signal: race@example.com (score 21, lead)",
        "New MQL: race@example.com (score 71, MQL)",
    ]
    [row] = await _alerts(db, lead_id)
    assert (row["status"], row["detail"]["revision"]) == ("delivered", 1)


class _ErasedWhileSending(RecordingAlertSink):
    """A sink that fails its first send, during which the alert's lead is erased."""

    def __init__(self, db: Database, email: str, at: datetime) -> None:
        super().__init__()
        self._erasure: tuple[Database, str, datetime] | None = (db, email, at)

    async def send(self, alert: Any, *, notify_urls: Any) -> None:
        if self._erasure is not None:
            db, email, at = self._erasure
            self._erasure = None
            await erase_lead(db, email, now=at)
            raise AlertDeliveryError(f"{self.name} is down")
        await super().send(alert, notify_urls=notify_urls)


async def test_an_alert_withdrawn_while_it_is_sent_stays_withdrawn_and_is_never_sent_again(
    db: Database, catalog: Catalog
) -> None:
    # Given a pending alert whose lead is erased while its first send fails
    lead_id, alert_id = await _hot_alert(db, catalog, "gone@example.com")
    sink = _ErasedWhileSending(db, "gone@example.com", NOW)
    # When that attempt is recorded, then it neither asks for a retry nor brings the alert back to pending
    assert not await deliver_alert(alert_id, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=NOW)
    [row] = await _alerts(db, lead_id)
    assert row["status"] == "withdrawn"
    # And neither a retry of its message nor the stalled-alert sweep ever sends it
    later = NOW + timedelta(hours=2)
    assert await find_stalled_alerts(db=db, now=later) == []
    assert not await deliver_alert(
        alert_id, db=db, sinks=[sink], catalog=catalog, base_url=BASE_URL, now=later
    )
    assert sink.alerts == []
