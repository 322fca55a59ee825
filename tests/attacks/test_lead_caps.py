"""Unbounded lead data at ingest, over real HTTP and through the CSV import: tags per lead, tag names and
values and profile fields are capped, each at limit - 1 and limit accepted and at limit + 1 refused with a
reason for that row alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from nurture.core.lead import LeadLimits, normalise_row, too_many_tags
from nurture.csv_input import CsvLimits, lead_rows, open_csv
from nurture.db.queries.tables import leads
from nurture.flows.ingest import import_leads
from tests.attacks.conftest import START, Site, SiteFactory

pytestmark = pytest.mark.integration

TAGS, KEY, VALUE, FIELD = 5, 10, 20, 30
SMALL = {
    "max_tags_per_lead": TAGS,
    "max_tag_key_chars": KEY,
    "max_tag_value_chars": VALUE,
    "max_field_chars": FIELD,
}


def _leads(kind: str) -> list[tuple[dict[str, Any], str | None]]:
    """Three leads at limit - 1, limit and limit + 1 of `kind`, and the refusal the last one gets."""

    def lead(n: int, size: int) -> dict[str, Any]:
        email = f"{kind}{n}@example.com"
        if kind == "tags":
            return {"email": email, "tags": {f"t{i}": "v" for i in range(size)}}
        if kind == "key":
            return {"email": email, "tags": {"k" * size: "v"}}
        if kind == "value":
            return {"email": email, "tags": {"utm_source": "v" * size}}
        return {"email": email, "company": "c" * size}

    limit = {"tags": TAGS, "key": KEY, "value": VALUE, "field": FIELD}[kind]
    refusal = {
        "tags": f"more than {TAGS} source tags (columns other than the lead's fields)",
        "key": f"column name longer than {KEY} characters: {'k' * (KEY + 1)!r}",
        "value": f"longer than {VALUE} characters",
        "field": f"longer than {FIELD} characters",
    }[kind]
    return [(lead(0, limit - 1), None), (lead(1, limit), None), (lead(2, limit + 1), refusal)]


@pytest.mark.parametrize("kind", ["tags", "key", "value", "field"])
async def test_each_lead_cap_holds_at_its_limit_over_the_api(site_factory: SiteFactory, kind: str) -> None:
    site: Site = await site_factory(**SMALL)
    table = _leads(kind)
    async with site.client:
        answer = await site.client.post("/api/leads", json=[lead for lead, _ in table], headers=site.auth)
    assert answer.status_code == 200
    body = answer.json()
    assert body["inserted"] == 2
    [rejected] = body["rejected"]
    assert rejected["index"] == 2
    assert rejected["reason"] == table[2][1]
    async with site.runtime.db.transaction() as conn:
        stored = set((await conn.execute(select(leads.c.email))).scalars())
    assert stored == {table[0][0]["email"], table[1][0]["email"]}


async def test_600000_tags_through_the_api_are_one_refused_row_answered_at_once(site: Site) -> None:
    lead = {"email": "mei@example.com", "tags": {f"t{i}": "x" for i in range(600_000)}}
    start = time.monotonic()
    answer = await site.client.post("/api/leads", json=lead, headers=site.auth, timeout=60)
    assert answer.status_code == 422
    assert answer.json()["rejected"][0]["reason"].startswith("more than 100 source tags")
    assert time.monotonic() - start < 20


async def test_a_million_column_csv_row_is_refused_and_the_other_rows_go_in(
    site: Site, tmp_path: Path
) -> None:
    csv = tmp_path / "wide.csv"
    columns = [f"c{i}" for i in range(1_000_000)]
    csv.write_text(
        "email,"
        + ",".join(columns)
        + "\n"
        + "wide@example.com,"
        + ",".join("1" for _ in columns)
        + "\n"
        + "narrow@example.com"
        + "," * len(columns)
        + "\n"
    )
    # By default the reader refuses such a header whole; with its limits raised the lead row cap still holds.
    wide = CsvLimits(max_field_chars=100, max_row_chars=10_000_000, max_columns=2_000_000)
    with open_csv(csv, wide) as source:
        report = await import_leads(
            site.runtime.db, lead_rows(source), now=START, limits=site.runtime.settings.lead_limits
        )
    assert [e.email for e in report.rejected] == ["wide@example.com"]
    assert report.inserted == 1


def test_defaults_match_the_settings() -> None:
    from nurture.settings import Settings

    assert Settings().lead_limits == LeadLimits()


@pytest.mark.parametrize("size", [99, 100, 101, 10_000])
def test_the_row_cap_counts_tags_whatever_the_row_width(size: int) -> None:
    row: dict[str, str | None] = {"email": "a@example.com", **{f"t{i}": "v" for i in range(size)}}
    result = normalise_row(row, row_number=2)
    assert hasattr(result, "reason") == (size > 100)


def test_a_csv_cell_past_the_lead_limit_is_refused_by_it_and_one_past_the_reader_limit_by_the_reader(
    tmp_path: Path,
) -> None:
    """The two field limits of a CSV import, with the defaults: the lead's (500) for what a lead may hold,
    the reader's (131,072) for what a file may cost; each refusal names its own setting's limit."""
    lead_limit, reader_limit = LeadLimits().max_field_chars, CsvLimits().max_field_chars
    sizes = [lead_limit, lead_limit + 1, reader_limit, reader_limit + 1]
    path = tmp_path / "leads.csv"
    path.write_text("email,company\n" + "".join(f"r{n}@example.com,{'c' * n}\n" for n in sizes))

    with open_csv(path) as source:
        results = [
            r if not isinstance(r, dict) else normalise_row(r, row_number=0) for r in lead_rows(source)
        ]

    assert [type(r).__name__ for r in results] == ["LeadRow", "RowError", "RowError", "RowError"]
    reasons = [getattr(r, "reason", None) for r in results]
    assert reasons[1] == reasons[2] == f"company: longer than {lead_limit} characters"
    over_reader = f"a field on line 5 is over {reader_limit:,} characters (NURTURE_CSV_MAX_FIELD_CHARS)"
    assert reasons[3] == f"line 5: {over_reader}"


@settings(max_examples=200, deadline=None)
@given(filled=st.integers(min_value=0, max_value=40), empty=st.integers(min_value=0, max_value=40))
def test_a_row_is_refused_for_its_tags_exactly_when_it_fills_too_many_whatever_its_empty_columns(
    filled: int, empty: int
) -> None:
    """The early count of filled values and the per-tag count agree, however wide the row is."""
    limits = LeadLimits(max_tags=5)
    row: dict[str, str | None] = {"email": "a@example.com", "company": "Acme", "grade": ""}
    row |= {f"t{i}": "v" for i in range(filled)} | {f"e{i}": "" for i in range(empty)}
    result = normalise_row(row, row_number=2, limits=limits)
    refused = getattr(result, "reason", None) == too_many_tags(limits)
    assert refused == (filled > limits.max_tags)
