"""Fakes of our own ports (never of a library's API)."""

from __future__ import annotations

from nurture.errors import SendError
from nurture.ports import OutgoingEmail, SendReceipt


class RecordingTransport:
    """A `Transport` that keeps what it was given and can be told to fail the next sends."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []
        self._failures: list[SendError] = []
        self.closed = False

    def fail_next(self, error: SendError, times: int = 1) -> None:
        self._failures.extend([error] * times)

    async def send(self, message: OutgoingEmail) -> SendReceipt:
        if self._failures:
            raise self._failures.pop(0)
        self.sent.append(message)
        return SendReceipt(message_id=message.message_id, response="250 2.0.0 accepted")

    async def aclose(self) -> None:
        self.closed = True
