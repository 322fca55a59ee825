"""Render a campaign step for one lead (subject, HTML and text) in a Jinja2 sandbox.

The only module that renders marketing's templates (the web pages have their own, packaged ones). Each
step's (and variant's) templates are compiled once and cached. `check_templates` runs the same compile-and-
render path on sample data, so `nurture validate` finds what a real send would trip over, and reports it as
`file:line`; it also refuses a marketing email without a visible unsubscribe link and the sender's postal
address in both its HTML and its text part. Templates run in `nurture.sandbox`, with limits on work and size.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import css_inline
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import Environment, FileSystemLoader, Template, meta, nodes
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.exceptions import SecurityError, TemplateNotFound, TemplateSyntaxError, UndefinedError

from nurture.core.campaign import Campaign, Step, Variant
from nurture.core.context import SAMPLE_LEAD, SAMPLE_REP, template_context
from nurture.core.plaintext import full_stop, wrap_plain_text
from nurture.errors import CampaignError, TemplateError
from nurture.ports import RenderedEmail
from nurture.sandbox import LimitedSandbox, render_limited

CONTEXT_NAMES: Final = frozenset({"lead", "owner", "campaign", "step", "unsubscribe_url", "postal_address"})
SAMPLE_UNSUBSCRIBE_URL: Final = "https://nurture.example/u/sample-token"
SAMPLE_POSTAL_ADDRESS: Final = "Example Inc., 1 Sample Street, Sample City"
# \s already covers \r, \n, \t, \x0b, \x0c, \x1c-\x1f, U+0085, U+2028 and U+2029; the rest are the other
# control characters, which have no business in a Subject header either.
_TEXT_CONFIG: Final = ParserConfig(display_links=True)
_LINE_BREAKS: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
# Errors that template code can raise while rendering; anything else is a bug in nurture, not in a template.
# RecursionError: a macro that calls itself.
RENDER_ERRORS: Final = (
    JinjaTemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)


@dataclass(frozen=True, slots=True)
class _Compiled:
    subject: Template
    html: Template
    text: Template | None
    parts: tuple[_Part, _Part, _Part | None]  # where each one's errors point


@dataclass(frozen=True, slots=True)
class _Where:
    """Where to point when an error carries no template file of its own (a subject, a missing file)."""

    source: str
    line: int | None
    prefix: str = ""


class TemplateRenderer:
    """Renders campaign steps from `templates_dir`; implements `nurture.ports.Renderer`."""

    def __init__(self, templates_dir: Path, campaigns: Mapping[str, Campaign]) -> None:
        self._templates_dir = templates_dir
        self._campaigns = campaigns
        loader = FileSystemLoader(templates_dir)
        # The HTML part is always escaped, whatever its file is called: a `welcome.j2` is still HTML, and
        # select_autoescape would leave it unescaped. Text parts and subjects are never escaped.
        self._html_env = _environment(loader, autoescape=True)
        self._text_env = _environment(loader, autoescape=False)
        # Remote stylesheets are dropped, never fetched: rendering does no network I/O.
        self._inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
        self._compiled: dict[tuple[str, str, str | None], _Compiled] = {}

    def render_step(
        self, campaign_id: str, step_id: str, context: Mapping[str, Any], variant: str | None = None
    ) -> RenderedEmail:
        """Render one step with `context` (built by `core.context.template_context`); a `variant` (its id)
        overrides the step's subject and templates with its own.

        Raises:
            TemplateError: a template is missing, does not compile or fails on this context.
            CampaignError: the campaign, the step or the variant is not in the catalog.
        """
        campaign = self._campaigns.get(campaign_id)
        step = campaign.step(step_id) if campaign else None
        if campaign is None or step is None:
            source = campaign.source if campaign else "<catalog>"
            raise CampaignError(f"no step {step_id!r} in campaign {campaign_id!r}", source=source)
        chosen = next((v for v in step.variants if v.id == variant), None)
        if variant is not None and chosen is None:
            message = f"no variant {variant!r} in step {step_id!r} of campaign {campaign_id!r}"
            raise CampaignError(message, source=campaign.source)
        compiled = self._compile(campaign, step, chosen)
        subject_part, html_part, text_part = compiled.parts
        subject = _render(compiled.subject, context, subject_part.where)
        html = _render(compiled.html, context, html_part.where)
        if compiled.text is not None and text_part is not None:
            text = _render(compiled.text, context, text_part.where)
        else:
            text = self._html_to_text(html)
        return RenderedEmail(
            subject=one_line(subject), html=self._inline_css(html, html_part.where), text=text
        )

    def check_templates(self, campaign: Campaign) -> list[TemplateError]:
        """Return every problem in the campaign's subjects and templates (every variant's too, and a task
        step's title), found by rendering sample data."""
        errors: list[TemplateError] = []
        for index, step in enumerate(campaign.steps):
            context = template_context(
                SAMPLE_LEAD,
                owner=SAMPLE_REP,
                campaign=campaign,
                step=step,
                unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL,
                postal_address=campaign.sender.postal_address or SAMPLE_POSTAL_ADDRESS,
            )
            if step.task is not None:  # a rep task sends no email: only its title is a template
                where = _Where(
                    campaign.source, campaign.line_of("steps", index, "task"), f"step {step.id} task: "
                )
                errors += self._check_email(
                    (_Part(self._text_env, None, step.task.title, where), None, None), context
                )
                continue
            for variant in (None, *step.variants):
                errors += self._check_email(self._parts(campaign, step, variant), context)
        return errors

    def _check_email(
        self, parts: tuple[_Part, _Part | None, _Part | None], context: Mapping[str, Any]
    ) -> list[TemplateError]:
        rendered: list[str | None] = []
        errors: list[TemplateError] = []
        for part in parts:
            try:
                rendered.append(self._check_part(part, context) if part else None)
            except TemplateError as exc:
                errors.append(exc)
                rendered.append(None)
        _, html, text = rendered
        html_part, text_part = parts[1], parts[2]
        if html is None or html_part is None:
            return errors
        postal, html_text = str(context["postal_address"]), self._html_to_text(html)
        problems = _html_lacks(html, html_text, postal=postal)
        if text_part is not None and text is not None:  # a text part that failed to render is reported above
            problems += _text_lacks(text, postal=postal)
        elif text_part is None and not problems:  # derived from the HTML: what the derivation may lose
            problems += _text_lacks(html_text, postal=postal)
        where = html_part.where
        errors += [
            TemplateError(f"{where.prefix}{problem}", source=where.source, line=where.line)
            for problem in problems
        ]
        return errors

    def _check_part(self, part: _Part, context: Mapping[str, Any]) -> str:
        template = self._load(part)
        unknown = self._unknown_names(part)
        if unknown:
            raise unknown
        rendered = _render(template, context, part.where)
        if part.env is self._html_env:
            self._inline_css(rendered, part.where)
            self._html_to_text(rendered)
        return rendered

    def _parts(
        self, campaign: Campaign, step: Step, variant: Variant | None = None
    ) -> tuple[_Part, _Part, _Part | None]:
        """The subject, the HTML and the text template of a step (or of one of its variants), each with where
        its errors point."""
        index = campaign.steps.index(step)
        path: tuple[str | int, ...] = ("steps", index)
        label = f"step {step.id}"
        subject, template, text_template = step.subject, step.template, step.text_template
        if variant is not None:
            path += ("variants", step.variants.index(variant))
            label += f" variant {variant.id}"
            subject = variant.subject if variant.subject is not None else subject
            if variant.template is not None:  # a text part written for the step's HTML would not fit
                template, text_template = variant.template, variant.text_template
            elif variant.text_template is not None:
                text_template = variant.text_template

        def where(key: str, prefix: str) -> _Where:
            return _Where(campaign.source, campaign.line_of(*path, key) or campaign.line_of(*path), prefix)

        subject_part = _Part(self._text_env, None, subject, where("subject", f"{label} subject: "))
        html = _Part(self._html_env, template, None, where("template", f"{label}: "))
        text = None
        if text_template is not None:
            text = _Part(self._text_env, text_template, None, where("text_template", f"{label}: "))
        return subject_part, html, text

    def _compile(self, campaign: Campaign, step: Step, variant: Variant | None = None) -> _Compiled:
        key = (campaign.id, step.id, variant.id if variant else None)
        compiled = self._compiled.get(key)
        if compiled is None:
            parts = self._parts(campaign, step, variant)
            text = self._load(parts[2]) if parts[2] else None
            compiled = _Compiled(self._load(parts[0]), self._load(parts[1]), text, parts)
            if self._campaigns.get(campaign.id) is campaign:  # never cache a campaign we were not built with
                self._compiled[key] = compiled
        return compiled

    def _load(self, part: _Part) -> Template:
        try:
            if part.name is None:
                return part.env.from_string(part.subject or "")
            return part.env.get_template(part.name)
        except TemplateNotFound as exc:
            # Only the step's own file can be missing here: includes are looked up when rendering.
            message = f"{part.where.prefix}template {part.name!r} not found in {self._templates_dir}"
            raise TemplateError(message, source=part.where.source, line=part.where.line) from exc
        except TemplateSyntaxError as exc:
            raise _translate(exc, part.where) from exc

    def _unknown_names(self, part: _Part) -> TemplateError | None:
        """The first name a template uses that the template context does not have, or None."""
        if part.name is None:
            source, filename = part.subject or "", None
        else:
            assert part.env.loader is not None
            source, filename, _ = part.env.loader.get_source(part.env, part.name)
        tree = part.env.parse(source, part.name, filename)
        unknown = meta.find_undeclared_variables(tree) - CONTEXT_NAMES - part.env.globals.keys()
        uses = sorted((n.lineno, n.name) for n in tree.find_all(nodes.Name) if n.name in unknown)
        if not uses:
            return None
        line, name = uses[0]
        close = difflib.get_close_matches(name, CONTEXT_NAMES, n=1)
        hint = (
            f" (did you mean {close[0]!r}?)"
            if close
            else f" (templates see {', '.join(sorted(CONTEXT_NAMES))})"
        )
        if filename is None:
            return TemplateError(
                f"{part.where.prefix}undefined variable {name!r}{hint}",
                source=part.where.source,
                line=part.where.line,
            )
        return TemplateError(f"undefined variable {name!r}{hint}", source=filename, line=line)

    def _inline_css(self, html: str, where: _Where) -> str:
        try:
            return str(self._inliner.inline(html))
        except css_inline.InlineError as exc:
            raise TemplateError(
                f"{where.prefix}CSS could not be inlined: {exc}", source=where.source
            ) from exc

    def _html_to_text(self, html: str) -> str:
        return html_to_text(html)


@dataclass(frozen=True, slots=True)
class _Part:
    """One template of a step: a file (`name`) or a subject string, and where its errors point."""

    env: Environment
    name: str | None
    subject: str | None
    where: _Where


def html_to_text(html: str) -> str:
    """The text part of a step that has no text template: its HTML as text, wrapped at 78 columns.

    Links come out as "[text](url)", so every URL (the unsubscribe link's too) survives whole.
    """
    return wrap_plain_text(str(get_text(html, _TEXT_CONFIG))) if html.strip() else ""


def one_line(text: str) -> str:
    """Collapse every run of whitespace and control characters to one space, so a subject is one line."""
    return _LINE_BREAKS.sub(" ", text).strip()


def _environment(loader: FileSystemLoader, *, autoescape: bool) -> LimitedSandbox:
    env = LimitedSandbox(loader, autoescape=autoescape, finalize=_blank_none)
    env.filters["full_stop"] = full_stop
    return env


def _html_lacks(html: str, html_text: str, *, postal: str) -> list[str]:
    """What the HTML part of a marketing email lacks of the law's minimum: a visible unsubscribe link and
    the sender's postal address; every one missing."""
    link = re.compile(r"<a\b[^>]*\bhref\s*=\s*[\"']?" + re.escape(SAMPLE_UNSUBSCRIBE_URL), re.IGNORECASE)
    found: list[str] = []
    if not link.search(html):
        found.append('the HTML part has no unsubscribe link (<a href="{{ unsubscribe_url }}">)')
    if _words(postal) not in _words(html_text):
        found.append("the HTML part does not show the sender's postal address ({{ postal_address }})")
    return found


def _text_lacks(text: str, *, postal: str) -> list[str]:
    """What the text part lacks of the same minimum: the unsubscribe URL and the postal address."""
    found: list[str] = []
    if SAMPLE_UNSUBSCRIBE_URL not in text:
        found.append("the text part has no unsubscribe link ({{ unsubscribe_url }})")
    if _words(postal) not in _words(text):  # a wrapped text part may break the address across lines
        found.append("the text part does not show the sender's postal address ({{ postal_address }})")
    return found


def _words(text: str) -> str:
    return " ".join(text.split())


def _blank_none(value: Any) -> Any:
    # Unknown lead fields are None in the context; a customer should never read "Hello None".
    return "" if value is None else value


def _render(template: Template, context: Mapping[str, Any], where: _Where) -> str:
    try:
        return render_limited(template, context)
    except RENDER_ERRORS as exc:
        raise _translate(exc, where) from exc


def _translate(exc: BaseException, where: _Where) -> TemplateError:
    """Turn a Jinja2 (or template code) error into a `TemplateError` at the template file and line."""
    filename, line = _location(exc)
    reason = _reason(exc)
    if filename is None or filename == "<template>":  # a subject, compiled from a string
        return TemplateError(f"{where.prefix}{reason}", source=where.source, line=where.line)
    return TemplateError(reason, source=filename, line=line)


def _location(exc: BaseException) -> tuple[str | None, int | None]:
    if isinstance(exc, TemplateSyntaxError):
        return exc.filename, exc.lineno
    found: tuple[str | None, int | None] = (None, None)
    tb = exc.__traceback__
    while tb is not None:
        # Jinja rewrites the frames of template code to point at the template's file and line; the last
        # one is where it failed (inside an included template, if any).
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            found = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    if isinstance(exc, TemplateNotFound):
        return f"template {exc.name!r} not found"
    if isinstance(exc, SecurityError):
        return f"unsafe: {exc.message}"
    if isinstance(exc, UndefinedError):
        return f"undefined: {exc.message}"
    if isinstance(exc, JinjaTemplateError):
        return exc.message or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
