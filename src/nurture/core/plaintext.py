"""Plain-text email bodies laid out as mail readers expect: lines of at most 78 columns, no trailing blanks.

A step without a text template gets a text part derived from its HTML (`render`). The converter lays out
the HTML's layout tables as a grid, so every line comes out padded with spaces to the width of the widest
cell (about 300 columns in a typical marketing email, most of the part blanks). `wrap_plain_text` undoes
that: trailing blanks go, runs of blank lines become one (paragraphs stay apart), and each line is wrapped
at 78 columns (RFC 5322's recommended limit) with the standard library's `textwrap`. Words are broken at
spaces only, never inside a word or at a hyphen, so a URL always stays whole: a line is longer than 78
columns only when it holds one token too long to fit (a long URL), alone. Pure.
"""

from __future__ import annotations

import textwrap
from typing import Final

WIDTH: Final = 78
_MAX_INDENT_SHARE: Final = 4  # an indent past a quarter of the width is a layout cell's place, not a list's


def wrap_plain_text(text: str, *, width: int = WIDTH) -> str:
    """Return `text` with trailing blanks cut, blank runs squeezed to one line and lines wrapped at `width`.

    A line's leading spaces (a list's indent) are kept on each line it wraps into, unless they are wider
    than a quarter of `width`, as a cell pushed right by a layout table is.
    """
    out: list[str] = []
    pending_blank = False
    for raw in text.expandtabs().splitlines():
        line = raw.rstrip()
        if not line:
            pending_blank = bool(out)
            continue
        if pending_blank:
            out.append("")
            pending_blank = False
        content = line.lstrip(" ")
        indent = " " * (len(line) - len(content))
        if len(indent) > width // _MAX_INDENT_SHARE:
            indent = ""
        wrapped = textwrap.wrap(
            content,
            width=width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        out += (piece.rstrip() for piece in wrapped)
    return "\n".join(out)


_SENTENCE_ENDS: Final = (".", "!", "?", "\u2026")


def full_stop(text: str) -> str:
    """`text` ending a sentence: a period added unless it already ends with one (`Ltda.`), `!`, `?` or `…`.

    The templates' `full_stop` filter: `on behalf of {{ lead.company | full_stop }}` never prints "Ltda..".
    """
    stripped = text.rstrip()  # keeps markupsafe.Markup a Markup, so an escaped block is not escaped twice
    return stripped if not stripped or stripped.endswith(_SENTENCE_ENDS) else stripped + "."
