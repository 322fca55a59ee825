"""The one CSV writer: `nurture report --format csv` and `nurture leads import --rejects` write through it.

Cells come from leads (a source tag, an owner, the email of a rejected row), and a spreadsheet runs a cell
that starts with a formula character as a formula (`=HYPERLINK(...)`, `+cmd|' /C calc'!A0`, `@SUM(...)`).
Following OWASP's CSV-injection advice exactly, a text cell whose first character is `=`, `+`, `-`, `@`, a
tab or a carriage return gets a single quote in front (`'=HYPERLINK(...)`), which spreadsheets read as "this
is text" and do not show. Two kinds of cell are left as they are, because no formula can hide in them:
numbers (int and float values, the report's counts), and text that is a plain decimal number (`-2`, `+1.5`,
a negative figure the report formats). Nothing outside OWASP's list is touched: not the full-width forms
(U+FF1D, U+FF0B, U+FF0D, U+FF20), and not a space before `=` (a cell `" =1"` is text in Excel).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Final, Protocol

FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list
_PLAIN_NUMBER: Final = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")

Cell = str | int | float | None


class _Text(Protocol):
    def write(self, text: str, /) -> int: ...


def neutralise(cell: Cell) -> Cell:
    """The cell as it may be written: a quote before text a spreadsheet would run as a formula."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


class CsvOutput:
    """csv.writer with every cell neutralised."""

    __slots__ = ("_writer",)

    def __init__(self, handle: _Text, *, lineterminator: str = "\r\n") -> None:
        self._writer = csv.writer(handle, lineterminator=lineterminator)

    def writerow(self, row: Iterable[Cell]) -> None:
        self._writer.writerow([neutralise(c) for c in row])

    def writerows(self, rows: Iterable[Iterable[Cell]]) -> None:
        for row in rows:
            self.writerow(row)
