"""`simulate`, `preview_step` and `send_test` on a small campaign of their own, through the real flows.

The simulation keeps its own throwaway SQLite database, so these tests need no `db` fixture; test sends go
to a real aiosmtpd server.
"""

from __future__ import annotations

import asyncio
import email.policy
from datetime import UTC, datetime
from email.parser import BytesParser
from pathlib import Path

import pytest

from nurture.catalog import Catalog, load_catalog
from nurture.core.context import SAMPLE_LEAD
from nurture.core.engagement_script import EngagementScript, parse_script
from nurture.core.feedback import delivery_id_of
from nurture.errors import ConfigErrors, HeaderInjectionError, NurtureError
from nurture.flows.deliver import Mailer
from nurture.flows.preview import Preview, PreviewLead, as_test_copy, preview_step, send_test
from nurture.flows.simulate import Simulation, sample_lead_row, simulate
from nurture.transports.outbox import OutboxTransport
from nurture.transports.smtp import SmtpConfig, SmtpTransport
from tests.fakes import RecordingTransport
from tests.smtp_sink import SmtpSink, smtp_sink_fixture  # noqa: F401

FRIDAY_EVENING_TAIPEI = datetime(2026, 3, 6, 10, 0, tzinfo=UTC)  # 18:00 in Taipei, after the window
CAMPAIGN = """\
id: mini
name: Mini
sender: {from: "Acme <growth@acme.example>", postal_address: "Acme, 1 Main St, Springfield"}
send_window: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00", timezone: lead}
steps:
  - {id: hello, day: 0, subject: "Hello {{ lead.first_name or 'there' }}", template: mini/mail.html.j2}
  - id: story
    day: 5
    subject: "A story"
    template: mini/mail.html.j2
    variants: [{id: plain, subject: "A story"}, {id: bold, subject: "A BOLD story"}]
  - {id: bye, day: 9, subject: "Bye", template: mini/mail.html.j2, when: {opened: hello}}
"""
TEMPLATE = """<p>Hi {{ lead.first_name }}, read <a href="https://acme.example/guide">the guide</a>.</p>
<p>{{ postal_address }} <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""


@pytest.fixture
def project(tmp_path: Path) -> Catalog:
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "mini.yaml").write_text(CAMPAIGN, encoding="utf-8")
    (tmp_path / "templates" / "mini").mkdir(parents=True)
    (tmp_path / "templates" / "mini" / "mail.html.j2").write_text(TEMPLATE, encoding="utf-8")
    return load_catalog(
        campaigns_dir=tmp_path / "campaigns", templates_dir=tmp_path / "templates", reps_file=None
    )


def mailer_for(catalog: Catalog, transport: object = None) -> Mailer:
    return Mailer(
        catalog=catalog,
        renderer=catalog.renderer(),
        transport=transport or RecordingTransport(),  # type: ignore[arg-type]
        secret_key=b"test-secret-key-0123456789",
        base_url="https://track.example.com",
    )


def preview_hello(mailer: Mailer, *, lead_id: int = 0, sign_links: bool = True) -> Preview:
    """The "mini" campaign's "hello" step as SAMPLE_LEAD would get it on a Friday evening in Taipei."""
    campaign = mailer.catalog.campaigns["mini"]
    lead = PreviewLead(lead_id, SAMPLE_LEAD)
    return preview_step(
        campaign, "hello", lead, mailer=mailer, now=FRIDAY_EVENING_TAIPEI, sign_links=sign_links
    )


async def run(
    catalog: Catalog, script: str = "", *, rows: list[dict[str, str | None]] | None = None
) -> Simulation:
    campaign = catalog.campaigns["mini"]
    return await simulate(
        campaign,
        catalog,
        leads=rows or [sample_lead_row(campaign)],
        start=FRIDAY_EVENING_TAIPEI,
        script=parse_script(script, source="script.txt"),
        mailer=mailer_for(catalog),
    )


async def test_a_quiet_lead_gets_its_emails_in_its_own_send_window_and_the_conditional_step_is_skipped(
    project: Catalog,
) -> None:
    [lead] = (await run(project)).leads
    assert lead.email == SAMPLE_LEAD.email
    assert lead.zone == "Asia/Taipei"
    sends = [(i.step, i.day, i.local.strftime("%a %H:%M"), i.detail) for i in lead.sends]
    assert sends == [
        ("hello", 3, "Mon 09:00", "send window: waited from Fri 18:00"),
        ("story", 10, "Mon 09:00", "send window: moved from Sat 14 Mar"),
    ]
    assert lead.sends[1].variant in ("plain", "bold")
    [skipped] = [i for i in lead.items if i.kind == "skipped"]
    assert skipped.step == "bye"
    assert "hello" in skipped.detail
    assert (lead.state, lead.stage, lead.alerts) == ("completed", "lead", ())


async def test_engagement_is_scored_alerts_the_rep_and_opens_the_conditional_step(project: Catalog) -> None:
    script = "opens hello\nvisits /pricing on day 4\nbooks meeting on day 11\n"
    [lead] = (await run(project, script)).leads
    assert [i.step for i in lead.sends] == ["hello", "story"]
    kinds = [(i.kind, i.detail) for i in lead.items if i.kind in ("event", "stage", "exited")]
    assert kinds[:3] == [
        ("event", "email_open"),
        ("event", "page_visit /pricing"),
        ("event", "meeting_booked"),
    ]
    assert kinds[3][0] == "stage"
    assert kinds[3][1].startswith("lead -> mql")
    assert kinds[4] == ("exited", "qualified")
    assert [a.trigger for a in lead.alerts] == ["moment:pricing_visit", "mql"]
    assert (lead.stage, lead.state, lead.exit_reason) == ("mql", "exited", "qualified")
    assert lead.alerts[0].title.startswith("Buying signal: Mei Lin")


async def test_an_email_action_on_an_email_never_sent_is_reported_as_not_happening(project: Catalog) -> None:
    [lead] = (await run(project, "clicks bye\n")).leads
    [missed] = [i for i in lead.items if i.kind == "not_applicable"]
    assert missed.step == "bye"
    assert "line 1" in missed.detail


async def test_a_script_naming_an_unknown_step_or_lead_fails_with_its_lines(project: Catalog) -> None:
    with pytest.raises(ConfigErrors) as caught:
        await run(project, "opens welcome\n\nx@example.com: visits /a on day 1\n")
    assert [str(e).split(": ")[0] for e in caught.value.errors] == ["script.txt:1", "script.txt:3"]


async def test_a_bad_lead_row_fails_naming_the_row(project: Catalog) -> None:
    with pytest.raises(NurtureError, match="row 2"):
        await run(project, rows=[{"email": "not-an-address"}])


async def test_two_simulations_at_once_do_not_see_each_other_and_agree(project: Catalog) -> None:
    rows: list[dict[str, str | None]] = [
        {"email": f"lead{n}@example.com", "timezone": "America/New_York", "grade": "nurturable"}
        for n in range(3)
    ]
    first, second = await asyncio.gather(
        run(project, "opens hello", rows=rows), run(project, "opens hello", rows=rows)
    )
    assert first == second
    assert [len(lead.sends) for lead in first.leads] == [3, 3, 3]


def test_a_preview_is_the_email_as_sent_with_tracked_links_pixel_and_unsubscribe_headers(
    project: Catalog,
) -> None:
    shown = preview_hello(mailer_for(project), lead_id=7)
    assert shown.subject == "Hello Mei"
    assert "https://track.example.com/t/c/" in shown.html
    assert "https://acme.example/guide" not in shown.html
    assert "https://track.example.com/t/o/" in shown.html
    headers = dict(shown.headers)
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["X-Nurture-Step"] == "hello"
    assert "X-Nurture-Test" not in headers
    assert "https://acme.example/guide" in shown.text


def test_a_preview_of_a_variant_renders_it_and_an_unknown_step_or_variant_is_refused(
    project: Catalog,
) -> None:
    campaign, mailer = project.campaigns["mini"], mailer_for(project)
    lead = PreviewLead(7, SAMPLE_LEAD)
    bold = preview_step(campaign, "story", lead, mailer=mailer, now=FRIDAY_EVENING_TAIPEI, variant="bold")
    assert (bold.variant, bold.subject) == ("bold", "A BOLD story")
    with pytest.raises(NurtureError, match="no variant 'huge'"):
        preview_step(campaign, "story", lead, mailer=mailer, now=FRIDAY_EVENING_TAIPEI, variant="huge")
    with pytest.raises(NurtureError, match="no step 'nope'"):
        preview_step(campaign, "nope", lead, mailer=mailer, now=FRIDAY_EVENING_TAIPEI)


async def test_a_test_send_reaches_only_the_test_inbox_marked_as_a_test(
    project: Catalog, smtp_sink: SmtpSink
) -> None:
    transport = SmtpTransport(SmtpConfig.from_url(smtp_sink.url, timeout_s=5, pool_size=1))
    mailer = mailer_for(project, transport)
    try:
        shown = preview_hello(mailer, lead_id=7, sign_links=False)
        await send_test(shown, "qa@acme.example", mailer=mailer)
    finally:
        await transport.aclose()
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("qa@acme.example",)
    assert received["To"] == "qa@acme.example"
    assert received["Subject"] == "[TEST] Hello Mei"
    assert received["X-Nurture-Test"] == "1"
    assert SAMPLE_LEAD.email not in received.data.decode()


async def test_two_test_sends_of_one_step_are_two_outbox_files_with_distinct_message_ids(
    project: Catalog, tmp_path: Path
) -> None:
    # Given the outbox transport of the embedded default
    outbox = tmp_path / "outbox"
    mailer = mailer_for(project, OutboxTransport(outbox))
    shown = preview_hello(mailer, sign_links=False)
    # When the same step is sent as a test twice
    receipts = [await send_test(shown, "qa@acme.example", mailer=mailer) for _ in range(2)]
    # Then there are two files, each under its own test Message-ID, neither a delivery's
    files = sorted(outbox.glob("*.eml"))
    ids = [BytesParser(policy=email.policy.default).parsebytes(f.read_bytes())["Message-ID"] for f in files]
    assert len(files) == 2
    assert sorted(ids) == sorted(r.message_id for r in receipts)
    assert ids[0] != ids[1]
    assert all(i.startswith("<test.") and i.endswith("@acme.example>") for i in ids)
    assert shown.message.message_id not in ids
    assert all(delivery_id_of(i, key=b"test-secret-key-0123456789") is None for i in ids)


@pytest.mark.parametrize(
    "address", ["qa@acme.example\r\nBcc: all@acme.example", "a@b.example, c@d.example", "qa"]
)
def test_a_test_copy_refuses_an_address_that_is_not_exactly_one_address(
    project: Catalog, address: str
) -> None:
    shown = preview_hello(mailer_for(project))
    with pytest.raises(HeaderInjectionError):
        as_test_copy(shown.message, address, nonce="0f1e2d3c")


def test_no_script_is_an_empty_script() -> None:
    assert EngagementScript(source="<none>").for_lead("a@b.example") == ()
