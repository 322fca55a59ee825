"""Serve the tracking web with uvicorn on the caller's event loop, leaving signals to the caller.

uvicorn's `Server.serve()` installs its own SIGINT/SIGTERM handlers for as long as it runs (and re-raises the
signal afterwards). In `nurture run` the web shares the process with the scheduler and the worker, so one
handler must decide when everything stops: the server here never touches signal handlers, and is stopped by
setting `server.should_exit = True`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import uvicorn

from nurture.runtime import Runtime
from nurture.web.app import create_app

STOP_TIMEOUT_S: Final = 10  # in-flight requests get this long to finish once we are told to stop


@dataclass(frozen=True, slots=True)
class WebAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(
    runtime: Runtime, address: WebAddress, *, on_event: Callable[[int], None] | None = None
) -> uvicorn.Server:
    """Return a uvicorn server for `create_app(runtime, on_event=...)` that runs until `should_exit` is set.

    Access logs are off: tracking and unsubscribe URLs carry tokens that act for a lead, and logs carry ids
    only.
    """
    config = uvicorn.Config(
        create_app(runtime, on_event=on_event),
        host=address.host,
        port=address.port,
        lifespan="off",
        ws="none",
        log_config=None,  # keep nurture's logging setup
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=STOP_TIMEOUT_S,
    )
    return _Server(config)
