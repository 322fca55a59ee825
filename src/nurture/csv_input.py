"""The one CSV reader: `nurture leads import` and `nurture simulate --leads` read their files through it.

`open_csv(path)` checks the whole file first and raises `CsvFileError` (`path:line: reason`) for what makes
the file as a whole unreadable: not a file, empty, bytes that do not decode, a header with an empty, duplicate
or NUL-bearing name. Then it streams: iterating yields one item per record (blank lines are skipped), either
a `CsvRow` or a `CsvRowError`, each with its row number (the header is row 1) and the physical line it starts
on, so the caller can take the good rows and report the rest.

Rules (README "Leads" repeats them):

* Encoding: UTF-8, with or without a BOM. A UTF-16 file with a BOM is decoded as UTF-16 (a note says so).
* Separator: comma. A header line with no comma but a semicolon (or else a tab) is read as semicolon- (tab-)
  separated, as spreadsheet exports in many locales write it; a note says so.
* A record whose field count differs from the header's is a row error.
* A record containing a NUL byte is a row error.
* Limits (`CsvLimits`, from NURTURE_CSV_MAX_FIELD_CHARS, NURTURE_CSV_MAX_ROW_CHARS, NURTURE_CSV_MAX_COLUMNS):
  a field over `max_field_chars` characters, or a record over `max_row_chars` (its characters as written,
  separators, quotes and inner line breaks counted, the line break that ends it not), is a row error; a
  header over `max_columns` columns, or over `max_row_chars`, refuses the file. No line is held in memory
  beyond `max_row_chars` characters, however long it is in the file.
* A quoted field may run over line breaks (a multi-line address). It may not swallow rows: a record whose
  quote is never closed (end of file), or closed by a stray quote, or that has the wrong field count, or one
  of whose later lines is on its own a whole row (balanced quotes, the header's field count; the line that
  closes a real multi-line value has an odd number of quotes), is a row error at the line the quote opened on;
  the lines after that one are then read again as records of their own, so the rows it had swallowed go in.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from nurture.core.lead import RowError
from nurture.errors import CsvFileError
from nurture.settings import CSV_MAX_COLUMNS, CSV_MAX_FIELD_CHARS, CSV_MAX_ROW_CHARS, Settings

_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
_CHUNK = 1 << 20  # bytes read at a time by the encoding check, whatever the length of a line


@dataclass(frozen=True, slots=True)
class CsvLimits:
    """What reading one file may cost, whatever its rows are for: a field, a record or a header past these is
    refused before it becomes a row. What a lead may hold is a separate, smaller limit applied after reading
    (`core.lead.LeadLimits`, CSV and API rows alike); these only keep a hostile file from costing memory."""

    max_field_chars: int = CSV_MAX_FIELD_CHARS
    max_row_chars: int = CSV_MAX_ROW_CHARS
    max_columns: int = CSV_MAX_COLUMNS

    @classmethod
    def of(cls, settings: Settings) -> CsvLimits:
        return cls(settings.csv_max_field_chars, settings.csv_max_row_chars, settings.csv_max_columns)


class _TooLong(Exception):
    """Raised by `_Lines` inside csv.reader when the record being read is over the row limit."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    row: int  # the header is row 1
    line: int  # the physical line the record starts on
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class CsvRowError:
    row: int
    line: int
    reason: str

    @property
    def message(self) -> str:
        return f"line {self.line}: {self.reason}"


class CsvInput:
    """An open CSV file; use as a context manager and iterate it once."""

    def __init__(self, path: Path, limits: CsvLimits) -> None:
        self.path = path
        self.limits = limits
        self.encoding, self.lines = _check_file(path)
        if csv.field_size_limit() < limits.max_field_chars:  # csv.reader's own limit must not come first
            csv.field_size_limit(limits.max_field_chars)
        self._handle: IO[str] = path.open(newline="", encoding=self.encoding)
        self._lines = _Lines(self._handle, limits.max_row_chars)
        try:
            self.delimiter, self.header = self._read_header()
        except BaseException:
            self._handle.close()
            raise
        notes = []
        if self.encoding == "utf-16":
            notes.append("decoded as UTF-16 (the file starts with a UTF-16 byte-order mark)")
        if self.delimiter != ",":
            notes.append(f"read as {_NAMES[self.delimiter]}-separated (the header line has no comma)")
        self.notes: tuple[str, ...] = tuple(notes)

    def __enter__(self) -> CsvInput:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._handle.close()

    def require_column(self, name: str) -> None:
        if name not in (h.strip().lower() for h in self.header):
            raise CsvFileError(f"the header has no `{name}` column", source=str(self.path), line=1)

    def __iter__(self) -> Iterator[CsvRow | CsvRowError]:
        lines = self._lines
        record = lines.record
        reader = csv.reader(lines, delimiter=self.delimiter, strict=True)
        width, header = len(self.header), self.header
        max_field = self.limits.max_field_chars
        row = 1
        while True:
            record.clear()
            lines.chars = 0
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row += 1
                yield self._bad_quote(row, str(exc))
                continue
            except _TooLong:
                row += 1
                yield self._too_long(row)
                continue
            if not fields:
                continue  # a blank line
            row += 1
            if len(record) > 1:
                yield self._multi_line(row, fields)
            elif "\0" in record[0][1]:
                yield CsvRowError(row, record[0][0], "contains a NUL byte")
            elif len(fields) != width:
                yield CsvRowError(row, record[0][0], f"has {len(fields)} fields, the header has {width}")
            elif lines.chars > max_field and max(map(len, fields)) > max_field:  # a field is in its row
                yield self._field_too_long(row, fields)
            else:
                yield CsvRow(row, record[0][0], dict(zip(header, fields, strict=True)))

    def _field_too_long(self, row: int, fields: list[str]) -> CsvRowError:
        limit = self.limits.max_field_chars
        column = next(i for i, f in enumerate(fields) if len(f) > limit)
        return CsvRowError(
            row,
            self._lines.record[0][0],
            f"field `{self.header[column].strip()}` has {len(fields[column]):,} characters, over the limit "
            f"of {limit:,} (NURTURE_CSV_MAX_FIELD_CHARS)",
        )

    def _too_long(self, row: int) -> CsvRowError:
        """The record being read went over the row limit: one line on its own, or a quote running on."""
        (start, end), limit = self._span(), self.limits.max_row_chars
        if start == end:
            return CsvRowError(
                row, start, f"the line is over {limit:,} characters (NURTURE_CSV_MAX_ROW_CHARS)"
            )
        return self._refused_and_read_again(
            row,
            f"the row from line {start} to {end} is over {limit:,} characters (NURTURE_CSV_MAX_ROW_CHARS; "
            f"is a quote opened on line {start} not closed?)",
        )

    def _multi_line(self, row: int, fields: list[str]) -> CsvRow | CsvRowError:
        """A record over several lines: a quoted value with line breaks, or a quote that swallowed rows.

        It is the latter when one of its later lines is on its own a whole row, or when the record has the
        wrong field count; then the lines after its first are read again as records of their own. Else it is
        held to the same NUL and field-size rules as a one-line record."""
        record, width = self._lines.record, len(self.header)
        start, end = self._span()
        for number, text in record[1:] if width > 1 else ():
            if self._is_whole_row(text, width):
                return self._refused_and_read_again(
                    row,
                    f"a quote opened on line {start} is not closed before line {number}, which is a whole "
                    f"row ({width} fields) of its own",
                )
        if len(fields) != width:
            return self._refused_and_read_again(
                row,
                f"has {len(fields)} fields, the header has {width} (a quote opened on line {start} runs "
                f"on to line {end}: is it not closed?)",
            )
        if any("\0" in text for _, text in record):
            return CsvRowError(row, start, f"contains a NUL byte (the row runs from line {start} to {end})")
        if max(map(len, fields)) > self.limits.max_field_chars:
            return self._field_too_long(row, fields)
        return CsvRow(row, start, dict(zip(self.header, fields, strict=True)))

    def _span(self) -> tuple[int, int]:
        """The first and last physical line of the record being read."""
        record = self._lines.record
        return record[0][0], record[-1][0]

    def _refused_and_read_again(self, row: int, reason: str) -> CsvRowError:
        """A row error at the record's first line; a record over several lines may have swallowed rows, so
        the lines after its first are read again as records of their own (and the reason says so)."""
        record = self._lines.record
        start = record[0][0]
        if len(record) == 1:
            return CsvRowError(row, start, reason)
        self._lines.read_again(record[1:])
        return CsvRowError(row, start, f"{reason}; the lines after line {start} are read again")

    def _is_whole_row(self, text: str, width: int) -> bool:
        """Whether one line is a well-formed row of the header's width on its own: balanced quotes (the line
        that closes a multi-line value has an odd number), strict CSV, `width` fields."""
        if text.count('"') % 2:
            return False
        try:
            return len(next(csv.reader([text], delimiter=self.delimiter, strict=True), [])) == width
        except csv.Error:
            return False

    def _bad_quote(self, row: int, detail: str) -> CsvRowError:
        start, end = self._span()
        if "unexpected end of data" in detail:
            reason = f"a quote opened on line {start} is never closed (the file ends inside it)"
        elif "field larger than field limit" in detail:
            where = f"on line {start}" if start == end else f"from line {start} to {end}"
            reason = (
                f"a field {where} is over {self.limits.max_field_chars:,} characters "
                "(NURTURE_CSV_MAX_FIELD_CHARS)"
            )
        elif start == end:
            reason = f"stray quote: a quoted field must end right before a separator ({detail})"
        else:
            reason = (
                f"a quote opened on line {start} runs on to line {end} and ends in a stray quote ({detail})"
            )
        return self._refused_and_read_again(row, reason)

    def _read_header(self) -> tuple[str, tuple[str, ...]]:
        source = str(self.path)
        try:
            first = next(self._lines, "")
        except _TooLong:
            raise CsvFileError(
                f"the header line is over {self.limits.max_row_chars:,} characters "
                "(NURTURE_CSV_MAX_ROW_CHARS); nothing imported",
                source=source,
                line=1,
            ) from None
        if "\0" in first:
            raise CsvFileError(
                "the header contains NUL bytes (a UTF-16 file without a byte-order mark?); nothing imported",
                source=source,
                line=1,
            )
        delimiter = next((d for d in ",;\t" if d in first), ",")
        try:
            names = tuple(next(csv.reader([first], delimiter=delimiter, strict=True), []))
        except csv.Error as exc:
            raise CsvFileError(
                f"the header cannot be read ({exc}); nothing imported", source=source, line=1
            ) from None
        if len(names) > self.limits.max_columns:
            raise CsvFileError(
                f"the header has {len(names):,} columns, over the limit of {self.limits.max_columns:,} "
                "(NURTURE_CSV_MAX_COLUMNS); nothing imported",
                source=source,
                line=1,
            )
        _check_names(names, source)
        return delimiter, names


class _Lines:
    """The file's lines for csv.reader, each noted with its number in `record`; lines pushed back with
    `read_again` come first. Unlike a generator it can be read again after it has reached the end.

    A line is read `max_chars` + 2 characters at most (room for its line break and one more character); the
    rest of a longer line is read past and dropped, and its number noted in `too_long`. Reading such a line,
    or one that takes the record over `max_chars`, raises `_TooLong`."""

    __slots__ = ("_ahead", "_cap", "_handle", "_max", "_number", "chars", "pending", "record", "too_long")

    def __init__(self, handle: IO[str], max_chars: int) -> None:
        self._handle = handle
        self._max = max_chars
        self._cap = max_chars + 2
        self._number = 0
        self.chars = 0  # characters of the record being read, line breaks counted (the caller resets it)
        self._ahead: str | None = None  # a line read while looking for the end of a long one
        self.pending: list[tuple[int, str]] = []  # lines to read again, the next one last
        self.record: list[tuple[int, str]] = []  # the physical lines of the record being read
        self.too_long: set[int] = set()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pending:
            number, text = self.pending.pop()
        else:
            text = self._handle.readline(self._cap) if self._ahead is None else self._take_ahead()
            if not text:
                raise StopIteration
            self._number = number = self._number + 1
            if len(text) == self._cap and not text.endswith("\n"):
                self.too_long.add(number)
                self._read_past(text)
        self.record.append((number, text))
        self.chars += len(text)
        # A line in too_long is longer than the limit, so only a record over it needs looking at.
        if self.chars > self._max and (
            number in self.too_long or self.chars - _break_length(text) > self._max
        ):
            raise _TooLong
        return text

    def _take_ahead(self) -> str:
        text, self._ahead = self._ahead or "", None
        return text

    def _read_past(self, piece: str) -> None:
        """Read to the end of a line longer than the limit, whose first `piece` was read."""
        while len(piece) == self._cap and not piece.endswith("\n"):
            after_cr = piece.endswith("\r")
            piece = self._handle.readline(self._cap)
            if after_cr and piece != "\n":  # the CR ended the line (not a CR LF split by the limit)
                self._ahead = piece or None
                return

    def read_again(self, lines: list[tuple[int, str]]) -> None:
        self.pending.extend(reversed(lines))


def _break_length(text: str) -> int:
    if text.endswith("\r\n"):
        return 2
    return 1 if text.endswith(("\n", "\r")) else 0


def lead_rows(source: CsvInput) -> Iterator[dict[str, str] | RowError]:
    """The rows for `import_leads`: each good row's values, or the reason a row could not be taken."""
    for item in source:
        yield item.values if isinstance(item, CsvRow) else RowError(item.row, "", item.message)


def open_csv(path: Path, limits: CsvLimits | None = None) -> CsvInput:
    """Check `path` as a whole and open it for streaming; raises CsvFileError."""
    return CsvInput(path, limits or CsvLimits())


def _check_names(names: tuple[str, ...], source: str) -> None:
    if not names:
        raise CsvFileError("the first line is empty: no header row; nothing imported", source=source, line=1)
    seen: dict[str, int] = {}
    for column, name in enumerate(names, start=1):
        key = name.strip().lower()
        if not key:
            raise CsvFileError(
                f"column {column} of the header has no name; nothing imported", source=source, line=1
            )
        if key in seen:
            raise CsvFileError(
                f"column `{name.strip()}` appears twice in the header (columns {seen[key]} and {column}); "
                "nothing imported",
                source=source,
                line=1,
            )
        seen[key] = column


def _check_file(path: Path) -> tuple[str, int]:
    """The encoding to read `path` with and its number of lines, after checking every line decodes."""
    source = str(path)
    if path.is_dir():
        raise CsvFileError("is a folder, not a CSV file", source=source)
    if not path.is_file():
        raise CsvFileError("no such file", source=source)
    with path.open("rb") as handle:
        start = handle.read(4)
        if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not start.startswith(
            codecs.BOM_UTF32_LE
        ):
            handle.seek(0)
            return "utf-16", _utf16_lines(handle, source)
        handle.seek(0)
        lines = _utf8_lines(handle, source)
    if lines == 0 or (path.stat().st_size <= len(codecs.BOM_UTF8) and start.startswith(codecs.BOM_UTF8)):
        raise CsvFileError("the file is empty: no header row; nothing imported", source=source)
    return "utf-8-sig", lines


def _utf8_lines(handle: IO[bytes], source: str) -> int:
    """The number of lines, after checking they decode; read in pieces, so a long line costs no memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines, tail = 0, 0  # tail: the bytes after the last line break so far
    while True:
        chunk = handle.read(_CHUNK)
        held = len(decoder.getstate()[0])  # the start of a character split between chunks
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            before = exc.object[: exc.start]
            breaks = before.count(b"\n")
            column = exc.start - before.rfind(b"\n") - 1 if breaks else tail - held + exc.start
            raise CsvFileError(
                f"not UTF-8 ({exc.reason} at column {column + 1}); nothing imported",
                source=source,
                line=lines + breaks + 1,
            ) from None
        if not chunk:
            return lines + (1 if tail else 0)
        breaks = chunk.count(b"\n")
        lines += breaks
        tail = len(chunk) - chunk.rfind(b"\n") - 1 if breaks else tail + len(chunk)


def _utf16_lines(handle: IO[bytes], source: str) -> int:
    decoder = codecs.getincrementaldecoder("utf-16")()
    lines = 0
    while chunk := handle.read(1 << 16):
        try:
            lines += decoder.decode(chunk).count("\n")
        except UnicodeDecodeError as exc:
            raise CsvFileError(
                f"not UTF-16 after line {lines} ({exc.reason}); nothing imported",
                source=source,
                line=lines + 1,
            ) from None
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise CsvFileError(
            f"not UTF-16: the file ends inside a character ({exc.reason}); nothing imported",
            source=source,
            line=lines + 1,
        ) from None
    return lines + (1 if tail and not tail.endswith("\n") else 0)
