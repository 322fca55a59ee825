"""What a due step does at send time: send (which variant), skip (why), or hand the rep a task.

The deliver flow asks `decide_steps` for a batch of deliveries it holds; the answer depends on the step's
`when:`/`skip_if:` conditions over the enrollment's earlier engagement, and on the lead's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.catalog import Catalog


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
    action: Literal["send", "skip", "task"]
    reason: str | None = None  # why a step is skipped, recorded on the delivery
    variant: str | None = None  # the variant to send, recorded on the delivery and its touchpoint


SEND = StepDecision("send")


async def decide_steps(
    conn: AsyncConnection, refs: Sequence[StepRef], catalog: Catalog, now: datetime
) -> dict[int, StepDecision]:
    """The decision for each delivery id in `refs` (a step without conditions, variants or task: send)."""
    del conn, catalog, now
    return {ref.delivery_id: SEND for ref in refs}
