"""Process runtime shared by the command-line entry points (``edgeway`` and ``edgeway lab``):
event loop selection (uvloop on Linux when installed)."""

from __future__ import annotations

import asyncio
import sys


def install_event_loop_policy() -> None:
    """Use uvloop's event loop policy on Linux (falls back to asyncio's silently)."""
    if sys.platform == "linux":
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:  # pragma: no cover
            pass
