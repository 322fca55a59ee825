"""OutboxTransport: one parseable .eml per Message-ID, written atomically, a re-send overwrites."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nurture.core.campaign import Sender
from nurture.core.message import compose
from nurture.errors import TransientSendError
from nurture.ports import OutgoingEmail, RenderedEmail
from nurture.transports.outbox import RECEIPT, OutboxTransport, outbox_filename

MESSAGE_ID = "<d42.0123456789abcdef@acme.example>"


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def message(text: str = "Hello Ann", *, message_id: str = MESSAGE_ID) -> OutgoingEmail:
    return compose(
        rendered=RenderedEmail(subject="Your guide", html=f"<p>{text}</p>", text=text),
        sender=Sender(from_address="Acme Growth <growth@acme.example>"),
        to_address="ann@lead.example",
        to_name="Ann Lee",
        reply_to=None,
        message_id=message_id,
        unsubscribe_url="https://t.acme.example/u/token",
        unsubscribe_mailto=None,
        campaign_id="welcome",
        step_id="day0_welcome",
        sent_date=datetime(2025, 3, 4, 9, 30, tzinfo=UTC),
    )


async def test_outbox_writes_a_file_that_parses_back(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "outbox")
    sent = message()
    receipt = await outbox.send(sent)
    assert (receipt.message_id, receipt.response) == (MESSAGE_ID, RECEIPT)
    assert listing(tmp_path / "outbox") == ["d42.0123456789abcdef@acme.example.eml"]
    path = tmp_path / "outbox" / "d42.0123456789abcdef@acme.example.eml"
    assert path.read_bytes() == sent.data
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == MESSAGE_ID
    assert parsed["To"] == "Ann Lee <ann@lead.example>"


async def test_outbox_overwrites_when_the_same_message_is_sent_again(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path)
    await outbox.send(message("first"))
    await outbox.send(message("second"))
    assert listing(tmp_path) == ["d42.0123456789abcdef@acme.example.eml"]  # and no temporary file
    assert (tmp_path / "d42.0123456789abcdef@acme.example.eml").read_bytes() == message("second").data


async def test_outbox_keeps_different_messages_apart(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path)
    await outbox.send(message(message_id="<d1.a@acme.example>"))
    await outbox.send(message(message_id="<d2.a@acme.example>"))
    assert listing(tmp_path) == ["d1.a@acme.example.eml", "d2.a@acme.example.eml"]


@pytest.mark.parametrize(
    ("first", "second"),
    [("<a/b@x>", "<a_b@x>"), ("<../../etc@x>", "<.._.._etc@x>"), ("<a\\b@x>", "<a:b@x>")],
)
def test_outbox_filename_is_safe_and_distinct(first: str, second: str) -> None:
    names = {outbox_filename(first), outbox_filename(second)}
    assert len(names) == 2
    for name in names:
        assert "/" not in name
        assert "\\" not in name
        assert not name.startswith(".")
        assert name.endswith(".eml")


async def test_outbox_reports_a_folder_that_is_a_file_as_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("not a folder")
    with pytest.raises(TransientSendError, match="outbox") as raised:
        await OutboxTransport(blocker).send(message())
    assert isinstance(raised.value.__cause__, OSError)


async def test_an_unwritable_outbox_is_no_deferral_of_the_recipients_domain(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("not a folder")
    with pytest.raises(TransientSendError) as raised:
        await OutboxTransport(blocker).send(message())
    assert (raised.value.code, raised.value.deferral) == (None, False)
