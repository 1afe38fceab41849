"""Tests for edgeway.media (port pairs and the RTP/RTCP relay).

Loopback only (127.0.0.2xx, ::1); every socket/session opened here is closed
by the test or its fixture; each async test is bounded by asyncio timeouts.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterator

import pytest

from udputil import LOOP_KINDS, addr_of, nothing_on, port_range, recv, run, udp_sockets
from edgeway.media import (
    LATCH_PROBE,
    MediaRelay,
    PortAllocator,
    PortsExhausted,
)


# Relay-side addresses (what the relay binds) and party addresses.
RELAY_A, RELAY_B = "127.0.0.201", "127.0.0.202"
PARTY_A, PARTY_B, PARTY_X = "127.0.0.203", "127.0.0.204", "127.0.0.205"
EDGE_EXT, EDGE_INT, CORE_DMZ, CORE_INT = (
    "127.0.0.211", "127.0.0.212", "127.0.0.213", "127.0.0.214",
)





def can_bind(ip: str, port: int) -> bool:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE
            return False
        return True


@pytest.fixture
def udp() -> Iterator[Callable[..., socket.socket]]:
    with udp_sockets(PARTY_A) as make:
        yield make


# --------------------------------------------------------------------------------------
# PortAllocator


def test_pairs_are_even_odd_bound_nonblocking_round_robin():
    lo, hi = port_range(5)
    alloc = PortAllocator(RELAY_A, lo, hi)
    assert alloc.capacity == 5
    pairs = []
    try:
        for _ in range(3):
            p = alloc.allocate_pair()
            pairs.append(p)
            assert p.rtp_port % 2 == 0 and p.rtcp_port == p.rtp_port + 1
            assert lo <= p.rtp_port and p.rtcp_port <= hi
            assert p.rtp_sock.getsockname() == (RELAY_A, p.rtp_port)
            assert p.rtcp_sock.getsockname() == (RELAY_A, p.rtcp_port)
            for s in (p.rtp_sock, p.rtcp_sock):
                assert s.getblocking() is False
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        ports = [p.rtp_port for p in pairs]
        assert len(set(ports)) == 3 and ports == sorted(ports)
        assert alloc.in_use == 3
        # Round-robin: a released pair is not reused before the rest of the range.
        alloc.release(pairs[0])
        nxt = alloc.allocate_pair()
        pairs.append(nxt)
        assert nxt.rtp_port not in (pairs[0].rtp_port,)
        assert nxt.rtp_port > pairs[2].rtp_port
    finally:
        for p in pairs:
            alloc.release(p)
    assert alloc.in_use == 0
    assert all(p.closed for p in pairs)


def test_odd_bounds_are_rounded_to_pairs():
    lo, _ = port_range(4)
    alloc = PortAllocator(RELAY_A, lo + 1, lo + 6)  # pairs (lo+2, lo+3), (lo+4, lo+5)
    assert alloc.capacity == 2
    with pytest.raises(ValueError):
        PortAllocator(RELAY_A, lo + 1, lo + 2)  # no full even/odd pair inside
    with pytest.raises(ValueError):
        PortAllocator("localhost", lo, lo + 9)  # literals only


def test_skips_ports_taken_by_other_sockets(udp):
    lo, hi = port_range(4)
    blocker_rtcp = udp(RELAY_A, lo + 1)  # RTCP port of the first pair
    blocker_rtp = udp(RELAY_A, lo + 2)  # RTP port of the second pair
    alloc = PortAllocator(RELAY_A, lo, hi)
    pair = alloc.allocate_pair()
    try:
        assert pair.rtp_port == lo + 4
        # The first pair's RTP socket was bound, then released when RTCP failed.
        assert can_bind(RELAY_A, lo)
    finally:
        alloc.release(pair)
    blocker_rtcp.close()
    blocker_rtp.close()


def test_wildcard_holder_also_counts_as_taken(udp):
    lo, hi = port_range(1)
    udp("0.0.0.0", lo)
    alloc = PortAllocator(RELAY_A, lo, hi)
    with pytest.raises(PortsExhausted):
        alloc.allocate_pair()


def test_exhaustion_and_recovery():
    lo, hi = port_range(2)
    alloc = PortAllocator(RELAY_B, lo, hi)
    p1, p2 = alloc.allocate_pair(), alloc.allocate_pair()
    try:
        with pytest.raises(PortsExhausted):
            alloc.allocate_pair()
        alloc.release(p1)
        alloc.release(p1)  # idempotent
        p3 = alloc.allocate_pair()
        assert p3.rtp_port == p1.rtp_port
        alloc.release(p3)
    finally:
        alloc.release(p2)
    assert alloc.in_use == 0


def test_unbindable_address_raises_oserror():
    lo, hi = port_range(2)
    alloc = PortAllocator("192.0.2.1", lo, hi)  # TEST-NET-1: not a local address
    with pytest.raises(OSError) as info:
        alloc.allocate_pair()
    assert not isinstance(info.value, PortsExhausted)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# MediaRelay


def make_allocs(ip_a: str = RELAY_A, ip_b: str = RELAY_B, n: int = 8):
    return PortAllocator(ip_a, *port_range(n)), PortAllocator(ip_b, *port_range(n))


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_forwards_rtp_and_rtcp_both_ways(udp, kind):
    a_rtp, a_rtcp = udp(PARTY_A), udp(PARTY_A)
    b_rtp, b_rtcp = udp(PARTY_B), udp(PARTY_B)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        a_alloc, b_alloc = make_allocs()
        s = relay.open_session(a_alloc, b_alloc, label="call-1/0")
        try:
            la, lb = s.local("a"), s.local("b")
            assert la.ip == RELAY_A and lb.ip == RELAY_B
            s.set_remote("a", PARTY_A, addr_of(a_rtp)[1], addr_of(a_rtcp)[1])
            s.set_remote("b", PARTY_B, addr_of(b_rtp)[1], addr_of(b_rtcp)[1])

            a_rtp.sendto(b"rtp-a2b", (la.ip, la.rtp_port))
            assert await recv(b_rtp) == (b"rtp-a2b", (lb.ip, lb.rtp_port))
            a_rtcp.sendto(b"rtcp-a2b", (la.ip, la.rtcp_port))
            assert await recv(b_rtcp) == (b"rtcp-a2b", (lb.ip, lb.rtcp_port))
            b_rtp.sendto(b"rtp-b2a!", (lb.ip, lb.rtp_port))
            assert await recv(a_rtp) == (b"rtp-b2a!", (la.ip, la.rtp_port))
            b_rtcp.sendto(b"rtcp-b2a!", (lb.ip, lb.rtcp_port))
            assert await recv(a_rtcp) == (b"rtcp-b2a!", (la.ip, la.rtcp_port))

            # A burst larger than one drain batch arrives complete and in order.
            payloads = [bytes([i % 256]) * 172 for i in range(200)]
            for p in payloads:
                a_rtp.sendto(p, (la.ip, la.rtp_port))
            got = [(await recv(b_rtp))[0] for _ in payloads]
            assert got == payloads

            st = s.stats()
            assert st["label"] == "call-1/0"
            assert st["a_to_b"]["rtp_packets"] == 201
            assert st["a_to_b"]["rtp_bytes"] == 7 + 200 * 172
            assert st["a_to_b"]["rtcp_packets"] == 1
            assert st["a_to_b"]["rtcp_bytes"] == 8
            assert st["b_to_a"]["rtp_packets"] == 1
            assert st["b_to_a"]["rtp_bytes"] == 8
            assert st["b_to_a"]["rtcp_packets"] == 1
            assert st["b_to_a"]["rtcp_bytes"] == 9
            assert st["dropped"] == 0
            assert st["a"]["latched_rtp"] == addr_of(a_rtp)
            assert st["b"]["latched_rtcp"] == addr_of(b_rtcp)
            assert relay.stats()["packets"] == 204
        finally:
            relay.close()
        assert s.closed and s.close_reason == "shutdown"
        assert a_alloc.in_use == 0 and b_alloc.in_use == 0

    run(main, kind)


def test_drops_until_remote_known_and_rtcp_defaults_to_rtp_plus_one(udp):
    a_rtp = udp(PARTY_A)
    lo, _ = port_range(1)
    b_rtp, b_rtcp = udp(PARTY_B, lo), udp(PARTY_B, lo + 1)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        s = relay.open_session(*make_allocs())
        try:
            la = s.local("a")
            a_rtp.sendto(b"early", (la.ip, la.rtp_port))
            await nothing_on(b_rtp)
            st = s.stats()["a_to_b"]
            assert st["dropped"] == st["dropped_no_destination"] == 1
            assert st["rtp_packets"] == 0

            s.set_remote("b", PARTY_B, lo)  # RTCP implied at lo + 1
            assert s.stats()["b"]["sdp_rtcp"] == (PARTY_B, lo + 1)
            a_rtp.sendto(b"media", (la.ip, la.rtp_port))
            assert (await recv(b_rtp))[0] == b"media"
            # B has not sent yet: B's RTCP goes to the SDP default port.
            s.set_remote("a", PARTY_A, addr_of(a_rtp)[1])
            b_rtcp.sendto(b"rr", (s.local("b").ip, s.local("b").rtcp_port))
            await asyncio.sleep(0.05)
            assert s.stats()["b_to_a"]["rtcp_packets"] == 1

            # Unspecified address (legacy hold) clears the SDP address again.
            s.set_remote("b", "0.0.0.0", lo)
            assert s.stats()["b"]["sdp_rtp"] is None
            with pytest.raises(ValueError):
                s.set_remote("b", "::1", lo)  # wrong family for side B
            with pytest.raises(ValueError):
                s.set_remote("c", PARTY_B, lo)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                s.set_remote("b", la.ip, la.rtp_port)  # would loop into ourselves
        finally:
            s.close()

    run(main)


def test_latching_overrides_sdp_and_rejects_other_sources(udp):
    a_rtp = udp(PARTY_A)
    b_sdp, b_real, intruder = udp(PARTY_B), udp(PARTY_B), udp(PARTY_X)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        s = relay.open_session(*make_allocs())
        try:
            la, lb = s.local("a"), s.local("b")
            s.set_remote("a", PARTY_A, addr_of(a_rtp)[1])
            s.set_remote("b", PARTY_B, addr_of(b_sdp)[1])
            # B is behind a NAT: its media comes from another port than its SDP.
            b_real.sendto(b"from-b", (lb.ip, lb.rtp_port))
            assert (await recv(a_rtp))[0] == b"from-b"
            a_rtp.sendto(b"to-b", (la.ip, la.rtp_port))
            assert (await recv(b_real))[0] == b"to-b"
            await nothing_on(b_sdp)
            # Someone else on B's relay port is dropped, not forwarded nor latched.
            intruder.sendto(b"evil", (lb.ip, lb.rtp_port))
            await nothing_on(a_rtp)
            st = s.stats()
            assert st["b"]["latched_rtp"] == addr_of(b_real)
            assert st["b_to_a"]["dropped_foreign_source"] == 1
            assert st["b_to_a"]["rtp_packets"] == 1
            # After a re-INVITE the latch can be reset; the next packet latches anew.
            s.reset_latch("b")
            intruder.sendto(b"moved", (lb.ip, lb.rtp_port))
            assert (await recv(a_rtp))[0] == b"moved"
            assert s.stats()["b"]["latched_rtp"] == addr_of(intruder)
        finally:
            s.close()

    run(main)


def test_latch_only_side_waits_for_probe_and_probe_is_not_forwarded(udp):
    ext = udp(PARTY_A)
    core_rtp, core_rtcp = udp(PARTY_B), udp(PARTY_B)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        s = relay.open_session(*make_allocs(), b_latch_only=True)
        try:
            la, lb = s.local("a"), s.local("b")
            s.set_remote("a", PARTY_A, addr_of(ext)[1])
            s.set_remote("b", PARTY_B, addr_of(core_rtp)[1], addr_of(core_rtcp)[1])
            assert s.latch_only("b") and not s.latch_only("a")
            ext.sendto(b"too-early", (la.ip, la.rtp_port))
            await nothing_on(core_rtp)  # SDP address of a latch-only side is never used
            assert s.stats()["a_to_b"]["dropped_no_destination"] == 1

            core_rtp.sendto(LATCH_PROBE, (lb.ip, lb.rtp_port))
            core_rtcp.sendto(LATCH_PROBE, (lb.ip, lb.rtcp_port))
            await nothing_on(ext)  # probes are absorbed
            st = s.stats()
            assert st["b_to_a"]["probes_received"] == 2
            assert st["b_to_a"]["rtp_packets"] == 0
            assert st["b"]["latched_rtp"] == addr_of(core_rtp)

            ext.sendto(b"media", (la.ip, la.rtp_port))
            assert await recv(core_rtp) == (b"media", (lb.ip, lb.rtp_port))
            ext.sendto(b"rtcp", (la.ip, la.rtcp_port))
            assert await recv(core_rtcp) == (b"rtcp", (lb.ip, lb.rtcp_port))
        finally:
            s.close()

    run(main)


def test_core_probes_open_the_edge_end_to_end(udp):
    """External X <-> edge (B side latch-only) <-> core <-> internal Y."""
    x_rtp, y_rtp = udp(PARTY_X), udp(PARTY_B)

    async def main():
        loop = asyncio.get_running_loop()
        edge, core = MediaRelay(loop), MediaRelay(loop)
        e = edge.open_session(*make_allocs(EDGE_EXT, EDGE_INT), b_latch_only=True)
        c = core.open_session(*make_allocs(CORE_DMZ, CORE_INT))
        try:
            ex, ei = e.local("a"), e.local("b")
            cd, ci = c.local("a"), c.local("b")
            e.set_remote("a", PARTY_X, addr_of(x_rtp)[1])
            e.set_remote("b", cd.ip, cd.rtp_port)  # ignored: latch-only
            c.set_remote("a", ei.ip, ei.rtp_port)
            c.set_remote("b", PARTY_B, addr_of(y_rtp)[1])
            c.start_probing("a", interval_s=0.05, count=50)
            for _ in range(100):
                if e.stats()["b"]["latched_rtp"] is not None:
                    break
                await asyncio.sleep(0.01)
            assert e.stats()["b"]["latched_rtp"] == (cd.ip, cd.rtp_port)
            assert e.stats()["b"]["latched_rtcp"] == (cd.ip, cd.rtcp_port)

            x_rtp.sendto(b"inbound", (ex.ip, ex.rtp_port))
            assert await recv(y_rtp) == (b"inbound", (ci.ip, ci.rtp_port))
            y_rtp.sendto(b"outbound", (ci.ip, ci.rtp_port))
            assert await recv(x_rtp) == (b"outbound", (ex.ip, ex.rtp_port))
            # Media now flows from the edge: probing stopped well before 50 rounds.
            sent = c.stats()["a"]["probes_sent"]
            await asyncio.sleep(0.15)
            assert c.stats()["a"]["probes_sent"] == sent < 100
            await nothing_on(x_rtp, y_rtp)  # no probe leaked to a party
        finally:
            edge.close()
            core.close()

    run(main)


def test_probing_is_bounded_by_count(udp):
    far_rtp, far_rtcp = udp(PARTY_B), udp(PARTY_B)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        s = relay.open_session(*make_allocs())
        try:
            assert s.send_latch_probe("b") == 0  # no SDP address yet
            s.set_remote("b", PARTY_B, addr_of(far_rtp)[1], addr_of(far_rtcp)[1])
            s.start_probing("b", interval_s=0.02, count=3)
            await asyncio.sleep(0.2)
            assert s.stats()["b"]["probes_sent"] == 6
            got = []
            for sock in (far_rtp, far_rtp, far_rtp, far_rtcp, far_rtcp, far_rtcp):
                got.append(sock.recvfrom(100)[0])
            assert got == [LATCH_PROBE] * 6
        finally:
            s.close()
        assert s.send_latch_probe("b") == 0

    run(main)


def test_inactivity_closes_and_releases_ports(udp):
    a_rtp, b_rtp = udp(PARTY_A), udp(PARTY_B)

    async def main():
        loop = asyncio.get_running_loop()
        closed: list[tuple[int, str]] = []
        relay = MediaRelay(loop, inactivity_timeout_s=0.3)
        relay.on_closed = lambda sess, reason: closed.append((sess.id, reason))
        a_alloc, b_alloc = make_allocs()
        idle = relay.open_session(a_alloc, b_alloc, label="idle")
        busy = relay.open_session(a_alloc, b_alloc, label="busy")
        idle_ports = [idle.local("a"), idle.local("b")]
        try:
            busy.set_remote("b", PARTY_B, addr_of(b_rtp)[1])
            la = busy.local("a")
            t0 = loop.time()
            while loop.time() - t0 < 0.7:  # keep "busy" alive past the timeout
                a_rtp.sendto(b"x" * 172, (la.ip, la.rtp_port))
                await asyncio.sleep(0.05)
            assert idle.closed and idle.close_reason == "inactivity"
            assert closed == [(idle.id, "inactivity")]
            assert not busy.closed and len(relay) == 1
            for ep in idle_ports:
                assert can_bind(ep.ip, ep.rtp_port) and can_bind(ep.ip, ep.rtcp_port)
            # Traffic stops: "busy" goes too, after at least the timeout.
            t_stop = loop.time()
            while not busy.closed and loop.time() - t_stop < 2.0:
                await asyncio.sleep(0.02)
            assert busy.closed and busy.close_reason == "inactivity"
            assert loop.time() - t_stop >= 0.3 - 0.08
            assert a_alloc.in_use == 0 and b_alloc.in_use == 0
            assert relay.stats()["closed_sessions"] == 2
        finally:
            relay.close()

    run(main)


def test_touch_defers_inactivity():
    async def main():
        loop = asyncio.get_running_loop()
        relay = MediaRelay(loop, inactivity_timeout_s=0.2)
        s = relay.open_session(*make_allocs(), label="ringing")
        try:
            for _ in range(8):  # 0.4 s of "180 Ringing" refreshes, no media
                await asyncio.sleep(0.05)
                s.touch()
            assert not s.closed
            for _ in range(100):
                if s.closed:
                    break
                await asyncio.sleep(0.01)
            assert s.close_reason == "inactivity"
        finally:
            relay.close()

    run(main)


def test_close_frees_ports_and_is_idempotent():
    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        a_alloc, b_alloc = make_allocs()
        s = relay.open_session(a_alloc, b_alloc)
        calls: list[str] = []
        s.on_closed = lambda sess, reason: calls.append(reason)
        eps = [s.local("a"), s.local("b")]
        for ep in eps:
            assert not can_bind(ep.ip, ep.rtp_port)
        s.close("final-response")
        s.close("bye")
        assert calls == ["final-response"] and s.close_reason == "final-response"
        assert len(relay) == 0 and relay.get(s.id) is None
        for ep in eps:
            assert can_bind(ep.ip, ep.rtp_port) and can_bind(ep.ip, ep.rtcp_port)
        s.set_remote("a", PARTY_A, 4000)  # no-op on a closed session
        relay.close()

    run(main)


def test_open_session_does_not_leak_when_b_side_exhausted(udp):
    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        lo, hi = port_range(1)
        a_alloc = PortAllocator(RELAY_A, *port_range(2))
        b_alloc = PortAllocator(RELAY_B, lo, hi)
        blocker = udp(RELAY_B, lo)
        with pytest.raises(PortsExhausted):
            relay.open_session(a_alloc, b_alloc)
        assert a_alloc.in_use == 0 and len(relay) == 0
        blocker.close()
        relay.close()

    run(main)


class _FlakySock:
    """Wraps a socket; the first recvfrom_into raises like an ICMP error would."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.family = sock.family
        self.failed = False

    def recvfrom_into(self, buf):
        if not self.failed:
            self.failed = True
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        return self._sock.recvfrom_into(buf)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_hot_path_errors_are_counted_and_do_not_stop_relaying(udp):
    a_rtp, b_rtp, c_rtp, d_rtp = udp(PARTY_A), udp(PARTY_B), udp(PARTY_A), udp(PARTY_B)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        s1 = relay.open_session(*make_allocs())
        s2 = relay.open_session(*make_allocs())
        try:
            la = s1.local("a")
            # sendto() to broadcast without SO_BROADCAST fails with EACCES.
            s1.set_remote("b", "255.255.255.255", 9)
            for _ in range(3):
                a_rtp.sendto(b"x", (la.ip, la.rtp_port))
            await asyncio.sleep(0.05)
            assert s1.stats()["a_to_b"]["send_errors"] == 3
            # A receive error (ICMP-induced) is counted and the drain goes on.
            s1._a_rtp.sock = _FlakySock(s1._a_rtp.sock)
            s1.set_remote("b", PARTY_B, addr_of(b_rtp)[1])
            a_rtp.sendto(b"after-errors", (la.ip, la.rtp_port))
            assert (await recv(b_rtp))[0] == b"after-errors"
            assert s1.stats()["a_to_b"]["recv_errors"] == 1
            # The other session was never affected.
            s2.set_remote("b", PARTY_B, addr_of(d_rtp)[1])
            c_rtp.sendto(b"s2", (s2.local("a").ip, s2.local("a").rtp_port))
            assert (await recv(d_rtp))[0] == b"s2"
        finally:
            relay.close()

    run(main)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_relay(udp):
    a_rtp, b_rtp = udp("::1"), udp("::1")

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        a_alloc, b_alloc = make_allocs("::1", "::1")
        assert a_alloc.family == socket.AF_INET6
        s = relay.open_session(a_alloc, b_alloc)
        try:
            la, lb = s.local("a"), s.local("b")
            s.set_remote("b", "::1", addr_of(b_rtp)[1])
            a_rtp.sendto(b"v6", ("::1", la.rtp_port))
            data, src = await recv(b_rtp)
            assert data == b"v6" and src[:2] == ("::1", lb.rtp_port)
            b_rtp.sendto(b"v6-back", ("::1", lb.rtp_port))
            assert (await recv(a_rtp))[0] == b"v6-back"  # via A's latched address
        finally:
            relay.close()

    run(main)


def test_relay_close_with_default_loop_argument():
    async def main():
        relay = MediaRelay(inactivity_timeout_s=None)  # running loop, no sweep
        s = relay.open_session(*make_allocs())
        relay.close()
        assert s.closed and s.close_reason == "shutdown"
        with pytest.raises(RuntimeError):
            relay.open_session(*make_allocs())

    run(main)
