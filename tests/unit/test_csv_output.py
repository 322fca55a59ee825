"""The one CSV writer: text round-trips through csv.reader, with a quote before what could be a formula."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

import nurture
from nurture.csv_output import Cell, CsvOutput

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_LIKE = st.builds(lambda t, rest: t + rest, st.sampled_from(TRIGGERS), st.text(max_size=30))
CELLS = st.one_of(FORMULA_LIKE, st.text(max_size=30))


def written(rows: Sequence[Sequence[Cell]]) -> list[list[str]]:
    out = io.StringIO(newline="")
    CsvOutput(out).writerows(rows)
    return list(csv.reader(io.StringIO(out.getvalue(), newline="")))


def is_plain_number(cell: str) -> bool:
    """`-2`, `+1.5`: a figure, left alone (the writer's documented exception to OWASP's list)."""
    return re.fullmatch(r"[+-]?[0-9]+(?:\.[0-9]+)?", cell) is not None


@given(st.lists(st.lists(CELLS, min_size=1, max_size=5), min_size=1, max_size=5))
@example([["+0", "-12.5", "+0x"]])
def test_text_cells_read_back_as_written_with_a_quote_before_formula_characters(
    rows: list[list[str]],
) -> None:
    back = written(rows)
    for row, read in zip(rows, back, strict=True):
        for cell, text in zip(row, read, strict=True):
            quoted = cell.startswith(TRIGGERS) and not is_plain_number(cell)
            assert text == ("'" + cell if quoted else cell)


def test_owasp_examples_are_quoted_and_only_they() -> None:
    cells = [
        "=1+1",
        "+cmd|' /C calc'!A0",
        "@SUM(1)",
        "-2+3+cmd",
        "\t=1",
        "\r=1",
        " =1",
        "\uff1d1",
        "'=1",
        "a=1",
    ]
    assert written([cells]) == [
        [
            "'=1+1",
            "'+cmd|' /C calc'!A0",
            "'@SUM(1)",
            "'-2+3+cmd",
            "'\t=1",
            "'\r=1",
            " =1",
            "\uff1d1",
            "'=1",
            "a=1",
        ]
    ]


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_numbers_stay_numbers_whether_given_as_numbers_or_as_plain_decimal_text(value: int | float) -> None:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    signed = "+" + text.removeprefix("-")
    assert written([[value, text, signed]]) == [[str(value), text, signed]]


def test_text_that_only_starts_like_a_number_is_quoted() -> None:
    assert written([["-2+3", "-1e5", "+1.", "-0x1", "-.5", ""]]) == [
        ["'-2+3", "'-1e5", "'+1.", "'-0x1", "'-.5", ""]
    ]


def test_no_module_but_the_writer_makes_its_own_csv_writer() -> None:
    source = Path(nurture.__file__).parent
    writers = [
        p for p in source.rglob("*.py") if "csv.writer(" in p.read_text() or "DictWriter" in p.read_text()
    ]
    assert [p.name for p in writers] == ["csv_output.py"]
