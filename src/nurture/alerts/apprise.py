"""The notification-URL `AlertSink`: Slack, Microsoft Teams, JSON webhooks and the rest, through Apprise.

The team's URLs (`NURTURE_ALERT_URLS`) are checked when the sink is built, so a typo stops the service at
start. A URL may hold a token: only Apprise's privacy form of it (`slack://T...2/...`) is ever logged or
put in an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import apprise

from nurture.alerts.chat import defuse_lead_data
from nurture.errors import AlertDeliveryError, ConfigError
from nurture.ports import AlertMessage

log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[\s,]+")


def split_alert_urls(text: str) -> tuple[str, ...]:
    """Split `NURTURE_ALERT_URLS` (comma or whitespace separated) into URLs, without repeats."""
    return tuple(dict.fromkeys(url for url in _SEPARATORS.split(text) if url))


def _shown(url: str) -> str:
    """A URL as it may be logged: Apprise's privacy form, or only its scheme when Apprise cannot read it."""
    service = apprise.Apprise.instantiate(url)
    if service is None:
        return f"{url.partition('://')[0]}://..."
    shown: str = service.url(privacy=True)  # type: ignore[no-untyped-call]
    return shown.partition("?")[0]


class AppriseAlertSink:
    """Sends each alert to the team's notification URLs and to those of the lead's owner."""

    name = "apprise"

    def __init__(self, team_urls: Sequence[str]) -> None:
        """Raises `ConfigError` naming (in privacy form) a team URL Apprise does not understand."""
        self.team_urls = tuple(dict.fromkeys(team_urls))
        for url in self.team_urls:
            if apprise.Apprise.instantiate(url) is None:
                raise ConfigError(
                    f"not a notification URL Apprise understands: {_shown(url)}", source="NURTURE_ALERT_URLS"
                )

    async def send(self, alert: AlertMessage, *, notify_urls: Sequence[str]) -> None:
        """Notify every URL; raise `AlertDeliveryError` naming those that failed. No URL: nothing to do.

        A rep's URL that Apprise cannot read is logged and skipped: retrying would not fix it, and would
        notify the working URLs again.
        """
        urls = tuple(dict.fromkeys((*self.team_urls, *notify_urls)))
        if not urls:
            return
        notifier = apprise.Apprise()
        for url in urls:
            if not notifier.add(url):
                log.error("skipping a notification URL alert_id=%s url=%s", alert.alert_id, _shown(url))
        if len(notifier) == 0:
            return
        try:
            chat = defuse_lead_data(alert)  # chats render markup and mentions that lead data may carry
            result = await notifier.async_notify(
                body=chat.text(), title=chat.title(), body_format=apprise.NotifyFormat.TEXT
            )
        except Exception as exc:  # a plugin bug must not escape as anything but a failed delivery
            raise AlertDeliveryError(f"notification URLs: {type(exc).__name__}: {exc}") from exc
        if not result:
            failed = [r.url.partition("?")[0] for r in getattr(result, "results", ()) if not r]
            raise AlertDeliveryError(f"notification URLs failed: {', '.join(failed) or 'all'}")
        log.info("alert notified alert_id=%s urls=%d", alert.alert_id, len(notifier))
