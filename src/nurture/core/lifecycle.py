"""Lifecycle rules: who may enter a campaign, which campaign a lead enters, when a lead must stop, and what
a new score means for its stage, its alerts and its owner.

Pure decisions over `Lead` and `Campaign` values. The tick enrolls with `choose_campaign`; the deliver flow
asks `send_hold` before every send, because a lead or its campaign can change between planning and sending.
After a rescore, the escalate flow asks `stage_after_scoring`, `alert_triggers`, `alert_action` and
`assign_owner`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from nurture.core.campaign import Audience, Campaign, ExitRule
from nurture.core.context import Rep
from nurture.core.lead import Lead
from nurture.core.scoring import EngagementEvent, Moment, Thresholds
from nurture.core.stages import Stage, StageChange, stage_rank

# Tags a lead's acquisition source can arrive under: a CRM's `source` column or a form's UTM parameter.
_SOURCE_TAGS = ("source", "utm_source")
# How a moment's event reads in an alert: "pricing_visit: visited https://acme.example/pricing".
_DOES = {
    "email_open": "opened an email",
    "email_click": "clicked",
    "page_visit": "visited",
    "content_download": "downloaded",
    "form_submit": "submitted a form",
    "proposal_view": "viewed the proposal",
    "email_reply": "replied to an email",
    "meeting_booked": "booked a meeting",
}


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a due delivery must not go out now, and whether the lead leaves the campaign because of it."""

    reason: str
    exits_enrollment: bool


@dataclass(frozen=True, slots=True)
class AlertTrigger:
    trigger: str  # "mql" | "hot" | "moment:<name>"
    reason: str  # "score crossed hot (80): 62 -> 85", "pricing_visit: visited https://acme.example/pricing"


def may_enroll(lead: Lead, campaign: Campaign) -> bool:
    """Return True when `lead` fits `campaign`'s audience and has not already met its exit rule."""
    if lead.suppressed or lead.grade == "invalid":
        return False
    return _fits(lead, campaign.audience) and exit_reason(lead, campaign) is None


def exit_reason(lead: Lead, campaign: Campaign) -> str | None:
    """Return why `lead` has met `campaign`'s exit rule (e.g. "qualified: score 55 >= 50"), or None."""
    return _exit_reason(lead, campaign.exit)


def choose_campaign(lead: Lead, campaigns: Sequence[Campaign], taken: Collection[str]) -> Campaign | None:
    """Return the campaign `lead` should enter next, or None.

    Only campaigns the lead fits and was never enrolled in (`taken` holds their ids) count; the lowest
    `priority` wins, ties broken by campaign id so every scheduler picks the same one.
    """
    eligible = [c for c in campaigns if c.id not in taken and may_enroll(lead, c)]
    return min(eligible, key=lambda c: (c.priority, c.id), default=None)


def send_hold(lead: Lead, campaign: Campaign | None, step_id: str) -> Hold | None:
    """Return why a due delivery of `step_id` must not be sent to `lead` now, or None to send it.

    `campaign` is the campaign as the catalog has it now (None once its file is gone): marketing may have
    edited or removed it since the delivery was planned.
    """
    if lead.suppressed:
        return Hold("suppressed", exits_enrollment=True)
    if lead.grade == "invalid":
        return Hold("grade: invalid", exits_enrollment=True)
    if campaign is None:
        return Hold("campaign removed", exits_enrollment=True)
    if campaign.step(step_id) is None:
        # The lead's later steps may still exist, so only this delivery is skipped.
        return Hold("step removed", exits_enrollment=False)
    reason = exit_reason(lead, campaign)
    if reason is not None:
        return Hold(reason, exits_enrollment=True)
    return None


def is_last_step(campaign: Campaign, step_id: str) -> bool:
    """Return True when `step_id` is the campaign's final step."""
    return bool(campaign.steps) and campaign.steps[-1].id == step_id


def _exit_reason(lead: Lead, rule: ExitRule) -> str | None:
    if rule.score_at_least is not None and lead.score >= rule.score_at_least:
        return f"qualified: score {lead.score} >= {rule.score_at_least}"
    if lead.stage in rule.stages:
        return f"stage: {lead.stage}"
    return None


def _fits(lead: Lead, audience: Audience) -> bool:
    return (
        lead.grade in audience.grades
        and lead.stage in audience.stages
        and (audience.min_score is None or lead.score >= audience.min_score)
        and (audience.max_score is None or lead.score <= audience.max_score)
        and _source_fits(lead, audience.sources)
        and _country_fits(lead.country, audience.countries)
        and all(lead.tags.get(key) in allowed for key, allowed in audience.tags.items())
    )


def _source_fits(lead: Lead, sources: frozenset[str]) -> bool:
    return not sources or any(lead.tags.get(tag) in sources for tag in _SOURCE_TAGS)


def _country_fits(country: str | None, countries: frozenset[str]) -> bool:
    if not countries:
        return True
    return country is not None and country.strip().casefold() in {c.casefold() for c in countries}


def stage_after_scoring(stage: Stage, score: int, thresholds: Thresholds) -> StageChange | None:
    """Return the move to MQL when `score` reaches the mql threshold from visitor, lead or suspect, else None.

    A score never moves a lead backwards (an MQL whose score decays stays an MQL) nor out of sql,
    opportunity or customer: those stages belong to sales.
    """
    if stage_rank(stage) < stage_rank(Stage.MQL) and score >= thresholds.mql:
        reason = f"qualified: score {score} >= {thresholds.mql}"
        return StageChange(before=stage, after=Stage.MQL, reason=reason)
    return None


def alert_triggers(
    old_score: int,
    new_score: int,
    thresholds: Thresholds,
    moments: Sequence[tuple[Moment, EngagementEvent]],
) -> tuple[AlertTrigger, ...]:
    """Return why the lead's owner should hear about this rescore: thresholds crossed, then moments hit.

    A threshold `t` is crossed when `old_score < t <= new_score`; hot comes before mql when both are. Each
    moment appears once (its first event), whatever the score.
    """
    found: list[AlertTrigger] = []
    for name, threshold in (("hot", thresholds.hot), ("mql", thresholds.mql)):
        if old_score < threshold <= new_score:
            reason = f"score crossed {name} ({threshold}): {old_score} -> {new_score}"
            found.append(AlertTrigger(trigger=name, reason=reason))
    seen: set[str] = set()
    for moment, event in moments:
        if moment.name not in seen:
            seen.add(moment.name)
            found.append(AlertTrigger(trigger=f"moment:{moment.name}", reason=_moment_reason(moment, event)))
    return tuple(found)


def may_alert(last_alert_at: datetime | None, now: datetime, cooldown: timedelta) -> bool:
    """Return True when a lead last alerted at `last_alert_at` (None: never) may be alerted again at `now`."""
    return last_alert_at is None or now - last_alert_at >= cooldown


AlertAction = Literal["raise", "revise", "update", "hold"]


def alert_action(
    last_alert_at: datetime | None, *, last_pending: bool, now: datetime, cooldown: timedelta, handoff: bool
) -> AlertAction:
    """What to do with this rescore's alert triggers, given the lead's latest alert.

    Outside the cooldown: `raise` a new alert. Inside it the cooldown holds back noise, never the handoff (a
    stage raised by this rescore): a handoff `revise`s the latest alert while it is still pending, so the
    rep gets one alert that says so, or raises a new alert that `update`s it when it was already sent.
    Anything else is held back (`hold`).
    """
    if may_alert(last_alert_at, now, cooldown):
        return "raise"
    if not handoff:
        return "hold"
    return "revise" if last_pending else "update"


def assign_owner(reps: Sequence[Rep], counter: int) -> Rep | None:
    """Return the active rep whose turn `counter` is (round-robin in the given order), or None if none is.

    The caller keeps the counter and adds one per assignment; reps who are away are skipped.
    """
    active = [rep for rep in reps if rep.active]
    return active[counter % len(active)] if active else None


def _moment_reason(moment: Moment, event: EngagementEvent) -> str:
    text = f"{moment.name}: {_DOES.get(event.type, event.type.replace('_', ' '))}"
    if event.url:
        text += f" {event.url}"
    if moment.after_silence is not None:
        text += f" after {_at_least(moment.after_silence)} of silence"
    return text


def _at_least(value: timedelta) -> str:
    """A silence as "14+ days" or "36+ hours"."""
    if value.days and not value.seconds and not value.microseconds:
        return f"{value.days}+ days"
    return f"{value.total_seconds() / 3600:g}+ hours"
