"""Lead data made inert for chat services, which read markup in plain text.

Apprise sends an alert's text as it is to services that render it: Mattermost and Rocket.Chat read Markdown
and Slack's `<!channel>` and `<url|label>` forms, Discord and Mattermost notify a whole channel on
`@everyone`, `@here` or `@channel`. A lead's name, company, title, source tag, or a URL it visited, is
written by whoever filled in a form, so before it reaches a chat it loses the power to link, embed or mention:

* `<` becomes U+2039 (a single angle quote), so no `<!here>`, `<@U123>`, `<https://evil|click>` or HTML
  tag can open;
* a space follows an `@` that starts a word, so `@here` becomes `@ here` and notifies no one (an address
  such as `mei@example.com` is left alone: its `@` does not start a word);
* a space follows a `]` that a `(`, `[` or `:` follows, so `[click](https://evil)`, `![](...)` and
  reference links (`[x]: https://evil`) stay text.

(A space, not an invisible joiner: `AlertMessage` turns every unprintable character into a space anyway, and
a rep who copies the text gets no hidden characters.)

Text without these is returned unchanged, so an ordinary alert reads the same in every channel.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Final

from nurture.ports import AlertMessage

_MENTION: Final = re.compile(r"(?<![\w.+\-])@(?=[\w!#])")
_LINK_BRACKET: Final = re.compile(r"\](?=[(\[:])")


def defuse_chat_markup(text: str) -> str:
    """`text` with chat links, embeds, tags and mentions made inert (see the module doc)."""
    text = text.replace("<", "\u2039")
    text = _MENTION.sub("@ ", text)
    return _LINK_BRACKET.sub("] ", text)


def _defused(value: str | None) -> str | None:
    return defuse_chat_markup(value) if value else value


def defuse_lead_data(alert: AlertMessage) -> AlertMessage:
    """`alert` with every value that comes from a lead or its tracked visits defused for chat.

    The owner's name and address come from the reps file, and the timeline URL is ours: they stay as they are.
    """
    return replace(
        alert,
        reason=defuse_chat_markup(alert.reason),
        lead_email=defuse_chat_markup(alert.lead_email),
        lead_name=_defused(alert.lead_name),
        lead_company=_defused(alert.lead_company),
        lead_title=_defused(alert.lead_title),
        lead_source=_defused(alert.lead_source),
        recent=tuple(replace(e, subject=_defused(e.subject)) for e in alert.recent),
    )
