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


#: Young-generation threshold of the cycle collector for a running node (CPython's default
#: is 700 allocations; a node's per-call state is freed by reference counting).
GC_GEN0_THRESHOLD = 2000
#: Seconds between two freezes of everything alive into the collector's permanent
#: generation, and between two full collections (which un-freeze first).
GC_FREEZE_S = 1.0
GC_FULL_S = 600.0


class GcPolicy:
    """The cycle collector's schedule for a long-running node (the node's per-call state
    is built without reference cycles, so the collector finds almost nothing; what it
    costs is scanning what is alive, and its pauses are what a call's latency sees).

    Every :data:`GC_FREEZE_S` everything alive is frozen (``gc.freeze()``), so young
    collections only ever scan what was made since — pauses stay short whatever the
    number of calls in progress; every :data:`GC_FULL_S` the frozen objects are
    released and one full collection reclaims any cyclic garbage that was frozen. Use
    :meth:`start` on the node's event loop and :meth:`stop` when it stops."""

    def __init__(self, freeze_s: float = GC_FREEZE_S, full_s: float = GC_FULL_S):
        self.freeze_s = freeze_s
        self.full_s = full_s
        self._handle = None
        self._next_full = 0.0

    def start(self, loop) -> None:
        import gc

        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
        self._next_full = loop.time() + self.full_s
        self._handle = loop.call_later(self.freeze_s, self._tick, loop)

    def _tick(self, loop) -> None:
        import gc

        if loop.time() >= self._next_full:
            gc.unfreeze()
            gc.collect()
            self._next_full = loop.time() + self.full_s
        gc.freeze()
        self._handle = loop.call_later(self.freeze_s, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
