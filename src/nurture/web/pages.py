"""The few HTML pages the tracking web shows, rendered on the server with every value escaped.

The pages carry no script, and their one inline style is allowed by its hash, so the Content-Security-Policy
can refuse everything else.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Final

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}"
    "h1{font-size:1.4rem}button{font:inherit;padding:.5rem 1.2rem;cursor:pointer}"
)


def content_security_policy(style: str) -> str:
    """A policy that allows no script, frame or foreign form target, and the one inline `style` only."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


CONTENT_SECURITY_POLICY: Final = content_security_policy(_STYLE)

# No `action`: the form posts back to the URL the page was fetched from, prefix and all (RFC 8058 body).
_UNSUBSCRIBE_FORM: Final = (
    '<form method="post">'
    '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
    '<button type="submit">Unsubscribe</button>'
    "</form>"
)


def page(title: str, sentence: str, *, form: str = "") -> str:
    """Return a complete HTML document with a heading, one escaped sentence and an optional trusted form."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1><p>{escape(sentence)}</p>{form}</main></body></html>"
    )


def unsubscribe_confirm_page() -> str:
    return page(
        "Unsubscribe",
        "Press the button to stop receiving these emails.",
        form=_UNSUBSCRIBE_FORM,
    )


def unsubscribed_page() -> str:
    return page("You are unsubscribed", "You will not receive any more of these emails from us.")


def not_found_page() -> str:
    return page(
        "Link not valid",
        "This link is not valid. If you copied it from an email, check that it is complete.",
    )


def error_page(status_code: int, reason: str) -> str:
    return page(f"{status_code} {reason}", "This page cannot be shown.")
