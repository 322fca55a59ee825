"""Commands for privacy and deliverability: erasing a lead while keeping its address unsendable.

Registered on `nurture.cli.app` when `nurture.cli` imports this module.
"""

from __future__ import annotations

from nurture.cli import app

__all__ = ["app"]
