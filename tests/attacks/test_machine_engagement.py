"""Machine engagement is stored but never scores or alerts: image proxies, scanners, HEAD, instant clicks.

Each request goes over HTTP to the real tracking endpoints with a token from a real email in the outbox, and
the lead is then rescored by the real flow. What is checked is what a rep would see: the event row exists,
and the lead's score and alerts are what they were. A human doing the same thing is the control that shows
each check can fail.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from nurture.core.tracking import visitor_token
from nurture.db.queries.tables import alerts, events, leads
from nurture.flows.escalate import rescore
from tests.attacks.conftest import SECRET, Site, store_buffered

pytestmark = pytest.mark.integration

HUMAN = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15"
)
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO_PROXY = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
GATEWAYS = (
    "Mozilla/5.0 (compatible; Mimecast-URL-Protect/1.0)",
    "Proofpoint URL Defense",
    "Barracuda Sentinel (EE)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0",
)
PRICING = "https://acmeflow.example/pricing"
LATER = timedelta(hours=1)  # well past min_open_delay: only the user agent marks these as machines


async def _mailed(site: Site) -> tuple[int, dict[str, str]]:
    """A lead mailed the first step at START; its id and the open and click tokens its email carries."""
    await site.mail_first_step("mei@example.com")
    html = site.first_email_html()
    tokens = {
        "o": re.findall(r'/t/o/([A-Za-z0-9_.-]+)"', html)[0],
        "c": re.findall(r'/t/c/([A-Za-z0-9_.-]+)"', html)[0],
    }
    async with site.runtime.db.transaction() as conn:
        lead_id = int((await conn.execute(select(leads.c.id))).scalar_one())
    return lead_id, tokens


async def _after_rescore(site: Site, lead_id: int) -> dict[str, Any]:
    """Rescore the lead as its queued rescore would; what a rep would see and the stored events."""
    rt = site.runtime
    result = await rescore(lead_id, db=rt.db, catalog=rt.catalog, now=site.clock.now())
    assert result is not None
    async with rt.db.transaction() as conn:
        stored = (await conn.execute(select(events.c.type, events.c.properties).order_by(events.c.id))).all()
        alert_count = (await conn.execute(select(func.count()).select_from(alerts))).scalar_one()
    return {
        "score": result.score_after,
        "alerts": alert_count,
        "events": [row.type for row in stored],
        "machine": [(row.properties or {}).get("machine") is True for row in stored],
        "why": [(row.properties or {}).get("machine_reason") for row in stored],
    }


async def _visit(site: Site, lead_id: int, user_agent: str) -> None:
    token = visitor_token(lead_id, key=SECRET.encode())
    answer = await site.client.post(
        "/t/v", json={"token": token, "url": PRICING}, headers={"user-agent": user_agent}
    )
    assert answer.status_code == 204


# --- stored, never scored, never alerted --------------------------------------------------------------------


@pytest.mark.parametrize("user_agent", [GMAIL_PROXY, YAHOO_PROXY])
async def test_an_image_proxy_open_is_stored_and_never_scores(site: Site, user_agent: str) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)

    pixel = await site.client.get(f"/t/o/{tokens['o']}", headers={"user-agent": user_agent})

    assert pixel.status_code == 200
    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"], seen["events"]) == (0, 0, ["email_open"])


async def test_a_human_open_and_click_score_as_the_control(site: Site) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)

    await site.client.get(f"/t/o/{tokens['o']}", headers={"user-agent": HUMAN})
    await site.client.get(f"/t/c/{tokens['c']}", headers={"user-agent": HUMAN})

    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["events"]) == (6, ["email_open", "email_click"])  # 1 + 5 points


@pytest.mark.parametrize("user_agent", GATEWAYS)
async def test_a_security_gateway_following_every_link_is_stored_and_never_scores(
    site: Site, user_agent: str
) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)

    click = await site.client.get(f"/t/c/{tokens['c']}", headers={"user-agent": user_agent})

    assert click.status_code == 307  # the scanner gets the page like anyone: it must not learn it was spotted
    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"], seen["events"]) == (0, 0, ["email_click"])


async def test_a_burst_of_clicks_within_a_second_never_scores(site: Site) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)

    for _ in range(3):  # click_burst: 3 clicks of one email within a second
        await site.client.get(f"/t/c/{tokens['c']}", headers={"user-agent": HUMAN})
        site.clock.advance(timedelta(milliseconds=200))

    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"], seen["events"]) == (0, 0, ["email_click"] * 3)


async def test_a_scanner_fetching_the_pricing_page_never_alerts_but_a_person_does(site: Site) -> None:
    # Given a lead whose pricing page is fetched by a headless browser
    lead_id, _ = await _mailed(site)
    site.clock.advance(LATER)
    await _visit(site, lead_id, GATEWAYS[-1])
    # Then the visit is stored, but neither scores nor fires the pricing_visit moment
    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"], seen["events"]) == (0, 0, ["page_visit"])

    # When a person visits the same page
    site.clock.advance(LATER)
    await _visit(site, lead_id, HUMAN)

    # Then the rep is alerted
    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"]) == (15, 1)


async def test_head_requests_are_answered_and_never_score(site: Site) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)

    pixel = await site.client.head(f"/t/o/{tokens['o']}", headers={"user-agent": HUMAN})
    click = await site.client.head(f"/t/c/{tokens['c']}", headers={"user-agent": HUMAN})

    assert (pixel.status_code, click.status_code) == (200, 307)
    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"]) == (0, 0)


async def test_buffered_machine_events_are_stored_and_never_score_or_alert(buffered_site: Site) -> None:
    # Given a proxy's open, a gateway's click and a scanner's pricing visit, buffered in Redis
    site = buffered_site
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)
    await site.client.get(f"/t/o/{tokens['o']}", headers={"user-agent": GMAIL_PROXY})
    await site.client.get(f"/t/c/{tokens['c']}", headers={"user-agent": GATEWAYS[0]})
    await _visit(site, lead_id, GATEWAYS[-1])

    # When the worker stores them and the lead is rescored
    stored = (await store_buffered(site)).recorded

    # Then all three are rows, and the score and alerts are unchanged
    seen = await _after_rescore(site, lead_id)
    assert stored == 3
    assert (seen["score"], seen["alerts"]) == (0, 0)
    assert sorted(seen["events"]) == ["email_click", "email_open", "page_visit"]
    assert seen["machine"] == [True, True, True]  # flagged by the consumer as it stored them
    # And a person's visit through the same path alerts (the control)
    site.clock.advance(LATER)
    await _visit(site, lead_id, HUMAN)
    assert (await store_buffered(site)).recorded == 1
    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"]) == (15, 1)


# --- flagged when stored ------------------------------------------------------------------------------------


async def test_machine_events_are_stored_with_the_machine_flag(site: Site) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)

    await site.client.get(f"/t/o/{tokens['o']}", headers={"user-agent": GMAIL_PROXY})
    await site.client.get(f"/t/c/{tokens['c']}", headers={"user-agent": GATEWAYS[0]})
    await _visit(site, lead_id, GATEWAYS[-1])
    await site.client.get(f"/t/c/{tokens['c']}", headers={"user-agent": HUMAN})  # a person: no flag

    seen = await _after_rescore(site, lead_id)
    assert seen["machine"] == [True, True, True, False]
    assert seen["why"] == [
        "scanner user agent (googleimageproxy)",
        "scanner user agent (mimecast)",
        "scanner user agent (headlesschrome)",
        None,
    ]


async def test_head_requests_are_stored_flagged(site: Site) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(LATER)

    await site.client.head(f"/t/o/{tokens['o']}", headers={"user-agent": HUMAN})
    await site.client.head(f"/t/c/{tokens['c']}", headers={"user-agent": HUMAN})

    seen = await _after_rescore(site, lead_id)
    assert (seen["events"], seen["machine"], seen["why"], seen["score"]) == (
        ["email_open", "email_click"],
        [True, True],
        ["HEAD request"] * 2,
        0,
    )


async def test_a_click_within_a_second_of_delivery_never_scores(site: Site) -> None:
    lead_id, tokens = await _mailed(site)
    site.clock.advance(timedelta(milliseconds=500))

    click = await site.client.get(f"/t/c/{tokens['c']}", headers={"user-agent": HUMAN})

    assert click.status_code == 307
    seen = await _after_rescore(site, lead_id)
    assert (seen["score"], seen["alerts"], seen["events"]) == (0, 0, ["email_click"])
    assert seen["why"] == ["click 500ms after delivery"]
