"""Lead fields and tracked metadata carrying HTML, script or chat markup stay inert wherever they are shown.

A lead's name, company, title and source tags come from forms anyone can fill in; a visit's URL, referrer and
user agent, and an API event's properties, from whoever holds a visitor token or an API key. Each is fed here
through the real entry points (import, the tracking beacon, the events API) and read back where a person sees
it: the marketing email (HTML and text parts), the rep's alert email, the chat payload a Slack-compatible
webhook receives (a real HTTP peer), and every web page (lead timeline, dashboard, login, unsubscribe).
"""

from __future__ import annotations

import asyncio
import email
import re
from email import policy
from email.message import EmailMessage
from html import unescape
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from nurture.alerts import AppriseAlertSink, EmailAlertSink
from nurture.alerts.chat import defuse_chat_markup
from nurture.core.campaign import parse_campaign
from nurture.core.context import SAMPLE_REP, LeadProfile, template_context
from nurture.core.tracking import visitor_token
from nurture.db.queries.tables import alerts, leads
from nurture.flows.alert import deliver_alert
from nurture.flows.escalate import rescore
from nurture.ports import AlertSink
from nurture.render import TemplateRenderer
from tests.attacks.conftest import SECRET, Site, SiteFactory
from tests.fakes import RecordingTransport
from tests.webhook_receiver import WebhookReceiver, webhook_receiver_fixture  # noqa: F401

pytestmark = pytest.mark.integration

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
JS_LINK = '<a href="javascript:alert(1)">win</a>'
SVG = "<svg/onload=alert(1)>"
CHAT = "<!channel> <https://evil.example|click here> [win](https://evil.example) @here @channel @everyone"
HOSTILE = (SCRIPT, IMG, JS_LINK, SVG, CHAT, "javascript:alert(document.cookie)", "' onmouseover='alert(1)")
OWNER = "lin.chen@acmeflow.example"
BEARER_HTML = {"accept": "text/html"}
# Mentions and link forms a chat would act on, in the text it receives.
CHAT_ACTIVE = re.compile(
    r"<[!@#]|<https?:|(?<![\w.+\-])@(?:here|channel|everyone|all)\b|\]\(|\]\[|\]:", re.IGNORECASE
)


def hostile_fields() -> dict[str, str]:
    return {
        "first_name": SCRIPT,
        "last_name": IMG,
        "company": JS_LINK,
        "title": CHAT,
        "utm_source": SVG,
        "utm_campaign": "[win](https://evil.example) @here",
        "owner": OWNER,
    }


class _Markup(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would read them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def assert_inert(html: str, *, allowed_tags: frozenset[str] | None = None) -> None:
    """No script, no event handler, no script URL, and none of the hostile strings as markup."""
    markup = _Markup(html)
    for tag, attrs in markup.tags:
        assert tag not in {"script", "iframe", "object", "embed", "base"}, tag
        assert allowed_tags is None or tag in allowed_tags, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, value)
            assert not re.match(r"\s*(javascript|vbscript|data):", value, re.IGNORECASE), (tag, name, value)
            assert "evil.example" not in value, (tag, name, value)
    lowered = html.lower()
    for raw in ("<script", "<img src=x", "<svg/onload", '<a href="javascript', "<!channel", "<https://evil"):
        assert raw not in lowered, raw


def _parts(eml: bytes) -> tuple[EmailMessage, str, str]:
    message = email.message_from_bytes(eml, policy=policy.default)
    assert isinstance(message, EmailMessage)
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert html is not None
    assert text is not None
    return message, html.get_content(), text.get_content()


# --- the marketing email ------------------------------------------------------------------------------------


async def test_a_marketing_email_shows_hostile_lead_fields_as_text_in_both_parts(site: Site) -> None:
    # Given a lead whose every field is markup, mailed the first step of the shipped campaign
    await site.mail_first_step("mei@example.com", **hostile_fields())
    [eml] = site.runtime.settings.outbox_dir.glob("*.eml")

    message, html, text = _parts(eml.read_bytes())

    # Then the HTML part has the markup as escaped text only, and the text part has it verbatim
    assert_inert(html)
    assert SCRIPT in unescape(html)  # shown to the reader, as text
    assert "&lt;script&gt;" in html
    assert SCRIPT in text
    assert "&lt;" not in text  # the text part is not HTML: nothing double-escaped
    # And the subject is one header line (the lead's name is in it)
    assert "\n" not in str(message["Subject"])


HTML_PROBE = """\
<html><body>
<p title="{{ lead.company }}">{{ lead.first_name }} {{ lead.last_name }}</p>
<p>{{ lead.title }} {{ lead.tags.get('utm_source', '') }}</p>
<a href="https://acme.example/?c={{ lead.company|urlencode }}">more</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a> <p>{{ postal_address }}</p>
</body></html>
"""
PROBE_CAMPAIGN = """\
id: probe
name: Probe
sender: {from: "Acme <growth@acme.example>", postal_address: "Acme Inc., 1 Main St"}
steps:
  - {id: one, day: 0, subject: "Hi {{ lead.first_name }}", template: probe/one.html.j2}
"""


@pytest.fixture(scope="module")
def probe_renderer(tmp_path_factory: pytest.TempPathFactory) -> tuple[TemplateRenderer, Any]:
    templates = tmp_path_factory.mktemp("escaping") / "templates"
    (templates / "probe").mkdir(parents=True)
    (templates / "probe" / "one.html.j2").write_text(HTML_PROBE, encoding="utf-8")
    campaign = parse_campaign(PROBE_CAMPAIGN, source="probe.yaml")
    return TemplateRenderer(templates, {campaign.id: campaign}), campaign


def _render_probe(probe: tuple[TemplateRenderer, Any], **fields: Any) -> str:
    renderer, campaign = probe
    lead = LeadProfile(email="mei@example.com", **fields)
    context = template_context(
        lead,
        owner=SAMPLE_REP,
        campaign=campaign,
        step=campaign.steps[0],
        unsubscribe_url="https://track.example/u/t",
        postal_address="Acme Inc., 1 Main St",
    )
    return renderer.render_step("probe", "one", context).html


hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet=st.sampled_from("<>\"'&=/ ()[]:@!|aj"), max_size=40),
    st.lists(st.sampled_from([*HOSTILE, "x", " ", '"', "'"]), max_size=4).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=hostile_text, last=hostile_text, company=hostile_text, title=hostile_text, source=hostile_text)
def test_no_lead_field_adds_a_tag_or_attribute_to_the_html(
    probe_renderer: tuple[TemplateRenderer, Any],
    first: str,
    last: str,
    company: str,
    title: str,
    source: str,
) -> None:
    benign = _Markup(_render_probe(probe_renderer, first_name="Mei", company="Acme"))
    fields = {"first_name": first, "last_name": last, "company": company, "title": title}
    hostile = _Markup(_render_probe(probe_renderer, **fields, tags={"utm_source": source}))

    # The same elements with the same attribute names: the values are text, whatever they hold
    assert [(tag, sorted(attrs)) for tag, attrs in hostile.tags] == [
        (tag, sorted(attrs)) for tag, attrs in benign.tags
    ]
    hrefs = [attrs["href"] for tag, attrs in hostile.tags if tag == "a"]
    assert hrefs[0].startswith("https://acme.example/?c=")
    assert hrefs[1] == "https://track.example/u/t"


# --- the rep's alert: email and chat ------------------------------------------------------------------------


async def _alerted_lead(site: Site) -> int:
    """A lead with hostile fields whose visit to the pricing page (hostile query and referrer) alerted."""
    await site.mail_first_step("mei@example.com", **hostile_fields())
    async with site.runtime.db.transaction() as conn:
        lead_id = int((await conn.execute(select(leads.c.id))).scalar_one())
    visit = {
        "token": visitor_token(lead_id, key=SECRET.encode()),
        "url": 'https://acmeflow.example/pricing?q="><img/src=x/onerror=alert(1)>&x=<!here>',
        "referrer": "https://evil.example/<script>alert(1)</script>",
    }
    answer = await site.client.post("/t/v", json=visit, headers={"user-agent": f"Mozilla/5.0 {SVG}"})
    assert answer.status_code == 204
    event = {
        "lead_id": lead_id,
        "type": "content_download",
        "url": "https://acmeflow.example/whitepaper?<script>",
        "user_agent": IMG,
        "properties": {"title": SCRIPT, "note": CHAT},
    }
    assert (await site.client.post("/api/events", json=event, headers=site.auth)).status_code == 202
    rt = site.runtime
    result = await rescore(lead_id, db=rt.db, catalog=rt.catalog, now=site.clock.now())
    assert result is not None
    assert result.alert_ids
    return lead_id


async def test_the_alert_email_and_chat_payloads_carry_hostile_lead_data_inert(
    site: Site, webhook_receiver: WebhookReceiver
) -> None:
    # Given an alert about a lead whose fields and visited URL are markup
    await _alerted_lead(site)
    async with site.runtime.db.transaction() as conn:
        alert_id = int((await conn.execute(select(alerts.c.id))).scalar_one())
    transport = RecordingTransport()
    mattermost = f"mmost://127.0.0.1:{webhook_receiver.port}/hooktoken"  # Slack-compatible incoming webhook
    sinks: list[AlertSink] = [
        EmailAlertSink(transport, "nurture <alerts@acmeflow.example>"),
        AppriseAlertSink([mattermost, webhook_receiver.json_url("/team")]),
    ]

    # When it is delivered to the rep's email, a Mattermost webhook and a JSON webhook
    rt = site.runtime
    delivered = await deliver_alert(
        alert_id, db=rt.db, sinks=sinks, catalog=rt.catalog, base_url=site.base_url, now=site.clock.now()
    )

    # Then the email is one plain-text part whose header lines are exactly ours
    assert delivered
    [sent] = transport.sent
    message = email.message_from_bytes(sent.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()
    assert sorted(message.keys()) == sorted(
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Auto-Submitted",
            "X-Nurture-Alert",
            "MIME-Version",
            "Content-Type",
            "Content-Transfer-Encoding",
        ]
    )
    assert sent.recipients == (OWNER,)
    # And every chat payload names the lead, but no mention, link form or tag in it can act
    payloads = {post.path: post.json() for post in webhook_receiver.posts}
    assert sorted(payloads) == ["/hooks/hooktoken", "/team"]
    chat_texts = [
        payloads["/hooks/hooktoken"]["text"],
        payloads["/team"]["title"],
        payloads["/team"]["message"],
    ]
    for text in chat_texts:
        assert not CHAT_ACTIVE.search(text), text
        assert "<" not in text.replace(f"<{OWNER}>", ""), text  # the owner's address is from the reps file
    assert "alert(1)" in chat_texts[0]  # the name is still there to read
    assert "/pricing" in chat_texts[0]


@given(text=st.text(max_size=60) | st.sampled_from(HOSTILE))
def test_defused_chat_text_has_no_mention_link_or_tag_and_plain_text_is_untouched(text: str) -> None:
    defused = defuse_chat_markup(text)
    assert not CHAT_ACTIVE.search(defused)
    assert "<" not in defused
    if not re.search(r"[<@\]]", text):
        assert defused == text


def test_defusing_keeps_email_addresses_and_ordinary_punctuation() -> None:
    plain = "Mei Lin, Example Logistics (US) · mei.lin+crm@example.com · Score: 62 -> 85 [EMEA]"
    assert defuse_chat_markup(plain) == plain
    assert defuse_chat_markup("@here [x](https://e) <!channel>") == "@ here [x] (https://e) \u2039!channel>"


# --- web pages ----------------------------------------------------------------------------------------------


async def test_the_lead_page_and_its_json_show_hostile_fields_and_metadata_as_text(site: Site) -> None:
    lead_id = await _alerted_lead(site)

    page = await site.client.get(f"/leads/{lead_id}", headers={**site.auth, **BEARER_HTML})
    as_json = await site.client.get(f"/leads/{lead_id}", headers={**site.auth, "accept": "application/json"})

    assert page.status_code == 200
    assert_inert(page.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the name, readable
    assert "/pricing?q=" in unescape(page.text)  # the visited URL, as text
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["lead"]["first_name"] == SCRIPT


async def test_the_dashboard_shows_a_hostile_hot_lead_and_source_tag_as_text(site: Site) -> None:
    await _alerted_lead(site)

    page = await site.client.get("/dashboard", headers={**site.auth, **BEARER_HTML})

    assert page.status_code == 200
    assert_inert(page.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the hot lead's name
    assert "&lt;svg/onload=alert(1)&gt;" in page.text  # its source tag in the chart


def _structure(html: str) -> list[tuple[str, list[str]]]:
    return [(tag, sorted(attrs)) for tag, attrs in _Markup(html).tags]


async def test_no_lead_field_posted_through_the_api_changes_the_lead_pages_markup(
    site_factory: SiteFactory,
) -> None:
    site: Site = await site_factory(api_burst=100_000)
    headers = {**site.auth, **BEARER_HTML}

    def post_and_read(client: httpx.Client, *, utm_source: str, **fields: str) -> str:
        lead = {
            "email": "mei@example.com",
            "grade": "nurturable",
            **fields,
            "tags": {"utm_source": utm_source},
        }
        assert client.post("/api/leads", json=lead, headers=site.auth).status_code < 300
        page = client.get("/leads/1", headers=headers)
        assert page.status_code == 200
        return page.text

    def benign(client: httpx.Client) -> list[tuple[str, list[str]]]:
        return _structure(post_and_read(client, first_name="x", company="x", title="x", utm_source="x"))

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(first=hostile_text, company=hostile_text, title=hostile_text, source=hostile_text)
    def check(first: str, company: str, title: str, source: str) -> None:
        # "x" first: an empty value would drop its line from the page, which is not what is tested here
        fields = {"first_name": first, "company": company, "title": title, "utm_source": source}
        html = post_and_read(client, **{k: f"x{v}" for k, v in fields.items()})
        assert _structure(html) == expected
        assert_inert(html)

    # The server runs on this event loop: the synchronous client posts from a thread.
    async with site.client:
        with httpx.Client(base_url=site.base_url, timeout=10) as client:
            expected = await asyncio.to_thread(benign, client)
            await asyncio.to_thread(check)


@pytest.mark.parametrize("hostile", [*HOSTILE, f"/leads/1{IMG}", f"/x{SCRIPT}"])
async def test_the_login_page_escapes_a_hostile_next(site: Site, hostile: str) -> None:
    page = await site.client.get("/login", params={"next": hostile})

    assert page.status_code == 200
    assert_inert(page.text)
    [field] = [attrs for tag, attrs in _Markup(page.text).tags if attrs.get("name") == "next"]
    assert field["value"] in {"/", hostile}  # a local path is kept, as text; anything else falls back home


async def test_unsubscribe_and_error_pages_never_reflect_their_path(site: Site) -> None:
    await site.mail_first_step("mei@example.com", **hostile_fields())
    [eml] = site.runtime.settings.outbox_dir.glob("*.eml")
    [token] = re.findall(r"/u/([A-Za-z0-9_.-]+)", str(_parts(eml.read_bytes())[0]["List-Unsubscribe"]))
    one_click = {"content-type": "application/x-www-form-urlencoded"}
    pages = [
        await site.client.get(f"/u/{token}"),
        await site.client.post(f"/u/{token}", content="List-Unsubscribe=One-Click", headers=one_click),
        await site.client.get(f"/u/{SCRIPT}"),
        await site.client.get(f"/nowhere/{IMG}"),
        await site.client.get(f"/t/c/{SVG}"),
    ]

    assert [p.status_code for p in pages] == [200, 200, 404, 404, 404]
    for answer in pages:
        assert_inert(
            answer.text,
            allowed_tags=frozenset(
                {
                    "html",
                    "head",
                    "meta",
                    "title",
                    "style",
                    "body",
                    "main",
                    "h1",
                    "p",
                    "form",
                    "input",
                    "button",
                }
            ),
        )
        assert "alert(1)" not in answer.text
        assert "default-src 'none'" in answer.headers["content-security-policy"]
