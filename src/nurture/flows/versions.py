"""Campaign versions: what editing a campaign file does to the leads already enrolled in it.

The rule. Deliveries (which steps, and when) are planned at enrollment, from the version of the file the lead
enrolled on; its hash is on the enrollment and its text is kept in `campaign_versions`. Content always
renders from the current file. Then, per campaign (`on_change:`):

* `keep` (the default): enrolled leads continue on the plan they started. A step added later applies to new
  enrollments only; a re-timed step keeps its old time; a removed step is skipped when it falls due, with the
  reason recorded.
* `follow`: at the next tick, the pending deliveries of leads on older versions are re-planned to the new
  steps, from their enrollment time: removed steps are skipped (reason recorded), re-timed steps move, and
  added steps are planned where they still lie ahead (an added step whose time has passed is not sent).

`nurture validate` tells, before a change ships, what it would do to the leads enrolled now.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.catalog import Catalog
from nurture.core.campaign import Campaign, Step, parse_campaign
from nurture.core.ratelimit import recipient_domain
from nurture.core.schedule import lead_zone, plan_deliveries
from nurture.db.engine import Database
from nurture.db.queries.campaign_language import (
    EnrolledVersion,
    fetch_enrolled_versions,
    fetch_lead_places,
    fetch_stale_plans,
    fetch_version_text,
    mark_replanned,
    remember_versions,
    retime_pending,
    skip_pending,
)
from nurture.db.queries.enrollment import NewDelivery, insert_deliveries
from nurture.errors import ConfigError, ConfigErrors

log = logging.getLogger(__name__)
_REPLAN_BATCH = 1000


async def apply_campaign_versions(conn: AsyncConnection, catalog: Catalog, now: datetime) -> int:
    """Remember the current version of every campaign, and when a campaign that says `on_change: follow`
    has a version not seen before, re-plan its leads on older versions; return how many were re-planned.

    Called by the scheduler's tick before it enrolls anyone, so every enrollment's version is on record.
    A tick that sees no new version costs one small query.
    """
    campaigns = catalog.ordered()
    new = await remember_versions(conn, [(c.id, c.content_hash, c.text) for c in campaigns], now=now)
    replanned = 0
    for campaign in campaigns:
        if campaign.on_change == "follow" and campaign.id in new:
            while (batch := await _follow(conn, campaign, catalog, now)) > 0:
                replanned += batch
    if replanned:
        log.info("re-planned enrollments=%d on a new campaign version", replanned)
    return replanned


async def _follow(conn: AsyncConnection, campaign: Campaign, catalog: Catalog, now: datetime) -> int:
    stale = await fetch_stale_plans(conn, campaign.id, campaign.content_hash, limit=_REPLAN_BATCH)
    if not stale:
        return 0
    people = await fetch_lead_places(conn, [p.lead_id for p in stale])
    reason = f"step removed in version {campaign.content_hash[:8]} of the campaign (on_change: follow)"
    removed: list[int] = []
    retimed: list[tuple[int, datetime, int]] = []
    added: list[NewDelivery] = []
    for plan in stale:
        lead = people[plan.lead_id]
        window = campaign.send_window
        tz = lead_zone(lead.timezone, window)
        days_off = catalog.days_off(campaign, lead.country)
        new_plan = plan_deliveries(
            campaign.steps, enrolled_at=plan.enrolled_at, window=window, tz=tz, days_off=days_off
        )
        wanted = {p.step_id: p for p in new_plan}
        removed += [d for step_id, d in plan.pending.items() if step_id not in wanted]
        retimed += [
            (d, wanted[s].due_at, wanted[s].step_index) for s, d in plan.pending.items() if s in wanted
        ]
        domain = recipient_domain(lead.email)
        added += [
            NewDelivery(
                plan.enrollment_id, plan.lead_id, campaign.id, p.step_id, p.step_index, p.due_at, domain
            )
            for p in new_plan
            if p.step_id not in plan.planned and p.due_at >= now
        ]
    await skip_pending(conn, removed, reason=reason)
    await retime_pending(conn, retimed)
    await insert_deliveries(conn, added)
    await mark_replanned(conn, [p.enrollment_id for p in stale], campaign.content_hash)
    return len(stale)


# --- what a change would do (nurture validate) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeWarning:
    source: str  # the campaign file
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


async def warn_enrolled_changes(db: Database, catalog: Catalog) -> list[ChangeWarning]:
    """What the campaign files as they are now would do to the leads enrolled in the database.

    Raises:
        DatabaseUnavailableError: the database cannot be reached.
    """
    warnings: list[ChangeWarning] = []
    async with db.transaction() as conn:
        enrolled = await fetch_enrolled_versions(conn, catalog.campaigns)
        by_campaign: dict[str, list[tuple[EnrolledVersion, Campaign | None]]] = defaultdict(list)
        for version in enrolled:
            campaign = catalog.campaigns[version.campaign_id]
            if version.content_hash == campaign.content_hash:
                continue
            text = await fetch_version_text(conn, version.campaign_id, version.content_hash)
            by_campaign[campaign.id].append((version, _parse_old(text, campaign.source)))
    for campaign_id, versions in by_campaign.items():
        campaign = catalog.campaigns[campaign_id]
        warnings += [ChangeWarning(campaign.source, m) for m in describe_change(campaign, versions)]
    return warnings


def _parse_old(text: str | None, source: str) -> Campaign | None:
    if text is None:
        return None
    try:
        return parse_campaign(text, source=source)
    except (ConfigError, ConfigErrors):
        return None  # an old version that no longer parses (say, a key since renamed): steps unknown


@dataclass
class _Tally:
    removed: dict[str, list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )  # leads, pending
    added: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # leads
    moved: dict[str, tuple[str, int]] = field(default_factory=dict)  # "day 5 to day 6", pending
    edited: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # the keys that changed
    unknown_versions: bool = False


def describe_change(
    campaign: Campaign, versions: Sequence[tuple[EnrolledVersion, Campaign | None]]
) -> list[str]:
    """Sentences saying what `campaign` as it is now does to the leads enrolled on older `versions` (each
    with the parsed old file when its snapshot is known). Pure: `nurture simulate` may use it too."""
    follow = campaign.on_change == "follow"
    total = sum(v.enrollments for v, _ in versions)
    lines = [f"{total} enrolled lead(s) started an earlier version (on_change: {campaign.on_change})"]
    tally = _tally(campaign, versions)
    for step_id, (count, pending) in sorted(tally.removed.items()):
        effect = f"{pending} pending deliveries will be skipped"
        lines.append(f"{count} enrolled lead(s): step {step_id!r} removed → {effect}")
    for step_id, count in sorted(tally.added.items()):
        effect = "planned where it still lies ahead" if follow else "not planned: only new enrollments get it"
        lines.append(f"{count} enrolled lead(s): step {step_id!r} added → {effect}")
    for step_id, (change, pending) in sorted(tally.moved.items()):
        effect = f"{pending} pending deliveries re-timed" if follow else "pending deliveries keep their time"
        lines.append(f"step {step_id!r} moved from {change} → {effect}")
    for step_id, keys in sorted(tally.edited.items()):
        if keys:
            lines.append(
                f"step {step_id!r} changed ({', '.join(sorted(keys))}) → enrolled leads get it as it is now"
            )
    if tally.unknown_versions:
        lines.append("some enrolled leads started a version not on record: only removed steps can be told")
    return lines


def _tally(campaign: Campaign, versions: Sequence[tuple[EnrolledVersion, Campaign | None]]) -> _Tally:
    tally = _Tally()
    current = {s.id for s in campaign.steps}
    for version, old in versions:
        for step_id, pending in version.pending_by_step.items():
            if step_id not in current:
                tally.removed[step_id][0] += version.enrollments
                tally.removed[step_id][1] += pending
        if old is None:
            tally.unknown_versions = True
            continue
        before = {s.id: s for s in old.steps}
        for step in campaign.steps:
            if step.id not in before:
                tally.added[step.id] += version.enrollments
                continue
            if _offset(before[step.id]) != _offset(step):
                pending = version.pending_by_step.get(step.id, 0) + tally.moved.get(step.id, ("", 0))[1]
                tally.moved[step.id] = (f"{_offset(before[step.id])} to {_offset(step)}", pending)
            tally.edited[step.id] |= {k for k in _CONTENT if getattr(step, k) != getattr(before[step.id], k)}
    return tally


# What renders or is decided from the current file at send time, whatever version a lead started.
_CONTENT = ("subject", "template", "text_template", "variants", "when", "skip_if", "task")


def _offset(step: Step) -> str:
    return f"business_days {step.day}" if step.business_days else f"day {step.day}"
