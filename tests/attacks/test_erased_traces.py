"""An erased lead leaves no trace, and a suppressed lead's mail engagement alerts nobody.

Over HTTP against the real tracking web: after erasure every token of the lead (pixel, click, share link,
visit) is a 404 that stores nothing, on the direct path and on the Redis stream's batched path; the events
API refuses its `lead_id`; nothing rescores it, gives it an owner or alerts on it, and an alert raised
before the erasure is withdrawn. An unsubscribed lead's clicks on old mail raise no alert while its site
visits still reach its rep, and never enroll it again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, func, select

from nurture.core.events import InboundEvent, NotRecorded
from nurture.core.tracking import share_url, visitor_token
from nurture.db.queries.tables import alerts, enrollments, events, leads
from nurture.flows.alert import deliver_alert
from nurture.flows.engage import record_events, record_keyed_events, unsubscribe
from nurture.flows.erase import erase_lead
from nurture.flows.escalate import rescore
from nurture.flows.tick import enroll
from tests.attacks.conftest import ERASED_REFRESH_S, SECRET, Site, SiteFactory, store_buffered

pytestmark = pytest.mark.integration

LEAD = "mei@example.com"
PRICING = "https://acmeflow.example/pricing"
PROPOSAL = "https://files.example/proposal.pdf"
LATER = timedelta(hours=1)
REFRESH_S = ERASED_REFRESH_S  # NURTURE_ERASED_REFRESH_S of these sites (the fresh and the buffered)


async def mailed(site: Site) -> tuple[int, dict[str, str]]:
    """A lead mailed the first step; its id and the tokens its email carries (open, click, visitor)."""
    await site.mail_first_step(LEAD)
    html = site.first_email_html()
    async with site.runtime.db.transaction() as conn:
        lead_id = int((await conn.execute(select(leads.c.id))).scalar_one())
    tokens = {
        "o": re.findall(r'/t/o/([A-Za-z0-9_.-]+)"', html)[0],
        "c": re.findall(r'/t/c/([A-Za-z0-9_.-]+)"', html)[0],
        "v": visitor_token(lead_id, key=SECRET.encode()),
        "p": share_url("", lead_id=lead_id, url=PROPOSAL, kind="proposal", key=SECRET.encode()),
    }
    return lead_id, tokens


async def _erase(site: Site) -> None:
    await erase_lead(site.runtime.db, LEAD, now=site.clock.now())
    await asyncio.sleep(REFRESH_S * 2)  # past the web's refresh of its erased set


async def _count(site: Site, table: Table) -> int:
    async with site.runtime.db.transaction() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def _hit_every_token(site: Site, tokens: dict[str, str], url: str = PRICING) -> list[int]:
    return [
        (await site.client.get(f"/t/o/{tokens['o']}")).status_code,
        (await site.client.get(f"/t/c/{tokens['c']}")).status_code,
        (await site.client.head(f"/t/c/{tokens['c']}")).status_code,
        (await site.client.post("/t/v", json={"token": tokens["v"], "url": url})).status_code,
        (await site.client.get(tokens["p"])).status_code,
    ]


@pytest.fixture
async def fresh_site(site_factory: SiteFactory) -> AsyncIterator[Site]:
    started: Site = await site_factory(erased_refresh_s=REFRESH_S)
    async with started.client:
        yield started


async def test_every_token_of_an_erased_lead_is_a_404_and_stores_nothing(fresh_site: Site) -> None:
    # Given a mailed lead whose tokens work (the control)
    site = fresh_site
    lead_id, tokens = await mailed(site)
    site.clock.advance(LATER)
    assert await _hit_every_token(site, tokens) == [200, 307, 307, 204, 307]
    stored = await _count(site, events)

    # When the lead is erased
    await _erase(site)

    # Then every token is dead and nothing more is stored
    assert await _hit_every_token(site, tokens) == [404, 404, 404, 404, 404]
    assert await _count(site, events) == stored
    # And the events API refuses its lead_id
    answer = await site.client.post(
        "/api/events",
        json={"lead_id": lead_id, "type": "meeting_booked", "id": "after-erasure"},
        headers=site.auth,
    )
    assert answer.status_code == 422
    assert await _count(site, events) == stored


async def test_an_erased_lead_is_never_rescored_assigned_alerted_or_enrolled(fresh_site: Site) -> None:
    # Given a lead whose pricing visit raised an alert not sent yet
    site = fresh_site
    lead_id, tokens = await mailed(site)
    site.clock.advance(LATER)
    assert (await site.client.post("/t/v", json={"token": tokens["v"], "url": PRICING})).status_code == 204
    first = await rescore(lead_id, db=site.runtime.db, catalog=site.runtime.catalog, now=site.clock.now())
    assert first is not None
    assert len(first.alert_ids) == 1
    async with site.runtime.db.transaction() as conn:
        await conn.execute(leads.update().values(owner=None))

    # When the lead is erased, then rescored as a queued rescore would
    await _erase(site)
    site.clock.advance(LATER)
    again = await rescore(lead_id, db=site.runtime.db, catalog=site.runtime.catalog, now=site.clock.now())

    # Then nothing scores, assigns or alerts it, and the pending alert is never sent
    assert again is None
    sent = await deliver_alert(
        first.alert_ids[0],
        db=site.runtime.db,
        sinks=[],
        catalog=site.runtime.catalog,
        base_url=site.base_url,
        now=site.clock.now(),
    )
    assert sent is False
    async with site.runtime.db.transaction() as conn:
        owner, erased_at = (await conn.execute(select(leads.c.owner, leads.c.erased_at))).one()
        statuses = list((await conn.execute(select(alerts.c.status))).scalars())
    assert (owner, statuses) == (None, ["withdrawn"])
    assert erased_at is not None
    # And no tick enrolls it
    enrolled = await _count(site, enrollments)
    await enroll(site.runtime.db, site.runtime.catalog, site.clock.now())
    assert await _count(site, enrollments) == enrolled


async def test_events_buffered_before_an_erasure_are_stored_nowhere(buffered_site: Site) -> None:
    # Given an open, a click and a visit buffered in Redis before the lead was erased
    site = buffered_site
    _, tokens = await mailed(site)
    site.clock.advance(LATER)
    assert await _hit_every_token(site, tokens) == [200, 307, 307, 204, 307]
    await _erase(site)

    # When a worker's consumer stores the batch
    rescored: list[int] = []
    report = await store_buffered(site, rescored.extend)

    # Then nothing is stored and no rescore is enqueued; the tokens are dead now
    assert (report.recorded, report.unknown_leads, rescored) == (0, 5, [])
    assert await _count(site, events) == 0
    assert await _hit_every_token(site, tokens) == [404, 404, 404, 404, 404]


async def test_a_read_of_the_erased_leads_that_the_database_holds_up_never_holds_a_pixel(
    buffered_site: Site,
) -> None:
    # Given a web that answered a pixel (its erased set read) and whose next read of that set is due
    site = buffered_site
    _, tokens = await mailed(site)
    site.clock.advance(LATER)
    assert (await site.client.get(f"/t/o/{tokens['o']}")).status_code == 200
    await asyncio.sleep(REFRESH_S * 2)
    # When the database holds that read up (this transaction keeps SQLite's write lock, for 30 s of
    # busy timeout), then each pixel is answered all the same, from the set the web has, without delay
    async with site.runtime.db.transaction() as conn:
        await conn.execute(leads.update().where(leads.c.id == -1).values(owner=None))
        started = time.monotonic()
        answers = [(await site.client.get(f"/t/o/{tokens['o']}")).status_code for _ in range(3)]
        took = time.monotonic() - started
    assert answers == [200, 200, 200]
    assert took < 2.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kinds=st.lists(
        st.sampled_from(["email_open", "email_click", "page_visit", "content_download", "meeting_booked"]),
        min_size=1,
        max_size=6,
    ),
    batched=st.booleans(),
)
async def test_no_event_of_any_kind_is_recorded_for_an_erased_lead(
    fresh_site: Site, kinds: list[str], batched: bool
) -> None:
    site = fresh_site
    if not await _count(site, leads):
        await mailed(site)
        await erase_lead(site.runtime.db, LEAD, now=site.clock.now())
    async with site.runtime.db.transaction() as conn:
        lead_id = int((await conn.execute(select(leads.c.id))).scalar_one())
    now = site.clock.now()
    sent = [
        InboundEvent(lead_id, kind, now, url=f"{PRICING}/{i}", idempotency_key=f"k-{now}-{i}-{kind}")
        for i, kind in enumerate(kinds)
    ]
    if batched:
        outcomes = await record_keyed_events(site.runtime.db, sent, now=now)
    else:
        outcomes = await record_events(site.runtime.db, sent, now=now)
    assert outcomes == [NotRecorded.UNKNOWN_LEAD] * len(kinds)
    assert await _count(site, events) == 0


# --- suppressed leads ------------------------------------------------------------------------------------


async def _clicks_to_mql(site: Site, lead_id: int) -> None:
    """Ten clicks on ten links of old mail, a minute apart: 50 points, the MQL threshold."""
    start = site.clock.now()
    clicks = [
        InboundEvent(lead_id, "email_click", start + timedelta(minutes=i), url=f"{PRICING}/{i}")
        for i in range(10)
    ]
    await record_events(site.runtime.db, clicks, now=start + timedelta(minutes=10))
    site.clock.advance(timedelta(minutes=11))


@pytest.mark.parametrize("unsubscribed", [False, True])
async def test_a_suppressed_lead_is_never_alerted_on_mail_engagement(site: Site, unsubscribed: bool) -> None:
    # Given a mailed lead, unsubscribed or not (the control)
    lead_id, _ = await mailed(site)
    site.clock.advance(LATER)
    if unsubscribed:
        await unsubscribe(site.runtime.db, lead_id=lead_id, delivery_id=None, now=site.clock.now())

    # When clicks in its old emails take it to MQL
    await _clicks_to_mql(site, lead_id)
    result = await rescore(lead_id, db=site.runtime.db, catalog=site.runtime.catalog, now=site.clock.now())

    # Then only the lead still mailed alerts its rep
    assert result is not None
    assert result.score_after == 50
    assert len(result.alert_ids) == (0 if unsubscribed else 1)


async def test_a_suppressed_leads_site_visit_still_alerts_its_rep_and_never_enrolls_it(site: Site) -> None:
    # Given an unsubscribed lead
    lead_id, tokens = await mailed(site)
    site.clock.advance(LATER)
    await unsubscribe(site.runtime.db, lead_id=lead_id, delivery_id=None, now=site.clock.now())
    enrolled = await _count(site, enrollments)

    # When it visits the pricing page
    visit = await site.client.post("/t/v", json={"token": tokens["v"], "url": PRICING})
    result = await rescore(lead_id, db=site.runtime.db, catalog=site.runtime.catalog, now=site.clock.now())

    # Then the visit is recorded and its rep is alerted (the handoff promise), and it is not enrolled
    assert visit.status_code == 204
    assert result is not None
    assert len(result.alert_ids) == 1
    await enroll(site.runtime.db, site.runtime.catalog, site.clock.now())
    assert await _count(site, enrollments) == enrolled


async def test_a_head_of_a_click_link_never_reveals_the_visitor_token(site: Site) -> None:
    _, tokens = await mailed(site)

    head = await site.client.head(f"/t/c/{tokens['c']}")
    get = await site.client.get(f"/t/c/{tokens['c']}")

    assert head.status_code == get.status_code == 307
    assert "nl=" not in head.headers["location"]
    assert head.headers["location"] == get.headers["location"].split("?nl=")[0].split("&nl=")[0]
    assert tokens["v"] in get.headers["location"]
