"""What erasing a lead removes and what it keeps: pure rules, no I/O.

An erased lead keeps its id, stage, grade and score (reports still add up) and loses everything that names
or describes a person. Its address survives only as the SHA-256 of its normalised form, in `suppressions`,
so a later import of the same address is recognised and never mailed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from nurture.core.lead import PROFILE_FIELDS

# Lead columns that carry personal data; all become NULL (tags become {}). The owner is our rep, not the lead.
ERASED_LEAD_FIELDS: Final = tuple(name for name in PROFILE_FIELDS if name != "owner")
ERASED_DOMAIN: Final = "erased.invalid"  # RFC 2606: can never be a real mailbox


def address_hash(email: str) -> str:
    """The SHA-256 (hex) of a normalised address: what `suppressions` keeps of it."""
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def erased_email(lead_id: int) -> str:
    """The placeholder that replaces an erased lead's address (the column is unique and required)."""
    return f"erased-{lead_id}@{ERASED_DOMAIN}"


def is_erased_email(email: str) -> bool:
    return email.endswith(f"@{ERASED_DOMAIN}")


def scrubbed_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """A touchpoint's or event's detail without anything that can carry personal data.

    Numbers and booleans (event ids, scores) are kept; text (URLs, user agents, referrers, IPs, names, notes)
    and nested values are dropped, since any of them may hold what a person typed or where they were.
    """
    return {k: v for k, v in detail.items() if isinstance(v, int | float | bool) or v is None}
