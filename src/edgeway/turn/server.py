"""asyncio adapters of the edge's STUN/TURN server over UDP, TCP and TLS.

Thin: every decision is in :class:`~edgeway.turn.stun.BindingResponder` and
:class:`~edgeway.turn.allocations.TurnCore`; this module owns the sockets.

Hot path, as the RTP relay (:mod:`edgeway.media.relay`): each UDP listener socket
and each relay socket is registered with ``loop.add_reader()`` and drained with
``recvfrom_into()`` into one preallocated buffer, at most ``max_batch`` datagrams
per wake-up.  From a client, ChannelData (first byte 0x40-0x7F, RFC 8656 §12.5)
goes to :meth:`TurnCore.channel_peer` and out of the relay socket; STUN messages
(first byte < 0x40) go to the responder/core.  From a peer, the datagram is framed
by :meth:`Allocation.frame_to_client` and sent to the client from the listener
socket (UDP) or written to the client's connection (TCP/TLS).

Over TCP and TLS (RFC 8656 §3.1: the client-to-server leg is a stream; RFC 6062
TCP relaying is not supported) the stream carries STUN messages and ChannelData
messages back to back, ChannelData padded to 4 bytes (§12.5).

Relay sockets come from a :class:`~edgeway.media.ports.PortAllocator` (the node's
media port pool): one RTP/RTCP pair per allocation, the even (RTP) port being the
relayed transport address, so EVEN-PORT is always met; the odd port stays bound and
unused until release, unless EVEN-PORT's R bit asked to reserve it (RFC 8656 §7.2): it
is then the relayed address of the Allocate that redeems the RESERVATION-TOKEN.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any

from ..media.ports import PortAllocator, PortPair, PortsExhausted
from .allocations import Allocation, FreeRelay, NeedRelay, ReleaseReservation, Reply, ToPeer, TurnCore
from .stun import BindingResponder

__all__ = ["TurnServer", "start_from_config"]

log = logging.getLogger(__name__)

_BUF_SIZE = 65536
_CD_HDR = struct.Struct("!HH")
#: Largest buffered partial message on a stream connection (bytes): a STUN message
#: or ChannelData is at most 4 + 65535 bytes.
_MAX_STREAM_BUF = 70000
#: Bytes that may wait in a TCP/TLS client connection's send buffer before data
#: relayed toward it is dropped (about 2 s of a 2 Mbit/s video stream).
MAX_STREAM_BACKLOG = 512 * 1024
#: Seconds between expiry sweeps (allocations, permissions, channels).
SWEEP_INTERVAL_S = 1.0


class _PairRef:
    """A port pair shared by up to two allocations and a reservation (EVEN-PORT R bit:
    the even port relays one allocation, the odd one is held for a RESERVATION-TOKEN,
    RFC 8656 §7.2); released to the allocator when the last user lets go."""

    __slots__ = ("pair", "refs")

    def __init__(self, pair: PortPair) -> None:
        self.pair = pair
        self.refs = 1


class _Relay:
    """Adapter context of an allocation: its relay socket (one port of a pair) and how
    to reach its client."""

    __slots__ = ("ref", "sock", "fd", "send", "udp_send", "client")

    def __init__(self, ref: _PairRef, sock: socket.socket, send: Any, client: tuple[str, int],
                 udp_send: Any = None) -> None:
        self.ref = ref
        self.sock = sock
        self.fd = sock.fileno()
        self.send = send
        #: The UDP listener's ``sendto`` (None for a TCP/TLS client).
        self.udp_send = udp_send
        self.client = client


class _Udp:
    __slots__ = ("sock", "fd", "local", "keys")

    def __init__(self, sock: socket.socket, local: tuple[str, int]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.local = local
        self.keys: dict[tuple[str, int], tuple] = {}


class _StreamConn(asyncio.Protocol):
    """One TCP/TLS client connection: STUN and ChannelData framing (RFC 8656 §12.5)."""

    def __init__(self, server: TurnServer, transport_name: str, local: tuple[str, int]) -> None:
        self.server = server
        self.name = transport_name
        self.local = local
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.key: tuple | None = None
        self.pad = 0  # padding bytes that may follow the last ChannelData

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.key = (self.name, (peer[0], peer[1]), self.local)
        self.server._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        if self.server.core is not None and self.key is not None:
            self.server._run(self.server.core.delete(self.key, "closed"))

    def write(self, data: bytes) -> None:
        """Queue ``data`` to the client; raises ``BlockingIOError`` (counted as a drop by
        the relay) while more than :data:`MAX_STREAM_BACKLOG` bytes wait to be sent, so a
        client that does not read cannot make the server buffer without bound."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > MAX_STREAM_BACKLOG:
            raise BlockingIOError("client connection backlog full")
        t.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        srv = self.server
        core = srv.core
        now = time.time()
        pos = 0
        n = len(buf)
        while True:
            if self.pad:
                # RFC 8656 §12.5 pads ChannelData on streams, RFC 5766 clients may not
                # (coturn's uclient pads only with -D): take the padding when it is there.
                # A client's next frame starts 0x00 0x01-0x3F (STUN) or 0x40-0x7F
                # (ChannelData), so zero bytes followed by such a start are padding, and
                # anything else is the next frame.  Undecided until those bytes are here.
                p = self.pad
                avail = n - pos
                if avail == 0:
                    break
                if any(buf[pos:pos + min(p, avail)]):
                    self.pad = 0
                elif avail < p + 1:
                    break
                else:
                    nxt = buf[pos + p]
                    if nxt == 0 and avail < p + 2:
                        break
                    if 0x40 <= nxt < 0x80 or (nxt == 0 and 0 < buf[pos + p + 1] < 0x40):
                        pos += p
                    self.pad = 0
            if n - pos < 4:
                break
            b0 = buf[pos]
            if b0 < 0x40:
                size = 20 + ((buf[pos + 2] << 8) | buf[pos + 3])
                if n - pos < size:
                    break
                msg = bytes(buf[pos:pos + size])
                pos += size
                srv._stun(msg, self.key, now, self.write)
            elif b0 < 0x80:
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                if n - pos < 4 + ln:
                    break
                ch = (b0 << 8) | buf[pos + 1]
                r = core.channel_peer(self.key, ch, now) if core is not None else None
                if r is not None:
                    alloc, peer = r
                    try:
                        alloc.ctx.sock.sendto(buf[pos + 4:pos + 4 + ln], peer)
                        alloc.to_peer_packets += 1
                        alloc.to_peer_bytes += ln
                    except OSError:
                        alloc.dropped += 1
                pos += 4 + ln
                self.pad = -ln & 3
            else:  # neither STUN nor ChannelData: the stream is out of sync
                self.transport.close()
                buf.clear()
                return
        del buf[:pos]
        if len(buf) > _MAX_STREAM_BUF:
            self.transport.close()


class TurnServer:
    """STUN (RFC 8489) and, with a core, TURN (RFC 8656) listeners of one node.

    Args:
        binding: the Binding responder (STUN).
        core: the TURN core, or None for a STUN-only server.
        ports: the port allocator relay sockets come from (required with ``core``).
        relay_ip: the relayed transport address's IP as told to clients (default:
            the allocator's IP).
        events: an :class:`~edgeway.diag.events.EventLog` (or anything with
            ``emit(name, **fields)``), or None.
        max_batch: datagrams handled at most per socket wake-up.
    """

    def __init__(self, binding: BindingResponder, core: TurnCore | None = None, ports: PortAllocator | None = None,
                 *, relay_ip: str | None = None, events: Any = None, max_batch: int = 64,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if core is not None and ports is None:
            raise ValueError("a TURN core needs a port allocator for its relay sockets")
        self.loop = loop or asyncio.get_running_loop()
        self.binding = binding
        self.core = core
        self.ports = ports
        self.relay_ip = relay_ip or (ports.ip if ports is not None else None)
        self.events = events
        self.max_batch = max_batch
        self._buf = bytearray(_BUF_SIZE)
        self._mv = memoryview(self._buf)
        # Relay buffer: datagrams from peers land 4 bytes in, room for a ChannelData header.
        self._rbuf = bytearray(_BUF_SIZE + 4)
        self._rmv = memoryview(self._rbuf)
        self._rmv_in = self._rmv[4:]
        self._udp: list[_Udp] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[_StreamConn] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._auth_failures_seen = 0
        self.listening: list[tuple[str, str, int]] = []
        #: Datagrams that were neither STUN nor ChannelData, or ChannelData on no channel.
        self.dropped = 0

    # -- listeners ---------------------------------------------------------------------------

    async def listen_udp(self, ip: str, port: int) -> tuple[str, int]:
        """Bind a UDP listener; returns its local address (port 0 picks one)."""
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((ip, port))
        except BaseException:
            sock.close()
            raise
        local = sock.getsockname()[:2]
        u = _Udp(sock, local)
        self._udp.append(u)
        self.loop.add_reader(u.fd, self._on_udp, u)
        self.listening.append(("udp", local[0], local[1]))
        self._start_sweep()
        return local

    async def listen_stream(self, ip: str, port: int, ssl: Any = None) -> tuple[str, int]:
        """Bind a TCP (or, with ``ssl``, TLS) listener; returns its local address."""
        name = "tls" if ssl is not None else "tcp"
        holder: dict[str, tuple[str, int]] = {}
        server = await self.loop.create_server(lambda: _StreamConn(self, name, holder["local"]), ip, port, ssl=ssl,
                                               reuse_address=True)
        local = server.sockets[0].getsockname()[:2]
        holder["local"] = local
        self._servers.append(server)
        self.listening.append((name, local[0], local[1]))
        self._start_sweep()
        return local

    # -- UDP hot path ------------------------------------------------------------------------

    def _on_udp(self, u: _Udp) -> None:
        recv_into = u.sock.recvfrom_into
        buf = self._buf
        mv = self._mv
        core = self.core
        binding = self.binding
        local = u.local
        keys = u.keys
        sendto = u.sock.sendto
        now = time.time()
        dropped = 0
        for _ in range(self.max_batch):
            try:
                n, src = recv_into(buf)
            except BlockingIOError:
                break
            except OSError:
                continue
            if n < 4:
                dropped += 1
                continue
            b0 = buf[0]
            if b0 < 0x40:
                if core is None or (b0 == 0 and buf[1] == 1):
                    out = binding.respond(buf[:n], src, local, now)
                    if out is not None:
                        try:
                            sendto(out, src)
                        except OSError:
                            pass
                    continue
                key = keys.get(src)
                if key is None:
                    key = ("udp", src, local)
                    if len(keys) > 65536:
                        keys.clear()
                    keys[src] = key
                self._run(core.handle(bytes(buf[:n]), key, now), u)
            elif b0 < 0x80 and core is not None:
                key = keys.get(src) or ("udp", src, local)
                r = core.channel_peer(key, (b0 << 8) | buf[1], now)
                ln = (buf[2] << 8) | buf[3]
                if r is None or 4 + ln > n:
                    dropped += 1
                    continue
                alloc, peer = r
                try:
                    alloc.ctx.sock.sendto(mv[4:4 + ln], peer)
                except OSError:
                    alloc.dropped += 1
                    continue
                alloc.to_peer_packets += 1
                alloc.to_peer_bytes += ln
            else:
                dropped += 1
        if dropped:
            self.dropped += dropped

    def _on_relay(self, alloc: Allocation) -> None:
        """Datagrams from peers on a relayed transport address, framed to the client.

        Each datagram is received 4 bytes into the relay buffer; when the peer has a live
        channel toward a UDP client its ChannelData header (RFC 8656 §12.4) is written in
        front in place and the datagram goes out without a copy.  Otherwise
        :meth:`Allocation.frame_to_client` builds the message (Data indication, padded
        ChannelData on streams) or drops it for want of a permission."""
        ctx = alloc.ctx
        recv_into = ctx.sock.recvfrom_into
        rbuf = self._rbuf
        rmv = self._rmv
        into = self._rmv_in
        send = ctx.send
        udp_send = ctx.udp_send
        client = ctx.client
        perms = alloc.permissions
        peer_channels = alloc.peer_channels
        channels = alloc.channels
        frame = alloc.frame_to_client
        pack_into = _CD_HDR.pack_into
        now = time.time()
        packets = nbytes = dropped = 0
        for _ in range(self.max_batch):
            try:
                n, src = recv_into(into)
            except BlockingIOError:
                break
            except OSError:
                continue
            exp = perms.get(src[0])
            if exp is None or exp < now:
                dropped += 1
                continue
            ch = peer_channels.get(src)
            try:
                if ch is not None and udp_send is not None and channels[ch][1] >= now:
                    pack_into(rbuf, 0, ch, n)
                    udp_send(rmv[:4 + n], client)
                else:
                    out = frame(src, bytes(rmv[4:4 + n]), now)
                    if out is None:
                        continue
                    send(out)
            except OSError:
                dropped += 1
                continue
            packets += 1
            nbytes += n
        if packets:
            alloc.to_client_packets += packets
            alloc.to_client_bytes += nbytes
        if dropped:
            alloc.dropped += dropped

    # -- actions -----------------------------------------------------------------------------

    def _stun(self, msg: bytes, key: tuple, now: float, write: Any) -> None:
        """A STUN message from a stream connection."""
        if self.core is None:
            out = self.binding.respond(msg, key[1], key[2], now)
            if out is not None:
                try:
                    write(out)
                except OSError:
                    pass
            return
        self._run(self.core.handle(msg, key, now), write=write)

    def _run(self, actions: list[Any], udp: _Udp | None = None, write: Any = None) -> None:
        core = self.core
        for act in actions:
            if type(act) is Reply:
                if write is not None:
                    try:
                        write(act.data)
                    except OSError:
                        pass
                elif udp is not None:
                    try:
                        udp.sock.sendto(act.data, act.key[1])
                    except OSError:
                        pass
            elif type(act) is ToPeer:
                try:
                    act.allocation.ctx.sock.sendto(act.data, act.peer)
                    act.allocation.to_peer_packets += 1
                    act.allocation.to_peer_bytes += len(act.data)
                except OSError:
                    act.allocation.dropped += 1
            elif type(act) is NeedRelay:
                self._run(self._allocate(act, udp, write), udp, write)
            elif type(act) is FreeRelay:
                self._free(act.allocation, act.reason)
            elif type(act) is ReleaseReservation:
                self._unref(act.handle)
        if core is not None and core.auth_failures != self._auth_failures_seen:
            self._auth_failures_seen = core.auth_failures
            ip, user, code = core.last_auth_failure
            self._emit("turn auth failure", source=ip, user=user, code=code, total=core.auth_failures)

    def _allocate(self, act: NeedRelay, udp: _Udp | None, write: Any) -> list[Any]:
        assert self.core is not None and self.ports is not None
        req = act.request
        client = req.key[1]
        reservation = None
        if req.reserved is not None:  # RESERVATION-TOKEN: the odd port held by an earlier Allocate
            ref = req.reserved  # the reservation's reference passes to this allocation
            sock, port = ref.pair.rtcp_sock, ref.pair.rtcp_port
        else:
            try:
                pair = self.ports.allocate_pair()
            except (PortsExhausted, OSError) as exc:
                self._emit("turn allocation failed", client=f"{client[0]}:{client[1]}", reason=str(exc))
                return self.core.relay_ready(req, None)
            ref = _PairRef(pair)
            sock, port = pair.rtp_sock, pair.rtp_port  # even: EVEN-PORT is always satisfied
            if req.reserve:
                ref.refs += 1
                reservation = ref
        udp_send = None
        if write is not None:
            send = write
        else:
            udp_send = udp.sock.sendto  # type: ignore[union-attr]
            send = lambda data, _s=udp_send, _c=client: _s(data, _c)  # noqa: E731
        ctx = _Relay(ref, sock, send, client, udp_send)
        out = self.core.relay_ready(req, (self.relay_ip or ref.pair.ip, port), ctx, reservation)
        alloc = self.core.allocations.get(req.key)
        if alloc is None or alloc.ctx is not ctx:
            self._unref(ref)
            if reservation is not None and reservation not in (h for _, h in self.core.reservations.values()):
                self._unref(ref)
            return out
        self.loop.add_reader(ctx.fd, self._on_relay, alloc)
        self._emit("turn allocation created", user=alloc.username, transport=req.key[0],
                   client=f"{client[0]}:{client[1]}", relayed=f"{alloc.relayed[0]}:{alloc.relayed[1]}",
                   lifetime_s=int(alloc.expires - req.now), allocations=len(self.core.allocations),
                   reserved_next_port=reservation is not None)
        return out

    def _unref(self, ref: _PairRef) -> None:
        ref.refs -= 1
        if ref.refs <= 0 and self.ports is not None:
            self.ports.release(ref.pair)

    def _free(self, alloc: Allocation, reason: str) -> None:
        ctx = alloc.ctx
        if ctx is None:
            return
        alloc.ctx = None
        try:
            self.loop.remove_reader(ctx.fd)
        except Exception:
            pass
        self._unref(ctx.ref)
        self._emit("turn allocation deleted", user=alloc.username, reason=reason,
                   relayed=f"{alloc.relayed[0]}:{alloc.relayed[1]}", to_peer_packets=alloc.to_peer_packets,
                   to_client_packets=alloc.to_client_packets, dropped=alloc.dropped)

    def _emit(self, name: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(name, **fields)

    def _start_sweep(self) -> None:
        if self.core is not None and self._sweep is None:
            self._sweep = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep_tick)

    def _sweep_tick(self) -> None:
        self._sweep = None
        if self.core is None:
            return
        self._run(self.core.expire(time.time()))
        self._sweep = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep_tick)

    # -- stats / close -----------------------------------------------------------------------

    @property
    def allocations(self) -> int:
        """Open allocations (int)."""
        return len(self.core.allocations) if self.core is not None else 0

    def stats(self) -> dict[str, Any]:
        """STUN counters (``binding_requests``, ``binding_classic``, ``binding_errors``,
        ``binding_auth_failures``), ``dropped`` and, with TURN, :meth:`TurnCore.stats`."""
        b = self.binding
        out: dict[str, Any] = {"binding_requests": b.requests, "binding_classic": b.classic,
                               "binding_errors": b.errors, "binding_auth_failures": b.auth_failures,
                               "dropped": self.dropped, "listening": list(self.listening)}
        if self.core is not None:
            out.update(self.core.stats())
        return out

    async def close(self) -> None:
        """Delete every allocation, close listeners and connections (idempotent)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self.core is not None:
            for key in list(self.core.allocations):
                self._run(self.core.delete(key, "shutdown"))
            for _, handle in self.core.reservations.values():
                self._unref(handle)
            self.core.reservations.clear()
        for u in self._udp:
            try:
                self.loop.remove_reader(u.fd)
            except Exception:
                pass
            u.sock.close()
        self._udp.clear()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.close()
        for s in self._servers:
            s.close()
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 2.0)
            except Exception:
                pass
        self._servers.clear()


async def start_from_config(cfg: Any, ports: PortAllocator | None, events: Any = None) -> TurnServer:
    """Build and start the STUN/TURN server of a node from its ``[turn]`` section
    (:class:`~edgeway.config.models.TurnConfig`): listeners on every configured port,
    TLS with the node's ``[tls]`` certificate, relay sockets from ``ports`` (the node's
    media port pool), relayed addresses advertised as ``media.public_ip``.  One
    ``turn started`` event names the listeners."""
    from ..security.tls import server_context
    from .stun import Auth

    t = cfg.turn
    ip = t.listen_ip or cfg.sip.listen_ip
    auth = Auth(t.realm, {u.username: u.password for u in t.users}, t.shared_secret,
                nonce_lifetime_s=float(t.nonce_lifetime_s))
    binding = BindingResponder(t.software, auth if auth.configured else None, t.stun_requires_auth)
    core = None
    if t.relay:
        core = TurnCore(auth, binding, default_lifetime_s=float(t.default_lifetime_s),
                        max_lifetime_s=float(t.max_lifetime_s), max_allocations=t.max_allocations,
                        max_allocations_per_user=t.max_allocations_per_user, software=t.software,
                        denied_peers=t.denied_peer_ips)
    srv = TurnServer(binding, core, ports if core is not None else None, relay_ip=cfg.media.public_ip, events=events)
    try:
        for port in t.udp_ports:
            await srv.listen_udp(ip, port)
        for port in t.tcp_ports:
            await srv.listen_stream(ip, port)
        if t.tls_ports:
            ctx = server_context(cfg.tls.cert_file, cfg.tls.key_file, None, min_version=cfg.tls.min_version)
            for port in t.tls_ports:
                await srv.listen_stream(ip, port, ssl=ctx)
    except BaseException:
        await srv.close()
        raise
    if events is not None:
        events.emit("turn started", listening=[f"{n}:{h}:{p}" for n, h, p in srv.listening], relay=core is not None,
                    realm=t.realm, users=len(t.users), rest_credentials=bool(t.shared_secret))
    return srv
