"""Commands for privacy and deliverability: erasing a lead while keeping its address unsendable.

Registered on `nurture.cli.app` when `nurture.cli` imports this module.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from nurture.cli import (
    Format,
    _iso,
    _lead_email,
    _on_database,
    _print_data,
    _reported,
    _settings,
    app,
    lead_app,
)
from nurture.db.engine import Database
from nurture.flows.erase import Erasure, erase_lead
from nurture.runtime import build_clock

__all__ = ["app"]


@lead_app.command("erase")
def lead_erase(
    email: Annotated[str, typer.Argument(help="The address whose personal data is to be erased.")],
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Erase a lead's personal data; keep a hash of the address so it is never mailed again."""
    with _reported():
        settings = _settings()
        address = _lead_email(email)
        now = build_clock(settings).now()

        async def erase(db: Database) -> Erasure:
            return await erase_lead(db, address, now=now)

        done = asyncio.run(_on_database(settings, erase))
        data = {"lead_id": done.lead_id, "address_hash": done.address_hash, "erased_at": _iso(done.erased_at)}
        if done.lead_id is None:
            line = f"no lead had this address; it is suppressed (sha256 {done.address_hash})"
        else:
            line = f"lead {done.lead_id} erased; the address stays suppressed (sha256 {done.address_hash})"
        _print_data(data, fmt, lambda: line)
