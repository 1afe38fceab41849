"""Structured event log: one JSON line per event (DESIGN.md §3 ``diag/``).

Every failure path emits one event that names its cause. Lines look like::

    {"ts": 1763700000.123, "node": "edge", "event": "call attempted", "call_id": "...", ...}

``ts`` is seconds since the epoch (float). Event names are lower-case operator words
taken from the seeds (seed 003 §6.6, §12.1): ``call attempted``, ``search completed``,
``call connected``, ``call disconnected``, ``call rejected``, ``tls handshake``,
``tls handshake failed``, ``traversal connected``, ``traversal disconnected``,
``sip message`` (one per message sent or received: the hop-by-hop ladder), ``bad message``,
``events dropped`` (the rate cap's counter, below).

A log must stay bounded on a loaded or attacked node (issue 7 item 4: an INVITE flood of
5,000/s for 10 s grew an edge's log by 81 MB; the requirement is < 5 MB): a file log
rotates by size (``max_bytes``, ``backup_count``, as :class:`logging.handlers.RotatingFileHandler`
names them) and each event type is rate capped (``max_events_per_s``): lines over the cap
are not written, and about once per second one line counts them::

    {"ts": ..., "node": "edge", "event": "events dropped", "dropped_event": "call rejected", "count": 4800}
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import IO, Any

from ..config.models import LOG_MODULES

__all__ = ["EventLog", "NULL_LOG", "FLUSH_INTERVAL_S", "DROP_REPORT_INTERVAL_S", "DROPPED_EVENT"]


def _make_encoder():
    """``json.dumps(rec, default=str, ensure_ascii=False)`` without building a
    JSONEncoder and a C encoder per call: one C encoder made once (no circular-
    reference bookkeeping: a circular record fails with RecursionError instead of
    ValueError, and either way nothing is written)."""
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # no _json C module: the pure-Python encoder
        return json.JSONEncoder(default=str, ensure_ascii=False).encode
    c_encode = c_make_encoder(None, str, json.encoder.encode_basestring, None, ": ", ", ", False, False, True)
    return lambda rec: "".join(c_encode(rec, 0))


_encode = _make_encoder()


#: Seconds a line written to a log file may wait in memory before it reaches the file
#: (the node also flushes on this period while idle, and on close).
FLUSH_INTERVAL_S = 0.1
_quote = json.encoder.encode_basestring  # str -> JSON string literal, non-ASCII kept (C)
#: Seconds between two ``events dropped`` lines of one event type (at least; the line
#: is written by the next emit of that type or the next :meth:`EventLog.flush` after).
DROP_REPORT_INTERVAL_S = 1.0
#: Name of the event that counts the lines the rate cap dropped.
DROPPED_EVENT = "events dropped"
_monotonic = time.monotonic


#: Log levels by name (the ``logging`` module's numbers).
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LEVEL_NAMES = {v: k for k, v in LEVELS.items()}
#: Modules an event belongs to (issue 11 item 1); ``[log] modules`` and ``edgeway log-level``
#: set a level per module.
MODULES = LOG_MODULES
_MODULE_OF = {
    "sip message": "sip", "bad message": "sip", "message dropped": "sip", "response dropped": "sip",
    "ack dropped": "sip", "dialog not found": "sip", "send failed": "sip", "load shed": "sip", "flow failed": "sip",
    "next hop failed": "zone", "next hop timeout": "zone", "connect failed": "zone", "connect refused": "zone",
    "tls handshake failed": "tls", "tls classified": "tls", "search completed": "search",
    "call attempted": "call", "call connected": "call", "call rejected": "policy", "call disconnected": "call",
    "call cleared": "call", "media closed": "media", "media ports exhausted": "media", "sdp rewrite failed": "media",
    "srtp keyed": "media", "srtp interworking failed": "media", "dns resolved": "dns", "dns failed": "dns",
    "flood limit": "security", "source blocked": "security", "accept failed": "security",
    "idle connections closed": "security", "sip authentication failed": "security", "stale data discarded": "traversal",
    "registered": "registrar",
}
_PREFIX_MODULE = (("traversal", "traversal"), ("mra", "http"), ("config", "node"), ("node", "node"),
                  ("maintenance", "node"), ("internal", "node"), ("events", "node"))


def event_class(event: str) -> tuple[str, int]:
    """``(module, level number)`` of an event name: failures, refusals and drops are
    WARNING, ``internal error`` ERROR, the rest INFO."""
    module = _MODULE_OF.get(event)
    if module is None:
        module = next((m for prefix, m in _PREFIX_MODULE if event.startswith(prefix)), "node")
    if event == "internal error":
        level = 40
    elif any(w in event for w in ("failed", "refused", "dropped", "blocked", "exhausted", "rejected", "shed", "limit")):
        level = 30
    else:
        level = 20
    return module, level


class EventLog:
    """Writes events as JSON lines to a file path or a stream (stderr by default).

    ``sip_messages`` turns the per-message ``sip message`` events on or off (they are
    what the lab's ladder is built from; callers test it before building one). A node
    takes it from :class:`~edgeway.config.LogConfig`, where it is off by default.

    Lines to a file are buffered and reach it within :data:`FLUSH_INTERVAL_S` of
    being written (checked on every emit; an event loop owner calls :meth:`flush`
    on that period so an idle log is flushed too), not with one system call each.

    Bounds (issue 7 item 4). The defaults here are "unbounded" (tests, library use);
    a node takes its ``[log]`` section's:

    * ``max_bytes`` (bytes, 0 = never rotate): a line that would take the file past
      it first rotates the file as ``logging.handlers.RotatingFileHandler`` does:
      ``path.<N-1>`` → ``path.<N>`` … ``path`` → ``path.1`` with N = ``backup_count``
      (the oldest is overwritten), then ``path`` starts empty. Whole lines only: a
      line never spans two files, and a line longer than ``max_bytes`` gets a file
      of its own. The size is the file's size at open plus this log's own count of
      the UTF-8 bytes it wrote since (no system call per line; another writer of the
      same file is not seen). ``backup_count`` 0 keeps no backup: the file is
      emptied (``RotatingFileHandler`` would not rotate at all). Only a log that
      opened ``path`` itself rotates.
    * ``max_events_per_s`` (lines per second per event type, 0 = no cap): a token
      bucket per event type, refilled at ``max_events_per_s`` lines per second, burst
      (bucket size) ``max_events_per_s`` lines, kept as one "theoretical arrival
      time" per type (GCRA, the same decisions as the bucket; one float per line).
      A line over the cap is neither encoded nor written, only counted; at most once
      per :data:`DROP_REPORT_INTERVAL_S` per type, one ``events dropped`` line
      (``dropped_event``, ``count``) says how many lines of that type were not
      written since the last such line. It is written by the next emit of that type
      after the interval, by :meth:`flush` (a node calls it every
      :data:`FLUSH_INTERVAL_S`) or by :meth:`close`; it is not itself capped.

    ``counts[event]`` counts every emit, written, dropped or neither (``events
    dropped`` lines are counted too).
    """

    def __init__(self, node: str, path: str | None = None, stream: IO[str] | None = None, *,
                 sip_messages: bool = True, max_bytes: int = 0, backup_count: int = 0, max_events_per_s: int = 0):
        self.node = node
        self.sip_messages = sip_messages
        self._lock = threading.Lock()
        self._path = path
        self._size = 0  # bytes in the file (own count; used only when rotating)
        if path:
            self._fh: IO[str] | None = self._open(path)
            self._own = True
        else:
            self._fh = stream if stream is not None else sys.stderr
            self._own = False
        self.counts: dict[str, int] = {}
        #: Lowest level written per module (issue 11 item 1); modules not listed use
        #: :attr:`level`. Events under it are counted (and observed), not written.
        self.module_levels: dict[str, int] = {}
        self.level = 0
        self._classes: dict[str, tuple[str, int]] = {}
        #: Called with ``(event, fields)`` for every emit, before the rate cap (the node's
        #: search and call history, :mod:`edgeway.diag.history`); None: nobody.
        self.observer: Any = None
        self._buffered = bool(path)
        self._flush_at = _monotonic() + FLUSH_INTERVAL_S
        self._max_bytes = max_bytes if path else 0
        self._backup_count = backup_count
        # Rate cap (GCRA): a line of type E is written when _tat[E] - now <= _slack, and
        # then moves _tat[E] (floored at now) one _interval later. A burst of B = rate
        # lines passes when _slack lies between (B - 1) and B intervals: half-way, so
        # that the float sum of B - 1 intervals never turns the B-th line away.
        self._rate = max_events_per_s
        self._interval = 1.0 / max_events_per_s if max_events_per_s else 0.0
        self._slack = (max_events_per_s - 0.5) * self._interval
        self._tat: dict[str, float] = {}
        self._dropped: dict[str, int] = {}  # lines not written since the last report, per type
        self._report_at: dict[str, float] = {}  # monotonic s the next report of a type is due

    def _open(self, path: str) -> IO[str]:
        fh = open(path, "a", buffering=1 << 16, encoding="utf-8")
        try:
            self._size = os.fstat(fh.fileno()).st_size
        except OSError:
            self._size = 0
        return fh

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line; never raises (a logging failure must not break a call).

        The line is ``{"ts": <float s>, "node": ..., "event": ..., **fields}`` as
        ``json.dumps(rec, default=str, ensure_ascii=False)`` writes it (a field named
        ts/node/event replaces that value in place). ``counts[event]`` goes up by
        one whether or not anything is written. Thread-safe: the line is encoded
        outside the lock, counted and written under it. A line the rate cap will
        drop is not encoded.
        """
        line = now = None
        if self.observer is not None:
            try:
                self.observer(event, fields)
            except Exception:  # noqa: BLE001 - an observer must not break logging
                pass
        cls = self._classes.get(event)
        if cls is None:
            cls = self._classes[event] = event_class(event)
        if cls[1] < self.module_levels.get(cls[0], self.level):
            self._write(event, None, None)
            return
        if self._fh is not None:
            if self._rate:  # the cap's decision, before the line is built
                now = _monotonic()
                tat = self._tat.get(event, now)
                if tat < now:
                    tat = now
                if tat - now > self._slack:
                    self._write(event, None, now, True)
                    return
                self._tat[event] = tat + self._interval
            rec = {"ts": round(time.time(), 6), "node": self.node, "event": event, "module": cls[0],
                   "level": _LEVEL_NAMES[cls[1]]}
            rec.update(fields)
            try:
                line = _encode(rec) + "\n"
            except Exception:  # noqa: BLE001 - logging is best effort
                pass
        self._write(event, line, now)

    def _write(self, event: str, line: str | None, now: float | None = None, drop: bool = False) -> None:
        """Count ``event``; write ``line`` unless it is None or over the rate cap.
        ``now``: the monotonic clock read before the line was encoded (read here when
        None); ``drop``: the caller found the line over the cap and did not encode it.

        The cap's decision is taken by the caller outside the lock (it is the one
        per-line cost of the cap): two threads racing on one event type may each see
        the same bucket and let one line too many through, never fewer."""
        with self._lock:
            self.counts[event] = self.counts.get(event, 0) + 1
            fh = self._fh
            if fh is None:
                return
            try:
                if line is None:
                    if drop:
                        self._drop(event, now if now is not None else _monotonic())
                    return
                if now is None:
                    now = _monotonic()
                if self._dropped and event in self._dropped and now >= self._report_at[event]:
                    self._report_dropped(event, now)
                    fh = self._fh
                if self._max_bytes:  # the rotation check (inline: it runs per line)
                    n = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
                    size = self._size + n
                    if size > self._max_bytes and self._size:
                        self._rotate()
                        fh = self._fh
                        size = self._size + n
                    self._size = size
                fh.write(line)
                if self._buffered and now >= self._flush_at:
                    if self._dropped:
                        self._report_due(now)
                    self._fh.flush()
                    self._flush_at = now + FLUSH_INTERVAL_S
            except Exception:  # noqa: BLE001 - logging is best effort
                pass

    def _drop(self, event: str, now: float) -> None:
        """One line of ``event`` over the cap (lock held): count it; report when due."""
        n = self._dropped.get(event, 0)
        if not n:
            self._report_at[event] = now + DROP_REPORT_INTERVAL_S
        self._dropped[event] = n + 1
        if now >= self._report_at[event]:
            self._report_dropped(event, now)

    def _report_dropped(self, event: str, now: float) -> None:
        """Write the ``events dropped`` line of ``event`` (lock held); counting starts afresh."""
        rec = {"ts": round(time.time(), 6), "node": self.node, "event": DROPPED_EVENT,
               "dropped_event": event, "count": self._dropped.pop(event)}
        self._report_at[event] = now + DROP_REPORT_INTERVAL_S
        self.counts[DROPPED_EVENT] = self.counts.get(DROPPED_EVENT, 0) + 1
        self._put(_encode(rec) + "\n")

    def _report_due(self, now: float | None) -> None:
        """Write the ``events dropped`` lines due at ``now`` (every one when None; lock held)."""
        for event in sorted(self._dropped):
            if now is None or now >= self._report_at[event]:
                self._report_dropped(event, _monotonic() if now is None else now)

    def _put(self, line: str) -> None:
        """Write one line (lock held), first rotating the file when the line would
        take it past ``max_bytes``."""
        if self._max_bytes:
            n = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
            if self._size and self._size + n > self._max_bytes:
                self._rotate()
            self._size += n
        assert self._fh is not None
        self._fh.write(line)

    def _rotate(self) -> None:
        """``path`` → ``path.1`` → … → ``path.<backup_count>`` (lock held), then a fresh
        ``path``. A rename that fails leaves the files as they are (logging goes on into
        ``path``); a file that cannot be reopened ends writing (events are still counted)."""
        path = self._path
        assert path is not None and self._fh is not None
        try:
            self._fh.close()
        except Exception:  # noqa: BLE001 - a failed flush loses what was buffered, not the log
            pass
        self._fh = None
        try:
            if self._backup_count > 0:
                for i in range(self._backup_count - 1, 0, -1):
                    if os.path.exists(f"{path}.{i}"):
                        os.replace(f"{path}.{i}", f"{path}.{i + 1}")
                os.replace(path, f"{path}.1")
            else:
                os.truncate(path, 0)
        except OSError:
            pass
        self._fh = self._open(path)

    def sip_message(self, direction: str, transport: str, peer: str, call_id: str, line: str, cseq: str | None) -> None:
        """The ``sip message`` event of one message sent or received (the ladder): the
        same JSON line :meth:`emit` writes for ``emit("sip message", dir=direction,
        transport=..., peer=..., call_id=..., line=..., cseq=...)``, formatted without
        the generic encoder (it is written for every message), and not at all when the
        rate cap will drop it."""
        if type(self).emit is not EventLog.emit:  # a subclass that records events sees these too
            self.emit("sip message", dir=direction, transport=transport, peer=peer, call_id=call_id, line=line, cseq=cseq)
            return
        if 20 < self.module_levels.get("sip", self.level):
            self._write("sip message", None, None)
            return
        out = now = None
        if self._fh is not None:
            if self._rate:  # the cap's decision, before the line is built
                now = _monotonic()
                tat = self._tat.get("sip message", now)
                if tat < now:
                    tat = now
                if tat - now > self._slack:
                    self._write("sip message", None, now, True)
                    return
                self._tat["sip message"] = tat + self._interval
            try:
                out = (f'{{"ts": {time.time():.6f}, "node": {_quote(self.node)}, "event": "sip message", '
                       f'"module": "sip", "level": "INFO", '
                       f'"dir": {_quote(direction)}, "transport": {_quote(transport)}, "peer": {_quote(peer)}, '
                       f'"call_id": {_quote(call_id)}, "line": {_quote(line)}, '
                       f'"cseq": {_quote(cseq) if cseq is not None else "null"}}}\n')
            except Exception:  # noqa: BLE001 - logging is best effort
                pass
        self._write("sip message", out, now)

    def flush(self) -> None:
        """Write the ``events dropped`` lines that are due, then what is buffered
        (never raises)."""
        with self._lock:
            if self._fh is not None:
                try:
                    if self._dropped:
                        self._report_due(_monotonic())
                    if self._fh is not None:
                        self._fh.flush()
                except Exception:  # noqa: BLE001
                    pass
            self._flush_at = _monotonic() + FLUSH_INTERVAL_S

    def close(self) -> None:
        """Write every pending ``events dropped`` line, then close the file this log
        opened (a stream given to it stays open); later events are counted, not written."""
        with self._lock:
            if self._fh is not None and self._dropped:
                try:
                    self._report_due(None)
                except Exception:  # noqa: BLE001 - logging is best effort
                    pass
            if self._own and self._fh is not None:
                self._fh.close()
            self._fh = None


class _NullLog(EventLog):
    def __init__(self) -> None:
        super().__init__("null", stream=None)
        self._fh = None


#: An event log that counts but writes nothing (tests, library use).
NULL_LOG = _NullLog()
