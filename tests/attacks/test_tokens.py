"""Tracking tokens moved between purposes and leads, mutated or truncated: rejected, and nothing is written.

The tokens are the ones a real email carries (read back from the outbox); the click endpoint never
redirects anywhere but the URL signed for that link.
"""

from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from nurture.core.tracking import sign_token
from nurture.db.queries.tables import events, leads, touchpoints
from nurture.event_consumer import EventConsumer
from nurture.event_stream import STREAM, EventStream
from tests.attacks.conftest import SECRET, Site, SiteFactory
from tests.services import REDIS_URL, require_service

pytestmark = pytest.mark.integration
ONE_CLICK = {"content-type": "application/x-www-form-urlencoded"}


async def _tokens(site: Site) -> dict[str, str]:
    """The open, click and unsubscribe tokens of the first lead's email in the outbox."""
    [eml] = [
        p for p in site.runtime.settings.outbox_dir.glob("*.eml") if b"mei@example.com" in p.read_bytes()
    ]
    message = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("html",))
    assert body is not None
    html = body.get_content()
    [unsubscribe] = re.findall(r"/u/([A-Za-z0-9_.-]+)", str(message["List-Unsubscribe"]))
    return {
        "o": re.findall(r'/t/o/([A-Za-z0-9_.-]+)"', html)[0],
        "c": re.findall(r'/t/c/([A-Za-z0-9_.-]+)"', html)[0],
        "u": unsubscribe,
    }


async def _written(site: Site) -> dict[str, Any]:
    async with site.runtime.db.transaction() as conn:
        count = (await conn.execute(select(func.count()).select_from(events))).scalar_one()
        kinds = sorted((await conn.execute(select(touchpoints.c.kind))).scalars())
        suppressed = sorted((await conn.execute(select(leads.c.suppressed))).scalars())
    return {"events": count, "touchpoints": kinds, "suppressed": suppressed}


def _flip(token: str, at: int) -> str:
    swapped = "A" if token[at] != "A" else "B"
    return token[:at] + swapped + token[at + 1 :]


async def test_misused_tokens_are_rejected_and_write_nothing(site: Site) -> None:
    delivery_id = await site.mail_first_step("mei@example.com")
    await site.mail_first_step("ann@example.com")  # a second lead whose ids a token could be moved to
    tokens = await _tokens(site)
    before = await _written(site)
    elsewhere = sign_token({"k": "c", "l": 1, "d": delivery_id, "u": "https://evil.example/"}, key=b"x" * 32)
    forged: list[str] = [
        *(_flip(tokens[kind], at) for kind in "ocu" for at in (0, len(tokens[kind]) // 2, -1)),
        *(tokens[kind][: len(tokens[kind]) // 2] for kind in "ocu"),
        *(tokens[kind] + "A" for kind in "ocu"),
        elsewhere,
        "",
        "." * 5000,
    ]

    for token in forged:
        await site.client.get(f"/t/o/{token}")
        click = await site.client.get(f"/t/c/{token}")
        await site.client.post(f"/u/{token}", content="List-Unsubscribe=One-Click", headers=ONE_CLICK)
        assert "location" not in click.headers, token
        assert (await _written(site))["events"] == 0, token
    # Moved between purposes: each genuine token at the other two endpoints
    moved = [
        await site.client.get(f"/t/c/{tokens['o']}"),
        await site.client.get(f"/t/c/{tokens['u']}"),
        await site.client.get(f"/t/o/{tokens['c']}"),
        await site.client.get(f"/t/o/{tokens['u']}"),
        await site.client.post(f"/u/{tokens['o']}", content="List-Unsubscribe=One-Click", headers=ONE_CLICK),
        await site.client.post(f"/u/{tokens['c']}", content="List-Unsubscribe=One-Click", headers=ONE_CLICK),
    ]

    assert all("location" not in answer.headers for answer in moved)
    assert await _written(site) == before


async def test_a_click_redirects_only_to_the_url_signed_for_it(site: Site) -> None:
    await site.mail_first_step("mei@example.com")
    token = (await _tokens(site))["c"]

    for suffix in ("?u=https://evil.example", "/../https://evil.example", "%2F%2Fevil.example", "#@evil"):
        tampered = await site.client.get(f"/t/c/{token}{suffix}")
        assert "evil" not in tampered.headers.get("location", ""), suffix
    genuine = await site.client.get(f"/t/c/{token}")
    assert genuine.status_code == 307
    assert genuine.headers["location"].startswith("https://acmeflow.example/")


async def test_a_signed_token_naming_another_leads_delivery_writes_nothing(site: Site) -> None:
    delivery_id = await site.mail_first_step("mei@example.com")
    await site.mail_first_step("ann@example.com")
    before = await _written(site)
    crossed = sign_token({"k": "o", "l": 2, "d": delivery_id}, key=SECRET.encode())

    await site.client.get(f"/t/o/{crossed}")

    assert await _written(site) == before


async def test_a_buffered_token_naming_another_leads_delivery_is_set_aside_and_writes_nothing(
    site_factory: SiteFactory,
) -> None:
    # Given the web buffering into Redis, and a signed open naming the other lead's email
    require_service(REDIS_URL, "Redis")
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(STREAM, f"{STREAM}:rejected")  # the test Redis database is this suite's own
    site: Site = await site_factory(redis_url=REDIS_URL)
    stream = EventStream.from_url(REDIS_URL, timeout_s=5)
    try:
        async with site.client:
            delivery_id = await site.mail_first_step("mei@example.com")
            await site.mail_first_step("ann@example.com")
            before = await _written(site)
            crossed = sign_token({"k": "o", "l": 2, "d": delivery_id}, key=SECRET.encode())
            pixel = await site.client.get(f"/t/o/{crossed}")  # one XADD: no database read per request

            # When a worker's consumer stores the stream
            await stream.ensure_group()
            consumer = EventConsumer(stream, site.runtime.db, site.runtime.clock, lambda _ids: None, name="t")
            report = await consumer.step()

            # Then the entry is set aside with the reason, and nothing is written
            assert pixel.status_code == 200
            assert (report.recorded, report.rejected) == (0, 1)
            assert await _written(site) == before
            rejected: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(f"{STREAM}:rejected")  # type: ignore[assignment]
            [(_, fields)] = rejected
            assert fields[b"reason"] == f"delivery {delivery_id} is not lead 2's".encode()
    finally:
        await stream.aclose()
        client.delete(STREAM, f"{STREAM}:rejected")
        client.close()
