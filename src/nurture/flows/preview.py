"""One campaign step for one lead, built exactly as the worker builds it, to preview or to send as a test.

Both go through `flows.deliver.build_message`, so the subject, HTML (tracking links and pixel included), text
and headers are the ones the lead would get. A test send is marked (`[TEST] ` subject, `X-Nurture-Test: 1`),
has a Message-ID of its own each time, and records nothing: no delivery, no touchpoint, nothing a report
counts.
"""

from __future__ import annotations

import email.policy
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Final

from nurture.core.branching import choose_variant
from nurture.core.campaign import Campaign, Step
from nurture.core.context import LeadProfile
from nurture.core.lead import Lead
from nurture.core.tracking import message_id_for_test_copy
from nurture.db.queries.deliveries import SendJob
from nurture.errors import HeaderInjectionError, NurtureError
from nurture.flows.deliver import Mailer, build_message
from nurture.ports import OutgoingEmail, SendReceipt

log = logging.getLogger(__name__)

PREVIEW_DELIVERY_ID: Final = 0  # no delivery exists: links and Message-ID are signed for id 0
TEST_SUBJECT_PREFIX: Final = "[TEST] "
TEST_HEADER: Final = "X-Nurture-Test"
_SHOWN_HEADERS: Final = (
    "From",
    "To",
    "Reply-To",
    "Subject",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-Nurture-Campaign",
    "X-Nurture-Step",
    TEST_HEADER,
)


@dataclass(frozen=True, slots=True)
class PreviewLead:
    """The lead a step is built for: a stored one (its id signs the links) or the sample (id 0)."""

    id: int
    profile: LeadProfile


@dataclass(frozen=True, slots=True)
class Preview:
    campaign_id: str
    step_id: str
    lead_email: str
    variant: str | None
    subject: str
    html: str
    text: str
    headers: tuple[tuple[str, str], ...]
    message: OutgoingEmail


def find_step(campaign: Campaign, step_id: str) -> Step:
    step = campaign.step(step_id)
    if step is None:
        steps = ", ".join(s.id for s in campaign.steps)
        raise NurtureError(f"campaign {campaign.id!r} has no step {step_id!r} (steps: {steps})")
    if step.task is not None:
        raise NurtureError(f"step {step_id!r} is a rep task, not an email: there is nothing to preview")
    return step


def preview_step(
    campaign: Campaign,
    step_id: str,
    lead: PreviewLead,
    *,
    mailer: Mailer,
    now: datetime,
    variant: str | None = None,
    sign_links: bool = True,
) -> Preview:
    """Build the step's email for `lead`; `variant` defaults to the one the lead would be given.

    With `sign_links=False` the tracking and unsubscribe links name no lead (id 0), so a test copy's reader
    can click them without recording anything for, or unsubscribing, the real lead.

    Raises:
        NurtureError: unknown step or variant; TemplateError: a template fails on this lead.
    """
    step = find_step(campaign, step_id)
    if variant is not None and all(v.id != variant for v in step.variants):
        known = ", ".join(v.id for v in step.variants) or "none"
        raise NurtureError(f"step {step_id!r} has no variant {variant!r} (variants: {known})")
    if variant is None:
        chosen = choose_variant(step, lead.id)
        variant = chosen.id if chosen is not None else None
    signed_as = lead if sign_links else replace(lead, id=PREVIEW_DELIVERY_ID)
    message = build_message(_job(campaign, step, signed_as, now), campaign, mailer, now, variant=variant)
    parsed = BytesParser(policy=email.policy.default).parsebytes(message.data)
    assert isinstance(parsed, EmailMessage)
    return Preview(
        campaign_id=campaign.id,
        step_id=step.id,
        lead_email=lead.profile.email,
        variant=variant,
        subject=str(parsed["Subject"] or ""),
        html=_part(parsed, "html"),
        text=_part(parsed, "plain"),
        headers=tuple((name, str(parsed[name])) for name in _SHOWN_HEADERS if parsed[name] is not None),
        message=message,
    )


async def send_test(preview: Preview, to_address: str, *, mailer: Mailer) -> SendReceipt:
    """Send `preview` to `to_address` only, marked as a test; nothing is recorded.

    Raises:
        SendError: the transport refused it; HeaderInjectionError: a bad address.
    """
    copy = as_test_copy(preview.message, to_address, nonce=secrets.token_hex(8))
    receipt = await mailer.transport.send(copy)
    log.info("test_sent campaign=%s step=%s", preview.campaign_id, preview.step_id)
    return receipt


def as_test_copy(message: OutgoingEmail, to_address: str, *, nonce: str) -> OutgoingEmail:
    """`message` readdressed to `to_address` alone, its subject prefixed `[TEST] `, `X-Nurture-Test: 1` added,
    under a Message-ID of its own made from `nonce` (`core.tracking.message_id_for_test_copy`).

    Raises:
        HeaderInjectionError: `to_address` holds a line break or is not one address.
    """
    if any(ch in to_address for ch in "\r\n\0,;") or "@" not in to_address:
        raise HeaderInjectionError(f"--to: {to_address!r} is not one email address")
    domain = message.message_id.strip("<>").rpartition("@")[2]
    message_id = message_id_for_test_copy(nonce, domain=domain)
    parsed = BytesParser(policy=email.policy.SMTP).parsebytes(message.data)
    subject = str(parsed["Subject"] or "")
    del parsed["To"], parsed["Subject"], parsed["Message-ID"], parsed[TEST_HEADER]
    parsed["To"] = to_address
    parsed["Subject"] = TEST_SUBJECT_PREFIX + subject
    parsed["Message-ID"] = message_id
    parsed[TEST_HEADER] = "1"
    data = parsed.as_bytes(policy=email.policy.SMTP)
    return replace(message, message_id=message_id, recipients=(to_address,), data=data)


def _job(campaign: Campaign, step: Step, lead: PreviewLead, now: datetime) -> SendJob:
    profile = lead.profile
    value = Lead(
        id=lead.id,
        email=profile.email,
        grade=profile.grade,
        stage=profile.stage,
        score=profile.score,
        timezone=profile.timezone,
        country=profile.country,
        owner=profile.owner,
        tags=profile.tags,
    )
    return SendJob(
        delivery_id=PREVIEW_DELIVERY_ID,
        enrollment_id=0,
        campaign_id=campaign.id,
        step_id=step.id,
        attempts=1,
        enrolled_at=now,
        lead=value,
        profile=replace(profile),
    )


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    if body is None or body.get_content_subtype() != subtype:
        return ""
    content = body.get_content()
    # The wire form has CRLF line ends; a person reads (and an editor saves) plain newlines.
    return content.replace("\r\n", "\n") if isinstance(content, str) else ""
