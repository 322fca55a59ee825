"""Process shapes: everything in one process (`run`), a scheduler, a worker, the web, or a single tick.

Each builds the runtime, the broker and its actors, starts what it needs and stops it cleanly on SIGINT or
SIGTERM: a worker finishes the messages it holds before it exits, the web the requests it is answering.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

import uvicorn
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from nurture.actors import Actors, declare_actors
from nurture.broker import setup_broker
from nurture.catalog import Catalog, missing_postal_address
from nurture.clock import Clock
from nurture.db.migrate import upgrade
from nurture.errors import NurtureError
from nurture.flows.send_tally import SendTally
from nurture.runtime import Runtime, build_runtime
from nurture.scheduler import Scheduler, TickResult
from nurture.settings import Settings
from nurture.web.server import WebAddress, build_server

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_MS = 60_000
WORKER_POLL_MS = 100


@dataclass(frozen=True, slots=True)
class Service:
    runtime: Runtime
    actors: Actors


async def open_service(
    settings: Settings, *, clock: Clock | None = None, tally: SendTally | None = None
) -> Service:
    """Build the runtime and the broker; the embedded database is migrated on the way.

    `tally`, when given, counts the outcome of every send batch this process runs.
    Fails at once (`DatabaseUnavailableError`, `BrokerUnavailableError`) when the database or Redis does
    not answer, rather than serving while every job fails.
    """
    runtime = build_runtime(settings, clock=clock)
    _warn_of_unsendable(runtime.catalog, settings.postal_address)
    try:
        if settings.is_embedded:
            await upgrade(runtime.db)
        else:
            await runtime.db.check_reachable()
        broker = setup_broker(settings, _worker_runtime_factory(settings, runtime.clock, runtime.catalog))
    except BaseException:
        await runtime.aclose()
        raise
    on_outcomes = tally.add if tally is not None else None
    actors = declare_actors(broker, send_batch=settings.send_batch_size, on_outcomes=on_outcomes)
    return Service(runtime=runtime, actors=actors)


def _warn_of_unsendable(catalog: Catalog, postal_address: str | None) -> None:
    """Say at start-up which campaigns' emails will be refused (failed, with the reason) as they fall due."""
    for campaign in catalog.ordered():
        problem = missing_postal_address(campaign, postal_address)
        if problem is not None:
            log.warning("campaign %s will send nothing: %s", campaign.id, problem)


def _worker_runtime_factory(settings: Settings, clock: Clock, catalog: Catalog) -> Callable[[], Runtime]:
    return lambda: build_runtime(settings, clock=clock, catalog=catalog)


def start_worker(service: Service, threads: int) -> Worker:
    # An idle Redis consumer sleeps up to worker_timeout between polls; Dramatiq's 1 s default would add
    # up to a second to every queue hop between an engagement event and its rep alert.
    worker = Worker(service.actors.broker, worker_threads=threads, worker_timeout=WORKER_POLL_MS)
    worker.start()
    return worker


def drain(service: Service, threads: int) -> None:
    """Run the queued work in-process until every queue is empty (blocking)."""
    worker = start_worker(service, threads)
    try:
        wait_until_drained(service.actors, worker)
    finally:
        worker.stop(timeout=WORKER_STOP_TIMEOUT_MS)


def wait_until_drained(actors: Actors, worker: Worker) -> None:
    """Block until every queue is empty and `worker` has finished what it took."""
    for queue in actors.queues:
        if isinstance(actors.broker, StubBroker):  # in-process: a failed message must not stop the drain
            actors.broker.join(queue, fail_fast=False)
        else:
            actors.broker.join(queue)
    worker.join()


async def run_tick(settings: Settings, *, clock: Clock, drain_queue: bool) -> TickResult:
    """One scheduler pass; with `drain_queue`, the sends it queued run here and their outcomes are counted."""
    tally = SendTally()
    service = await open_service(settings, clock=clock, tally=tally)
    try:
        scheduler = Scheduler(service.runtime, service.actors)
        result = await scheduler.tick(clock.now())
        if drain_queue:
            await asyncio.to_thread(drain, service, settings.worker_threads)
            result = replace(result, sends=tally.counts())
        return result
    finally:
        await service.runtime.aclose()


async def run_forever(
    settings: Settings, *, with_scheduler: bool, with_worker: bool, web: WebAddress | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, or until the tracking web (when `web` is given) stops on its own."""
    service = await open_service(settings)
    stop = asyncio.Event()
    server = build_server(service.runtime, web, on_event=service.actors.enqueue_rescore) if web else None
    web_task = asyncio.create_task(_serve_web(server, stop)) if server is not None else None
    worker = start_worker(service, settings.worker_threads) if with_worker else None
    scheduler = Scheduler(service.runtime, service.actors) if with_scheduler else None
    jobs = scheduler.start() if scheduler else None
    log.info("started scheduler=%s worker=%s web=%s", with_scheduler, with_worker, web)
    try:
        await _until_signalled(stop)
    finally:
        log.info("stopping")
        if server is not None:
            server.should_exit = True
        if jobs is not None:
            jobs.shutdown(wait=False)
        if scheduler is not None:
            await scheduler.resign()
        if worker is not None:
            await asyncio.to_thread(worker.stop, WORKER_STOP_TIMEOUT_MS)
        if web_task is not None:
            await asyncio.wait([web_task])  # its requests in flight finish before the database closes
        await service.runtime.aclose()
    if web_task is not None:
        web_task.result()  # a web that could not start fails the command


async def _serve_web(server: uvicorn.Server, stop: asyncio.Event) -> None:
    """Serve until `server.should_exit`; the web stopping by itself stops the whole process."""
    try:
        await server.serve()
    except SystemExit as exc:  # how uvicorn reports that it cannot listen (logged by uvicorn)
        address = WebAddress(server.config.host, server.config.port)
        raise NurtureError(f"the tracking web could not start on {address}") from exc
    finally:
        stop.set()


async def _until_signalled(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
