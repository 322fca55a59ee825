"""The HTTP API under attack, over real HTTP: keys, rate limits, idempotency, complaints, fuzzing."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from nurture.core.tracking import message_id_for
from nurture.db.queries.tables import events, leads, touchpoints
from tests.attacks.conftest import SECRET, Site, SiteFactory
from tests.flows.test_complaints_and_erasure import arf

pytestmark = pytest.mark.integration


async def _count(site: Site, table: Any, *where: Any) -> int:
    async with site.runtime.db.transaction() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def test_past_its_burst_a_key_gets_429_with_retry_after_and_writes_nothing(
    site_factory: SiteFactory,
) -> None:
    site: Site = await site_factory(api_burst=3, api_rate_per_s=0.5)
    async with site.client:
        lead = {"email": "a@example.com", "grade": "nurturable"}
        answers = [await site.client.post("/api/leads", json=lead, headers=site.auth) for _ in range(3)]
        refused = await site.client.post("/api/leads", json={"email": "b@example.com"}, headers=site.auth)

        assert [a.status_code for a in answers] == [200, 200, 200]
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"  # one token at 0.5/s
        assert await _count(site, leads, leads.c.email == "b@example.com") == 0
        # Then, once Retry-After has passed, the key works again
        site.clock.advance(timedelta(seconds=2))
        later = await site.client.post("/api/leads", json={"email": "b@example.com"}, headers=site.auth)
        assert later.status_code == 200


async def test_an_idempotency_key_with_another_body_is_a_409_and_the_first_event_stands(site: Site) -> None:
    await site.mail_first_step("mei@example.com")
    headers = {**site.auth, "idempotency-key": "crm-42"}
    event = {"email": "mei@example.com", "type": "content_download", "properties": {"asset": "guide"}}

    first = await site.client.post("/api/events", json=event, headers=headers)
    # the same body, spelt differently, is the same request
    same = await site.client.post(
        "/api/events", content=json.dumps(event, indent=2, sort_keys=True), headers=headers
    )
    other = await site.client.post("/api/events", json={**event, "type": "meeting_booked"}, headers=headers)

    assert (first.status_code, same.status_code, other.status_code) == (202, 200, 409)
    assert other.json()["error"] == "this Idempotency-Key was already used with another body"
    assert await _count(site, events) == 1
    async with site.runtime.db.transaction() as conn:
        assert (await conn.execute(select(events.c.type))).scalar_one() == "content_download"


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), ("Bearer nk_00000000_" + "A" * 43, 401), ("Basic Zm9vOmJhcg==", 401)],
)
async def test_a_complaint_without_a_valid_key_is_refused(
    site: Site, authorization: str | None, status: int
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    answer = await site.client.post("/api/complaints", content=arf(), headers=headers)
    assert answer.status_code == status
    assert await _count(site, touchpoints, touchpoints.c.kind == "complained") == 0


async def test_a_complaint_suppresses_the_lead_once_and_garbage_is_a_400(site: Site) -> None:
    delivery_id = await site.mail_first_step("mei@example.com")
    domain = "acmeflow.example"
    report = arf(message_id=message_id_for(delivery_id, domain=domain, key=SECRET.encode()), recipient=None)

    answers = await asyncio.gather(
        *(site.client.post("/api/complaints", content=report, headers=site.auth) for _ in range(3))
    )
    garbage = await site.client.post("/api/complaints", content=b"\x00\xffnot mail", headers=site.auth)
    huge = await site.client.post("/api/complaints", content=b"x" * (2 * 1024 * 1024), headers=site.auth)
    stranger = await site.client.post(
        "/api/complaints", content=arf(recipient="nobody@elsewhere.example"), headers=site.auth
    )

    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True]
    assert {a.json()["delivery_id"] for a in answers} == {delivery_id}
    assert await _count(site, touchpoints, touchpoints.c.kind == "complained") == 1
    async with site.runtime.db.transaction() as conn:
        assert (await conn.execute(select(leads.c.suppressed_reason))).scalar_one() == "complained"
    assert garbage.status_code == 400
    assert garbage.json()["error"].startswith("not a feedback report")
    assert huge.status_code == 413
    assert stranger.status_code == 200  # an address of no lead is suppressed all the same
    assert stranger.json() == {"lead_id": None, "delivery_id": None, "duplicate": False}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["email", "type", "lead_id", "occurred_at", "url", "id", "properties", "user_agent", "grade", "tags", "x"]
)
shaped = st.dictionaries(field_names, json_values, max_size=6)
bodies = json_values | shaped | st.lists(shaped, max_size=3)


async def test_schema_fuzzing_over_http_never_yields_a_500(site_factory: SiteFactory) -> None:
    site: Site = await site_factory(api_burst=100_000)
    await site.mail_first_step("mei@example.com")

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(path=st.sampled_from(["/api/leads", "/api/events", "/api/complaints"]), body=bodies)
    def post(path: str, body: Any) -> None:
        answer = client.post(path, content=json.dumps(body), headers=site.auth)
        assert answer.status_code < 500, (path, body, answer.text)
        assert isinstance(answer.json(), dict)  # a JSON answer that says what was wrong

    # The server runs on this event loop: the synchronous client posts from a thread.
    async with site.client:
        with httpx.Client(base_url=site.base_url, timeout=10) as client:
            await asyncio.to_thread(post)
