"""The events API cannot take the idempotency keys of buffered tracking events (`stream:<entry id>`).

A client key equal to a stream entry's key would make that tracking event a "replay" and drop it (or the
client's event, whichever came second); so keys in that namespace are refused, over real HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from nurture.db.queries.tables import events
from tests.attacks.conftest import Site

pytestmark = pytest.mark.integration
RESERVED = "event ids and Idempotency-Keys may not start with 'stream:' (reserved)"
EVENT = {"email": "mei@example.com", "type": "content_download"}


async def _keys(site: Site) -> list[Any]:
    async with site.runtime.db.transaction() as conn:
        return list((await conn.execute(select(events.c.idempotency_key).order_by(events.c.id))).scalars())


async def test_a_client_key_in_the_stream_namespace_is_refused_and_writes_nothing(site: Site) -> None:
    await site.mail_first_step("mei@example.com")

    by_header = await site.client.post(
        "/api/events", json=EVENT, headers={**site.auth, "idempotency-key": "stream:1700000000000-0"}
    )
    by_id = await site.client.post("/api/events", json={**EVENT, "id": "stream:1-0"}, headers=site.auth)

    assert (by_header.status_code, by_id.status_code) == (400, 400)
    assert by_header.json()["error"] == by_id.json()["error"] == RESERVED
    assert await _keys(site) == []


async def test_in_an_array_only_the_reserved_key_is_rejected(site: Site) -> None:
    await site.mail_first_step("mei@example.com")
    batch = [{**EVENT, "id": "stream:1-0"}, {**EVENT, "id": "crm-1"}, {**EVENT, "id": "Stream:1-0"}]

    answer = await site.client.post("/api/events", json=batch, headers=site.auth)

    assert answer.status_code == 200
    assert answer.json()["rejected"] == [{"index": 0, "field": "id", "reason": RESERVED}]
    assert await _keys(site) == ["crm-1", "Stream:1-0"]  # the prefix is exact: the stream writes it so
