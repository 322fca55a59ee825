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
"""

from __future__ import annotations

import functools
import operator
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

from jinja2 import FileSystemLoader, StrictUndefined, Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS: Final = 2_000_000  # an email body past 2 MB is refused by most providers anyway
MAX_VALUE_CHARS: Final = 1_000_000
MAX_INT_ARGUMENT: Final = 10_000
MAX_EXPONENT: Final = 100
MAX_STEPS: Final = 200_000  # loop iterations over range() plus calls, per render
MAX_SECONDS: Final = 2.0
_CLOCK_EVERY: Final = 1024  # steps between two looks at the monotonic clock

# A width or precision of five digits or more, or one taken from the arguments (`*`).
_WIDE_PERCENT: Final = re.compile(r"%[-#0 +]*(?:\d{5,}|\*|\d*\.(?:\d{5,}|\*))")
_WIDE_BRACE: Final = re.compile(r"\{[^{}]*:[^{}]*(?:\d{5,}|\{)[^{}]*\}")
# Filters and str methods whose integer arguments say how long their result is.
_WIDTH_FILTERS: Final = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
_WIDTH_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class _Budget:
    """The work one render may still do."""

    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def spend(self, steps: int = 1) -> None:
        before, self.steps = self.steps, self.steps + steps
        if self.steps > MAX_STEPS:
            raise SecurityError(f"the template does more than {MAX_STEPS} loop steps and calls")
        if before // _CLOCK_EVERY != self.steps // _CLOCK_EVERY and time.monotonic() > self.deadline:
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


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple) and len(value) > MAX_VALUE_CHARS:
        raise SecurityError(f"a value of more than {MAX_VALUE_CHARS} items")
    return value


def _product_size(left: Any, right: Any) -> int:
    """How long `left * right` would be, for a sequence times a number; 0 otherwise."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            return len(seq) * max(times, 0)
    return 0


def _limited_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps Jinja's pass_context/pass_eval_context marker
    def limited(*args: Any, **kwargs: Any) -> Any:
        _spend()
        if name in _WIDTH_FILTERS:
            for value in (*args, *kwargs.values()):
                _check_int(value)
        if name == "format" and args:
            _check_format(args[0])  # do_format(value, *args): the format string comes first
        return _check_size(function(*args, **kwargs))

    return limited


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the limits in this module's docstring."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, loader: FileSystemLoader, *, autoescape: bool, finalize: Callable[[Any], Any]) -> None:
        super().__init__(
            loader=loader,
            autoescape=autoescape,
            undefined=StrictUndefined,  # a typo such as `lead.frist_name` fails instead of printing nothing
            finalize=finalize,
            auto_reload=False,  # templates are read once per process; no stat() per render
        )
        self.globals["range"] = _budgeted_range
        for name, function in list(self.filters.items()):
            self.filters[name] = _limited_filter(name, function)

    def call_binop(self, context: Context, operator_name: str, left: Any, right: Any) -> Any:
        del context  # the operators need none
        _spend()
        if operator_name == "*" and _product_size(left, right) > MAX_VALUE_CHARS:
            raise SecurityError(f"a value of more than {MAX_VALUE_CHARS} items")
        if operator_name == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponents are limited to {MAX_EXPONENT}")
        if operator_name == "%":
            _check_format(left)
        return _check_size(_BINOPS[operator_name](left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        if getattr(__obj, "__name__", None) in _WIDTH_METHODS:
            for value in (*args, *kwargs.values()):
                _check_int(value)
        # str.format and str.format_map come wrapped by the sandbox; the format string is the bound self.
        target = getattr(__obj, "__wrapped__", __obj)
        _check_format(getattr(target, "__self__", None))
        return _check_size(super().call(__context, __obj, *args, **kwargs))


_BINOPS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "*": operator.mul,
    "**": operator.pow,
    "%": operator.mod,
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
