"""Fakes of our own ports (never of a library's API)."""

from __future__ import annotations

from collections.abc import Sequence

from nurture.errors import AlertDeliveryError, SendError
from nurture.ports import AlertMessage, OutgoingEmail, SendReceipt


class RecordingTransport:
    """A `Transport` that keeps what it was given and can be told to fail the next sends."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []
        self._failures: list[SendError] = []
        self._failures_for: dict[str, SendError] = {}
        self.closed = False

    def fail_next(self, error: SendError, times: int = 1) -> None:
        self._failures.extend([error] * times)

    def fail_first_to(self, address: str, error: SendError) -> None:
        """The first message to `address` fails with `error`, whenever it comes."""
        self._failures_for[address] = error

    async def send(self, message: OutgoingEmail) -> SendReceipt:
        if self._failures:
            raise self._failures.pop(0)
        if (error := self._failures_for.pop(message.recipients[0], None)) is not None:
            raise error
        self.sent.append(message)
        return SendReceipt(message_id=message.message_id, response="250 2.0.0 accepted")

    async def aclose(self) -> None:
        self.closed = True


class RecordingAlertSink:
    """An `AlertSink` that keeps the alerts it was given (with the notify URLs) and can be told to fail."""

    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.sent: list[tuple[AlertMessage, tuple[str, ...]]] = []
        self._failures = 0

    def fail_next(self, times: int = 1) -> None:
        self._failures += times

    @property
    def alerts(self) -> list[AlertMessage]:
        return [alert for alert, _ in self.sent]

    async def send(self, alert: AlertMessage, *, notify_urls: Sequence[str]) -> None:
        if self._failures:
            self._failures -= 1
            raise AlertDeliveryError(f"{self.name} is down")
        self.sent.append((alert, tuple(notify_urls)))
