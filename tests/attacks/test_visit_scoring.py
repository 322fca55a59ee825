"""A visitor token cannot score a lead to MQL, and one URL replayed scores once.

The attack: twelve POSTs to /t/v naming https://attacker.example/demo took a lead from 0 to 200 and raised
an MQL alert, and one pixel URL fetched thousands of times re-scored its lead as many times. Now only pages
of the company's own sites count (`NURTURE_SITE_HOSTS`, else the templates' link hosts), the beacon is
rate-limited per visitor token and per client, and the same event within `NURTURE_REPLAY_WINDOW_S` counts
once. Each limit is tried at limit - 1, limit and limit + 1 over HTTP.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from nurture.core.site_hosts import is_site_page, normal_host, parse_site_hosts
from nurture.core.tracking import visitor_token
from nurture.db.queries.tables import alerts, events, leads
from nurture.flows.escalate import rescore
from nurture.flows.ingest import import_leads
from nurture.settings import Settings
from tests.attacks.conftest import SECRET, START, Site, SiteFactory
from tests.attacks.test_erased_traces import mailed

pytestmark = pytest.mark.integration

OURS = "https://acmeflow.example"  # the host the tests' templates link to


async def _lead(site: Site) -> tuple[int, str]:
    await import_leads(site.runtime.db, [{"email": "mei@example.com", "grade": "nurturable"}], now=START)
    async with site.runtime.db.transaction() as conn:
        lead_id = int((await conn.execute(select(leads.c.id))).scalar_one())
    return lead_id, visitor_token(lead_id, key=SECRET.encode())


async def _scored(site: Site, lead_id: int) -> tuple[int, int, int]:
    """The lead's score after a rescore, its alerts, and how many events are stored."""
    result = await rescore(lead_id, db=site.runtime.db, catalog=site.runtime.catalog, now=site.clock.now())
    assert result is not None
    async with site.runtime.db.transaction() as conn:
        alert_count = (await conn.execute(select(func.count()).select_from(alerts))).scalar_one()
        event_count = (await conn.execute(select(func.count()).select_from(events))).scalar_one()
    return result.score_after, alert_count, event_count


async def _visit(site: Site, token: str, url: str, **headers: str) -> Any:
    return await site.client.post("/t/v", json={"token": token, "url": url}, headers=headers)


async def test_twelve_posts_naming_an_attackers_page_score_nothing(site: Site) -> None:
    lead_id, token = await _lead(site)

    answers = [(await _visit(site, token, "https://attacker.example/demo")).status_code for _ in range(12)]

    assert answers == [400] * 10 + [429] * 2  # refused: not our site; then the token's burst is spent
    assert await _scored(site, lead_id) == (0, 0, 0)


async def test_twelve_posts_of_our_own_demo_page_never_reach_mql(site: Site) -> None:
    lead_id, token = await _lead(site)

    answers = [(await _visit(site, token, f"{OURS}/demo")).status_code for _ in range(12)]

    assert answers == [204] * 10 + [429] * 2  # NURTURE_VISIT_BURST: 10
    score, _alerts, stored = await _scored(site, lead_id)
    assert (score, stored) == (20, 10)  # one /demo visit: the other nine are repeats within the window
    assert score < site.runtime.catalog.scoring.thresholds.mql


@pytest.mark.parametrize("burst", [1, 3])
async def test_the_per_token_limit_holds_at_its_burst(site_factory: SiteFactory, burst: int) -> None:
    site: Site = await site_factory(visit_burst=burst, visit_rate_per_s=0.5)
    async with site.client:
        _, token = await _lead(site)
        under = [(await _visit(site, token, f"{OURS}/p{i}")).status_code for i in range(burst - 1)]
        at = (await _visit(site, token, f"{OURS}/at")).status_code
        over = await _visit(site, token, f"{OURS}/over")
        assert (under, at, over.status_code) == ([204] * (burst - 1), 204, 429)
        assert over.headers["retry-after"] == "2"  # one token back in 1 / 0.5 s
        assert over.headers["access-control-allow-origin"] == "*"
        site.clock.advance(timedelta(seconds=2))
        assert (await _visit(site, token, f"{OURS}/later")).status_code == 204
        # Another visitor is not held back by this one
        other = visitor_token(999, key=SECRET.encode())
        assert (await _visit(site, other, f"{OURS}/x")).status_code == 204


async def test_the_per_client_limit_holds_across_visitor_tokens(site_factory: SiteFactory) -> None:
    site: Site = await site_factory(visit_client_burst=3, visit_client_rate_per_s=1)
    async with site.client:
        tokens = [visitor_token(1000 + i, key=SECRET.encode()) for i in range(4)]
        answers = [(await _visit(site, t, f"{OURS}/")).status_code for t in tokens]
        # limit - 1 and limit are answered (tokens of no lead: 204, recorded as nothing), limit + 1 is not
        assert answers == [204, 204, 204, 429]
        site.clock.advance(timedelta(seconds=1))
        assert (await _visit(site, tokens[0], f"{OURS}/")).status_code == 204


@pytest.mark.parametrize(("offset_s", "counted"), [(59, False), (60, True), (61, True)])
async def test_the_same_page_within_the_replay_window_counts_once(
    site_factory: SiteFactory, offset_s: int, counted: bool
) -> None:
    site: Site = await site_factory(replay_window_s=60)
    async with site.client:
        lead_id, token = await _lead(site)
        assert (await _visit(site, token, f"{OURS}/demo")).status_code == 204
        site.clock.advance(timedelta(seconds=offset_s))
        assert (await _visit(site, token, f"{OURS}/demo")).status_code == 204
        score, _, stored = await _scored(site, lead_id)
        assert stored == 2  # a repeat is stored, flagged, and never scores
        assert score == (40 if counted else 20)


async def test_a_pixel_url_replayed_many_times_scores_once(site: Site) -> None:
    lead_id, tokens = await mailed(site)
    site.clock.advance(timedelta(hours=1))

    answers = {(await site.client.get(f"/t/o/{tokens['o']}")).status_code for _ in range(40)}

    assert answers == {200}
    async with site.runtime.db.transaction() as conn:
        flags = [
            (p or {}).get("repeat") is True
            for p in (await conn.execute(select(events.c.properties).order_by(events.c.id))).scalars()
        ]
    assert flags == [False] + [True] * 39
    score, _, _ = await _scored(site, lead_id)
    assert score == 1
    metrics = (await site.client.get("/metrics")).text
    assert 'outcome="repeat"' in metrics


# --- the host family of NURTURE_SITE_HOSTS ------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
SITE = "acmeflow.example"


def _case(text: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c for c, f in zip(text, flips + [False] * len(text), strict=False))


@given(sub=st.lists(LABEL, max_size=3), port=st.none() | st.integers(1, 65535), flips=st.lists(st.booleans()))
def test_our_host_its_subdomains_any_port_and_any_case_are_our_site(
    sub: list[str], port: int | None, flips: list[bool]
) -> None:
    host = _case(".".join([*sub, SITE]), flips)
    url = f"https://{host}{f':{port}' if port else ''}/demo"
    assert is_site_page(url, parse_site_hosts(SITE))


@given(label=LABEL, tld=st.sampled_from(["example", "com", "attacker.example"]))
def test_lookalike_hosts_are_not_our_site(label: str, tld: str) -> None:
    hosts = parse_site_hosts(SITE)
    for url in (
        f"https://{label}{SITE}/demo",  # evilacmeflow.example
        f"https://{SITE}.{label}.{tld}/demo",  # acmeflow.example.attacker.example
        f"https://{SITE}@{label}.{tld}/demo",  # userinfo: the host is after the @
        f"https://{SITE}:pw@{label}.{tld}/demo",
        f"https://{label}.{tld}/{SITE}/demo",
        f"https://{label}.{tld}/?u=https://{SITE}/",
    ):
        assert not is_site_page(url, hosts), url


@given(user=LABEL)
def test_userinfo_naming_another_host_does_not_hide_ours(user: str) -> None:
    assert is_site_page(f"https://{user}@{SITE}/demo", parse_site_hosts(SITE))
    assert is_site_page(f"https://attacker.example@www.{SITE}:8443/demo", parse_site_hosts(SITE))


@given(flips=st.lists(st.booleans()))
def test_an_idn_host_matches_its_punycode_in_any_case(flips: list[bool]) -> None:
    unicode_host = "bücher.example"
    puny = "xn--bcher-kva.example"
    for listed in (unicode_host, puny, _case(puny, flips)):
        hosts = parse_site_hosts(listed)
        assert is_site_page(f"https://{unicode_host}/demo", hosts)
        assert is_site_page(f"https://www.{_case(puny, flips)}/demo", hosts)
        assert not is_site_page("https://bucher.example/demo", hosts)  # a lookalike is another host


@pytest.mark.parametrize(
    "entry", ["https://acmeflow.example", "acmeflow.example:443", "a@acmeflow.example", "a/b", "-a.example"]
)
def test_a_site_host_that_is_not_a_bare_host_fails_at_start_up(entry: str) -> None:
    with pytest.raises(ValueError, match="site host"):
        Settings.model_validate({"site_hosts": entry})


def test_a_trailing_dot_and_spaces_name_the_same_host() -> None:
    assert parse_site_hosts(" Acmeflow.Example. ,docs.acmeflow.example") == {SITE, f"docs.{SITE}"}
    assert normal_host("ACMEFLOW.example.") == SITE


async def test_site_hosts_set_explicitly_replace_the_templates_hosts(site_factory: SiteFactory) -> None:
    site: Site = await site_factory(site_hosts="docs.acmeflow.example")
    async with site.client:
        _, token = await _lead(site)
        assert (await _visit(site, token, f"{OURS}/demo")).status_code == 400
        assert (await _visit(site, token, "https://docs.acmeflow.example/demo")).status_code == 204
