"""YAML text to a validated pydantic model, with every problem reported at once as `source:line: message`.

Private to the core's file parsers (`core.campaign`, `core.scoring`). The loader reads YAML 1.2 scalars,
remembers the line of every key, refuses alias bombs, and maps each pydantic error back to a line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeGuard, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from nurture.errors import ConfigError, ConfigErrors

KeyPath = tuple[str | int, ...]  # a key path in the file: ("steps", 2, "day")
# The model behind each mapping of a file, by key path with list indexes as "*": for "did you mean".
Models = Mapping[tuple[str, ...], type[BaseModel]]
# Checks across keys, run on the raw data so they report even when some keys are invalid.
CrossChecks = Callable[[Mapping[str, Any], Mapping[KeyPath, int]], list[tuple[KeyPath, str]]]
M = TypeVar("M", bound=BaseModel)

_NODE_BUDGET: Final = 20_000  # far above any real file; stops alias bombs before they expand
_YAML_INT: Final = "tag:yaml.org,2002:int"
_YAML_1_1_ONLY: Final = {
    "tag:yaml.org,2002:bool",
    _YAML_INT,
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_FRIENDLY: Final = {
    "int_type": "expected a whole number",
    "string_type": "expected text",
    "string_too_short": "must not be empty",
    "list_type": "expected a list, such as [a, b]",
    "dict_type": "expected keys and values",
    "model_type": "expected keys and values",
    "model_attributes_type": "expected keys and values",
}


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 scalars, so `end: 17:00` stays a time (not 1020), `countries: [NO]` stays
    Norway (not false) and `day: 010` is ten."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(_YAML_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    # SafeLoader would read a leading zero as octal ("010" == 8); YAML 1.2 reads it as decimal.
    assert isinstance(node, yaml.ScalarNode)
    return int(loader.construct_scalar(node))


_Loader.add_constructor(_YAML_INT, _construct_int)


def problem(message: str) -> PydanticCustomError:
    """A validation error whose text is `message`, for use inside a pydantic validator."""
    # The message goes in the context so a `{` in the user's value is never read as a format field.
    return PydanticCustomError("nurture", "{reason}", {"reason": message})


# The config of every file model: unknown keys are errors and values are read-only. Numbers become text where
# text is expected (`utm_content: [2024]`); ints stay strict (`day: true`).
STRICT: Final = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def listify(value: Any) -> Any:
    """Read one value where a list is expected as a list of it: `grade: nurturable` is `[nurturable]`."""
    return [value] if isinstance(value, str) else value


def not_empty(what: str) -> Callable[[list[Any]], list[Any]]:
    """A validator that rejects an empty list, naming `what` it needs at least one of."""

    def check(value: list[Any]) -> list[Any]:
        if not value:
            raise problem(f"needs at least one {what}")
        return value

    return check


def validate_yaml(
    text: str,
    model: type[M],
    *,
    source: str,
    error: type[ConfigError],
    models: Models,
    cross_checks: CrossChecks,
    shape: str,
) -> tuple[M, dict[KeyPath, int]]:
    """Parse `text` as one mapping, validate it as `model`, and return it with the line of every key.

    `shape` is the message for a file that is not a mapping ("a campaign file holds keys such as ...").

    Raises:
        ConfigErrors: every problem in the file at once, each an `error` with its 1-based line.
    """
    data, lines, problems = load_yaml(text)
    parsed: M | None = None
    if data is not None and not isinstance(data, dict):
        problems.append((1, shape))
    elif isinstance(data, dict):
        problems += [(line_of(lines, path), message) for path, message in cross_checks(data, lines)]
        try:
            parsed = model.model_validate(data)
        except ValidationError as exc:
            problems += [
                (line_of(lines, e["loc"]), describe(e, models)) for e in exc.errors(include_url=False)
            ]
    if problems or parsed is None:
        found = sorted(set(problems)) or [(1, "the file is empty")]
        raise ConfigErrors([error(message, source=source, line=line) for line, message in found])
    return parsed, lines


def load_yaml(text: str) -> tuple[Any, dict[KeyPath, int], list[tuple[int, str]]]:
    """Return the data, the line of every key path, and the problems found by YAML itself."""
    try:
        loader = _Loader(text)  # the reader rejects control characters here, before any parsing
    except yaml.reader.ReaderError as exc:
        return None, {}, [(text.count("\n", 0, exc.position) + 1, f"YAML syntax: {exc.reason}")]
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {(): 1}, []
        lines, problems = _line_map(root)
        if lines is None:
            return None, {(): 1}, [(1, "the file is too large, or its aliases repeat too often")]
        return loader.construct_document(root), lines, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(f"{exc.problem or ''} ({exc.context or ''})".replace(" ()", "").split())
        return None, {}, [(mark.line + 1 if mark else 1, f"YAML syntax: {reason}")]
    except RecursionError:
        return None, {}, [(1, "YAML syntax: nested too deeply")]
    finally:
        loader.dispose()


def _line_map(root: yaml.Node) -> tuple[dict[KeyPath, int] | None, list[tuple[int, str]]]:
    """Map each key path to the line of its key (or list item); None when the tree is too big to walk."""
    lines: dict[KeyPath, int] = {(): root.start_mark.line + 1}
    problems: list[tuple[int, str]] = []
    stack: list[tuple[KeyPath, yaml.Node]] = [((), root)]
    visits = 0
    while stack:
        path, node = stack.pop()
        visits += 1
        if visits > _NODE_BUDGET:  # aliases revisit shared nodes, so this also counts their expansions
            return None, problems
        children: list[tuple[KeyPath, yaml.Node, int]] = []
        if isinstance(node, yaml.MappingNode):
            first_at: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in first_at and key_node.tag != "tag:yaml.org,2002:merge":
                    problems.append((line, f"duplicate key {key!r} (first at line {first_at[key]})"))
                first_at.setdefault(key, line)
                children.append(((*path, key), value_node, line))
        elif isinstance(node, yaml.SequenceNode):
            children = [((*path, i), item, item.start_mark.line + 1) for i, item in enumerate(node.value)]
        for child_path, child, line in children:
            lines.setdefault(child_path, line)
            stack.append((child_path, child))
    return lines, problems


def line_of(lines: Mapping[KeyPath, int], loc: Sequence[str | int]) -> int:
    """The line of `loc`, or of its nearest enclosing key when `loc` is not in the file (a missing key)."""
    path = tuple(loc)
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def describe(error: ErrorDetails, models: Models) -> str:
    """One pydantic error as a sentence for marketing, naming the key by its dotted path."""
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "missing":
        return f"missing required key {dotted(loc)!r}"
    if kind == "extra_forbidden":
        parent = tuple("*" if isinstance(p, int) else p for p in loc[:-1])
        model = models.get(parent)
        close = difflib.get_close_matches(str(loc[-1]), keys_of(model), n=1) if model else []
        return f"unknown key {dotted(loc)!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "greater_than_equal":
        return f"{dotted(loc)}: must be {error.get('ctx', {}).get('ge')} or more"
    return f"{dotted(loc)}: {_FRIENDLY.get(kind, error['msg'])}"


def dotted(path: Sequence[str | int]) -> str:
    """A key path as marketing writes it: `steps[0].template`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a bad mapping key; the key itself names it
            text += f".{part}" if text else part
    return text


def keys_of(model: type[BaseModel]) -> list[str]:
    """The YAML keys a model accepts (aliases where it has them)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def is_int(value: Any) -> TypeGuard[int]:
    """True for a YAML whole number (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)
