"""RTP/RTCP media relay: the media hot path of the core and edge nodes.

A :class:`RelaySession` anchors one media stream (one SDP ``m=`` line) between
two parties, *A* and *B*.  Each side gets its own RTP/RTCP UDP port pair
(RFC 3550 §11: RTP on an even port, RTCP on the next odd port) bound on the IP
address advertised to that side.  Datagrams received on A's RTP socket are sent
out of B's RTP socket to B's remote RTP address, A's RTCP to B's RTCP, and the
same in reverse.

Remote addresses come from SDP (:meth:`RelaySession.set_remote`) and are then
corrected by *symmetric latching* (RFC 4961 symmetric RTP; the "latching"
practice of RFC 7362): the first datagram received on a socket fixes that
side's remote address for that socket to the datagram's source, which overrides
SDP (the party may be behind NAT); datagrams from any other source are dropped.
A side marked ``latch_only`` never receives anything before it has been
latched; the edge uses this toward the core so that the core, which opens all
media toward the edge, needs no inbound firewall hole.  The core triggers the
latch with :data:`LATCH_PROBE` datagrams (:meth:`RelaySession.send_latch_probe`,
:meth:`RelaySession.start_probing`) that latch but are never forwarded.

Performance: the hot path does not use ``asyncio`` transports/protocols.  Each
socket is registered with ``loop.add_reader()`` and the callback drains it with
``recvfrom_into()`` into one preallocated buffer (at most ``max_batch``
datagrams per wake-up, to stay fair between sessions) and forwards each datagram
with ``sendto()`` of a memoryview slice.  Counters are kept in locals inside the
drain loop and written back once per wake-up.  Errors (ICMP-induced
``ConnectionRefusedError``, a full send buffer, any ``OSError``) are counted and
never stop the reader or affect other sessions.

Session set-up and tear-down stay off the hot path but are paid per call:
``open_session`` + ``close`` cost ~35 µs on the call path and ~60 µs of CPU
all included (``bench/relay_bench.py``, uvloop; four ``add_reader`` /
``remove_reader`` and four socket closes dominate).  The port pairs come
from the allocators' warm pools (see :class:`~edgeway.media.ports.PortAllocator`),
which the relay sets up for the allocators it is given and closes with it.

SRTP (RFC 3711) interworking: :meth:`RelaySession.set_crypto` gives a side
SRTP contexts (:class:`edgeway.media.srtp.SrtpContext`, keyed by SDES).
Datagrams received on that side are unprotected before being forwarded and
datagrams sent out of that side are protected.  Legs that touch a side with
crypto are served by a separate reader (:meth:`_Leg.on_readable_srtp`, working
in place on a second buffer with room for the SRTP trailer); a session without
crypto keeps the plain reader above, unchanged.  On a side with an inbound
context, only datagrams that authenticate (or latch probes, which are never
passed to SRTP) latch the side's address, so an unauthenticated first packet
cannot capture the media.

Everything here runs on the event loop thread and is not thread-safe.

Units: ports are ``int``; times and timeouts are seconds (``float``); byte
counters count UDP payload bytes.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .mux import DemuxTable, MuxPair, mux_key
from .ports import PortAllocator, PortPair

if TYPE_CHECKING:  # the relay never imports pylibsrtp itself
    from .srtp import SrtpContext

__all__ = [
    "DEFAULT_POOL_PAIRS",
    "LATCH_PROBE",
    "Endpoint",
    "MediaRelay",
    "MuxPair",
    "RelaySession",
]

log = logging.getLogger(__name__)

#: Datagram the core sends toward the edge to make it latch (never forwarded).
#: It starts with a zero byte, i.e. RTP version 0, so it cannot be mistaken for
#: RTP/RTCP (version 2), and at 15 bytes it is shorter than a STUN header.
LATCH_PROBE: bytes = b"\x00EDGEWAY-LATCH\x00"
_PROBE_LEN = len(LATCH_PROBE)

#: Default warm-pool size (port pairs per allocator) of a :class:`MediaRelay`.
DEFAULT_POOL_PAIRS = 16

#: Size of the shared receive buffer (bytes): the largest UDP payload fits, so
#: datagrams are never truncated.
_BUF_SIZE = 65536
#: Room after a received datagram in the SRTP buffer: protection adds at most
#: the SRTCP index, the tag and an MKI (148 bytes, libsrtp's maximum).
_SRTP_SLACK = 512

Side = Literal["a", "b"]
Addr = tuple[Any, ...]
OnClosed = Callable[["RelaySession", str], None]


class Endpoint(NamedTuple):
    """A local RTP/RTCP address: IP and the two UDP ports (ints)."""

    ip: str
    rtp_port: int
    rtcp_port: int


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ipaddress.ip_address`` memoised (the same few addresses come in every SDP)."""
    return ipaddress.ip_address(text)


def _host_port(addr: Addr | None) -> tuple[str, int] | None:
    return None if addr is None else (addr[0], addr[1])


class _Leg:
    """One socket of a session: it receives from its own side's party.

    ``dest`` is where datagrams *toward* this side are sent (out of this leg's
    socket); it is the latched source if any, else the SDP address unless the
    side is latch-only.  Datagrams received here are forwarded out of
    ``peer.sock`` to ``peer.dest``; the counters on this leg therefore describe
    the direction "this side -> other side" for this leg's kind (RTP or RTCP).
    """

    __slots__ = (
        "sock",
        "fd",
        "peer",
        "buf",
        "mv",
        "max_batch",
        "latch_only",
        "sdp",
        "latched",
        "dest",
        "packets",
        "bytes",
        "probes",
        "drop_foreign",
        "drop_nodest",
        "send_errors",
        "recv_errors",
        "probes_sent",
        "probe_errors",
        "is_rtcp",
        "rx",
        "tx",
        "sbuf",
        "smv",
        "srtp_auth",
        "srtp_replay",
        "srtp_errors",
        "mux",
        "mux_key",
        "peer_sendto",
    )

    def __init__(
        self, sock: socket.socket, buf: bytearray, mv: memoryview, max_batch: int,
        latch_only: bool, is_rtcp: bool = False,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: _Leg = self  # set by the session
        self.buf = buf
        self.mv = mv
        self.max_batch = max_batch
        self.latch_only = latch_only
        self.sdp: Addr | None = None
        self.latched: Addr | None = None
        self.dest: Addr | None = None
        self.packets = 0
        self.bytes = 0
        self.probes = 0
        self.drop_foreign = 0
        self.drop_nodest = 0
        self.send_errors = 0
        self.recv_errors = 0
        self.probes_sent = 0
        self.probe_errors = 0
        # SRTP: ``rx`` unprotects what this leg receives (this side's inbound
        # context), ``tx`` protects what is forwarded out of ``peer.sock`` (the
        # other side's outbound context).
        self.is_rtcp = is_rtcp
        self.rx: SrtpContext | None = None
        self.tx: SrtpContext | None = None
        self.sbuf: bytearray | None = None
        self.smv: memoryview | None = None
        self.srtp_auth = 0
        self.srtp_replay = 0
        self.srtp_errors = 0
        #: On a shared (multiplexed) socket: the socket's demux table and this leg's
        #: key in it (the far end's SDP address), else None.
        self.mux: DemuxTable | None = None
        self.mux_key: tuple[str, int] | None = None
        #: ``peer.sock.sendto`` (the mux reader's per-datagram send; set by the session).
        self.peer_sendto: Callable[..., int] | None = None

    def update_dest(self) -> None:
        if self.latched is not None:
            self.dest = self.latched
        elif self.latch_only:
            self.dest = None
        else:
            self.dest = self.sdp

    def activity(self) -> int:
        """Datagrams accepted from the latched source (forwarded or not);
        datagrams dropped by SRTP are not activity."""
        return self.packets + self.probes + self.drop_nodest + self.send_errors

    @property
    def srtp(self) -> bool:
        """Whether this leg is served by :meth:`on_readable_srtp`."""
        return self.rx is not None or self.tx is not None

    def on_readable(self) -> None:
        """Reader callback: drain up to ``max_batch`` datagrams and forward them."""
        recv_into = self.sock.recvfrom_into
        buf = self.buf
        mv = self.mv
        peer = self.peer
        sendto = peer.sock.sendto
        dest = peer.dest
        latched = self.latched
        packets = nbytes = 0
        probes = foreign = nodest = senderr = recverr = 0
        for _ in range(self.max_batch):
            try:
                n, src = recv_into(buf)
            except BlockingIOError:
                break
            except OSError:  # e.g. ConnectionRefusedError from an ICMP error
                recverr += 1
                continue
            if src != latched:
                if latched is None:
                    latched = src
                    self.latched = src
                    self.update_dest()
                else:
                    foreign += 1
                    continue
            if n == _PROBE_LEN and buf[:n] == LATCH_PROBE:
                probes += 1
                continue
            if dest is None:
                nodest += 1
                continue
            try:
                sendto(mv[:n], dest)
            except OSError:  # full send buffer, ICMP-induced errors, bad route...
                senderr += 1
                continue
            packets += 1
            nbytes += n
        self._account(packets, nbytes, probes, foreign, nodest, senderr, recverr)

    def _account(self, packets: int, nbytes: int, probes: int, foreign: int, nodest: int, senderr: int, recverr: int) -> None:
        """Add one wake-up's local counters to the leg's (once per wake-up, not per packet)."""
        if packets:
            self.packets += packets
            self.bytes += nbytes
        if probes or foreign or nodest or senderr or recverr:
            self.probes += probes
            self.drop_foreign += foreign
            self.drop_nodest += nodest
            self.send_errors += senderr
            self.recv_errors += recverr

    def on_readable_srtp(self) -> None:
        """Reader callback for a leg with SRTP on either end.

        Like :meth:`on_readable`, plus: a latch probe is counted (and latches)
        without touching SRTP; anything else is unprotected with ``rx`` (if
        set) *before* it can latch, then protected with ``tx`` (if set) and
        forwarded.  SRTP failures drop the datagram and are counted
        (authentication, replay, other); they never raise out of the reader.
        On an RTP leg, RTCP multiplexed on the RTP port (RFC 5761 §4: second
        byte 192-223) is treated as RTCP.
        """
        recv_into = self.sock.recvfrom_into
        buf = self.sbuf
        mv = self.smv
        peer = self.peer
        sendto = peer.sock.sendto
        dest = peer.dest
        latched = self.latched
        rx = self.rx
        tx = self.tx
        is_rtcp = self.is_rtcp
        packets = nbytes = 0
        probes = foreign = nodest = senderr = recverr = 0
        auth = replay = srtperr = 0
        for _ in range(self.max_batch):
            try:
                n, src = recv_into(buf, _BUF_SIZE)
            except BlockingIOError:
                break
            except OSError:
                recverr += 1
                continue
            if src != latched and latched is not None:
                foreign += 1
                continue
            if n == _PROBE_LEN and buf[:n] == LATCH_PROBE:
                if latched is None:
                    latched = src
                    self.latched = src
                    self.update_dest()
                probes += 1
                continue
            rtcp = is_rtcp or (n > 1 and 192 <= buf[1] <= 223)
            if rx is not None:
                try:
                    n = rx.apply_rtcp(buf, n) if rtcp else rx.apply_rtp(buf, n)
                except Exception as exc:  # SrtpError, or anything unexpected
                    kind = getattr(exc, "kind", "error")
                    if kind == "auth":
                        auth += 1
                    elif kind == "replay":
                        replay += 1
                    else:
                        srtperr += 1
                    continue
            if latched is None:
                latched = src
                self.latched = src
                self.update_dest()
            if dest is None:
                nodest += 1
                continue
            if tx is not None:
                try:
                    n = tx.apply_rtcp(buf, n) if rtcp else tx.apply_rtp(buf, n)
                except Exception as exc:
                    if getattr(exc, "kind", "error") == "replay":
                        replay += 1  # e.g. a duplicated packet from the plain side
                    else:
                        srtperr += 1
                    continue
            try:
                sendto(mv[:n], dest)
            except OSError:
                senderr += 1
                continue
            packets += 1
            nbytes += n
        self._account(packets, nbytes, probes, foreign, nodest, senderr, recverr)
        if auth or replay or srtperr:
            self.srtp_auth += auth
            self.srtp_replay += replay
            self.srtp_errors += srtperr


    def mux_one(self, buf: bytearray, mv: memoryview, n: int, src: Addr) -> None:
        """One datagram for this leg from its mux socket, outside the reader (a held
        early datagram replayed when the leg's key is registered); as the reader."""
        if self.rx is not None or self.tx is not None:
            self.mux_srtp(buf, mv, n, src)
            return
        if self.latched is None:
            self.latched = src
            self.update_dest()
        if n == _PROBE_LEN and buf[:n] == LATCH_PROBE:
            self.probes += 1
            return
        peer = self.peer
        dest = peer.dest
        if dest is None:
            self.drop_nodest += 1
            return
        try:
            peer.sock.sendto(mv[:n], dest)
        except OSError:
            self.send_errors += 1
            return
        self.packets += 1
        self.bytes += n

    def mux_srtp(self, buf: bytearray, mv: memoryview, n: int, src: Addr) -> None:
        """One datagram for this leg from a mux socket when SRTP is on either end
        (:meth:`on_readable_srtp` for a single datagram; ``buf`` has the SRTP slack).
        The source is already known to be this leg's (the demux key)."""
        if n == _PROBE_LEN and buf[:n] == LATCH_PROBE:
            if self.latched is None:
                self.latched = src
                self.update_dest()
            self.probes += 1
            return
        rtcp = self.is_rtcp or (n > 1 and 192 <= buf[1] <= 223)
        rx = self.rx
        if rx is not None:
            try:
                n = rx.apply_rtcp(buf, n) if rtcp else rx.apply_rtp(buf, n)
            except Exception as exc:  # noqa: BLE001 - SrtpError, or anything unexpected
                kind = getattr(exc, "kind", "error")
                if kind == "auth":
                    self.srtp_auth += 1
                elif kind == "replay":
                    self.srtp_replay += 1
                else:
                    self.srtp_errors += 1
                return
        if self.latched is None:
            self.latched = src
            self.update_dest()
        peer = self.peer
        dest = peer.dest
        if dest is None:
            self.drop_nodest += 1
            return
        tx = self.tx
        if tx is not None:
            try:
                n = tx.apply_rtcp(buf, n) if rtcp else tx.apply_rtp(buf, n)
            except Exception as exc:  # noqa: BLE001 - as on_readable_srtp
                if getattr(exc, "kind", "error") == "replay":
                    self.srtp_replay += 1
                else:
                    self.srtp_errors += 1
                return
        try:
            peer.sock.sendto(mv[:n], dest)
        except OSError:
            self.send_errors += 1
            return
        self.packets += 1
        self.bytes += n


class _MuxReader:
    """The reader of one mux socket: each datagram goes to the leg its source
    address names in the socket's :class:`~edgeway.media.mux.DemuxTable` (one dict
    lookup), then is forwarded exactly as :meth:`_Leg.on_readable` would; a source
    that is in no call's entry is dropped and counted on the table (it never
    latches or reaches any call).  Counters of a leg are updated per datagram here
    (a wake-up mixes many calls)."""

    __slots__ = ("buf", "max_batch", "mv", "sock", "table", "v6")

    def __init__(self, sock: socket.socket, table: DemuxTable, buf: bytearray, mv: memoryview, max_batch: int) -> None:
        self.sock = sock
        self.table = table
        self.buf = buf
        self.mv = mv
        self.max_batch = max_batch
        self.v6 = sock.family == socket.AF_INET6

    def on_readable(self) -> None:
        recv_into = self.sock.recvfrom_into
        get = self.table.map.get
        buf = self.buf
        mv = self.mv
        v6 = self.v6
        probe_len = _PROBE_LEN
        unknown = recverr = 0
        for _ in range(self.max_batch):
            try:
                n, src = recv_into(buf, _BUF_SIZE)
            except BlockingIOError:
                break
            except OSError:
                recverr += 1
                continue
            leg = get(src[:2] if v6 else src)
            if leg is None:
                unknown += 1
                self._hold(src, n)
                continue
            if leg.sbuf is not None:  # SRTP is or was on (mux_srtp also serves plain)
                leg.mux_srtp(buf, mv, n, src)
                continue
            if leg.latched is None:
                leg.latched = src
                leg.update_dest()
            if n == probe_len and buf[:n] == LATCH_PROBE:
                leg.probes += 1
                continue
            dest = leg.peer.dest
            if dest is None:
                leg.drop_nodest += 1
                continue
            try:
                leg.peer_sendto(mv[:n], dest)
            except OSError:
                leg.send_errors += 1
                continue
            leg.packets += 1
            leg.bytes += n
        if unknown or recverr:
            self.table.unknown += unknown
            self.table.recv_errors += recverr

    def _hold(self, src: Addr, n: int) -> None:
        """An unknown source's datagram: keep it briefly (see
        :meth:`~edgeway.media.mux.DemuxTable.hold`); cold path."""
        self.table.hold((src[0], src[1]), self.buf[:n], time.monotonic())


def _leg_totals(s: RelaySession) -> tuple[int, int, int]:
    """``(packets, bytes, dropped)`` over a session's four legs (as :meth:`RelaySession.stats`
    counts them, without building the stats dict)."""
    packets = bytes_ = dropped = 0
    for leg in (s._a_rtp, s._a_rtcp, s._b_rtp, s._b_rtcp):
        packets += leg.packets
        bytes_ += leg.bytes
        dropped += leg.drop_foreign + leg.drop_nodest + leg.send_errors
        dropped += leg.srtp_auth + leg.srtp_replay + leg.srtp_errors
    return packets, bytes_, dropped


def _ctx_info(ctx: SrtpContext | None) -> str | None:
    if ctx is None:
        return None
    return ctx.suite + (" UNENCRYPTED_SRTCP" if ctx.unencrypted_srtcp else "")


def _check_side(side: str) -> Side:
    if side not in ("a", "b"):
        raise ValueError(f"side must be 'a' or 'b', not {side!r}")
    return side  # type: ignore[return-value]


class RelaySession:
    """One relayed media stream between side A and side B.

    Created by :meth:`MediaRelay.open_session`; not instantiated directly.

    Attributes:
        id: relay-unique session number (int).
        label: free-form label given at creation (e.g. call-id and m-line index).
        created_at: ``loop.time()`` at creation (seconds).
        closed: True once :meth:`close` has run.
        close_reason: the reason passed to :meth:`close`, or None.
        on_closed: optional ``callback(session, reason)`` called once on close,
            before the relay-wide :attr:`MediaRelay.on_closed`.
    """

    def __init__(
        self,
        relay: MediaRelay,
        sid: int,
        a_alloc: PortAllocator | None,
        a_pair: PortPair | MuxPair,
        b_alloc: PortAllocator | None,
        b_pair: PortPair | MuxPair,
        *,
        a_latch_only: bool,
        b_latch_only: bool,
        label: str,
    ) -> None:
        self._relay = relay
        self._loop = relay.loop
        self.id = sid
        self.label = label
        self.created_at = self._loop.time()
        self.closed = False
        self.close_reason: str | None = None
        self.on_closed: OnClosed | None = None
        self._allocs = {"a": a_alloc, "b": b_alloc}
        self._pairs = {"a": a_pair, "b": b_pair}
        buf, mv, mb = relay._buf, relay._mv, relay.max_batch
        self._a_rtp = _Leg(a_pair.rtp_sock, buf, mv, mb, a_latch_only)
        self._a_rtcp = _Leg(a_pair.rtcp_sock, buf, mv, mb, a_latch_only, is_rtcp=True)
        self._b_rtp = _Leg(b_pair.rtp_sock, buf, mv, mb, b_latch_only)
        self._b_rtcp = _Leg(b_pair.rtcp_sock, buf, mv, mb, b_latch_only, is_rtcp=True)
        #: The mux pair of each side on a shared socket pair (no reader of its own).
        self._mux: dict[str, MuxPair | None] = {}
        for side, pair, rtp, rtcp in (("a", a_pair, self._a_rtp, self._a_rtcp), ("b", b_pair, self._b_rtp, self._b_rtcp)):
            if isinstance(pair, MuxPair):
                self._mux[side] = pair
                rtp.mux, rtcp.mux = pair.rtp_table, pair.rtcp_table
                pair.sessions += 1
            else:
                self._mux[side] = None
        self._a_rtp.peer, self._b_rtp.peer = self._b_rtp, self._a_rtp
        self._a_rtcp.peer, self._b_rtcp.peer = self._b_rtcp, self._a_rtcp
        for leg in (self._a_rtp, self._a_rtcp, self._b_rtp, self._b_rtcp):
            leg.peer_sendto = leg.peer.sock.sendto
        self._legs = {
            "a": (self._a_rtp, self._a_rtcp),
            "b": (self._b_rtp, self._b_rtcp),
        }
        self._readers: list[int] = []
        self._crypto: dict[str, tuple[SrtpContext | None, SrtpContext | None]] = {
            "a": (None, None),
            "b": (None, None),
        }
        self._probing: dict[str, asyncio.TimerHandle] = {}
        # Inactivity bookkeeping (maintained by the relay's sweep).
        self._last_activity = self.created_at
        self._activity_token = 0

    def _start(self) -> None:
        for leg in (self._a_rtp, self._a_rtcp, self._b_rtp, self._b_rtcp):
            if leg.mux is not None:
                continue  # read by the mux socket's reader
            self._loop.add_reader(leg.fd, leg.on_readable)
            self._readers.append(leg.fd)

    def __repr__(self) -> str:
        a, b = self.local("a"), self.local("b")
        state = f"closed:{self.close_reason}" if self.closed else "open"
        return (
            f"<RelaySession {self.id} {self.label!r} a={a.ip}:{a.rtp_port} "
            f"b={b.ip}:{b.rtp_port} {state}>"
        )

    # -- addresses -----------------------------------------------------------

    def local(self, side: Side) -> Endpoint:
        """The relay's own address on ``side`` (what to put in SDP toward that side)."""
        pair = self._pairs[_check_side(side)]
        return Endpoint(pair.ip, pair.rtp_port, pair.rtcp_port)

    def mux(self, side: Side) -> MuxPair | None:
        """The shared socket pair ``side`` is on, or None (a port pair of its own)."""
        return self._mux[_check_side(side)]

    def latch_only(self, side: Side) -> bool:
        """Whether ``side`` only ever receives from its latched address."""
        return self._legs[_check_side(side)][0].latch_only

    def set_remote(
        self, side: Side, ip: str, rtp_port: int, rtcp_port: int | None = None
    ) -> None:
        """Set ``side``'s remote RTP/RTCP address as learnt from its SDP.

        Args:
            side: ``"a"`` or ``"b"``.
            ip: literal IP address of the party (SDP ``c=``); must be of the
                same family as the side's local address.  The unspecified
                address (``0.0.0.0``/``::``, legacy hold) or ``rtp_port == 0``
                (stream rejected/disabled) clears the SDP address.
            rtp_port: remote RTP port (int, SDP ``m=`` port).
            rtcp_port: remote RTCP port (int); defaults to ``rtp_port + 1``
                (RFC 3550 §11; pass the RFC 3605 ``a=rtcp`` port if present).

        A latched address (first datagram received) keeps precedence over this
        address (RFC 4961 symmetric RTP); see :meth:`reset_latch`.  Until
        either is known, datagrams toward ``side`` are dropped and counted.
        No-op on a closed session.

        On a side that shares a mux socket pair (see :meth:`MediaRelay.open_session`)
        this address is also the side's key in the demux tables: only datagrams
        from exactly ``ip``:``rtp_port`` (RTP) and ``ip``:``rtcp_port`` (RTCP)
        reach this session, and a new address replaces the old key and forgets
        the old latch.
        """
        side = _check_side(side)
        if self.closed:
            return
        rtp_leg, rtcp_leg = self._legs[side]
        addr = _ip(ip.split("%", 1)[0])
        if not (0 <= rtp_port <= 65535):
            raise ValueError(f"invalid RTP port {rtp_port}")
        if rtcp_port is None:
            rtcp_port = rtp_port + 1 if rtp_port else 0
        if not (0 <= rtcp_port <= 65535):
            raise ValueError(f"invalid RTCP port {rtcp_port}")
        family = rtp_leg.sock.family
        want = 6 if family == socket.AF_INET6 else 4
        if addr.version != want:
            raise ValueError(
                f"remote {ip} is IPv{addr.version} but side {side} is bound on IPv{want}"
            )
        if addr.is_unspecified or rtp_port == 0:
            rtp_leg.sdp = rtcp_leg.sdp = None
        else:
            host = ip if "%" in ip else str(addr)
            for mine in (self.local("a"), self.local("b")):
                same_ip = _ip(mine.ip.split("%", 1)[0]) == addr
                if same_ip and {rtp_port, rtcp_port} & {mine.rtp_port, mine.rtcp_port}:
                    raise ValueError(f"remote {host}:{rtp_port} is this session's own port")
            rtp_leg.sdp = (host, rtp_port)
            rtcp_leg.sdp = (host, rtcp_port) if rtcp_port else None
        if rtp_leg.mux is not None:
            for leg in (rtp_leg, rtcp_leg):
                self._mux_rekey(leg, None if leg.sdp is None else mux_key(leg.sdp[0], leg.sdp[1]))
        rtp_leg.update_dest()
        rtcp_leg.update_dest()

    def _mux_rekey(self, leg: _Leg, key: tuple[str, int] | None) -> None:
        """Point ``leg``'s demux entry at ``key`` (None: no entry), then hand it what
        that source sent before it was known (held early datagrams)."""
        table = leg.mux
        if table is None or key == leg.mux_key:
            return
        if leg.mux_key is not None:
            table.unregister(leg.mux_key, leg, time.monotonic())
        leg.mux_key = key
        leg.latched = None  # a latch from the old key must not survive it
        if key is None:
            return
        old = table.register(key, leg)
        if old is not None:  # a stale session had it: it no longer receives
            old.mux_key = None
        held = table.take_held(key, time.monotonic())
        if held:
            leg.update_dest()
            leg.peer.update_dest()
            buf, mv = self._relay._srtp_buffer()
            src = leg.sdp if leg.sdp is not None and leg.sdp[:2] == key else key
            for data in held:
                n = len(data)
                buf[:n] = data
                leg.mux_one(buf, mv, n, src)

    def reset_latch(self, side: Side) -> None:
        """Forget ``side``'s latched addresses; the next datagram latches again.

        Useful when a re-INVITE moves the party to a new address.
        """
        for leg in self._legs[_check_side(side)]:
            leg.latched = None
            leg.update_dest()

    # -- SRTP ------------------------------------------------------------------------

    def set_crypto(
        self,
        side: Side,
        *,
        inbound: SrtpContext | None,
        outbound: SrtpContext | None,
    ) -> None:
        """Use SRTP toward ``side`` (or stop, with both None).

        Args:
            side: ``"a"`` or ``"b"``.
            inbound: context (direction ``"inbound"``, keyed with the party's
                SDES key) that unprotects SRTP/SRTCP received from ``side``;
                None to forward what ``side`` sends as it is.
            outbound: context (direction ``"outbound"``, keyed with the key we
                gave the party) that protects what is sent to ``side``; None
                to send plain.

        Replaces earlier contexts of that side (a new context starts with a
        fresh rollover counter and replay window: keep the old one across a
        re-INVITE that keeps the keys).  Failures to unprotect drop the
        datagram and count as ``srtp_auth_failures`` / ``srtp_replay_drops``
        / ``srtp_errors`` in the direction *from* ``side``; failures to protect
        (e.g. a duplicated or malformed packet from the other party) count in
        the direction *toward* ``side``.  Latch probes are never passed to
        SRTP.  No-op on a closed session.  Raises ``ValueError`` when a
        context has the wrong direction.
        """
        side = _check_side(side)
        if inbound is not None and inbound.direction != "inbound":
            raise ValueError("inbound context must have direction 'inbound'")
        if outbound is not None and outbound.direction != "outbound":
            raise ValueError("outbound context must have direction 'outbound'")
        if self.closed:
            return
        other: Side = "b" if side == "a" else "a"
        before = {leg: leg.srtp for pair in self._legs.values() for leg in pair}
        for leg in self._legs[side]:
            leg.rx = inbound
        for leg in self._legs[other]:
            leg.tx = outbound
        self._crypto[side] = (inbound, outbound)
        for leg, was in before.items():
            if leg.srtp:
                leg.sbuf, leg.smv = self._relay._srtp_buffer()
            if leg.srtp != was and leg.fd in self._readers:
                cb = leg.on_readable_srtp if leg.srtp else leg.on_readable
                self._loop.remove_reader(leg.fd)
                self._loop.add_reader(leg.fd, cb)

    def crypto(self, side: Side) -> tuple[SrtpContext | None, SrtpContext | None]:
        """``(inbound, outbound)`` contexts of ``side`` (None when plain)."""
        return self._crypto[_check_side(side)]

    # -- latch probes ----------------------------------------------------------

    def send_latch_probe(self, side: Side) -> int:
        """Send :data:`LATCH_PROBE` out of ``side``'s RTP and RTCP sockets.

        The probes go to ``side``'s SDP address (the far relay's advertised
        ports), so that a latch-only far relay learns this relay's address.

        Returns:
            Number of datagrams sent (0 if the SDP address is unknown, the
            session is closed, or sending failed; failures are counted).
        """
        sent = 0
        if self.closed:
            return 0
        for leg in self._legs[_check_side(side)]:
            if leg.sdp is None:
                continue
            try:
                leg.sock.sendto(LATCH_PROBE, leg.sdp)
            except OSError:
                leg.probe_errors += 1
                continue
            leg.probes_sent += 1
            sent += 1
        return sent

    def start_probing(self, side: Side, interval_s: float = 1.0, count: int = 5) -> None:
        """Send latch probes to ``side`` now and then every ``interval_s`` seconds.

        At most ``count`` rounds are sent (one round = RTP + RTCP probe).
        Probing stops early once media arrives from ``side`` (its RTP socket
        has latched), or when the session closes.  Restarting replaces any
        previous probing of that side.  Driven by ``loop.call_later``.
        """
        side = _check_side(side)
        self.stop_probing(side)
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._probe_tick(side, interval_s, count)

    def stop_probing(self, side: Side) -> None:
        """Cancel probing started by :meth:`start_probing` (no-op if none)."""
        handle = self._probing.pop(_check_side(side), None)
        if handle is not None:
            handle.cancel()

    def _probe_tick(self, side: Side, interval_s: float, remaining: int) -> None:
        self._probing.pop(side, None)
        if self.closed or remaining <= 0 or self._legs[side][0].latched is not None:
            return
        self.send_latch_probe(side)
        if remaining > 1:
            self._probing[side] = self._loop.call_later(
                interval_s, self._probe_tick, side, interval_s, remaining - 1
            )

    # -- stats / lifecycle ----------------------------------------------------------

    def touch(self) -> None:
        """Restart the inactivity timer as if a datagram had just arrived.

        For signalling-driven keep-alive, e.g. while a call is still ringing
        without early media (otherwise a session that never receives anything
        is closed ``inactivity_timeout_s`` seconds after creation).
        """
        self._last_activity = self._loop.time()

    def _activity(self) -> int:
        return (
            self._a_rtp.activity()
            + self._a_rtcp.activity()
            + self._b_rtp.activity()
            + self._b_rtcp.activity()
        )

    @staticmethod
    def _direction(rtp: _Leg, rtcp: _Leg) -> dict[str, int]:
        foreign = rtp.drop_foreign + rtcp.drop_foreign
        nodest = rtp.drop_nodest + rtcp.drop_nodest
        senderr = rtp.send_errors + rtcp.send_errors
        auth = rtp.srtp_auth + rtcp.srtp_auth
        replay = rtp.srtp_replay + rtcp.srtp_replay
        srtperr = rtp.srtp_errors + rtcp.srtp_errors
        return {
            "rtp_packets": rtp.packets,
            "rtp_bytes": rtp.bytes,
            "rtcp_packets": rtcp.packets,
            "rtcp_bytes": rtcp.bytes,
            "probes_received": rtp.probes + rtcp.probes,
            "dropped": foreign + nodest + senderr + auth + replay + srtperr,
            "dropped_foreign_source": foreign,
            "dropped_no_destination": nodest,
            "send_errors": senderr,
            "recv_errors": rtp.recv_errors + rtcp.recv_errors,
            "srtp_auth_failures": auth,
            "srtp_replay_drops": replay,
            "srtp_errors": srtperr,
        }

    def _side_info(self, side: Side) -> dict[str, Any]:
        rtp, rtcp = self._legs[side]
        return {
            "local": tuple(self.local(side)),
            "mux": self._mux[side] is not None,
            "latch_only": rtp.latch_only,
            "sdp_rtp": _host_port(rtp.sdp),
            "sdp_rtcp": _host_port(rtcp.sdp),
            "latched_rtp": _host_port(rtp.latched),
            "latched_rtcp": _host_port(rtcp.latched),
            "probes_sent": rtp.probes_sent + rtcp.probes_sent,
            "probe_errors": rtp.probe_errors + rtcp.probe_errors,
            "srtp_inbound": _ctx_info(self._crypto[side][0]),
            "srtp_outbound": _ctx_info(self._crypto[side][1]),
        }

    def stats(self) -> dict[str, Any]:
        """Counters and addresses of this session.

        Keys: ``id``, ``label``, ``closed``, ``close_reason``, ``age_s``,
        ``idle_s`` (seconds since activity was last seen by the inactivity
        sweep), ``a``/``b`` (local address ``(ip, rtp_port, rtcp_port)``,
        ``latch_only``, SDP and latched ``(ip, port)`` per RTP/RTCP,
        ``probes_sent``, ``srtp_inbound``/``srtp_outbound``: the SRTP suite in
        use (with `` UNENCRYPTED_SRTCP`` appended when so) or None),
        ``a_to_b``/``b_to_a`` (``rtp_packets``, ``rtp_bytes``,
        ``rtcp_packets``, ``rtcp_bytes`` (bytes as sent, i.e. after SRTP
        protection/unprotection), ``probes_received``, ``dropped`` =
        foreign-source + no-destination + send errors + SRTP drops, each also
        given separately (``srtp_auth_failures``, ``srtp_replay_drops``,
        ``srtp_errors``), and ``recv_errors``) and ``dropped`` (both
        directions).
        """
        now = self._loop.time()
        a_to_b = self._direction(self._a_rtp, self._a_rtcp)
        b_to_a = self._direction(self._b_rtp, self._b_rtcp)
        return {
            "id": self.id,
            "label": self.label,
            "closed": self.closed,
            "close_reason": self.close_reason,
            "age_s": now - self.created_at,
            "idle_s": now - self._last_activity,
            "a": self._side_info("a"),
            "b": self._side_info("b"),
            "a_to_b": a_to_b,
            "b_to_a": b_to_a,
            "dropped": a_to_b["dropped"] + b_to_a["dropped"],
        }

    def close(self, reason: str = "bye") -> None:
        """Stop relaying, release both port pairs and fire ``on_closed`` (idempotent).

        Args:
            reason: why, e.g. ``"bye"``, ``"final-response"``, ``"inactivity"``,
                ``"shutdown"``; passed to the ``on_closed`` callbacks.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for handle in self._probing.values():
            handle.cancel()
        self._probing.clear()
        for fd in self._readers:
            try:
                self._loop.remove_reader(fd)
            except Exception:  # loop already closed: nothing to unregister
                pass
        self._readers.clear()
        for leg in (self._a_rtp, self._a_rtcp, self._b_rtp, self._b_rtcp):
            if leg.mux is not None and leg.mux_key is not None:
                leg.mux.unregister(leg.mux_key, leg, time.monotonic())
                leg.mux_key = None
            leg.rx = leg.tx = None
            leg.peer = None  # the legs point at each other: break the cycle
            leg.peer_sendto = None
        for side in ("a", "b"):
            mux = self._mux[side]
            if mux is not None:
                mux.sessions -= 1
                continue
            alloc = self._allocs[side]
            if alloc is not None:
                alloc.release(self._pairs[side])  # type: ignore[arg-type]
        self._relay._forget(self)
        for cb in (self.on_closed, self._relay.on_closed):
            if cb is None:
                continue
            try:
                cb(self, reason)
            except Exception:
                log.exception("on_closed callback failed for %r", self)


class MediaRelay:
    """Owns the relay sessions of one node and closes idle ones.

    Args:
        loop: the event loop (uvloop or the default asyncio loop; it must
            support ``add_reader``).  Defaults to the running loop.
        inactivity_timeout_s: close a session when no datagram has been
            accepted in either direction for this many seconds (sessions that
            never received anything are timed from creation).  ``None`` or
            ``0`` disables the sweep.  The sweep runs every
            ``min(1.0, inactivity_timeout_s / 4)`` seconds, so a session closes
            between ``inactivity_timeout_s`` and that much later.
        on_closed: optional ``callback(session, reason)`` for every session.
        max_batch: at most this many datagrams are handled per socket
            wake-up (fairness between sessions).
        pool_size: warm-pool size (pairs) given to each
            :class:`~edgeway.media.ports.PortAllocator` this relay uses whose
            own ``pool_size`` was not set: that many port pairs are kept bound
            ahead of need, refilled off the call path, so that
            :meth:`open_session` normally binds nothing (0 disables).  The
            default, :data:`DEFAULT_POOL_PAIRS`, covers a burst of 8 sessions
            on one allocator between two loop iterations for 32 file
            descriptors; the allocator caps it at a quarter of its range.
            :meth:`close` closes these pools.

    Attributes:
        on_closed: settable relay-wide close callback.
        pool_size: as given.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        inactivity_timeout_s: float | None = 60.0,
        on_closed: OnClosed | None = None,
        max_batch: int = 64,
        pool_size: int = DEFAULT_POOL_PAIRS,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if pool_size < 0:
            raise ValueError("pool_size must be >= 0")
        self.pool_size = pool_size
        self._allocators: dict[PortAllocator, None] = {}  # adopted, in order
        if inactivity_timeout_s is not None and inactivity_timeout_s < 0:
            raise ValueError("inactivity_timeout_s must be >= 0 or None")
        self.inactivity_timeout_s = inactivity_timeout_s or None
        self.on_closed: OnClosed | None = on_closed
        self.max_batch = max_batch
        self._buf = bytearray(_BUF_SIZE)
        self._mv = memoryview(self._buf)
        self._sbuf: bytearray | None = None  # SRTP buffer, made on first use
        self._smv: memoryview | None = None
        self._sessions: dict[int, RelaySession] = {}
        self._muxes: dict[MuxPair, list[int]] = {}  # attached mux pairs -> their reader fds
        self._next_id = 1
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed = False
        self._closed_totals = {"sessions": 0, "packets": 0, "bytes": 0, "dropped": 0}
        if self.inactivity_timeout_s is not None:
            self._sweep_interval = min(1.0, self.inactivity_timeout_s / 4)
        else:
            self._sweep_interval = 0.0

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> list[RelaySession]:
        """The open sessions."""
        return list(self._sessions.values())

    def get(self, session_id: int) -> RelaySession | None:
        """The open session with this id, or None."""
        return self._sessions.get(session_id)

    def open_session(
        self,
        a_alloc: PortAllocator | None,
        b_alloc: PortAllocator | None,
        *,
        a_latch_only: bool = False,
        b_latch_only: bool = False,
        label: str = "",
        a_mux: MuxPair | None = None,
        b_mux: MuxPair | None = None,
    ) -> RelaySession:
        """Allocate a port pair on each allocator and start relaying between them.

        The pairs normally come from the allocators' warm pools (no ``bind()``
        on this path; see :class:`~edgeway.media.ports.PortAllocator`); an
        allocator seen for the first time is adopted (see ``pool_size``).

        Args:
            a_alloc: allocator on the IP address advertised to party A.
            b_alloc: allocator on the IP address advertised to party B.
            a_latch_only: never send toward A before A's address has been
                latched from a received datagram (ignore A's SDP address).
            b_latch_only: the same for side B.
            label: free-form label for logs and stats.
            a_mux: put side A on this shared socket pair instead of a pair of its
                own (``a_alloc`` is then unused and may be None); see
                :meth:`attach_mux`.  Such a side receives only from the address
                given by :meth:`RelaySession.set_remote` (its demux key) and
                sends out of the shared sockets.
            b_mux: the same for side B.

        Raises:
            PortsExhausted: no pair free on one of the allocators, or out of
                file descriptors (nothing is leaked; raised in O(1)).
        """
        if self._closed:
            raise RuntimeError("MediaRelay is closed")
        if a_mux is not None or b_mux is not None:
            return self._open_mux_session(a_alloc, b_alloc, a_mux, b_mux, a_latch_only, b_latch_only, label)
        allocators = self._allocators
        if a_alloc not in allocators or b_alloc not in allocators:
            self._adopt(a_alloc)  # type: ignore[arg-type]
            self._adopt(b_alloc)  # type: ignore[arg-type]
        a_pair = a_alloc.allocate_pair()  # type: ignore[union-attr]
        try:
            b_pair = b_alloc.allocate_pair()  # type: ignore[union-attr]
        except BaseException:
            a_alloc.release(a_pair)  # type: ignore[union-attr]
            raise
        return self._start_session(a_alloc, a_pair, b_alloc, b_pair, a_latch_only, b_latch_only, label)

    def _open_mux_session(
        self, a_alloc: PortAllocator | None, b_alloc: PortAllocator | None, a_mux: MuxPair | None,
        b_mux: MuxPair | None, a_latch_only: bool, b_latch_only: bool, label: str,
    ) -> RelaySession:
        """:meth:`open_session` with one or both sides on a mux pair."""
        pairs: list[PortPair | MuxPair] = []
        taken: list[tuple[PortAllocator, PortPair]] = []
        try:
            for alloc, mux in ((a_alloc, a_mux), (b_alloc, b_mux)):
                if mux is not None:
                    self.attach_mux(mux)
                    pairs.append(mux)
                    continue
                if alloc is None:
                    raise ValueError("a side without a mux pair needs an allocator")
                self._adopt(alloc)
                pair = alloc.allocate_pair()
                taken.append((alloc, pair))
                pairs.append(pair)
        except BaseException:
            for alloc, pair in taken:
                alloc.release(pair)
            raise
        return self._start_session(a_alloc if a_mux is None else None, pairs[0],
                                   b_alloc if b_mux is None else None, pairs[1], a_latch_only, b_latch_only, label)

    def _start_session(
        self, a_alloc: PortAllocator | None, a_pair: PortPair | MuxPair, b_alloc: PortAllocator | None,
        b_pair: PortPair | MuxPair, a_latch_only: bool, b_latch_only: bool, label: str,
    ) -> RelaySession:
        sid = self._next_id
        self._next_id += 1
        session = RelaySession(
            self, sid, a_alloc, a_pair, b_alloc, b_pair,
            a_latch_only=a_latch_only, b_latch_only=b_latch_only, label=label,
        )
        self._sessions[sid] = session
        try:
            session._start()
        except BaseException:
            session.close("error")
            raise
        if self._sweep_handle is None and self._sweep_interval > 0:
            self._sweep_handle = self.loop.call_later(self._sweep_interval, self._sweep)
        return session

    def attach_mux(self, mux: MuxPair) -> None:
        """Start reading ``mux``'s two sockets (idempotent); the relay closes it
        with itself.  Sessions put a side on it with ``open_session(..., a_mux=)``
        / ``b_mux=``.

        Raises:
            RuntimeError: the relay is closed.
            ValueError: ``mux`` is closed.
        """
        if mux in self._muxes:
            return
        if self._closed:
            raise RuntimeError("MediaRelay is closed")
        if mux.closed:
            raise ValueError(f"{mux!r} is closed")
        buf, mv = self._srtp_buffer()  # with SRTP slack: a mux leg may carry SRTP
        readers = []
        for sock, table in ((mux.rtp_sock, mux.rtp_table), (mux.rtcp_sock, mux.rtcp_table)):
            r = _MuxReader(sock, table, buf, mv, self.max_batch)
            self.loop.add_reader(sock.fileno(), r.on_readable)
            readers.append(sock.fileno())
        self._muxes[mux] = readers

    @property
    def muxes(self) -> list[MuxPair]:
        """The mux pairs this relay reads."""
        return list(self._muxes)

    def _adopt(self, alloc: PortAllocator) -> None:
        """Remember ``alloc`` (its pool is closed with the relay) and give it
        this relay's pool size unless it has its own."""
        if alloc in self._allocators:
            return
        self._allocators[alloc] = None
        if alloc.pool_size is None:
            alloc.pool_size = self.pool_size

    def warm(self, *allocators: PortAllocator) -> int:
        """Fill the warm pools of ``allocators`` now, e.g. at start-up.

        Each allocator is adopted as by :meth:`open_session` (it gets this
        relay's ``pool_size`` unless it has its own, and its pool is closed
        with the relay), then :meth:`PortAllocator.warm` binds its pool
        synchronously.

        Returns:
            The total number of pairs now pooled on those allocators.

        Raises:
            RuntimeError: the relay is closed.
            OSError: as :meth:`PortAllocator.warm` (e.g. ``EADDRNOTAVAIL``).
        """
        if self._closed:
            raise RuntimeError("MediaRelay is closed")
        total = 0
        for alloc in allocators:
            self._adopt(alloc)
            total += alloc.warm()
        return total

    def _srtp_buffer(self) -> tuple[bytearray, memoryview]:
        """The buffer SRTP legs receive into: ``_BUF_SIZE`` plus room for the
        trailer that protection appends (never resized once made)."""
        if self._sbuf is None or self._smv is None:
            self._sbuf = bytearray(_BUF_SIZE + _SRTP_SLACK)
            self._smv = memoryview(self._sbuf)
        return self._sbuf, self._smv

    def _forget(self, session: RelaySession) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        t = self._closed_totals
        t["sessions"] += 1
        packets, bytes_, dropped = _leg_totals(session)
        t["packets"] += packets
        t["bytes"] += bytes_
        t["dropped"] += dropped

    def _sweep(self) -> None:
        self._sweep_handle = None
        timeout = self.inactivity_timeout_s
        if timeout is None:
            return
        now = self.loop.time()
        for session in list(self._sessions.values()):
            token = session._activity()
            if token != session._activity_token:
                session._activity_token = token
                session._last_activity = now
            elif now - session._last_activity >= timeout:
                session.close("inactivity")
        if self._sessions and not self._closed:
            self._sweep_handle = self.loop.call_later(self._sweep_interval, self._sweep)

    def stats(self) -> dict[str, Any]:
        """Relay-wide totals: open sessions, and packets/bytes/dropped over open
        and already-closed sessions."""
        packets = bytes_ = dropped = 0
        for s in self._sessions.values():
            p, b, d = _leg_totals(s)
            packets += p
            bytes_ += b
            dropped += d
        t = self._closed_totals
        out: dict[str, Any] = {
            "open_sessions": len(self._sessions),
            "closed_sessions": t["sessions"],
            "packets": packets + t["packets"],
            "bytes": bytes_ + t["bytes"],
            "dropped": dropped + t["dropped"],
        }
        if self._muxes:
            out["mux"] = [m.stats() for m in self._muxes]
            out["mux_unknown_source"] = sum(m.rtp_table.unknown + m.rtcp_table.unknown for m in self._muxes)
        return out

    def close(self) -> None:
        """Close every session (reason ``"shutdown"``), stop the sweep and close
        the warm pools of the allocators this relay used (idempotent)."""
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for session in list(self._sessions.values()):
            session.close("shutdown")
        for alloc in self._allocators:
            alloc.close()
        self._allocators.clear()
        for mux, fds in self._muxes.items():
            for fd in fds:
                try:
                    self.loop.remove_reader(fd)
                except Exception:  # noqa: BLE001, S110 - loop already closed
                    pass
            mux.close()
        self._muxes.clear()
