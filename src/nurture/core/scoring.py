"""Engagement scoring: the only place a lead's score is computed, and every point of it explained.

`score(events, rules, now)` is pure and recomputes a score from the whole event log, so a changed
`scoring.yaml` is applied by scoring again (`nurture rescore --all`). For each event it decides, in order:

1. **In the future** (after `now`): ignored.
2. **Machine-generated**: flagged as such when it was stored (`machine_reason`, e.g. a HEAD request), or so
   by `core.machine.machine_reason` under the current rules (a user agent containing one of
   `scanner_user_agents`; an `email_open` less than `min_open_delay`, or an `email_click` less than a second,
   after its email was sent), or one of `click_burst` or more `email_click`s of one delivery within one
   second (a scanner following every link). Ignored, with a reason starting "machine: ".
3. **Repeats**: an event stored as a repeat of one within the replay window (`flows.engage`) is ignored
   ("repeat: ..."), and hits no moment.
4. **Points**: the first `url_rules` entry whose `event_types` holds the event's type and whose pattern
   matches its URL, else `points[type]`. A type with neither is ignored ("no points for ..."); a rule worth
   0 counts with 0 points.
5. **Daily caps**: per event type and UTC day, the first `daily_caps[type]` counted events (by time, then id)
   count; the rest are ignored. The input order never changes the result.
6. **Decay**: a counted event is worth `base_points * 0.5 ** (age / half_life)` at `now`.

Points are never negative, so decay can only lower a score. Every event decays at the same rate, so a
score's unrounded points (`ScoreBreakdown.points`) at one instant give its value at any later one with no
new event: `score_as_of(points, scored_at, now, half_life)`, and `next_drop_at` says when that rounded
value next falls (the scheduler refreshes stored scores then). URL patterns are shell-style globs (`*`, `?`,
`[...]`) matched case-insensitively against the URL's path (host, query and fragment are ignored); a pattern
also matches everything below it: `/pricing` matches `/pricing` and `/pricing/enterprise` but not
`/pricing-faq` or `/en/pricing` (write `*/pricing` for that).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

from nurture.core._scoring_schema import (
    DEFAULT_SCANNER_USER_AGENTS,
    EVENT_TYPES,
    MODELS,
    ScoringModel,
    cross_checks,
)
from nurture.core._yaml import validate_yaml
from nurture.core.machine import machine_reason
from nurture.errors import ConfigError

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_SCANNER_USER_AGENTS",
    "EVENT_TYPES",
    "EngagementEvent",
    "Moment",
    "ScoreBreakdown",
    "ScoredEvent",
    "ScoringRules",
    "Thresholds",
    "UrlRule",
    "falls_below_at",
    "matched_moments",
    "next_drop_at",
    "parse_scoring",
    "score",
    "score_as_of",
    "url_matches",
]

_BURST_SPAN: Final = timedelta(seconds=1)
REPEAT_IGNORED: Final = "repeat: the same event within the replay window counts once"
_DROP_MARGIN: Final = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class EngagementEvent:
    id: int
    type: str
    occurred_at: datetime  # aware UTC
    url: str | None = None  # page or link URL
    user_agent: str | None = None
    delivery_sent_at: datetime | None = None  # when the email this open/click belongs to was sent
    delivery_id: int | None = None
    machine_reason: str | None = None  # why it was flagged as machine-made when stored, if it was
    repeat: bool = False  # stored as a repeat of an earlier event within the replay window


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    event: EngagementEvent
    base_points: int  # after URL rules and caps, before decay (0 when not counted)
    points: float  # decayed to `now`
    ignored: (
        str | None
    )  # why it does not count ("machine: click burst", "daily cap for page_visit ..."), or None


@dataclass(frozen=True, slots=True)
class ScoreBreakdown:
    total: int  # round(sum of points), never negative
    items: tuple[ScoredEvent, ...]  # every event given, in time order (then id)

    @property
    def points(self) -> float:
        """The unrounded total: what `score_as_of` decays from."""
        return max(0.0, sum(item.points for item in self.items))


@dataclass(frozen=True, slots=True)
class UrlRule:
    """Events of `event_types` whose URL matches `pattern` are worth `points` instead of their type's."""

    pattern: str
    points: int
    event_types: frozenset[str] = frozenset({"page_visit"})


@dataclass(frozen=True, slots=True)
class Moment:
    """An event worth an alert at once, whatever the score."""

    name: str  # e.g. "pricing_visit", "proposal_reopened"
    event_type: str
    url_pattern: str | None = None  # as for UrlRule.pattern
    after_silence: timedelta | None = None  # only when the lead had no other human event for this long


@dataclass(frozen=True, slots=True)
class Thresholds:
    mql: int
    hot: int


@dataclass(frozen=True, slots=True)
class ScoringRules:
    points: Mapping[str, int]
    thresholds: Thresholds
    half_life: timedelta
    daily_caps: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # per type, UTC day
    url_rules: tuple[UrlRule, ...] = ()  # first match wins
    min_open_delay: timedelta = timedelta(seconds=10)
    scanner_user_agents: tuple[str, ...] = DEFAULT_SCANNER_USER_AGENTS
    click_burst: int = 3  # this many or more clicks of one delivery within one second = a scanner
    moments: tuple[Moment, ...] = ()
    alert_cooldown: timedelta = timedelta(hours=24)
    source: str = "<defaults>"


# The same values as the scoring.yaml that ships with nurture: used when there is no scoring file.
DEFAULT_RULES: Final = ScoringRules(
    points=MappingProxyType(
        {
            "email_open": 1,
            "email_click": 5,
            "page_visit": 3,
            "content_download": 10,
            "form_submit": 15,
            "proposal_view": 20,
            "email_reply": 25,
            "meeting_booked": 50,
        }
    ),
    thresholds=Thresholds(mql=50, hot=80),
    half_life=timedelta(days=14),
    daily_caps=MappingProxyType({"email_open": 3, "page_visit": 10}),
    url_rules=(UrlRule("/pricing", 15), UrlRule("/demo", 20), UrlRule("/blog", 1)),
    moments=(
        Moment("pricing_visit", "page_visit", url_pattern="/pricing"),
        Moment("proposal_reopened", "proposal_view", after_silence=timedelta(days=14)),
    ),
)


def score(events: Sequence[EngagementEvent], rules: ScoringRules, now: datetime) -> ScoreBreakdown:
    """Score `events` at `now`, explaining what each one is worth and why.

    Raises:
        ValueError: `now` or an event's `occurred_at` is a naive datetime.
    """
    _require_aware(now, "now")
    for event in events:
        _require_aware(event.occurred_at, f"event {event.id}: occurred_at")
    ordered = sorted(events, key=_order)
    bursts = _click_bursts(ordered, rules.click_burst)
    used: Counter[tuple[str, date]] = Counter()
    items: list[ScoredEvent] = []
    for position, event in enumerate(ordered):
        base, ignored = _base_points(event, rules, now=now, in_burst=position in bursts)
        cap = rules.daily_caps.get(event.type)
        if ignored is None and cap is not None:
            day = (event.type, event.occurred_at.astimezone(UTC).date())
            if used[day] >= cap:
                base, ignored = 0, f"daily cap for {event.type} ({cap} a day)"
            used[day] += 1
        points = base * 0.5 ** ((now - event.occurred_at) / rules.half_life) if ignored is None else 0.0
        items.append(ScoredEvent(event, base, points, ignored))
    return ScoreBreakdown(total=max(0, round(sum(item.points for item in items))), items=tuple(items))


def score_as_of(points: float, scored_at: datetime, now: datetime, half_life: timedelta) -> int:
    """The score at `now` of a lead whose unrounded points were `points` at `scored_at`, with no event since.

    Never more than `round(points)`; before `scored_at` it is that value (decay never adds points).
    """
    return max(0, round(_decayed(points, scored_at, now, half_life)))


def next_drop_at(points: float, scored_at: datetime, now: datetime, half_life: timedelta) -> datetime | None:
    """The first instant after `now` at which `score_as_of` falls below its value at `now`; None at 0.

    The value rounds down once the decayed points pass under `value - 0.5`; the instant returned is a
    millisecond past that, so a refresh at it always sees the lower value.
    """
    value = score_as_of(points, scored_at, now, half_life)
    if value <= 0 or points <= 0:
        return None
    crossing = scored_at + half_life * math.log2(points / (value - 0.5))
    return max(crossing, now) + _DROP_MARGIN


def falls_below_at(
    points: float, scored_at: datetime, threshold: int, half_life: timedelta
) -> datetime | None:
    """When `score_as_of` first falls below `threshold` by decay alone; None if it was below at `scored_at`
    (or `threshold` is 0 or less, which no score falls below)."""
    if threshold <= 0 or round(points) < threshold:
        return None
    return scored_at + half_life * math.log2(points / (threshold - 0.5)) + _DROP_MARGIN


def _decayed(points: float, scored_at: datetime, now: datetime, half_life: timedelta) -> float:
    if now <= scored_at or points <= 0:
        return max(0.0, points)
    return points * math.pow(0.5, (now - scored_at) / half_life)


def matched_moments(
    new_events: Sequence[EngagementEvent], history: Sequence[EngagementEvent], rules: ScoringRules
) -> tuple[tuple[Moment, EngagementEvent], ...]:
    """Return the configured moments the new events hit, each once with its earliest event, in file order.

    Machine-generated events never hit a moment and never break a silence. `after_silence` holds when the
    lead's latest earlier human event (from `history` or `new_events`, of any type) is at least that long
    before the event; a lead with no earlier event has no silence to break.
    """
    if not rules.moments or not new_events:
        return ()
    tagged = sorted(
        [(e, False) for e in history] + [(e, True) for e in new_events], key=lambda t: _order(t[0])
    )
    everything = [event for event, _ in tagged]
    bursts = _click_bursts(everything, rules.click_burst)
    human = [
        (event, is_new)
        for position, (event, is_new) in enumerate(tagged)
        if _machine_reason(event, rules, in_burst=position in bursts) is None
    ]
    human_keys = [_order(event) for event, _ in human]
    candidates = [event for event, is_new in human if is_new and not event.repeat]
    found: list[tuple[Moment, EngagementEvent]] = []
    for moment in rules.moments:
        for event in candidates:
            if _hits(moment, event) and _silent_before(event, moment.after_silence, human, human_keys):
                found.append((moment, event))
                break
    return tuple(found)


def url_matches(pattern: str, url: str) -> bool:
    """Return True when `url`'s path matches the glob `pattern` or lies below it (see the module doc)."""
    try:
        path = urlsplit(url).path or "/"
    except ValueError:  # e.g. an unclosed IPv6 bracket: no rule can match what cannot be read
        return False
    path, pattern = path.casefold(), pattern.casefold()
    return fnmatchcase(path, pattern) or fnmatchcase(path, pattern.rstrip("/") + "/*")


def parse_scoring(text: str, *, source: str) -> ScoringRules:
    """Validate a scoring file's text and return it as `ScoringRules`.

    Raises:
        ConfigErrors: every problem in the file at once, each a `ConfigError` with its 1-based line.
    """
    model, _ = validate_yaml(
        text,
        ScoringModel,
        source=source,
        error=ConfigError,
        models=MODELS,
        cross_checks=cross_checks,
        shape="a scoring file holds keys such as points, thresholds and half_life",
    )
    return ScoringRules(
        points=MappingProxyType(dict(model.points)),
        thresholds=Thresholds(mql=model.thresholds.mql, hot=model.thresholds.hot),
        half_life=model.half_life,
        daily_caps=MappingProxyType(dict(model.daily_caps)),
        url_rules=tuple(UrlRule(r.pattern, r.points, frozenset(r.event_types)) for r in model.url_rules),
        min_open_delay=model.min_open_delay,
        scanner_user_agents=(
            DEFAULT_SCANNER_USER_AGENTS
            if model.scanner_user_agents is None
            else tuple(dict.fromkeys(ua.casefold() for ua in model.scanner_user_agents))
        ),
        click_burst=model.click_burst,
        moments=tuple(Moment(m.name, m.event_type, m.url_pattern, m.after_silence) for m in model.moments),
        alert_cooldown=model.alert_cooldown,
        source=source,
    )


# --- helpers ------------------------------------------------------------------------------------------------


def _order(event: EngagementEvent) -> tuple[datetime, int]:
    return event.occurred_at, event.id


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _base_points(
    event: EngagementEvent, rules: ScoringRules, *, now: datetime, in_burst: bool
) -> tuple[int, str | None]:
    """The event's points before caps and decay, or 0 and why it does not count."""
    if event.occurred_at > now:
        return 0, "in the future"
    machine = _machine_reason(event, rules, in_burst=in_burst)
    if machine is not None:
        return 0, machine
    if event.repeat:
        return 0, REPEAT_IGNORED
    if event.url is not None:
        for rule in rules.url_rules:
            if event.type in rule.event_types and url_matches(rule.pattern, event.url):
                return rule.points, None
    points = rules.points.get(event.type)
    if points is None:
        return 0, f"no points for {event.type}"
    return points, None


def _machine_reason(event: EngagementEvent, rules: ScoringRules, *, in_burst: bool) -> str | None:
    reason = event.machine_reason or machine_reason(
        event.type,
        occurred_at=event.occurred_at,
        user_agent=event.user_agent,
        delivery_sent_at=event.delivery_sent_at,
        scanner_user_agents=rules.scanner_user_agents,
        min_open_delay=rules.min_open_delay,
    )
    if reason is not None:
        return f"machine: {reason}"
    if in_burst:
        return "machine: click burst"
    return None


def _click_bursts(ordered: Sequence[EngagementEvent], burst: int) -> frozenset[int]:
    """Positions (in `ordered`, sorted by time) of email clicks that are part of a burst of one delivery."""
    by_delivery: dict[int, list[int]] = {}
    for position, event in enumerate(ordered):
        if event.type == "email_click" and event.delivery_id is not None:
            by_delivery.setdefault(event.delivery_id, []).append(position)
    found: set[int] = set()
    for positions in by_delivery.values():
        start = 0
        for end, position in enumerate(positions):
            while ordered[position].occurred_at - ordered[positions[start]].occurred_at >= _BURST_SPAN:
                start += 1
            if end - start + 1 >= burst:
                found.update(positions[start : end + 1])
    return frozenset(found)


def _hits(moment: Moment, event: EngagementEvent) -> bool:
    if event.type != moment.event_type:
        return False
    return moment.url_pattern is None or (
        event.url is not None and url_matches(moment.url_pattern, event.url)
    )


def _silent_before(
    event: EngagementEvent,
    silence: timedelta | None,
    human: Sequence[tuple[EngagementEvent, bool]],
    human_keys: Sequence[tuple[datetime, int]],
) -> bool:
    if silence is None:
        return True
    before = bisect.bisect_left(human_keys, _order(event))  # human events strictly earlier than this one
    return before > 0 and event.occurred_at - human[before - 1][0].occurred_at >= silence
