"""Multiplexed traversal media: one RTP/RTCP socket pair shared by every call.

Seed 002 §7.2 / §13.1: the core (Expressway-C role) sends all traversal media to
**one** RTP/RTCP port pair on the edge (the first pair of the media range,
36000/36001, or configured demultiplexing ports such as 2776/2777; six pairs,
36000–36011, on a "large" system), so the inside firewall opens two ports toward
the DMZ (twelve for large) instead of the whole media range.  The edge tells the
calls apart by the core's source address and port: every call's relay on the core
has its own port pair, so the 5-tuples differ even though the destination is the
same.

This module holds the parts that do not touch the hot path:

* :class:`DemuxTable` (sans-IO): the map ``(ip, port) -> leg`` of one mux socket,
  filled from the core's SDP (the core's offer/answer toward the edge names its
  relay address and ports, and the core sends from exactly those ports: symmetric
  RTP, RFC 4961) *before* the first packet arrives.  A datagram from a source
  that is not in the table belongs to no call: the reader drops and counts it; it
  is never relayed and never latches anything (an unknown source must not be able
  to capture or inject into a call).
* :class:`MuxPair`: the two bound sockets (RTP on an even port, RTCP on the next
  one, RFC 3550 §11) and one :class:`DemuxTable` per socket.

The reader itself (one ``recvfrom_into`` and **one dict lookup** per datagram,
registered with ``loop.add_reader``) lives in :mod:`edgeway.media.relay` beside
the per-call reader, because it drives the relay's legs.

**Early datagrams.**  When the core answers a call, it starts its relay (latch probes,
then the callee's media) as soon as it has rewritten the answer, and the answer
reaches the edge over TLS a little later: the first datagrams can arrive before the
edge knows the core's address.  A dedicated per-call port would take them; on the
mux socket they are unknown.  So the table *holds* a few recent datagrams per
unknown source (:data:`HOLD_PER_SOURCE` from at most :data:`HOLD_SOURCES` sources,
for :data:`HOLD_S` seconds) and hands them to the leg when the core's SDP registers
exactly that source (:meth:`DemuxTable.take_held`); everything else is dropped when
it ages out.  A held datagram thus reaches a call only under the same condition as
any later one (its source is the call's core address named by the authenticated
traversal signalling), never "some" call; the hold is bounded, so a flood of
unknown sources costs one dict lookup and a length check per datagram.

Units: ports are ``int``; counters count datagrams; times are seconds
(``time.monotonic()``, passed in: the table reads no clock).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

__all__ = ["HOLD_PER_SOURCE", "HOLD_S", "HOLD_SOURCES", "MAX_MUX_PAIRS", "DemuxTable", "MuxPair", "mux_key"]

#: Pairs a "large" edge listens on (seed 002 §7.2: the first 6 pairs of the range).
MAX_MUX_PAIRS = 6

#: Seconds an early datagram from a not-yet-known source is kept: the answer's trip
#: core → edge over the traversal connection plus its processing (a few ms in the
#: lab; a WAN RTT and a loaded edge stay far below this).
HOLD_S = 2.0
#: Datagrams kept per unknown source (a latch probe and ~140 ms of 20 ms RTP).
HOLD_PER_SOURCE = 8
#: Unknown sources held at once per socket (bounds memory under a flood:
#: 256 × 8 × 1.5 KB ≈ 3 MB at most, ~100 KB for voice-sized datagrams).
HOLD_SOURCES = 256

Key = tuple[str, int]


def mux_key(ip: str, port: int) -> Key:
    """The table key of a remote address as ``recvfrom`` reports it: the address in
    its canonical text form (``str(ipaddress.ip_address(ip))``, so an SDP address
    written as ``::0001`` still matches ``::1``) and the port.  IPv6 scope ids are
    not part of the key."""
    return (str(ipaddress.ip_address(ip.split("%", 1)[0])), port)


class DemuxTable:
    """``(ip, port) -> leg`` of one mux socket (sans-IO; the leg is opaque here).

    The relay's reader does ``table.map.get(src)`` per datagram.  A key names one
    leg at a time: registering a key that another leg holds moves it to the new
    leg (the core reuses a port only after the call that had it ended on the core,
    so the older holder is a stale session waiting for its inactivity timeout) and
    counts ``replaced``; :meth:`unregister` removes a key only if it still names
    the given leg, so a stale session closing late cannot remove its successor's
    entry.

    Attributes:
        map: the dict itself (read by the hot path).
        unknown: datagrams dropped because their source was not in the table
            (maintained by the reader).
        recv_errors: ``recvfrom`` errors on the socket (e.g. ICMP-induced).
        replaced: registrations that took a key from another leg.
    """

    __slots__ = ("_expire_at", "_gone", "_held", "held", "map", "recv_errors", "replaced", "replayed", "unknown")

    def __init__(self) -> None:
        self.map: dict[Key, Any] = {}
        self.unknown = 0
        self.recv_errors = 0
        self.replaced = 0
        self.held = 0
        self.replayed = 0
        #: key -> [(arrival time, datagram)] of unknown sources, oldest source first.
        self._held: dict[Key, list[tuple[float, bytes]]] = {}
        #: key -> when it was unregistered: a finished call's late datagrams are not
        #: held (they would otherwise reach the next call given that core port).
        self._gone: dict[Key, float] = {}
        self._expire_at = 0.0

    def hold(self, key: Key, data: bytes, now: float) -> bool:
        """Keep an early datagram from unknown source ``key``; False when the bounds
        are reached (the datagram is then only counted as unknown)."""
        held = self._held
        q = held.get(key)
        if q is None:
            gone = self._gone.get(key)
            if gone is not None:
                if now - gone <= HOLD_S:
                    return False
                del self._gone[key]
            if len(held) >= HOLD_SOURCES:
                if now < self._expire_at:
                    return False
                self.expire(now)
                if len(held) >= HOLD_SOURCES:
                    return False
            q = held[key] = []
        elif len(q) >= HOLD_PER_SOURCE:
            return False
        q.append((now, data))
        self.held += 1
        return True

    def expire(self, now: float) -> None:
        """Forget held datagrams older than :data:`HOLD_S` (run when the hold is full,
        at most every ``HOLD_S / 4`` seconds)."""
        limit = now - HOLD_S
        for key in [k for k, q in self._held.items() if q[-1][0] < limit]:
            del self._held[key]
        for key in [k for k, t in self._gone.items() if t < limit]:
            del self._gone[key]
        self._expire_at = now + HOLD_S / 4

    def take_held(self, key: Key, now: float) -> list[bytes]:
        """The datagrams held for ``key`` that are at most :data:`HOLD_S` old, in
        arrival order (they are removed from the hold)."""
        q = self._held.pop(key, None)
        if not q:
            return []
        out = [d for t, d in q if now - t <= HOLD_S]
        self.replayed += len(out)
        return out

    @property
    def holding(self) -> int:
        """Unknown sources with held datagrams now."""
        return len(self._held)

    def __len__(self) -> int:
        return len(self.map)

    def __contains__(self, key: object) -> bool:
        return key in self.map

    def lookup(self, src: tuple[Any, ...]) -> Any:
        """The leg for a ``recvfrom`` source address (IPv4 ``(host, port)`` or IPv6
        ``(host, port, flowinfo, scope_id)``), or None."""
        return self.map.get((src[0], src[1]))

    def register(self, key: Key, leg: Any) -> Any:
        """Map ``key`` to ``leg``; returns the leg that held it before (or None)."""
        old = self.map.get(key)
        if old is leg:
            return None
        if old is not None:
            self.replaced += 1
        self.map[key] = leg
        return old

    def unregister(self, key: Key, leg: Any, now: float | None = None) -> bool:
        """Remove ``key`` if it names ``leg``; True if removed.  With ``now``, datagrams
        from ``key`` are not held for the next :data:`HOLD_S` seconds (the call
        ended: what it still sends is late, not early)."""
        if self.map.get(key) is leg:
            del self.map[key]
            if now is not None:
                if len(self._gone) >= 4 * HOLD_SOURCES:
                    self.expire(now)
                self._gone[key] = now
            return True
        return False

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.map), "unknown_source": self.unknown, "recv_errors": self.recv_errors,
                "replaced": self.replaced, "held": self.held, "replayed": self.replayed}


class MuxPair:
    """A bound RTP/RTCP socket pair shared by the traversal legs of many calls.

    Args:
        ip: local IP address (the edge's address toward the core).
        rtp_port: the RTP port (even); RTCP is ``rtp_port + 1``.
        rcvbuf_bytes: optional ``SO_RCVBUF`` for both sockets (bytes).  Every call's
            traversal media arrives on these two sockets, so a larger buffer than a
            per-call socket's is worth having: the default (~208 KiB) holds about
            600 G.711 packets, ~60 ms of 200 calls.

    Raises:
        ValueError: ``rtp_port`` is odd or out of range.
        OSError: a port cannot be bound (e.g. EADDRINUSE); nothing is left open.

    Attributes:
        ip, rtp_port, rtcp_port: the local address.
        rtp_sock, rtcp_sock: the non-blocking sockets.
        rtp_table, rtcp_table: the :class:`DemuxTable` of each socket.
        sessions: relay sessions using this pair now (for spreading calls).
    """

    def __init__(self, ip: str, rtp_port: int, *, rcvbuf_bytes: int | None = 4 << 20) -> None:
        if rtp_port % 2 or not (2 <= rtp_port <= 65534):
            raise ValueError(f"mux RTP port must be even and in 2-65534, not {rtp_port}")
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        self.family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        self.ip = ip
        self.rtp_port = rtp_port
        self.rtcp_port = rtp_port + 1
        info = socket.getaddrinfo(ip, 0, self.family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)[0][4]
        socks: list[socket.socket] = []
        try:
            for port in (self.rtp_port, self.rtcp_port):
                s = socket.socket(self.family, socket.SOCK_DGRAM)
                socks.append(s)
                s.setblocking(False)
                if rcvbuf_bytes:
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
                    except OSError:
                        pass  # capped by net.core.rmem_max: the kernel's best is fine
                s.bind((info[0], port, *info[2:]))
        except BaseException:
            for s in socks:
                s.close()
            raise
        self.rtp_sock, self.rtcp_sock = socks
        self.rtp_table = DemuxTable()
        self.rtcp_table = DemuxTable()
        self.sessions = 0

    def __repr__(self) -> str:
        return f"MuxPair({self.ip!r}, {self.rtp_port}, calls={self.sessions})"

    @property
    def closed(self) -> bool:
        return self.rtp_sock.fileno() == -1

    def stats(self) -> dict[str, Any]:
        return {"local": (self.ip, self.rtp_port, self.rtcp_port), "sessions": self.sessions,
                "rtp": self.rtp_table.stats(), "rtcp": self.rtcp_table.stats()}

    def close(self) -> None:
        """Close both sockets (idempotent); the relay removes its readers first."""
        self.rtp_sock.close()
        self.rtcp_sock.close()
