"""Load marketing's files (campaigns/, templates/ and the reps file) into checked core values.

The only reader of those folders. `load_catalog` reports every problem in every file at once, as
`file:line: message`, so one `nurture validate` run shows all there is to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import yaml

from nurture.core.campaign import Campaign, parse_campaign
from nurture.core.context import Rep
from nurture.core.lead import normalise_email
from nurture.errors import CampaignError, ConfigError, ConfigErrors
from nurture.render import TemplateRenderer

CAMPAIGN_SUFFIXES = (".yaml", ".yml")
_REP_KEYS = ("email", "name", "title", "phone")


@dataclass(frozen=True)
class Catalog:
    """Every campaign by id, every rep by normalised email, and the folder their templates live in."""

    campaigns: Mapping[str, Campaign]
    reps: Mapping[str, Rep]
    templates_dir: Path

    def ordered(self) -> tuple[Campaign, ...]:
        """The campaigns in the order a lead that fits several is offered them: priority, then id."""
        return tuple(sorted(self.campaigns.values(), key=lambda c: (c.priority, c.id)))

    def renderer(self) -> TemplateRenderer:
        """The renderer for these campaigns; built once, so templates compile once per catalog."""
        return self._renderer

    @cached_property
    def _renderer(self) -> TemplateRenderer:
        return TemplateRenderer(self.templates_dir, self.campaigns)


def load_catalog(*, campaigns_dir: Path, templates_dir: Path, reps_file: Path | None) -> Catalog:
    """Read, parse and check every campaign file, its templates and the reps file.

    Raises:
        ConfigErrors: every problem found, sorted by file and line.
    """
    if not campaigns_dir.is_dir():
        raise ConfigErrors([CampaignError("campaigns folder not found", source=str(campaigns_dir))])
    campaigns, errors = _load_campaigns(campaigns_dir)
    reps, rep_errors = _load_reps(reps_file) if reps_file is not None else ({}, [])
    errors += rep_errors
    catalog = Catalog(MappingProxyType(campaigns), MappingProxyType(reps), templates_dir)
    if not templates_dir.is_dir():
        errors.append(ConfigError("templates folder not found", source=str(templates_dir)))
    else:
        renderer = catalog.renderer()
        for campaign in campaigns.values():
            errors += renderer.check_templates(campaign)
    if errors:
        # A template shared by two steps is reported once.
        unique = {str(e): e for e in errors}.values()
        raise ConfigErrors(sorted(unique, key=lambda e: (e.source, e.line or 0, e.reason)))
    return catalog


def _load_campaigns(campaigns_dir: Path) -> tuple[dict[str, Campaign], list[ConfigError]]:
    campaigns: dict[str, Campaign] = {}
    errors: list[ConfigError] = []
    # Not recursive: campaigns/tests/ holds simulation fixtures, not campaigns.
    paths = sorted(p for p in campaigns_dir.iterdir() if p.suffix in CAMPAIGN_SUFFIXES and p.is_file())
    for path in paths:
        if path.name.startswith("."):  # editor lock and swap files
            continue
        try:
            campaign = parse_campaign(_read(path), source=str(path))
        except ConfigError as exc:
            errors.append(exc)
            continue
        except ConfigErrors as exc:
            errors += exc.errors
            continue
        first = campaigns.get(campaign.id)
        if first is not None:
            message = f"duplicate campaign id {campaign.id!r}: {first.source} already defines it"
            errors.append(CampaignError(message, source=campaign.source, line=campaign.line_of("id")))
            continue
        campaigns[campaign.id] = campaign
    return campaigns, errors


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", source=str(path)) from exc


def _load_reps(path: Path) -> tuple[dict[str, Rep], list[ConfigError]]:
    """Parse the reps file, a YAML list of {email, name, title, phone}; a missing file means no reps."""
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
    for key_node, value_node in node.value:
        key, key_line = str(key_node.value), key_node.start_mark.line + 1
        if key not in _REP_KEYS:
            raise ConfigError(
                f"unknown key {key!r} (a rep has {', '.join(_REP_KEYS)})", source=source, line=key_line
            )
        fields[key] = _text(value_node, key=key, source=source)
    email, name = fields.get("email"), fields.get("name")
    if not email or not name:
        missing = "email" if not email else "name"
        raise ConfigError(f"missing required key {missing!r}", source=source, line=line)
    try:
        email = normalise_email(email)
    except ValueError as exc:
        raise ConfigError(f"email: {exc}", source=source, line=line) from exc
    return Rep(email=email, name=name, title=fields.get("title"), phone=fields.get("phone"))


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
