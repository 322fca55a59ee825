"""The outbox `Transport` of the embedded default: each message becomes one `.eml` file in a folder.

Files are named after the Message-ID, which a retry reuses, so sending a message twice leaves one file.
Each is written to a temporary file and renamed into place, so a reader never sees half a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Final

from nurture.errors import TransientSendError
from nurture.ports import OutgoingEmail, SendReceipt

logger = logging.getLogger(__name__)

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._@+-]")
RECEIPT: Final = "250 written to outbox"


def outbox_filename(message_id: str) -> str:
    """Return the file name for a Message-ID: safe on any file system, and distinct for distinct ids."""
    stem = message_id.strip().removeprefix("<").removesuffix(">")
    safe = _UNSAFE.sub("_", stem)[:150].lstrip(".")
    if safe != stem or not safe:
        # characters were replaced or cut: a hash of the original keeps two such ids apart
        safe = f"{safe}-{hashlib.sha256(message_id.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"
    return f"{safe}.eml"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())  # the rename must not publish a file whose bytes are not yet on disk
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class OutboxTransport:
    """Writes each message to `<directory>/<message-id>.eml` instead of sending it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: OutgoingEmail) -> SendReceipt:
        """Write `message` to the outbox, replacing an earlier copy with the same Message-ID."""
        path = self.directory / outbox_filename(message.message_id)
        try:
            await asyncio.to_thread(_write_atomically, path, message.data)
        except OSError as exc:  # a full disk or a wrong permission is fixed by an operator: try again later
            logger.warning("outbox write failed message_id=%s error=%s", message.message_id, exc.strerror)
            raise TransientSendError(f"cannot write to the outbox: {exc}", deferral=False) from exc
        logger.debug("written to outbox message_id=%s", message.message_id)
        return SendReceipt(message_id=message.message_id, response=RECEIPT)

    async def aclose(self) -> None:
        """Nothing to release: every send opens and closes its own file."""
