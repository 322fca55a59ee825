"""`nurture deliveries unknown|resolve`: list the deliveries whose outcome is unknown, and settle them.

Registered on `nurture.cli.app` when `nurture.cli` imports this module.
"""

from __future__ import annotations

import asyncio
import getpass
from typing import Annotated

import typer

from nurture.cli import Format, _iso, _on_database, _print_data, _reported, _settings, _when, app
from nurture.db.engine import Database
from nurture.errors import NurtureError
from nurture.flows.unknown import Resolution, UnknownDelivery, list_unknown, resolve_unknown
from nurture.runtime import build_clock

__all__ = ["app"]

deliveries_app = typer.Typer(no_args_is_help=True, help="Deliveries whose outcome is unknown.")
app.add_typer(deliveries_app, name="deliveries")


@deliveries_app.command("unknown")
def deliveries_unknown(
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """List deliveries whose outcome is unknown, with the Message-ID to look for and what the server said."""
    with _reported():
        found = asyncio.run(_on_database(_settings(), list_unknown))
        data = {"unknown": [_row(d) for d in found]}
        _print_data(data, fmt, lambda: _table(found))


def _row(d: UnknownDelivery) -> dict[str, object]:
    return {
        "id": d.delivery_id,
        "lead_id": d.lead_id,
        "email": d.email,
        "campaign": d.campaign_id,
        "step": d.step_id,
        "attempts": d.attempts,
        "sending_at": _iso(d.sending_at),
        "message_id": d.message_id,
        "server_said": d.server_said,
    }


def _table(found: list[UnknownDelivery]) -> str:
    if not found:
        return "no delivery has an unknown outcome"
    lines = [f"{len(found)} delivery(ies) with an unknown outcome:"]
    for d in found:
        began = _when(d.sending_at) if d.sending_at is not None else "?"
        lines.append(
            f"  {d.delivery_id}  {d.email}  {d.campaign_id}/{d.step_id}  began {began} UTC  "
            f"message-id {d.message_id or '(not recorded)'}  server said: {d.server_said or '(nothing)'}"
        )
    lines.append("check the relay's log, then: nurture deliveries resolve ID --as sent|resend")
    return "\n".join(lines)


@deliveries_app.command("resolve")
def deliveries_resolve(
    delivery_id: Annotated[int | None, typer.Argument(help="The delivery's id.", min=1)] = None,
    every: Annotated[bool, typer.Option("--all", help="Settle every unknown delivery.")] = False,
    resolution: Annotated[
        Resolution | None,
        typer.Option("--as", help="sent: the relay has it; resend: it never reached the relay."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (recorded with who and when).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Settle an unknown delivery once the relay's log was checked: as sent, or to be sent again once."""
    with _reported():
        if resolution is None:
            raise NurtureError("--as sent|resend is required")
        if (delivery_id is None) == (not every):
            raise NurtureError("give one delivery ID or --all")
        settings = _settings()
        now = build_clock(settings).now()
        by = _operator()

        async def resolve(db: Database) -> list[int]:
            return await resolve_unknown(
                db, delivery_id, resolution=resolution, by=by, reason=reason, now=now
            )

        settled = asyncio.run(_on_database(settings, resolve))
        data = {"resolved": settled, "as": resolution.value, "by": by, "reason": reason, "at": _iso(now)}
        _print_data(data, fmt, lambda: _settled_line(settled, resolution))


def _settled_line(settled: list[int], resolution: Resolution) -> str:
    if not settled:
        return "no delivery has an unknown outcome: nothing resolved"
    ids = ", ".join(str(i) for i in settled)
    if resolution is Resolution.SENT:
        return f"resolved as sent: {ids}"
    return f"resolved as resend: {ids} (pending now; the next dispatch sends each once)"


def _operator() -> str:
    """Who settles it: the login name of the user running the command."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown user"
