"""Leads as values, and the turning of one inbound row into a lead or a row error.

`normalise_row` never raises mid-batch: it returns either a `LeadRow` or a `RowError`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from nurture.core.stages import Stage

GRADES: Final = ("invalid", "nurturable", "intent", "convertible", "customer")
STAGES: Final = tuple(Stage)  # in lifecycle order

# Columns stored on the lead itself; every other non-empty column is kept as a source tag.
PROFILE_FIELDS: Final = (
    "first_name",
    "last_name",
    "company",
    "title",
    "industry",
    "company_size",
    "country",
    "timezone",
    "phone",
    "owner",
)
_COLUMN_ALIASES: Final = {
    "e-mail": "email",
    "email_address": "email",
    "time_zone": "timezone",
    "tz": "timezone",
}
_TAG_KEY = re.compile(r"[a-z0-9_][a-z0-9_.-]*")
# Checked before ZoneInfo sees a name: a long path-like value can make ZoneInfo recurse until it crashes.
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]{1,32}(?:/[A-Za-z0-9_+-]{1,32}){0,3}")
# Joiners shape Persian, Indic and emoji text; they are format characters but not line breaks.
_KEEP = frozenset({" ", "\u200c", "\u200d"})
_SPACES = re.compile(r" {2,}")
# The common address: an ASCII dot-atom before the @ (RFC 5322 atext, as email-validator checks it) and a
# plain host name after it. Anything else (IDN, quoted, display names, oddities) goes to email-validator.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.-]+)")
_MAX_ADDRESS_LENGTH: Final = 254  # RFC 5321 via email-validator, in octets (= characters for ASCII)


@dataclass(frozen=True, slots=True)
class LeadLimits:
    """How much one inbound row may carry (NURTURE_MAX_TAGS_PER_LEAD and the others; these are defaults).

    They bound what a lead holds, for CSV and API rows alike. A CSV file is first read within its own,
    larger limits (`csv_input.CsvLimits`, NURTURE_CSV_MAX_*), which bound the cost of reading a file and
    refuse a cell too big to become a row at all; a cell within those is held to these."""

    max_tags: int = 100
    max_tag_key_chars: int = 64
    max_tag_value_chars: int = 1000
    max_field_chars: int = 500

    @property
    def max_values(self) -> int:
        """Non-empty values a row within the limits can have: tags, profile fields, email, grade, stage."""
        return self.max_tags + len(PROFILE_FIELDS) + 3 + len(_COLUMN_ALIASES)


DEFAULT_LEAD_LIMITS: Final = LeadLimits()


@dataclass(frozen=True, slots=True)
class Lead:
    """What the core needs to know about a lead to decide anything."""

    id: int
    email: str
    grade: str | None = None
    stage: str = "lead"
    score: int = 0
    timezone: str | None = None
    country: str | None = None
    owner: str | None = None
    suppressed: bool = False
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class LeadRow:
    """A validated inbound row: empty profile fields mean "leave unchanged".

    `stage_reason` is the caller's explicit reason for the row's stage: with it, the stage may move the lead
    backwards (see `core.stages`); without it, a backward move is refused.
    """

    email: str
    profile: Mapping[str, str]
    grade: str | None
    stage: Stage | None
    tags: Mapping[str, str]
    stage_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    email: str
    reason: str


def normalise_email(raw: str) -> str:
    """Return the canonical form of an address (trimmed, lower-case) or raise ValueError.

    email-validator decides; a plain ASCII address whose domain it has already accepted as written is
    answered without it, with the same result (a property test holds the two paths to that).
    """
    address = raw.strip()
    plain = _PLAIN_ADDRESS.fullmatch(address)
    if plain and len(address) <= _MAX_ADDRESS_LENGTH and _is_plain_domain(plain[2].lower()):
        return address.lower()
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return checked.normalized.lower()


@lru_cache(maxsize=4096)
def _is_plain_domain(domain: str) -> bool:
    """True when email-validator accepts `domain` (lower-case ASCII) and keeps it as it is: not an IDNA
    `xn--` name, which it turns into Unicode. Imports have few distinct domains, so this is cached."""
    try:
        # The shortest possible address: a domain too long for it is too long for every address.
        checked = validate_email(f"x@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return False
    return checked.domain == domain and checked.ascii_domain == domain


@lru_cache(maxsize=1024)
def _normalise_owner(raw: str) -> str | ValueError:
    """An owner column repeats a handful of rep addresses, so each distinct value is checked once."""
    try:
        return normalise_email(raw)
    except ValueError as exc:
        return exc


def normalise_row(
    row: Mapping[str, str | None], *, row_number: int, limits: LeadLimits = DEFAULT_LEAD_LIMITS
) -> LeadRow | RowError:
    """Validate one inbound row (CSV or API) and split it into profile fields and source tags, within
    `limits`: a row over one is a `RowError` naming it."""
    # Before any per-value work; a row with no more columns than that cannot be over it (most rows).
    if len(row) > limits.max_values and sum(1 for value in row.values() if value) > limits.max_values:
        return RowError(row_number, _short(row.get("email") or ""), too_many_tags(limits))
    cleaned: dict[str, str] = {}
    for key, value in row.items():
        if key is not None:
            text = _clean(value)
            # Two columns may alias one field ("email" and "e-mail"): an empty one never hides a filled one.
            if text or _column_key(key) not in cleaned:
                cleaned[_column_key(key)] = text
    raw_email = cleaned.pop("email", "")
    try:
        email = normalise_email(raw_email)
    except ValueError as exc:
        return RowError(row_number, _short(raw_email), f"email: {exc}" if raw_email else "email: missing")
    grade = cleaned.pop("grade", "").lower() or None
    stage = cleaned.pop("stage", "").lower() or None
    problem = _check_values(grade, stage, cleaned)
    if problem:
        return RowError(row_number, email, problem)
    profile = {k: cleaned.pop(k) for k in PROFILE_FIELDS if cleaned.get(k)}
    if "owner" in profile:
        owner = _normalise_owner(profile["owner"])
        if isinstance(owner, ValueError):
            return RowError(row_number, email, f"owner: {owner}")
        profile["owner"] = owner
    tags = {k: v for k, v in cleaned.items() if v and k not in PROFILE_FIELDS}
    problem = _check_sizes(profile, tags, limits) or _check_tag_names(cleaned, limits)
    if problem:
        return RowError(row_number, email, problem)
    return LeadRow(
        email=email, profile=profile, grade=grade, stage=Stage(stage) if stage else None, tags=tags
    )


def _check_tag_names(cleaned: Mapping[str, str], limits: LeadLimits) -> str | None:
    bad_tags = sorted(k for k in cleaned if not _TAG_KEY.fullmatch(k) or len(k) > limits.max_tag_key_chars)
    if not bad_tags:
        return None
    if _TAG_KEY.fullmatch(bad_tags[0]):
        return f"column name longer than {limits.max_tag_key_chars} characters: {_short(bad_tags[0])!r}"
    return f"column name not usable as a tag: {_short(bad_tags[0])!r}"


def _check_sizes(profile: Mapping[str, str], tags: Mapping[str, str], limits: LeadLimits) -> str | None:
    if len(tags) > limits.max_tags:
        return too_many_tags(limits)
    for name, value in profile.items():
        if len(value) > limits.max_field_chars:
            return f"{name}: longer than {limits.max_field_chars} characters"
    for name, value in tags.items():
        if len(value) > limits.max_tag_value_chars:
            return f"tags.{name}: longer than {limits.max_tag_value_chars} characters"
    return None


def too_many_tags(limits: LeadLimits) -> str:
    return f"tags: more than {limits.max_tags} source tags (columns other than the lead's fields)"


def _short(text: str) -> str:
    """`text` cut for a message: a hostile row may hold a megabyte in one cell."""
    return text if len(text) <= 40 else f"{text[:40]}..."


def _check_values(grade: str | None, stage: str | None, cleaned: Mapping[str, str]) -> str | None:
    if grade is not None and grade not in GRADES:
        return f"grade: {grade!r} is not one of {', '.join(GRADES)}"
    if stage is not None and stage not in STAGES:
        return f"stage: {stage!r} is not one of {', '.join(STAGES)}"
    zone = cleaned.get("timezone")
    if zone and not is_time_zone(zone):
        return f"timezone: {zone!r} is not an IANA time zone"
    return None


@lru_cache(maxsize=1024)
def is_time_zone(name: str) -> bool:
    """True when `name` is a known IANA zone such as `Asia/Taipei` (cached: imports repeat a few zones)."""
    if len(name) > 64 or not _ZONE_KEY.fullmatch(name):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


@lru_cache(maxsize=256)
def _column_key(name: str) -> str:
    key = name.strip().lower().replace(" ", "_")
    return _COLUMN_ALIASES.get(key, key)


def _clean(value: str | None) -> str:
    """Trim and drop control characters (CR, LF, NUL, Unicode separators) from a field."""
    if value is None:
        return ""
    text = unicodedata.normalize("NFC", value)
    # isprintable() is False exactly for categories C* and Z* other than the ASCII space: most fields
    # have none of those, so the per-character pass runs only for the rest.
    if not text.isprintable():
        text = "".join(" " if unicodedata.category(ch)[0] in "CZ" and ch not in _KEEP else ch for ch in text)
    if "  " in text:
        text = _SPACES.sub(" ", text)
    return text.strip()
