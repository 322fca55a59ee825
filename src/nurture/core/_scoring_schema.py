"""The untrusted shape of `scoring.yaml`: pydantic models for each key, and the checks across keys.

Private to `core.scoring`, which turns a valid model into frozen dataclasses. Field names are the YAML keys.
Durations are written as `2w`, `14d`, `24h`, `90m` (minutes) or `10s`, or as sums such as `1d12h`; a bare
number is refused because its unit would be a guess.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StrictInt

from nurture.core._yaml import STRICT, KeyPath, Models, is_int, listify, not_empty, problem

EVENT_TYPES: Final = (
    "email_open",
    "email_click",
    "page_visit",
    "content_download",
    "form_submit",
    "proposal_view",
    "email_reply",
    "meeting_booked",
)
# Lower-case fragments of user agents that fetch pixels and links on nobody's behalf: mail security gateways
# that open and click everything on arrival, image and privacy proxies, link previewers and HTTP libraries.
DEFAULT_SCANNER_USER_AGENTS: Final = (
    "googleimageproxy",
    "yahoomailproxy",
    "barracuda",
    "mimecast",
    "proofpoint",
    "microsoft office existence discovery",
    "symantec",
    "messagelabs",
    "trendmicro",
    "forcepoint",
    "ironport",
    "bingpreview",
    "slackbot",
    "facebookexternalhit",
    "linkedinbot",
    "twitterbot",
    "headlesschrome",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "apache-httpclient",
    "libwww-perl",
    "java/",
    "curl/",
    "wget/",
)
_EVENT_TYPE: Final = re.compile(r"[a-z][a-z0-9_]{0,59}")  # events.type is 60 characters
# Alert triggers are stored as "moment:<name>" in 40 characters.
_MOMENT_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_DURATION: Final = re.compile(r"(?:[0-9]{1,6}[wdhms])+")
_DURATION_PART: Final = re.compile(r"([0-9]+)([wdhms])")
_UNITS: Final = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_LINE_BREAKS: Final = "\r\n\x00\x85\u2028\u2029"


def _event_type(value: str) -> str:
    if not _EVENT_TYPE.fullmatch(value):
        raise problem(f"{value!r} is not an event type: use a-z, 0-9 and '_' (at most 60), starting a-z")
    close = difflib.get_close_matches(value, EVENT_TYPES, n=1, cutoff=0.85)
    if value not in EVENT_TYPES and close:
        # Custom types are fine, but one a letter away from a built-in one is a typo that would never score.
        raise problem(f"unknown event type {value!r} (did you mean {close[0]!r}?)")
    return value


def parse_duration(value: Any) -> timedelta:
    """Read `14d`, `24h`, `1d12h` ... as a timedelta; anything else is a validation problem."""
    if is_int(value):
        raise problem(f"{value} is not a duration: write one such as 14d, 24h, 90m or 10s")
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None:
        raise problem("expected a duration such as 14d, 24h, 90m or 10s")
    if not _DURATION.fullmatch(text):
        raise problem(f"{value!r} is not a duration: write one such as 14d, 24h, 90m or 10s")
    parts = (timedelta(**{_UNITS[unit]: int(n)}) for n, unit in _DURATION_PART.findall(text))
    return sum(parts, timedelta(0))


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise problem("must be longer than 0s")
    return value


def _path_pattern(value: str) -> str:
    if not value.startswith(("/", "*")) or any(ch.isspace() for ch in value) or len(value) > 300:
        raise problem(
            f"{value!r} is not a URL path pattern: start it with / or *, such as /pricing or */pricing"
        )
    return value


def _user_agent(value: str) -> str:
    if not value.strip() or any(ch in value for ch in _LINE_BREAKS):
        raise problem("a user agent fragment is one line of text, such as Mimecast")
    return value.strip()


def _moment_name(value: str) -> str:
    if not _MOMENT_NAME.fullmatch(value):
        raise problem(f"{value!r} is not a moment name: use a-z, 0-9, '-' and '_' (at most 32)")
    return value


EventType = Annotated[str, AfterValidator(_event_type)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]
PathPattern = Annotated[str, AfterValidator(_path_pattern)]
Points = Annotated[StrictInt, Field(ge=0)]


class _Model(BaseModel):
    model_config = STRICT


class ThresholdsModel(_Model):
    mql: StrictInt = Field(ge=1)
    hot: StrictInt = Field(ge=1)


class UrlRuleModel(_Model):
    pattern: PathPattern
    points: Points
    event_types: Annotated[
        list[EventType], BeforeValidator(listify), AfterValidator(not_empty("event type"))
    ] = ["page_visit"]


class MomentModel(_Model):
    name: Annotated[str, AfterValidator(_moment_name)]
    event_type: EventType
    url_pattern: PathPattern | None = None
    after_silence: PositiveDuration | None = None


class ScoringModel(_Model):
    points: dict[EventType, Points]
    thresholds: ThresholdsModel
    half_life: PositiveDuration = timedelta(days=14)
    daily_caps: dict[EventType, Annotated[StrictInt, Field(ge=1)]] = {}
    url_rules: list[UrlRuleModel] = []
    min_open_delay: Duration = timedelta(seconds=10)
    scanner_user_agents: (
        Annotated[list[Annotated[str, AfterValidator(_user_agent)]], AfterValidator(not_empty("user agent"))]
        | None
    ) = None  # None: the built-in list
    click_burst: StrictInt = Field(3, ge=2)
    moments: list[MomentModel] = []
    alert_cooldown: Duration = timedelta(hours=24)


MODELS: Final[Models] = {
    (): ScoringModel,
    ("thresholds",): ThresholdsModel,
    ("url_rules", "*"): UrlRuleModel,
    ("moments", "*"): MomentModel,
}


def cross_checks(data: Mapping[str, Any], lines: Mapping[KeyPath, int]) -> list[tuple[KeyPath, str]]:
    """Check what no single key can: the order of the thresholds and unique moment names."""
    found: list[tuple[KeyPath, str]] = []
    thresholds = data.get("thresholds")
    if isinstance(thresholds, dict):
        mql, hot = thresholds.get("mql"), thresholds.get("hot")
        if is_int(mql) and is_int(hot) and hot <= mql:
            found.append((("thresholds", "hot"), f"hot ({hot}) must be above mql ({mql})"))
    moments = data.get("moments")
    if isinstance(moments, list):
        first_at: dict[str, int] = {}
        for index, moment in enumerate(moments):
            name = moment.get("name") if isinstance(moment, dict) else None
            if not isinstance(name, str):
                continue
            if name in first_at:
                where = lines.get(("moments", first_at[name], "name"), "?")
                found.append(
                    (("moments", index, "name"), f"duplicate moment {name!r} (first at line {where})")
                )
            else:
                first_at[name] = index
    return found
