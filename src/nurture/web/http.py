"""Small helpers shared by the endpoints: bounded request bodies (JSON or a form) and JSON answers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import partial
from itertools import accumulate
from operator import sub
from typing import Any, Final
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse


class BodyError(Exception):
    """A request body that cannot be used: too large, or not JSON. Carries the status to answer with."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code, self.message = status_code, message


# A JSON string as the scanner reads it (unrolled: linear on any input), and what is left that is no bracket.
_JSON_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_BRACKET_STEPS: Final = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_PARSE_ON_LOOP_BYTES: Final = 64 * 1024  # a larger body is checked and parsed in a worker thread


async def read_json(request: Request, *, max_bytes: int, max_depth: int) -> Any:
    """Return the request body parsed as JSON, read up to `max_bytes` and no further, and nested at most
    `max_depth` arrays or objects deep (checked before parsing: `json.loads` recurses once per level).

    Raises:
        BodyError: 413 for a larger body, 400 for one that is not UTF-8 JSON or is nested deeper.
    """
    body = await read_body(request, max_bytes=max_bytes)
    if len(body) <= _PARSE_ON_LOOP_BYTES:
        return parse_json(body, max_depth=max_depth)
    return await anyio.to_thread.run_sync(partial(parse_json, body, max_depth=max_depth))


def parse_json(body: bytes, *, max_depth: int) -> Any:
    """`body` parsed as UTF-8 JSON nested at most `max_depth` deep (see `read_json`).

    Raises:
        BodyError: 400 for a body that is not UTF-8 JSON or is nested deeper.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BodyError(400, "the body is not valid JSON: it is not UTF-8") from None
    # Fewer brackets than the limit cannot nest past it: most bodies skip the scan.
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise BodyError(400, f"the body is JSON nested deeper than {max_depth} arrays or objects")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise BodyError(400, f"the body is not valid JSON: {exc}") from None


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in `text`, counting brackets outside strings, in linear time.

    For valid JSON this is its nesting depth; for invalid JSON it is at least the depth the parser reaches
    before it stops at the first error (up to there the two read the same strings).
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii").translate(_BRACKET_STEPS)
    if not brackets:
        return 0
    # Each opening bracket is 2 and each closing one 0: the running sum less the count is the depth.
    return max(0, int(max(map(sub, accumulate(brackets), range(1, len(brackets) + 1)))))


async def read_form(request: Request, *, max_bytes: int) -> dict[str, str]:
    """Return an `application/x-www-form-urlencoded` body as a dict (the first value of each field).

    Raises:
        BodyError: 415 for another content type, 413 for a larger body, 400 for one that is not UTF-8.
    """
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BodyError(415, "the body must be application/x-www-form-urlencoded")
    body = await read_body(request, max_bytes=max_bytes)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise BodyError(400, "the form is not UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """Return the request body, read up to `max_bytes` and no further.

    Raises:
        BodyError: 413 for a larger body.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, f"the body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyError(413, f"the body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; PostgreSQL's jsonb does not


def json_error(
    status_code: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A JSON error answer: `{"error": message, **extra}`."""
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


def media_quality(accept: str | None, media_type: str) -> float:
    """How much an `Accept` header wants `media_type` (its q, through `type/*` and `*/*`); 1.0 when absent."""
    if not accept:
        return 1.0
    kind = media_type.partition("/")[0]
    found: dict[str, float] = {}
    for part in accept.lower().split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    weight = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    weight = 0.0
        found.setdefault(media, weight)
    for candidate in (media_type, f"{kind}/*", "*/*"):
        if candidate in found:
            return found[candidate]
    return 0.0


def prefers_json(request: Request) -> bool:
    """True when the client asks for JSON over HTML (`Accept: application/json`)."""
    accept = request.headers.get("accept")
    return media_quality(accept, "application/json") > media_quality(accept, "text/html")


def is_browser_navigation(request: Request) -> bool:
    """True for a browser loading a page: it names `text/html` in `Accept` and does not prefer JSON."""
    accept = (request.headers.get("accept") or "").lower()
    return "text/html" in accept and media_quality(accept, "text/html") > 0 and not prefers_json(request)
