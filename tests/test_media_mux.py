"""Multiplexed traversal media (seed 002 §7.2): the edge's traversal legs of many
calls on one shared RTP/RTCP socket pair, demultiplexed by the core's source address.

The demux table is tested sans-IO; the relay tests run over loopback only
(127.0.0.22x), every socket and session they open is closed by the test, and every
run is bounded by an asyncio timeout.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from udputil import LOOP_KINDS, addr_of, nothing_on, port_range, recv, run, udp_sockets

from edgeway.media import LATCH_PROBE, DemuxTable, MediaRelay, MuxPair, PortAllocator
from edgeway.media.mux import mux_key

EDGE_EXT, EDGE_INT, CORE_DMZ, CORE_INT = "127.0.0.221", "127.0.0.222", "127.0.0.223", "127.0.0.224"
PARTY_X, PARTY_Y, STRANGER = "127.0.0.225", "127.0.0.226", "127.0.0.227"


# --------------------------------------------------------------------------------------
# DemuxTable (sans-IO)


def test_demux_table_register_lookup_unregister():
    t = DemuxTable()
    leg1, leg2 = object(), object()
    assert t.register(("10.0.0.3", 40000), leg1) is None
    assert t.register(("10.0.0.3", 40002), leg2) is None
    assert t.lookup(("10.0.0.3", 40000)) is leg1
    assert t.lookup(("10.0.0.3", 40002, 0, 0)) is leg2  # an IPv6-style recvfrom tuple
    assert t.lookup(("10.0.0.3", 40004)) is None
    assert t.lookup(("10.0.0.9", 40000)) is None  # same port, other host: no call
    assert len(t) == 2 and ("10.0.0.3", 40000) in t
    # re-registering the same leg is not a replacement
    assert t.register(("10.0.0.3", 40000), leg1) is None and t.replaced == 0
    assert t.unregister(("10.0.0.3", 40000), leg1) and t.lookup(("10.0.0.3", 40000)) is None
    assert not t.unregister(("10.0.0.3", 40000), leg1)


def test_demux_table_newer_registration_wins_and_stale_unregister_is_harmless():
    t = DemuxTable()
    stale, fresh = object(), object()
    t.register(("10.0.0.3", 40000), stale)
    assert t.register(("10.0.0.3", 40000), fresh) is stale and t.replaced == 1
    # the stale session closing later must not remove its successor's entry
    assert not t.unregister(("10.0.0.3", 40000), stale)
    assert t.lookup(("10.0.0.3", 40000)) is fresh
    assert t.stats() == {"calls": 1, "unknown_source": 0, "recv_errors": 0, "replaced": 1, "held": 0, "replayed": 0}


def test_demux_table_holds_early_datagrams_bounded_and_not_after_the_call():
    from edgeway.media.mux import HOLD_PER_SOURCE, HOLD_S, HOLD_SOURCES

    t = DemuxTable()
    k = ("10.0.0.3", 40000)
    for i in range(HOLD_PER_SOURCE + 3):
        assert t.hold(k, b"%d" % i, 1.0) == (i < HOLD_PER_SOURCE)
    assert t.take_held(k, 1.5) == [b"%d" % i for i in range(HOLD_PER_SOURCE)]
    assert t.take_held(k, 1.5) == [] and t.replayed == HOLD_PER_SOURCE
    # too old: dropped at take time
    t.hold(k, b"old", 1.0)
    assert t.take_held(k, 1.0 + HOLD_S + 0.1) == []
    # at most HOLD_SOURCES sources; room again once the old ones expire
    for i in range(HOLD_SOURCES):
        assert t.hold(("10.0.1.1", 1000 + i), b"x", 10.0)
    assert not t.hold(("10.0.2.2", 1), b"x", 10.1)
    assert t.holding == HOLD_SOURCES
    assert t.hold(("10.0.2.2", 1), b"x", 10.0 + HOLD_S + 1)
    assert t.holding == 1
    # a key whose call ended is not held (late datagrams never reach the next call)
    leg = object()
    t.register(k, leg)
    assert t.unregister(k, leg, 20.0)
    assert not t.hold(k, b"late", 20.5)
    assert t.hold(k, b"early-again", 20.0 + HOLD_S + 0.5)


def test_mux_key_canonicalises_the_sdp_address():
    assert mux_key("127.0.0.3", 36002) == ("127.0.0.3", 36002)
    assert mux_key("::0001", 5000) == ("::1", 5000)
    assert mux_key("fe80::1%eth0", 5000) == ("fe80::1", 5000)


def test_mux_pair_binds_even_odd_and_refuses_bad_ports():
    lo, _ = port_range(1)
    m = MuxPair(EDGE_INT, lo)
    try:
        assert addr_of(m.rtp_sock) == (EDGE_INT, lo) and addr_of(m.rtcp_sock) == (EDGE_INT, lo + 1)
        assert m.rtp_sock.getblocking() is False
        with pytest.raises(OSError):  # taken: nothing left open
            MuxPair(EDGE_INT, lo)
    finally:
        m.close()
    assert m.closed
    with pytest.raises(ValueError):
        MuxPair(EDGE_INT, lo + 1)


# --------------------------------------------------------------------------------------
# Relay with a mux side


def _edge(loop, n: int = 8):
    relay = MediaRelay(loop)
    ext = PortAllocator(EDGE_EXT, *port_range(n))
    mux = MuxPair(EDGE_INT, port_range(1)[0])
    relay.attach_mux(mux)
    return relay, ext, mux


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_mux_side_relays_rtp_and_rtcp_both_ways_and_drops_strangers(kind):
    with udp_sockets(PARTY_X) as udp:
        x_rtp, x_rtcp = udp(), udp()
        c_rtp, c_rtcp = udp(CORE_DMZ), udp(CORE_DMZ)
        stranger = udp(STRANGER)

        async def main():
            relay, ext, mux = _edge(asyncio.get_running_loop())
            try:
                s = relay.open_session(ext, None, b_latch_only=True, b_mux=mux, label="c1/0")
                ex, ei = s.local("a"), s.local("b")
                assert ei == (EDGE_INT, mux.rtp_port, mux.rtcp_port) and s.mux("b") is mux and s.mux("a") is None
                s.set_remote("a", PARTY_X, addr_of(x_rtp)[1], addr_of(x_rtcp)[1])
                s.set_remote("b", CORE_DMZ, addr_of(c_rtp)[1], addr_of(c_rtcp)[1])
                # latch-only: nothing goes toward the core before its first packet
                x_rtp.sendto(b"early", (ex.ip, ex.rtp_port))
                await nothing_on(c_rtp, wait=0.05)
                # a stranger on the mux port reaches no call and latches nothing
                stranger.sendto(b"inject", (ei.ip, ei.rtp_port))
                stranger.sendto(b"inject", (ei.ip, ei.rtcp_port))
                await nothing_on(x_rtp, x_rtcp, wait=0.05)
                assert relay.stats()["mux_unknown_source"] == 2

                c_rtp.sendto(b"rtp-c2x", (ei.ip, ei.rtp_port))
                assert await recv(x_rtp) == (b"rtp-c2x", (ex.ip, ex.rtp_port))
                c_rtcp.sendto(b"rtcp-c2x", (ei.ip, ei.rtcp_port))
                assert await recv(x_rtcp) == (b"rtcp-c2x", (ex.ip, ex.rtcp_port))
                x_rtp.sendto(b"rtp-x2c", (ex.ip, ex.rtp_port))
                assert await recv(c_rtp) == (b"rtp-x2c", (ei.ip, ei.rtp_port))  # sent from the mux socket
                x_rtcp.sendto(b"rtcp-x2c", (ex.ip, ex.rtcp_port))
                assert await recv(c_rtcp) == (b"rtcp-x2c", (ei.ip, ei.rtcp_port))
                # a latch probe from the core latches but is not forwarded
                c_rtp.sendto(LATCH_PROBE, (ei.ip, ei.rtp_port))
                await nothing_on(x_rtp, stranger, wait=0.05)
                st = s.stats()
                assert st["b"]["mux"] and not st["a"]["mux"]
                assert st["b_to_a"]["rtp_packets"] == 1 and st["b_to_a"]["rtcp_packets"] == 1
                assert st["a_to_b"]["rtp_packets"] == 1 and st["a_to_b"]["rtcp_packets"] == 1
                assert st["a_to_b"]["dropped_no_destination"] == 1  # "early"
                assert st["b_to_a"]["probes_received"] == 1
                assert st["b"]["latched_rtp"] == addr_of(c_rtp)
                s.close("bye")
                assert len(mux.rtp_table) == 0 and len(mux.rtcp_table) == 0 and mux.sessions == 0
                assert ext.in_use == 0
                # after the call, the core's old port is a stranger too
                c_rtp.sendto(b"late", (ei.ip, ei.rtp_port))
                await nothing_on(x_rtp, wait=0.05)
                assert relay.stats()["mux_unknown_source"] == 3
            finally:
                relay.close()
            assert mux.closed

        run(main, kind)


def test_mux_rekey_on_new_core_address_forgets_old_source():
    with udp_sockets(PARTY_X) as udp:
        x_rtp = udp()
        old_rtp, new_rtp = udp(CORE_DMZ), udp(CORE_DMZ)

        async def main():
            relay, ext, mux = _edge(asyncio.get_running_loop())
            try:
                s = relay.open_session(ext, None, b_latch_only=True, b_mux=mux)
                ex, ei = s.local("a"), s.local("b")
                s.set_remote("a", PARTY_X, addr_of(x_rtp)[1])
                s.set_remote("b", CORE_DMZ, addr_of(old_rtp)[1])
                old_rtp.sendto(b"one", (ei.ip, ei.rtp_port))
                assert (await recv(x_rtp))[0] == b"one"
                s.set_remote("b", CORE_DMZ, addr_of(new_rtp)[1])  # re-INVITE: the core moved
                assert s.stats()["b"]["latched_rtp"] is None
                old_rtp.sendto(b"stale", (ei.ip, ei.rtp_port))
                await nothing_on(x_rtp, wait=0.05)
                new_rtp.sendto(b"two", (ei.ip, ei.rtp_port))
                assert (await recv(x_rtp))[0] == b"two"
                x_rtp.sendto(b"back", (ex.ip, ex.rtp_port))
                assert await recv(new_rtp) == (b"back", (ei.ip, ei.rtp_port))
                await nothing_on(old_rtp, wait=0.02)
                # a second session given the same core address takes the key over
                s2 = relay.open_session(ext, None, b_latch_only=True, b_mux=mux)
                s2.set_remote("b", CORE_DMZ, addr_of(new_rtp)[1])
                assert mux.rtp_table.lookup(addr_of(new_rtp)) is s2._b_rtp and mux.rtp_table.replaced == 1
                s.close()  # the stale one closing leaves its successor's entry alone
                assert mux.rtp_table.lookup(addr_of(new_rtp)) is s2._b_rtp
            finally:
                relay.close()

        run(main)


def test_core_relay_probes_latch_the_edge_mux_end_to_end():
    """X <-> edge (b on the mux pair) <-> core relay (unchanged, probing) <-> Y: the
    core sends to the mux port from its own per-call port; its probes latch the edge."""
    with udp_sockets(PARTY_X) as udp:
        x_rtp, y_rtp = udp(), udp(PARTY_Y)

        async def main():
            loop = asyncio.get_running_loop()
            edge, ext, mux = _edge(loop)
            core = MediaRelay(loop)
            try:
                e = edge.open_session(ext, None, b_latch_only=True, b_mux=mux)
                c = core.open_session(PortAllocator(CORE_DMZ, *port_range(4)), PortAllocator(CORE_INT, *port_range(4)))
                ex, ei = e.local("a"), e.local("b")
                cd, ci = c.local("a"), c.local("b")
                e.set_remote("a", PARTY_X, addr_of(x_rtp)[1])
                e.set_remote("b", cd.ip, cd.rtp_port)  # from the core's SDP: the demux key
                c.set_remote("a", ei.ip, ei.rtp_port)  # the edge's SDP: the mux port
                c.set_remote("b", PARTY_Y, addr_of(y_rtp)[1])
                c.start_probing("a", interval_s=0.05, count=40)
                for _ in range(100):
                    if e.stats()["b"]["latched_rtcp"] is not None:
                        break
                    await asyncio.sleep(0.01)
                assert e.stats()["b"]["latched_rtp"] == (cd.ip, cd.rtp_port)
                assert e.stats()["b"]["latched_rtcp"] == (cd.ip, cd.rtcp_port)
                x_rtp.sendto(b"inbound", (ex.ip, ex.rtp_port))
                assert await recv(y_rtp) == (b"inbound", (ci.ip, ci.rtp_port))
                y_rtp.sendto(b"outbound", (ci.ip, ci.rtp_port))
                assert await recv(x_rtp) == (b"outbound", (ex.ip, ex.rtp_port))
            finally:
                edge.close()
                core.close()

        run(main)


def _drain(sock: socket.socket, into: list) -> None:
    while True:
        try:
            into.append(sock.recvfrom(2048)[0])
        except BlockingIOError:
            return


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_200_calls_on_one_mux_pair_without_cross_talk(kind):
    """200 concurrent calls share one mux pair; each call's outside party X_i and its
    core port C_i send tagged RTP and RTCP both ways: every datagram arrives at its own
    call's far end (and the core's at the one mux address), none elsewhere, none lost."""
    calls, per = 200, 4
    with udp_sockets(PARTY_X) as udp:
        xs = [(udp(), udp()) for _ in range(calls)]
        cs = [(udp(CORE_DMZ), udp(CORE_DMZ)) for _ in range(calls)]
        stranger = udp(STRANGER)

        async def main():
            relay, ext, mux = _edge(asyncio.get_running_loop(), n=calls)
            ext.pool_size = 0
            try:
                sessions = []
                for i in range(calls):
                    s = relay.open_session(ext, None, b_latch_only=True, b_mux=mux, label=f"call-{i}")
                    (xr, xc), (cr, cc) = xs[i], cs[i]
                    s.set_remote("a", PARTY_X, addr_of(xr)[1], addr_of(xc)[1])
                    s.set_remote("b", CORE_DMZ, addr_of(cr)[1], addr_of(cc)[1])
                    sessions.append(s)
                assert len(mux.rtp_table) == calls and len(mux.rtcp_table) == calls
                mux_rtp, mux_rtcp = (EDGE_INT, mux.rtp_port), (EDGE_INT, mux.rtcp_port)
                # The core speaks first (the edge is latch-only toward it), then both ways.
                for k in range(per):
                    for i, s in enumerate(sessions):
                        cr, cc = cs[i]
                        cr.sendto(b"c2x-rtp:%d:%d" % (i, k), mux_rtp)
                        cc.sendto(b"c2x-rtcp:%d:%d" % (i, k), mux_rtcp)
                        stranger.sendto(b"inject:%d" % i, mux_rtp if i % 2 else mux_rtcp)
                    await asyncio.sleep(0.01)
                for k in range(per):
                    for i, s in enumerate(sessions):
                        ex = s.local("a")
                        xr, xc = xs[i]
                        xr.sendto(b"x2c-rtp:%d:%d" % (i, k), (ex.ip, ex.rtp_port))
                        xc.sendto(b"x2c-rtcp:%d:%d" % (i, k), (ex.ip, ex.rtcp_port))
                    await asyncio.sleep(0.01)
                got: dict[tuple[str, int], list] = {}
                want = 4 * calls * per
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    for i in range(calls):
                        for name, sock in (("xr", xs[i][0]), ("xc", xs[i][1]), ("cr", cs[i][0]), ("cc", cs[i][1])):
                            _drain(sock, got.setdefault((name, i), []))
                    if sum(len(v) for v in got.values()) >= want:
                        break
                for i in range(calls):
                    assert got[("xr", i)] == [b"c2x-rtp:%d:%d" % (i, k) for k in range(per)], i
                    assert got[("xc", i)] == [b"c2x-rtcp:%d:%d" % (i, k) for k in range(per)], i
                    assert got[("cr", i)] == [b"x2c-rtp:%d:%d" % (i, k) for k in range(per)], i
                    assert got[("cc", i)] == [b"x2c-rtcp:%d:%d" % (i, k) for k in range(per)], i
                # ... and what the core got came from the mux address
                cs[7][0].setblocking(False)
                xs[7][0].sendto(b"from?", (sessions[7].local("a").ip, sessions[7].local("a").rtp_port))
                assert await recv(cs[7][0]) == (b"from?", mux_rtp)
                st = relay.stats()
                assert st["dropped"] == 0 and st["mux_unknown_source"] == per * calls
                assert st["packets"] == want + 1
                await nothing_on(stranger, wait=0.02)
            finally:
                relay.close()
            assert ext.in_use == 0

        run(main, kind, timeout=20)


def test_mux_side_with_srtp_both_ways():
    """SRTP on both sides (the mux leg unprotects what the core sends and protects
    toward it): RTP and RTCP cross, a forged SRTP packet from the core's address is
    dropped as an authentication failure."""
    import struct

    from edgeway.media.srtp import SrtpContext

    suite = "AES_CM_128_HMAC_SHA1_80"
    keys = {k: bytes([k]) * 30 for k in range(1, 5)}
    rtp = struct.pack("!BBHII", 0x80, 0, 7, 160, 42) + b"\xd5" * 160
    rtcp = struct.pack("!BBHI", 0x80, 201, 1, 42)
    with udp_sockets(PARTY_X) as udp:
        x_rtp, x_rtcp = udp(), udp()
        c_rtp, c_rtcp = udp(CORE_DMZ), udp(CORE_DMZ)

        async def main():
            relay, ext, mux = _edge(asyncio.get_running_loop())
            try:
                s = relay.open_session(ext, None, b_latch_only=True, b_mux=mux)
                ex, ei = s.local("a"), s.local("b")
                s.set_remote("a", PARTY_X, addr_of(x_rtp)[1], addr_of(x_rtcp)[1])
                s.set_remote("b", CORE_DMZ, addr_of(c_rtp)[1], addr_of(c_rtcp)[1])
                s.set_crypto("a", inbound=SrtpContext(suite, keys[1], "inbound"), outbound=SrtpContext(suite, keys[2], "outbound"))
                s.set_crypto("b", inbound=SrtpContext(suite, keys[3], "inbound"), outbound=SrtpContext(suite, keys[4], "outbound"))
                x_tx, x_rx = SrtpContext(suite, keys[1], "outbound"), SrtpContext(suite, keys[2], "inbound")
                c_tx, c_rx = SrtpContext(suite, keys[3], "outbound"), SrtpContext(suite, keys[4], "inbound")
                c_rtp.sendto(bytes(50), (ei.ip, ei.rtp_port))  # forged: fails authentication, no latch
                await nothing_on(x_rtp, wait=0.05)
                assert s.stats()["b"]["latched_rtp"] is None
                c_rtp.sendto(c_tx.protect_rtp(rtp), (ei.ip, ei.rtp_port))
                assert x_rx.unprotect_rtp((await recv(x_rtp))[0]) == rtp
                c_rtcp.sendto(c_tx.protect_rtcp(rtcp), (ei.ip, ei.rtcp_port))
                assert x_rx.unprotect_rtcp((await recv(x_rtcp))[0]) == rtcp
                x_rtp.sendto(x_tx.protect_rtp(rtp), (ex.ip, ex.rtp_port))
                got, src = await recv(c_rtp)
                assert src == (ei.ip, ei.rtp_port) and c_rx.unprotect_rtp(got) == rtp
                x_rtcp.sendto(x_tx.protect_rtcp(rtcp), (ex.ip, ex.rtcp_port))
                got, src = await recv(c_rtcp)
                assert src == (ei.ip, ei.rtcp_port) and c_rx.unprotect_rtcp(got) == rtcp
                st = s.stats()
                assert st["b_to_a"]["srtp_auth_failures"] == 1 and st["dropped"] == 1
                assert st["b_to_a"]["rtp_packets"] == st["a_to_b"]["rtcp_packets"] == 1
            finally:
                relay.close()

        run(main)


def test_early_datagrams_from_the_core_reach_the_call_once_its_sdp_arrives():
    """The core's probe and first media can beat its answer to the edge: they are held
    and replayed to the call whose SDP names their source, not to another call, and a
    finished call's late datagrams are not held for the next one."""
    with udp_sockets(PARTY_X) as udp:
        x_rtp, x2_rtp = udp(), udp()
        c_rtp, c2_rtp = udp(CORE_DMZ), udp(CORE_DMZ)

        async def main():
            relay, ext, mux = _edge(asyncio.get_running_loop())
            try:
                s = relay.open_session(ext, None, b_latch_only=True, b_mux=mux)
                s2 = relay.open_session(ext, None, b_latch_only=True, b_mux=mux)
                ex, ei = s.local("a"), s.local("b")
                s.set_remote("a", PARTY_X, addr_of(x_rtp)[1])
                s2.set_remote("a", PARTY_X, addr_of(x2_rtp)[1])
                s2.set_remote("b", CORE_DMZ, addr_of(c2_rtp)[1])
                c_rtp.sendto(LATCH_PROBE, (ei.ip, ei.rtp_port))
                c_rtp.sendto(b"early-media", (ei.ip, ei.rtp_port))
                await nothing_on(x_rtp, x2_rtp, wait=0.05)
                assert mux.rtp_table.held == 2
                s.set_remote("b", CORE_DMZ, addr_of(c_rtp)[1])  # the answer arrives
                assert (await recv(x_rtp))[0] == b"early-media"
                st = s.stats()
                assert st["b"]["latched_rtp"] == addr_of(c_rtp) and st["b_to_a"]["probes_received"] == 1
                # latched by the held probe: the outside party's media goes to the core at once
                x_rtp.sendto(b"reply", (ex.ip, ex.rtp_port))
                assert await recv(c_rtp) == (b"reply", (ei.ip, ei.rtp_port))
                await nothing_on(x2_rtp, wait=0.02)
                s.close()
                c_rtp.sendto(b"late", (ei.ip, ei.rtp_port))
                await asyncio.sleep(0.05)
                s3 = relay.open_session(ext, None, b_latch_only=True, b_mux=mux)
                s3.set_remote("a", PARTY_X, addr_of(x2_rtp)[1])
                s3.set_remote("b", CORE_DMZ, addr_of(c_rtp)[1])  # the core reused the port
                await nothing_on(x_rtp, x2_rtp, wait=0.05)
                assert s3.stats()["b_to_a"]["rtp_packets"] == 0
            finally:
                relay.close()

        run(main)


def test_edge_driver_spreads_streams_over_the_mux_pairs(tmp_path):
    """A large edge (6 pairs; 3 here) binds its mux pairs at the start of the range, the
    per-call range starts after them, and each traversal stream goes on the least-loaded
    pair; a core binds none."""
    from edgeway.config import parse_config
    from edgeway.diag.events import EventLog
    from edgeway.proxy.actions import AllocateMedia
    from edgeway.proxy.driver import RelaySessions

    lo, hi = port_range(12)

    def cfg(role):
        return parse_config({"role": role, "name": role, "sip": {"listen_ip": EDGE_INT},
                             "media": {"port_min": lo, "port_max": hi, "mux_pairs": 3}})

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())
        events = EventLog("edge", str(tmp_path / "e.jsonl"))
        try:
            rs = RelaySessions(cfg("edge"), relay, events)
            assert [m.rtp_port for m in rs.muxes] == [lo, lo + 2, lo + 4]
            assert (rs.alloc.port_min, rs.alloc.port_max) == (lo + 6, hi)
            seen = []
            for key in range(6):
                ports = rs.allocate(AllocateMedia(key, key, (0,), False, True, f"c{key}", False, True))
                a_port, b_port = ports[0]
                assert a_port >= lo + 6 and b_port in (lo, lo + 2, lo + 4)
                seen.append(b_port)
            assert sorted(seen) == sorted([lo, lo + 2, lo + 4] * 2)
            assert [m.sessions for m in rs.muxes] == [2, 2, 2]
            rs.release(0, "c0", "bye")
            assert sorted(m.sessions for m in rs.muxes) == [1, 2, 2]
            # datagrams from a source no call named: dropped, reported once per period
            with udp_sockets(STRANGER) as udp:
                stranger = udp()
                for _ in range(3):
                    stranger.sendto(b"scan", (EDGE_INT, lo + 2))
                await asyncio.sleep(0.05)
            rs.report_mux()
            rs.report_mux()
            rs.close()
            assert [m.sessions for m in rs.muxes] == [0, 0, 0]
        finally:
            relay.close()
        events.flush()
        import json
        lines = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
        unknown = [e for e in lines if e["event"] == "media mux unknown source"]
        assert len(unknown) == 1 and unknown[0]["port"] == lo + 2 and unknown[0]["dropped"] == 3, unknown
        relay2 = MediaRelay(asyncio.get_running_loop())
        try:
            core = RelaySessions(cfg("core"), relay2, events)
            assert core.muxes == [] and (core.alloc.port_min, core.alloc.port_max) == (lo, hi)
        finally:
            relay2.close()
            events.close()

    run(main)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_mux():
    with udp_sockets("::1") as udp:
        x_rtp, c_rtp = udp(), udp()

        async def main():
            relay = MediaRelay(asyncio.get_running_loop())
            try:
                mux = MuxPair("::1", port_range(1)[0])
                s = relay.open_session(PortAllocator("::1", *port_range(2)), None, b_latch_only=True, b_mux=mux)
                ex, ei = s.local("a"), s.local("b")
                s.set_remote("a", "::1", addr_of(x_rtp)[1])
                s.set_remote("b", "0:0::1", addr_of(c_rtp)[1])  # any spelling of the address
                c_rtp.sendto(b"v6", (ei.ip, ei.rtp_port))
                assert (await recv(x_rtp))[0] == b"v6"
                x_rtp.sendto(b"back", (ex.ip, ex.rtp_port))
                got, src = await recv(c_rtp)
                assert got == b"back" and src[:2] == ("::1", ei.rtp_port)
            finally:
                relay.close()

        run(main)
