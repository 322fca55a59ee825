"""Bring stored scores to now: decay lowers a score with no event, and every decision reads the stored one.

A rescore stores a lead's unrounded points and the instant its rounded score next falls; `refresh_scores`
(run by the scheduler's pass before it enrolls) updates just the leads whose instant has come, by an index
range scan, so audiences, exit rules, the dashboard and the report see the score as of the pass (the
scheduler runs it every tick interval). Decay never moves a stage: an MQL whose score decays stays an MQL.
"""

from __future__ import annotations

import logging
from datetime import datetime

from nurture.catalog import Catalog
from nurture.core.scoring import next_drop_at, score_as_of
from nurture.db.engine import Database
from nurture.db.queries.scoring import ScoreRefresh, apply_score_refreshes, fetch_decaying_scores

log = logging.getLogger(__name__)


async def refresh_scores(db: Database, catalog: Catalog, now: datetime, *, batch_size: int = 5000) -> int:
    """Lower every stored score that decay has lowered by `now`; return how many leads changed."""
    half_life = catalog.scoring.half_life
    changed = 0
    while True:
        async with db.transaction() as conn:
            due = await fetch_decaying_scores(conn, now=now, limit=batch_size)
            refreshes = [
                ScoreRefresh(
                    id=lead.id,
                    score=score_as_of(lead.points, lead.points_at, now, half_life),
                    drops_at=next_drop_at(lead.points, lead.points_at, now, half_life),
                )
                for lead in due
            ]
            await apply_score_refreshes(conn, refreshes)
        changed += sum(r.score != lead.score for r, lead in zip(refreshes, due, strict=True))
        if len(due) < batch_size:
            break
    if changed:
        log.info("scores decayed leads=%d", changed)
    return changed
