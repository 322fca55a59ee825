"""Load marketing's files (campaigns/, templates/, the scoring and reps files) into checked core values.

The only reader of those folders. `load_catalog` reports every problem in every file at once, as
`file:line: message`, so one `nurture validate` run shows all there is to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import holidays
import yaml
from jinja2 import FileSystemLoader, Template

from nurture.core.campaign import Campaign, Step, parse_campaign, postal_address_of, salvage_campaign
from nurture.core.context import Rep
from nurture.core.lead import normalise_email
from nurture.core.schedule import NO_DAYS_OFF, DaysOff
from nurture.core.scoring import DEFAULT_RULES, ScoringRules, parse_scoring
from nurture.core.site_hosts import hosts_of_urls
from nurture.errors import CampaignError, ConfigError, ConfigErrors, TemplateError
from nurture.render import RENDER_ERRORS, TemplateRenderer, one_line
from nurture.sandbox import LimitedSandbox, render_limited

CAMPAIGN_SUFFIXES = (".yaml", ".yml")
_REP_KEYS = ("email", "name", "title", "phone", "notify", "away")
# Notification URLs are Apprise URLs, which have scores of schemes (mailto://, slack://, msteams://, ...):
# only their shape is checked here; the alert sinks report one they cannot use.
_NOTIFY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")
_HREF = re.compile(r"""\bhref\s*=\s*["']?(https?://[^"'\s>{}]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Catalog:
    """Every campaign by id, every rep by normalised email (in file order), the folder the templates live
    in, and the scoring rules."""

    campaigns: Mapping[str, Campaign]
    reps: Mapping[str, Rep]
    templates_dir: Path
    scoring: ScoringRules = DEFAULT_RULES

    def active_reps(self) -> tuple[Rep, ...]:
        """The reps who take new leads (not away), in file order: the round-robin order of `assign_owner`."""
        return tuple(rep for rep in self.reps.values() if rep.active)

    def ordered(self) -> tuple[Campaign, ...]:
        """The campaigns in the order a lead that fits several is offered them: priority, then id."""
        return tuple(sorted(self.campaigns.values(), key=lambda c: (c.priority, c.id)))

    def days_off(self, campaign: Campaign, country: str | None) -> DaysOff:
        """The local dates `campaign` sends nothing to a lead in `country` (an ISO code such as TW): its
        public holidays when the send window says `skip_holidays: true`, else none. An unknown or missing
        country has no holidays."""
        if not campaign.send_window.skip_holidays or not country:
            return NO_DAYS_OFF
        return public_holidays(country.strip().upper())

    def renderer(self) -> TemplateRenderer:
        """The renderer for these campaigns; built once, so templates compile once per catalog."""
        return self._renderer

    def render_task_title(self, campaign: Campaign, step: Step, context: Mapping[str, Any]) -> str:
        """The title of a rep task step for one lead: its Jinja2 template, rendered in the sandbox with the
        context an email of the step would get, on one line.

        Raises:
            TemplateError: the title does not compile or fails on this context (an undefined name).
        """
        if step.task is None:
            raise CampaignError(f"step {step.id!r} is not a rep task", source=campaign.source)
        try:
            return one_line(render_limited(self._task_template(step.task.title), context))
        except RENDER_ERRORS as exc:
            index = next((i for i, s in enumerate(campaign.steps) if s.id == step.id), None)
            line = campaign.line_of("steps", index, "task") if index is not None else None
            raise TemplateError(
                f"step {step.id} task title: {exc}", source=campaign.source, line=line
            ) from exc

    def _task_template(self, title: str) -> Template:
        template = self._task_titles.get(title)
        if template is None:
            template = self._task_titles[title] = self._task_env.from_string(title)
        return template

    def link_hosts(self) -> frozenset[str]:
        """The hosts of the absolute http(s) links written in the templates (not those a variable makes):
        the company's own sites, where `NURTURE_SITE_HOSTS` does not name them."""
        urls: list[str] = []
        if self.templates_dir.is_dir():
            for path in sorted(p for p in self.templates_dir.rglob("*") if p.is_file()):
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):  # not a template: load_catalog reports the ones used
                    continue
                urls += _HREF.findall(text)
        return hosts_of_urls(urls)

    @cached_property
    def _task_env(self) -> LimitedSandbox:
        return LimitedSandbox(FileSystemLoader(self.templates_dir), autoescape=False, finalize=_blank_none)

    @cached_property
    def _task_titles(self) -> dict[str, Template]:
        return {}

    @cached_property
    def _renderer(self) -> TemplateRenderer:
        return TemplateRenderer(self.templates_dir, self.campaigns)


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


@cache
def public_holidays(country: str) -> DaysOff:
    """The public holidays of `country` (ISO 3166 alpha-2) from the `holidays` calendars, any year; none
    for a country they do not know. One calendar per country, shared: it fills in years as they are asked."""
    try:
        return holidays.country_holidays(country)
    except NotImplementedError:
        return NO_DAYS_OFF


def load_catalog(
    *,
    campaigns_dir: Path,
    templates_dir: Path,
    reps_file: Path | None,
    scoring_file: Path | None = None,
    require_postal_address: bool = False,
    postal_address: str | None = None,
) -> Catalog:
    """Read, parse and check every campaign file, its templates, the reps file and the scoring file.

    A missing reps file means no reps; a missing (or no) scoring file means `DEFAULT_RULES`. The templates
    of the valid steps of a campaign file with other problems are checked too. With
    `require_postal_address` (as `nurture validate` does), a campaign that sends email and gives no
    `sender.postal_address` is an error unless `postal_address` (`NURTURE_POSTAL_ADDRESS`) is set.

    Raises:
        ConfigErrors: every problem found, sorted by file and line.
    """
    if not campaigns_dir.is_dir():
        raise ConfigErrors([CampaignError("campaigns folder not found", source=str(campaigns_dir))])
    campaigns, salvaged, errors = _load_campaigns(campaigns_dir)
    reps, rep_errors = _load_reps(reps_file) if reps_file is not None else ({}, [])
    scoring, scoring_errors = _load_scoring(scoring_file)
    errors += rep_errors + scoring_errors
    catalog = Catalog(MappingProxyType(campaigns), MappingProxyType(reps), templates_dir, scoring)
    checked = [*campaigns.values(), *salvaged]
    if require_postal_address:
        errors += [e for c in checked if (e := missing_postal_address(c, postal_address)) is not None]
    if not templates_dir.is_dir():
        errors.append(ConfigError("templates folder not found", source=str(templates_dir)))
    else:
        renderer = catalog.renderer()
        for campaign in checked:
            errors += renderer.check_templates(campaign)
    if errors:
        # A template shared by two steps is reported once.
        unique = {str(e): e for e in errors}.values()
        raise ConfigErrors(sorted(unique, key=lambda e: (e.source, e.line or 0, e.reason)))
    return catalog


def missing_postal_address(campaign: Campaign, fallback: str | None) -> CampaignError | None:
    """The error of a campaign whose emails would show no postal address (none of its own and no
    `fallback`), at its `sender:` line; None when it has one or sends no email (rep tasks only)."""
    if not campaign.sends_email or postal_address_of(campaign, fallback) is not None:
        return None
    message = (
        "sender has no postal_address and NURTURE_POSTAL_ADDRESS is not set: every marketing email must "
        "show the sender's postal address"
    )
    return CampaignError(message, source=campaign.source, line=campaign.line_of("sender"))


def _load_campaigns(campaigns_dir: Path) -> tuple[dict[str, Campaign], list[Campaign], list[ConfigError]]:
    """The valid campaigns by id, what can still be checked of the invalid files, and every problem."""
    campaigns: dict[str, Campaign] = {}
    salvaged: list[Campaign] = []
    errors: list[ConfigError] = []
    # Not recursive: campaigns/tests/ holds simulation fixtures, not campaigns.
    paths = sorted(p for p in campaigns_dir.iterdir() if p.suffix in CAMPAIGN_SUFFIXES and p.is_file())
    for path in paths:
        if path.name.startswith("."):  # editor lock and swap files
            continue
        try:
            text = _read(path)
        except ConfigError as exc:
            errors.append(exc)
            continue
        try:
            campaign = parse_campaign(text, source=str(path))
        except ConfigErrors as exc:
            errors += exc.errors
            salvaged += filter(None, [salvage_campaign(text, source=str(path))])
            continue
        first = campaigns.get(campaign.id)
        if first is not None:
            message = f"duplicate campaign id {campaign.id!r}: {first.source} already defines it"
            errors.append(CampaignError(message, source=campaign.source, line=campaign.line_of("id")))
            salvaged.append(campaign)  # its templates are still checked
            continue
        campaigns[campaign.id] = campaign
    return campaigns, salvaged, errors


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", source=str(path)) from exc


def _load_scoring(path: Path | None) -> tuple[ScoringRules, list[ConfigError]]:
    if path is None or not path.exists():
        return DEFAULT_RULES, []
    try:
        return parse_scoring(_read(path), source=str(path)), []
    except ConfigError as exc:
        return DEFAULT_RULES, [exc]
    except ConfigErrors as exc:
        return DEFAULT_RULES, list(exc.errors)


def _load_reps(path: Path) -> tuple[dict[str, Rep], list[ConfigError]]:
    """Parse the reps file, a YAML list of {email, name, title, phone, notify, away}; missing means none."""
    source = str(path)
    try:
        if not path.exists():
            return {}, []
        root = yaml.compose(_read(path), Loader=yaml.SafeLoader)
    except ConfigError as exc:
        return {}, [exc]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return {}, [ConfigError(f"YAML syntax: {getattr(exc, 'problem', exc)}", source=source, line=line)]
    if root is None:
        return {}, []
    if not isinstance(root, yaml.SequenceNode):
        message = "the reps file is a list of entries such as `- {email: ..., name: ...}`"
        return {}, [ConfigError(message, source=source, line=root.start_mark.line + 1)]
    reps: dict[str, Rep] = {}
    first_at: dict[str, int] = {}
    errors: list[ConfigError] = []
    for item in root.value:
        line = item.start_mark.line + 1
        try:
            rep = _rep(item, source=source)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if rep.email in first_at:
            message = f"duplicate rep {rep.email!r} (first at line {first_at[rep.email]})"
            errors.append(ConfigError(message, source=source, line=line))
            continue
        reps[rep.email], first_at[rep.email] = rep, line
    return reps, errors


def _rep(node: yaml.Node, *, source: str) -> Rep:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("a rep is a mapping such as {email: ..., name: ...}", source=source, line=line)
    fields: dict[str, str | None] = {}
    notify_urls: tuple[str, ...] = ()
    away = False
    for key_node, value_node in node.value:
        key, key_line = str(key_node.value), key_node.start_mark.line + 1
        if key not in _REP_KEYS:
            raise ConfigError(
                f"unknown key {key!r} (a rep has {', '.join(_REP_KEYS)})", source=source, line=key_line
            )
        if key == "notify":
            notify_urls = _urls(value_node, source=source)
        elif key == "away":
            away = _flag(value_node, key=key, source=source)
        else:
            fields[key] = _text(value_node, key=key, source=source)
    email, name = fields.get("email"), fields.get("name")
    if not email or not name:
        missing = "email" if not email else "name"
        raise ConfigError(f"missing required key {missing!r}", source=source, line=line)
    try:
        email = normalise_email(email)
    except ValueError as exc:
        raise ConfigError(f"email: {exc}", source=source, line=line) from exc
    return Rep(
        email=email,
        name=name,
        title=fields.get("title"),
        phone=fields.get("phone"),
        notify_urls=notify_urls,
        active=not away,
    )


def _urls(node: yaml.Node, *, source: str) -> tuple[str, ...]:
    """`notify: URL` or `notify: [URL, ...]`, each only checked to look like scheme://..."""
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    urls: list[str] = []
    for item in items:
        url = _text(item, key="notify", source=source)
        if url is None:
            continue
        if not _NOTIFY_URL.fullmatch(url):
            message = f"notify: {url!r} is not a notification URL such as mailto://... or slack://..."
            raise ConfigError(message, source=source, line=item.start_mark.line + 1)
        urls.append(url)
    return tuple(dict.fromkeys(urls))


def _flag(node: yaml.Node, *, key: str, source: str) -> bool:
    value = node.value.lower() if isinstance(node, yaml.ScalarNode) else None
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{key}: expected true or false", source=source, line=node.start_mark.line + 1)
    return value in _TRUE


def _text(node: yaml.Node, *, key: str, source: str) -> str | None:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{key}: expected text", source=source, line=line)
    if node.tag == "tag:yaml.org,2002:null":
        return None
    # The raw text, so a phone such as 0912345678 keeps its leading zero; a rep's fields may reach headers.
    value = str(node.value).strip()
    if any(ch in value for ch in "\r\n\x00\x85\u2028\u2029"):
        raise ConfigError(f"{key}: must be on one line", source=source, line=line)
    return value
