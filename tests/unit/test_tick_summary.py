"""The tick summary: sent, deferred (by reason), skipped and failed counted apart, never one `dispatched`."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from nurture.cli import tick_data, tick_line
from nurture.flows.send_outcomes import Outcome
from nurture.flows.send_tally import SendTally
from nurture.scheduler import TickResult

AT = datetime(2026, 3, 4, 2, tzinfo=UTC)


def test_the_summary_of_a_drained_tick_separates_sent_from_deferred_with_the_reasons_counted() -> None:
    # Given 134 claimed deliveries: 48 sent, 80 held by the frequency cap, 6 by the send window
    tally = SendTally()
    tally.add(dict.fromkeys(range(48), Outcome.SENT))
    tally.add(dict.fromkeys(range(48, 128), Outcome.CAPPED))
    tally.add(dict.fromkeys(range(128, 134), Outcome.DEFERRED))
    result = TickResult(enrolled=0, claimed=134, unknown=0, sends=tally.counts())
    # When it is summarised, Then each count stands on its own, in JSON and in the line
    data = tick_data(result, at=AT, drained=True)
    assert (data["dispatched"], data["sent"], data["deferred"]) == (134, 48, 86)
    assert data["deferred_reasons"] == {"frequency cap": 80, "send window": 6}
    assert tick_line(data) == (
        "tick at 2026-03-04T02:00:00+00:00: enrolled 0, sent 48, "
        "deferred 86 (frequency cap 80, send window 6), skipped 0, failed 0, unknown 0"
    )


def test_skipped_failed_and_unknown_are_counted_with_late_touches_and_abandoned_sends() -> None:
    tally = SendTally()
    tally.add(
        {1: Outcome.SKIPPED, 2: Outcome.HELD, 3: Outcome.BOUNCED, 4: Outcome.FAILED, 5: Outcome.UNKNOWN}
    )
    result = TickResult(enrolled=2, claimed=5, unknown=1, skipped_late=3, sends=tally.counts())
    line = tick_line(tick_data(result, at=AT, drained=True))
    assert line.endswith(
        "enrolled 2, sent 0, deferred 0, skipped 5 (by the campaign 1, lead left or stopped 1, late 3), "
        "failed 2 (bounced 1), unknown 2"
    )


def test_a_tick_that_only_queued_says_so_instead_of_counting_sends() -> None:
    data = tick_data(TickResult(enrolled=1, claimed=7, unknown=0), at=AT, drained=False)
    assert "sent" not in data
    assert tick_line(data).endswith("enrolled 1, queued 7 for the workers, skipped 0 (late), unknown 0")


@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(list(Outcome))), max_size=60))
def test_every_claimed_delivery_is_counted_once_in_exactly_one_figure(
    reports: list[tuple[int, Outcome]],
) -> None:
    tally = SendTally()
    for delivery_id, outcome in reports:  # one batch each, as a redelivered broker message would be
        tally.add({delivery_id: outcome})
    counts = tally.counts()
    total = (
        counts.sent
        + counts.shadowed
        + counts.deferred_total
        + counts.skipped_total
        + counts.tasks
        + counts.failed
        + counts.unknown
        + counts.not_claimed
    )
    assert total == counts.counted == len({delivery_id for delivery_id, _ in reports})
    # "Not claimed" (a second run finding it taken) never hides a real outcome reported before or after
    only_taken = {d for d, _ in reports} - {d for d, o in reports if o is not Outcome.NOT_CLAIMED}
    assert counts.not_claimed == len(only_taken)


def test_claimed_deliveries_whose_outcome_never_came_back_are_counted_not_lost() -> None:
    # Given 5 claimed deliveries of which only 3 reported (the batch of the other 2 failed in the worker)
    tally = SendTally()
    tally.add({1: Outcome.SENT, 2: Outcome.SENT, 3: Outcome.DEFERRED})
    data = tick_data(TickResult(enrolled=0, claimed=5, unknown=0, sends=tally.counts()), at=AT, drained=True)
    # Then the summary says so: the figures still add up to what was dispatched
    assert data["not_counted"] == 2
    assert tick_line(data).endswith(
        "unknown 0, not counted 2 (their batch failed, see the log, or another worker has them)"
    )


def test_a_drained_tick_whose_every_claim_reported_shows_no_uncounted_figure() -> None:
    tally = SendTally()
    tally.add({1: Outcome.SENT})
    data = tick_data(TickResult(enrolled=0, claimed=1, unknown=0, sends=tally.counts()), at=AT, drained=True)
    assert data["not_counted"] == 0
    assert "not counted" not in tick_line(data)
