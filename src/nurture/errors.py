"""Errors raised by nurture.

* NurtureError
  + ConfigError            campaigns/, templates/, reps or settings are wrong; carries source and line
    - CampaignError
    - TemplateError
  + DatabaseUnavailableError  the database cannot be reached (URL shown without its password)
  + BrokerUnavailableError    Redis cannot be reached (URL shown without its password)
  + InputError             a rejected lead row or API payload; carries row or field
    - CsvFileError         a CSV file that cannot be read as a whole; carries source and line
  + SendError              raised by transports only; carries the SMTP `code` and whether it is a `deferral`
    - TransientSendError   4xx, timeout, disconnect: retried with backoff
    - PermanentSendError   5xx: recorded, address suppressed, never retried
    - SendOutcomeUnknownError  the connection failed after DATA began: marked unknown, never re-sent
  + HeaderInjectionError   a header value would carry CR/LF or another line break
  + TrackingTokenError     forged or expired tracking token
  + AlertDeliveryError     an alert sink could not hand an alert on: retried until delivered
"""

from __future__ import annotations

from typing import ClassVar


class NurtureError(Exception):
    """Base of every error nurture raises on purpose."""


class ConfigError(NurtureError):
    """A configuration file or setting is wrong; the message starts with `source:line:`, or `source:` when
    no line applies (a whole file, a folder, an environment variable)."""

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        super().__init__(f"{source}:{line}: {message}" if line is not None else f"{source}: {message}")
        self.source, self.line, self.reason = source, line, message


class CampaignError(ConfigError):
    """A campaign file is invalid."""


class TemplateError(ConfigError):
    """A template is missing, does not compile or uses an unknown variable."""


class ConfigErrors(NurtureError):
    """Several configuration errors found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class DatabaseUnavailableError(NurtureError):
    """The database refused or did not answer a connection."""


class BrokerUnavailableError(NurtureError):
    """Redis, the broker, refused or did not answer a connection."""


class InputError(NurtureError):
    """Rejected input: a lead row or an API payload."""

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None) -> None:
        where = f"row {row}: " if row is not None else ""
        where += f"{field}: " if field else ""
        super().__init__(f"{where}{message}")
        self.row, self.field, self.reason = row, field, message


class CsvFileError(InputError):
    """A CSV file is refused as a whole (empty, a folder, undecodable, a bad header): `file:line: reason`."""

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        NurtureError.__init__(
            self, f"{source}:{line}: {message}" if line is not None else f"{source}: {message}"
        )
        self.row, self.field, self.reason = None, None, message
        self.source, self.line = source, line


class SendError(NurtureError):
    """A message could not be handed to the mail server.

    `code` is the SMTP reply code behind the error, None when there was no reply (a network error, an
    address refused before sending, the outbox). `deferral` is true when the receiving side asked to try
    later (SMTP 421 or 450-452, or the server could not be reached): the recipient's domain is then paused.
    Left out, it is the kind's default: a transient error is a deferral, the other kinds are not.
    """

    default_deferral: ClassVar[bool] = False

    def __init__(self, message: str, *, code: int | None = None, deferral: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.deferral = self.default_deferral if deferral is None else deferral


class TransientSendError(SendError):
    """Try again later (SMTP 4xx, timeout, disconnect)."""

    default_deferral = True


class PermanentSendError(SendError):
    """The server refused for good (SMTP 5xx): never retry."""


class SendOutcomeUnknownError(SendError):
    """The server may or may not have accepted the message (timeout or disconnect after DATA began)."""


class HeaderInjectionError(NurtureError):
    """A header value contains a line break."""


class TrackingTokenError(NurtureError):
    """A tracking token is forged, altered or expired."""


class AlertDeliveryError(NurtureError):
    """An alert sink (rep email, notification URL) failed to deliver an alert; the alert is retried."""
