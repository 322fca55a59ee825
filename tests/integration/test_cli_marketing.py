"""`nurture preview`, `simulate`, `test-send` and `test` run as real subprocesses, as a marketer runs them.

`nurture test` runs the campaign tests marketing keeps in campaigns/tests/, so CI runs them too.
"""

from __future__ import annotations

import email.policy
import json
import os
import signal
import subprocess
import sys
import time
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest

from tests.harness.ports import free_port
from tests.project import PROJECT
from tests.smtp_sink import SmtpSink, smtp_sink_fixture  # noqa: F401

pytestmark = pytest.mark.integration

REPO = PROJECT  # the tests' own project files (tests/project.py)
TIMEOUT_S = 120
CAMPAIGN = """\
id: mini
name: Mini
sender: {from: "Acme <growth@acme.example>", postal_address: "Acme, 1 Main St, Springfield"}
send_window: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00", timezone: lead}
steps:
  - {id: hello, day: 0, subject: "Hello {{ lead.first_name or 'there' }}", template: mini/mail.html.j2}
  - {id: story, day: 5, subject: "A story", template: mini/mail.html.j2}
"""
TEMPLATE = """<p>Hi {{ lead.first_name }}, read <a href="https://acme.example/guide">the guide</a>.</p>
<p>{{ postal_address }} <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""
CASES = """\
campaign: mini
start: 2026-03-02T09:00:00+08:00
cases:
  - name: wrong on purpose
    lead: {email: a@example.com, timezone: Asia/Taipei, grade: nurturable}
    engagement: |
      opens hello
    expect:
      sends: {hello: 0, story: 5}
      stage: mql
"""


class Cli:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env

    def __call__(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nurture", *map(str, args)],
            cwd=self.cwd,
            env=self.env | env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=TIMEOUT_S,
            check=False,
        )


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_") and k != "FORCE_COLOR"}
    return env | {
        "NURTURE_DATA_DIR": str(tmp_path / "var"),
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "80",
        "NO_COLOR": "1",
    }


@pytest.fixture
def mini(tmp_path: Path) -> Cli:
    """A project with one small campaign of its own."""
    (tmp_path / "campaigns" / "tests").mkdir(parents=True)
    (tmp_path / "campaigns" / "mini.yaml").write_text(CAMPAIGN, encoding="utf-8")
    (tmp_path / "templates" / "mini").mkdir(parents=True)
    (tmp_path / "templates" / "mini" / "mail.html.j2").write_text(TEMPLATE, encoding="utf-8")
    return Cli(tmp_path, base_env(tmp_path))


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_the_campaign_tests_of_the_project_pass(tmp_path: Path) -> None:
    env = base_env(tmp_path) | {
        "NURTURE_CAMPAIGNS_DIR": str(REPO / "campaigns"),
        "NURTURE_TEMPLATES_DIR": str(REPO / "templates"),
        "NURTURE_REPS_FILE": str(REPO / "reps.yaml"),
        "NURTURE_SCORING_FILE": str(REPO / "scoring.yaml"),
    }
    result = ok(Cli(tmp_path, env)("test", "--format", "json"))
    report = json.loads(result.stdout)
    assert report["failed"] == 0
    assert {Path(case["file"]).name for case in report["cases"]} >= {
        "saas-nurture.yaml",
        "webinar-followup.yaml",
    }


def test_a_failing_campaign_test_exits_1_with_a_readable_diff(mini: Cli) -> None:
    (mini.cwd / "campaigns" / "tests" / "mini.yaml").write_text(CASES, encoding="utf-8")
    result = mini("test")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL campaigns/tests/mini.yaml:4 wrong on purpose" in result.stdout
    assert "sends: expected story on day 5, got day 7 (Mon 2026-03-09)" in result.stdout
    assert "stage: expected mql, got lead" in result.stdout
    assert "0 passed, 1 failed" in result.stdout


def test_a_broken_campaign_test_file_is_reported_as_file_line_message(mini: Cli) -> None:
    broken = CASES.replace("opens hello", "opens")
    (mini.cwd / "campaigns" / "tests" / "mini.yaml").write_text(broken, encoding="utf-8")
    result = mini("test")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith("campaigns/tests/mini.yaml:7: write `opens STEP`")


def test_simulate_prints_the_sample_lead_timeline_with_its_send_window_shifts(mini: Cli) -> None:
    table = ok(mini("simulate", "mini", "--start", "2026-03-06T10:00:00Z")).stdout
    assert "No --leads given: simulating the sample lead mei.lin@example.com." in table
    assert "send window: moved from Sat 14 Mar" in " ".join(table.split())
    assert not (mini.cwd / "var" / "outbox").exists()


def test_simulate_json_gives_each_csv_lead_its_sends_events_and_alerts(mini: Cli) -> None:
    csv_text = "email,timezone,grade\nny@example.com,America/New_York,nurturable\n"
    (mini.cwd / "leads.csv").write_text(csv_text, encoding="utf-8")
    (mini.cwd / "script.txt").write_text("opens hello\nvisits /pricing on day 3\n", encoding="utf-8")
    args = ("--start", "2026-03-06T10:00:00Z", "--engagement", "script.txt", "--leads", "leads.csv")
    data = json.loads(ok(mini("simulate", "mini", *args, "--format", "json")).stdout)
    assert data["sample_lead"] is None
    [lead] = data["leads"]
    assert lead["timezone"] == "America/New_York"
    sent = [(t["step"], t["day"]) for t in lead["timeline"] if t["kind"] == "sent"]
    assert sent == [("hello", 0), ("story", 5)]  # Friday 09:00 New York, then Wednesday
    assert [t["detail"] for t in lead["timeline"] if t["kind"] == "event"] == [
        "email_open",
        "page_visit /pricing",
    ]
    assert [a["trigger"] for a in lead["alerts"]] == ["moment:pricing_visit"]


def test_simulate_reports_script_errors_with_file_and_line(mini: Cli) -> None:
    (mini.cwd / "bad.txt").write_text("opens hello\nopens nothing\nvisits /x\n", encoding="utf-8")
    result = mini("simulate", "mini", "--engagement", "bad.txt")
    assert result.returncode == 1
    assert (
        result.stderr.splitlines()[0]
        == "bad.txt:3: `visits` needs a day: `... on day N` (local days after enrolment)"
    )


def test_preview_renders_the_step_as_sent_and_writes_its_html(mini: Cli) -> None:
    result = ok(mini("preview", "mini", "hello", "--sample", "--html", "hello.html", "--format", "json"))
    data = json.loads(result.stdout)
    assert data["subject"] == "Hello Mei"
    assert data["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert data["headers"]["X-Nurture-Step"] == "hello"
    html = (mini.cwd / "hello.html").read_text(encoding="utf-8")
    assert html == data["html"]
    assert "/t/c/" in html
    assert "/t/o/" in html


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("preview", "nope", "hello"), "error: no campaign 'nope' (campaigns: mini)"),
        (("preview", "mini", "nope"), "error: campaign 'mini' has no step 'nope' (steps: hello, story)"),
        (
            ("preview", "mini", "hello", "--lead", "who@example.com"),
            "error: no lead with email who@example.com",
        ),
        (
            ("preview", "mini", "hello", "--lead", "a@example.com", "--sample"),
            "error: give --lead EMAIL or --sample, not both",
        ),
        (
            ("test-send", "mini", "hello", "--to", "not an address"),
            "error: 'not an address' is not an email address",
        ),
    ],
)
def test_a_bad_campaign_step_lead_or_address_fails_with_one_line(
    mini: Cli, args: tuple[str, ...], reason: str
) -> None:
    assert one_line_error(mini(*args)).startswith(reason)


def test_test_send_reaches_the_test_inbox_marked_and_the_lead_gets_no_touchpoint(
    mini: Cli, smtp_sink: SmtpSink
) -> None:
    (mini.cwd / "leads.csv").write_text("email,first_name\nana@example.com,Ana\n", encoding="utf-8")
    ok(mini("leads", "import", "leads.csv"))
    result = ok(
        mini(
            "test-send",
            "mini",
            "hello",
            "--lead",
            "ana@example.com",
            "--to",
            "qa@acme.example",
            NURTURE_SMTP_URL=smtp_sink.url,
        )
    )
    assert "sent a test of mini/hello (ana@example.com) to qa@acme.example: 250" in result.stdout
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("qa@acme.example",)
    assert received["Subject"] == "[TEST] Hello Ana"
    assert received["X-Nurture-Test"] == "1"
    shown = json.loads(ok(mini("lead", "show", "ana@example.com", "--format", "json")).stdout)
    assert [t["kind"] for t in shown["timeline"]] == []


def test_without_a_postal_address_preview_notes_it_and_test_send_refuses_in_one_line_as_sending_does(
    mini: Cli, smtp_sink: SmtpSink
) -> None:
    campaign = mini.cwd / "campaigns" / "mini.yaml"
    campaign.write_text(CAMPAIGN.replace(', postal_address: "Acme, 1 Main St, Springfield"', ""), "utf-8")
    # preview still shows the step (to place the address), and says on stderr that it cannot be sent
    shown = ok(mini("preview", "mini", "hello", "--format", "json"))
    assert json.loads(shown.stdout)["step"] == "hello"
    assert "note: " in shown.stderr
    assert "sender has no postal_address" in shown.stderr
    assert "test-send and real sends refuse it" in shown.stderr
    reason = one_line_error(
        mini("test-send", "mini", "hello", "--to", "qa@acme.example", NURTURE_SMTP_URL=smtp_sink.url)
    )
    assert "mini.yaml:3: sender has no postal_address and NURTURE_POSTAL_ADDRESS is not set" in reason
    assert smtp_sink.messages == []
    # NURTURE_POSTAL_ADDRESS is the fallback every send uses: with it, the test goes out
    ok(
        mini(
            "test-send",
            "mini",
            "hello",
            "--to",
            "qa@acme.example",
            NURTURE_SMTP_URL=smtp_sink.url,
            NURTURE_POSTAL_ADDRESS="Acme, 2 Side St, Springfield",
        )
    )
    [received] = smtp_sink.messages
    body = received.message.get_body(("plain",))
    assert body is not None
    assert "2 Side St" in body.get_content()


def test_run_on_another_port_without_a_base_url_sends_links_to_that_port(mini: Cli) -> None:
    # Given a lead in Taipei, a clock at Monday 10:00 there, and no NURTURE_BASE_URL
    (mini.cwd / "leads.csv").write_text(
        "email,timezone,grade\nmei@example.com,Asia/Taipei,nurturable\n", encoding="utf-8"
    )
    ok(mini("leads", "import", "leads.csv"))
    (mini.cwd / "now.txt").write_text("2026-03-02T02:00:00Z", encoding="utf-8")
    port = free_port()
    outbox = mini.cwd / "var" / "outbox"
    # When `nurture run --port N` runs until the day-0 email is in the outbox
    env = mini.env | {"NURTURE_CLOCK_FILE": str(mini.cwd / "now.txt"), "NURTURE_TICK_INTERVAL_S": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "nurture", "run", "--port", str(port)],
        cwd=mini.cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as service:
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not list(outbox.glob("*.eml")) and service.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        finally:
            service.send_signal(signal.SIGINT)
            _, stderr = service.communicate(timeout=TIMEOUT_S)
    # Then the web answers on that port, and the email's links point to it
    assert health.json() == {"status": "ok"}, stderr
    [sent] = outbox.glob("*.eml")
    message = BytesParser(policy=email.policy.default).parsebytes(sent.read_bytes())
    assert str(message["List-Unsubscribe"]).startswith(f"<http://127.0.0.1:{port}/u/")
    html = message.get_body(preferencelist=("html",))
    assert html is not None
    assert f'href="http://127.0.0.1:{port}/t/c/' in html.get_content()
