"""Admission of inbound SIP stream connections (issue 7 item 1).

The findings of issue 7: ~21,000 idle TCP connections from three addresses filled the
edge's 20,000 descriptors; new TLS clients then timed out, the media allocator failed
with EMFILE and, after a brief stall, the core could not reconnect the traversal zone
for 88 s. The idle timeout (3,600 s) restarted on every byte, so one byte every 5 s
held a connection for ever, and nothing capped connections per address or in total.

What :class:`~edgeway.transport.layer.TransportLayer` does about it, with the numbers
of :class:`ConnectionLimits`:

* **Caps, checked at accept** before any TLS work: at most ``max_connections_per_source``
  open inbound connections per source (an IPv4 address, or an IPv6 /64: one host picks
  its addresses from its /64, so a per-/128 cap would cap nothing) and at most
  ``max_connections`` in total. A connection over a cap is reset at once (``SO_LINGER``
  0, no handshake) and counted; a ``connection refused`` event names the cause
  ("per-source limit" / "total limit"), at most one per source per second and
  :data:`REFUSAL_EVENTS_PER_S` in all (the rest are summed up in one event per second).
  Connections on a listener opened with ``limited=False`` (the node's traversal
  listener: the core's connections) and outbound connections are not counted; they
  take their descriptors from the reserve (see :func:`plan_fds`).
* **Room for new clients at the total cap**: when it is full, a new connection ends the
  oldest counted one that has not completed a SIP message in 1 s (``EVICT_MIN_AGE_S``
  in the layer) instead of being refused; flows are never ended for it. So a cap full
  of idle connections does not lock out a TLS client for ``pre_message_idle_s``.
* **TLS handshake timeout** ``tls_handshake_timeout_s``, from accept.
* **Two idle timeouts.** Until it has carried one complete SIP message, a connection has
  ``pre_message_idle_s`` from accept, *not* restarted by bytes (nor by keepalives):
  that is what ends a slowloris, whatever it trickles. Once a message has arrived the
  connection is a flow and is closed after ``flow_idle_s`` without a complete message
  or an RFC 5626 §3.5.1 CRLF keepalive (bytes of an unfinished message do not count).

The sweep is one timer for all connections: pre-message deadlines sit in a heap (a
connection is looked at once, when its deadline is due), flows are scanned at most
every :meth:`ConnectionLimits.flow_sweep_s` (a float compare per connection: ~2 ms at
25,000 connections).
"""

from __future__ import annotations

import resource
import socket
from dataclasses import dataclass

__all__ = [
    "ConnectionLimits", "FdPlan", "plan_fds", "raise_fd_limit", "source_key",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE", "DEFAULT_TLS_HANDSHAKE_TIMEOUT_S", "DEFAULT_PRE_MESSAGE_IDLE_S",
    "DEFAULT_FLOW_IDLE_S", "MAX_CONNECTIONS_CEILING", "FIXED_RESERVE_FDS", "MEDIA_FD_SHARE",
]

#: Open inbound connections allowed from one source (IPv4 address or IPv6 /64). Not 64:
#: an enterprise office reaches the edge from one NAT (PAT) address, one connection per
#: client, and at 64 its 65th user would be refused with nothing else wrong; 256 lets a
#: site of a couple of hundred clients in. It still holds the findings' three addresses
#: to 768 connections, and filling the total cap takes max_connections / 256 addresses
#: (57 at a 20,000-descriptor limit) that each complete a SIP message per connection
#: (idle ones are gone after pre_message_idle_s). Larger NATed sites: raise it.
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 256
#: Seconds from accept for the TLS handshake (was CONNECT_TIMEOUT_S, 5 s).
DEFAULT_TLS_HANDSHAKE_TIMEOUT_S = 5.0
#: Seconds from accept until the first complete SIP message; not restarted by bytes.
#: A client connects, shakes hands and sends its REGISTER at once: a few round trips
#: even on a slow mobile link.
DEFAULT_PRE_MESSAGE_IDLE_S = 15.0
#: Seconds a flow may go without a complete message or CRLF keepalive. The flow is the
#: only way back to a client behind NAT, so it must outlive the registration refresh
#: (3,600 s is the usual longest Expires); clients doing RFC 5626 keepalives refresh it
#: every 95-120 s anyway (RFC 5626 §4.4.1). Kamailio's tcp_connection_lifetime order.
DEFAULT_FLOW_IDLE_S = 3600.0
#: Upper bound of the derived total cap: 10x the 2,500 registrations the edge is sized
#: for. An idle TLS connection costs tens of kB of memory (Python objects, OpenSSL state,
#: kernel buffers), so a limit of 1,048,576 descriptors must not mean a million of them.
MAX_CONNECTIONS_CEILING = 25_000
#: Descriptors kept for everything but inbound connections and media: the process
#: (stdio, log file, epoll, self-pipe: ~20), listening sockets (~6), DNS sockets, the
#: core's traversal connections (a few per zone) and outbound connections to neighbour
#: and DNS zones (tens to a few hundred), which are not capped.
FIXED_RESERVE_FDS = 512
#: Share of the descriptor limit kept for media when the media port range is larger:
#: 1/MEDIA_FD_SHARE (a quarter). Each relayed stream holds 4 UDP sockets (an RTP/RTCP
#: pair per side), so a quarter of 20,000 is 1,250 audio calls.
MEDIA_FD_SHARE = 4
#: Lowest total cap a plan gives, however small the descriptor limit.
MIN_CONNECTIONS = 16
#: ``connection refused`` events written per second at most, all sources together; the
#: refusals beyond it are summed up in one event per cause and second.
REFUSAL_EVENTS_PER_S = 50


@dataclass(frozen=True)
class ConnectionLimits:
    """The admission limits a :class:`~edgeway.transport.layer.TransportLayer` applies
    (counts are connections, times seconds). The node builds it from the ``[limits]``
    config section and :func:`plan_fds`; a layer made without one uses these defaults
    (``max_connections`` then is :data:`MAX_CONNECTIONS_CEILING`)."""

    max_connections: int = MAX_CONNECTIONS_CEILING
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    tls_handshake_timeout_s: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT_S
    pre_message_idle_s: float = DEFAULT_PRE_MESSAGE_IDLE_S
    flow_idle_s: float = DEFAULT_FLOW_IDLE_S

    @property
    def sweep_s(self) -> float:
        """Seconds between sweeps: a tenth of ``pre_message_idle_s`` within 0.05..1 s
        (a slowloris is closed at most that late)."""
        return min(1.0, max(0.05, self.pre_message_idle_s / 10))

    @property
    def flow_sweep_s(self) -> float:
        """Seconds between scans of the flows: a tenth of ``flow_idle_s`` within
        :attr:`sweep_s`..30 s (a flow is closed at most that late)."""
        return min(30.0, max(self.sweep_s, self.flow_idle_s / 10))


def source_key(ip: str) -> str:
    """The source a connection from ``ip`` counts against: the IPv4 address (also when
    IPv4-mapped, ``::ffff:a.b.c.d``), or the IPv6 /64 (``2001:db8:1:2::/64``)."""
    if ":" not in ip:
        return ip
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    try:
        packed = socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])
    except OSError:
        return ip
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def raise_fd_limit() -> tuple[int, int, int]:
    """Raise this process's ``RLIMIT_NOFILE`` soft limit to the hard limit (an unlimited
    hard limit: to 1,048,576, Linux's default ``nr_open``). Returns ``(soft before, soft
    now, hard)``; when the raise fails the soft limit stays as it was."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(before, 1 << 20)
    soft = before
    if before != resource.RLIM_INFINITY and before < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return before, soft, hard


@dataclass(frozen=True)
class FdPlan:
    """How a descriptor limit is shared out (see :func:`plan_fds`); all counts are
    descriptors (= connections for ``max_connections``). ``fixed_fds``/``media_fds``
    are None when ``reserved_fds`` was configured rather than derived."""

    soft: int
    fixed_fds: int | None
    media_fds: int | None
    reserved_fds: int
    budget: int
    max_connections: int
    clamped: bool


def plan_fds(soft: int, media_ports: int, *, reserved_fds: int | None = None,
             max_connections: int | None = None) -> FdPlan:
    """Share the descriptor limit ``soft`` between inbound connections and the reserve.

    Every inbound connection holds one descriptor. The reserve is what must stay free
    whatever the clients do::

        media_fds     = min(media_ports, soft // MEDIA_FD_SHARE)
                        (one UDP socket per port of the media range; never more than
                        the range holds, at most a quarter of the limit)
        reserved_fds  = FIXED_RESERVE_FDS + media_fds     (or the configured value)
        budget        = soft - reserved_fds
        max_connections = min(budget, MAX_CONNECTIONS_CEILING)  (or the configured
                        value, lowered to budget if larger: clamped)
        and at least MIN_CONNECTIONS.

    For example soft 20,000 with the default media range 36000-59999 (24,000 ports):
    media 5,000, reserved 5,512, max_connections 14,488 (5.8x 2,500 registrations);
    soft 1,048,576: media 24,000, reserved 24,512, max_connections 25,000 (the
    ceiling); soft 1,024: media 256, reserved 768, max_connections 256.

    Traversal (core) connections and outbound connections are not capped and live in
    ``FIXED_RESERVE_FDS``; the media allocator lives in ``media_fds`` (a full
    ``max_connections`` of idle clients still leaves it these, so it no longer fails
    with EMFILE)."""
    media = min(max(media_ports, 0), soft // MEDIA_FD_SHARE)
    reserved = FIXED_RESERVE_FDS + media if reserved_fds is None else reserved_fds
    budget = soft - reserved
    if max_connections is None:
        cap, clamped = min(budget, MAX_CONNECTIONS_CEILING), False
    else:
        cap, clamped = min(max_connections, budget), max_connections > budget
    derived = reserved_fds is None
    return FdPlan(soft, FIXED_RESERVE_FDS if derived else None, media if derived else None,
                  reserved, budget, max(cap, MIN_CONNECTIONS), clamped)
