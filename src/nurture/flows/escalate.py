"""Re-score a lead from its event log, move its stage, and raise an alert when the lead is worth a call.

`rescore` reads and decides once, in one transaction with the lead's row locked: `core.scoring` computes the
score, `core.lifecycle` the stage change and the alert triggers; the flow writes the score, the touchpoints,
the exit from the lead's campaign and at most one `Alert` row, whose id it hands on to `flows.alert`.
`rescore_all` does it for every lead after `scoring.yaml` changed, without alerts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.catalog import Catalog
from nurture.core.context import Rep
from nurture.core.lifecycle import (
    AlertTrigger,
    alert_action,
    alert_triggers,
    assign_owner,
    stage_after_scoring,
)
from nurture.core.scoring import EngagementEvent, matched_moments, next_drop_at, score, score_as_of
from nurture.core.stages import StageChange, StagePath
from nurture.db.engine import Database
from nurture.db.queries.alerts import fetch_last_alert, insert_alert, revise_pending_alert
from nurture.db.queries.deliveries import append_touchpoint
from nurture.db.queries.enrollment import end_enrollment
from nurture.db.queries.leads import count_leads
from nurture.db.queries.scoring import (
    MOMENT,
    LoggedEvent,
    ScoringLead,
    fetch_active_enrollment,
    fetch_engagement_events,
    fetch_lead_ids,
    fetch_leads_with_unscored_events,
    fetch_moment_event_ids,
    lock_lead_for_scoring,
    next_round_robin,
    save_score,
    save_score_decay,
    set_lead_owner,
)
from nurture.db.queries.stages import LeadStageChange, change_stage

log = logging.getLogger(__name__)

QUALIFIED: Final = "qualified"
# An event row gets its received_at before its transaction commits, so one committed just after a rescore
# read the log can carry a received_at a little before that rescore's time. Events received this long before
# the last rescore are looked at again for moments; those that hit one already are recorded and skipped.
LATE_COMMIT_GRACE: Final = timedelta(minutes=5)
# How soon an event's own rescore normally runs: a rescore without alerts leaves newer events to it.
QUEUED_RESCORE_WINDOW: Final = timedelta(minutes=15)
# Engagement only mail makes: a suppressed lead (unsubscribed, bounced, complained) raises no alert with it.
MAIL_EVENT_TYPES: Final = frozenset({"email_open", "email_click"})


@dataclass(frozen=True, slots=True)
class RescoreResult:
    lead_id: int
    score_before: int
    score_after: int
    stage_change: StageChange | None
    alert_ids: tuple[int, ...]  # alerts to send: at most one per rescore


@dataclass(frozen=True, slots=True)
class RescoreSummary:
    leads: int
    scores_changed: int
    stages_changed: int


async def rescore(
    lead_id: int, *, db: Database, catalog: Catalog, now: datetime, send_alerts: bool = True
) -> RescoreResult | None:
    """Recompute `lead_id`'s score from its event log at `now`, apply the stage change, raise an alert.

    With `send_alerts=False` (`nurture rescore`: the rules changed, not the lead) stage changes and exits are
    recorded but no alert is raised; events that arrived in the last `QUEUED_RESCORE_WINDOW` and were not
    scored yet are left new for the rescore their arrival queued, so their moments still alert.

    An erased lead is not rescored (None, as for an unknown lead): nothing scores, assigns or alerts it. A
    suppressed lead's score and stage follow all its events, but its alerts only those that did not come
    through mail (`MAIL_EVENT_TYPES`, or anything from one of its emails' links): its site visits still
    reach its rep.

    Returns:
        What changed, with the ids of alerts to send; None for an unknown or erased lead.
    """
    rules = catalog.scoring
    async with db.transaction() as conn:
        lead = await lock_lead_for_scoring(conn, lead_id)
        if lead is None:
            log.info("rescore of an unknown or erased lead lead_id=%s", lead_id)
            return None
        lead = _as_of(lead, now, rules.half_life)  # the stored score decayed to now: what the lead was at
        logged = await fetch_engagement_events(conn, lead_id)
        breakdown = score([e.event for e in logged], rules, now)
        total = breakdown.total
        change = stage_after_scoring(lead.stage, total, rules.thresholds)
        # Without alerts, events that just arrived stay new: the rescore their arrival queued alerts on them.
        queued = any(
            _received_since(e, lead.score_updated_at) and e.received_at > now - QUEUED_RESCORE_WINDOW
            for e in logged
        )
        scored_at = now if send_alerts or not queued else None
        await _record_score(
            conn, lead, total, change, scored_at=scored_at, now=now, recomputed=not send_alerts
        )
        drops_at = next_drop_at(breakdown.points, now, now, rules.half_life)
        await save_score_decay(conn, lead_id, points=breakdown.points, points_at=now, drops_at=drops_at)
        alert_id = None
        if send_alerts and lead.grade != "invalid":  # an invalid lead is never contacted: no rep needs it
            alert_id = await _alert_if_due(
                conn, lead, logged, total, catalog, now, handoff=change is not None
            )
    log.info(
        "lead rescored lead_id=%s score=%d->%d stage=%s alert_id=%s",
        lead_id,
        lead.score,
        total,
        change.after if change else lead.stage,
        alert_id,
    )
    return RescoreResult(lead_id, lead.score, total, change, (alert_id,) if alert_id is not None else ())


def _as_of(lead: ScoringLead, now: datetime, half_life: timedelta) -> ScoringLead:
    """`lead` with its stored score decayed to `now` (a stored score is only as fresh as the last refresh)."""
    if lead.score_points is None or lead.score_points_at is None:
        return lead
    return dataclasses.replace(
        lead, score=score_as_of(lead.score_points, lead.score_points_at, now, half_life)
    )


def _received_since(logged: LoggedEvent, since: datetime | None) -> bool:
    return since is None or logged.received_at > since


async def _alert_if_due(
    conn: AsyncConnection,
    lead: ScoringLead,
    logged: Sequence[LoggedEvent],
    total: int,
    catalog: Catalog,
    now: datetime,
    *,
    handoff: bool,
) -> int | None:
    """Match moments in the events new since the last rescore, and raise an alert for them or a crossing.

    Each event that hits a moment is recorded as a `moment` touchpoint, alerted or held back by the
    cooldown, and never counts as new again. A `handoff` (this rescore raised the stage) is never held back.
    """
    since = lead.score_updated_at - LATE_COMMIT_GRACE if lead.score_updated_at is not None else None
    hit = await fetch_moment_event_ids(conn, lead.id, since=since) if since is not None else set()
    if lead.suppressed:
        # Mail it can no longer be sent raises no alert: only the engagement it still makes on its own counts.
        logged = [e for e in logged if not _from_mail(e.event)]
        total = score([e.event for e in logged], catalog.scoring, now).total
    new = [e.event for e in logged if _received_since(e, since) and e.event.id not in hit]
    new_ids = {event.id for event in new}
    history = [e.event for e in logged if e.event.id not in new_ids]
    moments = matched_moments(new, history, catalog.scoring)
    triggers = alert_triggers(lead.score, total, catalog.scoring.thresholds, moments)
    alert_id = await _raise_alert(
        conn, lead, triggers, [event.id for _, event in moments], total, catalog, now, handoff=handoff
    )
    for moment, event in moments:
        detail = {"moment": moment.name, "event_id": event.id, "alert_id": alert_id}
        await append_touchpoint(conn, lead_id=lead.id, kind=MOMENT, occurred_at=now, detail=detail)
    return alert_id


def _from_mail(event: EngagementEvent) -> bool:
    """An open or click of an email, or anything else that came through one of its links."""
    return event.delivery_id is not None or event.type in MAIL_EVENT_TYPES


async def _record_score(
    conn: AsyncConnection,
    lead: ScoringLead,
    total: int,
    change: StageChange | None,
    *,
    scored_at: datetime | None,
    now: datetime,
    recomputed: bool,
) -> None:
    """Store the score and stage, put the changes on the lead's timeline; a new MQL leaves its campaign."""
    changed = total != lead.score or change is not None
    await save_score(conn, lead.id, score=total, scored_at=scored_at, changed=changed)
    if total != lead.score:
        detail: dict[str, object] = {"before": lead.score, "after": total}
        if recomputed:
            detail["recomputed"] = True
        await append_touchpoint(conn, lead_id=lead.id, kind="score_change", occurred_at=now, detail=detail)
    if change is None:
        return
    await change_stage(conn, [LeadStageChange(lead.id, change)], path=StagePath.SCORING, occurred_at=now)
    enrollment = await fetch_active_enrollment(conn, lead.id)
    if enrollment is not None:
        # end_enrollment also cancels the enrollment's pending and claimed deliveries.
        await end_enrollment(conn, enrollment.id, state="exited", reason=QUALIFIED, now=now)
        await append_touchpoint(
            conn,
            lead_id=lead.id,
            kind="exited",
            occurred_at=now,
            campaign_id=enrollment.campaign_id,
            detail={"reason": QUALIFIED},
        )


async def _raise_alert(
    conn: AsyncConnection,
    lead: ScoringLead,
    triggers: Sequence[AlertTrigger],
    moment_events: Sequence[int],
    total: int,
    catalog: Catalog,
    now: datetime,
    *,
    handoff: bool,
) -> int | None:
    """Insert one alert combining every trigger, or inside the cooldown put a handoff on the pending alert
    (or on a new one that updates the alert just sent) and record anything else as held back.

    Returns the id of an alert to send: None when held back or when the pending alert, revised, is sent by
    the message already queued for it (`flows.alert` reads what it says when it sends it)."""
    if not triggers:
        return None
    last = await fetch_last_alert(conn, lead.id)
    action = alert_action(
        last.created_at if last else None,
        last_pending=last is not None and last.pending,
        now=now,
        cooldown=catalog.scoring.alert_cooldown,
        handoff=handoff,
    )
    if last is not None and action == "revise":
        pairs = [(t.trigger, t.reason) for t in triggers]
        if await revise_pending_alert(
            conn, last.id, triggers=pairs, events=moment_events, score_after=total, now=now
        ):
            await _note_alert(conn, lead.id, "alert_revised", last.id, triggers, now)
            return None
    if last is not None and action == "hold":
        await _note_alert(conn, lead.id, "alert_held", last.id, triggers, now)
        log.info(
            "alert held back by the cooldown lead_id=%s triggers=%s last_alert_id=%s",
            lead.id,
            ",".join(t.trigger for t in triggers),
            last.id,
        )
        return None
    # A handoff inside the cooldown whose alert was sent (or was sent while this ran) updates that alert.
    updates = {"updates": last.id} if last is not None and action != "raise" else {}
    owner = lead.owner or await _assign_owner(conn, lead.id, catalog.active_reps(), now)
    alert_id = await insert_alert(
        conn,
        lead_id=lead.id,
        trigger=triggers[0].trigger,
        reason="; ".join(t.reason for t in triggers),
        score_before=lead.score,
        score_after=total,
        owner=owner,
        created_at=now,
        detail={
            "triggers": [t.trigger for t in triggers],
            "events": list(moment_events),
            "delivered_by": [],
            **updates,
        },
    )
    await append_touchpoint(
        conn,
        lead_id=lead.id,
        kind="alert",
        occurred_at=now,
        detail={"alert_id": alert_id, "trigger": triggers[0].trigger, "owner": owner, **updates},
    )
    return alert_id


async def _note_alert(
    conn: AsyncConnection,
    lead_id: int,
    kind: str,
    alert_id: int,
    triggers: Sequence[AlertTrigger],
    now: datetime,
) -> None:
    """Put on the lead's timeline what the cooldown did with these triggers: held back, or revised into
    alert `alert_id` that is still to be sent."""
    detail = {
        "alert_id": alert_id,
        "triggers": [t.trigger for t in triggers],
        "reason": "; ".join(t.reason for t in triggers),
    }
    await append_touchpoint(conn, lead_id=lead_id, kind=kind, occurred_at=now, detail=detail)


async def _assign_owner(
    conn: AsyncConnection, lead_id: int, reps: Sequence[Rep], now: datetime
) -> str | None:
    """Give an ownerless lead the next active rep, round-robin; None when every rep is away."""
    if not any(rep.active for rep in reps):
        return None
    rep = assign_owner(reps, await next_round_robin(conn))
    if rep is None:
        return None
    await set_lead_owner(conn, lead_id, owner=rep.email, now=now)
    await append_touchpoint(
        conn, lead_id=lead_id, kind="owner_assigned", occurred_at=now, detail={"owner": rep.email}
    )
    log.info("owner assigned round-robin lead_id=%s owner=%s", lead_id, rep.email)
    return rep.email


async def rescore_all(
    *,
    db: Database,
    catalog: Catalog,
    now: datetime,
    batch_size: int = 500,
    on_progress: Callable[[int, int], None] | None = None,
) -> RescoreSummary:
    """Recompute every lead's score from its event log (after `scoring.yaml` changed); raise no alert.

    `on_progress(done, total)` is called after each batch.
    """
    async with db.transaction() as conn:
        total = await count_leads(conn)
    done = scores_changed = stages_changed = 0
    after_id = 0
    while True:
        async with db.transaction() as conn:
            lead_ids = await fetch_lead_ids(conn, after_id=after_id, limit=batch_size)
        if not lead_ids:
            break
        for lead_id in lead_ids:
            result = await rescore(lead_id, db=db, catalog=catalog, now=now, send_alerts=False)
            if result is None:  # deleted meanwhile
                continue
            done += 1
            scores_changed += result.score_after != result.score_before
            stages_changed += result.stage_change is not None
        after_id = lead_ids[-1]
        if on_progress is not None:
            on_progress(done, max(total, done))
    log.info(
        "rescored all leads=%d scores_changed=%d stages_changed=%d", done, scores_changed, stages_changed
    )
    return RescoreSummary(leads=done, scores_changed=scores_changed, stages_changed=stages_changed)


async def find_unscored_leads(
    *,
    db: Database,
    now: datetime,
    quiet_for: timedelta = timedelta(minutes=1),
    look_back: timedelta = timedelta(days=1),
) -> list[int]:
    """Leads with an event nothing has scored for `quiet_for`: the broker lost its re-score message (or the
    enqueue failed when the event came in). The scheduler enqueues them again, as it does lost deliveries."""
    async with db.transaction() as conn:
        return await fetch_leads_with_unscored_events(
            conn, received_after=now - look_back, received_before=now - quiet_for
        )
