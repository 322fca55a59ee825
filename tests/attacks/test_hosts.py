"""Host and Origin headers from strangers, over real HTTP: no redirect is built from Host, an unknown Host is
refused, a sign-in or sign-out from another Origin is refused, and every error carries the security
headers."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from nurture.web.app import SECURITY_HEADERS
from nurture.web.hosts import BAD_HOST, host_name
from tests.attacks.conftest import Site, SiteFactory
from tests.attacks.test_machine_engagement import _mailed

pytestmark = pytest.mark.integration

FORM = {"content-type": "application/x-www-form-urlencoded"}


def _assert_secured(answer: object) -> None:
    headers = answer.headers  # type: ignore[attr-defined]
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name


async def test_a_trailing_slash_redirect_is_relative_whatever_the_host(site: Site) -> None:
    answer = await site.client.get("/dashboard/?period=7", headers={"host": site.base_url[7:]})
    assert answer.status_code == 307
    assert answer.headers["location"] == "/dashboard?period=7"
    _assert_secured(answer)


@pytest.mark.parametrize("path", ["/dashboard/", "/healthz", "/login", "/t/o/abc", "/t/c/abc", "/api/leads"])
async def test_a_host_that_is_not_configured_is_refused_everywhere(site: Site, path: str) -> None:
    answer = await site.client.get(path, headers={"host": "evil.example"})
    assert answer.status_code == 400
    assert answer.text == BAD_HOST
    assert "evil" not in answer.headers.get("location", "")
    _assert_secured(answer)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:8000", "crm.example", "crm.example:443"]
)
async def test_configured_hosts_are_answered(site_factory: SiteFactory, host: str) -> None:
    site: Site = await site_factory(allowed_hosts="localhost,::1,crm.example")
    async with site.client:
        answer = await site.client.get("/healthz", headers={"host": host})
    assert answer.status_code == 200


@pytest.mark.parametrize("host", ["[::1]evil", "evil@localhost", "localhost:8000:1", "[127.0.0.1]"])
async def test_a_host_that_only_contains_an_allowed_one_is_refused(site: Site, host: str) -> None:
    answer = await site.client.get("/healthz", headers={"host": host})
    assert (answer.status_code, answer.text) == (400, BAD_HOST)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(host=st.text(max_size=30))
@example(host="[::1]evil")
@example(host="evil@localhost")
@example(host="[::1]:8000")
@example(host=" LOCALHOST:80 ")
def test_no_host_header_maps_onto_an_allowed_name_unless_it_is_that_name(host: str) -> None:
    allowed = {"127.0.0.1", "localhost", "::1"}
    name = host_name(host)
    if name in allowed:  # the name, bracketed when IPv6, then maybe a port: nothing more
        written = rf"\[{re.escape(name)}\]|{re.escape(name)}" if ":" in name else re.escape(name)
        assert re.fullmatch(rf"(?:{written})(?::\d*)?", host.strip().lower()), host


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"origin": "https://evil.example"}, 403),
        ({"origin": "null"}, 403),
        ({"origin": "http://[::1"}, 403),  # an authority urllib cannot split: foreign, not a 500
        ({"origin": "http://evil.example@127.0.0.1"}, 403),
        ({"origin": "https://evil.example", "sec-fetch-site": "cross-site"}, 403),
        ({"sec-fetch-site": "cross-site"}, 403),
        ({"origin": "http://127.0.0.1:1"}, 303),  # this host, another port: the same site
        ({}, 303),
    ],
)
async def test_a_sign_in_from_another_origin_is_refused_like_a_cross_site_one(
    site: Site, headers: dict[str, str], status: int
) -> None:
    answer = await site.client.post(
        "/login", content=f"api_key={site.key}&next=/", headers={**FORM, **headers}
    )
    assert answer.status_code == status
    assert bool(answer.headers.get_list("set-cookie")) == (status == 303)
    refused = await site.client.post("/logout", headers=headers)
    assert refused.status_code == (403 if status == 403 else 303)


async def test_a_500_carries_the_security_headers(site: Site) -> None:
    _lead_id, tokens = await _mailed(site)
    async with site.runtime.db.transaction() as conn:
        await conn.execute(text("DROP TABLE touchpoints"))
    complaint = (
        "From: fbl@isp.example\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nOriginal-Rcpt-To: rfc822;mei@example.com\n\n--b--\n"
    )
    answer = await site.client.post("/api/complaints", content=complaint, headers=site.auth)
    assert answer.status_code == 500
    assert "Traceback" not in answer.text
    _assert_secured(answer)
    # The tracking fast path answers as ever: it logs what it could not record
    assert (await site.client.get(f"/t/o/{tokens['o']}")).status_code == 200
