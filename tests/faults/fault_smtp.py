"""An SMTP server that misbehaves on purpose, per recipient domain or address, and records what it accepted.

    server.program("slow.example", Rule(reply="421 4.7.0 try later"))   # every DATA to that domain
    server.program("b@x.example", Rule(reply="550 5.1.1 no such user"))  # one address
    server.program("x.example", Rule(after_data="stall", stall_s=60))     # keep it, answer too late
    server.program("x.example", Rule(after_data="drop"))                  # keep it, hang up, no reply
    server.on_accept = lambda accepted: ...                               # e.g. kill the sender right now

"Accepted" means the server took responsibility for the message: it counts for the invariants even when the
client never saw the 250 (stall, drop), which is exactly the window a sender cannot know about.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.harness.ports import free_port

AfterData = Literal["reply", "stall", "drop"]


@dataclass(frozen=True, slots=True)
class Rule:
    """How to answer DATA for a matching recipient: `reply` rejects it (not kept); `stall`, `drop` keep it."""

    reply: str | None = None  # e.g. "421 4.7.0 try later"; ignored unless after_data == "reply"
    after_data: AfterData = "reply"
    stall_s: float = 0.0  # for "stall": how long before the 250 (longer than the client's timeout)
    delay_s: float = 0.0  # a slow server: wait this long before handling DATA at all


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: str
    rcpt: str
    campaign: str
    step: str
    date: str  # the Date header: the sender's (simulated) time of sending
    wall: float  # time.time() when the server kept the message


@dataclass(frozen=True, slots=True)
class Attempt:
    rcpt: str
    campaign: str
    step: str
    reply: str  # the reply code, or "stall" / "drop"
    date: str  # the message's Date header: the sender's (simulated) time of sending
    wall: float


class FaultSmtpServer:
    """aiosmtpd on 127.0.0.1 in its own thread; `accepted` lists every kept message in order."""

    def __init__(self, *, default_delay_s: float = 0.0) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.default_delay_s = default_delay_s
        self.accepted: list[Accepted] = []
        self.attempts: list[Attempt] = []  # every DATA, kept or not
        self.on_accept: Callable[[Accepted], None] | None = None
        self.peak_connections = 0  # most connections open at once: the most messages that can be mid-transfer
        self._rules: dict[str, Rule] = {}
        self._lock = threading.Lock()
        self._servers: set[SMTP] = set()
        self._controller = _Controller(self)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def program(self, target: str, rule: Rule | None) -> None:
        """Answer DATA for `target` (a domain or an address, lower-case) by `rule`; None restores normal."""
        with self._lock:
            if rule is None:
                self._rules.pop(target.lower(), None)
            else:
                self._rules[target.lower()] = rule

    def accepted_ids(self) -> Counter[str]:
        with self._lock:
            return Counter(a.message_id for a in self.accepted)

    def snapshot(self) -> list[Accepted]:
        with self._lock:
            return list(self.accepted)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(), self._controller.loop).result(timeout=5)
        self._controller.stop()

    def __enter__(self) -> FaultSmtpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _rule_for(self, rcpt: str) -> Rule | None:
        address = rcpt.lower()
        with self._lock:
            return self._rules.get(address) or self._rules.get(address.rpartition("@")[2])

    async def handle_data(self, server: SMTP, envelope: Envelope) -> str:
        rcpt = str(envelope.rcpt_tos[0]).lower() if envelope.rcpt_tos else ""
        rule = self._rule_for(rcpt)
        delay = rule.delay_s if rule is not None and rule.delay_s else self.default_delay_s
        if delay:
            await asyncio.sleep(delay)
        # Only the headers are read (Message-ID, campaign, step, date): parsing bodies too cost the load run
        # most of this process's CPU.
        parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(
            bytes(envelope.original_content or b"")
        )
        if rule is not None and rule.after_data == "reply" and rule.reply is not None:
            self._attempt(rcpt, rule.reply.split()[0], parsed)
            return rule.reply
        self._keep(rcpt, parsed)
        if rule is not None and rule.after_data == "stall":
            self._attempt(rcpt, "stall", parsed)
            await asyncio.sleep(rule.stall_s)
            return "250 2.0.0 Ok: queued after a stall"
        if rule is not None and rule.after_data == "drop":
            self._attempt(rcpt, "drop", parsed)
            assert server.transport is not None
            server.transport.close()
            await asyncio.Event().wait()  # connection_lost cancels this task
        self._attempt(rcpt, "250", parsed)
        return "250 2.0.0 Ok: queued"

    def _attempt(self, rcpt: str, reply: str, parsed: Message) -> None:
        with self._lock:
            attempt = Attempt(
                rcpt,
                str(parsed["X-Nurture-Campaign"]),
                str(parsed["X-Nurture-Step"]),
                reply,
                str(parsed["Date"]),
                time.time(),
            )
            self.attempts.append(attempt)

    def _keep(self, rcpt: str, parsed: Message) -> None:
        accepted = Accepted(
            message_id=str(parsed["Message-ID"]),
            rcpt=rcpt,
            campaign=str(parsed["X-Nurture-Campaign"]),
            step=str(parsed["X-Nurture-Step"]),
            date=str(parsed["Date"]),
            wall=time.time(),
        )
        with self._lock:
            self.accepted.append(accepted)
        if self.on_accept is not None:
            self.on_accept(accepted)

    async def _close_all(self) -> None:
        for server in list(self._servers):
            if server.transport is not None:
                server.transport.close()
        for _ in range(100):
            if not self._servers:
                return
            await asyncio.sleep(0.01)


class _Handler:
    def __init__(self, owner: FaultSmtpServer) -> None:
        self._owner = owner

    async def handle_DATA(self, server: SMTP, _session: Session, envelope: Envelope) -> str:
        return await self._owner.handle_data(server, envelope)


class _TrackedSMTP(SMTP):
    def __init__(self, owner: FaultSmtpServer, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._owner._servers.add(self)
        self._owner.peak_connections = max(self._owner.peak_connections, len(self._owner._servers))

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._servers.discard(self)
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, owner: FaultSmtpServer) -> None:
        super().__init__(
            _Handler(owner), hostname="127.0.0.1", port=owner.port, server_hostname="faults.test"
        )
        self._owner = owner

    def factory(self) -> SMTP:
        return _TrackedSMTP(self._owner, self.handler, loop=self.loop, **self.SMTP_kwargs)
