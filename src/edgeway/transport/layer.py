"""SIP transports: UDP, TCP and TLS listeners and connections (RFC 3261 §18).

A thin asyncio adapter around the sans-IO parser: datagrams go to
:func:`~edgeway.sip.message.parse_message`, streams through
:class:`~edgeway.sip.message.StreamFramer`. Connections are kept in a table by
(transport, remote ip, remote port) and reused for responses and for later requests
to the same address (RFC 3261 §18.1.1, §18.2.2). CRLFCRLF keepalives on streams are
answered with CRLF (RFC 5626 §3.5.1). A failed TLS handshake becomes one ``tls
handshake failed`` event with its cause.

Streams are asyncio protocols (bytes framed as they arrive, no reader task and no
timeout object per read); idle connections are closed by one periodic sweep.

Inbound connections are admitted at accept, before any TLS work, under a total and a
per-source cap, and have two idle timeouts: until their first complete message
(slowloris) and as flows (issue 7 item 1; see :mod:`edgeway.transport.admission`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import socket
import ssl
import struct
from dataclasses import dataclass, field
from typing import Callable

from ..diag.events import NULL_LOG, EventLog
from ..sip.message import ParseError, Request, Response, StreamFramer, parse_message
from ..sip.target import Flow
from .admission import REFUSAL_EVENTS_PER_S, ConnectionLimits, source_key

__all__ = ["Source", "Connection", "TransportLayer", "TransportError", "ConnectionLimits"]

#: Seconds allowed for an outbound TCP connect before it counts as failed (TLS
#: handshakes: ``ConnectionLimits.tls_handshake_timeout_s``).
CONNECT_TIMEOUT_S = 5.0
#: Linux getsockopt SO_MEMINFO: sk_meminfo[0] = bytes in the receive queue, [1] = rcvbuf.
_SO_MEMINFO = 55
#: Listen backlog of stream listeners (the kernel caps it at net.core.somaxconn): a burst
#: of connects waits here for the accept loop instead of retrying SYNs for seconds.
LISTEN_BACKLOG = 1024
#: Connections accepted per wake-up of a listener at most (fairness with other I/O).
ACCEPT_BATCH = 64
#: Seconds a listener stops accepting after accept() failed with EMFILE/ENFILE/ENOBUFS
#: (it would be readable, and fail, again at once).
ACCEPT_BACKOFF_S = 0.05
#: Seconds a connection must have gone without completing a message before a new one
#: may take its place when the total cap is full (see TransportLayer._evict).
EVICT_MIN_AGE_S = 1.0
#: SO_LINGER {on, 0 s}: close() resets the connection instead of a FIN (refusal).
_LINGER_RST = struct.pack("ii", 1, 0)
#: Seconds a stream whose framing was lost stays open for responses already in flight.
FRAMING_CLOSE_GRACE_S = 0.1
#: Linux TCP states (include/net/tcp_states.h) in which the peer has ended the
#: connection: CLOSE (reset received) and CLOSE_WAIT (FIN received).
_TCP_PEER_GONE = (7, 8)


class TransportError(OSError):
    """A message could not be sent: connect refused or timed out, TLS failure, closed."""


@dataclass
class Source:
    """Where a message came from: ``transport`` ("udp"/"tcp"/"tls"), remote ``ip``/``port``,
    the ``local_ip``/``local_port`` it arrived on, the stream ``conn`` (None for UDP)
    and the ``listener`` name (e.g. "sip", "traversal")."""

    transport: str
    ip: str
    port: int
    local_ip: str
    local_port: int
    conn: "Connection | None" = None
    listener: str = "sip"

    @property
    def flow(self) -> Flow:
        """The :class:`~edgeway.sip.target.Flow` the message came on."""
        if self.conn is not None:
            return self.conn.flow
        return Flow("udp", (self.local_ip, self.local_port), (self.ip, self.port), 0, self.listener)


_ids = itertools.count(1)


@dataclass(eq=False)
class Connection:
    """A TCP or TLS connection carrying SIP (either direction).

    ``link`` the asyncio transport; ``peer_names``: CN then DNS SANs of the peer's
    certificate (TLS only); ``zone``: the zone this connection is bound to (an
    authenticated traversal connection, or one classified by TLS identity);
    ``attrs``: free per-connection state for the layers above.
    """

    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    link: asyncio.Transport
    listener: str = "sip"
    outbound: bool = False
    peer_names: list[str] = field(default_factory=list)
    zone: str | None = None
    attrs: dict = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_ids))
    closed: bool = False
    #: When set, bytes read after the peer has reset or closed the connection are
    #: discarded unread (see :meth:`peer_gone`): for a link whose peer fails every
    #: request pending on it when it gives up on it (the core's traversal connection).
    discard_after_peer_close: bool = False
    _pending: list[bytes] | None = field(default=None, repr=False)

    @property
    def flow(self) -> Flow:
        """This connection as a :class:`~edgeway.sip.target.Flow` (made once)."""
        f = self.attrs.get("flow")
        if f is None:
            f = self.attrs["flow"] = Flow(self.transport, self.local, self.remote, self.id, self.listener)
        return f

    def send(self, data: bytes) -> None:
        """Queue ``data`` for sending; raises TransportError when the connection is closed.

        What is sent during one event-loop turn goes out in one write (one TLS record,
        one system call) at the end of the turn: under load many calls share a
        connection (the traversal connection carries all of them)."""
        if self.closed or self.link.is_closing():
            raise TransportError(f"connection to {self.remote[0]}:{self.remote[1]} is closed")
        pending = self._pending
        if pending is None:
            self._pending = [data]
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self.closed and not self.link.is_closing():
            self.link.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def peer_gone(self) -> bool:
        """Whether the kernel has already seen the peer end this connection (a reset or a
        FIN is queued behind the bytes not yet read): Linux ``TCP_INFO`` state, one
        system call. False when it cannot be told."""
        sock = self.attrs.get("sock")
        if sock is None:
            sock = self.attrs["sock"] = self.link.get_extra_info("socket")
        try:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in _TCP_PEER_GONE
        except (AttributeError, OSError, TypeError, ValueError, IndexError):
            return False

    def close(self) -> None:
        """Close gracefully (queued data is flushed, TLS close_notify sent)."""
        if not self.closed:
            if self._pending:
                self._flush()
            self.closed = True
            try:
                self.link.close()
            except Exception:  # noqa: BLE001
                pass

    def abort(self) -> None:
        """Close at once, dropping queued data and sending no TLS alert: for a peer that
        stopped answering, whose graceful close would wait on it (issue 6 item 5)."""
        self.closed = True
        try:
            self.link.abort()
        except Exception:  # noqa: BLE001
            pass


MessageHandler = Callable[[Request | Response, Source], None]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, layer: "TransportLayer", local: tuple[str, int], listener: str):
        self.layer = layer
        self.local = local
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        layer = self.layer
        if layer.source_blocked is not None and layer.source_blocked(addr[0]):
            return  # banned by intrusion protection
        drop = layer.udp_drop
        if drop is not None and drop(data, addr[0]):
            return  # refused before parsing (a source over its flood limit)
        src = Source("udp", addr[0], addr[1], self.local[0], self.local[1], None, self.listener)
        if data.strip(b"\r\n") == b"":
            return  # keepalive
        try:
            msg = parse_message(data)
        except ParseError as exc:
            self.layer._bad_message(exc, src)
            return
        self.layer._deliver(msg, src)

    def error_received(self, exc) -> None:  # type: ignore[override]
        pass  # ICMP errors on a shared UDP socket concern one peer only


class _SipStream(asyncio.Protocol):
    """The SIP stream of one TCP/TLS connection: bytes are cut into messages by
    :class:`~edgeway.sip.message.StreamFramer` as they arrive and handed to the layer.

    ``tls`` (server side) makes :meth:`connection_made` run the TLS identity checks
    before any byte is read (the handshake is complete when it is called).

    Admission state (see :mod:`edgeway.transport.admission`): ``key`` the source this
    connection counts against (None: not counted: outbound, an unlimited listener, or
    released); ``born`` loop time of the accept; ``proven`` once a complete SIP message
    has arrived (outbound connections are flows from the start); ``last_msg`` loop time
    of the last complete message or CRLF keepalive (the flow idle timeout's start)."""

    def __init__(self, layer: "TransportLayer", listener: str, *, tls: bool = False, outbound: bool = False,
                 key: str | None = None, born: float = 0.0):
        self.layer = layer
        self.listener = listener
        self.tls = tls
        self.outbound = outbound
        self.link: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.src: Source | None = None
        self.framer = StreamFramer()
        self.key = key
        self.born = born
        self.task: asyncio.Task | None = None
        self.proven = outbound
        self.last_msg = 0.0
        self.lost: BaseException | None = None
        self.done = False
        self._early = b""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.link = transport
        if self.outbound:
            return  # the connecting side attaches the Connection itself
        try:
            peer = transport.get_extra_info("peername")[:2]
            local = transport.get_extra_info("sockname")[:2]
        except (TypeError, OSError):
            transport.abort()
            return
        conn = Connection("tls" if self.tls else "tcp", local, peer, transport, listener=self.listener)
        if self.tls and not self.layer._after_handshake(conn, server_side=True):
            return
        self.attach(conn)

    def attach(self, conn: Connection) -> None:
        self.conn = conn
        self.src = Source(conn.transport, conn.remote[0], conn.remote[1], conn.local[0], conn.local[1], conn, conn.listener)
        self.last_msg = now = self.layer.loop.time()
        if not self.born:
            self.born = now
        self.layer._opened(conn, self)
        early, self._early = self._early, b""
        if early:
            self.data_received(early)

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        conn = self.conn
        if conn is None:
            if self.outbound and len(self._early) < 65536:
                self._early += data  # arrived between the TLS handshake and attach()
            return
        if conn.closed:
            return
        if conn.discard_after_peer_close and conn.peer_gone():
            # We were not reading (a stalled process, SIGSTOP) while the peer gave up on
            # us: what it sent meanwhile it has already failed on its side, so acting on
            # it now would complete calls its callers were refused.
            conn.attrs["close_reason"] = "peer ended the connection before its data was read; unread data discarded"
            self.layer.events.emit("stale data discarded", transport=conn.transport, peer=f"{conn.remote[0]}:{conn.remote[1]}", bytes=len(data))
            conn.abort()
            return
        conn.attrs["received"] = True
        layer = self.layer
        framer = self.framer
        evs = framer.feed(data)
        if not evs:
            return  # part of a message: restarts no idle timer (slowloris, issue 7)
        self.last_msg = now = layer.loop.time()
        src = self.src
        for ev in evs:
            if ev == "ping":
                conn.link.write(b"\r\n")
            elif ev == "pong":
                conn.attrs["last_pong"] = now
            elif isinstance(ev, ParseError):
                layer._bad_message(ev, src)  # type: ignore[arg-type]
            else:
                self.proven = True
                layer._deliver(ev, src)  # type: ignore[arg-type]
        if framer.broken and not conn.closed:
            # Framing is lost: read no more, but let responses to the messages already
            # framed go out before closing (RFC 4475 §3.3.3 mcl01).
            conn.link.pause_reading()
            layer.loop.call_later(FRAMING_CLOSE_GRACE_S, conn.close)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: BaseException | None) -> None:  # type: ignore[override]
        self.lost = exc
        if self.key is not None:
            self.layer._release(self)
        if self.conn is not None:
            self.layer._lost(self.conn, exc)
        self.done = True
        # The stream may stay in a pre-message deadline heap until its deadline: keep
        # nothing of the connection alive from it (25,000 closed connections held ~40 MB
        # for up to pre_message_idle_s).
        self.link = self.conn = self.src = None
        self.framer = None  # type: ignore[assignment]


def _pre_message_over(stream: "_SipStream") -> bool:
    """Whether a stream no longer needs its pre-message deadline: it carried a message,
    ended, or its TLS handshake failed (nothing left to end)."""
    if stream.proven or stream.done or (stream.conn is not None and stream.conn.closed):
        return True
    return stream.conn is None and (stream.task is None or stream.task.done())


class TransportLayer:
    """Listeners and connections of one node.

    ``on_message(msg, source)`` is called for every well-formed message;
    ``on_bad_message(exc, source)`` for malformed ones (to answer 400 when
    ``exc.partial`` allows); ``on_connection_closed(conn)`` when a stream ends;
    ``on_tls_established(conn)`` may return False to refuse a peer (identity checks).

    ``limits`` (:class:`~edgeway.transport.admission.ConnectionLimits`) caps inbound
    connections and times them out; set it before listening. ``stats`` counts what
    admission did: ``accepted``, ``refused_per_source``, ``refused_total``,
    ``closed_pre_message``, ``closed_flow_idle``, ``handshake_timeouts``,
    ``accept_errors``, ``evicted``; :meth:`admission_status` adds the open counts.
    """

    def __init__(self, events: EventLog = NULL_LOG, limits: ConnectionLimits | None = None):
        self.events = events
        self.limits = limits or ConnectionLimits()
        self.on_message: MessageHandler = lambda m, s: None
        #: ``(datagram bytes, source ip) -> bool``: True drops the datagram before it is
        #: parsed (flood control of a source already over its limit); None: none.
        self.udp_drop: Callable[[bytes, str], bool] | None = None
        #: ``(source ip) -> bool``: True refuses a connection at accept (reset, before
        #: TLS) and drops a datagram unread (intrusion protection's bans); None: none.
        self.source_blocked: Callable[[str], bool] | None = None
        self.on_bad_message: Callable[[ParseError, Source], None] = lambda e, s: None
        self.on_connection_closed: Callable[[Connection], None] = lambda c: None
        self.on_tls_established: Callable[[Connection], bool] = lambda c: True
        self.udp: dict[tuple[str, int], _UdpProtocol] = {}
        self.conns: dict[tuple[str, str, int], Connection] = {}
        #: Open connections by id (a Flow's ``conn_id``).
        self.by_id: dict[int, Connection] = {}
        self._streams: dict[int, _SipStream] = {}
        self.listen_socks: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()
        self.client_ssl: ssl.SSLContext | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # -- admission (issue 7 item 1) --
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "refused_per_source", "refused_total", "refused_blocked", "closed_pre_message", "closed_flow_idle",
             "handshake_timeouts", "accept_errors", "evicted"), 0)
        #: Open counted inbound connections (handshaking ones included), in all and by source.
        self.open_limited = 0
        self.per_source: dict[str, int] = {}
        self.peak_limited = 0
        #: (pre-message deadline, accept number, stream) of inbound connections, pushed at
        #: accept (so the top is the oldest): counted ones, and those of unlimited listeners.
        self._pre_heap: list[tuple[float, int, _SipStream]] = []
        self._pre_heap_exempt: list[tuple[float, int, _SipStream]] = []
        self._accepts = itertools.count()
        self._evicted = 0
        self._next_flow_sweep = 0.0
        # rate-limited events (refusals, handshake timeouts): see _emit_limited
        self._refusal_last: dict[tuple[str, str], float] = {}
        self._refusal_window_end = 0.0
        self._refusals_logged = 0
        self._refusals_unlogged: dict[tuple[str, str], int] = {}
        self._accept_error_logged = -1e9

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- listeners ---------------------------------------------------------
    async def listen_udp(self, ip: str, port: int, listener: str = "sip") -> None:
        loop = asyncio.get_running_loop()
        local = (ip, port)
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self, local, listener), local_addr=local
        )
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        self.udp[local] = proto

    async def listen_stream(self, ip: str, port: int, *, tls: ssl.SSLContext | None = None, listener: str = "sip",
                            limited: bool = True) -> tuple[str, int]:
        """Listen for TCP (``tls`` None) or TLS connections on ip:port (0: any free port);
        returns the bound address.

        ``limited``: connections on this listener count against the caps of
        :attr:`limits` (False for the core's traversal listener: its connections must
        always get in and take their descriptors from the reserve).

        The listener accepts itself (no asyncio server): a connection over a cap is
        reset before asyncio or TLS spends anything on it, and for TLS the TLS protocol
        owns the socket from the first byte: a client may send its ClientHello together
        with the TCP handshake (Kamailio, openssl s_client do), and accepting as plain
        TCP and upgrading afterwards can read those bytes into the plain stream where
        TLS never sees them. A failed handshake becomes one ``tls handshake failed``
        event with its cause."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((ip, port))
            lsock.listen(LISTEN_BACKLOG)
            lsock.setblocking(False)
        except OSError:
            lsock.close()
            raise
        self.listen_socks.append(lsock)
        self.loop.add_reader(lsock.fileno(), self._accept, lsock, tls, listener, limited)
        return lsock.getsockname()[:2]

    def _accept(self, lsock: socket.socket, ctx: ssl.SSLContext | None, listener: str, limited: bool) -> None:
        """A listener is readable: accept up to :data:`ACCEPT_BATCH` connections, each
        admitted under the caps (or reset) before anything else is done with it."""
        loop = self.loop
        stats = self.stats
        lim = self.limits
        for _ in range(ACCEPT_BATCH):
            try:
                csock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if lsock.fileno() < 0:
                    return
                # Out of descriptors or memory: the listener stays readable, so stop
                # watching it a moment rather than spin.
                stats["accept_errors"] += 1
                fd = lsock.fileno()
                loop.remove_reader(fd)
                loop.call_later(ACCEPT_BACKOFF_S, self._resume_accept, lsock, ctx, listener, limited)
                now = loop.time()
                if now - self._accept_error_logged >= 1.0:
                    self._accept_error_logged = now
                    self.events.emit("accept failed", listener=listener, cause=str(exc), open=self.open_limited,
                                     accept_errors=stats["accept_errors"])
                return
            blocked = self.source_blocked
            if blocked is not None and blocked(addr[0]):
                # Banned by intrusion protection: reset before any TLS work, no event
                # per connection (the ban itself was reported once).
                with contextlib.suppress(OSError):
                    csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                csock.close()
                stats["refused_blocked"] += 1
                continue
            key = None
            if limited:
                key = source_key(addr[0])
                n = self.per_source.get(key, 0)
                if n >= lim.max_connections_per_source:
                    self._refuse(csock, key, addr, listener, "per-source limit")
                    continue
                if self.open_limited >= lim.max_connections and not self._evict(loop.time()):
                    self._refuse(csock, key, addr, listener, "total limit")
                    continue
                self.per_source[key] = n + 1
                self.open_limited += 1
                if self.open_limited > self.peak_limited:
                    self.peak_limited = self.open_limited
            stats["accepted"] += 1
            born = loop.time()
            stream = _SipStream(self, listener, tls=ctx is not None, key=key, born=born)
            heapq.heappush(self._pre_heap if limited else self._pre_heap_exempt,
                           (born + lim.pre_message_idle_s, next(self._accepts), stream))
            stream.task = self._spawn(self._serve(csock, addr, stream, ctx, listener))
            self._ensure_sweep()

    def _evict(self, now: float) -> bool:
        """The total cap is full: make room by ending the oldest counted connection that
        has not completed a SIP message in :data:`EVICT_MIN_AGE_S` (still in its TLS
        handshake, or connected and silent). True when one was ended.

        Under a flood of idle connections a new client then gets in at once instead of
        waiting up to ``pre_message_idle_s`` for the flood's connections to time out: it
        is only ended in its turn if it too stays silent while a whole cap's worth of
        newer connections arrives. Connections that have carried a message (flows) are
        never evicted."""
        heap = self._pre_heap
        while heap:
            stream = heap[0][2]
            if stream.proven or stream.key is None:  # a flow, or already ended
                heapq.heappop(heap)
                continue
            if now - stream.born < EVICT_MIN_AGE_S:
                return False
            heapq.heappop(heap)
            self._end_unproven(stream, "ended for a new connection: total limit reached, no complete SIP message yet")
            self._evicted += 1
            self.stats["evicted"] += 1
            return True
        return False

    def _end_unproven(self, stream: "_SipStream", reason: str) -> None:
        """End a connection that has not completed a message: abort it, or cancel its TLS
        handshake; it stops counting against the caps at once."""
        conn = stream.conn
        self._release(stream)
        if conn is not None:
            if not conn.closed:
                conn.attrs["close_reason"] = reason
                conn.abort()
        elif stream.task is not None and not stream.task.done():
            stream.task.cancel()
        elif stream.link is not None:
            stream.link.abort()

    def _resume_accept(self, lsock: socket.socket, ctx, listener: str, limited: bool) -> None:
        if lsock.fileno() >= 0 and lsock in self.listen_socks:
            self.loop.add_reader(lsock.fileno(), self._accept, lsock, ctx, listener, limited)

    async def _serve(self, csock: socket.socket, peer: tuple, stream: "_SipStream", ctx: ssl.SSLContext | None, listener: str) -> None:
        """Hand an admitted socket to asyncio (and TLS): ``stream`` takes it from there."""
        loop = self.loop
        try:
            if ctx is None:
                await loop.connect_accepted_socket(lambda: stream, csock)
            else:
                await loop.connect_accepted_socket(lambda: stream, csock, ssl=ctx,
                                                   ssl_handshake_timeout=self.limits.tls_handshake_timeout_s)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
            key = stream.key
            self._release(stream)
            csock.close()
            if ctx is None:
                return
            timeout = self.limits.tls_handshake_timeout_s
            if loop.time() - stream.born < timeout * 0.99:
                self._handshake_failed(exc, "inbound", listener, peer[:2], None, [])
                return
            # Timed out (asyncio reports it as the connection aborted): a client that
            # connected and never spoke TLS, the shape of an idle flood, so these are
            # rate-limited like refusals.
            self.stats["handshake_timeouts"] += 1
            self._emit_limited("tls handshake failed", key or source_key(peer[0]), "handshake timed out",
                               direction="inbound", listener=listener, zone=None, peer=f"{peer[0]}:{peer[1]}",
                               peer_names=[], timeout_s=timeout)
        except BaseException:
            self._release(stream)
            csock.close()
            raise

    def _refuse(self, csock: socket.socket, key: str, addr: tuple, listener: str, cause: str) -> None:
        """Reset a connection over a cap (no FIN, no handshake), count it and log it:
        at most one event per source per second and REFUSAL_EVENTS_PER_S in all."""
        try:
            csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        csock.close()
        self.stats["refused_per_source" if cause == "per-source limit" else "refused_total"] += 1
        lim = self.limits
        self._emit_limited(
            "connection refused", key, cause, peer=f"{addr[0]}:{addr[1]}", source=key, listener=listener,
            open_from_source=self.per_source.get(key, 0), open_total=self.open_limited,
            limit=lim.max_connections_per_source if cause == "per-source limit" else lim.max_connections,
        )

    def _emit_limited(self, event: str, key: str, cause: str, **fields) -> None:
        """Emit ``event`` for source ``key`` unless one was emitted for it less than a
        second ago or REFUSAL_EVENTS_PER_S already went out this second; what is held
        back is counted and summed up in one event per cause when the second is over
        (``peer`` None, ``count``)."""
        now = self.loop.time()
        if now >= self._refusal_window_end:
            self._roll_refusal_window(now)
        k = (event, key)
        last = self._refusal_last.get(k)
        if (last is None or now - last >= 1.0) and self._refusals_logged < REFUSAL_EVENTS_PER_S:
            self._refusal_last[k] = now
            self._refusals_logged += 1
            self.events.emit(event, cause=cause, **fields)
        else:
            k = (event, cause)
            self._refusals_unlogged[k] = self._refusals_unlogged.get(k, 0) + 1
        self._ensure_sweep()

    def _roll_refusal_window(self, now: float) -> None:
        """Start a new one-second window for rate-limited events: sum up those of the
        last one that were held back (one event per event name and cause) and forget
        sources last logged a second or more ago."""
        for (event, cause), n in self._refusals_unlogged.items():
            self.events.emit(event, cause=cause, peer=None, count=n,
                             note="events of the last second not logged one by one")
        self._refusals_unlogged = {}
        self._refusals_logged = 0
        self._refusal_window_end = now + 1.0
        if self._refusal_last:
            self._refusal_last = {k: t for k, t in self._refusal_last.items() if now - t < 1.0}

    def _release(self, stream: "_SipStream") -> None:
        """The connection of ``stream`` no longer counts against the caps (once)."""
        key = stream.key
        if key is None:
            return
        stream.key = None
        n = self.per_source.get(key, 0) - 1
        if n > 0:
            self.per_source[key] = n
        else:
            self.per_source.pop(key, None)
        self.open_limited -= 1

    def admission_status(self) -> dict:
        """Counters of :attr:`stats` plus ``open`` (counted inbound connections),
        ``peak``, ``sources`` (sources with one open), ``streams`` (all open streams)
        and the limits in force."""
        lim = self.limits
        return {**self.stats, "open": self.open_limited, "peak": self.peak_limited, "sources": len(self.per_source),
                "streams": len(self._streams), "max_connections": lim.max_connections,
                "max_connections_per_source": lim.max_connections_per_source}

    def _spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _handshake_failed(self, exc: BaseException, direction: str, listener: str, peer: tuple, zone: str | None, names: list[str]) -> None:
        from ..security.tls import describe_handshake_error

        self.events.emit(
            "tls handshake failed", direction=direction, listener=listener, zone=zone,
            peer=f"{peer[0]}:{peer[1]}", peer_names=names, cause=describe_handshake_error(exc),
        )

    def _after_handshake(self, conn: Connection, *, server_side: bool) -> bool:
        """Peer identities, the zone's verify subject name (outbound) and the layers'
        own checks; one event either way. Closes the connection when refused."""
        from ..security.tls import peer_identities, subject_name_matches

        sslobj = conn.link.get_extra_info("ssl_object")
        conn.peer_names = peer_identities(sslobj) if sslobj is not None else []
        verify_name = conn.attrs.get("verify_name")
        if verify_name and not subject_name_matches(conn.peer_names, verify_name):
            self.events.emit(
                "tls handshake failed", direction="outbound", listener=conn.listener, zone=conn.attrs.get("zone"),
                peer=f"{conn.remote[0]}:{conn.remote[1]}", peer_names=conn.peer_names,
                cause=f"subject name {verify_name!r} not in the peer certificate (CN/SAN: {', '.join(conn.peer_names) or 'none'})",
            )
            conn.close()
            return False
        if not self.on_tls_established(conn):
            conn.close()
            return False
        self.events.emit(
            "tls handshake",
            direction="inbound" if server_side else "outbound",
            listener=conn.listener,
            peer=f"{conn.remote[0]}:{conn.remote[1]}",
            peer_names=conn.peer_names,
            version=sslobj.version() if sslobj else None,
        )
        return True

    def _opened(self, conn: Connection, stream: _SipStream) -> None:
        self.conns[(conn.transport, conn.remote[0], conn.remote[1])] = conn
        self.by_id[conn.id] = conn
        self._streams[conn.id] = stream
        stream.task = None
        self._ensure_sweep()

    def _ensure_sweep(self) -> None:
        if self._idle_handle is None:
            self._idle_handle = self.loop.call_later(self.limits.sweep_s, self._idle_sweep)

    def _idle_sweep(self) -> None:
        """The one timer of all stream connections (every ``limits.sweep_s``).

        Connections without a complete message ``pre_message_idle_s`` after their accept
        are aborted, or their TLS handshake cancelled (their deadlines are in heaps: each
        is looked at once, when due; one that has carried a message meanwhile is just
        dropped from it). Every
        ``limits.flow_sweep_s`` the flows are scanned and those with no complete message
        or keepalive for ``flow_idle_s`` are closed. One ``idle connections closed``
        event per sweep and cause, with the count."""
        self._idle_handle = None
        loop = self.loop
        now = loop.time()
        lim = self.limits
        pre = 0
        reason = f"no complete SIP message within {lim.pre_message_idle_s:g} s of accept"
        for heap in (self._pre_heap, self._pre_heap_exempt):
            while heap and heap[0][0] <= now:
                stream = heapq.heappop(heap)[2]
                if _pre_message_over(stream):
                    continue
                self._end_unproven(stream, reason)
                pre += 1
        self._compact_pre_heaps()
        flows = 0
        if now >= self._next_flow_sweep:
            self._next_flow_sweep = now + lim.flow_sweep_s
            limit = now - lim.flow_idle_s
            for stream in [st for st in self._streams.values() if st.proven and st.last_msg <= limit]:
                conn = stream.conn
                if conn is not None and not conn.closed:
                    conn.attrs["close_reason"] = "idle"
                    conn.close()
                    flows += 1
        if pre:
            self.stats["closed_pre_message"] += pre
            self.events.emit("idle connections closed", cause="no complete message", count=pre,
                             timeout_s=lim.pre_message_idle_s)
        if flows:
            self.stats["closed_flow_idle"] += flows
            self.events.emit("idle connections closed", cause="flow idle", count=flows, timeout_s=lim.flow_idle_s)
        if self._evicted:
            self.events.emit("idle connections closed", cause="ended for new connections at the total limit",
                             count=self._evicted, min_age_s=EVICT_MIN_AGE_S)
            self._evicted = 0
        if now >= self._refusal_window_end and (self._refusals_unlogged or self._refusal_last):
            self._roll_refusal_window(now)
        if self._streams or self._pre_heap or self._pre_heap_exempt or self._refusals_unlogged or self._refusal_last:
            self._idle_handle = loop.call_later(lim.sweep_s, self._idle_sweep)

    def _compact_pre_heaps(self) -> None:
        """Drop the entries of connections that ended or carried a message from the
        pre-message deadline heaps once they are most of them: after a flood of short-lived
        connections the heaps would otherwise keep thousands of dead streams (and the
        allocator's arenas they pin) until each deadline passes."""
        for heap in (self._pre_heap, self._pre_heap_exempt):
            if len(heap) < 256:
                continue
            live = [e for e in heap if not _pre_message_over(e[2])]
            if len(live) * 2 < len(heap):
                heapq.heapify(live)
                heap[:] = live

    def _lost(self, conn: Connection, exc: BaseException | None) -> None:
        """The connection ended (peer close, reset, abort, TLS failure on read)."""
        if isinstance(exc, ssl.SSLError) and conn.outbound and not conn.attrs.get("received"):
            # TLS 1.3: the server checks our certificate after the client's side of the
            # handshake is done, so its refusal arrives with the first read.
            self._handshake_failed(exc, "outbound", conn.listener, conn.remote, conn.attrs.get("zone"), conn.peer_names)
            conn.attrs["close_reason"] = "peer rejected the TLS handshake"
        conn.closed = True
        key = (conn.transport, conn.remote[0], conn.remote[1])
        if self.conns.get(key) is conn:
            del self.conns[key]
        self.by_id.pop(conn.id, None)
        self._streams.pop(conn.id, None)
        try:
            self.on_connection_closed(conn)
        except Exception:  # noqa: BLE001
            pass

    # -- dispatch ------------------------------------------------------------
    def _deliver(self, msg, src: Source) -> None:
        try:
            self.on_message(msg, src)
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the listener
            self.events.emit("internal error", where="on_message", error=repr(exc), peer=f"{src.ip}:{src.port}")
            import traceback

            traceback.print_exc()

    def _bad_message(self, exc: ParseError, src: Source) -> None:
        self.events.emit("bad message", peer=f"{src.ip}:{src.port}", transport=src.transport, reason=exc.reason)
        try:
            self.on_bad_message(exc, src)
        except Exception:  # noqa: BLE001
            pass

    # -- sending ---------------------------------------------------------------
    def find_connection(self, transport: str, ip: str, port: int) -> Connection | None:
        c = self.conns.get((transport, ip, port))
        return c if c is not None and not c.closed else None

    def udp_backlog(self) -> tuple[int, float]:
        """How much waits in the fullest UDP listener's kernel receive queue: ``(bytes
        queued, fraction of the buffer)`` (Linux ``SO_MEMINFO``; (0, 0.0) where not
        available). A queue that stays long means messages wait there longer than the
        node takes to process them: the node is overloaded."""
        worst = (0, 0.0)
        for proto in self.udp.values():
            sock = proto.transport.get_extra_info("socket") if proto.transport is not None else None
            if sock is None:
                continue
            try:
                info = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 36)
            except OSError:
                continue
            rmem_alloc, rcvbuf = struct.unpack_from("2I", info)
            if rmem_alloc > worst[0]:
                worst = (rmem_alloc, rmem_alloc / rcvbuf if rcvbuf else 0.0)
        return worst

    def send(self, flow: Flow, data: bytes) -> None:
        """Send ``data`` on ``flow``: on its connection (TCP/TLS), or as a datagram from
        ``flow.local`` to ``flow.remote`` (UDP). Raises TransportError when the connection
        is gone or no UDP listener can send."""
        if flow.conn_id:
            conn = self.by_id.get(flow.conn_id)
            if conn is None:
                raise TransportError(f"connection to {flow.remote[0]}:{flow.remote[1]} is closed")
            conn.send(data)
            return
        self.send_udp(data, flow.local, flow.remote)

    def send_udp(self, data: bytes, local: tuple[str, int], dest: tuple[str, int]) -> None:
        proto = self.udp.get(local) or next(iter(self.udp.values()), None)
        if proto is None or proto.transport is None:
            raise TransportError("no UDP listener to send from")
        proto.transport.sendto(data, dest)

    async def connect(self, transport: str, ip: str, port: int, *, local_ip: str | None = None, ssl_ctx: ssl.SSLContext | None = None, listener: str = "sip", verify_name: str | None = None, zone: str | None = None) -> Connection:
        """Open a TCP/TLS connection (bound to ``local_ip`` when given) and start reading it.

        ``verify_name``: for TLS, the name the peer certificate must carry as CN or DNS
        SAN (a DNS zone's TLS verify subject name); otherwise the connection is closed
        and a ``tls handshake failed`` event names the cause. Raises TransportError."""
        loop = self.loop
        stream = _SipStream(self, listener, outbound=True)
        try:
            link, _ = await asyncio.wait_for(
                loop.create_connection(lambda: stream, ip, port, local_addr=(local_ip, 0) if local_ip else None),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self.events.emit("connect failed", transport=transport, peer=f"{ip}:{port}", cause=str(exc) or type(exc).__name__)
            raise TransportError(f"connect to {ip}:{port} failed: {exc}") from None
        local = link.get_extra_info("sockname")[:2]
        if transport == "tls":
            ctx = ssl_ctx or self.client_ssl
            if ctx is None:
                link.close()
                raise TransportError("no TLS client context configured")
            # We speak first, so no byte can be lost in the upgrade.
            link.pause_reading()
            try:
                link = await loop.start_tls(link, stream, ctx, server_side=False,
                                            ssl_handshake_timeout=self.limits.tls_handshake_timeout_s)
            except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
                self._handshake_failed(exc, "outbound", listener, (ip, port), zone, [])
                link.close()
                raise TransportError(f"TLS handshake with {ip}:{port} failed") from None
            stream.link = link
        conn = Connection(transport, local, (ip, port), link, listener=listener, outbound=True)
        if transport == "tls":
            conn.attrs["verify_name"] = verify_name
            conn.attrs["zone"] = zone
            if not self._after_handshake(conn, server_side=False):
                raise TransportError(f"TLS handshake with {ip}:{port} failed")
        stream.attach(conn)
        if stream.done:  # it ended during the handshake
            self._lost(conn, stream.lost)
        return conn

    async def close(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        for ls in self.listen_socks:
            if ls.fileno() >= 0:
                self.loop.remove_reader(ls.fileno())
            ls.close()
        self.listen_socks.clear()
        for c in list(self.conns.values()):
            c.close()
        for p in self.udp.values():
            if p.transport:
                p.transport.close()
        for t in list(self._tasks):
            t.cancel()
        self._pre_heap.clear()
        self._pre_heap_exempt.clear()
        self.udp.clear()
        await asyncio.sleep(0)  # let transports finish closing so the ports can be bound again
