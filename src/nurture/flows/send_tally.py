"""What the sends of one pass came to: sent, deferred (and why), skipped, failed, unknown.

Counted from the outcomes each send batch returns, as the batches finish (on the worker's threads, so adding
is locked). A delivery reported twice (a broker message delivered again) keeps its first real outcome: the
second run finds it taken (`not_claimed`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from nurture.flows.send_outcomes import Outcome

__all__ = ["SendCounts", "SendTally"]

# Why a delivery is pending again, in the words the tick summary uses.
DEFER_REASONS: Final = {
    Outcome.CAPPED: "frequency cap",
    Outcome.DEFERRED: "send window",
    Outcome.PAUSED: "domain paused",
    Outcome.RETRY: "retry",
}
# Why a step will not go out to a lead.
SKIP_REASONS: Final = {Outcome.SKIPPED: "by the campaign", Outcome.HELD: "lead left or stopped"}


@dataclass(frozen=True, slots=True)
class SendCounts:
    sent: int = 0
    shadowed: int = 0  # dry run: recorded as it would have gone, not sent
    deferred: Mapping[str, int] = field(default_factory=dict)  # reason -> deliveries pending again
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> steps that will not go out
    tasks: int = 0  # steps that are rep tasks: an alert, not an email
    failed: int = 0  # bounced included
    bounced: int = 0
    unknown: int = 0  # the server may have it: reported, never re-sent
    not_claimed: int = 0  # taken by another worker, or cancelled, before this one got to it

    @property
    def deferred_total(self) -> int:
        return sum(self.deferred.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def counted(self) -> int:
        """Deliveries with an outcome here: each is in exactly one of the figures above."""
        figures = (self.sent, self.shadowed, self.tasks, self.failed, self.unknown, self.not_claimed)
        return sum(figures) + self.deferred_total + self.skipped_total


class SendTally:
    """Collects batch outcomes (`add` is a send batch's `on_outcomes` callback) into `SendCounts`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: dict[int, Outcome] = {}

    def add(self, outcomes: Mapping[int, Outcome]) -> None:
        with self._lock:
            for delivery_id, outcome in outcomes.items():
                if outcome is Outcome.NOT_CLAIMED and delivery_id in self._outcomes:
                    continue
                self._outcomes[delivery_id] = outcome

    def counts(self) -> SendCounts:
        with self._lock:
            seen = Counter(self._outcomes.values())
        return SendCounts(
            sent=seen[Outcome.SENT],
            shadowed=seen[Outcome.SHADOWED],
            deferred={why: seen[o] for o, why in DEFER_REASONS.items() if seen[o]},
            skipped={why: seen[o] for o, why in SKIP_REASONS.items() if seen[o]},
            tasks=seen[Outcome.TASK],
            failed=seen[Outcome.FAILED] + seen[Outcome.BOUNCED],
            bounced=seen[Outcome.BOUNCED],
            unknown=seen[Outcome.UNKNOWN],
            not_claimed=seen[Outcome.NOT_CLAIMED],
        )
