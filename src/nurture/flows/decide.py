"""What a due step does at send time: send (which variant), skip (why), or hand the rep a task.

The deliver flow asks `decide_steps` for a batch of deliveries it holds; the answer depends on the step's
`when:`/`skip_if:` conditions over the enrollment's earlier engagement, and on the lead's score. A task step
goes to `record_rep_task`, which turns it into an alert for the lead's rep.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.catalog import Catalog
from nurture.core.branching import choose_variant, skip_reason
from nurture.core.context import owner_of, sender_as_rep, template_context
from nurture.db.queries.alerts import insert_alert
from nurture.db.queries.campaign_language import fetch_profile, fetch_step_histories, finish_task_delivery
from nurture.db.queries.deliveries import append_touchpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepRef:
    """The delivery being decided, as far as deciding needs it."""

    delivery_id: int
    enrollment_id: int
    lead_id: int
    campaign_id: str
    step_id: str
    score: int


@dataclass(frozen=True, slots=True)
class StepDecision:
    action: Literal["send", "skip", "task", "fail"]  # fail: must not go out as the campaign stands
    reason: str | None = None  # why a step is skipped (or failed), recorded on the delivery
    variant: str | None = None  # the variant to send, recorded on the delivery and its touchpoint


SEND = StepDecision("send")
TASK = StepDecision("task")


async def decide_steps(
    conn: AsyncConnection, refs: Sequence[StepRef], catalog: Catalog, now: datetime
) -> dict[int, StepDecision]:
    """The decision for each delivery id in `refs`, reading the batch's engagement in one query.

    A step without conditions, variants or task is sent. A step the catalog does not know (its campaign or
    the step was removed) is answered `send` too: the deliver flow's hold rules skip it with their reason.
    """
    del now  # conditions read recorded engagement only; kept for conditions on time to come
    needs_history = [r.enrollment_id for r in refs if _has_condition(catalog, r)]
    histories = await fetch_step_histories(conn, needs_history) if needs_history else {}
    decisions: dict[int, StepDecision] = {}
    for ref in refs:
        campaign = catalog.campaigns.get(ref.campaign_id)
        step = campaign.step(ref.step_id) if campaign else None
        if step is None:
            decisions[ref.delivery_id] = SEND
            continue
        reason = skip_reason(step, histories.get(ref.enrollment_id, {}), ref.score)
        if reason is not None:
            decisions[ref.delivery_id] = StepDecision("skip", reason=reason)
        elif step.task is not None:
            decisions[ref.delivery_id] = TASK
        else:
            variant = choose_variant(step, ref.lead_id)
            decisions[ref.delivery_id] = StepDecision("send", variant=variant.id if variant else None)
    return decisions


def _has_condition(catalog: Catalog, ref: StepRef) -> bool:
    campaign = catalog.campaigns.get(ref.campaign_id)
    step = campaign.step(ref.step_id) if campaign else None
    return step is not None and (step.when is not None or step.skip_if is not None)


async def record_rep_task(conn: AsyncConnection, ref: StepRef, catalog: Catalog, now: datetime) -> int | None:
    """Turn the task step of delivery `ref` into an alert for the lead's rep and finish the delivery.

    The alert's trigger is `task:<step id>` and its reason the rendered task title; the delivery becomes
    `sent` with a `task_created` touchpoint. Returns the alert id for the alert actor, or None when the
    delivery is not ours any more (done by a duplicate message) or its step is not a task.

    Raises:
        TemplateError: the task title fails for this lead (the caller records the delivery as failed).
    """
    campaign = catalog.campaigns.get(ref.campaign_id)
    step = campaign.step(ref.step_id) if campaign else None
    if campaign is None or step is None or step.task is None:
        return None
    profile = await fetch_profile(conn, ref.lead_id)
    if profile is None:
        return None
    owner = owner_of(profile, catalog.reps, sender_as_rep(campaign.sender.from_address))
    context = template_context(
        profile,
        owner=owner,
        campaign=campaign,
        step=step,
        unsubscribe_url="",  # a task is not an email: nothing to unsubscribe from
        postal_address=campaign.sender.postal_address or "",
    )
    title = catalog.render_task_title(campaign, step, context)
    if not await finish_task_delivery(conn, ref.delivery_id, now=now):
        return None
    alert_id = await insert_alert(
        conn,
        lead_id=ref.lead_id,
        trigger=f"task:{step.id}",
        reason=title,
        score_before=ref.score,
        score_after=ref.score,
        owner=profile.owner or (owner.email if owner.email in catalog.reps else None),
        created_at=now,
        detail={
            "campaign_id": campaign.id,
            "step_id": step.id,
            "delivery_id": ref.delivery_id,
            "note": step.task.note,
            "delivered_by": [],
        },
    )
    await append_touchpoint(
        conn,
        lead_id=ref.lead_id,
        kind="task_created",
        occurred_at=now,
        campaign_id=campaign.id,
        step_id=step.id,
        delivery_id=ref.delivery_id,
        detail={"alert_id": alert_id, "title": title},
    )
    log.info("rep task created delivery_id=%s alert_id=%s", ref.delivery_id, alert_id)
    return alert_id
