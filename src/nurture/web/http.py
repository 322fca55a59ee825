"""Small helpers shared by the tracking and API endpoints: bounded request bodies and JSON answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


class BodyError(Exception):
    """A request body that cannot be used: too large, or not JSON. Carries the status to answer with."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code, self.message = status_code, message


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """Return the request body parsed as JSON, read up to `max_bytes` and no further.

    Raises:
        BodyError: 413 for a larger body, 400 for one that is not UTF-8 JSON.
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
    try:
        return json.loads(b"".join(chunks), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise BodyError(400, f"the body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; PostgreSQL's jsonb does not


def json_error(
    status_code: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A JSON error answer: `{"error": message, **extra}`."""
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)
