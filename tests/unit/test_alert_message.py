"""AlertMessage renders plain text a rep can read on a phone, whatever the lead data holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from nurture.ports import AlertMessage, TimelineEntry

AT = datetime(2026, 3, 2, 2, 5, tzinfo=UTC)
ALERT = AlertMessage(
    alert_id=1,
    lead_id=42,
    trigger="hot",
    reason="score crossed hot (80): 62 -> 85; pricing_visit: visited https://acme.example/pricing",
    score_before=62,
    score_after=85,
    score_now=85,
    stage="mql",
    created_at=AT,
    lead_email="mei.lin@example.com",
    lead_name="Mei Lin",
    lead_company="Example Logistics",
    lead_title="COO",
    lead_source="webinar",
    owner_email="lin.chen@acmeflow.example",
    owner_name="Lin Chen",
    recent=(TimelineEntry(AT, "page_visit", "https://acme.example/pricing"), TimelineEntry(AT, "enrolled")),
    timeline_url="https://nurture.example.com/leads/42",
)


@pytest.mark.parametrize(
    ("trigger", "title"),
    [
        ("hot", "Hot lead: Mei Lin, Example Logistics (score 85, MQL)"),
        ("mql", "New MQL: Mei Lin, Example Logistics (score 85, MQL)"),
        ("moment:pricing_visit", "Buying signal: Mei Lin, Example Logistics (score 85, MQL)"),
    ],
)
def test_title_says_what_kind_of_alert_who_and_the_score(trigger: str, title: str) -> None:
    assert replace(ALERT, trigger=trigger).title() == title


def test_text_gives_who_why_the_score_the_touchpoints_and_the_timeline_link() -> None:
    assert ALERT.text().splitlines() == [
        "Mei Lin, Example Logistics",
        "COO",
        "mei.lin@example.com",
        "Source: webinar",
        "",
        "Why now:",
        "- score crossed hot (80): 62 -> 85",
        "- pricing_visit: visited https://acme.example/pricing",
        "Score: 85 now, stage MQL (62 -> 85 when raised)",
        "Owner: Lin Chen <lin.chen@acmeflow.example>",
        "",
        "Last 2 touchpoints (newest first, UTC):",
        "Mar 02 02:05  page_visit  https://acme.example/pricing",
        "Mar 02 02:05  enrolled",
        "",
        "Timeline: https://nurture.example.com/leads/42",
    ]


def test_a_lead_known_only_by_email_is_named_by_it_and_empty_parts_are_left_out() -> None:
    bare = replace(
        ALERT,
        lead_name=None,
        lead_company=None,
        lead_title=None,
        lead_source=None,
        owner_email=None,
        recent=(),
    )
    assert bare.title() == "Hot lead: mei.lin@example.com (score 85, MQL)"
    text = bare.text()
    assert "Source:" not in text
    assert "Owner:" not in text
    assert "touchpoints" not in text


def test_lead_data_is_kept_on_one_line() -> None:
    hostile = replace(ALERT, lead_name="Mei\r\nLin\x00", lead_company="Ex\u2028ample", lead_title="C\tO\x85O")
    assert hostile.title() == "Hot lead: Mei Lin, Ex ample (score 85, MQL)"
    assert hostile.text().splitlines()[:2] == ["Mei Lin, Ex ample", "C O O"]
