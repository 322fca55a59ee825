"""A counting SMTP sink for the benchmarks: aiosmtpd on loopback, every message accepted and discarded.

Run it as its own process so it does not share the GIL with the sender being measured:

    python bench/smtp_sink.py --port 2525

It prints `ready <port>` once it accepts connections, then answers one command per line on stdin:

    count    ->  `count <messages> <bytes> <connections> <total>`: the first three since start or the last
                 reset, `total` the messages received since start
    reset    ->  `reset` (the counters go back to zero)
    quit     ->  the final `count ...` line, then it stops (end of stdin does the same)
"""

from __future__ import annotations

import argparse
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class CountingHandler:
    """aiosmtpd hooks: count connections (EHLO/HELO) and messages; keep nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.bytes = 0
        self.connections = 0
        self.total = 0

    async def handle_EHLO(
        self, _server: SMTP, session: Session, _envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self._lock:
            self.connections += 1
        return responses

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        size = len(envelope.original_content or b"")
        with self._lock:
            self.messages += 1
            self.total += 1
            self.bytes += size
        return "250 2.0.0 Ok: discarded"

    def snapshot(self) -> str:
        with self._lock:
            return f"count {self.messages} {self.bytes} {self.connections} {self.total}"

    def reset(self) -> None:
        with self._lock:
            self.messages = self.bytes = self.connections = 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    handler = CountingHandler()
    controller = Controller(handler, hostname=args.host, port=args.port, server_hostname="sink.bench")
    controller.start()
    try:
        print(f"ready {args.port}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "count":
                print(handler.snapshot(), flush=True)
            elif command == "reset":
                handler.reset()
                print("reset", flush=True)
            elif command == "quit":
                break
            elif command:
                print(f"error unknown command {command!r}", flush=True)
        print(handler.snapshot(), flush=True)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
