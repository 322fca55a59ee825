"""The Jinja2 sandbox that marketing's templates run in, with limits on work, size and time.

Jinja2's `ImmutableSandboxedEnvironment` already stops attribute walks (`__globals__`, `__class__`, ...),
`str.format` tricks and mutation of lists and dicts. What it does not stop is a template that is merely
expensive: `{{ 'x' * 10**9 }}`, `{{ '%999999999s' % 1 }}`, `{{ 'a'|center(10**9) }}`, nested loops over
`range(100000)` or a macro that calls itself. Here every such operation is checked before it runs:

- `*`, `**` and `%` are intercepted: no result may exceed MAX_VALUE_CHARS, no exponent MAX_EXPONENT;
- format strings (`%`, `str.format`, the `format` filter) may not ask for widths or precisions of 5+ digits;
- integer arguments of calls and filters are capped at MAX_INT_ARGUMENT (`center`, `ljust`, `indent`, ...);
- `range` and every call draw from one budget of MAX_STEPS per render, and a render stops after MAX_SECONDS;
- the output is streamed and stops past MAX_OUTPUT_CHARS.

A template over a limit fails with `SecurityError`, which the renderer reports as `unsafe: ...`.

Every limit is checked *before* the work it bounds starts, because the time check is cooperative (it runs
between steps, so one `str.join` or `lipsum` call of a billion characters would run to its end, or to a
MemoryError, before it could look at the clock). Rendering in a separate, killable process would bound the
time of anything, but costs a process per render on the send path and still needs the size limits to keep
that process's memory small. So a value's *size* (`size_of`: characters of strings and bytes, items of
containers, counted through every reference, so `['x' * 999999] * 999999` is 10**12) is known before it is
made:

- `*` on str, bytes, list and tuple: the operand's size times the count; `+` and `~`: the sizes summed;
- `%`, `str.format` and the `format` filter: the format's length plus, per field, its widest width and the
  size of the arguments;
- the `join` filter and `str.join`: the items' sizes plus the separator once per item; `replace` (filter and
  method): the growth per occurrence times the occurrences; `indent`, `wordwrap`'s `wrapstring` and
  `expandtabs`: the growth per line or tab times their number; `center`, `ljust`, `rjust`, `zfill`: their
  width;
- every argument of every call, filter and operator, and every value printed by `{{ }}`, is at most
  MAX_VALUE_CHARS; measuring one looks at the clock too;
- `lipsum` may make at most MAX_LIPSUM_WORDS words (`n` paragraphs of up to `max` words).
"""

from __future__ import annotations

import functools
import operator
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

MAX_OUTPUT_CHARS: Final = 2_000_000  # an email body past 2 MB is refused by most providers anyway
MAX_VALUE_CHARS: Final = 1_000_000
MAX_INT_ARGUMENT: Final = 10_000
MAX_EXPONENT: Final = 100
MAX_STEPS: Final = 200_000  # loop iterations over range() plus calls, per render
MAX_SECONDS: Final = 2.0
MAX_LIPSUM_WORDS: Final = 10_000  # lipsum(n, html, min, max) makes up to n * max words
_CLOCK_EVERY: Final = 1024  # steps between two looks at the monotonic clock

# A width or precision of five digits or more, or one taken from the arguments (`*`).
_WIDE_PERCENT: Final = re.compile(r"%[-#0 +]*(?:\d{5,}|\*|\d*\.(?:\d{5,}|\*))")
_WIDE_BRACE: Final = re.compile(r"\{[^{}]*:[^{}]*(?:\d{5,}|\{)[^{}]*\}")
# Filters and str methods whose integer arguments say how long their result is.
_WIDTH_FILTERS: Final = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
_WIDTH_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_PERCENT_FIELD: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")
_BRACE_FIELD: Final = re.compile(r"\{[^{}]*\}")
_DIGITS: Final = re.compile(r"\d+")
_SIZED: Final = (str, bytes, bytearray)
_CONTAINERS: Final = (list, tuple, set, frozenset, dict)


class _Budget:
    """The work one render may still do."""

    __slots__ = ("deadline", "sizes", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS
        # The sizes of large containers measured in this render, by id, each kept alive with its size so
        # the id is not reused: templates cannot change a container (the immutable sandbox).
        self.sizes: dict[int, tuple[object, int]] = {}

    def spend(self, steps: int = 1) -> None:
        before, self.steps = self.steps, self.steps + steps
        if self.steps > MAX_STEPS:
            raise SecurityError(f"the template does more than {MAX_STEPS} loop steps and calls")
        if before // _CLOCK_EVERY != self.steps // _CLOCK_EVERY:
            self.check_clock()

    def check_clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise SecurityError(f"the template took longer than {MAX_SECONDS:g} s to render")


_budget: ContextVar[_Budget | None] = ContextVar("nurture_render_budget", default=None)


def _spend(steps: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend(steps)


def _budgeted_range(*args: int) -> Iterator[int]:
    for value in args:
        _check_int(value)
    for number in range(*args):
        _spend()
        yield number


def _check_int(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARGUMENT:
        raise SecurityError(f"the number {value} is larger than templates may use ({MAX_INT_ARGUMENT})")


def _check_format(text: Any) -> None:
    if isinstance(text, str) and (_WIDE_PERCENT.search(text) or _WIDE_BRACE.search(text)):
        raise SecurityError("format widths and precisions are limited to 4 digits")


def size_of(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """The size of `value`: characters of a string, bytes of bytes, and for a container itself (1) plus
    its items' sizes, counted through every reference; anything else is 1. Counting stops past `limit`."""
    if isinstance(value, _SIZED):
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return 1
    budget = _budget.get()
    known = budget.sizes.get(id(value)) if budget is not None else None
    if known is not None:
        return known[1]
    total = _measure(value, limit, budget)
    if budget is not None and len(value) >= _CLOCK_EVERY:
        budget.sizes[id(value)] = (value, total)
    return total


def _measure(value: Any, limit: int, budget: _Budget | None, memo: dict[int, int] | None = None) -> int:
    """`size_of` a container; `memo` holds the containers measured so far, so a list shared a thousand
    times is walked once. A container stops being counted once it is past `limit`."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if budget is not None and len(value) >= _CLOCK_EVERY:
        budget.check_clock()
    total = 1
    items = (*value.keys(), *value.values()) if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, _SIZED):
            total += len(item)
        elif isinstance(item, _CONTAINERS):
            total += _measure(item, limit - total, budget, memo)
        else:
            total += 1
        if total > limit:
            break
    memo[id(value)] = total
    return total


def _check_size(value: Any) -> Any:
    if size_of(value) > MAX_VALUE_CHARS:
        raise SecurityError(f"a value of more than {MAX_VALUE_CHARS} characters or items")
    return value


def _refuse_over(estimate: int, what: str) -> None:
    if estimate > MAX_VALUE_CHARS:
        raise SecurityError(f"{what} would make more than {MAX_VALUE_CHARS} characters or items")


def _check_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        _check_size(value)


def _product_size(left: Any, right: Any) -> int:
    """How large `left * right` would be, for a sequence times a number; 0 otherwise."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(seq, _SIZED):
            return len(seq) * max(times, 0)
        if isinstance(times, int) and isinstance(seq, list | tuple):
            return 1 + (size_of(seq) - 1) * max(times, 0)  # the list itself once, its items `times` times
    return 0


def _format_size(text: Any, arguments: Any) -> int:
    """How large `text % arguments` or `text.format(*arguments)` could be: the format, plus per field its
    widest width or precision and every argument's size."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("latin-1")
    if not isinstance(text, str):
        return 0
    widths = [int(w or 0) for m in _PERCENT_FIELD.finditer(text) for w in m.groups()]
    braces = _BRACE_FIELD.findall(text)
    widths += [int(w) for field in braces for w in _DIGITS.findall(field.partition(":")[2])]
    fields = text.count("%") + len(braces)
    return len(text) + fields * (max(widths, default=0) + size_of(arguments))


def _occurrences(text: str | bytes | bytearray, part: Any, count: Any) -> int:
    found = text.count(part) if len(part) else len(text) + 1
    return min(found, count) if isinstance(count, int) and count >= 0 else found


def _replace_size(text: Any, old: Any, new: Any, count: Any = None) -> int:
    if not (isinstance(text, _SIZED) and isinstance(old, _SIZED) and isinstance(new, _SIZED)):
        return 0
    return len(text) + _occurrences(text, old, count) * max(len(new) - len(old), 0)


def _join_size(separator: Any, items: Any) -> int:
    """How long `separator.join(items)` would be: the items' sizes and the separator between each two."""
    if isinstance(items, _SIZED):
        content = len(items)
    elif isinstance(items, _CONTAINERS):
        content = size_of(items) - 1
    else:
        return 0  # an iterator: the filters make it a list first (`_bounded_list`)
    between = len(separator) if isinstance(separator, _SIZED) else 1
    return content + max(len(items) - 1, 0) * between


def _lines_size(text: Any, per_line: Any, separator: str | bytes = "\n") -> int:
    """How large `text` grows when each of its lines (or whatever `separator` ends) gains `per_line`."""
    if not isinstance(text, _SIZED) or isinstance(text, str) != isinstance(separator, str):
        return 0
    grow = len(per_line) if isinstance(per_line, _SIZED) else per_line if isinstance(per_line, int) else 0
    return len(text) + (text.count(separator) + 1) * max(grow, 0)  # type: ignore[arg-type]


def _wordwrap_size(text: Any, width: Any = 79, *rest: Any, wrapstring: Any = None, **_: Any) -> int:
    wrap = wrapstring if wrapstring is not None else (rest[1] if len(rest) > 1 else "\n")
    if not isinstance(text, str) or not isinstance(width, int):
        return 0
    lines = text.count("\n") + 1 + len(text) // max(width, 1)
    return len(text) + lines * (len(wrap) if isinstance(wrap, str) else 1)


def _filter_estimate(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """How large the `name` filter's result could be, for the filters whose result may outgrow their input."""
    value, rest = (args[0], args[1:]) if args else (None, ())
    if name == "join":
        return _join_size(rest[0] if rest else kwargs.get("d", ""), value)
    if name == "replace" and len(rest) >= 2:
        return _replace_size(value, rest[0], rest[1], rest[2] if len(rest) > 2 else kwargs.get("count"))
    if name == "indent":
        return _lines_size(value, rest[0] if rest else kwargs.get("width", 4))
    if name == "wordwrap":
        return _wordwrap_size(value, *rest, **kwargs)
    if name == "format":
        return _format_size(value, (rest, kwargs))
    return 0


def _method_estimate(name: str, target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """How large a str or bytes method's result could be, for the methods that may outgrow their string."""
    if name == "join" and args:
        return _join_size(target, args[0])
    if name == "replace" and len(args) >= 2:
        return _replace_size(target, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count"))
    if name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        return _lines_size(target, size, "\t" if isinstance(target, str) else b"\t")
    if name in ("format", "format_map"):
        return _format_size(target, (args, kwargs))
    return 0


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's `lipsum`, refused before it starts when it could make more than MAX_LIPSUM_WORDS words."""
    numbers = (n, min, max)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
        raise SecurityError("lipsum takes whole numbers")
    longest = min if min > max else max
    if n < 0 or min < 0 or n * longest > MAX_LIPSUM_WORDS:
        raise SecurityError(f"lipsum is limited to {MAX_LIPSUM_WORDS} words (n paragraphs of max words)")
    return generate_lorem_ipsum(n, html, min, max)  # Markup when html: its <p> tags are ours


def _bounded_list(items: Iterator[Any]) -> list[Any]:
    """The items of an iterator (a `map` or `select` result) as a list, refused as soon as they are larger
    than MAX_VALUE_CHARS together: a filter such as `join` or `list` would otherwise hold them all first."""
    found: list[Any] = []
    size = 0
    for item in items:
        size += size_of(item) + 1
        _refuse_over(size, "this sequence")
        found.append(item)
    return found


def _is_runtime_argument(value: Any) -> bool:
    """Whether a filter's argument is one Jinja passes itself (the context, eval context or environment)."""
    return isinstance(value, Context | EvalContext | Environment)


def _limited_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps Jinja's pass_context/pass_eval_context marker
    def limited(*args: Any, **kwargs: Any) -> Any:
        _spend()
        passed = sum(1 for a in args[:2] if _is_runtime_argument(a))
        if len(args) > passed and isinstance(args[passed], Iterator):
            args = (*args[:passed], _bounded_list(args[passed]), *args[passed + 1 :])
        values = args[passed:]
        _check_arguments(values, kwargs)
        if name in _WIDTH_FILTERS:
            for value in (*values, *kwargs.values()):
                _check_int(value)
        if name == "format" and values:
            _check_format(values[0])  # do_format(value, *args): the format string comes first
        _refuse_over(_filter_estimate(name, values, kwargs), f"the {name} filter")
        return _check_size(function(*args, **kwargs))

    return limited


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` (concatenation) going through `LimitedSandbox.concat_limited`."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            joined = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            joined = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.concat_limited({joined})((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the limits in this module's docstring."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _LimitedCodeGenerator

    def __init__(self, loader: FileSystemLoader, *, autoescape: bool, finalize: Callable[[Any], Any]) -> None:
        super().__init__(
            loader=loader,
            autoescape=autoescape,
            undefined=StrictUndefined,  # a typo such as `lead.frist_name` fails instead of printing nothing
            finalize=lambda value: finalize(_check_size(value)),  # measured before it is made text
            auto_reload=False,  # templates are read once per process; no stat() per render
        )
        self.globals["range"] = _budgeted_range
        self.globals["lipsum"] = _bounded_lipsum
        for name, function in list(self.filters.items()):
            self.filters[name] = _limited_filter(name, function)

    def call_binop(self, context: Context, operator_name: str, left: Any, right: Any) -> Any:
        del context  # the operators need none
        _spend()
        _check_arguments((left, right), {})
        if operator_name == "*":
            _refuse_over(_product_size(left, right), "this multiplication")
        if operator_name == "+":
            _refuse_over(size_of(left) + size_of(right), "this addition")
        if operator_name == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponents are limited to {MAX_EXPONENT}")
        if operator_name == "%":
            _check_format(left)
            _refuse_over(_format_size(left, right), "this % format")
        return _check_size(_BINOPS[operator_name](left, right))

    def concat_limited(self, joined: Callable[[Any], str]) -> Callable[[Any], str]:
        """`~`: the parts' sizes are summed before they are joined (`joined` is Jinja's str_join or
        markup_join, chosen by autoescaping)."""

        def limited(parts: tuple[Any, ...]) -> str:
            _spend()
            _refuse_over(sum(size_of(part) for part in parts), "this ~ concatenation")
            return joined(parts)

        return limited

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        _check_arguments(args, kwargs)
        name = getattr(__obj, "__name__", None)
        if name in _WIDTH_METHODS:
            for value in (*args, *kwargs.values()):
                _check_int(value)
        # str.format and str.format_map come wrapped by the sandbox; the format string is the bound self.
        target = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        _check_format(target)
        if isinstance(target, _SIZED) and isinstance(name, str):
            _refuse_over(_method_estimate(name, target, args, kwargs), f"{type(target).__name__}.{name}")
        return _check_size(super().call(__context, __obj, *args, **kwargs))


_BINOPS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "*": operator.mul,
    "**": operator.pow,
    "%": operator.mod,
    "+": operator.add,
}


def render_limited(template: Template, context: Mapping[str, Any]) -> str:
    """Render `template`, stopping with `SecurityError` once it is over a limit of work, time or size."""
    token = _budget.set(_Budget())
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"the rendered template is longer than {MAX_OUTPUT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _budget.reset(token)
