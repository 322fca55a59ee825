"""A local webhook receiver for tests and benchmarks: http.server on 127.0.0.1 in its own thread.

It records every POST (path, body, arrival time) and answers `status` (200 unless told otherwise). Point an
Apprise `json://` URL at it to receive alerts the way a team's webhook would:

    with WebhookReceiver() as receiver:
        settings = ... alert_urls=receiver.json_url("/alerts") ...
        post = receiver.wait_for(lambda p: "pricing_visit" in p.text, timeout_s=10)

The `webhook_receiver` fixture comes in with
`from tests.webhook_receiver import webhook_receiver_fixture  # noqa: F401`. `received_at` is
`time.perf_counter()` when the whole body has been read, so a caller in the same process can subtract its
own `perf_counter()` send time from it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True, slots=True)
class ReceivedPost:
    """One POST the receiver answered."""

    path: str
    body: bytes
    received_at: float  # time.perf_counter() once the body was read

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: WebhookReceiver) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.receiver = receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received_at = time.perf_counter()
        status = self.server.receiver._record(ReceivedPost(self.path, body, received_at))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the posts are recorded, and a benchmark must not pay for a log line per request


class WebhookReceiver:
    """Records the POSTs it receives in `posts`; `wait_for` blocks until one matches."""

    def __init__(self) -> None:
        self.status = 200  # the answer to every POST from now on
        self._posts: list[ReceivedPost] = []
        self._changed = threading.Condition()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def json_url(self, path: str = "/alerts") -> str:
        """The Apprise URL that posts JSON to `path` on this receiver."""
        return f"json://127.0.0.1:{self.port}{path}"

    @property
    def posts(self) -> list[ReceivedPost]:
        with self._changed:
            return list(self._posts)

    def count(self) -> int:
        with self._changed:
            return len(self._posts)

    def wait_for(self, matches: Callable[[ReceivedPost], bool], *, timeout_s: float) -> ReceivedPost:
        """Return the first post, received so far or later, that `matches`; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for post in self._posts[seen:]:
                    if matches(post):
                        return post
                seen = len(self._posts)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching POST within {timeout_s} s ({seen} received)")
                self._changed.wait(remaining)

    def clear(self) -> None:
        with self._changed:
            self._posts.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, post: ReceivedPost) -> int:
        with self._changed:
            self._posts.append(post)
            self._changed.notify_all()
            return self.status


@pytest.fixture(name="webhook_receiver")
def webhook_receiver_fixture() -> Iterator[WebhookReceiver]:
    """A started `WebhookReceiver`, stopped after the test."""
    with WebhookReceiver() as receiver:
        yield receiver
