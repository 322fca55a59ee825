"""Lifecycle rules: who may enter a campaign, which campaign a lead enters, and when a lead must stop.

Pure decisions over `Lead` and `Campaign` values. The tick enrolls with `choose_campaign`; the deliver flow
asks `send_hold` before every send, because a lead or its campaign can change between planning and sending.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from nurture.core.campaign import Audience, Campaign, ExitRule
from nurture.core.lead import Lead

# Tags a lead's acquisition source can arrive under: a CRM's `source` column or a form's UTM parameter.
_SOURCE_TAGS = ("source", "utm_source")


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a due delivery must not go out now, and whether the lead leaves the campaign because of it."""

    reason: str
    exits_enrollment: bool


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
