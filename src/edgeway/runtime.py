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


#: Young-generation threshold of the cycle collector for a running node (CPython's
#: default is 700 allocations; a node allocates thousands of short-lived objects per
#: call, freed by reference counting, so collecting that often only costs time).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Set up the cycle collector for a long-running node: objects alive once the node
    has started (modules, configuration, listeners) are frozen out of every later
    collection, and young collections run every :data:`GC_GEN0_THRESHOLD` allocations.
    Cycles are still collected; the node's own per-call state is built without them."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
