"""Logs carry ids, never an email address or a name: an import, a send, an event and a complaint, captured."""

from __future__ import annotations

import logging

import pytest

from nurture.core.tracking import message_id_for
from tests.attacks.conftest import SECRET, Site
from tests.flows.test_complaints_and_erasure import arf

pytestmark = pytest.mark.integration
PERSONAL = ("mei.lin@example.com", "mei.lin", "Mei", "Lin-Hsu", "Formosa Freight")


async def test_logs_name_no_address_and_no_person(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    # Everything nurture logs, and what the libraries it runs on log at the production level (INFO)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="nurture")
    # Given a lead imported and mailed, then engaging through the API, then complaining
    delivery_id = await site.mail_first_step(
        "Mei.Lin@example.com", first_name="Mei", last_name="Lin-Hsu", company="Formosa Freight"
    )
    event = {"email": "mei.lin@example.com", "type": "page_visit", "url": "https://acmeflow.example/pricing"}
    posted = await site.client.post("/api/events", json=event, headers=site.auth)
    bad = await site.client.post("/api/leads", json={"email": "Mei Lin <not an address"}, headers=site.auth)
    report = arf(message_id=message_id_for(delivery_id, domain="acmeflow.example", key=SECRET.encode()))
    complained = await site.client.post("/api/complaints", content=report, headers=site.auth)

    assert (posted.status_code, bad.status_code, complained.status_code) == (202, 422, 200)
    lines = [record.getMessage() for record in caplog.records]
    assert any(f"delivery_id={delivery_id}" in line for line in lines)  # the log did see the work
    leaks = [line for line in lines if any(p.lower() in line.lower() for p in PERSONAL)]
    assert leaks == []
