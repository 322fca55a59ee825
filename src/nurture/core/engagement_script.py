"""The engagement script of `nurture simulate --engagement` and campaign tests: what a lead does, and when.

One action per line; `#` starts a comment. An action may be limited to one lead with `EMAIL:` in front.

    opens welcome                     # the lead opens the email of step `welcome`, 2 hours after it arrives
    clicks case-study after 1d        # ... clicks a link in it, a day after it arrives
    clicks case-study /pricing        # ... the link to /pricing
    replies to breakup                # email_reply, 2 hours after `breakup` arrives
    unsubscribes from roi-calculator  # one-click unsubscribe from that email
    visits /pricing on day 9          # page_visit on local day 9 after enrolment, at 12:00 local time
    downloads whitepaper on day 4 at 15:30
    submits demo-request on day 6     # form_submit
    views proposal on day 20          # proposal_view
    books meeting on day 11           # meeting_booked
    does webinar_attended on day 3    # any event type scored in scoring.yaml
    mei.lin@example.com: visits /demo on day 2

Actions on an email happen only if that email is sent; the rest happen on their day whatever was sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Final

from nurture.errors import ConfigError, ConfigErrors

DEFAULT_DELAY: Final = timedelta(hours=2)  # an email is read a while after it lands, never within seconds
DEFAULT_TIME: Final = time(12, 0)  # a dated action happens at noon, in the lead's time zone

# verb -> (event type, what follows the verb)
_STEP_VERBS: Final = {"opens": "email_open", "clicks": "email_click"}
_PREPOSITION_VERBS: Final = {"replies": ("email_reply", "to"), "unsubscribes": ("unsubscribe", "from")}
_DATED_VERBS: Final = {
    "visits": "page_visit",
    "downloads": "content_download",
    "submits": "form_submit",
}
_FIXED_VERBS: Final = {"views": ("proposal_view", "proposal"), "books": ("meeting_booked", "meeting")}
_VERBS: Final = ", ".join(sorted({*_STEP_VERBS, *_PREPOSITION_VERBS, *_DATED_VERBS, *_FIXED_VERBS, "does"}))
_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9_-]*")
_EVENT_TYPE: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")
_LEAD_PREFIX: Final = re.compile(r"(?P<lead>[^\s:@]+@[^\s:]+):\s*(?P<rest>.*)")
_DURATION_PART: Final = re.compile(r"(\d+)([dhms])")
_DURATION_UNITS: Final = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_MAX_DAY: Final = 366


@dataclass(frozen=True, slots=True)
class ScriptedAction:
    """One line of a script: an event of `event_type`, tied to the email of `step` or to local `day`."""

    line: int
    event_type: str  # email_open, email_click, page_visit, ..., or "unsubscribe"
    lead: str | None = None  # lower-cased email, or None for every lead
    step: str | None = None  # the email it is about; it happens `after` that email is sent
    after: timedelta = DEFAULT_DELAY
    day: int | None = None  # local days after enrolment; set exactly when `step` is None
    at: time = DEFAULT_TIME
    url: str | None = None
    text: str = ""  # the line as written, for reports

    @property
    def is_unsubscribe(self) -> bool:
        return self.event_type == "unsubscribe"


@dataclass(frozen=True, slots=True)
class EngagementScript:
    source: str
    actions: tuple[ScriptedAction, ...] = ()

    def for_lead(self, email: str) -> tuple[ScriptedAction, ...]:
        """The actions that apply to the lead with this (lower-cased) email, in script order."""
        return tuple(a for a in self.actions if a.lead is None or a.lead == email)

    @property
    def steps(self) -> frozenset[str]:
        return frozenset(a.step for a in self.actions if a.step is not None)


def parse_script(text: str, *, source: str, first_line: int = 1) -> EngagementScript:
    """Parse a script; every bad line is reported at once as `source:line: message`.

    `first_line` is the file line of the text's first line (for a script embedded in a YAML file).

    Raises:
        ConfigErrors: one `ConfigError` per bad line.
    """
    actions: list[ScriptedAction] = []
    errors: list[ConfigError] = []
    for number, raw in enumerate(text.splitlines(), start=first_line):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            actions.append(_parse_line(line, number))
        except ValueError as exc:
            errors.append(ConfigError(str(exc), source=source, line=number))
    if errors:
        raise ConfigErrors(errors)
    return EngagementScript(source=source, actions=tuple(actions))


def _parse_line(line: str, number: int) -> ScriptedAction:
    lead = None
    prefixed = _LEAD_PREFIX.fullmatch(line)
    if prefixed:
        lead, line = prefixed["lead"].lower(), prefixed["rest"]
    words = line.split()
    if not words:
        raise ValueError(f"nothing follows {lead}:")
    verb, rest = words[0].lower(), words[1:]
    rest, day, at, after = _timing(rest)
    if verb in _STEP_VERBS or verb in _PREPOSITION_VERBS:
        if day is not None or at is not None:
            raise ValueError(f"`{verb}` happens after its email is sent: use `after 2h`, not `on day`")
        if verb in _PREPOSITION_VERBS:
            event_type, preposition = _PREPOSITION_VERBS[verb]
            if not rest or rest[0].lower() != preposition:
                raise ValueError(f"write `{verb} {preposition} STEP`")
            rest = rest[1:]
        else:
            event_type = _STEP_VERBS[verb]
        url = rest[1] if verb == "clicks" and len(rest) == 2 else None
        if len(rest) != (2 if url else 1) or not _SLUG.fullmatch(rest[0]):
            raise ValueError(f"write `{verb} STEP` with one step id, got {' '.join(rest) or 'nothing'!r}")
        return ScriptedAction(
            line=number,
            lead=lead,
            text=line,
            event_type=event_type,
            step=rest[0],
            after=after or DEFAULT_DELAY,
            url=_url(url) if url else None,
        )
    if after is not None:
        raise ValueError(
            f"`after` goes with an email action (opens, clicks, replies); `{verb}` needs `on day N`"
        )
    event_type, url = _dated(verb, rest)
    if day is None:
        raise ValueError(f"`{verb}` needs a day: `... on day N` (local days after enrolment)")
    return ScriptedAction(
        line=number,
        lead=lead,
        text=line,
        event_type=event_type,
        day=day,
        at=at or DEFAULT_TIME,
        url=url,
    )


def _dated(verb: str, rest: list[str]) -> tuple[str, str | None]:
    if verb in _FIXED_VERBS:
        event_type, noun = _FIXED_VERBS[verb]
        if [w.lower() for w in rest] != [noun]:
            raise ValueError(f"write `{verb} {noun} on day N`")
        return event_type, None
    if verb in _DATED_VERBS:
        if len(rest) != 1:
            raise ValueError(f"write `{verb} WHAT on day N` with one word or URL for WHAT")
        return _DATED_VERBS[verb], _url(rest[0]) if verb == "visits" else rest[0]
    if verb == "does":
        if len(rest) not in (1, 2) or not _EVENT_TYPE.fullmatch(rest[0]):
            raise ValueError("write `does EVENT_TYPE [URL] on day N` with a lower-case event type")
        return rest[0], _url(rest[1]) if len(rest) == 2 else None
    raise ValueError(f"unknown action {verb!r}: use one of {_VERBS}")


def _timing(words: list[str]) -> tuple[list[str], int | None, time | None, timedelta | None]:
    """Split `on day N`, `at HH:MM` and `after DURATION` off the end of an action, in any order."""
    day = at = after = None
    rest = list(words)
    while len(rest) >= 2:
        if len(rest) >= 3 and rest[-3].lower() == "on" and rest[-2].lower() == "day":
            day = _day(rest[-1])
            del rest[-3:]
        elif rest[-2].lower() == "at":
            at = _time(rest[-1])
            del rest[-2:]
        elif rest[-2].lower() == "after":
            after = parse_duration(rest[-1])
            del rest[-2:]
        else:
            break
    return rest, day, at, after


def _day(text: str) -> int:
    if not text.isdigit() or int(text) > _MAX_DAY:
        raise ValueError(f"day {text!r} is not a whole number from 0 to {_MAX_DAY}")
    return int(text)


def _time(text: str) -> time:
    try:
        hours, minutes = (int(part) for part in text.split(":"))
        return time(hours, minutes)
    except ValueError:
        raise ValueError(f"time {text!r} is not HH:MM") from None


def parse_duration(text: str) -> timedelta:
    """`2h`, `90m`, `1d12h`, `30s` as a timedelta."""
    parts = _DURATION_PART.findall(text.lower())
    if not parts or "".join(n + u for n, u in parts) != text.lower():
        raise ValueError(f"duration {text!r} is not like 2h, 90m, 1d12h or 30s")
    return timedelta(**{_DURATION_UNITS[unit]: int(n) for n, unit in parts})


def _url(text: str) -> str:
    if text.startswith("/") or re.match(r"https?://\S+$", text):
        return text
    raise ValueError(f"{text!r} is neither a path such as /pricing nor an http(s) URL")
