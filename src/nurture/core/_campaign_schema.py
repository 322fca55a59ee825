"""The untrusted shape of a campaign file: pydantic models for each key, and the checks across keys.

Private to `core.campaign`, which maps every problem found here to a line of the file and turns a valid
model into frozen dataclasses. Field names are the YAML keys (`grade`, `days`, `stage_in`, `from`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from email.utils import parseaddr
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StrictInt

from nurture.core._campaign_steps import step_checks
from nurture.core._yaml import STRICT, KeyPath, Models, is_int, listify, not_empty, problem
from nurture.core.branching import Condition, condition_from_data
from nurture.core.lead import GRADES, STAGES, is_time_zone

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SLUG: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
HH_MM: Final = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_TAG_KEY: Final = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,63}")  # as lead.py stores tag keys
_COUNTRY: Final = re.compile(r"[A-Za-z]{2}")


def _slug(value: str) -> str:
    if not SLUG.fullmatch(value):
        raise problem(f"{value!r} is not a slug: use a-z, 0-9, '-' and '_' (at most 64), starting a-z or 0-9")
    return value


def _known(kind: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise problem(f"unknown {kind} {value!r}: expected one of {', '.join(allowed)}")
        return value

    return check


def _grade(value: str) -> str:
    _known("grade", GRADES)(value)
    if value == "invalid":
        raise problem("grade 'invalid' is never contacted, so it cannot be in an audience")
    return value


_FULL_DAY_NAMES: Final = dict(
    zip(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"), WEEKDAYS, strict=True)
)


def _weekday(value: str) -> str:
    name = value.strip().lower()
    name = _FULL_DAY_NAMES.get(name, name)
    if name not in WEEKDAYS:
        raise problem(f"unknown weekday {value!r}: expected one of {', '.join(WEEKDAYS)}")
    return name


def _country(value: str) -> str:
    if not _COUNTRY.fullmatch(value):
        raise problem(f"{value!r} is not a two-letter country code such as TW or US")
    return value.upper()


def _tag_key(value: str) -> str:
    if not _TAG_KEY.fullmatch(value):
        raise problem(f"tag {value!r} never matches: lead tags are lower-case a-z, 0-9, '_', '.', '-'")
    return value


def _address(value: str) -> str:
    # An address ends up in a header: a line break here would be a header injection.
    if any(ch in value for ch in "\r\n\x00\x85\u2028\u2029"):
        raise problem("an address must be on one line")
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not (at and local and "." in domain) or any(ch.isspace() for ch in address):
        raise problem(f"{value!r} is not an email address such as 'Acme <growth@acme.example>'")
    return value


def _reply_to(value: str) -> str:
    return value if value == "owner" else _address(value)


def _zone(value: str) -> str:
    if not is_time_zone(value):
        raise problem(f"{value!r} is not an IANA time zone such as Asia/Taipei or UTC")
    return value


def _lead_or_zone(value: str) -> str:
    return value if value == "lead" else _zone(value)


def _hh_mm(value: str) -> str:
    if not HH_MM.fullmatch(value):
        raise problem(f'{value!r} is not a time of day as "HH:MM" (00:00 to 23:59)')
    return value


def _template_path(value: str) -> str:
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
        raise problem(f"{value!r} is not a path inside the templates folder, such as 'saas/welcome.html.j2'")
    return value


def _condition(value: Any) -> Condition:
    try:
        return condition_from_data(value)
    except ValueError as exc:
        raise problem(str(exc)) from None


Slug = Annotated[str, AfterValidator(_slug)]
Text = Annotated[str, Field(min_length=1)]
Grade = Annotated[str, AfterValidator(_grade)]
Stage = Annotated[str, AfterValidator(_known("stage", STAGES))]
Weekday = Annotated[str, AfterValidator(_weekday)]
Country = Annotated[str, AfterValidator(_country)]
TemplatePath = Annotated[str, AfterValidator(_template_path)]


class _Model(BaseModel):
    model_config = STRICT


class AudienceModel(_Model):
    grade: Annotated[list[Grade], BeforeValidator(listify), AfterValidator(not_empty("grade"))] = [
        "nurturable"
    ]
    stage: Annotated[list[Stage], BeforeValidator(listify), AfterValidator(not_empty("stage"))] = [
        "lead",
        "suspect",
    ]
    min_score: StrictInt | None = None
    max_score: StrictInt | None = None
    sources: Annotated[list[str], BeforeValidator(listify)] = []
    countries: Annotated[list[Country], BeforeValidator(listify)] = []
    tags: dict[Annotated[str, AfterValidator(_tag_key)], Annotated[list[str], BeforeValidator(listify)]] = {}


class SenderModel(_Model):
    from_address: Annotated[str, AfterValidator(_address)] = Field(alias="from")
    reply_to: Annotated[str, AfterValidator(_reply_to)] | None = None
    postal_address: Text | None = None


class SendWindowModel(_Model):
    days: Annotated[list[Weekday], BeforeValidator(listify), AfterValidator(not_empty("weekday"))] = list(
        WEEKDAYS[:5]
    )
    start: Annotated[str, AfterValidator(_hh_mm)] = "09:00"
    end: Annotated[str, AfterValidator(_hh_mm)] = "17:00"
    timezone: Annotated[str, AfterValidator(_lead_or_zone)] = "lead"
    default_timezone: Annotated[str, AfterValidator(_zone)] = "UTC"
    skip_holidays: bool = False  # public holidays of the lead's country are not send days
    missed: Literal["next_window", "skip"] = "next_window"  # a touch whose window passed unsent


class LateModel(_Model):
    skip_after_hours: StrictInt = Field(ge=1)


class ExitModel(_Model):
    score_at_least: StrictInt | None = None
    stage_in: Annotated[list[Stage], BeforeValidator(listify)] = ["mql", "sql", "opportunity", "customer"]


class VariantModel(_Model):
    id: Slug
    weight: StrictInt = Field(default=1, ge=1, le=10_000)
    subject: Text | None = None
    template: TemplatePath | None = None
    text_template: TemplatePath | None = None


class TaskModel(_Model):
    title: Text
    note: Text | None = None


# A condition is read whole by `branching.condition_from_data`; whether its steps exist is a cross check.
ConditionField = Annotated[Any, AfterValidator(_condition)]


class StepModel(_Model):
    """An email step (subject and template) or a rep task (`task:`), `day` or `business_days` after the
    first send opportunity. Which keys go together is checked in `_campaign_steps`."""

    id: Slug
    day: StrictInt | None = Field(default=None, ge=0)
    business_days: StrictInt | None = Field(default=None, ge=0)
    subject: Text | None = None
    template: TemplatePath | None = None
    text_template: TemplatePath | None = None
    variants: list[VariantModel] = []
    when: ConditionField = None
    skip_if: ConditionField = None
    task: TaskModel | None = None


class CampaignModel(_Model):
    id: Slug
    name: Text
    priority: StrictInt = 100
    audience: AudienceModel = AudienceModel()
    sender: SenderModel
    send_window: SendWindowModel = SendWindowModel()
    exit: ExitModel = ExitModel()
    steps: Annotated[list[StepModel], AfterValidator(not_empty("step"))]
    late: LateModel | None = None
    on_change: Literal["keep", "follow"] = "keep"  # what a new version of the file does to enrolled leads


# The model behind each mapping of the file, by key path with list indexes as "*": for "did you mean".
MODELS: Final[Models] = {
    (): CampaignModel,
    ("audience",): AudienceModel,
    ("sender",): SenderModel,
    ("send_window",): SendWindowModel,
    ("exit",): ExitModel,
    ("steps", "*"): StepModel,
    ("steps", "*", "variants", "*"): VariantModel,
    ("steps", "*", "task"): TaskModel,
    ("late",): LateModel,
}


def cross_checks(data: Mapping[str, Any], lines: Mapping[KeyPath, int]) -> list[tuple[KeyPath, str]]:
    """Check what no single key can: step order and ids, score range, window hours.

    Runs on the raw data, even when some keys are invalid, so that every problem is reported at once.
    """
    found: list[tuple[KeyPath, str]] = []
    steps = data.get("steps")
    if isinstance(steps, list):
        found += step_checks(steps, lines)
    audience = data.get("audience")
    if isinstance(audience, dict):
        low, high = audience.get("min_score"), audience.get("max_score")
        if is_int(low) and is_int(high) and low > high:
            found.append((("audience", "max_score"), f"min_score {low} is above max_score {high}"))
    window = data.get("send_window")
    if isinstance(window, dict):
        start, end = window.get("start", "09:00"), window.get("end", "17:00")
        start_at, end_at = _minutes(start), _minutes(end)
        if start_at is not None and end_at is not None and start_at >= end_at:
            found.append((("send_window", "end"), f"end {end} must be after start {start}"))
    return found


def _minutes(value: Any) -> int | None:
    """Minutes after midnight of an "HH:MM" string, or None when it is not one."""
    match = HH_MM.fullmatch(value) if isinstance(value, str) else None
    return int(match[1]) * 60 + int(match[2]) if match else None
