"""Behaviour of the stateful proxy (RFC 3261 §16) over real loopback sockets.

Each test starts one in-process node (``Node(parse_config(...))``) listening on
127.0.0.21:5060 (UDP and TCP) and talks to it with LabUserAgents or raw sockets on
127.0.0.23–29 (DNS on 127.0.0.30), asserting on the messages that really arrive.
Timers are short (T1 = 50 ms) where a timeout is exercised; every scenario is
bounded by ``asyncio.wait_for`` and closes what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from typing import Any, Self

from edgeway.config import parse_config
from edgeway.diag.events import EventLog
from edgeway.lab.dns_server import LabDnsServer, records_from_text
from edgeway.lab.ua import LabUserAgent
from edgeway.node import Node
from edgeway.proxy.driver import SHED_TAG
from edgeway.sip import sdp as sdpmod
from edgeway.sip.message import Request, Response, Via, make_response, parse_message
from edgeway.sip.uri import parse_name_addr

NODE_IP = "127.0.0.21"
NODE_PORT = 5060
CALLER_IP = "127.0.0.24"
CALLEE_IP = "127.0.0.23"
DNS_IP = "127.0.0.30"
DOMAIN = "corp.edgeway.test"
BOUND = 15.0  # seconds any one scenario may take
MEDIA_MIN, MEDIA_MAX = 36000, 59999  # the node's default relay port range
FAST_TIMERS = {"t1_ms": 50, "t2_ms": 400}


# ============================================================================ helpers


def run(coro) -> Any:
    return asyncio.run(asyncio.wait_for(coro, BOUND))


class RecordingEvents(EventLog):
    """An event log that keeps the events in memory (for failure messages)."""

    def __init__(self, node: str = "proxytest"):
        super().__init__(node, stream=None, sip_messages=True)
        self._fh = None
        self.records: list[dict] = []

    def emit(self, event: str, **fields: Any) -> None:
        super().emit(event, **fields)
        self.records.append({"event": event, **fields})


def node_config(*, zones: list[dict] | None = None, rules: list[dict] | None = None, timers: dict | None = None,
                dns_servers: list[str] | None = None, role: str = "core") -> dict:
    cfg: dict[str, Any] = {
        "role": role,
        "name": "proxytest",
        "sip": {"listen_ip": NODE_IP, "udp_port": NODE_PORT, "tcp_port": NODE_PORT, "tls_port": 0},
        "log": {"file": None, "sip_messages": False},
        "zones": zones or [],
        "search_rules": rules or [],
    }
    if timers:
        cfg["timers"] = timers
    if dns_servers:
        cfg["dns"] = {"servers": dns_servers, "timeout_s": 1.0}
    return cfg


def any_alias_rule(zone: str, name: str = "to target", **kw: Any) -> dict:
    return {"name": name, "priority": 10, "mode": "any_alias", "target_zone": zone, **kw}


def partner_config(peer: Any, **kw: Any) -> dict:
    """A node whose every request goes to the UDP neighbour zone "Partner Proxy" at ``peer``."""
    return node_config(zones=[{"name": "Partner Proxy", "type": "neighbour", "host": peer.ip, "port": peer.port, "transport": "udp"}],
                       rules=[any_alias_rule("Partner Proxy")], **kw)


@contextlib.asynccontextmanager
async def running_node(cfg: dict):
    events = RecordingEvents()
    node = Node(parse_config(cfg), events)
    try:
        await node.start()
        yield node
    finally:
        await node.close()


class RecordingUA(LabUserAgent):
    """A LabUserAgent that keeps every SIP message it receives (``received``)."""

    def __init__(self, *a: Any, **kw: Any):
        kw.setdefault("timer_t1", 0.05)
        super().__init__(*a, **kw)
        self.received: list[Request | Response] = []

    def _dispatch(self, msg, flow) -> None:  # type: ignore[override]
        self.received.append(msg)
        super()._dispatch(msg, flow)

    def requests(self, method: str, call_id: str | None = None) -> list[Request]:
        return [m for m in self.received if isinstance(m, Request) and m.method == method
                and (call_id is None or m.call_id == call_id)]

    def responses(self, call_id: str | None = None, method: str | None = None) -> list[Response]:
        return [m for m in self.received if isinstance(m, Response)
                and (call_id is None or m.call_id == call_id) and (method is None or m.cseq[1] == method)]


@contextlib.asynccontextmanager
async def uas(*agents: LabUserAgent):
    started: list[LabUserAgent] = []
    try:
        for a in agents:
            await a.start()
            started.append(a)
        yield agents
    finally:
        for a in reversed(started):
            await a.close()


def caller(transport: str = "udp", ip: str = CALLER_IP) -> RecordingUA:
    return RecordingUA("alice", ip, 0, transport=transport, domain=DOMAIN, rtp_port_base=41000)


def callee(transport: str = "udp", ip: str = CALLEE_IP, name: str = "bob") -> RecordingUA:
    return RecordingUA(name, ip, 0, transport=transport, domain="partner.edgeway.test", rtp_port_base=43000)


def vias(msg) -> list[Via]:
    return [Via.parse(v) for v in msg.headers.get_all("Via")]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue):
        self.queue = queue

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait((data, addr))


class UdpPeer:
    """A raw UDP SIP peer: sends bytes, returns what arrives, parsed."""

    def __init__(self, ip: str):
        self.ip = ip
        self.port = 0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self.queue), local_addr=(self.ip, 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.transport is not None:
            self.transport.close()
        await asyncio.sleep(0)

    def send(self, data: bytes, addr: tuple[str, int] = (NODE_IP, NODE_PORT)) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def recv(self, timeout: float = 2.0) -> tuple[Request | Response, tuple[str, int]]:
        data, addr = await asyncio.wait_for(self.queue.get(), timeout)
        return parse_message(data), addr

    async def recv_raw(self, timeout: float = 2.0) -> bytes:
        data, _ = await asyncio.wait_for(self.queue.get(), timeout)
        return data

    async def final(self, call_id: str, timeout: float = 3.0, method: str | None = None) -> tuple[list[Response], Response]:
        """Responses for ``call_id`` (and ``method`` when given) until the first final
        one: (provisionals, final).
        A non-2xx final to an INVITE is ACKed (same branch, RFC 3261 §17.1.1.3)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        prov: list[Response] = []
        while True:
            msg, addr = await self.recv(max(0.01, end - loop.time()))
            if not isinstance(msg, Response) or msg.call_id != call_id or (method and msg.cseq[1] != method):
                continue
            if msg.status < 200:
                prov.append(msg)
                continue
            if msg.cseq[1] == "INVITE" and msg.status >= 300:
                self.send(ack_for(msg), addr)
            return prov, msg

    async def quiet(self, seconds: float) -> list[bytes]:
        """Everything that arrives within ``seconds``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        out = []
        while (left := end - loop.time()) > 0:
            try:
                out.append(await self.recv_raw(left))
            except TimeoutError:
                break
        return out


def build_request(method: str, ruri: str, *, via: str, call_id: str | None = None, cseq: int = 1,
                  to: str | None = None, to_tag: str | None = None, extra: list[tuple[str, str]] | None = None,
                  body: bytes = b"", max_forwards: int | None = 70, contact: str | None = None) -> tuple[bytes, str]:
    """Bytes of a request and its Call-ID. ``via`` is the whole Via value."""
    call_id = call_id or f"{secrets.token_hex(8)}@test"
    to_hdr = f"<{to or ruri}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [f"{method} {ruri} SIP/2.0", f"Via: {via}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [f"From: <sip:alice@{DOMAIN}>;tag={secrets.token_hex(4)}", f"To: {to_hdr}",
              f"Call-ID: {call_id}", f"CSeq: {cseq} {method}"]
    if contact:
        lines.append(f"Contact: {contact}")
    for n, v in extra or []:
        lines.append(f"{n}: {v}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, call_id


def udp_via(peer: UdpPeer, rport: bool = True) -> str:
    return f"SIP/2.0/UDP {peer.ip}:{peer.port};branch=z9hG4bK{secrets.token_hex(6)}" + (";rport" if rport else "")


def ack_for(resp: Response) -> bytes:
    """The hop-by-hop ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    top = resp.headers.get_all("Via")[0]
    ruri = str(parse_name_addr(resp.headers.get("To") or "").uri)
    lines = [f"ACK {ruri} SIP/2.0", f"Via: {top}", "Max-Forwards: 70",
             f"From: {resp.headers.get('From')}", f"To: {resp.headers.get('To')}",
             f"Call-ID: {resp.call_id}", f"CSeq: {resp.cseq[0]} ACK", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def offer_sdp(ip: str, audio_port: int, video_port: int | None = None) -> bytes:
    lines = ["v=0", f"o=alice 1 1 IN IP4 {ip}", "s=-", f"c=IN IP4 {ip}", "t=0 0",
             f"m=audio {audio_port} RTP/AVP 8 0", "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000", "a=sendrecv"]
    if video_port is not None:
        lines += [f"m=video {video_port} RTP/AVP 96", "a=rtpmap:96 H264/90000"]
    return ("\r\n".join(lines) + "\r\n").encode()


def media_of(body: bytes) -> list[tuple[str, str | None, int]]:
    """``(media type, connection address, port)`` per m= line of an SDP body."""
    desc = sdpmod.SessionDescription.parse(body)
    out = []
    for m in desc.media:
        conn = m.connection or desc.connection
        out.append((m.media, conn.address if conn else None, m.port))
    return out


def unused_tcp_port(ip: str) -> int:
    """A port on ``ip`` with nothing listening (connects are refused)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ============================================================== 1. forwarding and Via


def _neighbour_call(in_transport: str, out_transport: str) -> dict:
    """alice (``in_transport``, in zone "Inside Phones") calls bob through the node;
    bob sits in the neighbour zone "Partner Proxy" reached over ``out_transport``."""

    async def scenario() -> dict:
        alice, bob = caller(in_transport), callee(out_transport)
        async with uas(alice, bob):
            cfg = node_config(
                zones=[
                    {"name": "Partner Proxy", "type": "neighbour", "host": CALLEE_IP, "port": bob.port, "transport": out_transport},
                    {"name": "Inside Phones", "type": "neighbour", "host": CALLER_IP, "port": 5060, "transport": in_transport},
                ],
                rules=[any_alias_rule("Partner Proxy", source_zone="Inside Phones")],
            )
            async with running_node(cfg) as node:
                result = await alice.call("sip:bob@partner.edgeway.test", proxy=(NODE_IP, NODE_PORT, in_transport),
                                          from_user="alice", media_seconds=0.3, timer_t1=0.1)
                await asyncio.sleep(0.05)
                return {"result": result, "alice": alice, "bob": bob, "relay_after": len(node.relay),
                        "calls_after": dict(node.proxy.media.calls)}

    return run(scenario())


def _rr_hostport(value: str) -> str:
    """A Record-Route value's URI without its user part (a flow token)."""
    return str(parse_name_addr(value).uri.copy(user=None))


def _assert_forwarded_invite(out: dict, in_transport: str, out_transport: str) -> Request:
    result, alice, bob = out["result"], out["alice"], out["bob"]
    assert result.ok, (result, result.ladder)
    invites = bob.requests("INVITE", result.call_id)
    assert invites, bob.log
    inv = invites[0]
    top, prev = vias(inv)[:2]
    # Our Via: magic cookie branch, the egress zone with its spaces removed, our listener.
    assert top.branch.startswith("z9hG4bK"), top
    assert top.params.get("egress-zone") == "PartnerProxy", top
    assert (top.transport, top.host, top.port) == (out_transport.upper(), NODE_IP, NODE_PORT)
    # The caller's Via: received/rport stamped (it asked for rport), ingress zone tagged.
    assert prev.host == CALLER_IP
    assert prev.params.get("received") == CALLER_IP
    if in_transport == "udp":
        assert prev.params.get("rport") == str(alice.port)
    assert prev.params.get("ingress-zone") == "InsidePhones", prev
    assert inv.headers.get("Max-Forwards") == "69"
    # 100 Trying went back upstream for the INVITE.
    assert any(r.status == 100 for r in alice.responses(result.call_id, "INVITE")), alice.log
    return inv


def test_forward_udp_in_tcp_out_two_record_routes() -> None:
    out = _neighbour_call("udp", "tcp")
    inv = _assert_forwarded_invite(out, "udp", "tcp")
    rr = inv.headers.get_all("Record-Route")
    # Ingress and egress differ (RFC 5658 double Record-Route): egress on top; the entry
    # facing the TCP connection names it with a flow token (RFC 5626 §5.3 style).
    assert [_rr_hostport(r) for r in rr] == [
        f"sip:{NODE_IP}:{NODE_PORT};transport=tcp;lr",
        f"sip:{NODE_IP}:{NODE_PORT};transport=udp;lr",
    ], rr
    assert parse_name_addr(rr[0]).uri.user.startswith("ew") and parse_name_addr(rr[1]).uri.user is None, rr
    # The in-dialog BYE followed the route set through the node, which removed both of
    # its Route entries, and the call's relay sessions were freed.
    result, bob = out["result"], out["bob"]
    assert result.bye_status == 200, result.ladder
    byes = bob.requests("BYE", result.call_id)
    assert byes and not byes[0].headers.get_all("Route"), byes
    assert vias(byes[0])[0].host == NODE_IP and len(vias(byes[0])) == 2
    assert out["relay_after"] == 0 and not out["calls_after"]


def test_forward_same_transport_one_record_route() -> None:
    out = _neighbour_call("udp", "udp")
    inv = _assert_forwarded_invite(out, "udp", "udp")
    rr = inv.headers.get_all("Record-Route")
    assert [str(parse_name_addr(r).uri) for r in rr] == [f"sip:{NODE_IP}:{NODE_PORT};transport=udp;lr"], rr
    assert out["result"].bye_status == 200
    assert out["relay_after"] == 0


def test_forward_tcp_in_tcp_out_two_record_routes_with_flow_tokens() -> None:
    """Both sides are connections: each Record-Route entry names its own connection by
    a flow token, so the entries differ and both are inserted (RFC 5658, RFC 5626 §5.3);
    in-dialog requests then travel on the connection of the side they go to."""
    out = _neighbour_call("tcp", "tcp")
    inv = _assert_forwarded_invite(out, "tcp", "tcp")
    rr = inv.headers.get_all("Record-Route")
    assert [_rr_hostport(r) for r in rr] == [f"sip:{NODE_IP}:{NODE_PORT};transport=tcp;lr"] * 2, rr
    users = [parse_name_addr(r).uri.user for r in rr]
    assert all(u and u.startswith("ew") for u in users) and users[0] != users[1], rr
    assert out["result"].bye_status == 200
    assert out["relay_after"] == 0


# ===================================================== 2. no route, unreachable, timeout


def test_no_matching_search_rule_is_404_policy_response() -> None:
    """(On an edge-role node: the same proxy code as the core.) The 404 to a DefaultZone
    source over UDP is immediate and stateless (issue 7 item 3): no 100 Trying, no server
    transaction kept, no retransmission even when no ACK comes, a To tag whose ACK the
    node drops unread."""

    async def scenario() -> None:
        cfg = node_config(
            zones=[{"name": "Partner Proxy", "type": "neighbour", "host": CALLEE_IP, "port": 5999, "transport": "udp"}],
            rules=[{"name": "partner only", "priority": 10, "pattern_type": "regex", "pattern": r".*@partner\.test",
                    "target_zone": "Partner Proxy"}],
            role="edge",
        )
        async with running_node(cfg) as node, UdpPeer(CALLER_IP) as peer:
            data, cid = build_request("INVITE", "sip:nobody@elsewhere.test", via=udp_via(peer),
                                      contact=f"<sip:alice@{peer.ip}:{peer.port}>")
            peer.send(data)
            got = [parse_message(d) for d in await peer.quiet(1.2)]  # Timer G would fire at 0.5 s
            assert [r.status for r in got] == [404], got
            final = got[0]
            assert final.headers.get("Warning") == f'399 {NODE_IP} "Policy Response"'
            assert final.to_tag.startswith(SHED_TAG)
            assert len(node.proxy.core.table) == 0
            peer.send(ack_for(final))
            await asyncio.sleep(0.1)
            assert not [r for r in node.events.records if r["event"] == "ack dropped"]

    run(scenario())


def test_unreachable_tcp_neighbour_is_503() -> None:
    async def scenario() -> None:
        dead = unused_tcp_port("127.0.0.25")
        cfg = node_config(
            zones=[{"name": "Dead Proxy", "type": "neighbour", "host": "127.0.0.25", "port": dead, "transport": "tcp"}],
            rules=[any_alias_rule("Dead Proxy")],
        )
        async with running_node(cfg) as node, UdpPeer(CALLER_IP) as peer:
            data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer), body=offer_sdp(peer.ip, 41000),
                                      contact=f"<sip:alice@{peer.ip}:{peer.port}>")
            peer.send(data)
            _prov, final = await peer.final(cid)
            assert final.status == 503, final
            assert any(e["event"] == "connect failed" for e in node.events.records)
            assert len(node.relay) == 0

    run(scenario())


def test_silent_udp_neighbour_is_408_after_64_t1() -> None:
    async def scenario() -> None:
        async with UdpPeer("127.0.0.26") as silent, UdpPeer(CALLER_IP) as peer:
            cfg = node_config(
                zones=[{"name": "Silent Proxy", "type": "neighbour", "host": silent.ip, "port": silent.port, "transport": "udp"}],
                rules=[any_alias_rule("Silent Proxy")],
                timers=FAST_TIMERS,
            )
            async with running_node(cfg) as node:
                loop = asyncio.get_running_loop()
                data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer), body=offer_sdp(peer.ip, 41000),
                                          contact=f"<sip:alice@{peer.ip}:{peer.port}>")
                t0 = loop.time()
                peer.send(data)
                prov, final = await peer.final(cid, timeout=8)
                elapsed = loop.time() - t0
                assert [p.status for p in prov] == [100]
                assert final.status == 408, final
                assert 64 * 0.05 - 0.1 <= elapsed < 64 * 0.05 + 1.5, elapsed
                # Timer A retransmitted the INVITE to the silent neighbour (T1, 2T1, 4T1…).
                got = [parse_message(d) for d in await silent.quiet(0.05)]
                invites = [m for m in got if isinstance(m, Request) and m.method == "INVITE"]
                assert len(invites) >= 5, len(invites)
                assert len({vias(m)[0].branch for m in invites}) == 1
                assert len(node.relay) == 0

    run(scenario())


# ========================================================== 3. request validation (§16.3)


def test_request_validation_483_420_416() -> None:
    async def scenario() -> None:
        async with UdpPeer(CALLEE_IP) as target, UdpPeer(CALLER_IP) as peer:
            cfg = partner_config(target)
            async with running_node(cfg):
                contact = f"<sip:alice@{peer.ip}:{peer.port}>"
                # Max-Forwards 0 on an INVITE: 483 Too Many Hops (after the 100).
                data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer), max_forwards=0, contact=contact)
                peer.send(data)
                _prov, final = await peer.final(cid)
                assert (final.status, final.reason) == (483, "Too Many Hops"), final
                # An unknown Proxy-Require option: 420 naming it in Unsupported.
                data, cid = build_request("OPTIONS", "sip:bob@partner.test", via=udp_via(peer),
                                          extra=[("Proxy-Require", "x-teleport")])
                peer.send(data)
                _prov, final = await peer.final(cid)
                assert final.status == 420, final
                assert final.headers.get("Unsupported") == "x-teleport"
                # A Request-URI scheme the proxy does not route: 416.
                data, cid = build_request("INVITE", "mailto:bob@partner.test", via=udp_via(peer), contact=contact)
                peer.send(data)
                _prov, final = await peer.final(cid)
                assert final.status == 416, final
                # Max-Forwards 1 is still forwarded, with 0.
                data, cid = build_request("OPTIONS", "sip:bob@partner.test", via=udp_via(peer), max_forwards=1)
                peer.send(data)
                fwd, _ = await target.recv()
                assert isinstance(fwd, Request) and fwd.call_id == cid and fwd.headers.get("Max-Forwards") == "0"
                # None of the rejected requests reached the neighbour.
                assert not [d for d in await target.quiet(0.2) if b"OPTIONS" not in d.split(b"\r\n", 1)[0]]

    run(scenario())


async def _raw_dialog(peer: "UdpPeer", target: "UdpPeer") -> tuple[Response, tuple[str, int]]:
    """Set up a dialog through the node between two raw UDP peers (``peer`` calls,
    ``target`` is the "Partner Proxy" neighbour and answers 200): returns the 200 as the
    caller received it and the node's address it came from."""
    data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer),
                              contact=f"<sip:alice@{peer.ip}:{peer.port}>")
    peer.send(data)
    inv, addr = await target.recv()
    ok = make_response(inv, 200, to_tag="dlg1", extra=[("Contact", f"<sip:bob@{target.ip}:{target.port}>")])
    for rr in inv.headers.get_all("Record-Route"):
        ok.headers.add("Record-Route", rr)
    target.send(ok.to_bytes(), addr)
    _prov, final = await peer.final(cid)
    assert final.status == 200, final
    return final, addr


def _in_dialog_request(method: str, ok: Response, peer: "UdpPeer", *, max_forwards: int = 70, cseq: int = 1,
                       ruri: str | None = None) -> bytes:
    """A request of the caller inside the dialog of 2xx ``ok``: Route from its
    Record-Route (reversed), Request-URI its Contact (or ``ruri``)."""
    target = ruri or str(parse_name_addr(ok.headers.get("Contact")).uri)
    lines = [f"{method} {target} SIP/2.0", f"Via: {udp_via(peer)}", f"Max-Forwards: {max_forwards}",
             f"From: {ok.headers.get('From')}", f"To: {ok.headers.get('To')}", f"Call-ID: {ok.call_id}",
             f"CSeq: {cseq} {method}"]
    lines += [f"Route: {r}" for r in reversed(ok.headers.get_all("Record-Route"))]
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_ack_out_of_hops_is_dropped() -> None:
    """An ACK for a 2xx (no transaction here, it follows the dialog) cannot be answered
    483: with Max-Forwards 0 it is dropped, with 1 it goes on with 0. Regression test for
    a fix in the stateless ACK forwarding (it went out with "Max-Forwards: -1")."""

    async def scenario() -> None:
        async with UdpPeer(CALLEE_IP) as target, UdpPeer(CALLER_IP) as peer:
            cfg = node_config(
                zones=[{"name": "Partner Proxy", "type": "neighbour", "host": target.ip, "port": target.port, "transport": "udp"}],
                rules=[any_alias_rule("Partner Proxy")])
            async with running_node(cfg):
                ok, _ = await _raw_dialog(peer, target)
                for mf in (0, 1):
                    peer.send(_in_dialog_request("ACK", ok, peer, max_forwards=mf))
                    got = [parse_message(d) for d in await target.quiet(0.2)]
                    if mf == 0:
                        assert got == []
                    else:
                        assert [(m.method, m.call_id, m.headers.get("Max-Forwards")) for m in got] == [("ACK", ok.call_id, "0")]
                        assert vias(got[0])[0].host == NODE_IP

    run(scenario())


def test_in_dialog_request_without_dialog_is_481_and_goes_nowhere() -> None:
    """Issue 6 item 4: an in-dialog-looking request (To tag) that matches no dialog of
    this node is refused with 481, whatever its Route and Request-URI name: the node
    is never an open relay toward an address the sender chose."""

    async def scenario() -> None:
        async with UdpPeer(CALLEE_IP) as carol, UdpPeer(CALLER_IP) as peer, running_node(node_config()):
            for extra in ([("Route", f"<sip:{NODE_IP}:{NODE_PORT};lr>"), ("Route", f"<sip:{carol.ip}:{carol.port};lr>")], []):
                data, cid = build_request("BYE", f"sip:x@{carol.ip}:{carol.port};transport=udp", via=udp_via(peer),
                                          to_tag="forged", extra=extra)
                peer.send(data)
                _prov, final = await peer.final(cid)
                assert final.status == 481, final
            assert await carol.quiet(0.3) == []

    run(scenario())

def test_loop_through_own_address_is_482() -> None:
    """A neighbour zone pointing at the node itself: the forwarded request comes back
    with our Via carrying the same loop hash (§16.3 item 4) → 482, relayed upstream."""

    async def scenario() -> None:
        cfg = node_config(
            zones=[{"name": "Mirror Zone", "type": "neighbour", "host": NODE_IP, "port": NODE_PORT, "transport": "udp"}],
            rules=[any_alias_rule("Mirror Zone")],
        )
        async with running_node(cfg) as node, UdpPeer(CALLER_IP) as peer:
            data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer), body=offer_sdp(peer.ip, 41000),
                                      contact=f"<sip:alice@{peer.ip}:{peer.port}>")
            peer.send(data)
            _prov, final = await peer.final(cid)
            assert final.status == 482, final
            assert len(vias(final)) == 1  # our own Via was taken off on the way up
            # The node really received its own forwarded INVITE and refused that one.
            looped = [e for e in node.events.records if e["event"] == "sip message" and e["dir"] == "in"
                      and e["peer"] == f"{NODE_IP}:{NODE_PORT}" and e["line"].startswith("INVITE")]
            assert looped, node.events.records
            assert len(node.relay) == 0

    run(scenario())


def test_crafted_via_with_our_branch_is_482() -> None:
    """A request that already carries a Via of this node (below the previous hop's)
    with the branch the node computes for it (same loop hash) is a loop; a Via of ours
    with another hash (a spiral: the request changed) is not."""
    from edgeway.proxy.checks import loop_hash
    from edgeway.proxy.core import _BRANCH_PREFIX

    async def scenario() -> None:
        async with UdpPeer(CALLEE_IP) as target, UdpPeer(CALLER_IP) as peer:
            cfg = partner_config(target)
            async with running_node(cfg):
                for looped in (True, False):
                    data, cid = build_request("OPTIONS", "sip:bob@partner.test", via=udp_via(peer))
                    h = loop_hash(parse_message(data)) if looped else "0123456789abcdef"
                    ours = f"SIP/2.0/UDP {NODE_IP}:{NODE_PORT};branch={_BRANCH_PREFIX}{h}.1abcd;egress-zone=PartnerProxy"
                    text = data.decode().replace("\r\nMax-Forwards", f"\r\nVia: {ours}\r\nMax-Forwards", 1)
                    peer.send(text.encode())
                    if looped:
                        _prov, final = await peer.final(cid)
                        assert (final.status, final.reason) == (482, "Loop Detected"), final
                    else:
                        fwd, _ = await target.recv()
                        assert isinstance(fwd, Request) and fwd.call_id == cid and len(vias(fwd)) == 3
                assert not await target.quiet(0.2)  # the looped one never went out

    run(scenario())


# ================================================================== 4. CANCEL (§16.10)


def test_cancel_ringing_call() -> None:
    async def scenario() -> None:
        alice, bob = caller("udp"), callee("tcp")
        bob.ring_seconds = 5.0
        async with uas(alice, bob):
            cfg = node_config(
                zones=[{"name": "Partner Proxy", "type": "neighbour", "host": CALLEE_IP, "port": bob.port, "transport": "tcp"}],
                rules=[any_alias_rule("Partner Proxy")],
            )
            async with running_node(cfg) as node:
                # alice gives up after 0.5 s of ringing and CANCELs.
                task = asyncio.create_task(alice.call("sip:bob@partner.edgeway.test", proxy=(NODE_IP, NODE_PORT, "udp"),
                                                      from_user="alice", timeout_s=0.5, timer_t1=0.1))
                await asyncio.sleep(0.3)
                assert len(node.relay) == 1  # the offer was anchored while ringing
                result = await task
                assert result.status == 487, result.ladder
                cid = result.call_id
                # 200 for the CANCEL, then 487 for the INVITE, at the caller.
                assert [r.status for r in alice.responses(cid, "CANCEL")] == [200]
                assert 487 in [r.status for r in alice.responses(cid, "INVITE")]
                # The CANCEL went on to bob, on the branch of the forwarded INVITE.
                for _ in range(50):
                    if bob.requests("CANCEL", cid):
                        break
                    await asyncio.sleep(0.01)
                cancels, invites = bob.requests("CANCEL", cid), bob.requests("INVITE", cid)
                assert cancels, bob.log
                assert vias(cancels[0])[0].branch == vias(invites[0])[0].branch
                assert cancels[0].uri == invites[0].uri
                # bob's own 487 was ACKed by the node (hop by hop).
                await asyncio.sleep(0.1)
                acks = bob.requests("ACK", cid)
                assert acks and vias(acks[0])[0].branch == vias(invites[0])[0].branch
                assert len(node.relay) == 0 and not node.proxy.media.calls
                assert bob.calls_received[cid].status == 487

    run(scenario())


def test_invite_retransmission_is_absorbed() -> None:
    """A retransmitted INVITE matches the server transaction: the node answers it with
    its last provisional and does not forward it again (RFC 3261 §17.2.1)."""

    async def scenario() -> None:
        bob = callee("udp")
        bob.ring_seconds, bob.answer_status = 0.4, 486
        async with uas(bob), UdpPeer(CALLER_IP) as peer:
            cfg = node_config(
                zones=[{"name": "Partner Proxy", "type": "neighbour", "host": CALLEE_IP, "port": bob.port, "transport": "udp"}],
                rules=[any_alias_rule("Partner Proxy")],
            )
            async with running_node(cfg) as node:
                data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer), body=offer_sdp(peer.ip, 41000),
                                          contact=f"<sip:alice@{peer.ip}:{peer.port}>")
                peer.send(data)
                await asyncio.sleep(0.15)
                peer.send(data)  # the caller's Timer A fired
                prov, final = await peer.final(cid)
                assert [p.status for p in prov] == [100, 180, 180]  # 180 again for the retransmission
                assert final.status == 486
                assert len(bob.requests("INVITE", cid)) == 1
                await asyncio.sleep(0.05)
                assert len(node.relay) == 0

    run(scenario())


def _cancel_for(invite: bytes) -> bytes:
    """The CANCEL for a request built by :func:`build_request` (RFC 3261 §9.1)."""
    lines = invite.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    keep = [l for l in lines[1:] if l.split(":", 1)[0] in ("Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq")]
    out = [lines[0].replace("INVITE", "CANCEL", 1)] + [l.replace(" INVITE", " CANCEL") if l.startswith("CSeq") else l for l in keep]
    return ("\r\n".join(out + ["Content-Length: 0"]) + "\r\n\r\n").encode()


class _SlowDns(asyncio.DatagramProtocol):
    """Answers DNS queries from a (not started) LabDnsServer after ``delay`` seconds."""

    def __init__(self, server: LabDnsServer, delay: float):
        self.server, self.delay = server, delay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        def answer() -> None:
            reply = self.server.handle(data)
            if reply is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(reply, addr)

        asyncio.get_running_loop().call_later(self.delay, answer)


def test_cancel_while_next_hop_is_looked_up_is_not_forwarded() -> None:
    """The CANCEL arrives while the DNS zone's lookup is still pending: 200 + 487 to the
    caller, and the INVITE is never sent on (no branch nobody cancels, no relay
    sessions left behind). Regression test for a fix in Proxy.forward."""

    async def scenario() -> None:
        bob = callee("udp", ip="127.0.0.28")
        async with uas(bob), UdpPeer(CALLER_IP) as peer:
            records = records_from_text(f"""
                $ORIGIN partner.test.
                _sip._udp SRV 10 0 {bob.port} live
                live A 127.0.0.28
            """)
            loop = asyncio.get_running_loop()
            dns_t, _ = await loop.create_datagram_endpoint(lambda: _SlowDns(LabDnsServer(records), 0.1), local_addr=(DNS_IP, 0))
            try:
                cfg = node_config(zones=[{"name": "Partner DNS", "type": "dns", "default_transport": "udp"}],
                                  rules=[any_alias_rule("Partner DNS")], timers=FAST_TIMERS,
                                  dns_servers=[f"{DNS_IP}:{dns_t.get_extra_info('sockname')[1]}"])
                async with running_node(cfg) as node:
                    data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer), body=offer_sdp(peer.ip, 41000),
                                              contact=f"<sip:alice@{peer.ip}:{peer.port}>")
                    peer.send(data)
                    await asyncio.sleep(0.05)
                    peer.send(_cancel_for(data))
                    got = []
                    while not any(r.status == 487 for r in got):
                        msg, _ = await peer.recv()
                        got.append(msg)
                    assert [(r.status, r.cseq[1]) for r in got] == [(100, "INVITE"), (200, "CANCEL"), (487, "INVITE")]
                    peer.send(ack_for(got[-1]))
                    # Wait for the lookup (four queries, 0.1 s each) to finish, then some.
                    for _ in range(200):
                        if any(e["event"] == "dns resolved" for e in node.events.records):
                            break
                        await asyncio.sleep(0.01)
                    resolved = [e for e in node.events.records if e["event"] == "dns resolved"]
                    assert resolved and resolved[0]["targets"] == [f"udp:127.0.0.28:{bob.port}"]
                    await asyncio.sleep(0.2)
                    assert not bob.requests("INVITE", cid), bob.log
                    assert len(node.relay) == 0 and not node.proxy.media.calls
            finally:
                dns_t.close()

    run(scenario())


def test_cancel_is_retransmitted_and_unanswered_invite_given_up() -> None:
    """The callee rings, then ignores the proxy's CANCEL: over UDP the CANCEL is
    retransmitted (a non-INVITE client transaction, RFC 3261 §9.1), and 64*T1 after it
    the INVITE branch is given up instead of being kept forever. Regression test for a
    fix in Proxy._send_cancel."""

    async def scenario() -> None:
        async with UdpPeer(CALLEE_IP) as target, UdpPeer(CALLER_IP) as peer:
            cfg = partner_config(target, timers=FAST_TIMERS)
            async with running_node(cfg) as node:
                data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer),
                                          contact=f"<sip:alice@{peer.ip}:{peer.port}>")
                peer.send(data)
                inv, addr = await target.recv()
                target.send(make_response(inv, 180, to_tag="ring1").to_bytes(), addr)
                await asyncio.sleep(0.1)
                peer.send(_cancel_for(data))
                _prov, final = await peer.final(cid, method="INVITE")
                assert final.status == 487
                got = [parse_message(d) for d in await target.quiet(64 * 0.05 + 0.5)]
                cancels = [m for m in got if isinstance(m, Request) and m.method == "CANCEL"]
                assert len(cancels) >= 3, [m for m in got]
                assert {vias(c)[0].branch for c in cancels} == {vias(inv)[0].branch}
                assert not [t for t in node.proxy.core.table if t.is_client], list(node.proxy.core.table)
                assert any(e["event"] == "next hop timeout" and "cancelled INVITE" in e.get("cause", "")
                           for e in node.events.records)

    run(scenario())


# ============================================================ 5. Route processing (§16.4)


def test_loose_route_naming_the_node_is_removed() -> None:
    """Route entries naming the node (loose, ``;lr``) are taken off (RFC 3261 §16.4).
    In dialog the request then goes where the dialog says (the callee), never to a
    Route or Request-URI of the sender's choosing; an initial request whose only Route
    is us is routed by the search rules."""

    async def scenario() -> None:
        async with UdpPeer(CALLEE_IP) as bob, UdpPeer("127.0.0.25") as carol, UdpPeer(CALLER_IP) as peer:
            cfg = partner_config(bob)
            async with running_node(cfg):
                # 1. In dialog: our Record-Route entry (now a Route) is removed and the
                #    request reaches the callee of the dialog.
                ok, _ = await _raw_dialog(peer, bob)
                peer.send(_in_dialog_request("OPTIONS", ok, peer, cseq=2))
                got, addr = await bob.recv()
                assert isinstance(got, Request) and got.method == "OPTIONS" and got.call_id == ok.call_id
                bob.send(make_response(got, 200).to_bytes(), addr)
                assert got.headers.get_all("Route") == [], got.headers.get_all("Route")
                assert vias(got)[0].host == NODE_IP and got.headers.get("Max-Forwards") == "69"
                #    The same with an extra Route toward carol after ours: still the callee's
                #    address (the dialog's), carol gets nothing.
                data = _in_dialog_request("INFO", ok, peer, cseq=3).replace(
                    b"Content-Length", f"Route: <sip:{carol.ip}:{carol.port};lr>\r\nContent-Length".encode())
                peer.send(data)
                got, addr = await bob.recv()
                assert isinstance(got, Request) and got.method == "INFO"
                bob.send(make_response(got, 200).to_bytes(), addr)
                assert await carol.quiet(0.2) == []
                # 2. Initial, Route: only us (as ;lr, no port): removed, then routed by the
                #    search rules to bob.
                data, cid = build_request("OPTIONS", "sip:bob@partner.test", via=udp_via(peer),
                                          extra=[("Route", f"<sip:{NODE_IP};lr>")])
                peer.send(data)
                got, _addr = await bob.recv()
                assert isinstance(got, Request) and got.call_id == cid
                assert got.uri == "sip:bob@partner.test"
                assert got.headers.get_all("Route") == []
                assert vias(got)[0].params.get("egress-zone") == "PartnerProxy"

    run(scenario())


def test_strict_routing_previous_hop_restores_request_uri() -> None:
    """A strict router before us put our Record-Route URI in the Request-URI and the
    real target last in Route (RFC 3261 §16.4): the node puts it back."""

    async def scenario() -> None:
        async with UdpPeer(CALLEE_IP) as bob, UdpPeer(CALLER_IP) as peer:
            cfg = partner_config(bob)
            async with running_node(cfg):
                target = f"sip:bob@{CALLEE_IP}:{bob.port}"
                data, cid = build_request("OPTIONS", f"sip:{NODE_IP}:{NODE_PORT};transport=udp", via=udp_via(peer),
                                          to=target, extra=[("Route", f"<{target}>")])
                peer.send(data)
                got, _ = await bob.recv()
                assert isinstance(got, Request) and got.call_id == cid
                assert got.uri == target
                assert got.headers.get_all("Route") == []
                # With a route left before the real target: that one stays in Route.
                other = f"sip:{CALLEE_IP}:{bob.port};lr"
                data, cid = build_request("OPTIONS", f"sip:{NODE_IP}:{NODE_PORT}", via=udp_via(peer), to=target,
                                          extra=[("Route", f"<{other}>"), ("Route", f"<{target}>")])
                peer.send(data)
                got, _ = await bob.recv()
                assert isinstance(got, Request) and got.call_id == cid
                assert got.uri == target
                assert got.headers.get_all("Route") == [f"<{other}>"]

    run(scenario())


# ============================================================ 6. DNS zone fail-over (RFC 3263)


def _dns_failover(dead_kind: str) -> None:
    """SRV for partner.test lists a dead target first, then bob: the call reaches bob.

    ``dead_kind`` "tcp": ``_sip._tcp`` names a TCP port that refuses connections (tried
    first: the SRV fallback order is tls, tcp, udp); "udp": ``_sip._udp`` names, at a
    better priority than bob, a UDP socket that never answers (Timer B, 64*T1)."""

    async def scenario() -> None:
        bob = callee("udp", ip="127.0.0.28")
        alice = caller("udp")
        async with uas(alice, bob), UdpPeer("127.0.0.27") as silent:
            if dead_kind == "tcp":
                dead_port = unused_tcp_port("127.0.0.27")
                dead_srv = f"_sip._tcp SRV 10 0 {dead_port} dead"
            else:
                dead_port = silent.port
                dead_srv = f"_sip._udp SRV 5 0 {dead_port} dead"
            records = records_from_text(f"""
                $ORIGIN partner.test.
                {dead_srv}
                _sip._udp SRV 10 0 {bob.port} live
                dead A 127.0.0.27
                live A 127.0.0.28
            """)
            async with LabDnsServer(records, host=DNS_IP, port=0) as dns:
                cfg = node_config(
                    zones=[{"name": "Partner DNS", "type": "dns", "default_transport": "udp"}],
                    rules=[{"name": "partner", "priority": 10, "pattern_type": "regex", "pattern": r".*@partner\.test",
                            "target_zone": "Partner DNS"}],
                    dns_servers=[f"{DNS_IP}:{dns.port}"],
                    timers=FAST_TIMERS,
                )
                async with running_node(cfg) as node:
                    result = await alice.call("sip:bob@partner.test", proxy=(NODE_IP, NODE_PORT, "udp"), from_user="alice",
                                              media_seconds=0.3, timer_t1=0.1)
                    assert result.ok and result.status == 200, result.ladder
                    assert result.rtp_received > 0
                    inv = bob.requests("INVITE", result.call_id)[0]
                    assert vias(inv)[0].params.get("egress-zone") == "PartnerDNS"
                    resolved = [e for e in node.events.records if e["event"] == "dns resolved"]
                    assert resolved and resolved[0]["targets"][:2] == [
                        f"{dead_kind}:127.0.0.27:{dead_port}", f"udp:127.0.0.28:{bob.port}"], resolved
                    if dead_kind == "tcp":
                        assert any(e["event"] == "connect failed" for e in node.events.records)
                    else:
                        assert any(e["event"] == "next hop timeout" for e in node.events.records)
                        got = [parse_message(d) for d in await silent.quiet(0.05)]
                        assert any(isinstance(m, Request) and m.method == "INVITE" for m in got)
                    assert len(node.relay) == 0

    run(scenario())


def test_dns_zone_fails_over_from_refused_tcp_target() -> None:
    _dns_failover("tcp")


def test_dns_zone_fails_over_from_silent_udp_target() -> None:
    _dns_failover("udp")


# ============================================================== 7. SDP rewriting and media


def test_sdp_rewritten_both_ways_and_rtp_relayed() -> None:
    async def scenario() -> None:
        alice, bob = caller("udp"), callee("tcp")
        async with uas(alice, bob):
            cfg = node_config(
                zones=[{"name": "Partner Proxy", "type": "neighbour", "host": CALLEE_IP, "port": bob.port, "transport": "tcp"}],
                rules=[any_alias_rule("Partner Proxy")],
            )
            async with running_node(cfg) as node:
                result = await alice.call("sip:bob@partner.edgeway.test", proxy=(NODE_IP, NODE_PORT, "udp"),
                                          from_user="alice", media_seconds=0.6, timer_t1=0.1)
                assert result.ok, result.ladder
                cid = result.call_id
                stats = await bob.wait_call_ended(cid, 2.0)
                assert stats is not None
                # What bob was offered: the node's address and a relay port, not alice's.
                [(kind, addr, port)] = media_of(bob.requests("INVITE", cid)[0].body)
                assert (kind, addr) == ("audio", NODE_IP)
                assert MEDIA_MIN <= port <= MEDIA_MAX and port != result.local_rtp[1]
                # What alice got in the 200: the node again, another relay port, not bob's.
                [ok] = [r for r in alice.responses(cid, "INVITE") if r.status == 200][:1]
                [(kind2, addr2, port2)] = media_of(ok.body)
                assert (kind2, addr2) == ("audio", NODE_IP)
                assert MEDIA_MIN <= port2 <= MEDIA_MAX and port2 not in (port, stats.local_rtp[1])
                assert result.remote_rtp == (NODE_IP, port2)
                assert stats.remote_rtp == (NODE_IP, port)
                # RTP really went both ways through the relay, and came from it.
                assert result.rtp_received > 0 and stats.rtp_received > 0, (result, stats)
                assert result.rtp_source == (NODE_IP, port2)
                assert stats.rtp_source == (NODE_IP, port)
                assert len(node.relay) == 0

    run(scenario())


def test_sdp_rejected_stream_keeps_port_zero() -> None:
    """An offer with a video stream at port 0: the callee sees it still at 0 (and no
    relay session is opened for it); the audio stream is anchored. bob declines (486):
    the relay sessions are released on the final response."""

    async def scenario() -> None:
        bob = callee("udp")
        bob.answer_status = 486
        async with uas(bob), UdpPeer(CALLER_IP) as peer:
            cfg = node_config(
                zones=[{"name": "Partner Proxy", "type": "neighbour", "host": CALLEE_IP, "port": bob.port, "transport": "udp"}],
                rules=[any_alias_rule("Partner Proxy")],
            )
            async with running_node(cfg) as node:
                data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer),
                                          contact=f"<sip:alice@{peer.ip}:{peer.port}>", body=offer_sdp(peer.ip, 41000, 0))
                peer.send(data)
                prov, final = await peer.final(cid)
                assert final.status == 486, final
                assert [p.status for p in prov] == [100, 180]
                got = media_of(bob.requests("INVITE", cid)[0].body)
                assert got[0][:2] == ("audio", NODE_IP) and MEDIA_MIN <= got[0][2] <= MEDIA_MAX
                assert got[1][0] == "video" and got[1][2] == 0
                body = bob.requests("INVITE", cid)[0].body
                assert b"41000" not in body and CALLER_IP.encode() not in body
                await asyncio.sleep(0.05)
                assert len(node.relay) == 0 and not node.proxy.media.calls
                assert node.relay.stats()["closed_sessions"] == 1  # audio only

    run(scenario())


def test_media_ports_exhausted_refuses_the_call_never_unanchored() -> None:
    """Issue 7 item 2: with every relay port of the node's range taken (bound by someone
    else), an INVITE with SDP gets 503 with a Warning naming the cause and Retry-After,
    the callee never sees the INVITE, and nothing the caller receives carries the
    callee's (or any non-node) media address; the event says "media ports exhausted"."""

    async def scenario() -> None:
        bob = callee("udp")
        lo, hi = 47000, 47007  # four RTP/RTCP pairs
        squatters = []
        for port in range(lo, hi + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((NODE_IP, port))
            squatters.append(s)
        try:
            async with uas(bob), UdpPeer(CALLER_IP) as peer:
                cfg = node_config(
                    zones=[{"name": "Partner Proxy", "type": "neighbour", "host": CALLEE_IP, "port": bob.port, "transport": "udp"}],
                    rules=[any_alias_rule("Partner Proxy")],
                )
                cfg["media"] = {"port_min": lo, "port_max": hi}
                async with running_node(cfg) as node:
                    for _ in range(2):
                        data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer),
                                                  contact=f"<sip:alice@{peer.ip}:{peer.port}>", body=offer_sdp(peer.ip, 41000))
                        peer.send(data)
                        prov, final = await peer.final(cid)
                        peer.send(ack_for(final))
                        assert final.status == 503, final
                        warning = final.headers.get("Warning") or ""
                        assert "Media ports exhausted" in warning and final.headers.get("Retry-After"), warning
                        assert all(not r.body for r in [*prov, final])
                        assert bob.requests("INVITE", cid) == []
                    events = [r for r in node.events.records if r["event"] == "media ports exhausted"]
                    assert len(events) == 2 and events[0]["cause"]
                    assert len(node.relay) == 0 and not node.proxy.media.calls
        finally:
            for s in squatters:
                s.close()

    run(scenario())


def test_udp_flood_from_one_source_is_limited_blocked_and_not_amplified() -> None:
    """Issue 7 item 3: 300 INVITEs over ~1.2 s from one UDP source to an alias no rule
    matches, against a limit of 20/s (burst 10, block after 0.5 s): the source gets at
    most burst + rate × time 404s, exactly one 503 with Retry-After, is then blocked;
    the bytes sent back are far fewer than the bytes received; meanwhile another source
    is served as usual."""

    async def scenario() -> None:
        cfg = node_config()
        cfg["flood"] = {"requests_per_s": 20, "burst": 10, "block_after_s": 0.5, "block_s": 5}
        async with running_node(cfg) as node, UdpPeer(CALLER_IP) as flooder, UdpPeer("127.0.0.25") as other:
            loop = asyncio.get_running_loop()
            sent = 0
            t0 = loop.time()
            for i in range(300):
                data, _ = build_request("INVITE", f"sip:x{i}@nowhere.test", via=udp_via(flooder),
                                        contact=f"<sip:a@{flooder.ip}:{flooder.port}>")
                flooder.send(data)
                sent += len(data)
                if i % 25 == 24:
                    await asyncio.sleep(0.1)
            elapsed = loop.time() - t0
            data, cid = build_request("INVITE", "sip:bob@nowhere.test", via=udp_via(other),
                                      contact=f"<sip:b@{other.ip}:{other.port}>")
            other.send(data)
            _, final = await other.final(cid)
            assert final.status == 404  # served: no rule matches, as for anyone
            back = await flooder.quiet(1.0)
            statuses = [parse_message(d).status for d in back]
            assert statuses.count(503) == 1, statuses
            [r503] = [parse_message(d) for d in back if parse_message(d).status == 503]
            assert r503.headers.get("Retry-After")
            assert 10 <= statuses.count(404) <= 10 + 20 * (elapsed + 0.2), (statuses.count(404), elapsed)
            assert sum(map(len, back)) < sent / 5, (sum(map(len, back)), sent)
            events = [r["event"] for r in node.events.records]
            assert events.count("flood limit") == 1 and events.count("source blocked") == 1
            assert node.proxy.sources.blocked(CALLER_IP, loop.time())
            assert len(node.proxy.core.table) == 0  # nothing held for the flood

    run(scenario())


def test_tcp_source_over_its_limit_gets_503_then_is_cut_off() -> None:
    """On a connection every request over the limit gets 503 + Retry-After (no
    amplification is possible toward a handshaken source); once blocked the connection
    is closed."""

    async def scenario() -> None:
        cfg = node_config()
        cfg["flood"] = {"requests_per_s": 5, "burst": 5, "block_after_s": 0.3, "block_s": 5}
        async with running_node(cfg):
            reader, writer = await asyncio.open_connection(NODE_IP, NODE_PORT, local_addr=(CALLER_IP, 0))
            lport = writer.get_extra_info("sockname")[1]
            try:
                for i in range(20):
                    data, _ = build_request("OPTIONS", f"sip:x{i}@nowhere.test", via=f"SIP/2.0/TCP {CALLER_IP}:{lport};branch=z9hG4bKfl{i}")
                    writer.write(data)
                await writer.drain()
                got = b""
                with contextlib.suppress(TimeoutError):
                    while got.count(b"SIP/2.0 ") < 20:
                        got += await asyncio.wait_for(reader.read(65536), 2.0)
                assert got.count(b"SIP/2.0 404") == 5 and got.count(b"SIP/2.0 503") == 15, got[:300]
                # Keep going at 50/s (limit 5/s) for 0.6 s: blocked after 0.3 s over the limit.
                for i in range(30):
                    data, _ = build_request("OPTIONS", f"sip:y{i}@nowhere.test", via=f"SIP/2.0/TCP {CALLER_IP}:{lport};branch=z9hG4bKfy{i}")
                    with contextlib.suppress(ConnectionError):
                        writer.write(data)
                    await asyncio.sleep(0.02)
                ended = False
                try:
                    while await asyncio.wait_for(reader.read(65536), 2.0):
                        pass
                    ended = True  # EOF
                except ConnectionError:  # reset (or the write that found it reset)
                    ended = True
                assert ended
            finally:
                writer.close()

    run(scenario())


# ================================================================== 8. malformed input


def test_tcp_request_without_call_id_is_dropped_connection_kept() -> None:
    async def scenario() -> None:
        async with running_node(node_config()) as node:
            reader, writer = await asyncio.open_connection(NODE_IP, NODE_PORT, local_addr=(CALLER_IP, 0))
            try:
                lport = writer.get_extra_info("sockname")[1]
                via = f"SIP/2.0/TCP {CALLER_IP}:{lport};branch=z9hG4bK{secrets.token_hex(6)}"
                bad, _ = build_request("OPTIONS", f"sip:{NODE_IP}", via=via)
                bad = b"".join(line + b"\r\n" for line in bad.split(b"\r\n")[:-1] if not line.startswith(b"Call-ID"))
                writer.write(bad)
                await writer.drain()
                via2 = f"SIP/2.0/TCP {CALLER_IP}:{lport};branch=z9hG4bK{secrets.token_hex(6)}"
                good, good_cid = build_request("OPTIONS", f"sip:{NODE_IP}", via=via2)
                await asyncio.sleep(0.1)
                writer.write(good)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
                resp = parse_message(head)
                assert isinstance(resp, Response) and resp.status == 200 and resp.call_id == good_cid, resp
                # Nothing was sent for the bad one (the 200 was the first thing on the
                # stream, nothing follows it) and the connection is still open.
                try:
                    extra = await asyncio.wait_for(reader.read(1), 0.2)
                except TimeoutError:
                    extra = None
                assert extra is None, extra  # b"" would mean the node closed the connection
                assert any(e["event"] == "bad message" and "Call-ID" in e["reason"] for e in node.events.records)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    run(scenario())


def _stream_refusal(payload_of) -> tuple[Response | None, bytes]:
    """Send over TCP what ``payload_of(via)`` returns; (the node's response, what followed
    it before the node closed the connection)."""

    async def scenario():
        async with running_node(node_config()):
            reader, writer = await asyncio.open_connection(NODE_IP, NODE_PORT, local_addr=(CALLER_IP, 0))
            try:
                lport = writer.get_extra_info("sockname")[1]
                writer.write(payload_of(f"SIP/2.0/TCP {CALLER_IP}:{lport};branch=z9hG4bK{secrets.token_hex(6)}"))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                got = b""
                with contextlib.suppress(ConnectionError):
                    while chunk := await asyncio.wait_for(reader.read(65536), 3.0):
                        got += chunk
                head, _, rest = got.partition(b"\r\n\r\n")
                return (parse_message(head + b"\r\n\r\n") if head else None), rest
            finally:
                writer.close()

    return run(scenario())


def test_over_limit_content_length_gets_513_then_close() -> None:
    """Issue 7 item 5: a stream message announcing more than the size limit is answered
    513 Message Too Large (RFC 3261 §21.5.14) before the node closes the connection."""
    def payload(via: str) -> bytes:
        data, _ = build_request("OPTIONS", "sip:x@nowhere.test", via=via)
        return data.replace(b"Content-Length: 0", b"Content-Length: 100000")

    resp, rest = _stream_refusal(payload)
    assert resp is not None and resp.status == 513, resp
    assert rest == b""  # and then the close (read returned EOF)


def test_too_many_headers_get_400_then_close() -> None:
    def payload(via: str) -> bytes:
        data, _ = build_request("OPTIONS", "sip:x@nowhere.test", via=via,
                                extra=[(f"X-H{i}", "v") for i in range(400)])
        return data

    resp, rest = _stream_refusal(payload)
    assert resp is not None and resp.status == 400 and resp.reason.startswith("Bad Request"), resp
    assert rest == b""


def test_stream_message_without_content_length_gets_400_then_close() -> None:
    def payload(via: str) -> bytes:
        data, _ = build_request("OPTIONS", "sip:x@nowhere.test", via=via)
        return data.replace(b"Content-Length: 0\r\n", b"")

    resp, rest = _stream_refusal(payload)
    assert resp is not None and resp.status == 400 and "Content-Length" in resp.reason, resp
    assert rest == b""


def test_bad_header_is_400_with_reason() -> None:
    async def scenario() -> None:
        async with running_node(node_config()), UdpPeer(CALLER_IP) as peer:
            for header, needle in ((("Max-Forwards", "ten"), "Max-Forwards"), (("Expires", "-1"), "Expires")):
                data, cid = build_request("OPTIONS", "sip:bob@partner.test", via=udp_via(peer), max_forwards=None,
                                          extra=[header])
                peer.send(data)
                _prov, final = await peer.final(cid)
                assert final.status == 400, final
                assert final.reason.startswith("Bad Request - ") and needle in final.reason, final.reason
                assert final.to_tag  # a real response, rebuilt on the request's headers
            # A CSeq whose method does not match the request: 400 over TCP too, connection kept.
            reader, writer = await asyncio.open_connection(NODE_IP, NODE_PORT, local_addr=(CALLER_IP, 0))
            try:
                lport = writer.get_extra_info("sockname")[1]
                data, cid = build_request("OPTIONS", "sip:bob@partner.test",
                                          via=f"SIP/2.0/TCP {CALLER_IP}:{lport};branch=z9hG4bK{secrets.token_hex(6)}")
                writer.write(data.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INFO"))
                await writer.drain()
                resp = parse_message(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0))
                assert isinstance(resp, Response) and resp.status == 400 and resp.call_id == cid
                assert "CSeq" in resp.reason or "method" in resp.reason, resp.reason
                ok, ok_cid = build_request("OPTIONS", f"sip:{NODE_IP}",
                                           via=f"SIP/2.0/TCP {CALLER_IP}:{lport};branch=z9hG4bK{secrets.token_hex(6)}")
                writer.write(ok)
                await writer.drain()
                resp = parse_message(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0))
                assert resp.status == 200 and resp.call_id == ok_cid
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    run(scenario())


# ============================================================ 9. overload


def test_overload_sheds_new_invites_with_503_retry_after() -> None:
    """Issue 6 item 7: when INVITEs wait in the node's UDP receive queue (here: 150 sent
    while the node's event loop is blocked for 0.3 s), new INVITEs are answered 503 with
    Retry-After at once instead of being left to time out; every INVITE gets a final
    response (no rule matches the others: 404)."""
    import time as _time

    async def scenario() -> None:
        async with running_node(node_config()) as node, UdpPeer(CALLER_IP) as peer:
            cids = []
            for _ in range(150):
                data, cid = build_request("INVITE", "sip:bob@partner.test", via=udp_via(peer),
                                          contact=f"<sip:alice@{peer.ip}:{peer.port}>")
                cids.append(cid)
                peer.send(data)
            _time.sleep(0.3)  # the node cannot read: its kernel queue fills
            finals: dict[str, Response] = {}
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while len(finals) < len(cids) and loop.time() < end:
                try:
                    msg, addr = await peer.recv(max(0.01, end - loop.time()))
                except TimeoutError:
                    break
                if isinstance(msg, Response) and msg.status >= 200 and msg.call_id not in finals:
                    finals[msg.call_id] = msg
                    peer.send(ack_for(msg), addr)
            assert set(finals) == set(cids)
            shed = [r for r in finals.values() if r.status == 503]
            assert shed and all(r.headers.get("Retry-After") and r.to_tag.startswith(SHED_TAG) for r in shed), \
                sorted(r.status for r in finals.values())
            assert node.proxy.shed == len(shed)
            assert {r.status for r in finals.values()} <= {503, 404}

    run(scenario())
