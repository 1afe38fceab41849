"""UDP port-pair allocation for the media relay, with a warm pool of bound pairs.

RTP and RTCP travel on a pair of UDP ports: an even port for RTP and the next
higher odd port for RTCP (RFC 3550 §11; the SDP ``m=`` line advertises the even
RTP port and RTCP is implied at ``port + 1`` unless an ``a=rtcp`` attribute, RFC
3605, says otherwise).  :class:`PortAllocator` hands out such pairs on one local
IP address.

Cost model (measured with ``bench/relay_bench.py`` on the project's 2-core
box, uvloop, Python 3.11): one bound UDP socket costs ~7 µs of CPU to make
(``socket()`` ~4 µs, ``setblocking``+``bind()`` ~1 µs) and ~2 µs to close, so a
pair costs ~14 µs from allocation to release; an empty ``recv_into`` costs
~1.3 µs and a failed ``bind()`` on an existing socket ~1.8 µs.  The per-call
target is 1 ms of CPU per node, all included.

Units: ports are plain ``int`` UDP port numbers; socket buffer sizes are bytes;
times are seconds (``time.monotonic()``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import select
import socket
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["PortAllocator", "PortPair", "PortsExhausted"]

log = logging.getLogger(__name__)

#: Errors from ``bind()`` that mean "this port is not available, try another".
#: EADDRINUSE: taken by another socket (ours, another process, the kernel's
#: ephemeral allocations).  EACCES: privileged port or forbidden by policy.
_RETRYABLE_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES})

#: Errors from ``socket()``/``bind()`` that mean "this process or host is out of
#: a resource": no port in the range can be bound until something is released,
#: so trying other ports is pointless.  EMFILE: the process's RLIMIT_NOFILE;
#: ENFILE: the system-wide file table; ENOBUFS/ENOMEM: kernel memory.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: Bind attempts (sockets, i.e. two per pair) :meth:`PortAllocator.allocate_pair`
#: may spend on the call path when the pool is empty, before giving up with
#: :class:`PortsExhausted`.  Each failed attempt marks its pair as taken by
#: another process, so the next call starts past it.  Measured: a call that
#: fails on a block of taken ports costs ~0.11 ms (32 failed binds), where a
#: sweep cost ~20 ms per 2,000 taken pairs (~80 ms for the default 12,000-pair
#: range) on every call; once the block is mapped, failing costs ~2.5 µs.
CALL_PATH_BIND_ATTEMPTS = 32

#: Seconds a pair found taken by another process (EADDRINUSE/EACCES) is left
#: alone before it is probed again.
TAKEN_RETRY_S = 10.0

#: Datagrams read (and discarded) at most from each socket of a pooled pair
#: when it is handed out.  A socket's default receive buffer (~208 KiB) holds
#: a few hundred small datagrams; anything that keeps arriving past this bound
#: is a flood that arrives while the session exists, like any other.
_DRAIN_MAX = 256

#: poll() events that mean "something is queued": a datagram (even an empty
#: one) or a pending ICMP error.
_POLLIN = select.POLLIN | select.POLLERR

#: ``socket()`` type that is non-blocking from birth where the OS allows it
#: (Linux: saves a ``setblocking`` call per socket).
_SOCK_TYPE = socket.SOCK_DGRAM | getattr(socket, "SOCK_NONBLOCK", 0)


class PortsExhausted(RuntimeError):
    """No RTP/RTCP port pair can be allocated now.

    The message names the address, the range and the cause.

    Attributes:
        ip: the allocator's local IP address.
        port_min, port_max: the allocator's configured range (ints).
        reason: ``"range"`` (every pair is in use or was found taken by
            another process), ``"taken"`` (the pairs probed on this call were
            all taken by other processes; untried pairs remain and the pool
            keeps probing them off the call path) or the errno name of a
            resource error (``"EMFILE"``, ``"ENFILE"``, ``"ENOBUFS"``,
            ``"ENOMEM"``; the ``OSError`` is chained as ``__cause__``).
    """

    def __init__(
        self, message: str, *, ip: str = "", port_min: int = 0, port_max: int = 0,
        reason: str = "range",
    ) -> None:
        super().__init__(message)
        self.ip = ip
        self.port_min = port_min
        self.port_max = port_max
        self.reason = reason


@dataclass(slots=True, eq=False)
class PortPair:
    """A bound RTP/RTCP socket pair (RFC 3550 §11: RTP on even, RTCP on odd).

    Attributes:
        rtp_sock: non-blocking UDP socket bound to ``(ip, rtp_port)``.
        rtcp_sock: non-blocking UDP socket bound to ``(ip, rtcp_port)``.
        rtp_port: the even UDP port (int).
        rtcp_port: ``rtp_port + 1`` (int).
        ip: the local IP address both sockets are bound to.
    """

    rtp_sock: socket.socket
    rtcp_sock: socket.socket
    rtp_port: int
    rtcp_port: int
    ip: str = ""

    @property
    def closed(self) -> bool:
        """True once the sockets have been closed (see :meth:`PortAllocator.release`)."""
        return self.rtp_sock.fileno() == -1


def _close_pairs(pairs: deque[PortPair]) -> None:
    """Close every pair in ``pairs`` and empty it (also the GC finalizer of an
    allocator that was never closed)."""
    while pairs:
        pair = pairs.pop()
        pair.rtp_sock.close()
        pair.rtcp_sock.close()


class PortAllocator:
    """Allocates RTP/RTCP UDP socket pairs on one local IP address.

    Pairs are ``(even, even + 1)`` inside ``[port_min, port_max]`` (RFC 3550
    §11).  Sockets are non-blocking and do *not* set ``SO_REUSEADDR`` (so a
    port already held by any other socket is detected and skipped instead of
    being silently shared).

    **Bookkeeping.**  Every pair of the range is in exactly one of: the *free*
    queue (not bound by us), the *pool* (bound by us, waiting), *in use*
    (handed out by :meth:`allocate_pair`) or *taken* (a ``bind()`` failed with
    ``EADDRINUSE``/``EACCES``: another process holds a port of it).  The free
    queue is FIFO and a released pair goes to its back, so a port released by
    one call is not bound again until the rest of the range has been tried;
    this keeps late packets of a finished call away from the next one.  Taken
    pairs are set aside and probed again only after :data:`TAKEN_RETRY_S`
    seconds, so a crowded range costs one failed ``bind()`` per taken pair per
    retry period, not one per call.  Running out is therefore known without a
    scan: :meth:`allocate_pair` raises :class:`PortsExhausted` in O(1) when
    the pool and the free queue are empty, and after at most
    :data:`CALL_PATH_BIND_ATTEMPTS` failed binds otherwise.  ``EMFILE``,
    ``ENFILE``, ``ENOBUFS`` and ``ENOMEM`` also raise :class:`PortsExhausted`
    (at the first failed ``socket()``), naming the cause.  Other bind errors
    (e.g. ``EADDRNOTAVAIL`` because ``ip`` is not a local address) propagate
    unchanged.

    **Warm pool.**  With ``pool_size > 0`` and a running event loop, the
    allocator keeps up to ``pool_size`` pairs bound ahead of need, so that
    :meth:`allocate_pair` normally binds nothing: it pops a pooled pair,
    discards whatever datagrams reached it while it waited (so nothing sent
    before the call existed can latch the call's relay, RFC 7362 §4), and
    schedules a refill with ``loop.call_soon``.  A refill tick binds at most
    ``refill_batch`` pairs (``2 * refill_batch`` bind attempts, failed ones
    included) and schedules the next tick until the pool is full, so the loop
    never stalls on it.  A refill starts when the pool falls below half of its
    target (so ticks are shared by several allocations) and goes on up to
    the target.  The pool never holds more than ``pool_size`` pairs
    nor more than a quarter of the range (a small range is not tied up ahead of
    need, and released ports stay unbound a while).  Without a running loop
    (or with ``pool_size`` 0 or None) pairs are bound on demand, as before.
    A :class:`~edgeway.media.relay.MediaRelay` gives the allocators it uses
    its own ``pool_size`` unless one was set here, and closes their pools when
    it closes.

    **Release closes.**  :meth:`release` closes the pair's sockets; the pool is
    refilled with freshly bound ports from the front of the free queue, never
    with the sockets of a finished call.  Reusing sockets would save about
    14 µs of CPU per pair (≈ 28 µs per relayed stream, ~3 % of the 1 ms per-call
    budget) but a reused socket keeps receiving whatever the previous call's
    party still sends: draining at reuse only removes what has already arrived,
    and the first straggler after the drain would latch the next call's relay
    (one call's media delivered into another).  A closed port instead answers
    stragglers with ICMP port unreachable and is not bound again until the
    rest of the range has been cycled.

    Both IPv4 and IPv6 literal addresses are supported (IPv6 link-local
    addresses may carry a ``%scope`` suffix).

    Not thread-safe: use it from one thread (the event loop's).

    Args:
        ip: local IP address to bind (the address advertised in SDP).
        port_min: lowest UDP port (int) that may be used; rounded up to even.
        port_max: highest UDP port (int) that may be used (the last RTCP port).
        rcvbuf_bytes: optional ``SO_RCVBUF`` for each socket (bytes).
        sndbuf_bytes: optional ``SO_SNDBUF`` for each socket (bytes).
        tos: optional IP TOS / IPv6 traffic class byte for sent packets, e.g.
            ``0xB8`` for DSCP EF (RFC 3246), the usual marking for voice.
        pool_size: target number of pairs kept bound ahead of need (int >= 0),
            or None to let the :class:`~edgeway.media.relay.MediaRelay` that
            uses this allocator decide (0, no pool, until then).
        refill_batch: at most this many pairs are bound per event-loop
            iteration when refilling the pool (int >= 1).

    Raises:
        ValueError: ``ip`` is not an IP literal, the range is invalid or holds
            no even/odd pair, or ``pool_size``/``refill_batch`` is out of range.
    """

    def __init__(
        self,
        ip: str,
        port_min: int = 36000,
        port_max: int = 59999,
        *,
        rcvbuf_bytes: int | None = None,
        sndbuf_bytes: int | None = None,
        tos: int | None = None,
        pool_size: int | None = None,
        refill_batch: int = 4,
    ) -> None:
        addr = ipaddress.ip_address(ip)  # ValueError for non-literals
        if not (1 <= port_min <= port_max <= 65535):
            raise ValueError(f"invalid port range {port_min}-{port_max}")
        first = port_min + (port_min & 1)
        last = (port_max - 1) & ~1
        if first > last:
            raise ValueError(f"port range {port_min}-{port_max} holds no even/odd pair")
        if refill_batch < 1:
            raise ValueError("refill_batch must be >= 1")
        self.ip: str = ip
        self.family: socket.AddressFamily = (
            socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        )
        self.port_min: int = port_min
        self.port_max: int = port_max
        self.refill_batch: int = refill_batch
        self._first = first
        self._n_pairs = (last - first) // 2 + 1
        #: Pair indices (rtp_port = first + 2 * index) not bound by us, FIFO.
        self._free: deque[int] = deque(range(self._n_pairs))
        #: (retry_at, index) of pairs found taken by another process, in order.
        self._taken: deque[tuple[float, int]] = deque()
        self._pool: deque[PortPair] = deque()
        self._in_use: dict[int, PortPair] = {}
        self._pool_size: int | None = None
        self._target = 0
        self._low = 0  # refill when the pool falls below this (half the target)
        self._refill_handle: asyncio.Handle | None = None
        self._refill_loop: asyncio.AbstractEventLoop | None = None
        self._scratch = bytearray(1)
        self._rcvbuf = rcvbuf_bytes
        self._sndbuf = sndbuf_bytes
        self._tos = tos
        self._has_opts = not (rcvbuf_bytes is None and sndbuf_bytes is None and tos is None)
        self._counters = {
            "allocated": 0,
            "from_pool": 0,
            "bound_on_demand": 0,
            "bound_by_refill": 0,
            "taken_found": 0,
            "exhausted": 0,
            "stale_dropped": 0,
        }
        self.last_error: str | None = None
        # Resolve the literal once (handles IPv6 scope ids); the port is patched in.
        info = socket.getaddrinfo(
            ip, 0, self.family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
        )
        self._sockaddr = info[0][4]
        self._host: str = self._sockaddr[0]
        self._addr_tail: tuple[Any, ...] = tuple(self._sockaddr[2:])  # IPv6 flowinfo, scope id
        # Pooled sockets of an allocator dropped without close() are closed at GC.
        self._finalizer = weakref.finalize(self, _close_pairs, self._pool)
        if pool_size is not None:
            self.pool_size = pool_size

    def __repr__(self) -> str:
        return (
            f"PortAllocator(ip={self.ip!r}, port_min={self.port_min}, "
            f"port_max={self.port_max}, in_use={len(self._in_use)}/{self._n_pairs}, "
            f"pooled={len(self._pool)})"
        )

    # -- sizes ---------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Number of even/odd pairs in the configured range (int)."""
        return self._n_pairs

    @property
    def in_use(self) -> int:
        """Number of pairs currently allocated by this allocator (int)."""
        return len(self._in_use)

    @property
    def pooled(self) -> int:
        """Number of pairs bound ahead of need, waiting in the pool (int)."""
        return len(self._pool)

    @property
    def free(self) -> int:
        """Number of pairs neither in use, pooled nor known taken by another
        process (int); taken pairs come back after :data:`TAKEN_RETRY_S`."""
        return len(self._free)

    @property
    def taken(self) -> int:
        """Number of pairs set aside because another process held a port (int)."""
        return len(self._taken)

    @property
    def pool_size(self) -> int | None:
        """Target size of the warm pool in pairs (None: not configured, no pool).

        Setting it closes pooled pairs above the new target at once and, on a
        running event loop, schedules a refill up to it.  The effective target
        is at most a quarter of :attr:`capacity`.
        """
        return self._pool_size

    @pool_size.setter
    def pool_size(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError("pool_size must be >= 0 or None")
        self._pool_size = value
        self._target = min(value or 0, self._n_pairs // 4)
        self._low = (self._target + 1) // 2
        pool = self._pool
        while len(pool) > self._target:
            self._unpool(pool.pop())
        if len(pool) < self._target:
            self._want_refill()

    def stats(self) -> dict[str, Any]:
        """Counters and sizes (for diagnostics).

        Keys: ``ip``, ``range`` (``"min-max"``), ``capacity``, ``in_use``,
        ``pooled``, ``pool_target``, ``free``, ``taken`` (pairs, ints);
        ``allocated`` (pairs handed out), ``from_pool`` and ``bound_on_demand``
        (how), ``bound_by_refill``, ``taken_found`` (failed binds that set a
        pair aside), ``exhausted`` (:class:`PortsExhausted` raised),
        ``stale_dropped`` (datagrams discarded from pooled pairs at hand-out),
        all counts since creation; ``last_error``: the last error that stopped
        a refill or an allocation, or None.
        """
        return {
            "ip": self.ip,
            "range": f"{self.port_min}-{self.port_max}",
            "capacity": self._n_pairs,
            "in_use": len(self._in_use),
            "pooled": len(self._pool),
            "pool_target": self._target,
            "free": len(self._free),
            "taken": len(self._taken),
            **self._counters,
            "last_error": self.last_error,
        }

    # -- allocation ----------------------------------------------------------------------

    def allocate_pair(self) -> PortPair:
        """Return a bound RTP/RTCP socket pair, from the warm pool if it has one.

        A pooled pair is drained of datagrams that arrived before this call.
        Otherwise the next free pair is bound now (at most
        :data:`CALL_PATH_BIND_ATTEMPTS` bind attempts).

        Raises:
            PortsExhausted: every pair of the range is in use or taken by
                another process, the pairs probed on this call were all taken,
                or the process/system is out of file descriptors or buffer
                memory (see :attr:`PortsExhausted.reason`).
            OSError: a bind error other than "port unavailable" or "out of
                resources" (e.g. ``EADDRNOTAVAIL``).
        """
        pool = self._pool
        counters = self._counters
        if pool:
            pair = pool.popleft()
            # One poll() for both sockets (~0.8 µs) instead of two empty reads (~3 µs).
            poller = select.poll()
            poller.register(pair.rtp_sock, _POLLIN)
            poller.register(pair.rtcp_sock, _POLLIN)
            if poller.poll(0):
                counters["stale_dropped"] += self._drain(pair.rtp_sock) + self._drain(pair.rtcp_sock)
            counters["from_pool"] += 1
        else:
            tried = bool(self._free) or self._taken_due()
            try:
                pair, _ = self._take(CALL_PATH_BIND_ATTEMPTS)
            except PortsExhausted:  # out of descriptors or memory
                counters["exhausted"] += 1
                raise
            finally:
                if self._target:  # the refill goes on probing off the call path
                    self._want_refill()
            if pair is None:
                counters["exhausted"] += 1
                raise self._exhausted("taken" if tried else "range")
            counters["bound_on_demand"] += 1
        self._in_use[pair.rtp_port] = pair
        counters["allocated"] += 1
        if len(pool) < self._low:
            self._want_refill()
        return pair

    def release(self, pair: PortPair) -> None:
        """Close the pair's sockets and return its ports to the back of the free
        queue (idempotent; a pair not from this allocator is only closed)."""
        if self._in_use.get(pair.rtp_port) is pair:
            del self._in_use[pair.rtp_port]
            self._free.append((pair.rtp_port - self._first) >> 1)
            if len(self._pool) < self._low:
                self._want_refill()
        pair.rtp_sock.close()
        pair.rtcp_sock.close()

    def warm(self, pairs: int | None = None) -> int:
        """Fill the pool now (synchronously), e.g. at start-up before calls arrive.

        Args:
            pairs: new :attr:`pool_size` (pairs); None keeps the current one.

        Returns:
            The number of pairs now pooled (fewer than asked when the range,
            the file descriptors or the quarter-of-the-range cap ran out).

        Raises:
            OSError: a bind error other than "port unavailable" or "out of
                resources" (e.g. ``EADDRNOTAVAIL``: ``ip`` is not local).
        """
        if pairs is not None:
            self.pool_size = pairs
        pool = self._pool
        while len(pool) < self._target:
            try:
                pair, _ = self._take(2 * self._n_pairs)
            except PortsExhausted as exc:
                self.last_error = str(exc)
                break
            if pair is None:
                break
            pool.append(pair)
            self._counters["bound_by_refill"] += 1
        return len(pool)

    def close(self) -> None:
        """Close the pooled pairs and stop pooling (``pool_size`` becomes 0).

        Pairs in use are left to their owners, who still :meth:`release`
        them.  The allocator stays usable, binding on demand (idempotent).
        """
        self._pool_size = 0
        self._target = self._low = 0
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = self._refill_loop = None
        while self._pool:
            self._unpool(self._pool.pop())

    # -- internals -----------------------------------------------------------------------

    def _exhausted(self, reason: str, exc: OSError | None = None) -> PortsExhausted:
        where = f"on {self.ip} in {self.port_min}-{self.port_max}"
        if exc is not None:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            cause = f"{name} ({os.strerror(exc.errno or 0)})"
            reason = name
        elif reason == "taken":
            cause = (
                f"the pairs probed on this call are taken by other processes "
                f"({len(self._taken)} set aside, {len(self._free)} not yet tried)"
            )
        else:
            cause = (
                f"all {self._n_pairs} pairs are in use ({len(self._in_use)}) or "
                f"taken by other processes ({len(self._taken)}, retried every "
                f"{TAKEN_RETRY_S:g} s)"
            )
        msg = f"no free RTP/RTCP port pair {where}: {cause}"
        self.last_error = msg
        return PortsExhausted(
            msg, ip=self.ip, port_min=self.port_min, port_max=self.port_max, reason=reason
        )

    def _taken_due(self) -> bool:
        """Move taken pairs whose retry time has come back to the free queue."""
        taken = self._taken
        if not taken:
            return False
        now = time.monotonic()
        moved = False
        while taken and taken[0][0] <= now:
            self._free.append(taken.popleft()[1])
            moved = True
        return moved

    def _take(self, attempts: int) -> tuple[PortPair | None, int]:
        """Bind the next free pair, spending at most ``attempts`` bind attempts.

        Returns ``(pair or None, attempts left)``: None when the free queue ran
        out or the attempts were spent.  A pair with a port found taken is set
        aside for :data:`TAKEN_RETRY_S`; the failed (unbound) socket is reused
        for the next attempt.  Resource errors raise :class:`PortsExhausted`
        and other errors propagate, the pair being put back at the front.
        """
        free = self._free
        if self._taken:
            self._taken_due()
        host, tail = self._host, self._addr_tail
        new_socket = self._socket
        spare: socket.socket | None = None
        try:
            while free and attempts > 0:
                idx = free.popleft()
                port = self._first + 2 * idx
                rtp: socket.socket | None = None
                try:
                    if spare is None:
                        spare = new_socket()
                    attempts -= 1
                    try:
                        spare.bind((host, port, *tail))
                    except OSError as exc:
                        if exc.errno not in _RETRYABLE_BIND_ERRNOS:
                            raise
                        self._set_aside(idx)
                        continue
                    rtp, spare = spare, None
                    spare = new_socket()
                    attempts -= 1
                    try:
                        spare.bind((host, port + 1, *tail))
                    except OSError as exc:
                        if exc.errno not in _RETRYABLE_BIND_ERRNOS:
                            raise
                        rtp.close()
                        rtp = None
                        self._set_aside(idx)
                        continue
                    rtcp, spare = spare, None
                    return PortPair(rtp, rtcp, port, port + 1, self.ip), attempts
                except OSError as exc:
                    free.appendleft(idx)
                    if rtp is not None:
                        rtp.close()
                    if exc.errno in _RESOURCE_ERRNOS:
                        raise self._exhausted("resource", exc) from exc
                    raise
            return None, attempts
        finally:
            if spare is not None:
                spare.close()

    def _set_aside(self, idx: int) -> None:
        self._taken.append((time.monotonic() + TAKEN_RETRY_S, idx))
        self._counters["taken_found"] += 1

    def _socket(self) -> socket.socket:
        sock = socket.socket(self.family, _SOCK_TYPE)
        if not self._has_opts:
            if _SOCK_TYPE == socket.SOCK_DGRAM:
                sock.setblocking(False)
            return sock
        try:
            sock.setblocking(False)
            if self._rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            if self._sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)
            if self._tos is not None:
                if self.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, self._tos)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, self._tos)
        except BaseException:
            sock.close()
            raise
        return sock

    def _drain(self, sock: socket.socket) -> int:
        """Discard queued datagrams (at most ``_DRAIN_MAX``); returns how many."""
        recv_into = sock.recv_into
        buf = self._scratch
        n = 0
        for _ in range(_DRAIN_MAX):
            try:
                recv_into(buf)
            except BlockingIOError:
                break
            except OSError:  # a queued ICMP error: consumed, go on
                pass
            n += 1
        return n

    def _unpool(self, pair: PortPair) -> None:
        """Close a pooled pair and put its index back at the front of the free
        queue (it was never used, so nothing can be in flight toward it)."""
        pair.rtp_sock.close()
        pair.rtcp_sock.close()
        self._free.appendleft((pair.rtp_port - self._first) >> 1)

    def _want_refill(self) -> None:
        """Schedule a refill tick on the running loop (once; no-op without one).

        A tick still pending on a loop that has since been closed is forgotten."""
        if self._refill_handle is not None:
            if self._refill_loop is not None and not self._refill_loop.is_closed():
                return
            self._refill_handle = self._refill_loop = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refill_loop = loop
        self._refill_handle = loop.call_soon(self._refill)

    def _refill(self) -> None:
        """One refill tick: bind at most ``refill_batch`` pairs into the pool;
        schedule the next tick while the pool is short and pairs remain."""
        self._refill_handle = self._refill_loop = None
        pool = self._pool
        attempts = 2 * self.refill_batch
        counters = self._counters
        try:
            while len(pool) < self._target and attempts > 0:
                pair, attempts = self._take(attempts)
                if pair is None:
                    break
                pool.append(pair)
                counters["bound_by_refill"] += 1
        except PortsExhausted:  # out of fds/memory: wait for the next allocate/release
            log.debug("pool refill stopped: %s", self.last_error)
            return
        except OSError as exc:  # e.g. EADDRNOTAVAIL; allocate_pair raises it to the caller
            self.last_error = f"pool refill on {self.ip}: {exc}"
            log.debug("pool refill stopped: %s", self.last_error)
            return
        if len(pool) < self._target and (self._free or self._taken_due()):
            self._want_refill()
