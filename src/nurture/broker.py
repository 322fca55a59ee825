"""The message broker: Redis when `NURTURE_REDIS_URL` is set, else an in-process one, with the middleware
every worker needs (an asyncio loop for the async actors, and the runtime opened on that loop).

The in-process broker is Dramatiq's in-memory broker: enough for the embedded default because the database,
not the broker, is the source of truth: whatever is in memory when the process stops is found again by the
next tick once its claim lapses.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, Middleware

from nurture.errors import BrokerUnavailableError
from nurture.runtime import Runtime
from nurture.settings import Settings, redact_url

log = logging.getLogger(__name__)


class RuntimeMiddleware(Middleware):
    """Opens the runtime when a worker boots, and closes it on the worker's event loop once it stopped."""

    def __init__(self, factory: Callable[[], Runtime]) -> None:
        self._factory = factory
        self._runtime: Runtime | None = None

    def current(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("no runtime: the worker has not booted")
        return self._runtime

    def before_worker_boot(self, _broker: Any, _worker: Any) -> None:
        # Before the worker threads start consuming; nothing connects until first use, so no loop is needed.
        self._runtime = self._factory()
        # The catalog and compiled templates live as long as the worker: keep them out of every collection.
        gc.freeze()

    def after_worker_shutdown(self, _broker: Any, _worker: Any) -> None:
        # After the worker threads have finished their messages (which still use the runtime), and before
        # the AsyncIO middleware, added earlier, stops the event loop (after-hooks run in reverse order).
        runtime, self._runtime = self._runtime, None
        loop_thread = get_event_loop_thread()
        if runtime is not None and loop_thread is not None:
            loop_thread.run_coroutine(runtime.aclose())


def setup_broker(settings: Settings, runtime_factory: Callable[[], Runtime]) -> dramatiq.Broker:
    """Build the broker for `settings`, add the middleware, and make it Dramatiq's global broker."""
    broker: dramatiq.Broker
    if settings.redis_url:
        # Bounded socket waits: a Redis that accepts connections but never answers must not hang a request.
        # (Timeouts given beside url= are ignored: the broker builds its pool from the URL alone.)
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        _check_reachable(client, settings.redis_url)
        broker = RedisBroker(client=client)  # type: ignore[no-untyped-call]
    else:
        broker = StubBroker()
        broker.emit_after("process_boot")
    broker.add_middleware(AsyncIO())
    broker.add_middleware(RuntimeMiddleware(runtime_factory))
    dramatiq.set_broker(broker)
    return broker


def _check_reachable(client: redis.Redis, url: str) -> None:
    """Fail at start-up when Redis does not answer: a worker would otherwise retry, and wait, forever."""
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BrokerUnavailableError(f"cannot connect to Redis at {redact_url(url)}: {reason}") from exc


def runtime_middleware(broker: dramatiq.Broker) -> RuntimeMiddleware:
    for middleware in broker.middleware:
        if isinstance(middleware, RuntimeMiddleware):
            return middleware
    raise RuntimeError("broker was not built by setup_broker()")
