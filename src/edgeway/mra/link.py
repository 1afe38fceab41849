"""asyncio adapter shared by both ends of the MRA tunnel (one connection = one
:class:`TunnelLink` around a sans-IO :mod:`edgeway.mra.tunnel` machine).

It writes what the machine queues, keeps the connection alive with HTTP/2 PING (RFC 9113
§6.7) every ``keepalive_s`` seconds and aborts it when a PING stays unanswered for
``dead_after_s`` seconds, and keeps one :class:`Exchange` per stream (a head future, a
bounded body queue fed under flow control, a writable event for the sender).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from .tunnel import SEND_HIGH_WATER, DataReceived, PingAcked, ProtocolFailure, StreamEnded, StreamReset, TunnelClosed, _Tunnel

__all__ = ["TunnelLost", "StreamAborted", "Exchange", "TunnelLink"]


class TunnelLost(Exception):
    """The tunnel connection carrying a stream ended."""


class StreamAborted(Exception):
    """The peer reset the stream (RST_STREAM)."""


class Exchange:
    """One stream: ``head`` resolves to the peer's head (whatever the subclass puts there);
    ``body`` yields ``bytes`` pieces then ``None`` at the end (or raises the failure);
    ``writable`` is set while the outbound buffer is below :data:`SEND_HIGH_WATER`."""

    __slots__ = ("sid", "head", "body", "writable", "done", "task")

    def __init__(self, sid: int, loop: asyncio.AbstractEventLoop):
        self.sid = sid
        self.head: asyncio.Future = loop.create_future()
        self.body: asyncio.Queue = asyncio.Queue()
        self.writable = asyncio.Event()
        self.writable.set()
        self.done = False
        self.task: asyncio.Task | None = None

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: nobody may be waiting any more
        self.body.put_nowait(exc)
        self.writable.set()
        if self.task is not None:
            self.task.cancel()

    async def read(self) -> bytes | None:
        """The next body piece, ``None`` at the end; raises the stream's failure."""
        item = await self.body.get()
        if isinstance(item, BaseException):
            self.body.put_nowait(item)
            raise item
        if item is None:
            self.done = True
        return item


class TunnelLink(asyncio.Protocol):
    """Base protocol: subclasses create :attr:`tunnel` in :meth:`connection_made` (then call
    :meth:`_started`) and handle the events :meth:`_event` does not."""

    tunnel: _Tunnel

    def __init__(self, keepalive_s: float, dead_after_s: float, on_closed: Callable[["TunnelLink", str], None]):
        self.keepalive_s = keepalive_s
        self.dead_after_s = dead_after_s
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.exchanges: dict[int, Exchange] = {}
        self.peer = ""
        self.close_reason = "connection closed"
        self.closed = asyncio.get_running_loop().create_future()
        self._ka: asyncio.TimerHandle | None = None
        self._dead: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    # -- lifecycle ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"

    def _started(self) -> None:
        self.flush()
        self._ka = self._loop.call_later(self.keepalive_s, self._keepalive)

    def _keepalive(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.tunnel.ping(secrets.token_bytes(8))
        self.flush()
        if self._dead is None:
            self._dead = self._loop.call_later(self.dead_after_s, self._no_answer)
        self._ka = self._loop.call_later(self.keepalive_s, self._keepalive)

    def _no_answer(self) -> None:
        self.abort(f"no answer to keepalive PING within {self.dead_after_s:g} s")

    def abort(self, reason: str) -> None:
        """Drop the connection now (every stream on it fails with :class:`TunnelLost`)."""
        self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def close(self, reason: str = "closed") -> None:
        """GOAWAY, then close after the queued bytes are written."""
        self.close_reason = reason
        if hasattr(self, "tunnel"):
            self.tunnel.close()
            self.flush()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for h in (self._ka, self._dead):
            if h is not None:
                h.cancel()
        if exc is not None and self.close_reason == "connection closed":
            self.close_reason = str(exc) or type(exc).__name__
        lost = TunnelLost(self.close_reason)
        for ex in list(self.exchanges.values()):
            ex.fail(lost)
        self.exchanges.clear()
        if not self.closed.done():
            self.closed.set_result(self.close_reason)
        self.on_closed(self, self.close_reason)

    # -- bytes -------------------------------------------------------------------------------------
    def flush(self) -> None:
        data = self.tunnel.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for ev in self.tunnel.receive_data(data):
            self._event(ev)
        for ex in self.exchanges.values():
            if not ex.writable.is_set() and self.tunnel.pending(ex.sid) < SEND_HIGH_WATER:
                ex.writable.set()
        self.flush()
        if self.tunnel.closed and self.transport is not None:
            self.transport.close()

    def _event(self, ev) -> None:
        if isinstance(ev, DataReceived):
            ex = self.exchanges.get(ev.stream_id)
            if ex is None:
                self.tunnel.ack(ev.stream_id, len(ev.data))
                return
            ex.body.put_nowait(ev.data)
            if ev.ended:
                ex.body.put_nowait(None)
        elif isinstance(ev, StreamEnded):
            ex = self.exchanges.get(ev.stream_id)
            if ex is not None:
                ex.body.put_nowait(None)
        elif isinstance(ev, StreamReset):
            ex = self.exchanges.pop(ev.stream_id, None)
            if ex is not None:
                ex.fail(StreamAborted(f"stream reset by peer (code {ev.code})"))
        elif isinstance(ev, PingAcked):
            if self._dead is not None:
                self._dead.cancel()
                self._dead = None
        elif isinstance(ev, TunnelClosed):
            self.close_reason = f"GOAWAY from peer (code {ev.code})"
        elif isinstance(ev, ProtocolFailure):
            self.close_reason = f"HTTP/2 protocol error: {ev.reason}"

    # -- stream helpers ----------------------------------------------------------------------------
    async def send_body(self, ex: Exchange, data: bytes, end: bool = False) -> None:
        """Queue body bytes on ``ex``'s stream, then wait while its buffer is over the high
        water mark. Raises the stream's failure."""
        if ex.done and ex.head.done() and ex.head.exception() is not None:
            raise ex.head.exception()  # type: ignore[misc]
        if self.transport is None or self.transport.is_closing():
            raise TunnelLost(self.close_reason)
        self.tunnel.send_data(ex.sid, data, end)
        self.flush()
        if self.tunnel.pending(ex.sid) >= SEND_HIGH_WATER:
            ex.writable.clear()
            await ex.writable.wait()

    def consumed(self, ex: Exchange, n: int) -> None:
        """Credit ``n`` body bytes of ``ex`` that were written on (flow control)."""
        self.tunnel.ack(ex.sid, n)
        self.flush()

    def finish(self, ex: Exchange, reset: bool = False) -> None:
        """Forget ``ex``; with ``reset`` abandon its stream (RST_STREAM CANCEL)."""
        self.exchanges.pop(ex.sid, None)
        if reset:
            self.tunnel.reset(ex.sid)
            self.flush()
