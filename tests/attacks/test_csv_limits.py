"""Oversized CSV input is refused with a reason and costs no good row, through `nurture leads import`.

A field over NURTURE_CSV_MAX_FIELD_CHARS or a record over NURTURE_CSV_MAX_ROW_CHARS is a row error (row
number, line, reason) like any other: the import goes on and every good row before and after it goes in. A
header over NURTURE_CSV_MAX_COLUMNS (or too long to be a line) refuses the file in one line. Each limit is
tried at limit - 1, limit and limit + 1.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.csv_input import CsvLimits, CsvRow, CsvRowError, open_csv
from tests.harness.cli import Cli

GOOD_ROWS = 3000
MIDDLE = GOOD_ROWS // 2  # the bad record comes after this many good rows


def good_row(i: int, width: int) -> list[str]:
    return [f"lead{i}@example.com", "Acme", *(["webinar"] * (width - 2))]


def write_with_bad_record_in_the_middle(path: Path, header: list[str], bad: str) -> None:
    """GOOD_ROWS good rows with `bad` (already CSV, one record) after the first MIDDLE of them."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(good_row(i, len(header)) for i in range(MIDDLE))
        handle.write(bad)
        writer.writerows(good_row(i, len(header)) for i in range(MIDDLE, GOOD_ROWS))


HEADER = ["email", "company", *(f"x{i}" for i in range(10))]
BIG = 200_000  # over the default field limit, 131,072
FILLER = ",".join(["y"] * 10)
# The bad record, the reason given for it, and how many lines it has: the second line of a quoted value cut
# off at the limit is read again, as a row of its own, and refused too (11 fields), never taken or lost.
OVERSIZED = {
    "unquoted field": (
        f"big@example.com,{'z' * BIG},{FILLER}\n",
        "a field on line 1502 is over 131,072 characters (NURTURE_CSV_MAX_FIELD_CHARS)",
        1,
    ),
    "quoted field over lines": (
        'big@example.com,"' + "z" * (BIG // 2) + "\n" + "z" * (BIG // 2) + f'",{FILLER}\n',
        "a field from line 1502 to 1503 is over 131,072 characters (NURTURE_CSV_MAX_FIELD_CHARS)",
        2,
    ),
    "record of fields each under the field limit": (
        "big@example.com,Acme," + ",".join(["w" * 110_000] * 10) + "\n",
        "the line is over 1,048,576 characters (NURTURE_CSV_MAX_ROW_CHARS)",
        1,
    ),
}


@pytest.mark.parametrize("shape", list(OVERSIZED))
def test_an_oversized_record_among_thousands_is_one_row_error_and_every_good_row_goes_in(
    tmp_path: Path, shape: str
) -> None:
    bad, reason, lines = OVERSIZED[shape]
    write_with_bad_record_in_the_middle(tmp_path / "leads.csv", HEADER, bad)

    result = Cli.in_folder(tmp_path)(
        "leads", "import", "leads.csv", "--rejects", "rejects.csv", "--format", "json"
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert (report["rows"], report["inserted"]) == (GOOD_ROWS + lines, GOOD_ROWS)
    bad_rows = list(range(MIDDLE + 2, MIDDLE + 2 + lines))  # the header is row 1
    assert [r["row"] for r in report["rejected"]] == bad_rows
    assert report["rejected"][0]["reason"].startswith(f"line {MIDDLE + 2}: {reason}")
    with (tmp_path / "rejects.csv").open(newline="", encoding="utf-8") as handle:
        assert [int(r["row"]) for r in csv.DictReader(handle)] == bad_rows
    every = json.loads(Cli.in_folder(tmp_path)("report", "--format", "json").stdout)
    assert every["funnel"][0]["leads"] == GOOD_ROWS


LIMITS = {"NURTURE_CSV_MAX_FIELD_CHARS": "50", "NURTURE_CSV_MAX_ROW_CHARS": "100"}


def padded_row(number: int, length: int) -> str:
    """A row of `length` characters (no field over 50): an email, then fields filling it up."""
    start = f"r{number}@example.com,"
    rest = length - len(start)
    first = min(rest, 40)
    second = rest - first - 1  # the comma between them
    return start + "c" * first + "," + "t" * second


def test_the_field_and_row_limits_at_limit_minus_one_limit_and_limit_plus_one(tmp_path: Path) -> None:
    lines = ["email,company,title"]
    lines += [f"f{n}@example.com,{'c' * n},T" for n in (49, 50, 51)]  # rows 2-4: the field limit
    lines += [padded_row(n, n) for n in (99, 100, 101)]  # rows 5-7: the row limit
    assert [len(line) for line in lines[4:]] == [99, 100, 101]
    (tmp_path / "leads.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())  # CR LF is not counted

    result = Cli.in_folder(tmp_path, **LIMITS)("leads", "import", "leads.csv", "--format", "json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inserted"] == 4
    assert [(r["row"], r["reason"]) for r in report["rejected"]] == [
        (4, "line 4: field `company` has 51 characters, over the limit of 50 (NURTURE_CSV_MAX_FIELD_CHARS)"),
        (7, "line 7: the line is over 100 characters (NURTURE_CSV_MAX_ROW_CHARS)"),
    ]


@pytest.mark.parametrize(("columns", "refused"), [(4, False), (5, False), (6, True)])
def test_the_column_limit_at_limit_minus_one_limit_and_limit_plus_one(
    tmp_path: Path, columns: int, refused: bool
) -> None:
    header = ["email", *(f"tag{i}" for i in range(1, columns))]
    (tmp_path / "leads.csv").write_text(",".join(header) + "\na@example.com" + ",v" * (columns - 1) + "\n")

    result = Cli.in_folder(tmp_path, NURTURE_CSV_MAX_COLUMNS="5")("leads", "import", "leads.csv")

    if refused:
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "error: leads.csv:1: the header has 6 columns, over the limit of 5 (NURTURE_CSV_MAX_COLUMNS); "
            "nothing imported"
        ]
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("1 new, 0 updated, 0 rejected")


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        (1_001, "the header has 1,001 columns, over the limit of 1,000 (NURTURE_CSV_MAX_COLUMNS)"),
        (1_000_000, "the header line is over 1,048,576 characters (NURTURE_CSV_MAX_ROW_CHARS)"),
    ],
)
def test_a_huge_header_refuses_the_file_in_one_line(tmp_path: Path, columns: int, reason: str) -> None:
    header = ",".join(["email", *(f"c{i}" for i in range(1, columns))])
    (tmp_path / "leads.csv").write_text(header + "\na@example.com" + "," * (columns - 1) + "\n")

    result = Cli.in_folder(tmp_path)("leads", "import", "leads.csv")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: leads.csv:1: {reason}; nothing imported"]


@settings(max_examples=200, deadline=None)
@given(
    field_limit=st.integers(min_value=8, max_value=150),  # the emails have 7 characters
    row_limit=st.integers(min_value=20, max_value=200),
    lengths=st.lists(st.integers(min_value=0, max_value=250), min_size=1, max_size=8),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    quoted=st.booleans(),
)
def test_a_field_or_row_is_refused_exactly_when_it_is_over_its_limit(
    field_limit: int, row_limit: int, lengths: list[int], newline: str, quoted: bool
) -> None:
    """Rows `rN@x.co,<n characters>`, the value quoted or not, each line ending in `newline`."""
    values = ["v" * n for n in lengths]
    cells = [f'"{v}"' if quoted else v for v in values]
    lines = ["email,note", *(f"r{i}@x.co,{c}" for i, c in enumerate(cells))]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "leads.csv"
        path.write_text(newline.join(lines) + newline, newline="")
        with open_csv(path, CsvLimits(field_limit, row_limit, 5)) as source:
            items = list(source)
    assert len(items) == len(values)
    for line, value, item in zip(lines[1:], values, items, strict=True):
        if len(line) > row_limit:
            assert isinstance(item, CsvRowError), item
            assert "NURTURE_CSV_MAX_ROW_CHARS" in item.reason
        elif len(value) > field_limit:
            assert isinstance(item, CsvRowError), item
            assert f"field `note` has {len(value):,} characters" in item.reason
        else:
            assert isinstance(item, CsvRow), item
            assert item.values["note"] == value


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_quoted_value_over_line_breaks_is_held_to_the_field_limit_like_a_one_line_value(
    tmp_path: Path, newline: str
) -> None:
    """Under Python's own csv limit, only the reader's check sees a multi-line value over the field limit."""
    long_value = "a" * 30 + newline + "b" * 30  # 60 or 61 characters, each line under 50
    path = tmp_path / "leads.csv"
    path.write_text(
        f'email,note{newline}x@x.co,"{long_value}"{newline}y@x.co,"a{newline}b"{newline}', newline=""
    )

    with open_csv(path, CsvLimits(50, 1000, 5)) as source:
        items = list(source)

    assert [(i.row, i.line) for i in items] == [(2, 2), (3, 4)]
    assert isinstance(items[0], CsvRowError)
    assert items[0].reason == (
        f"field `note` has {len(long_value)} characters, over the limit of 50 (NURTURE_CSV_MAX_FIELD_CHARS)"
    )
    assert isinstance(items[1], CsvRow)
    assert items[1].values["note"] == f"a{newline}b"
