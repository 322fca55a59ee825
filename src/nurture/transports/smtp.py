"""The SMTP `Transport`: hands composed messages to a relay over a small pool of aiosmtplib connections.

This is the only module that sees aiosmtplib's exceptions; each becomes a `TransientSendError` (try again
later), a `PermanentSendError` (the server refused this message for good) or, when the connection fails
after DATA began, a `SendOutcomeUnknownError`, with the original chained. Each carries the server's reply
`code` (None without a reply) and whether it is a `deferral`: a reply in `DEFERRAL_CODES` (for several
refused recipients, the lowest code decides), or a relay that could not be reached. A connection lost
before DATA, and the transport being closed, are transient but not deferrals.

A message is never sent twice by this module: once a transaction has begun there is no retry, because once
DATA has started the server may hold the message even if its reply never arrives (DESIGN §6). A stale pooled
connection is therefore weeded out *before* a send: one the server closed is seen as disconnected, and one
idle for longer than `IDLE_PROBE_S` must answer a NOOP first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib

from nurture.errors import (
    ConfigError,
    PermanentSendError,
    SendError,
    SendOutcomeUnknownError,
    TransientSendError,
)
from nurture.ports import OutgoingEmail, SendReceipt

logger = logging.getLogger(__name__)

IDLE_PROBE_S: Final = 30.0  # relays commonly drop idle sessions after 30-300 s
_SOURCE: Final = "NURTURE_SMTP_URL"
_DEFAULT_PORTS: Final = {"smtp": 25, "smtps": 465}
# "Try later" from the recipient's side: 421 (service not available) and 450-452 (mailbox busy, local error,
# insufficient storage). They pause the recipient's domain; another 4xx (454: TLS or login unavailable, ...)
# is about our own session with the relay, and is only retried.
DEFERRAL_CODES: Final = frozenset({421, 450, 451, 452})
_BOOLEANS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _flag(query: dict[str, str], name: str) -> bool | None:
    if name not in query:
        return None
    value = query[name].lower()
    if value not in _BOOLEANS:
        raise ConfigError(f"{name} must be true or false, not {query[name]!r}", source=_SOURCE)
    return _BOOLEANS[value]


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to reach the relay. The password is left out of repr() and str()."""

    host: str
    port: int
    timeout_s: float
    pool_size: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = False  # implicit TLS from the first byte (smtps://)
    start_tls: bool | None = None  # None: upgrade when the server offers STARTTLS
    validate_certs: bool = True

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, pool_size: int) -> SmtpConfig:
        """Parse `smtp[s]://[user[:password]@]host[:port][?starttls=true|false&tls_verify=false]`.

        Raises:
            ConfigError: the URL is malformed; the message never repeats the URL, which holds the password.
        """
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ConfigError(f"scheme must be smtp or smtps, not {parts.scheme!r}", source=_SOURCE)
        if not parts.hostname:
            raise ConfigError("a host is required", source=_SOURCE)
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
            query = dict(parse_qsl(parts.query, strict_parsing=bool(parts.query)))
        except ValueError:
            raise ConfigError("the port or query string is malformed", source=_SOURCE) from None
        unknown = set(query) - {"starttls", "tls_verify"}
        if unknown:
            raise ConfigError(f"unknown parameters: {', '.join(sorted(unknown))}", source=_SOURCE)
        start_tls = _flag(query, "starttls")
        if parts.scheme == "smtps" and start_tls:
            raise ConfigError("smtps:// is already TLS; starttls=true does not apply", source=_SOURCE)
        if timeout_s <= 0 or pool_size < 1:
            raise ConfigError("timeout_s must be positive and pool_size at least 1", source=_SOURCE)
        return cls(
            host=parts.hostname,
            port=port,
            timeout_s=timeout_s,
            pool_size=pool_size,
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            use_tls=parts.scheme == "smtps",
            start_tls=False if parts.scheme == "smtps" else start_tls,
            validate_certs=_flag(query, "tls_verify") is not False,
        )


@dataclass(slots=True)
class _Connection:
    client: aiosmtplib.SMTP
    idle_since: float  # time.monotonic() when last handed back


def _response_error(code: int, message: str) -> SendError:
    if code >= 500:
        return PermanentSendError(f"SMTP {code}: {message}", code=code)
    return TransientSendError(f"SMTP {code}: {message}", code=code, deferral=code in DEFERRAL_CODES)


def _translate(exc: BaseException) -> SendError:
    """Map an aiosmtplib (or socket) error raised during a mail transaction to our two kinds."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        # permanent only when every recipient was refused for good; one 4xx means a retry may succeed
        codes = [refused.code for refused in exc.recipients] or [0]
        worst = min(codes)
        return _response_error(worst, "; ".join(r.message for r in exc.recipients))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _response_error(exc.code, exc.message)
    if isinstance(exc, ValueError):  # aiosmtplib refused an address before sending anything
        return PermanentSendError(f"address cannot be sent: {exc}")
    return TransientSendError(f"{type(exc).__name__}: {exc}", deferral=False)  # our session broke: retry only


async def _transact(client: aiosmtplib.SMTP, message: OutgoingEmail) -> str:
    """MAIL, RCPT, DATA; return the server's reply to the end of DATA.

    Up to DATA a failure means the message was not taken. Once DATA has begun, a timeout or a lost
    connection leaves the outcome unknown: the server may have queued it, so it must never be re-sent.
    """
    await client.mail(message.envelope_from)
    for recipient in message.recipients:
        await client.rcpt(recipient)
    try:
        reply = await client.data(message.data)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise SendOutcomeUnknownError(f"{type(exc).__name__} after DATA began: {exc}") from exc
    return f"{reply.code} {reply.message}"


class SmtpTransport:
    """Sends over up to `pool_size` SMTP connections, opened lazily and reused, warmest first."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._idle: list[_Connection] = []  # a LIFO stack: the most recently used is the least likely stale
        self._slots = asyncio.Semaphore(config.pool_size)
        self._closed = False
        self._local_hostname: str | None = None  # looked up once (a DNS call), then reused

    async def send(self, message: OutgoingEmail) -> SendReceipt:
        """Send one message; raise `TransientSendError` or `PermanentSendError` if it was not accepted, and
        `SendOutcomeUnknownError` if the connection failed after DATA began."""
        async with self._slots:
            if self._closed:
                raise TransientSendError("the SMTP transport is closed", deferral=False)
            connection = await self._checkout(message.message_id)
            try:
                response = await _transact(connection.client, message)
            except (aiosmtplib.SMTPException, OSError, ValueError, SendOutcomeUnknownError) as exc:
                self._discard(connection)
                error = exc if isinstance(exc, SendOutcomeUnknownError) else _translate(exc)
                logger.warning(
                    "send failed message_id=%s error=%s code=%s",
                    message.message_id,
                    type(exc.__cause__ or exc).__name__,
                    getattr(exc, "code", None),
                )
                raise error from exc
            except BaseException:  # cancelled mid-transaction: the session state is unknown
                self._discard(connection)
                raise
            self._checkin(connection)
        logger.debug("sent message_id=%s", message.message_id)
        return SendReceipt(message_id=message.message_id, response=response)

    async def aclose(self) -> None:
        """Say QUIT on every idle connection; connections in use are closed when their send ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(connection) for connection in idle))

    async def _checkout(self, message_id: str) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            try:
                usable = await self._is_usable(connection)
            except BaseException:  # cancelled during the NOOP: the connection is out of the pool, close it
                self._discard(connection)
                raise
            if usable:
                return connection
            logger.debug("dropping a stale SMTP connection message_id=%s", message_id)
            self._discard(connection)
        return await self._connect(message_id)

    async def _is_usable(self, connection: _Connection) -> bool:
        if not connection.client.is_connected:
            return False
        if time.monotonic() - connection.idle_since < IDLE_PROBE_S:
            return True
        try:
            await connection.client.noop()
        except (aiosmtplib.SMTPException, OSError):
            return False
        return True

    async def _connect(self, message_id: str) -> _Connection:
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            local_hostname=self._local_hostname,
            timeout=config.timeout_s,
            use_tls=config.use_tls,
            start_tls=config.start_tls,
            validate_certs=config.validate_certs,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            # Whatever the code (a 5xx greeting, a refused login), this is about our relay, not about the
            # recipient, so it must not suppress the lead's address: always transient.
            logger.error(
                "cannot connect to the SMTP relay message_id=%s error=%s code=%s",
                message_id,
                type(exc).__name__,
                getattr(exc, "code", None),
            )
            raise TransientSendError(
                f"cannot reach the SMTP relay: {type(exc).__name__}: {exc}",
                code=getattr(exc, "code", None),
                deferral=True,
            ) from exc
        except BaseException:
            client.close()
            raise
        self._local_hostname = client.local_hostname
        return _Connection(client=client, idle_since=time.monotonic())

    def _checkin(self, connection: _Connection) -> None:
        if self._closed:
            self._discard(connection)
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    @staticmethod
    def _discard(connection: _Connection) -> None:
        connection.client.close()

    async def _quit(self, connection: _Connection) -> None:
        try:
            await connection.client.quit(timeout=min(self._config.timeout_s, 5.0))
        except (aiosmtplib.SMTPException, OSError):
            pass  # the server is gone or cross: closing our side is all that is left
        finally:
            connection.client.close()
