"""The lab user agent: real calls between two LabUserAgents over loopback.

Everything runs on 127.0.0.1 with ephemeral SIP ports, is bounded by
``asyncio.wait_for`` and closes every UA it starts (checked by re-binding the
UDP ports afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

import pytest

from edgeway.lab.ua import (
    LabUserAgent,
    build_rtp_packet,
    build_sdp,
    parse_rtp_header,
    parse_sdp,
)
from edgeway.sip.message import Request, Via, make_response, parse_message
from edgeway.sip.uri import parse_uri

DOMAIN = "corp.edgeway.test"
IP = "127.0.0.1"
BOUND = 15.0  # every test coroutine is cut off after this many seconds


def run(coro, loop_kind: str = "asyncio"):
    """Run ``coro`` bounded by BOUND seconds on a fresh asyncio or uvloop loop."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(asyncio.wait_for(coro, BOUND))
    return asyncio.run(asyncio.wait_for(coro, BOUND))


@contextlib.asynccontextmanager
async def two_uas(transport: str = "udp", **kw):
    a = LabUserAgent("alice", IP, 0, transport=transport, domain=DOMAIN, rtp_port_base=41000, **kw)
    b = LabUserAgent("bob", IP, 0, transport=transport, domain=DOMAIN, rtp_port_base=43000, **kw)
    await a.start()
    try:
        await b.start()
        try:
            yield a, b
        finally:
            await b.close()
    finally:
        await a.close()


def assert_udp_free(port: int) -> None:
    """The UA really closed its socket: the port can be bound again."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((IP, port))
    finally:
        s.close()


def first_lines(ladder: list[str]) -> list[str]:
    """``"→ INVITE"``, ``"← 200 OK (BYE)"``… from ladder lines (time and peer cut)."""
    out = []
    for line in ladder:
        _t, _ms, arrow, _peer, _tr, rest = line.split(maxsplit=5)
        out.append(f"{arrow} {rest.split(' sip:')[0]}")
    return out


def in_order(seq: list[str], wanted: list[str]) -> bool:
    it = iter(seq)
    return all(any(w == s for s in it) for w in wanted)


async def wait_until(pred, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


# --------------------------------------------------------------------------- direct calls


@pytest.mark.parametrize(
    "transport,loop_kind,media_s",
    [("udp", "asyncio", 1.0), ("tcp", "asyncio", 1.0), ("udp", "uvloop", 0.5), ("tcp", "uvloop", 0.5)],
)
def test_direct_call(transport: str, loop_kind: str, media_s: float) -> None:
    async def main():
        async with two_uas(transport) as (a, b):
            res = await a.call(
                "sip:bob@corp.edgeway.test", proxy=(IP, b.port, transport), from_user="alice",
                media_seconds=media_s, ptime_ms=20,
            )
            stats = b.calls_answered.get(res.call_id)
            ports = [a.port, b.port, res.local_rtp[1], stats.local_rtp[1]] if res.local_rtp and stats else []
        return res, stats, ports

    res, stats, ports = run(main(), loop_kind)
    assert res.ok, res
    assert (res.status, res.reason, res.bye_status, res.error) == (200, "OK", 200, None)
    assert res.setup_ms is not None and res.setup_ms < 1000
    expected = media_s * 1000 / 20
    # caller's media and the callee's (which runs from ACK to BYE)
    assert 0.8 * expected <= res.rtp_sent <= expected + 2
    assert 0.8 * expected <= res.rtp_received <= 1.2 * expected + 3
    assert stats is not None and stats.answered and stats.ended and stats.end_reason == "remote BYE"
    assert 0.8 * expected <= stats.rtp_received <= expected + 2
    assert 0.8 * expected <= stats.rtp_sent <= 1.2 * expected + 3
    assert res.rtcp_received >= 1 and stats.rtcp_received >= 1
    assert res.rtp_lost == 0 and stats.rtp_lost == 0
    # symmetric RTP: each side receives from the address the other advertised
    assert res.remote_rtp == stats.local_rtp and res.rtp_source == stats.local_rtp
    assert stats.remote_rtp == res.local_rtp and stats.rtp_source == res.local_rtp
    assert res.local_rtp[1] % 2 == 0 and stats.local_rtp[1] % 2 == 0
    assert all(f"({transport})" in line for line in res.ladder)
    caller = first_lines(res.ladder)
    assert in_order(caller, ["→ INVITE", "← 100 Trying (INVITE)", "← 180 Ringing (INVITE)", "← 200 OK (INVITE)", "→ ACK", "→ BYE", "← 200 OK (BYE)"]), caller
    callee = first_lines(stats.ladder)
    assert in_order(callee, ["← INVITE", "→ 100 Trying (INVITE)", "→ 180 Ringing (INVITE)", "→ 200 OK (INVITE)", "← ACK", "← BYE", "→ 200 OK (BYE)"]), callee
    assert not any("retransmission" in line for line in res.ladder + stats.ladder)
    for p in ports[2:] + [ports[2] + 1, ports[3] + 1] + (ports[:2] if transport == "udp" else []):
        assert_udp_free(p)


# --------------------------------------------------------------------------- through a proxy


class RecordRoutingProxy(asyncio.DatagramProtocol):
    """A minimal stateless UDP proxy that Record-Routes (lr): requests for a
    domain go to ``callee``, requests for an IP go there; responses follow Via."""

    def __init__(self, callee: tuple[str, int]):
        self.callee = callee
        self.seen: list[tuple[str, str, list[str]]] = []

    def connection_made(self, transport) -> None:
        self.t = transport
        self.port = transport.get_extra_info("sockname")[1]
        self.me = f"sip:{IP}:{self.port};lr"

    def datagram_received(self, data: bytes, src) -> None:
        msg = parse_message(data)
        h = msg.headers
        if isinstance(msg, Request):
            self.seen.append((msg.method, msg.uri, h.get_all("Route")))
            if h.get_all("Route") and self.me in h.get_all("Route")[0]:
                h.pop_first("Route")
            top = Via.parse(h.get("Via"))
            top.params["received"] = src[0]
            top.params["rport"] = str(src[1])
            h.replace_first("Via", str(top))
            h.add("Via", f"SIP/2.0/UDP {IP}:{self.port};branch=z9hG4bK-p{top.branch}", first=True)
            h.set("Max-Forwards", str(int(h.get("Max-Forwards")) - 1))
            if msg.method == "INVITE":
                h.add("Record-Route", f"<{self.me}>", first=True)
            uri = parse_uri(msg.uri)
            dest = (uri.host, uri.port) if uri.host[0].isdigit() else self.callee
            self.t.sendto(msg.to_bytes(), dest)
        else:
            h.pop_first("Via")
            v = Via.parse(h.get("Via"))
            self.t.sendto(msg.to_bytes(), (v.params.get("received") or v.host, int(v.params.get("rport") or v.port)))


def test_call_through_record_routing_proxy_uses_route_set() -> None:
    async def main():
        async with two_uas("udp") as (a, b):
            loop = asyncio.get_running_loop()
            pt, proxy = await loop.create_datagram_endpoint(lambda: RecordRoutingProxy((IP, b.port)), local_addr=(IP, 0))
            try:
                res = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, proxy.port, "udp"), from_user="alice", media_seconds=0.4)
            finally:
                pt.close()
            return res, proxy, b.port, b.calls_answered[res.call_id]

    res, proxy, b_port, stats = run(main())
    assert res.ok and res.bye_status == 200, res
    assert stats.rtp_received > 0 and res.rtp_received > 0
    methods = [m for m, _, _ in proxy.seen]
    assert methods == ["INVITE", "ACK", "BYE"]
    invite, ack, bye = proxy.seen
    assert invite[2] == []  # no preloaded Route on the initial INVITE
    for _m, ruri, routes in (ack, bye):
        # loose routing: Request-URI = remote Contact, Route = Record-Route set
        assert ruri == f"sip:bob@{IP}:{b_port}"
        assert routes == [f"<{proxy.me}>"]
    assert all(f":{proxy.port} (udp)" in line for line in res.ladder)


# --------------------------------------------------------------------------- failures


def test_unreachable_udp_times_out_quickly() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((IP, 0))
    dead_port = s.getsockname()[1]
    s.close()

    async def main():
        async with two_uas("udp") as (a, _b):
            t0 = time.monotonic()
            res = await a.call("sip:nobody@corp.edgeway.test", proxy=(IP, dead_port, "udp"), from_user="alice", timer_t1=0.05, timeout_s=0.5)
            return res, time.monotonic() - t0

    res, elapsed = run(main())
    assert not res.ok and res.status == 408
    assert "timeout" in res.error and "Timer B" in res.error
    assert elapsed < 2.0
    sent = first_lines(res.ladder)
    # Timer A: 0, 50, 150, 350 ms → one original and three retransmissions
    assert sent.count("→ INVITE") == 4, res.ladder
    assert sum("retransmission" in line for line in res.ladder) == 3
    assert res.rtp_sent == 0 and res.setup_ms is None


def test_tcp_connection_refused_is_503() -> None:
    srv = socket.socket()
    srv.bind((IP, 0))
    dead_port = srv.getsockname()[1]
    srv.close()

    async def main():
        async with two_uas("tcp") as (a, _b):
            return await a.call("sip:nobody@corp.edgeway.test", proxy=(IP, dead_port, "tcp"), from_user="alice")

    res = run(main())
    assert not res.ok and res.status == 503 and "transport error" in res.error


def test_rejected_call_is_acked_hop_by_hop() -> None:
    async def main():
        async with two_uas("udp") as (a, b):
            b.answer_status = 486
            res = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "udp"), from_user="alice")
            stats = b.calls_received[res.call_id]
            acked = await wait_until(lambda: any(" ACK " in line for line in stats.ladder))
            return res, stats, acked, dict(b.calls_answered)

    res, stats, acked, answered = run(main())
    assert not res.ok and (res.status, res.reason) == (486, "Busy Here")
    assert res.error == "call rejected: 486 Busy Here"
    assert in_order(first_lines(res.ladder), ["→ INVITE", "← 180 Ringing (INVITE)", "← 486 Busy Here (INVITE)", "→ ACK"])
    assert acked and stats.status == 486 and stats.ended and not stats.answered
    assert res.call_id not in answered
    assert not any("retransmission" in line for line in stats.ladder)


def test_cancel_after_ringing_too_long() -> None:
    async def main():
        async with two_uas("udp") as (a, b):
            b.ring_seconds = 5.0
            t0 = time.monotonic()
            res = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "udp"), from_user="alice", timer_t1=0.05, timeout_s=0.3)
            elapsed = time.monotonic() - t0
            stats = b.calls_received[res.call_id]
            await wait_until(lambda: any(" ACK " in line for line in stats.ladder))
            return res, elapsed, stats, len(b.media_sessions), dict(b.calls_answered)

    res, elapsed, stats, open_media, answered = run(main())
    assert not res.ok and res.status == 487 and "cancelled" in res.error
    assert elapsed < 2.0
    assert in_order(
        first_lines(res.ladder),
        ["→ INVITE", "← 180 Ringing (INVITE)", "→ CANCEL", "← 200 OK (CANCEL)", "← 487 Request Terminated (INVITE)", "→ ACK"],
    ), res.ladder
    assert stats.status == 487 and stats.ended and not stats.answered
    assert any(" ACK " in line for line in stats.ladder)
    assert open_media == 0 and not answered


def test_concurrent_calls_get_distinct_rtp_ports() -> None:
    async def main():
        async with two_uas("udp") as (a, b):
            calls = [
                a.call(f"sip:bob{i}@corp.edgeway.test", proxy=(IP, b.port, "udp"), from_user=f"alice{i}", media_seconds=0.3)
                for i in range(3)
            ]
            results = await asyncio.gather(*calls)
            return results, [b.calls_answered[r.call_id] for r in results]

    results, stats = run(main())
    assert all(r.ok for r in results), results
    assert all(r.rtp_received > 0 and s.rtp_received > 0 for r, s in zip(results, stats))
    a_ports = {r.local_rtp[1] for r in results}
    b_ports = {s.local_rtp[1] for s in stats}
    assert len(a_ports) == 3 and len(b_ports) == 3
    assert all(p % 2 == 0 for p in a_ports | b_ports)
    assert len({r.call_id for r in results}) == 3


# --------------------------------------------------------------------------- robustness


def test_malformed_input_keepalives_and_options() -> None:
    async def main():
        ua = LabUserAgent("carol", IP, 0, transport="both", domain=DOMAIN, rtp_port_base=45000)
        await ua.start()
        loop = asyncio.get_running_loop()
        got: asyncio.Queue = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.put_nowait(data)

        ct, _ = await loop.create_datagram_endpoint(Client, local_addr=(IP, 0))
        cport = ct.get_extra_info("sockname")[1]
        try:
            dest = (IP, ua.port)
            ct.sendto(b"\x00\xff garbage \r\n\r\n", dest)
            ct.sendto(b"\r\n\r\n", dest)
            ct.sendto(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n\r\n", dest)  # stray, incomplete
            bad = (
                f"OPTIONS sip:carol@{IP} SIP/2.0\r\nVia: SIP/2.0/UDP {IP}:{cport};branch=z9hG4bKbad\r\n"
                "From: <sip:x@y>;tag=1\r\nTo: <sip:carol@y>\r\nCall-ID: bad1\r\nCSeq: 1 OPTIONS\r\n"
                "Max-Forwards: banana\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            ct.sendto(bad, dest)
            r400 = parse_message(await asyncio.wait_for(got.get(), 2))
            good = bad.replace(b"Max-Forwards: banana", b"Max-Forwards: 70").replace(b"z9hG4bKbad", b"z9hG4bKgood")
            ct.sendto(good, dest)
            r200 = parse_message(await asyncio.wait_for(got.get(), 2))
            # TCP: CRLFCRLF keepalive answered with CRLF, then OPTIONS on the same connection
            reader, writer = await asyncio.open_connection(IP, ua.port)
            writer.write(b"\r\n\r\n")
            pong = await asyncio.wait_for(reader.readexactly(2), 2)
            writer.write(good.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP").replace(b"z9hG4bKgood", b"z9hG4bKtcp"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            writer.close()
            return r400, r200, pong, head
        finally:
            ct.close()
            await ua.close()

    r400, r200, pong, head = run(main())
    assert r400.status == 400 and "Max-Forwards" in r400.reason
    assert r200.status == 200 and r200.to_tag and "INVITE" in r200.headers.get("Allow")
    assert pong == b"\r\n"
    assert head.startswith(b"SIP/2.0 200 OK\r\n")


def test_rtp_stream_and_rtcp_format() -> None:
    """The media endpoint sends RFC 3550 packets: V=2, PT 8, seq +1, ts +160 per
    20 ms, one SSRC, 160-byte payload; RTCP on port+1 is a valid compound SR."""

    async def main():
        ua = LabUserAgent("dave", IP, 0, domain=DOMAIN, rtp_port_base=46000)
        await ua.start()
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for port in range(47000, 48000, 2):
                try:
                    rtp.bind((IP, port))
                    rtcp.bind((IP, port + 1))
                    break
                except OSError:
                    rtp.close(), rtcp.close()
                    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.setblocking(False)
            rtcp.setblocking(False)
            media = ua.open_media()
            media.set_remote(parse_sdp(build_sdp("peer", 1, IP, rtp.getsockname()[1], [(8, "PCMA/8000")])), 8)
            media.start(0.2, 20)
            await media.done.wait()
            media.stop()
            await asyncio.sleep(0.05)
            pkts, reports = [], []
            with contextlib.suppress(BlockingIOError):
                while True:
                    pkts.append(rtp.recvfrom(2048))
            with contextlib.suppress(BlockingIOError):
                while True:
                    reports.append(rtcp.recv(2048))
            src_port = media.port
            media.close()
            return pkts, reports, src_port
        finally:
            rtp.close()
            rtcp.close()
            await ua.close()

    pkts, reports, src_port = run(main())
    assert 8 <= len(pkts) <= 11
    assert all(addr == (IP, src_port) for _, addr in pkts)  # sent from its own RTP socket
    hdrs = [parse_rtp_header(p) for p, _ in pkts]
    assert all(h is not None and h[0] == 8 for h in hdrs)
    assert all(len(p) == 12 + 160 and p[0] == 0x80 for p, _ in pkts)
    assert hdrs[0][4] and not any(h[4] for h in hdrs[1:])  # marker on the first packet only
    for prev, cur in zip(hdrs, hdrs[1:]):
        assert cur[1] == (prev[1] + 1) & 0xFFFF
        assert cur[2] == (prev[2] + 160) & 0xFFFFFFFF
        assert cur[3] == prev[3]
    assert len(reports) == 1  # the final SR + SDES + BYE (periodic ones start at 0.5 s)
    data = reports[0]
    types, off = [], 0
    while off < len(data):
        assert data[off] >> 6 == 2
        types.append(data[off + 1])
        off += (struct.unpack_from("!H", data, off + 2)[0] + 1) * 4
    assert off == len(data) and types == [200, 202, 203]
    ssrc, _ntp_s, _ntp_f, _ts, count, octets = struct.unpack_from("!IIIIII", data, 4)
    assert ssrc == hdrs[0][3] and count == len(pkts) and octets == 160 * len(pkts)


def test_sdp_helpers() -> None:
    body = build_sdp("alice", 42, "192.0.2.10", 40000, [(8, "PCMA/8000"), (0, "PCMU/8000"), (101, "telephone-event/8000")])
    text = body.decode()
    assert "m=audio 40000 RTP/AVP 8 0 101\r\n" in text and "a=fmtp:101 0-16" in text
    info = parse_sdp(body)
    assert (info.ip, info.port, info.pts) == ("192.0.2.10", 40000, [8, 0, 101])
    assert info.codec_name(101) == "telephone-event/8000" and info.ptime == 20
    # media-level c= wins; a=rtcp honoured; video stream ignored
    other = parse_sdp(
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        b"m=audio 5004 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\na=rtcp:6000\r\nm=video 5006 RTP/AVP 96\r\nc=IN IP4 10.0.0.3\r\n"
    )
    assert (other.ip, other.port, other.pts, other.rtcp_port) == ("10.0.0.2", 5004, [0], 6000)
    for bad in (b"v=0\r\n", b"m=audio 1 RTP/AVP 0\r\n", b"c=IN IP4 host.example\r\nm=audio 1 RTP/AVP 0\r\n"):
        with pytest.raises(ValueError):
            parse_sdp(bad)
    pkt = build_rtp_packet(8, 65535, 2**32 - 1, 0xDEADBEEF, b"x", marker=True)
    assert parse_rtp_header(pkt) == (8, 65535, 2**32 - 1, 0xDEADBEEF, True)
    assert parse_rtp_header(b"\x40" + b"\x00" * 11) is None


def test_callee_hangs_up_first() -> None:
    async def main():
        async with two_uas("tcp") as (a, b):
            async def hang_up_soon():
                assert await wait_until(lambda: bool(b.calls_answered), 2.0)
                await asyncio.sleep(0.3)
                return await b.hangup(next(iter(b.calls_answered)))

            t0 = time.monotonic()
            res, bye_status = await asyncio.gather(
                a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "tcp"), from_user="alice", media_seconds=5.0),
                hang_up_soon(),
            )
            return res, bye_status, time.monotonic() - t0, len(b.connections()), b.calls_answered[res.call_id]

    res, bye_status, elapsed, b_conns, stats = run(main())
    assert res.ok and res.status == 200 and res.bye_status is None and bye_status == 200
    assert elapsed < 2.0 and res.rtp_received > 0
    assert in_order(first_lines(res.ladder), ["→ ACK", "← BYE", "→ 200 OK (BYE)"]), res.ladder
    assert not any("→ BYE" in line for line in first_lines(res.ladder))
    assert b_conns == 1  # the callee's BYE reused the caller's connection
    assert stats.ended and stats.end_reason.startswith("local BYE")


def test_uas_retransmits_2xx_until_ack_then_hangs_up() -> None:
    """RFC 3261 §13.3.1.4: a retransmitted INVITE is absorbed by the server
    transaction; the 2xx is retransmitted (T1 doubling) and, with no ACK within
    64*T1, the UAS sends BYE."""

    async def main():
        ua = LabUserAgent("erin", IP, 0, domain=DOMAIN, rtp_port_base=48000, timer_t1=0.01)
        await ua.start()
        loop = asyncio.get_running_loop()
        got: asyncio.Queue = asyncio.Queue()

        class Peer(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.put_nowait(parse_message(data))

        pt, _ = await loop.create_datagram_endpoint(Peer, local_addr=(IP, 0))
        port = pt.get_extra_info("sockname")[1]
        sdp = build_sdp("peer", 1, IP, 49990, [(0, "PCMU/8000")])
        invite = (
            f"INVITE sip:erin@{IP}:{ua.port} SIP/2.0\r\nVia: SIP/2.0/UDP {IP}:{port};branch=z9hG4bKraw1\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:peer@{DOMAIN}>;tag=p1\r\nTo: <sip:erin@{DOMAIN}>\r\n"
            f"Call-ID: raw-call-1\r\nCSeq: 7 INVITE\r\nContact: <sip:peer@{IP}:{port}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
        ).encode() + sdp
        msgs = []
        try:
            pt.sendto(invite, (IP, ua.port))
            pt.sendto(invite, (IP, ua.port))  # retransmission
            while True:
                m = await asyncio.wait_for(got.get(), 3)
                msgs.append(m)
                if isinstance(m, Request) and m.method == "BYE":
                    pt.sendto(make_response(m, 200).to_bytes(), (IP, ua.port))
                    break
            assert await wait_until(lambda: ua.calls_received["raw-call-1"].ended)
            return msgs, ua.calls_received, port
        finally:
            pt.close()
            await ua.close()

    msgs, received, port = run(main())
    assert list(received) == ["raw-call-1"]
    oks = [m for m in msgs if not isinstance(m, Request) and m.status == 200]
    assert len(oks) >= 5  # original + retransmissions (10, 30, 70, 150, 310 ms…)
    assert all(m.to_tag == oks[0].to_tag and m.body == oks[0].body for m in oks)
    answer = parse_sdp(oks[0].body)
    assert answer.pts == [0]  # answers with the offered codec only
    bye = msgs[-1]
    assert bye.uri == f"sip:peer@{IP}:{port}"  # remote target = the INVITE's Contact
    assert bye.from_tag == oks[0].to_tag and bye.to_tag == "p1" and bye.call_id == "raw-call-1"
    assert received["raw-call-1"].end_reason == "local BYE (no ACK)"


# --------------------------------------------------------------------------- TLS and SRTP


def _pki(tmp_path, *, other_ca: bool = False):
    """A throw-away lab PKI: ``alice`` and ``bob`` certificates (serverAuth +
    clientAuth) from one CA; with ``other_ca`` also ``mallory`` from another CA."""
    from edgeway.security.pki import write_lab_pki

    out = write_lab_pki(tmp_path / "pki", {
        "alice": {"common_name": "alice.corp.edgeway.test", "ip_sans": [IP]},
        "bob": {"common_name": "bob.corp.edgeway.test", "dns_sans": ["bob.corp.edgeway.test", "svc.corp.edgeway.test"],
                "ip_sans": [IP]},
    })
    if other_ca:
        out.update(write_lab_pki(tmp_path / "pki-other", {"mallory": {"common_name": "alice.corp.edgeway.test"}}))
    return out


def _tls_ua(name: str, pki: dict, rtp_base: int, **kw) -> LabUserAgent:
    certs = pki[name]
    return LabUserAgent(name, IP, 0, transport="tls", domain=DOMAIN, rtp_port_base=rtp_base,
                        tls_cert=certs["cert"], tls_key=certs["key"], tls_ca=kw.pop("tls_ca", certs["ca"]), **kw)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_mutual_tls_srtp_call(tmp_path, loop_kind: str) -> None:
    pki = _pki(tmp_path)

    async def main():
        a = _tls_ua("alice", pki, 50000, srtp=True, tls_server_name="svc.corp.edgeway.test")
        b = _tls_ua("bob", pki, 52000, srtp=True, tls_require_client_cert=True)
        async with a, b:
            res = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "tls"), from_user="alice",
                               media_seconds=0.6)
            stats = await b.wait_call_ended(res.call_id, 3.0)
            conns = [(c.transport, c.peer_names) for c in b.connections()]
            a_conns = len(a.connections())
        return res, stats, conns, a_conns, b.port

    res, stats, conns, a_conns, b_port = run(main(), loop_kind)
    assert res.ok and res.bye_status == 200, res
    assert res.transport == stats.transport == "tls"
    assert all(f"{IP}:{b_port} (tls)" in line for line in res.ladder), res.ladder
    assert in_order(first_lines(res.ladder), ["→ INVITE", "← 200 OK (INVITE)", "→ ACK", "→ BYE", "← 200 OK (BYE)"])
    # one connection, reused for the ACK and the BYE; the server saw the client's certificate
    assert a_conns == 1
    assert conns == [("tls", ["alice.corp.edgeway.test", "alice.corp.edgeway.test"])]
    # SRTP both ways: counters count packets that authenticated and decrypted
    for side in (res, stats):
        assert side.srtp and side.srtp_suite.startswith("AES_CM_128_HMAC_SHA1_80"), side
        assert side.srtp_auth_failures == 0 and side.srtp_errors == 0
        assert side.rtp_received >= 20 and side.rtcp_received >= 1
    assert res.rtp_lost == 0 and stats.rtp_lost == 0


def test_srtp_offer_and_answer_on_the_wire_and_auth_failures(tmp_path) -> None:
    """The INVITE offers RTP/SAVP with SDES lines; a callee without ``srtp`` answers
    it with one a=crypto; a plain offer to an ``srtp`` callee gets 488; a stream
    keyed with the wrong key is dropped and counted as authentication failures."""

    async def main():
        async with two_uas("udp") as (a, b):
            a.srtp = True
            res = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "udp"), from_user="alice",
                               media_seconds=0.4)
            stats = await b.wait_call_ended(res.call_id, 3.0)
            a.srtp, b.srtp = False, True
            rejected = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "udp"), from_user="alice")
            # wrong keys: each side unprotects with a key the other did not use
            from edgeway.sip.sdes import make_offer

            m1, m2 = a.open_media(), b.open_media()
            k1, k2, k3 = make_offer()[:3]
            m1.key_srtp(k1, k2)
            m2.key_srtp(k3, k1)  # m2 sends with k3, m1 expects k2
            sdp = lambda m: parse_sdp(build_sdp("x", 1, IP, m.port, [(8, "PCMA/8000")]))
            m1.set_remote(sdp(m2), 8)
            m2.set_remote(sdp(m1), 8)
            m1.start(0.3), m2.start(0.3)
            await asyncio.gather(m1.done.wait(), m2.done.wait())
            await asyncio.sleep(0.05)
            counts = (m1.rtp_received, m1.srtp_auth_failures, m2.rtp_received, m2.srtp_auth_failures)
            m1.close(), m2.close()
            return res, stats, rejected, counts

    res, stats, rejected, counts = run(main())
    assert res.ok and res.srtp and stats.srtp, (res, stats)
    assert res.rtp_received > 0 and stats.rtp_received > 0
    assert res.srtp_auth_failures == stats.srtp_auth_failures == 0
    assert not rejected.ok and rejected.status == 488 and "SRTP required" in rejected.reason
    m1_rx, m1_auth, m2_rx, m2_auth = counts
    assert m1_rx == 0 and m1_auth >= 10  # k3-protected packets fail against k2
    assert m2_rx >= 10 and m2_auth == 0  # k1 is right for m2


def test_srtp_sdp_helpers() -> None:
    from edgeway.sip.sdes import make_offer

    offer = make_offer()
    body = build_sdp("alice", 1, IP, 40000, [(8, "PCMA/8000")], crypto=offer).decode()
    assert "m=audio 40000 RTP/SAVP 8\r\n" in body
    assert body.count("a=crypto:") == len(offer) and f"a=crypto:{offer[0]}\r\n" in body
    info = parse_sdp(body.encode())
    assert info.savp and info.proto == "RTP/SAVP"
    assert [str(a) for a in info.crypto_attributes()] == [str(a) for a in offer]
    plain = parse_sdp(build_sdp("alice", 1, IP, 40000, [(8, "PCMA/8000")]))
    assert not plain.savp and plain.crypto == []


def test_tls_rejects_untrusted_client_and_wrong_server_name(tmp_path) -> None:
    pki = _pki(tmp_path, other_ca=True)

    async def main():
        b = _tls_ua("bob", pki, 52000, tls_require_client_cert=True)
        # mallory's certificate comes from another CA: bob's handshake fails
        m = _tls_ua("mallory", pki, 50000, tls_ca=pki["bob"]["ca"])
        # alice trusts the CA but wants another name than bob's certificate carries
        a = _tls_ua("alice", pki, 50100, tls_server_name="nobody.corp.edgeway.test")
        async with b, m, a:
            t0 = time.monotonic()
            untrusted = await m.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "tls"), from_user="mallory",
                                     timer_t1=0.05, timeout_s=1.0)
            wrong_name = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "tls"), from_user="alice")
            elapsed = time.monotonic() - t0
            received = dict(b.calls_received)
        return untrusted, wrong_name, elapsed, received

    untrusted, wrong_name, elapsed, received = run(main())
    # TLS 1.3: mallory's handshake "succeeds" and bob's rejection arrives on the first
    # read; the INVITE transaction fails at once with 503 (RFC 3261 §17.1.4), no Timer B
    assert not untrusted.ok and untrusted.status == 503 and "transport error" in untrusted.error, untrusted
    assert not wrong_name.ok and wrong_name.status == 503
    assert "nobody.corp.edgeway.test" in wrong_name.error and "bob.corp.edgeway.test" in wrong_name.error
    assert received == {} and elapsed < 0.9


def test_tls_keepalive_and_options(tmp_path) -> None:
    """CRLFCRLF over TLS gets a CRLF; an OPTIONS on the same connection gets 200."""
    import ssl as _ssl

    from edgeway.security.tls import client_context

    pki = _pki(tmp_path)

    async def main():
        b = _tls_ua("bob", pki, 52000, tls_require_client_cert=True)
        async with b:
            ctx = client_context(pki["alice"]["cert"], pki["alice"]["key"], pki["alice"]["ca"])
            reader, writer = await asyncio.open_connection(IP, b.port, ssl=ctx, server_hostname=IP)
            try:
                writer.write(b"\r\n\r\n")
                pong = await asyncio.wait_for(reader.readexactly(2), 2)
                port = writer.get_extra_info("sockname")[1]
                writer.write((
                    f"OPTIONS sip:bob@{IP}:{b.port} SIP/2.0\r\nVia: SIP/2.0/TLS {IP}:{port};branch=z9hG4bKtls1\r\n"
                    "Max-Forwards: 70\r\nFrom: <sip:alice@corp.edgeway.test>;tag=1\r\nTo: <sip:bob@corp.edgeway.test>\r\n"
                    "Call-ID: tls-opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            # without a client certificate the handshake is refused
            bare = client_context(None, None, pki["alice"]["ca"])
            refused = False
            try:
                r2, w2 = await asyncio.open_connection(IP, b.port, ssl=bare, server_hostname=IP)
                w2.write(b"\r\n\r\n")
                refused = await asyncio.wait_for(r2.read(2), 2) == b""
                w2.close()
            except (_ssl.SSLError, ConnectionError, OSError):
                refused = True
        return pong, head, refused

    pong, head, refused = run(main())
    assert pong == b"\r\n"
    assert head.startswith(b"SIP/2.0 200 OK\r\n") and b"SIP/2.0/TLS" in head
    assert refused


def test_tls_client_only_ua_calls_a_tls_server(tmp_path) -> None:
    """A TLS UA without a certificate (``edgeway call --transport tls --ca …``) has no
    listener but places calls over its own connection."""
    pki = _pki(tmp_path)

    async def main():
        b = _tls_ua("bob", pki, 52000)
        a = LabUserAgent("alice", IP, 0, transport="tls", domain=DOMAIN, rtp_port_base=50000, tls_ca=pki["bob"]["ca"],
                         tls_server_name="bob.corp.edgeway.test")
        async with b, a:
            res = await a.call("sip:bob@corp.edgeway.test", proxy=(IP, b.port, "tls"), from_user="alice",
                               media_seconds=0.3)
        return res

    res = run(main())
    assert res.ok and res.bye_status == 200 and res.rtp_received > 0, res
    assert "bob.corp.edgeway.test" in res.tls_peer_names


# --------------------------------------------------------------------------- registration


def test_register_over_tls_refresh_invite_on_the_flow_and_unregister_on_close(tmp_path) -> None:
    """UserAgent.register against a TLS registrar stand-in (the product's sans-IO
    Registrar behind a raw TLS server): the digest challenge is answered once, the binding
    is refreshed before it expires (2 s granted: refreshed after 1 s, with the cached
    nonce), an INVITE the server sends down the registration's connection is answered on
    it (the Contact's port is never dialled), and close() removes the binding."""
    import ssl

    from edgeway.registrar import Registrar
    from edgeway.sip.message import Response, StreamFramer

    pki = _pki(tmp_path)
    registrar = Registrar(["remote.test"], users={"carol": "pw"}, realm="remote.test", min_expires_s=1)

    async def main():
        loop = asyncio.get_running_loop()
        seen: list = []  # (time, message) the server received
        conns: list = []
        answered: asyncio.Event = asyncio.Event()

        async def serve(reader, writer):
            conns.append(writer)
            framer = StreamFramer()
            while data := await reader.read(65536):
                for m in framer.feed(data):
                    if not isinstance(m, (Request, Response)):
                        continue  # keepalives
                    seen.append((loop.time(), m))
                    if isinstance(m, Request) and m.method == "REGISTER":
                        writer.write(registrar.register(m, None, loop.time()).to_bytes())
                    elif not isinstance(m, Request) and m.status == 200 and m.cseq[1] == "INVITE":
                        answered.set()

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki["bob"]["cert"], pki["bob"]["key"])
        server = await asyncio.start_server(serve, IP, 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        ua = LabUserAgent("carol", IP, 0, transport="tls", domain="remote.test", rtp_port_base=53000,
                          tls_ca=pki["bob"]["ca"], tls_server_name="bob.corp.edgeway.test")
        try:
            await ua.start()
            bad = await ua.register("carol", "remote.test", proxy=(IP, port, "tls"), password="wrong", expires=2)
            res = await ua.register("carol", "remote.test", proxy=(IP, port, "tls"), password="pw", expires=2)
            t_bound = loop.time()
            assert res.ok, res
            await asyncio.sleep(1.5)  # the refresh is due after 1 s
            refreshed = [m for t, m in seen if isinstance(m, Request) and t > t_bound]
            sdp = build_sdp("alice", 1, IP, 49994, [(0, "PCMU/8000")])
            contact = registrar.lookup("sip:carol@remote.test", loop.time())[0].contact
            invite = (f"INVITE {contact} SIP/2.0\r\nVia: SIP/2.0/TLS {IP}:{port};branch=z9hG4bKreg1\r\n"
                      f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:carol@remote.test>\r\n"
                      f"Call-ID: reg-call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{IP}:{port};transport=tls>\r\n"
                      f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n").encode() + sdp
            conns[-1].write(invite)
            await asyncio.wait_for(answered.wait(), 3)
            stats = ua.calls_answered["reg-call-1"]
            bound_before_close = len(registrar.lookup("sip:carol@remote.test", loop.time()))
            n_conns = len(ua.connections())
        finally:
            await ua.close()
            await asyncio.sleep(0.1)
            server.close()
            for w in conns:
                w.close()
        return bad, res, refreshed, stats, bound_before_close, n_conns, seen

    bad, res, refreshed, stats, bound_before_close, n_conns, seen = run(main())
    assert not bad.ok and bad.status == 401 and "refused our credentials" in bad.error and bad.challenges == 1
    assert res.challenges == 1 and res.expires == 2 and res.algorithm == "SHA-256"
    assert [m.headers.get("Expires") for m in refreshed] == ["2"], refreshed  # one refresh, no new challenge
    assert refreshed[0].headers.get("Authorization") and "nc=00000002" in refreshed[0].headers.get("Authorization")
    assert stats.transport == "tls" and tuple(stats.sip_local) == res.local and n_conns == 1
    assert bound_before_close == 1 and registrar.lookup("sip:carol@remote.test", time.monotonic() + 1e6) == []
    last = [m for _, m in seen if isinstance(m, Request) and m.method == "REGISTER"][-1]
    assert last.headers.get("Expires") == "0" and last.call_id == refreshed[0].call_id
    registers = [m for _, m in seen if isinstance(m, Request) and m.method == "REGISTER"]
    assert len(registers) == 2 + 2 + 1 + 1  # wrong password: 2; bind: 2; refresh: 1; un-register: 1
