"""Alert sinks: the channels a hot-lead alert goes out on (`AlertSink`s of `nurture.ports`).

* `EmailAlertSink`: a plain-text email to the lead's owner, through the mail `Transport`.
* `AppriseAlertSink`: the team's and the owner's notification URLs (Slack, Microsoft Teams, JSON webhooks and
  everything else Apprise speaks). Lead data in it is defused first (`chat`): chats read markup in text.
"""

from nurture.alerts.apprise import AppriseAlertSink, split_alert_urls
from nurture.alerts.email import EmailAlertSink

__all__ = ["AppriseAlertSink", "EmailAlertSink", "split_alert_urls"]
