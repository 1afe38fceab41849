"""Process runtime shared by the command-line entry points (``edgeway`` and ``edgeway lab``):
event loop selection (uvloop on Linux when installed)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
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
#: Seconds between two looks at the resident set size, and the growth (fraction) since
#: the last trim that makes the node collect fully and hand free heap back to the
#: kernel (glibc ``malloc_trim``): after a burst of failed TLS handshakes or a flood
#: the allocator otherwise keeps its high-water mark for good (issue 7 item 7).
MEMORY_CHECK_S = 10.0
MEMORY_GROWTH = 0.10


def _libc_malloc_trim():
    """glibc's ``malloc_trim(size_t)`` or None (musl, other platforms)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``; 0 when
    it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class GcPolicy:
    """The cycle collector's schedule for a long-running node (the node's per-call state
    is built without reference cycles, so the collector finds almost nothing; what it
    costs is scanning what is alive, and its pauses are what a call's latency sees).

    Every :data:`GC_FREEZE_S` everything alive is frozen (``gc.freeze()``), so young
    collections only ever scan what was made since — pauses stay short whatever the
    number of calls in progress; every :data:`GC_FULL_S` the frozen objects are
    released and one full collection reclaims any cyclic garbage that was frozen. Use
    :meth:`start` on the node's event loop and :meth:`stop` when it stops.

    Every :data:`MEMORY_CHECK_S` the resident set size is read; when it has grown by
    :data:`MEMORY_GROWTH` since the last trim, a full collection runs at once and
    glibc's ``malloc_trim(0)`` returns the free heap to the kernel; while it stays
    :data:`MEMORY_GROWTH` above the idle size (``baseline``) the same is done after 10,
    20, 40 … s (up to ``full_s``; back to 10 s once the size is back), so what a burst
    left behind goes back once it ends, and a node busy for good pays little (``trims``
    counts them; ``rss_after_trim`` is the size in bytes after the last one)."""

    def __init__(self, freeze_s: float = GC_FREEZE_S, full_s: float = GC_FULL_S,
                 memory_check_s: float = MEMORY_CHECK_S, memory_growth: float = MEMORY_GROWTH):
        self.freeze_s = freeze_s
        self.full_s = full_s
        self.memory_check_s = memory_check_s
        self.memory_growth = memory_growth
        self._handle = None
        self._next_full = 0.0
        self._next_memory = 0.0
        self._trim = _libc_malloc_trim()
        self.trims = 0
        self.rss_after_trim = 0
        #: The smallest size (bytes) seen after start-up or a trim: the idle size.
        self.baseline = 0
        self._above_wait = memory_check_s
        self._next_above = 0.0

    def start(self, loop) -> None:
        import gc

        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
        self._next_full = loop.time() + self.full_s
        self._next_memory = loop.time() + self.memory_check_s
        self.rss_after_trim = self.baseline = rss_bytes()
        self._handle = loop.call_later(self.freeze_s, self._tick, loop)

    def _tick(self, loop) -> None:
        import gc

        now = loop.time()
        full = now >= self._next_full
        if now >= self._next_memory:
            self._next_memory = now + self.memory_check_s
            rss = rss_bytes()
            if rss > self.rss_after_trim * (1.0 + self.memory_growth):
                full = True
            elif rss > self.baseline * (1.0 + self.memory_growth) and now >= self._next_above:
                # Still above the idle size: cyclic garbage frozen during a burst (failed
                # TLS handshakes) is only found by a full collection. Back off while it
                # finds nothing to give back (a node that is simply busy).
                full = True
                self._above_wait = min(self.full_s, self._above_wait * 2)
                self._next_above = now + self._above_wait
        if full:
            gc.unfreeze()
            gc.collect()
            self._next_full = now + self.full_s
            if self._trim is not None:
                self._trim(0)
            self.trims += 1
            self.rss_after_trim = rss_bytes()
            if self.rss_after_trim <= self.baseline * (1.0 + self.memory_growth):
                self._above_wait = self.memory_check_s
                self._next_above = 0.0
            self.baseline = min(self.baseline, self.rss_after_trim)
        gc.freeze()
        self._handle = loop.call_later(self.freeze_s, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
