"""The CSV reader: rows with their line numbers, row errors for rows it cannot take, one refusal per file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nurture.csv_input import CsvRow, CsvRowError, open_csv
from nurture.errors import CsvFileError


def read(path: Path) -> list[CsvRow | CsvRowError]:
    with open_csv(path) as source:
        return list(source)


def write(tmp_path: Path, text: str, name: str = "leads.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def rows(items: list[CsvRow | CsvRowError]) -> list[dict[str, str]]:
    return [i.values for i in items if isinstance(i, CsvRow)]


def errors(items: list[CsvRow | CsvRowError]) -> list[tuple[int, int, str]]:
    return [(i.row, i.line, i.reason) for i in items if isinstance(i, CsvRowError)]


def refusal(path: Path) -> str:
    with pytest.raises(CsvFileError) as caught:
        read(path)
    return str(caught.value)


# -- quotes --------------------------------------------------------------------------------------------------


def test_an_unterminated_quote_is_a_row_error_and_the_row_it_swallowed_goes_in(tmp_path: Path) -> None:
    # Given the file from the defect report: the quote on line 2 is never closed
    path = write(tmp_path, 'email,first_name\nmei@example.com,"unterminated\nnext@example.com,x\n')
    items = read(path)
    # Then row 2 is refused at line 2, and line 3 is read as the row it is
    [(row, line, reason)] = errors(items)
    assert (row, line) == (2, 2)
    assert "quote opened on line 2 is never closed" in reason
    assert rows(items) == [{"email": "next@example.com", "first_name": "x"}]


def test_a_quote_closed_by_a_stray_quote_rows_later_refuses_only_its_row(tmp_path: Path) -> None:
    text = (
        "email,first_name,company\n"
        'a@example.com,"Bob,Acme\n'  # line 2: the quote is never closed on purpose
        "b@example.com,Jane,Acme\n"
        'c@example.com,"Carl",Acme\n'  # line 4: the quote before Carl is taken as a stray closing quote
        "d@example.com,Dana,Acme\n"
    )
    items = read(write(tmp_path, text))
    [(row, line, reason)] = errors(items)
    assert (row, line) == (2, 2)
    assert "runs on to line 4 and ends in a stray quote" in reason
    assert [r["email"] for r in rows(items)] == ["b@example.com", "c@example.com", "d@example.com"]
    assert rows(items)[1]["first_name"] == "Carl"


def test_a_quote_that_closes_validly_after_swallowing_a_whole_row_is_still_caught(tmp_path: Path) -> None:
    text = (
        "email,first_name,company\n"
        'a@example.com,"Bob,Acme\n'
        "b@example.com,Jane,Acme\n"  # a whole row of its own, inside the quoted value
        'c@example.com,Carl",Acme\n'  # the quote closes here, and the record has 3 fields
    )
    items = read(write(tmp_path, text))
    [(row, line, reason)] = errors(items)
    assert (row, line) == (2, 2)
    assert "not closed before line 3, which is a whole row (3 fields) of its own" in reason
    assert [r["email"] for r in rows(items)] == ["b@example.com", "c@example.com"]


def test_a_stray_quote_inside_one_line_is_a_row_error_with_its_line(tmp_path: Path) -> None:
    text = 'email,first_name\na@example.com,"Bobby" Smith\nb@example.com,Jane\n'
    items = read(write(tmp_path, text))
    [(row, line, reason)] = errors(items)
    assert (row, line) == (2, 2)
    assert reason.startswith("stray quote")
    assert rows(items) == [{"email": "b@example.com", "first_name": "Jane"}]


def test_a_quoted_value_over_line_breaks_is_one_row_and_later_rows_keep_their_physical_line(
    tmp_path: Path,
) -> None:
    text = (
        "email,address,company\n"
        'a@example.com,"12 Harbour Road\nKaohsiung, 806",Port Logistics\n'  # lines 2-3
        '"first\nline",b@example.com,Acme\n'  # lines 4-5: a multi-line value in the first column
        "c@example.com,,Acme\n"  # line 6
    )
    items = read(write(tmp_path, text))
    assert errors(items) == []
    assert [(i.row, i.line) for i in items if isinstance(i, CsvRow)] == [(2, 2), (3, 4), (4, 6)]
    assert rows(items)[0]["address"] == "12 Harbour Road\nKaohsiung, 806"


# -- field counts, NUL ---------------------------------------------------------------------------------------


def test_a_row_with_more_or_fewer_fields_than_the_header_is_a_row_error_and_the_rest_go_in(
    tmp_path: Path,
) -> None:
    text = "email,first_name,company,title\na@example.com,A,B\nb@example.com,A,B,C,D\nc@example.com,A,B,C\n"
    items = read(write(tmp_path, text))
    assert errors(items) == [
        (2, 2, "has 3 fields, the header has 4"),
        (3, 3, "has 5 fields, the header has 4"),
    ]
    assert [r["email"] for r in rows(items)] == ["c@example.com"]


def test_a_row_with_a_nul_byte_is_a_row_error_with_its_line(tmp_path: Path) -> None:
    text = "email,first_name\na@example.com,A\nb@example.com,B\0ob\nc@example.com,C\n"
    items = read(write(tmp_path, text))
    assert errors(items) == [(3, 3, "contains a NUL byte")]
    assert [r["email"] for r in rows(items)] == ["a@example.com", "c@example.com"]


def test_blank_lines_are_skipped_and_not_counted_as_rows(tmp_path: Path) -> None:
    items = read(write(tmp_path, "email\n\na@example.com\n\n"))
    assert [(i.row, i.line) for i in items] == [(2, 3)]


# -- the file as a whole -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("email,first_name,Email", "column `Email` appears twice in the header (columns 1 and 3)"),
        ("email,,company", "column 2 of the header has no name"),
        ("email,first_name, ", "column 3 of the header has no name"),
    ],
)
def test_a_header_with_a_duplicate_or_empty_name_refuses_the_file(
    tmp_path: Path, header: str, reason: str
) -> None:
    message = refusal(write(tmp_path, f"{header}\na@example.com,A,B\n"))
    assert message.startswith(f"{tmp_path / 'leads.csv'}:1: {reason}")


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolon"), ("\t", "tab")])
def test_a_semicolon_or_tab_separated_file_is_read_with_its_separator_and_a_note_says_so(
    tmp_path: Path, delimiter: str, name: str
) -> None:
    path = write(tmp_path, f"email{delimiter}company\na@example.com{delimiter}Acme, Inc\n")
    with open_csv(path) as source:
        items = list(source)
        assert source.notes == (f"read as {name}-separated (the header line has no comma)",)
    assert rows(items) == [{"email": "a@example.com", "company": "Acme, Inc"}]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_a_utf16_file_with_a_bom_is_decoded_and_a_note_says_so(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "excel.csv"
    text = "email\tfirst_name\nmei@example.com\t美玲\n"
    body = text.encode(encoding)
    path.write_bytes(body if encoding == "utf-16" else b"\xfe\xff" + body)
    with open_csv(path) as source:
        items = list(source)
        assert source.notes[0] == "decoded as UTF-16 (the file starts with a UTF-16 byte-order mark)"
    assert rows(items) == [{"email": "mei@example.com", "first_name": "美玲"}]


def test_a_utf16_file_without_a_bom_is_refused_at_its_header(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("email,first_name\n".encode("utf-16-le"))
    assert "the header contains NUL bytes (a UTF-16 file without a byte-order mark?)" in refusal(path)


def test_utf8_with_a_bom_is_read_without_the_bom_in_the_first_column_name(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfemail,first_name\na@example.com,A\n")
    assert rows(read(path)) == [{"email": "a@example.com", "first_name": "A"}]


def test_invalid_utf8_refuses_the_file_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"email,first_name\na@example.com,A\nj@example.com,J\xfcrgen\n")
    message = refusal(path)
    assert message.startswith(f"{path}:3: not UTF-8")
    assert "nothing imported" in message


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"])
def test_an_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    assert refusal(path) == f"{path}: the file is empty: no header row; nothing imported"


def test_a_folder_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path) == f"{tmp_path}: is a folder, not a CSV file"


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file"


def test_a_header_without_the_required_column_is_refused(tmp_path: Path) -> None:
    with (
        open_csv(write(tmp_path, "name,company\nMei,Acme\n")) as source,
        pytest.raises(CsvFileError) as caught,
    ):
        source.require_column("email")
    assert str(caught.value) == f"{tmp_path / 'leads.csv'}:1: the header has no `email` column"


# -- properties ----------------------------------------------------------------------------------------------

CELL = st.lists(
    st.characters(codec="utf-8", exclude_characters="\0")
    | st.sampled_from([",", '"', "\n", "\r\n", "\r", '""', ", ", "é", "美", "\u2028"]),
    max_size=8,
).map("".join)
HEADER = ("email", "first_name", "company")


def table(min_rows: int = 1) -> st.SearchStrategy[list[list[str]]]:
    return st.lists(st.lists(CELL, min_size=len(HEADER), max_size=len(HEADER)), min_size=min_rows, max_size=8)


def serialise(data: list[list[str]], quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL) -> list[str]:
    """Each row as csv.writer writes it (the header first)."""
    out = []
    for row in [list(HEADER), *data]:
        buffer = io.StringIO()
        csv.writer(buffer, quoting=quoting).writerow(row)  # lines end in \r\n, as Excel writes them
        out.append(buffer.getvalue())
    return out


def physical_lines(text: str) -> list[str]:
    return io.StringIO(text, newline="").readlines()


def inner_line_is_a_row(written: str) -> bool:
    """The rule's documented cost: a later line of a multi-line row that is on its own a whole row."""
    return any(_whole_row(line) for line in physical_lines(written)[1:])


def _whole_row(line: str) -> bool:
    try:
        return line.count('"') % 2 == 0 and len(next(csv.reader([line], strict=True), [])) == len(HEADER)
    except csv.Error:
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=table())
def test_rows_written_by_csv_writer_are_read_back_exactly(tmp_path: Path, data: list[list[str]]) -> None:
    data = [
        r for r, written in zip(data, serialise(data)[1:], strict=True) if not inner_line_is_a_row(written)
    ]
    path = tmp_path / "round.csv"
    path.write_text("".join(serialise(data)), encoding="utf-8", newline="")
    assert read(path) == [
        CsvRow(n, line, dict(zip(HEADER, r, strict=True)))
        for n, (r, line) in enumerate(zip(data, _start_lines(data), strict=True), start=2)
    ]


def _start_lines(data: list[list[str]]) -> list[int]:
    starts, line = [], 2
    for text in serialise(data)[1:]:
        starts.append(line)
        line += len(physical_lines(text))
    return starts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=table(min_rows=2), pick=st.data())
def test_dropping_a_closing_quote_never_lets_a_row_absorb_another(
    tmp_path: Path, data: list[list[str]], pick: st.DataObject
) -> None:
    # Given a well-formed file (every field quoted) whose rows each sit on one line...
    data = [[c.replace("\r", " ").replace("\n", " ") for c in r] for r in data]
    lines = serialise(data, csv.QUOTE_ALL)
    # ...when the closing quote of one field is dropped
    victim = pick.draw(st.integers(1, len(data)), label="row")
    field = pick.draw(st.integers(0, len(HEADER) - 1), label="field")
    quoted = [f'"{c.replace(chr(34), chr(34) * 2)}"' for c in data[victim - 1]]
    closing = len(",".join(quoted[: field + 1])) - 1
    broken = lines[victim][:closing] + lines[victim][closing + 1 :]
    path = tmp_path / "broken.csv"
    path.write_text("".join([*lines[:victim], broken, *lines[victim + 1 :]]), encoding="utf-8", newline="")
    items = read(path)
    # Then every other row comes back exactly as written, on its own line...
    line = victim + 1
    expected = [dict(zip(HEADER, r, strict=True)) for n, r in enumerate(data, start=1) if n != victim]
    others = [i for i in items if i.line != line]
    assert errors(others) == []
    assert rows(others) == expected
    assert [(i.row, i.line) for i in items] == [(n, n) for n in range(2, len(data) + 2)]
    # ...and the broken row is one item of its own line: refused, or (when the quote now closes early on
    # that line, e.g. `"a",",b"` losing a quote) read from that line alone, never running into the next
    [own] = [i for i in items if i.line == line]
    assert isinstance(own, CsvRowError) or not any("\n" in v or "\r" in v for v in own.values.values())
