"""The rep-email `AlertSink`: one plain-text email to the lead's owner, sent through the mail `Transport`.

Campaign mail is built by `core.message.compose`, which makes multipart mail with List-Unsubscribe and
campaign headers; none of that belongs in an internal notification, so this sink builds its single text part
with the standard library (a few alerts a day need none of compose's speed). The standard library refuses
CR/LF in any header value, and every lead field reaches a header only through `AlertMessage.title()`, which
puts it on one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr

from nurture.errors import AlertDeliveryError, ConfigError, SendError
from nurture.ports import AlertMessage, OutgoingEmail, Transport

log = logging.getLogger(__name__)


def alert_message_id(alert: AlertMessage, *, domain: str) -> str:
    """The Message-ID of an alert's email: derived from the alert, so a retry sends the same message again;
    a revision by a handoff is a message of its own."""
    revision = f".r{alert.revision}" if alert.revision else ""
    return f"<nurture-alert.{alert.alert_id}.{int(alert.created_at.timestamp())}{revision}@{domain}>"


class EmailAlertSink:
    """Emails each alert to the lead's owner; an alert without an owner is left to the other sinks."""

    name = "email"

    def __init__(self, transport: Transport, from_address: str) -> None:
        display_name, address = parseaddr(from_address)
        if "@" not in address:
            raise ConfigError(f"not an email address: {from_address!r}", source="alert sender")
        self._transport = transport
        self._from = Address(display_name=display_name, addr_spec=address)

    async def send(self, alert: AlertMessage, *, notify_urls: Sequence[str]) -> None:
        """Send `alert` to its owner; raise `AlertDeliveryError` when the mail server did not take it."""
        del notify_urls  # the owner's notification URLs are the Apprise sink's
        if not alert.owner_email:
            log.info("alert has no owner: no email alert_id=%s", alert.alert_id)
            return
        message = self.compose(alert)
        try:
            await self._transport.send(message)
        except SendError as exc:
            raise AlertDeliveryError(f"email to {alert.owner_email}: {exc}") from exc
        log.info("alert emailed alert_id=%s message_id=%s", alert.alert_id, message.message_id)

    def compose(self, alert: AlertMessage) -> OutgoingEmail:
        """Build the alert's email to its owner.

        Raises:
            AlertDeliveryError: the owner's address cannot be written in a header.
        """
        assert alert.owner_email is not None
        message_id = alert_message_id(alert, domain=self._from.domain)
        msg = EmailMessage(policy=SMTP)
        try:
            msg["From"] = self._from
            msg["To"] = Address(display_name=alert.owner_name or "", addr_spec=alert.owner_email)
            msg["Subject"] = alert.title()
            msg["Date"] = format_datetime(alert.created_at)
            msg["Message-ID"] = message_id
            msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
            msg["X-Nurture-Alert"] = str(alert.alert_id)
            msg.set_content(alert.text(), cte="quoted-printable")
        except (ValueError, MessageError) as exc:
            raise AlertDeliveryError(f"cannot address an email to {alert.owner_email!r}: {exc}") from exc
        return OutgoingEmail(
            message_id=message_id,
            envelope_from=self._from.addr_spec,
            recipients=(alert.owner_email,),
            data=msg.as_bytes(),
        )
