"""Event loop selection for the command line (see :mod:`edgeway.runtime`)."""

from __future__ import annotations

from ..runtime import install_event_loop_policy

__all__ = ["install_event_loop_policy"]
