"""Inbound rows: normalise_row keeps names intact, canonicalises emails, names bad fields, strips breaks."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.core.lead import PROFILE_FIELDS, LeadRow, RowError, normalise_row

BREAKS = ("\r", "\n", "\x00", "\u2028", "\u2029", "\x85")


def _accepted(row: Mapping[str, str | None]) -> LeadRow:
    result = normalise_row(row, row_number=7)
    assert isinstance(result, LeadRow), result
    return result


def _rejected(row: Mapping[str, str | None]) -> RowError:
    result = normalise_row(row, row_number=7)
    assert isinstance(result, RowError), result
    return result


def _has_break(text: str) -> bool:
    return any(ch in text for ch in BREAKS)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("王小明", id="Chinese"),
        pytest.param("山田 太郎", id="Japanese"),
        pytest.param("محمد عبد الله", id="Arabic"),
        pytest.param("José Ñúñez-Ølsen", id="Latin with accents"),
    ],
)
def test_normalise_row_keeps_names_in_any_script_intact(name: str) -> None:
    row = _accepted({"email": "lead@example.com", "first_name": name, "company": name})
    assert row.profile == {"first_name": name, "company": name}


def test_normalise_row_normalises_the_email_case_and_whitespace() -> None:
    assert _accepted({"Email": "  Mei.Lin@Example.COM \t"}).email == "mei.lin@example.com"


def test_normalise_row_accepts_email_column_aliases() -> None:
    assert _accepted({"E-mail": "a@example.com"}).email == "a@example.com"
    assert _accepted({"email_address": "b@example.com"}).email == "b@example.com"


def test_normalise_row_splits_profile_fields_grade_stage_and_tags() -> None:
    row = _accepted(
        {
            "email": "a@example.com",
            "First Name": "Mei",
            "TZ": "Asia/Taipei",
            "Grade": "Nurturable",
            "stage": " MQL ",
            "owner": "Rep@Example.com",
            "UTM Source": "linkedin",
            "x_field_1": "webinar-2024",
            "empty_column": "",
        }
    )
    assert row.profile == {"first_name": "Mei", "timezone": "Asia/Taipei", "owner": "rep@example.com"}
    assert (row.grade, row.stage) == ("nurturable", "mql")
    assert row.tags == {"utm_source": "linkedin", "x_field_1": "webinar-2024"}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        pytest.param({"email": "not-an-address"}, "email", id="bad email"),
        pytest.param({"email": ""}, "email", id="empty email"),
        pytest.param({"first_name": "Mei"}, "email", id="no email column"),
        pytest.param({"email": "a@example.com", "grade": "hot"}, "grade", id="bad grade"),
        pytest.param({"email": "a@example.com", "stage": "won"}, "stage", id="bad stage"),
        pytest.param({"email": "a@example.com", "timezone": "Mars/Olympus_Mons"}, "timezone", id="bad zone"),
        pytest.param({"email": "a@example.com", "owner": "the rep"}, "owner", id="bad owner"),
    ],
)
def test_normalise_row_names_the_bad_field_in_its_row_error(row: Mapping[str, str], field: str) -> None:
    error = _rejected(row)
    assert error.row == 7
    assert error.reason.startswith(f"{field}: ")


def test_normalise_row_error_carries_the_normalised_email_when_another_field_is_bad() -> None:
    assert _rejected({"email": " A@Example.com", "grade": "hot"}).email == "a@example.com"


@pytest.mark.parametrize(
    "noise",
    [
        pytest.param("\r\n", id="CRLF"),
        pytest.param("\n", id="LF"),
        pytest.param("\x00", id="NUL"),
        pytest.param("\u2028", id="line separator"),
        pytest.param("\u2029", id="paragraph separator"),
        pytest.param("\x85", id="next line"),
    ],
)
def test_normalise_row_removes_line_breaks_and_nul_from_a_name(noise: str) -> None:
    row = _accepted({"email": "a@example.com", "last_name": f"{noise}Lin{noise}Mei{noise}"})
    assert not _has_break(row.profile["last_name"])
    assert row.profile["last_name"].split() == ["Lin", "Mei"]


def test_normalise_row_keeps_unknown_columns_as_tags() -> None:
    row = _accepted({"email": "a@example.com", "Lead Source": "trade show", "utm_campaign": "q3"})
    assert row.tags == {"lead_source": "trade show", "utm_campaign": "q3"}
    assert row.profile == {}


@pytest.mark.parametrize(
    "column",
    [
        pytest.param("来源", id="non-ASCII"),
        pytest.param("utm/source", id="a slash"),
        pytest.param("-dash-first", id="leading dash"),
    ],
)
def test_normalise_row_rejects_a_column_name_unusable_as_a_tag(column: str) -> None:
    error = _rejected({"email": "a@example.com", column: "value"})
    assert error.reason.startswith("column name not usable as a tag")


def test_normalise_row_rejects_a_column_name_longer_than_the_limit_and_cuts_it_in_the_message() -> None:
    assert normalise_row({"email": "a@example.com", "x" * 64: "v"}, row_number=2) == LeadRow(
        email="a@example.com", profile={}, grade=None, stage=None, tags={"x" * 64: "v"}
    )
    error = _rejected({"email": "a@example.com", "x" * 100_000: "value"})
    assert error.reason == f"column name longer than 64 characters: {'x' * 40 + '...'!r}"


def test_normalise_row_keeps_zero_width_joiners_that_persian_and_indic_names_need() -> None:
    # Persian "Mehrdad", which is spelled with a zero-width non-joiner (U+200C) between its two parts
    name = "\u0645\u0647\u0631\u200c\u062f\u0627\u062f"
    assert _accepted({"email": "a@example.com", "first_name": name}).profile["first_name"] == name


def test_normalise_row_does_not_lose_the_email_to_an_empty_alias_column() -> None:
    assert _accepted({"email": "a@example.com", "e-mail": ""}).email == "a@example.com"


def test_normalise_row_reports_a_deeply_nested_zone_name_instead_of_raising() -> None:
    assert _rejected({"email": "a@example.com", "timezone": "a/" * 400 + "b"}).reason.startswith("timezone: ")


# --- property: no line break survives ---------------------------------------------------------------------

noisy_text = st.text(
    alphabet=st.one_of(st.sampled_from([*BREAKS, "\t", "\x0b", "\x0c", "\u200b", " "]), st.characters()),
    max_size=24,
)
free_columns = st.sampled_from(
    [f for f in PROFILE_FIELDS if f not in ("owner", "timezone")] + ["utm_source", "x_field_1", "source"]
)


@settings(max_examples=300)
@given(
    values=st.dictionaries(free_columns, noisy_text, max_size=8),
    email_noise=st.text(alphabet=st.sampled_from([*BREAKS, "\t", " ", "\u200b"]), max_size=4),
    zone_noise=st.sampled_from(["", *BREAKS]),
)
def test_normalise_row_never_outputs_a_line_break_or_nul(
    values: dict[str, str], email_noise: str, zone_noise: str
) -> None:
    row = {
        **values,
        "email": f"{email_noise}lead@example.com{email_noise}",
        "owner": f"{zone_noise}rep@example.com{zone_noise}",
        "timezone": f"{zone_noise}Asia/Taipei{zone_noise}",
    }
    result = _accepted(row)
    texts = [result.email, *result.profile.values(), *result.tags.values(), *result.tags.keys()]
    assert not any(_has_break(text) for text in texts)


@settings(max_examples=200)
@given(
    row=st.dictionaries(noisy_text, noisy_text, max_size=6), email=st.sampled_from(["a@example.com", "a\nb"])
)
def test_normalise_row_never_returns_a_line_break_even_for_arbitrary_columns(
    row: dict[str, str], email: str
) -> None:
    result = normalise_row({**row, "email": email}, row_number=1)
    if isinstance(result, RowError):
        texts = [result.email, result.reason]
    else:
        texts = [result.email, *result.profile.values(), *result.profile.keys(), *result.tags.values()]
        texts += result.tags.keys()
    assert not any(_has_break(text) for text in texts)
