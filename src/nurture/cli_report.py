"""`nurture report`: the funnel per stage, campaign and step, and lead quality per source.

Registered on `nurture.cli.app` when `nurture.cli` imports this module.
"""

from __future__ import annotations

from nurture.cli import app

__all__ = ["app"]
