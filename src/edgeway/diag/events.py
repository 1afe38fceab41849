"""Structured event log: one JSON line per event (DESIGN.md §3 ``diag/``).

Every failure path emits one event that names its cause. Lines look like::

    {"ts": 1763700000.123, "node": "edge", "event": "call attempted", "call_id": "...", ...}

``ts`` is seconds since the epoch (float). Event names are lower-case operator words
taken from the seeds (seed 003 §6.6, §12.1): ``call attempted``, ``search completed``,
``call connected``, ``call disconnected``, ``call rejected``, ``tls handshake``,
``tls handshake failed``, ``traversal connected``, ``traversal disconnected``,
``sip message`` (one per message sent or received: the hop-by-hop ladder), ``bad message``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

__all__ = ["EventLog", "NULL_LOG", "FLUSH_INTERVAL_S"]


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


class EventLog:
    """Writes events as JSON lines to a file path or a stream (stderr by default).

    ``sip_messages`` turns the per-message ``sip message`` events on or off (they are
    what the lab's ladder is built from; a loaded node may switch them off).

    Lines to a file are buffered and reach it within :data:`FLUSH_INTERVAL_S` of
    being written (checked on every emit; an event loop owner calls :meth:`flush`
    on that period so an idle log is flushed too), not with one system call each.
    """

    def __init__(self, node: str, path: str | None = None, stream: IO[str] | None = None, *, sip_messages: bool = True):
        self.node = node
        self.sip_messages = sip_messages
        self._lock = threading.Lock()
        if path:
            self._fh: IO[str] | None = open(path, "a", buffering=1 << 16, encoding="utf-8")
            self._own = True
        else:
            self._fh = stream if stream is not None else sys.stderr
            self._own = False
        self.counts: dict[str, int] = {}
        self._buffered = bool(path)
        self._flush_at = time.monotonic() + FLUSH_INTERVAL_S

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line; never raises (a logging failure must not break a call).

        The line is ``{"ts": <float s>, "node": ..., "event": ..., **fields}`` as
        ``json.dumps(rec, default=str, ensure_ascii=False)`` writes it (a field named
        ts/node/event replaces that value in place). ``counts[event]`` goes up by
        one whether or not anything is written. Thread-safe: the line is encoded
        outside the lock, counted and written under it.
        """
        line = None
        if self._fh is not None:
            rec = {"ts": round(time.time(), 6), "node": self.node, "event": event}
            rec.update(fields)
            try:
                line = _encode(rec) + "\n"
            except Exception:  # noqa: BLE001 - logging is best effort
                pass
        self._write(event, line)

    def _write(self, event: str, line: str | None) -> None:
        with self._lock:
            self.counts[event] = self.counts.get(event, 0) + 1
            if line is not None and self._fh is not None:
                try:
                    self._fh.write(line)
                    if self._buffered:
                        now = time.monotonic()
                        if now >= self._flush_at:
                            self._fh.flush()
                            self._flush_at = now + FLUSH_INTERVAL_S
                except Exception:  # noqa: BLE001 - logging is best effort
                    pass

    def sip_message(self, direction: str, transport: str, peer: str, call_id: str, line: str, cseq: str | None) -> None:
        """The ``sip message`` event of one message sent or received (the ladder): the
        same JSON line :meth:`emit` writes for ``emit("sip message", dir=direction,
        transport=..., peer=..., call_id=..., line=..., cseq=...)``, formatted without
        the generic encoder (it is written for every message)."""
        if type(self).emit is not EventLog.emit:  # a subclass that records events sees these too
            self.emit("sip message", dir=direction, transport=transport, peer=peer, call_id=call_id, line=line, cseq=cseq)
            return
        out = None
        if self._fh is not None:
            try:
                out = (f'{{"ts": {time.time():.6f}, "node": {_quote(self.node)}, "event": "sip message", '
                       f'"dir": {_quote(direction)}, "transport": {_quote(transport)}, "peer": {_quote(peer)}, '
                       f'"call_id": {_quote(call_id)}, "line": {_quote(line)}, '
                       f'"cseq": {_quote(cseq) if cseq is not None else "null"}}}\n')
            except Exception:  # noqa: BLE001 - logging is best effort
                pass
        self._write("sip message", out)

    def flush(self) -> None:
        """Write out what is buffered (never raises)."""
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.flush()
                except Exception:  # noqa: BLE001
                    pass
            self._flush_at = time.monotonic() + FLUSH_INTERVAL_S

    def close(self) -> None:
        """Close the file this log opened (a stream given to it stays open); later
        events are counted, not written."""
        with self._lock:
            if self._own and self._fh is not None:
                self._fh.close()
            self._fh = None


class _NullLog(EventLog):
    def __init__(self) -> None:
        super().__init__("null", stream=None)
        self._fh = None


#: An event log that counts but writes nothing (tests, library use).
NULL_LOG = _NullLog()
