"""Commands for writing campaigns: `preview`, `simulate`, `test-send` and `test`.

Registered on `nurture.cli.app` when `nurture.cli` imports this module.
"""

from __future__ import annotations

from nurture.cli import app

__all__ = ["app"]
