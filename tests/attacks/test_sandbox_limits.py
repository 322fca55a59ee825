"""The sandbox's size and time limits hold for every operator, filter, method and global, before the work.

Each hostile template goes through the real `nurture validate` (a child process whose address space is
capped, so a template that got as far as allocating its value would fail there with a MemoryError instead
of the one-line refusal), and through a real send, which must record a render failure on the delivery.
The limits themselves are checked at limit - 1, limit and limit + 1, by a table and by hypothesis.
"""

from __future__ import annotations

import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import FileSystemLoader
from jinja2.exceptions import SecurityError
from sqlalchemy import select

from nurture.catalog import load_catalog
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries
from nurture.flows.deliver import Outcome, deliver_batch
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.sandbox import (
    MAX_LIPSUM_WORDS,
    MAX_SECONDS,
    MAX_VALUE_CHARS,
    LimitedSandbox,
    render_limited,
)
from tests.fakes import RecordingTransport
from tests.flows.conftest import mailer_for
from tests.harness.cli import Cli
from tests.project import project_copy

LIMIT = MAX_VALUE_CHARS
FOOTER = '<a href="{{ unsubscribe_url }}">Unsubscribe</a><p>{{ postal_address }}</p>'
CHILD_ADDRESS_SPACE = 2 * 1024**3  # the validating process may map 2 GB in all: far below what these ask
MONDAY_TAIPEI_10 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)

HOSTILE = {
    # the four
    "bytes times three billion": "{{ 'x'.encode('ascii') * 3000000000 }}",
    "repeated ~ concatenation": (
        "{% set a = 'x' * 999999 %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}"
        "{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{{ a|length }}"
    ),
    "lipsum with large arguments": "{{ lipsum(100000, min=10000, max=100000) }}",
    "join of a shared million-item list": "{{ (['x'*999999]*999999)|join }}",
    # the same classes by other routes
    "bytes plus bytes": "{% set b = 'x'.encode('ascii') * 999999 %}{{ (b + b)|length }}",
    "string plus string": "{% set a = 'x' * 999999 %}{{ (a + a)|length }}",
    "list plus list": "{% set a = ['x'] * 999999 %}{{ (a + a)|length }}",
    "list literal of big strings, printed": "{% set a = 'x' * 999999 %}{{ [a, a, a] }}",
    "list literal of big strings, joined": "{% set a = 'x' * 999999 %}{{ [a, a, a]|join }}",
    "list literal of big strings, as JSON": "{% set a = 'x' * 999999 %}{{ [a, a]|tojson }}",
    "str.join": "{{ ''.join(['x' * 99999] * 99) }}",
    "bytes.join": "{{ ''.encode('ascii').join(['x'.encode('ascii') * 99999] * 99)|length }}",
    "join with a long separator": "{{ range(9999)|join('x' * 999) }}",
    "join of a mapped iterator": "{{ (['x' * 999] * 9999)|map('upper')|join|length }}",
    "list of a mapped iterator": "{{ (['x' * 999] * 9999)|map('upper')|list|length }}",
    "replace filter": "{{ ('x' * 999999)|replace('x', 'yyyyyyyyyy') }}",
    "str.replace": "{{ ('x' * 999999).replace('x', 'yy') }}",
    "str.replace with a count": "{{ ('x' * 999999).replace('x', 'y' * 9999, 9999) }}",
    "expandtabs": "{{ ('\t' * 99999).expandtabs(9999) }}",
    "bytes.expandtabs": "{{ ('\t'.encode('ascii') * 99999).expandtabs(9999)|length }}",
    "indent filter": "{{ ('\n' * 99999)|indent(9999) }}",
    "indent by a string": "{{ ('\n' * 99999)|indent('x' * 999) }}",
    "wordwrap with a long wrapstring": "{{ ('a ' * 9999)|wordwrap(1, wrapstring='x' * 9999) }}",
    "str.format repeating one argument": "{{ ('{0}' * 300000).format('x' * 999) }}",
    "format_map repeating one argument": "{{ ('{a}' * 300000).format_map({'a': 'x' * 999}) }}",
    "% repeating one argument": "{{ ('%(a)s' * 200000) % {'a': 'x' * 999} }}",
    "format filter repeating": "{{ ('%(a)s' * 200000)|format(a='x' * 999) }}",
    "many wide % fields": "{{ ('%9999s' * 150) % (('x',) * 150) }}",
    "dict of big values": "{{ dict.fromkeys(range(9999), 'x' * 999) }}",
    "lipsum many paragraphs": "{{ lipsum(10001, min=1, max=1) }}",
    "lipsum not a number": "{{ lipsum('9' * 99) }}",
    "range as a global": "{% for i in range(999999999) %}{% endfor %}",
}


def _hostile_project(root: Path, bodies: dict[str, str]) -> Path:
    """A campaign with one step per hostile template, each its own file; the names of those files."""
    (root / "campaigns").mkdir(parents=True)
    (root / "templates").mkdir()
    steps = []
    for index, body in enumerate(bodies.values()):
        (root / "templates" / f"t{index}.html.j2").write_text(body + FOOTER, encoding="utf-8")
        steps.append(f'  - {{id: s{index}, day: {index}, subject: "Hello", template: t{index}.html.j2}}')
    (root / "campaigns" / "hostile.yaml").write_text(
        "id: hostile\nname: Hostile\n"
        'sender: {from: "Acme <growth@acme.example>", postal_address: "Acme Inc., 1 Main St"}\n'
        "steps:\n" + "\n".join(steps) + "\n",
        encoding="utf-8",
    )
    return root


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


def test_every_hostile_template_is_one_unsafe_line_from_validate_in_a_small_process(
    tmp_path: Path, cli: Cli
) -> None:
    root = _hostile_project(tmp_path, HOSTILE)
    started = time.monotonic()
    result = cli("validate", root / "campaigns", preexec_fn=_cap_address_space)
    elapsed = time.monotonic() - started

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert "MemoryError" not in output, output
    lines = output.splitlines()
    for index, name in enumerate(HOSTILE):
        found = [line for line in lines if f"t{index}.html.j2:" in line]
        assert len(found) == 1, (name, found)
        assert "unsafe: " in found[0], name
    # each template is stopped before its work: the whole run stays far from the time limit per template
    assert elapsed < len(HOSTILE) * MAX_SECONDS, elapsed


async def test_a_hostile_template_is_a_recorded_render_failure_at_send_time(
    db: Database, tmp_path: Path
) -> None:
    root = project_copy(tmp_path / "project")
    layout = root / "templates" / "layout.html.j2"
    hostile = "".join(
        f"{{% if lead.company == {name!r} %}}{body}{{% endif %}}" for name, body in HOSTILE.items()
    )
    layout.write_text(hostile + layout.read_text(encoding="utf-8"), encoding="utf-8")
    catalog = load_catalog(
        campaigns_dir=root / "campaigns", templates_dir=root / "templates", reps_file=root / "reps.yaml"
    )
    transport = RecordingTransport()
    mailer = mailer_for(catalog, transport)
    names = list(HOSTILE)
    rows = [
        {"email": f"lead{i}@example.com", "company": name, "grade": "nurturable", "timezone": "Asia/Taipei"}
        for i, name in enumerate(names)
    ]
    await import_leads(db, rows, now=MONDAY_TAIPEI_10)
    await enroll(db, catalog, MONDAY_TAIPEI_10)
    lease, stale = timedelta(minutes=10), timedelta(minutes=5)
    claimed = (await dispatch(db, MONDAY_TAIPEI_10, lease=lease, limit=1000, stale_after=stale)).claimed
    assert claimed

    result = await deliver_batch(claimed, db=db, mailer=mailer, now=MONDAY_TAIPEI_10)

    assert set(result.outcomes.values()) == {Outcome.FAILED}
    assert transport.sent == []
    async with db.transaction() as conn:
        stmt = select(deliveries.c.status, deliveries.c.last_error).where(deliveries.c.id.in_(claimed))
        stored = (await conn.execute(stmt)).all()
    assert len(stored) == len(claimed) >= len(names)  # every lead's first email
    for status, error in stored:
        assert status == "failed", error
        assert error.startswith("render: "), error
        assert "unsafe: " in error, error


# --- the limits, at limit - 1, limit and limit + 1 ------------------------------------------------------


def _sandbox(tmp_path: Path) -> LimitedSandbox:
    return LimitedSandbox(FileSystemLoader(tmp_path), autoescape=False, finalize=lambda value: value)


def _renders(env: LimitedSandbox, source: str) -> bool:
    """True when `source` renders, False when a limit refuses it."""
    try:
        render_limited(env.from_string(source), {})
    except SecurityError:
        return False
    return True


def _sized(operation: str, size: int) -> str:
    """A template whose `operation` makes a value of exactly `size` characters or items."""
    half = size // 2
    return {
        "str *": f"{{{{ ('x' * {size})|length }}}}",
        "bytes *": f"{{{{ ('x'.encode('ascii') * {size})|length }}}}",
        "~": f"{{{{ (('x' * {half}) ~ ('y' * {size - half}))|length }}}}",
        "+": f"{{{{ (('x' * {half}) + ('y' * {size - half}))|length }}}}",
        # a list of 2 strings is their characters and itself: with "-" between, as long as its join
        "join": f"{{{{ ['x' * {half}, 'y' * {size - half - 1}]|join('-')|length }}}}",
        "str.join": f"{{{{ '-'.join(['x' * {half}, 'y' * {size - half - 1}])|length }}}}",
    }[operation]


OPERATIONS = ["str *", "bytes *", "~", "+", "join", "str.join"]


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(("size", "allowed"), [(LIMIT - 1, True), (LIMIT, True), (LIMIT + 1, False)])
def test_each_size_limit_holds_at_its_edge(tmp_path: Path, operation: str, size: int, allowed: bool) -> None:
    assert _renders(_sandbox(tmp_path), _sized(operation, size)) is allowed


def test_a_list_counts_itself_and_each_of_its_items(tmp_path: Path) -> None:
    env = _sandbox(tmp_path)
    assert _renders(env, f"{{{{ ([1] * {LIMIT - 2})|length }}}}")
    assert _renders(env, f"{{{{ ([1] * {LIMIT - 1})|length }}}}")  # the list and LIMIT - 1 numbers
    assert not _renders(env, f"{{{{ ([1] * {LIMIT})|length }}}}")
    # a string in a list counts its characters, through every reference to it
    assert not _renders(env, "{% set a = 'x' * 1000 %}{{ ([a] * 1000)|length }}")


@pytest.mark.parametrize(
    ("words", "allowed"),
    [(MAX_LIPSUM_WORDS - 1, True), (MAX_LIPSUM_WORDS, True), (MAX_LIPSUM_WORDS + 1, False)],
)
def test_lipsum_is_limited_at_its_edge(tmp_path: Path, words: int, allowed: bool) -> None:
    assert _renders(_sandbox(tmp_path), f"{{{{ lipsum(1, min=1, max={words})|length }}}}") is allowed


@settings(max_examples=60, deadline=None)
@given(
    operation=st.sampled_from(OPERATIONS),
    size=st.integers(LIMIT - 3, LIMIT + 3) | st.integers(LIMIT + 4, 10**12),
)
def test_any_size_around_the_limit_is_refused_exactly_when_over_it(operation: str, size: int) -> None:
    env = LimitedSandbox(FileSystemLoader("."), autoescape=False, finalize=lambda value: value)
    started = time.monotonic()
    assert _renders(env, _sized(operation, size)) is (size <= LIMIT)
    assert time.monotonic() - started < MAX_SECONDS


GLOBAL_CALLS = {
    "range": "{% for i in range(10**4) %}{% for j in range(10**4) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(10**4, min=10**4, max=10**4) }}",
    "dict": "{{ dict(a='x' * 10**6, b='y' * 10**6) }}",
    "cycler": "{{ cycler(*(['x' * 999] * 9999)).next() }}",
    "joiner": "{% set j = joiner('x' * 999999) %}{% for i in range(9999) %}{{ j() }}{% endfor %}",
    "namespace": "{% set ns = namespace(a='x' * 999999) %}{{ (ns.a ~ ns.a)|length }}",
}


@pytest.mark.parametrize("source", GLOBAL_CALLS.values(), ids=GLOBAL_CALLS.keys())
def test_the_time_limit_holds_for_every_global(tmp_path: Path, source: str) -> None:
    env = _sandbox(tmp_path)
    assert set(GLOBAL_CALLS) >= set(env.globals)  # a new global gets a case here
    started = time.monotonic()
    assert not _renders(env, source)
    assert time.monotonic() - started < MAX_SECONDS
