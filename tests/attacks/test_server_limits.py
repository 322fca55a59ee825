"""The web server under oversized and slow request heads, over raw TCP to the real server (httptools):
each limit answered at limit - 1 and limit, refused at limit + 1; slow clients are cut off."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from nurture.web.app import SECURITY_HEADERS
from nurture.web.server import fastest_stack
from tests.attacks.conftest import Site, SiteFactory

pytestmark = pytest.mark.integration

LINE, HEADERS, COUNT, TIMEOUT = 1024, 2048, 20, 0.6


@pytest.fixture
async def bounded(site_factory: SiteFactory) -> AsyncIterator[Site]:
    assert fastest_stack()[1] == "httptools"  # the limits under test are the httptools protocol's
    site: Site = await site_factory(
        max_request_line_bytes=LINE,
        max_header_bytes=HEADERS,
        max_header_count=COUNT,
        header_timeout_s=TIMEOUT,
        keep_alive_s=1,
    )
    async with site.client:
        yield site


def _address(site: Site) -> tuple[str, int]:
    host, port = site.base_url.removeprefix("http://").split(":")
    return host, int(port)


async def _exchange(site: Site, request: bytes) -> bytes:
    """Send `request` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(*_address(site))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _request(site: Site, target: str = "/healthz", headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"host: {site.base_url.removeprefix('http://')}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _base_header_bytes(site: Site) -> int:
    return len("host") + len(site.base_url.removeprefix("http://")) + len("connection") + len("close")


@pytest.mark.parametrize(("size", "status"), [(LINE - 1, 200), (LINE, 200), (LINE + 1, 414)])
async def test_the_request_target_is_limited(bounded: Site, size: int, status: int) -> None:
    target = "/healthz?" + "a" * (size - len("/healthz?"))
    answer = await _exchange(bounded, _request(bounded, target))
    assert _status(answer) == status
    if status == 414:
        assert answer.endswith(f"the request target is over {LINE} bytes\n".encode())


@pytest.mark.parametrize(("size", "status"), [(HEADERS - 1, 200), (HEADERS, 200), (HEADERS + 1, 431)])
async def test_the_header_bytes_are_limited(bounded: Site, size: int, status: int) -> None:
    pad = size - _base_header_bytes(bounded) - len("x-pad")
    answer = await _exchange(bounded, _request(bounded, headers=[("x-pad", "p" * pad)]))
    assert _status(answer) == status


@pytest.mark.parametrize(("count", "status"), [(COUNT - 1, 200), (COUNT, 200), (COUNT + 1, 431)])
async def test_the_header_count_is_limited(bounded: Site, count: int, status: int) -> None:
    extra = [(f"x-{i}", "1") for i in range(count - 2)]  # host and connection are two
    answer = await _exchange(bounded, _request(bounded, headers=extra))
    assert _status(answer) == status
    if status == 431:
        assert answer.endswith(f"more than {COUNT} request headers\n".encode())
        for name, value in SECURITY_HEADERS.items():
            assert f"{name.lower()}: {value}".encode() in answer


async def test_a_huge_header_is_refused_before_it_is_read_and_others_are_answered_meanwhile(
    bounded: Site,
) -> None:
    reader, writer = await asyncio.open_connection(*_address(bounded))
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ")
    sent, refused = 0, b""
    try:
        while sent < 50 * 1024 * 1024 and not refused:
            writer.write(b"a" * 65536)
            await writer.drain()
            sent += 65536
            healthz = await bounded.client.get("/healthz")
            assert healthz.status_code == 200
            with contextlib.suppress(TimeoutError):
                refused = await asyncio.wait_for(reader.read(4096), 0.001)
    except ConnectionError:
        refused = refused or await reader.read()
    finally:
        writer.close()
    assert _status(refused) == 431
    assert sent < 1024 * 1024  # cut off within the first megabyte, not at 50 MB


async def test_a_head_sent_within_the_timeout_is_answered(bounded: Site) -> None:
    reader, writer = await asyncio.open_connection(*_address(bounded))
    request = _request(bounded)
    start = time.monotonic()
    for byte in request[:-1]:
        writer.write(bytes([byte]))
        await asyncio.sleep(TIMEOUT * 0.6 / len(request))
    writer.write(request[-1:])
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert time.monotonic() - start < TIMEOUT
    assert _status(answer) == 200


async def test_trickling_and_silent_connections_are_closed_after_the_timeout(bounded: Site) -> None:
    async def trickle(send: bytes) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection(*_address(bounded))
        start = time.monotonic()
        writer.write(send)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer, time.monotonic() - start

    results = await asyncio.gather(
        *(trickle(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ") for _ in range(10)),
        trickle(b""),
    )
    for answer, elapsed in results:
        assert _status(answer) == 408
        assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2


async def test_an_idle_keep_alive_connection_is_closed(bounded: Site) -> None:
    reader, writer = await asyncio.open_connection(*_address(bounded))
    writer.write(_request(bounded).replace(b"connection: close", b"connection: keep-alive"))
    await reader.readuntil(b"\r\n\r\n")
    start = time.monotonic()
    rest = await asyncio.wait_for(reader.read(), 10)  # the body, then EOF when the server closes
    writer.close()
    assert rest.endswith(b"}") or rest.endswith(b"\n") or rest
    assert 0.9 <= time.monotonic() - start < 3
