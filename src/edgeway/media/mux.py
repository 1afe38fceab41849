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

Units: ports are ``int``; counters count datagrams.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

__all__ = ["DemuxTable", "MuxPair", "MAX_MUX_PAIRS", "mux_key"]

#: Pairs a "large" edge listens on (seed 002 §7.2: the first 6 pairs of the range).
MAX_MUX_PAIRS = 6

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

    __slots__ = ("map", "unknown", "recv_errors", "replaced")

    def __init__(self) -> None:
        self.map: dict[Key, Any] = {}
        self.unknown = 0
        self.recv_errors = 0
        self.replaced = 0

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

    def unregister(self, key: Key, leg: Any) -> bool:
        """Remove ``key`` if it names ``leg``; True if removed."""
        if self.map.get(key) is leg:
            del self.map[key]
            return True
        return False

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.map), "unknown_source": self.unknown, "recv_errors": self.recv_errors,
                "replaced": self.replaced}


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
