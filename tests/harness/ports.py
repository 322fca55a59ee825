"""Loopback ports for the servers a test starts: a free port number, or a socket already listening on one."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (also: a port nobody answers on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port and listening: hand it to a server, so no other process
    can take the port between choosing it and serving on it. The caller closes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock
