"""The funnel report: stages, campaign steps, qualification and lead quality per group, read in one snapshot.

`build_report` runs the grouped queries of `db.queries.report` in one transaction and leaves the arithmetic
to `core.report`, so every figure is a count or a percentile of touchpoint and event rows.
"""

from __future__ import annotations

import difflib
import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from nurture.core.report import (
    GroupFigures,
    QualifiedLead,
    Spread,
    StageCount,
    StepFigures,
    funnel,
    group_figures,
    qualified_by_step,
    spread,
)
from nurture.db.engine import Database
from nurture.db.queries.report import (
    NO_GROUP,
    EngagementRow,
    GroupBy,
    HotLeadRow,
    QualifiedRow,
    Scope,
    SendRow,
    fetch_campaign_ids,
    fetch_engagement,
    fetch_hot_leads,
    fetch_qualified,
    fetch_reach_counts,
    fetch_sends,
)
from nurture.errors import InputError

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Report:
    scope: Scope
    by: GroupBy
    funnel: tuple[StageCount, ...]
    days_to_mql: Spread
    touches_to_mql: Spread
    campaigns: tuple[StepFigures, ...]  # one per campaign, `step_id` None
    steps: tuple[StepFigures, ...]  # one per campaign step, in step order
    groups: tuple[GroupFigures, ...]  # the funnel and qualification per `by` group


async def build_report(
    db: Database, *, scope: Scope, by: GroupBy = GroupBy.source, campaigns: Collection[str] = ()
) -> Report:
    """Compute every figure of the report for the leads in `scope`, grouped by `by`, in one snapshot.

    Raises `InputError` when `scope` names a campaign that is neither in `campaigns` (the files) nor in the
    database: a typo must not read as a campaign nobody engaged with.
    """
    # Source and owner put each lead in exactly one group: the whole is the sum of the groups, read once.
    one_group_each = by in (GroupBy.source, GroupBy.owner)
    async with db.transaction() as conn:
        if scope.campaign_id is not None:
            _check_campaign(scope.campaign_id, {*campaigns, *await fetch_campaign_ids(conn)})
        group_reach = await fetch_reach_counts(conn, scope, by)
        group_qualified = await fetch_qualified(conn, scope, by)
        overall_reach = group_reach if one_group_each else await fetch_reach_counts(conn, scope, None)
        qualified_rows = group_qualified if one_group_each else await fetch_qualified(conn, scope, None)
        step_sends = await fetch_sends(conn, scope)
        step_engagement = await fetch_engagement(conn, scope, per_step=True)
        campaign_engagement = await fetch_engagement(conn, scope, per_step=False)
    qualified = [_qualified(row) for row in qualified_rows]
    by_step = qualified_by_step(qualified)
    reached: dict[str, dict[int, int]] = defaultdict(dict)
    for group, rank, count in group_reach:
        reached[group or NO_GROUP][rank] = count
    per_group: dict[str, list[QualifiedLead]] = defaultdict(list)
    for row in group_qualified:
        per_group[row.group or NO_GROUP].append(_qualified(row))
    whole: dict[int, int] = defaultdict(int)
    for _, rank, count in overall_reach:
        whole[rank] += count
    report = Report(
        scope=scope,
        by=by,
        funnel=funnel(whole),
        days_to_mql=spread([q.days for q in qualified]),
        touches_to_mql=spread([q.touches for q in qualified]),
        campaigns=_step_figures(campaign_totals(step_sends), campaign_engagement, by_step, per_step=False),
        steps=_step_figures(step_sends, step_engagement, by_step, per_step=True),
        groups=group_figures(reached, per_group),
    )
    log.info(
        "report built leads=%d groups=%d steps=%d",
        report.funnel[0].leads,
        len(report.groups),
        len(report.steps),
    )
    return report


def campaign_totals(steps: Sequence[SendRow]) -> list[SendRow]:
    """Per campaign, the sum of its steps: exact, since a lead unsubscribes at most once."""
    totals: dict[str, SendRow] = {}
    for row in steps:
        seen = totals.get(row.campaign_id)
        totals[row.campaign_id] = SendRow(
            row.campaign_id,
            None,
            row.sent + (seen.sent if seen else 0),
            row.bounced + (seen.bounced if seen else 0),
            row.unsubscribes + (seen.unsubscribes if seen else 0),
            0,
        )
    return list(totals.values())


def _check_campaign(campaign_id: str, known: set[str]) -> None:
    if campaign_id in known:
        return
    nearest = difflib.get_close_matches(campaign_id, known, n=3)
    hint = (
        f"did you mean {', '.join(nearest)}?"
        if nearest
        else f"campaigns: {', '.join(sorted(known)) or 'none'}"
    )
    raise InputError(f"no campaign {campaign_id!r}; {hint}", field="--campaign")


def _qualified(row: QualifiedRow) -> QualifiedLead:
    days = (row.mql_at - row.created_at).total_seconds() / SECONDS_PER_DAY
    return QualifiedLead(days=days, touches=row.touches, campaign_id=row.campaign_id, step_id=row.step_id)


def _step_figures(
    sends: Sequence[SendRow],
    engagement: Sequence[EngagementRow],
    qualified: dict[tuple[str, str | None], int],
    *,
    per_step: bool,
) -> tuple[StepFigures, ...]:
    """Join the send, engagement and qualified counts of each campaign (step); in step order per campaign."""
    sent = {(r.campaign_id, r.step_id): r for r in sends}
    engaged = {(r.campaign_id, r.step_id): r for r in engagement}
    keys = set(sent) | set(engaged) | {k for k in qualified if (k[1] is not None) == per_step}
    unordered = 1 << 30  # a step known only from engagement or qualification sorts after the sent ones
    figures = sorted(
        (
            StepFigures(
                campaign_id=campaign_id,
                step_id=step_id,
                sent=s.sent if (s := sent.get((campaign_id, step_id))) else 0,
                bounced=s.bounced if s else 0,
                unique_opens=e.unique_opens if (e := engaged.get((campaign_id, step_id))) else 0,
                unique_clicks=e.unique_clicks if e else 0,
                unsubscribes=s.unsubscribes if s else 0,
                qualified=qualified.get((campaign_id, step_id), 0),
            )
            for campaign_id, step_id in keys
        ),
        key=lambda f: (
            f.campaign_id,
            s.order if (s := sent.get((f.campaign_id, f.step_id))) else unordered,
            f.step_id or "",
        ),
    )
    return tuple(figures)


async def hot_leads(
    db: Database, *, now: datetime, days: int, half_life: timedelta, limit: int = 50
) -> list[HotLeadRow]:
    """Leads alerted to their rep in the last `days` days, each with its latest alert and its score as of
    `now`, newest first."""
    async with db.transaction() as conn:
        return await fetch_hot_leads(
            conn, since=now - timedelta(days=days), limit=limit, now=now, half_life=half_life
        )
