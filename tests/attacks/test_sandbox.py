"""Templates that try to escape the sandbox or exhaust the machine: refused at validation, stopped at render.

Each hostile template is checked the way `nurture validate` checks it, and rendered the way a send does; both
must end in a `TemplateError` that names the problem, never in a Python object, a huge string or a hang.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.core.campaign import parse_campaign
from nurture.core.context import SAMPLE_LEAD, SAMPLE_REP, template_context
from nurture.errors import TemplateError
from nurture.render import TemplateRenderer

SAFE_FOOTER = '<a href="{{ unsubscribe_url }}">Unsubscribe</a><p>{{ postal_address }}</p>'
CAMPAIGN = """\
id: hostile
name: Hostile
sender: {from: "Acme <growth@acme.example>", postal_address: "Acme Inc., 1 Main St"}
steps:
  - {id: one, day: 0, subject: "Hello", template: body.html.j2}
"""

ESCAPES = {
    "globals through a macro": "{{ self.__init__.__globals__ }}",
    "class walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "format attribute walk": "{{ '{0.__class__.__mro__}'.format('') }}",
    "format_map walk": "{{ '{x.__class__}'.format_map({'x': lead}) }}",
    "attr filter to format": "{{ ('{0.__class__}'|attr('format'))(lead) }}",
    "mutating the context": "{% set _ = lead.update({'email': 'x@evil.example'}) %}",
    "string times a billion": "{{ 'x' * 1000000000 }}",
    "list times a billion": "{{ ([1] * 100000000)|length }}",
    "huge power": "{{ 9 ** 99999999 }}",
    "percent width": "{{ '%999999999s' % 'a' }}",
    "percent star width": "{{ '%*s' % (999999999, 'a') }}",
    "brace width": "{{ '{:>999999999}'.format('a') }}",
    "format filter width": "{{ '%999999999d'|format(1) }}",
    "center filter": "{{ 'a'|center(999999999) }}",
    "ljust method": "{{ 'a'.ljust(999999999) }}",
    "huge range": "{% for i in range(10000000) %}{% endfor %}",
    "deep nested loops": (
        "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
    "output flood": "{% for a in range(100) %}{{ 'x' * 999999 }}{% endfor %}",
    "endless recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "macro call storm": (
        "{% macro f() %}{% endmacro %}{% for a in range(9999) %}{% for b in range(99) %}{{ f() }}"
        "{% endfor %}{% endfor %}"
    ),
}


def _renderer(tmp_path: Path, body: str) -> tuple[TemplateRenderer, dict[str, object]]:
    (tmp_path / "body.html.j2").write_text(body + SAFE_FOOTER, encoding="utf-8")
    campaign = parse_campaign(CAMPAIGN, source="hostile.yaml")
    context = template_context(
        SAMPLE_LEAD,
        owner=SAMPLE_REP,
        campaign=campaign,
        step=campaign.steps[0],
        unsubscribe_url="https://t.example/u/x",
        postal_address="Acme Inc., 1 Main St",
    )
    return TemplateRenderer(tmp_path, {campaign.id: campaign}), context


@pytest.mark.parametrize("body", ESCAPES.values(), ids=ESCAPES.keys())
def test_a_hostile_template_is_refused_by_validation_and_by_render(tmp_path: Path, body: str) -> None:
    renderer, context = _renderer(tmp_path, body)
    campaign = parse_campaign(CAMPAIGN, source="hostile.yaml")

    assert renderer.check_templates(campaign), "validation accepted a hostile template"
    with pytest.raises(TemplateError):
        renderer.render_step("hostile", "one", context)


@pytest.mark.parametrize(
    "body",
    [
        "{{ '%.2f'|format(3.14159) }} {{ '{:,}'.format(1234567) }} {{ 'ab' * 3 }} {{ 2 ** 10 }}",
        "{% for i in range(500) %}{{ i }}{% endfor %}{{ 'x'|center(40) }}",
        "<p>Suite 123456, {{ '%s and %s' % ('a', 'b') }}</p>",
    ],
)
def test_ordinary_formatting_and_loops_still_render(tmp_path: Path, body: str) -> None:
    renderer, context = _renderer(tmp_path, body)
    campaign = parse_campaign(CAMPAIGN, source="hostile.yaml")

    assert renderer.check_templates(campaign) == []
    assert "Acme Inc." in renderer.render_step("hostile", "one", context).html
