"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 in its own thread, recording what it accepts.

It can be scripted to misbehave, the way a mail relay does on a bad day:

    sink.answer_next("421 4.7.0 try later", at="DATA")   # the next DATA gets this reply instead of 250
    sink.stall_after_data(2.0)                          # the next message is kept, its 250 comes 2 s late
    sink.drop_next_connection(at="MAIL")                # the next MAIL closes the connection, no reply
    sink.close_connections()                            # the server hangs up on every open connection

The `smtp_sink` fixture comes in with `from tests.smtp_sink import smtp_sink_fixture  # noqa: F401` (a test
module) or `from tests.smtp_sink import smtp_sink  # noqa: F401` (a conftest); `with SmtpSink(...) as sink:`
gives a sink that requires a login.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, NoReturn

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.harness.ports import free_port

Command = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the sink accepted: its envelope, its exact bytes and its parsed form."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    message: EmailMessage

    def __getitem__(self, header: str) -> Any:
        return self.message[header]


@dataclass(slots=True)
class _Script:
    """What to do instead of the normal reply, for the next `times` matching commands."""

    reply: str | None  # None: close the connection without a reply
    times: int
    stall_s: float = 0.0


class _Handler:
    """aiosmtpd handler hooks; they run on the server's thread and loop, and are called positionally."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_EHLO(
        self, _server: SMTP, session: Session, _envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self._sink._count_connection(id(session))
        return responses

    async def handle_QUIT(self, _server: SMTP, _session: Session, _envelope: Envelope) -> str:
        with self._sink._lock:
            self._sink.quits += 1
        return "221 Bye"

    def authenticate(
        self, _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, auth_data: object
    ) -> AuthResult:
        expected = self._sink.credentials
        if expected is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        given = (auth_data.login.decode("utf-8"), auth_data.password.decode("utf-8"))
        return AuthResult(success=given == expected, handled=False)

    async def handle_MAIL(
        self, server: SMTP, _session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self._sink._scripted("MAIL", server)
        if scripted is not None:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, _session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = await self._sink._scripted("RCPT", server)
        if scripted is not None:
            return scripted
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, _session: Session, envelope: Envelope) -> str:
        script = self._sink._take("DATA")
        if script is not None and not script.stall_s:
            return script.reply if script.reply is not None else await self._sink._drop(server)
        self._sink._record(envelope, bytes(envelope.original_content or b""))
        if script is not None and script.reply is not None:
            # the message is kept before the stall: the client cannot know the outcome, the case under test
            await asyncio.sleep(script.stall_s)
            return script.reply
        return "250 2.0.0 Ok: queued"


class _SinkSMTP(SMTP):
    """aiosmtpd's server protocol, told when a connection ends so the sink can count open connections."""

    def __init__(self, sink: SmtpSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sink._servers.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink._servers.discard(self)
        if self.session is not None:
            self._sink._uncount_connection(id(self.session))
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, sink: SmtpSink, port: int) -> None:
        handler = _Handler(sink)
        login: dict[str, Any] = {}
        if sink.credentials is not None:
            # plain-text AUTH on loopback; auth_required stays False, so aiosmtpd does not warn about it
            login = {"authenticator": handler.authenticate, "auth_require_tls": False}
        super().__init__(handler, hostname="127.0.0.1", port=port, server_hostname="sink.test", **login)
        self._sink = sink

    def factory(self) -> SMTP:
        return _SinkSMTP(self._sink, self.handler, loop=self.loop, **self.SMTP_kwargs)


class SmtpSink:
    """A real SMTP server on 127.0.0.1 that records every message it accepts in `messages`."""

    def __init__(self, *, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials  # (user, password) the server accepts; None: no AUTH offered
        self.quits = 0  # QUIT commands answered
        self.host = "127.0.0.1"
        self.port = free_port()
        self.messages: list[ReceivedMessage] = []
        self.connections_opened = 0  # connections that said EHLO/HELO
        self.peak_connections = 0  # most connections open at one time
        self._open: set[int] = set()
        self._scripts: dict[Command, deque[_Script]] = {"MAIL": deque(), "RCPT": deque(), "DATA": deque()}
        self._lock = threading.Lock()
        self._servers: set[_SinkSMTP] = set()  # only touched on the server's thread
        self._controller = _Controller(self, self.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        # Close the server side of every connection first: a transport still open when the server's loop
        # closes would raise a ResourceWarning, which pytest (filterwarnings=error) reports as a failure.
        self.close_connections()
        self._controller.stop()

    def close_connections(self) -> None:
        """Hang up on every open connection, as a relay does with idle sessions; wait until they are gone."""
        asyncio.run_coroutine_threadsafe(self._close_connections(), self._controller.loop).result(timeout=5)

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def answer_next(self, reply: str, *, at: Command = "DATA", times: int = 1) -> None:
        """Answer the next `times` commands `at` with `reply` (e.g. "421 4.7.0 try later")."""
        self._push(at, _Script(reply=reply, times=times))

    def stall_after_data(self, seconds: float, *, times: int = 1) -> None:
        """Keep the next `times` messages, but send their 250 only after `seconds`."""
        self._push("DATA", _Script(reply="250 2.0.0 Ok: queued after a stall", times=times, stall_s=seconds))

    def drop_next_connection(self, *, at: Command = "MAIL", times: int = 1) -> None:
        """Close the connection, without a reply, on the next `times` commands `at`."""
        self._push(at, _Script(reply=None, times=times))

    def _push(self, at: Command, script: _Script) -> None:
        with self._lock:
            self._scripts[at].append(script)

    def _take(self, command: Command) -> _Script | None:
        with self._lock:
            queue = self._scripts[command]
            if not queue:
                return None
            script = queue[0]
            script.times -= 1
            if script.times <= 0:
                queue.popleft()
            return script

    async def _scripted(self, command: Command, server: SMTP) -> str | None:
        script = self._take(command)
        if script is None:
            return None
        return script.reply if script.reply is not None else await self._drop(server)

    async def _drop(self, server: SMTP) -> NoReturn:
        assert server.transport is not None
        server.transport.close()
        # connection_lost() cancels the task running this hook: wait for that rather than reply
        await asyncio.Event().wait()
        raise AssertionError("unreachable: the connection was closed")

    def _record(self, envelope: Envelope, data: bytes) -> None:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        received = ReceivedMessage(
            mail_from=str(envelope.mail_from), rcpt_tos=tuple(envelope.rcpt_tos), data=data, message=parsed
        )
        with self._lock:
            self.messages.append(received)

    def _count_connection(self, session_id: int) -> None:
        with self._lock:
            if session_id not in self._open:
                self._open.add(session_id)
                self.connections_opened += 1
                self.peak_connections = max(self.peak_connections, len(self._open))

    def _uncount_connection(self, session_id: int) -> None:
        with self._lock:
            self._open.discard(session_id)

    async def _close_connections(self) -> None:
        for server in list(self._servers):
            if server.transport is not None:
                server.transport.close()
        for _ in range(100):  # connection_lost runs on a later loop iteration
            if not self._servers:
                return
            await asyncio.sleep(0.01)


@pytest.fixture(name="smtp_sink")
def smtp_sink_fixture() -> Iterator[SmtpSink]:
    """A started `SmtpSink`, stopped after the test."""
    with SmtpSink() as sink:
        yield sink


# The same fixture under its own name, for `from tests.smtp_sink import smtp_sink` in a conftest. In a test
# module import `smtp_sink_fixture` instead: a test parameter named like an imported name trips ruff's F811.
smtp_sink = smtp_sink_fixture
