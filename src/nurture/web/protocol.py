"""uvicorn's httptools protocol with limits on a request's head and on how long a client takes to send it.

uvicorn bounds a request's head only under h11 (`h11_max_incomplete_event_size`); under httptools a header
grows until memory runs out, and a client that sends a byte now and then keeps its connection for ever. Here:

- the request target (path and query) is at most `max_request_line_bytes`, else 414;
- the names and values of a request's headers add up to at most `max_header_bytes`, and there are at most
  `max_header_count` of them, else 431; the raw bytes fed to the parser before the head is complete are
  capped to match, so no header is buffered past the limit while it is still arriving;
- a request's line and headers must all arrive within `header_timeout_s` of its first byte (of the
  connection, for its first request), else 408. Between requests uvicorn's keep-alive timeout applies.

Each refusal is one short plain-text answer with `Connection: close`, and the connection is closed. A
refusal raised in a parser callback (414, 431 by header) passes through uvicorn's parser-error path, which
logs its one "Invalid HTTP request received." warning; the byte cap and the 408 log nothing.

What this leans on: `on_message_begin`, `on_url`, `on_header`, `on_headers_complete` and
`on_message_complete` are httptools' parser callbacks (its API, not uvicorn's); from uvicorn it takes
`STATUS_LINE`, `self.url`, `self.loop`, `self.transport` and `send_400_response`, all present from uvicorn
0.30 (the floor in pyproject.toml) on. A uvicorn that renamed one fails closed (an import error, or every
request refused, as tests/attacks/test_server_limits.py would show), never open.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from nurture.settings import Settings
from nurture.web.app import SECURITY_HEADERS

_FRAMING: Final = 64  # the method, the version and the CRLFs around a request line and its headers
_SECURITY: Final = b"".join(f"{k.lower()}: {v}\r\n".encode("latin-1") for k, v in SECURITY_HEADERS.items())


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_request_line_bytes: int
    max_header_bytes: int
    max_header_count: int
    header_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> HeadLimits:
        return cls(
            settings.max_request_line_bytes,
            settings.max_header_bytes,
            settings.max_header_count,
            settings.header_timeout_s,
        )

    @property
    def head_bytes(self) -> int:
        """The most raw bytes a request's head within every limit can take (": " and CRLF per header)."""
        return self.max_request_line_bytes + self.max_header_bytes + 4 * self.max_header_count + _FRAMING


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` under `limits` (a subclass per server sets them: see `bounded_httptools`)."""

    limits: ClassVar[HeadLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # from a request's first byte (or the connection's start) to its last header
        self._head_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        # Set by a parser callback before it raises: httptools turns the error into a parser error, which
        # uvicorn answers with send_400_response.
        self._refusal: _Refused | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        try:
            while data and self._in_head and not self.transport.is_closing():
                room = self.limits.head_bytes - self._head_bytes
                if room <= 0:
                    raise _Refused(431, f"request headers over {self.limits.max_header_bytes} bytes")
                chunk, data = data[:room], data[room:]
                self._head_bytes += len(chunk)
                super().data_received(chunk)
            if data and not self.transport.is_closing():
                super().data_received(data)
        except _Refused as exc:
            self._refuse(exc.status, exc.reason)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            raise self._refused(414, f"the request target is over {self.limits.max_request_line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > self.limits.max_header_count:
            raise self._refused(431, f"more than {self.limits.max_header_count} request headers")
        if self._header_bytes > self.limits.max_header_bytes:
            raise self._refused(431, f"request headers over {self.limits.max_header_bytes} bytes")
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(self._refusal.status, self._refusal.reason)

    def _refused(self, status: int, reason: str) -> _Refused:
        self._refusal = _Refused(status, reason)
        return self._refusal

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"the request's headers took over {self.limits.header_timeout_s:g} s")

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        body = f"{reason}\n".encode("ascii")
        head = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        length = f"content-length: {len(body)}\r\n".encode("ascii")
        self.transport.write(b"".join((STATUS_LINE[status], head, _SECURITY, length, b"\r\n", body)))
        self.transport.close()


def bounded_httptools(limits: HeadLimits) -> type[BoundedHttpToolsProtocol]:
    """A `BoundedHttpToolsProtocol` class under `limits`, for uvicorn's `http` option."""
    return type("BoundedHttpTools", (BoundedHttpToolsProtocol,), {"limits": limits})
