"""TemplateRenderer: sandboxed, escaped, cached rendering, and template checks reported as file:line."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.core.campaign import Campaign, parse_campaign
from nurture.core.context import SAMPLE_LEAD, SAMPLE_REP, LeadProfile, template_context
from nurture.errors import CampaignError, TemplateError
from nurture.render import TemplateRenderer, html_to_text, one_line

UNSUBSCRIBE_URL = "https://track.example/u/tok3n?a=1&b=2"

CAMPAIGN = """\
id: demo
name: Demo
sender: {{from: "Acme <growth@acme.example>", postal_address: "Acme Inc., 1 Main St"}}
steps:
  - id: welcome
    day: 0
    subject: "{subject}"
    template: demo/welcome.html.j2
{more_steps}"""

WELCOME = """\
<html><head><style>
p {{ color: red }}
@media (max-width: 600px) {{ p {{ color: blue }} }}
</style></head>
<body>
{body}
<a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a>
<p>{{{{ postal_address }}}}</p>
</body></html>
"""

Build = Callable[..., tuple[TemplateRenderer, Campaign]]


@pytest.fixture
def build(tmp_path: Path) -> Build:
    """Write a campaign and its templates under tmp_path; return a renderer built on them."""

    def _build(
        *,
        body: str = "<p>Hi {{ lead.first_name }}</p>",
        subject: str = "{{ lead.first_name or 'Hello' }}, a guide for {{ lead.company }}",
        more_steps: str = "",
        files: dict[str, str] | None = None,
    ) -> tuple[TemplateRenderer, Campaign]:
        templates = tmp_path / "templates"
        for name, text in {"demo/welcome.html.j2": WELCOME.format(body=body), **(files or {})}.items():
            (templates / name).parent.mkdir(parents=True, exist_ok=True)
            (templates / name).write_text(text, encoding="utf-8")
        text = CAMPAIGN.format(subject=subject, more_steps=more_steps)
        campaign = parse_campaign(text, source=str(tmp_path / "campaigns" / "demo.yaml"))
        return TemplateRenderer(templates, {campaign.id: campaign}), campaign

    return _build


def context_for(
    campaign: Campaign, lead: LeadProfile = SAMPLE_LEAD, step_index: int = 0
) -> dict[str, object]:
    return template_context(
        lead,
        owner=SAMPLE_REP,
        campaign=campaign,
        step=campaign.steps[step_index],
        unsubscribe_url=UNSUBSCRIBE_URL,
        postal_address="Acme Inc., 1 Main St",
    )


def only_error(errors: list[TemplateError]) -> TemplateError:
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def test_render_step_escapes_lead_data_in_html_but_not_in_the_subject(build: Build) -> None:
    renderer, campaign = build(subject="Hi {{ lead.first_name }}")
    lead = LeadProfile(email="x@example.com", first_name="<script>alert(1)</script>")

    email = renderer.render_step("demo", "welcome", context_for(campaign, lead))

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "<script>" not in email.html
    assert email.subject == "Hi <script>alert(1)</script>"


@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r", "\t", "\u2028", "\u2029", "\x85", "\x00", "\x0b"])
def test_render_step_makes_a_one_line_subject_from_a_first_name_with_line_breaks(
    build: Build, breaker: str
) -> None:
    renderer, campaign = build(subject="  {{ lead.first_name }}, hello  ")
    lead = LeadProfile(email="x@example.com", first_name=f"Mei{breaker}Bcc: evil@example.com{breaker}")

    subject = renderer.render_step("demo", "welcome", context_for(campaign, lead)).subject

    assert subject == "Mei Bcc: evil@example.com , hello"


def test_one_line_collapses_every_whitespace_run_to_one_space() -> None:
    assert one_line("\t a \r\n\r\n b\u2028\u2029c \x00 ") == "a b c"


def test_render_step_inlines_css_from_a_style_block_and_keeps_media_queries(build: Build) -> None:
    renderer, campaign = build()

    html = renderer.render_step("demo", "welcome", context_for(campaign)).html

    assert '<p style="color: red;">Hi Mei</p>' in html
    assert "@media (max-width: 600px)" in html


def test_render_step_derives_the_text_part_from_html_with_the_unsubscribe_url(build: Build) -> None:
    renderer, campaign = build()

    text = renderer.render_step("demo", "welcome", context_for(campaign)).text

    assert "Hi Mei" in text
    assert UNSUBSCRIBE_URL in text
    assert "<" not in text
    assert "color" not in text


def test_render_step_renders_the_text_template_without_escaping(build: Build) -> None:
    step = (
        "  - {id: text, day: 1, subject: S, template: demo/welcome.html.j2, text_template: demo/t.txt.j2}\n"
    )
    renderer, campaign = build(
        more_steps=step, files={"demo/t.txt.j2": "Hi {{ lead.first_name }} & co\n{{ unsubscribe_url }}\n"}
    )
    lead = LeadProfile(email="x@example.com", first_name="<Mei>")

    email = renderer.render_step("demo", "text", context_for(campaign, lead, step_index=1))

    assert email.text == f"Hi <Mei> & co\n{UNSUBSCRIBE_URL}"


def test_render_step_prints_an_unknown_lead_field_as_blank(build: Build) -> None:
    renderer, campaign = build(body="<p>[{{ lead.phone }}]</p>", subject="[{{ lead.company }}]")
    lead = LeadProfile(email="x@example.com")

    email = renderer.render_step("demo", "welcome", context_for(campaign, lead))

    assert "[]" in email.html
    assert email.subject == "[]"


def test_render_step_fails_on_a_typo_in_an_attribute_at_its_template_line(
    build: Build, tmp_path: Path
) -> None:
    renderer, campaign = build(body="<p>Hi</p>\n<p>{{ lead.frist_name }}</p>")

    with pytest.raises(TemplateError) as info:
        renderer.render_step("demo", "welcome", context_for(campaign))

    assert info.value.source == str(tmp_path / "templates" / "demo" / "welcome.html.j2")
    assert info.value.line == 7
    assert "frist_name" in info.value.reason


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "lead.__class__",
        "cycler.__init__.__globals__",
        "lead.tags.clear()",
    ],
)
def test_render_step_blocks_python_internals_and_mutation_in_the_sandbox(
    build: Build, expression: str
) -> None:
    renderer, campaign = build(body=f"<p>{{{{ {expression} }}}}</p>")

    with pytest.raises(TemplateError) as info:
        renderer.render_step("demo", "welcome", context_for(campaign))

    assert "unsafe" in info.value.reason
    assert info.value.line == 6


def test_render_step_reports_a_broken_subject_at_the_campaign_file_line(build: Build, tmp_path: Path) -> None:
    renderer, campaign = build(subject="{{ 1 // 0 }}")

    with pytest.raises(TemplateError) as info:
        renderer.render_step("demo", "welcome", context_for(campaign))

    assert (info.value.source, info.value.line) == (str(tmp_path / "campaigns" / "demo.yaml"), 7)
    assert info.value.reason == "step welcome subject: ZeroDivisionError: integer division or modulo by zero"


def test_render_step_raises_a_campaign_error_for_an_unknown_step(build: Build) -> None:
    renderer, campaign = build()

    with pytest.raises(CampaignError, match="no step 'gone' in campaign 'demo'"):
        renderer.render_step("demo", "gone", context_for(campaign))
    with pytest.raises(CampaignError, match="no step 'welcome' in campaign 'other'"):
        renderer.render_step("other", "welcome", context_for(campaign))


def test_render_step_compiles_each_template_once(build: Build, tmp_path: Path) -> None:
    # Given a step rendered once
    renderer, campaign = build(body="<p>first</p>")
    renderer.render_step("demo", "welcome", context_for(campaign))
    # When its file changes on disk
    (tmp_path / "templates" / "demo" / "welcome.html.j2").write_text("<p>second</p>", encoding="utf-8")
    # Then the renderer keeps the compiled template it has
    assert "first" in renderer.render_step("demo", "welcome", context_for(campaign)).html


def test_check_templates_accepts_valid_templates(build: Build) -> None:
    renderer, campaign = build()

    assert renderer.check_templates(campaign) == []


def test_check_templates_reports_a_missing_template_at_the_campaign_file_line(
    build: Build, tmp_path: Path
) -> None:
    step = "  - id: second\n    day: 2\n    subject: S\n    template: demo/nope.html.j2\n"
    renderer, campaign = build(more_steps=step)

    error = only_error(renderer.check_templates(campaign))

    assert (error.source, error.line) == (str(tmp_path / "campaigns" / "demo.yaml"), 12)
    assert error.reason.startswith("step second: template 'demo/nope.html.j2' not found")


def test_check_templates_reports_a_missing_text_template(build: Build) -> None:
    step = (
        "  - {id: second, day: 2, subject: S, template: demo/welcome.html.j2, text_template: demo/no.txt}\n"
    )
    renderer, campaign = build(more_steps=step)

    error = only_error(renderer.check_templates(campaign))

    assert error.line == 9
    assert "template 'demo/no.txt' not found" in error.reason


def test_check_templates_reports_a_syntax_error_at_its_template_line(build: Build, tmp_path: Path) -> None:
    renderer, campaign = build(body="<p>{% if lead.first_name %}Hi</p>\n<p>{% endfor %}</p>")

    error = only_error(renderer.check_templates(campaign))

    assert (error.source, error.line) == (str(tmp_path / "templates" / "demo" / "welcome.html.j2"), 7)
    assert error.reason.startswith("syntax error: ")


def test_check_templates_reports_an_undefined_variable_at_its_line(build: Build, tmp_path: Path) -> None:
    renderer, campaign = build(body="<p>{{ range(2) | list }}</p>\n<p>{{ leed.first_name }}</p>")

    error = only_error(renderer.check_templates(campaign))

    assert (error.source, error.line) == (str(tmp_path / "templates" / "demo" / "welcome.html.j2"), 7)
    assert error.reason == "undefined variable 'leed' (did you mean 'lead'?)"


def test_check_templates_reports_a_typo_in_an_attribute_at_its_line(build: Build) -> None:
    renderer, campaign = build(body="<p>Hi</p>\n\n<p>{{ owner.nmae }}</p>")

    error = only_error(renderer.check_templates(campaign))

    assert error.line == 8
    assert "nmae" in error.reason


def test_check_templates_checks_subjects_against_the_campaign_file_line(build: Build, tmp_path: Path) -> None:
    renderer, campaign = build(subject="Hi {{ first_name }}")

    error = only_error(renderer.check_templates(campaign))

    assert (error.source, error.line) == (str(tmp_path / "campaigns" / "demo.yaml"), 7)
    assert error.reason.startswith("step welcome subject: undefined variable 'first_name'")


def test_check_templates_reports_a_subject_syntax_error(build: Build) -> None:
    renderer, campaign = build(subject="Hi {{ lead.first_name ")

    error = only_error(renderer.check_templates(campaign))

    assert error.line == 7
    assert error.reason.startswith("step welcome subject: syntax error")


def test_check_templates_reports_an_error_inside_an_included_template_at_that_file(
    build: Build, tmp_path: Path
) -> None:
    renderer, campaign = build(
        body='{% include "demo/footer.html.j2" %}',
        files={"demo/footer.html.j2": "<p>footer</p>\n<p>{{ lead.tags.utm_campaign }}</p>\n"},
    )

    error = only_error(renderer.check_templates(campaign))

    assert (error.source, error.line) == (str(tmp_path / "templates" / "demo" / "footer.html.j2"), 2)


def test_check_templates_reports_every_problem_of_every_step(build: Build) -> None:
    steps = (
        "  - {id: two, day: 1, subject: '{{ nope }}', template: demo/missing.html.j2}\n"
        "  - {id: three, day: 2, subject: ok, template: demo/broken.html.j2}\n"
    )
    renderer, campaign = build(more_steps=steps, files={"demo/broken.html.j2": "{% if %}"})

    errors = renderer.check_templates(campaign)

    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [
        (9, "step two subject"),
        (9, "step two"),
        (1, "syntax error"),
    ]


# --- the text part derived from HTML ------------------------------------------------------------------------

WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=14)
URLS = st.builds(
    "https://{}.example/{}".format,
    st.text(alphabet="abcdefghij", min_size=1, max_size=12),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_/=?&", max_size=140),
)
# A paragraph is a list of items: a word, or a link (its words and its URL).
ITEMS = st.one_of(WORDS, st.tuples(st.lists(WORDS, min_size=1, max_size=4), URLS))


def _paragraph_html(items: list[str | tuple[list[str], str]]) -> str:
    return " ".join(
        escape(item) if isinstance(item, str) else f'<a href="{escape(item[1])}">{" ".join(item[0])}</a>'
        for item in items
    )


def _is_single_token(line: str) -> bool:
    return len(line.split()) == 1


@settings(max_examples=150, deadline=None)
@given(
    paragraphs=st.lists(st.lists(ITEMS, min_size=1, max_size=40), min_size=1, max_size=6),
    in_layout_table=st.booleans(),
)
def test_a_derived_text_part_is_wrapped_at_78_columns_with_whole_urls_and_words_in_order(
    paragraphs: list[list[str | tuple[list[str], str]]], in_layout_table: bool
) -> None:
    body = "".join(f"<p>{_paragraph_html(items)}</p>" for items in paragraphs)
    if in_layout_table:  # as email layouts are: a wide table whose cells the converter pads to one width
        body = (
            '<table width="600"><tr><td>' + "x" * 250 + "</td></tr>"
            f"<tr><td>{body}</td></tr><tr><td>footer</td></tr></table>"
        )
    text = html_to_text(f"<html><body>{body}</body></html>")
    lines = text.split("\n")
    assert all(line == line.rstrip() for line in lines)
    assert all(len(line) <= 78 or _is_single_token(line) for line in lines)
    expected = [
        token
        for items in paragraphs
        for item in items
        for token in ([item] if isinstance(item, str) else [*item[0], item[1]])
    ]
    position = 0
    for token in expected:  # each word, and each URL whole, after the one before it
        found = text.find(token, position)
        assert found >= 0, (token, text)
        position = found + len(token)


def test_render_step_wraps_a_derived_text_part_of_a_layout_table_without_trailing_spaces(
    build: Build,
) -> None:
    long_url = (
        "https://acme.example/webinars/exceptions-not-emails/recording?utm_source=nurture&utm_medium=email"
    )
    body = (
        '<table width="600"><tr><td>Acme Flow</td><td>Workflow automation for operations teams</td></tr>'
        f"<tr><td colspan=2><p>{'Whether you joined us live or could not make it, here it is. ' * 4}</p>"
        f'<p><a href="{long_url}">Watch the recording</a></p></td></tr></table>'
    )
    renderer, campaign = build(body=body)

    text = renderer.render_step("demo", "welcome", context_for(campaign)).text

    lines = text.split("\n")
    assert [line for line in lines if line != line.rstrip()] == []
    assert [line for line in lines if len(line) > 78 and not _is_single_token(line)] == []
    assert long_url in text
    assert UNSUBSCRIBE_URL in text
    assert "\n\n\n" not in text
    assert len(text) < 1000  # no padding: the words themselves are about 600 characters


@pytest.mark.parametrize(
    ("company", "sentence"),
    [
        ("Acme Ltda.", "on behalf of Acme Ltda. Three emails."),
        ("Acme Inc", "on behalf of Acme Inc. Three emails."),
        ("Yahoo!", "on behalf of Yahoo! Three emails."),
        ("", "You registered. Three emails."),
    ],
)
def test_the_full_stop_filter_never_prints_two_periods_after_a_company_name(
    build: Build, company: str, sentence: str
) -> None:
    ending = (
        "You registered{% if lead.company %} on behalf of {{ lead.company | full_stop }}"
        "{% else %}.{% endif %} Three emails."
    )
    step = (
        "  - {id: text, day: 1, subject: S, template: demo/welcome.html.j2, text_template: demo/t.txt.j2}\n"
    )
    renderer, campaign = build(
        body=f"<p>{ending}</p>",
        more_steps=step,
        files={"demo/t.txt.j2": f"{ending}\n{{{{ unsubscribe_url }}}} {{{{ postal_address }}}}\n"},
    )
    lead = LeadProfile(email="x@example.com", company=company or None)

    html_step = renderer.render_step("demo", "welcome", context_for(campaign, lead))
    text_step = renderer.render_step("demo", "text", context_for(campaign, lead, step_index=1))

    for part in (html_step.html, html_step.text, text_step.text):
        assert sentence in part
        assert ".." not in part
