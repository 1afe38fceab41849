"""The sans-IO proxy core (RFC 3261 §16) driven with messages, flows and ``now`` values
only: no sockets, no event loop. Each test feeds :class:`ProxyCore` what a driver would
and asserts on the actions it returns.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from edgeway.config import parse_config
from edgeway.proxy.actions import AllocateMedia, Connect, Event, ReleaseMedia, Resolve, Send
from edgeway.proxy.core import ProxyCore
from edgeway.proxy.reply import choose_best
from edgeway.sip.message import Request, Response, Via, make_response, parse_message
from edgeway.sip.target import Flow, Hop
from edgeway.sip.uri import parse_name_addr

NODE = "192.0.2.1"
CALLER = ("198.51.100.7", 5060)
CALLEE = ("203.0.113.9", 5060)
CALLEE2 = ("203.0.113.10", 5060)
T1 = 0.5
_n = itertools.count(1)


def config(*, zones: list[dict] | None = None, rules: list[dict] | None = None, role: str = "core") -> Any:
    return parse_config({
        "role": role, "name": "unit",
        "sip": {"listen_ip": NODE, "udp_port": 5060, "tcp_port": 5060, "tls_port": 5061},
        "zones": zones or [], "search_rules": rules or [],
    })


def neighbour(name: str, addr: tuple[str, int], transport: str = "udp") -> dict:
    return {"name": name, "type": "neighbour", "host": addr[0], "port": addr[1], "transport": transport}


def rule(zone: str, priority: int = 10, name: str | None = None, **kw: Any) -> dict:
    return {"name": name or f"to {zone}", "priority": priority, "mode": "any_alias", "target_zone": zone, **kw}


def udp_in(addr: tuple[str, int] = CALLER) -> Flow:
    return Flow("udp", (NODE, 5060), addr)


def tcp_in(addr: tuple[str, int] = CALLER, conn_id: int = 7) -> Flow:
    return Flow("tcp", (NODE, 5060), addr, conn_id)


def request(method: str = "INVITE", ruri: str = "sip:bob@partner.test", *, via_host: str = CALLER[0], transport: str = "UDP",
            mf: int | None = 70, to_tag: str | None = None, call_id: str | None = None, cseq: int = 1,
            extra: list[tuple[str, str]] = (), body: bytes = b"") -> Request:
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/{transport} {via_host}:5060;branch=z9hG4bK{next(_n)}x;rport"]
    if mf is not None:
        lines.append(f"Max-Forwards: {mf}")
    lines += ["From: <sip:alice@corp.test>;tag=a1", "To: <sip:bob@partner.test>" + (f";tag={to_tag}" if to_tag else ""),
              f"Call-ID: {call_id or f'c{next(_n)}@test'}", f"CSeq: {cseq} {method}",
              f"Contact: <sip:alice@{CALLER[0]}:{CALLER[1]}>"]
    lines += [f"{n}: {v}" for n, v in extra]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def sent(actions: list) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def responses(actions: list) -> list[Response]:
    return [a.message for a in sent(actions) if isinstance(a.message, Response)]


def requests(actions: list) -> list[tuple[Request, Flow]]:
    return [(a.message, a.flow) for a in sent(actions) if isinstance(a.message, Request)]


def statuses(actions: list) -> list[int]:
    return [r.status for r in responses(actions)]


def answer(fwd: Request, status: int, tag: str = "b1", *, contact: tuple[str, int] = CALLEE, rr: bool = True) -> Response:
    """A downstream response to forwarded request ``fwd`` (Record-Route echoed)."""
    extra = [("Contact", f"<sip:bob@{contact[0]}:{contact[1]}>")] if status < 300 or status >= 100 else []
    r = make_response(fwd, status, to_tag=tag if status > 100 else None, extra=extra)
    if rr:
        for v in fwd.headers.get_all("Record-Route"):
            r.headers.add("Record-Route", v)
    return r


def forwarded(actions: list, method: str = "INVITE") -> tuple[Request, Flow]:
    got = [(m, f) for m, f in requests(actions) if m.method == method]
    assert got, actions
    return got[-1]


# ============================================================ §16.3 request validation


def test_max_forwards_zero_is_483_and_one_goes_out_with_zero() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    out = core.receive(request("OPTIONS", mf=0), udp_in(), 0.0)
    assert statuses(out) == [483]
    assert not requests(out)
    out = core.receive(request("OPTIONS", mf=1), udp_in(), 0.0)
    fwd, flow = forwarded(out, "OPTIONS")
    assert fwd.headers.get("Max-Forwards") == "0" and flow.remote == CALLEE


def test_unknown_but_valid_scheme_is_416() -> None:
    """RFC 3261 §16.3 item 2: a scheme the proxy does not route gets 416, whatever it is
    as long as the grammar allows it (letters, digits, "+", "-", ".")."""
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    for ruri in ("soap.beep://192.0.2.5:3002/chat", "x-foo+bar-1.2:whatever", "im:bob@partner.test"):
        out = core.receive(request("MESSAGE", ruri), udp_in(), 0.0)
        assert statuses(out) == [416], (ruri, out)
        assert not requests(out)


def test_unknown_proxy_require_is_420() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    out = core.receive(request("OPTIONS", extra=[("Proxy-Require", "foo")]), udp_in(), 0.0)
    assert statuses(out) == [420]
    assert responses(out)[0].headers.get("Unsupported") == "foo"


def test_loop_is_482_but_a_spiral_is_not() -> None:
    """§16.3 item 4: a request that comes back with our Via and the same loop hash is a
    loop; one whose Request-URI changed (a spiral) is forwarded again."""
    core = ProxyCore(config(zones=[neighbour("Me", (NODE, 5060))], rules=[rule("Me")]))
    out = core.receive(request("OPTIONS"), udp_in(), 0.0)
    fwd, flow = forwarded(out, "OPTIONS")
    assert flow.remote == (NODE, 5060)
    back = parse_message(fwd.to_bytes())
    out = core.receive(back, udp_in((NODE, 5060)), 0.1)
    assert statuses(out) == [482]
    # A spiral: a proxy beyond us retargeted the request (and added its own Via).
    spiral = parse_message(fwd.to_bytes().replace(b"OPTIONS sip:bob@partner.test", b"OPTIONS sip:carol@partner.test", 1))
    spiral.headers.add("Via", "SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKretarget1", first=True)
    out = core.receive(spiral, udp_in((NODE, 5060)), 0.2)
    assert 482 not in statuses(out) and requests(out)


# ============================================================ §16.4 route processing


def test_loose_route_naming_us_is_removed_before_routing() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    out = core.receive(request("OPTIONS", extra=[("Route", f"<sip:{NODE};lr>")]), udp_in(), 0.0)
    fwd, _ = forwarded(out, "OPTIONS")
    assert fwd.headers.get_all("Route") == [] and fwd.uri == "sip:bob@partner.test"


def test_strict_routing_previous_hop_restores_the_request_uri() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    target = "sip:bob@partner.test"
    out = core.receive(request("OPTIONS", f"sip:{NODE}:5060", extra=[("Route", "<sip:hop.partner.test;lr>"),
                                                                     ("Route", f"<{target}>")]), udp_in(), 0.0)
    fwd, _ = forwarded(out, "OPTIONS")
    assert fwd.uri == target and fwd.headers.get_all("Route") == ["<sip:hop.partner.test;lr>"]


# ============================================================ §16.6 forwarding


def test_record_route_one_entry_for_udp_both_sides_two_with_flow_tokens_for_tcp() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    out = core.receive(request(), udp_in(), 0.0)
    fwd, _ = forwarded(out)
    assert fwd.headers.get_all("Record-Route") == [f"<sip:{NODE}:5060;transport=udp;lr>"]
    assert statuses(out) == [100]
    top = Via.parse(fwd.headers.get("Via"))
    assert top.host == NODE and top.params["egress-zone"] == "P" and "rport" in top.params
    assert fwd.headers.get("Max-Forwards") == "69"

    core = ProxyCore(config(zones=[neighbour("P", CALLEE, "tcp")], rules=[rule("P")]))
    out = core.receive(request(transport="TCP"), tcp_in(), 0.0)
    [conn] = [a for a in out if isinstance(a, Connect)]
    assert conn.hop.key == ("tcp", *CALLEE) and conn.hop.origin == "neighbour"
    out = core.connected(conn.connect_id, Flow("tcp", (NODE, 40001), CALLEE, 9), "", 0.01)
    fwd, flow = forwarded(out)
    assert flow.conn_id == 9
    rr = [parse_name_addr(v).uri for v in fwd.headers.get_all("Record-Route")]
    assert [(u.host, u.port, u.transport) for u in rr] == [(NODE, 5060, "tcp")] * 2
    assert rr[0].user != rr[1].user and all(core.is_ours(u) for u in rr)
    assert core.tokens.decode(rr[0].user) == 9 and core.tokens.decode(rr[1].user) == 7
    # A forged token (another secret) is not ours.
    assert not core.is_ours(rr[0].copy(user="ew9.000000000000", port=5999))


# ============================================================ §16.7 response context


def _two_lanes(**kw: Any) -> tuple[ProxyCore, list]:
    """Two search rules of equal priority: searched in parallel, one branch each."""
    core = ProxyCore(config(zones=[neighbour("A", CALLEE), neighbour("B", CALLEE2)],
                            rules=[rule("A", 10, name="a", progress="continue"), rule("B", 10, name="b")], **kw))
    return core, core.receive(request(), udp_in(), 0.0)


def test_equal_priority_rules_fork_in_parallel_and_the_best_final_wins() -> None:
    core, out = _two_lanes()
    fwds = {f.remote: m for m, f in requests(out)}
    assert set(fwds) == {CALLEE, CALLEE2}
    out = core.receive(answer(fwds[CALLEE], 503), udp_in(CALLEE), 0.1)
    assert [s for s in statuses(out) if s >= 200] == []  # the other branch is still pending
    out = core.receive(answer(fwds[CALLEE2], 486), udp_in(CALLEE2), 0.2)
    assert [s for s in statuses(out) if s >= 200] == [486]  # 4xx beats 5xx (§16.7 step 6)


def test_choose_best_prefers_6xx_then_the_lowest_class() -> None:
    r = [Response(s) for s in (503, 404, 486)]
    assert choose_best(r).status == 486
    assert choose_best(r + [Response(603)]).status == 603
    assert choose_best([Response(500), Response(408)]).status == 408
    assert choose_best([]) is None


def test_6xx_cancels_the_other_branches_and_is_sent_once_they_end() -> None:
    core, out = _two_lanes()
    fwds = {f.remote: m for m, f in requests(out)}
    core.receive(answer(fwds[CALLEE], 180), udp_in(CALLEE), 0.1)
    out = core.receive(answer(fwds[CALLEE2], 603, tag="b2"), udp_in(CALLEE2), 0.2)
    cancels = [(m, f) for m, f in requests(out) if m.method == "CANCEL"]
    assert [f.remote for _, f in cancels] == [CALLEE]
    assert Via.parse(cancels[0][0].headers.get("Via")).branch == Via.parse(fwds[CALLEE].headers.get("Via")).branch
    assert [s for s in statuses(out) if s >= 200] == []
    out = core.receive(answer(fwds[CALLEE], 487), udp_in(CALLEE), 0.3)
    assert [s for s in statuses(out) if s >= 200] == [603]


def test_2xx_is_forwarded_at_once_and_cancels_the_others() -> None:
    core, out = _two_lanes()
    fwds = {f.remote: m for m, f in requests(out)}
    core.receive(answer(fwds[CALLEE2], 180, tag="b2"), udp_in(CALLEE2), 0.1)
    out = core.receive(answer(fwds[CALLEE], 200), udp_in(CALLEE), 0.2)
    assert 200 in statuses(out)
    assert [f.remote for m, f in requests(out) if m.method == "CANCEL"] == [CALLEE2]
    ok = [r for r in responses(out) if r.status == 200][0]
    # Upstream: our Via gone, the caller's Via (with received/rport) restored.
    assert [Via.parse(v).host for v in ok.headers.get_all("Via")] == [CALLER[0]]


def test_serial_fail_over_on_503_and_next_candidate_on_404() -> None:
    core = ProxyCore(config(zones=[neighbour("A", CALLEE), neighbour("B", CALLEE2)],
                            rules=[rule("A", 10, name="a", progress="continue"), rule("B", 20, name="b")]))
    out = core.receive(request(), udp_in(), 0.0)
    fwd, flow = forwarded(out)
    assert flow.remote == CALLEE
    out = core.receive(answer(fwd, 404), udp_in(CALLEE), 0.1)
    fwd2, flow2 = forwarded(out)
    assert flow2.remote == CALLEE2
    out = core.receive(answer(fwd2, 486, tag="b2"), udp_in(CALLEE2), 0.2)
    assert [s for s in statuses(out) if s >= 200] == [486]


def test_timer_b_gives_408() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    out = core.receive(request(), udp_in(), 0.0)
    retrans = []
    now = 0.0
    while (d := core.next_deadline()) is not None and d <= 64 * T1 + 1:
        now = d
        out = core.timers(now)
        retrans += [m for m, _ in requests(out) if m.method == "INVITE"]
        if any(r.status == 408 for r in responses(out)):
            break
    assert any(r.status == 408 for r in responses(out)), out
    assert now == pytest.approx(64 * T1)
    assert len(retrans) == 6  # Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5


# ============================================================ §16.10 CANCEL


def test_cancel_answers_487_and_cancels_the_branch_after_its_provisional() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    inv = request()
    out = core.receive(inv, udp_in(), 0.0)
    fwd, _ = forwarded(out)
    cancel = parse_message(inv.to_bytes().replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"1 INVITE", b"1 CANCEL"))
    out = core.receive(cancel, udp_in(), 0.1)
    got = responses(out)
    assert sorted((r.cseq[1], r.status) for r in got) == [("CANCEL", 200), ("INVITE", 487)]
    assert not [m for m, _ in requests(out) if m.method == "CANCEL"]  # no provisional yet (§9.1)
    out = core.receive(answer(fwd, 180), udp_in(CALLEE), 0.2)
    [(c, f)] = [(m, f) for m, f in requests(out) if m.method == "CANCEL"]
    assert f.remote == CALLEE and c.uri == fwd.uri and c.cseq == (1, "CANCEL")
    assert 180 not in statuses(out)  # nothing more upstream after the 487
    # The callee answers anyway: the call is cleared on its side (ACK + BYE).
    out = core.receive(answer(fwd, 200), udp_in(CALLEE), 0.3)
    assert sorted(m.method for m, f in requests(out) if f.remote == CALLEE) == ["ACK", "BYE"]
    assert 200 not in statuses(out)


def test_cancel_for_no_transaction_is_481() -> None:
    core = ProxyCore(config())
    out = core.receive(request("CANCEL"), udp_in(), 0.0)
    assert statuses(out) == [481]


# ============================================================ dialogs and flows


def _call(core: ProxyCore, in_flow: Flow, out_flow: Flow | None = None) -> tuple[Request, Response, list]:
    """Run an INVITE to 200 through ``core`` (UDP callee unless ``out_flow``)."""
    out = core.receive(request(transport=in_flow.transport.upper()), in_flow, 0.0)
    conns = [a for a in out if isinstance(a, Connect)]
    if conns:
        out = core.connected(conns[0].connect_id, out_flow, "", 0.01)
    fwd, _ = forwarded(out)
    out = core.receive(answer(fwd, 200), out_flow or udp_in(CALLEE), 0.1)
    ok = [r for r in responses(out) if r.status == 200][0]
    return fwd, ok, out


def test_in_dialog_request_matching_no_dialog_is_481_and_goes_nowhere() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")], role="edge"))
    out = core.receive(request("BYE", "sip:x@10.0.0.9:5060;transport=tcp", to_tag="forged"), udp_in(), 0.0)
    assert statuses(out) == [481]
    assert not requests(out) and not [a for a in out if isinstance(a, Connect)]


def callee_request(method: str, fwd: Request, *, cseq: int, ruri: str = f"sip:alice@{CALLER[0]}:{CALLER[1]}") -> Request:
    """A request of the callee inside the dialog the forwarded INVITE ``fwd`` made
    (its 200 carried To tag "b1"): Route = the INVITE's Record-Route in order."""
    lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/UDP {CALLEE[0]}:{CALLEE[1]};branch=z9hG4bK{method}{cseq}",
             "Max-Forwards: 70", f"From: {fwd.headers.get('To')};tag=b1", f"To: {fwd.headers.get('From')}",
             f"Call-ID: {fwd.call_id}", f"CSeq: {cseq} {method}"]
    lines += [f"Route: {v}" for v in fwd.headers.get_all("Record-Route")]
    return parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())


def test_callee_bye_goes_on_the_callers_own_connection() -> None:
    """Issue 6: a caller that came over TCP hears the callee's BYE on that connection,
    not over UDP to its Contact (which names no transport)."""
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    caller = tcp_in(conn_id=7)
    fwd, ok, _ = _call(core, caller)
    out = core.receive(callee_request("BYE", fwd, cseq=1), udp_in(CALLEE), 1.0)
    byes = [(m, f) for m, f in requests(out) if m.method == "BYE"]
    assert [f for _, f in byes] == [caller]
    assert byes[0][0].headers.get_all("Route") == []
    # The connection is gone: the party is reached at its Contact by RFC 3263 (UDP here).
    core.flow_closed(caller, 2.0)
    out = core.receive(callee_request("INFO", fwd, cseq=2), udp_in(CALLEE), 3.0)
    infos = [(m, f) for m, f in requests(out) if m.method == "INFO"]
    assert [(f.transport, f.remote) for _, f in infos] == [("udp", CALLER)]


def test_tls_party_whose_connection_is_gone_gets_430() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    caller = Flow("tls", (NODE, 5061), CALLER, 11)
    fwd, ok, _ = _call(core, caller)
    core.flow_closed(caller, 1.0)
    out = core.receive(callee_request("BYE", fwd, cseq=1), udp_in(CALLEE), 2.0)
    assert statuses(out) == [430]
    assert not requests(out)


def test_branch_on_a_closed_connection_fails_at_once_and_a_late_2xx_is_cleared() -> None:
    """Issue 6 item 5: the connection under a pending INVITE ends (a traversal zone
    marked down): 503 upstream at once; a 2xx that still comes for that branch is
    answered with ACK + BYE toward the callee, so no call exists on one side only."""
    core = ProxyCore(config(zones=[neighbour("P", CALLEE, "tcp")], rules=[rule("P")]))
    out = core.receive(request(), udp_in(), 0.0)
    [conn] = [a for a in out if isinstance(a, Connect)]
    down = Flow("tcp", (NODE, 40001), CALLEE, 21)
    out = core.connected(conn.connect_id, down, "", 0.01)
    fwd, _ = forwarded(out)
    core.receive(answer(fwd, 100), down, 0.02)
    out = core.flow_closed(down, 0.5, "no answer to 2 keepalive probes")
    [final] = [r for r in responses(out) if r.status >= 200]
    assert final.status == 503 and "no answer to 2 keepalive probes" in final.headers.get("Warning")
    again = Flow("tcp", (NODE, 40002), CALLEE, 22)
    out = core.receive(answer(fwd, 200), again, 5.0)
    assert sorted(m.method for m, f in requests(out) if f == again) == ["ACK", "BYE"]
    assert not [r for r in responses(out) if r.status == 200]
    assert any(isinstance(a, Event) and a.name == "call cleared" for a in out)


# ============================================================ edge: the traversal invariant


def _edge() -> ProxyCore:
    return ProxyCore(config(role="edge", zones=[
        {"name": "Traversal", "type": "traversal_server", "username": "core", "tls_verify_subject_name": "core.test"},
        {"name": "Partner", "type": "dns", "default_transport": "udp"},
    ], rules=[rule("Traversal", 10, pattern_type="suffix", pattern="@corp.test", mode="alias_pattern_match"),
              rule("Partner", 20)]))


TRAV = Flow("tls", (NODE, 7001), ("10.0.0.3", 44611), 5, "traversal")


def test_edge_hides_the_inside_from_an_outside_caller() -> None:
    edge = _edge()
    edge.zone_changed("Traversal", [TRAV], 0.0)
    out = edge.receive(request(ruri="sip:alice@corp.test"), udp_in(), 0.0, None)
    fwd, flow = forwarded(out)
    assert flow == TRAV
    # The core adds its entries; the inside UAS answers with its inside Contact.
    inside = parse_message(fwd.to_bytes())
    ok = make_response(inside, 200, to_tag="in1", extra=[("Contact", "<sip:alice@10.0.0.4:5060;transport=tcp>")])
    ok.headers.add("Record-Route", "<sip:10.0.0.3:5060;transport=tcp;lr>")
    ok.headers.add("Record-Route", "<sip:ew1.abcdef012345@10.0.0.3:44611;transport=tls;lr>")
    for v in fwd.headers.get_all("Record-Route"):
        ok.headers.add("Record-Route", v)
    out = edge.receive(ok, TRAV, 0.1, "Traversal")
    [up] = [r for r in responses(out) if r.status == 200]
    text = up.to_bytes().decode()
    assert "10.0.0." not in text and ":7001" not in text and "44611" not in text, text
    assert [str(parse_name_addr(v).uri) for v in up.headers.get_all("Record-Route")] == [f"sip:{NODE}:5060;transport=udp;lr"]
    assert parse_name_addr(up.headers.get("Contact")).uri.host == NODE
    # The caller's BYE to that Contact goes down the traversal connection with the
    # inside route set and Contact restored.
    bye = request("BYE", str(parse_name_addr(up.headers.get("Contact")).uri), to_tag="in1", call_id=up.call_id, cseq=2,
                  extra=[("Route", v) for v in up.headers.get_all("Record-Route")])
    out = edge.receive(bye, udp_in(), 1.0, None)
    [(b, f)] = [(m, f) for m, f in requests(out) if m.method == "BYE"]
    assert f == TRAV and b.uri == "sip:alice@10.0.0.4:5060;transport=tcp"
    assert b.headers.get_all("Route") == ["<sip:ew1.abcdef012345@10.0.0.3:44611;transport=tls;lr>",
                                          "<sip:10.0.0.3:5060;transport=tcp;lr>"]


def test_edge_hides_an_inside_caller_from_the_outside_callee() -> None:
    edge = _edge()
    edge.zone_changed("Traversal", [TRAV], 0.0)
    inv = request(ruri="sip:bob@partner.test", via_host="10.0.0.4", transport="TLS", call_id="1-99@10.0.0.4",
                  extra=[("Record-Route", "<sip:ew2.abcdef012345@10.0.0.3:44611;transport=tls;lr>")])
    inv.headers.add("Via", "SIP/2.0/TLS 10.0.0.3:44611;branch=z9hG4bKcore1;rport", first=True)
    inv.headers.set("From", "<sip:sipp@10.0.0.4:5070>;tag=a1")
    inv.headers.set("Contact", "<sip:sipp@10.0.0.4:5070;transport=tcp>")
    out = edge.receive(inv, TRAV, 0.0, "Traversal")
    [res] = [a for a in out if isinstance(a, Resolve)]
    out = edge.resolved(res.query_id, [Hop("udp", CALLEE[0], CALLEE[1], "Partner", origin="dns")], 0.01)
    fwd, flow = forwarded(out)
    assert flow.remote == CALLEE
    text = fwd.to_bytes().decode()
    assert "10.0.0." not in text and "44611" not in text and ":7001" not in text, text
    assert len(fwd.headers.get_all("Via")) == 1
    ok = answer(fwd, 200, tag="out1")
    out = edge.receive(ok, udp_in(CALLEE), 0.1)
    [up] = [r for r in responses(out) if r.status == 200]
    assert up.call_id == "1-99@10.0.0.4" and "10.0.0.4:5070" in up.headers.get("From")
    assert up.headers.get_all("Record-Route")[-1] == "<sip:ew2.abcdef012345@10.0.0.3:44611;transport=tls;lr>"
    assert [Via.parse(v).host for v in up.headers.get_all("Via")] == ["10.0.0.3", "10.0.0.4"]
    # The callee's BYE (hidden Call-ID and URI) goes inside restored.
    bye = request("BYE", str(parse_name_addr(fwd.headers.get("Contact")).uri), via_host=CALLEE[0], to_tag="a1",
                  call_id=fwd.call_id, extra=[("Route", fwd.headers.get("Record-Route"))])
    bye.headers.set("From", ok.headers.get("To") or "")
    bye.headers.set("To", fwd.headers.get("From") or "")
    out = edge.receive(bye, udp_in(CALLEE), 1.0)
    [(b, f)] = [(m, f) for m, f in requests(out) if m.method == "BYE"]
    assert f == TRAV and b.call_id == "1-99@10.0.0.4" and "10.0.0.4:5070" in b.headers.get("To")
    assert b.uri == "sip:sipp@10.0.0.4:5070;transport=tcp"
    assert b.headers.get_all("Route") == ["<sip:ew2.abcdef012345@10.0.0.3:44611;transport=tls;lr>"]


def test_edge_never_connects_toward_a_dialog_party_or_the_traversal_zone() -> None:
    """Without a live traversal connection the call gets 503 naming the zone, and no
    Connect is ever asked for toward the inside."""
    edge = _edge()
    out = edge.receive(request(ruri="sip:alice@corp.test"), udp_in(), 0.0)
    assert not [a for a in out if isinstance(a, Connect)]
    [final] = [r for r in responses(out) if r.status >= 200]
    assert final.status == 503 and "Traversal zone Traversal is not connected" in final.headers.get("Warning")


def test_media_is_anchored_or_the_call_is_refused() -> None:
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    sdp = (f"v=0\r\no=a 1 1 IN IP4 {CALLER[0]}\r\ns=-\r\nc=IN IP4 {CALLER[0]}\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 8\r\n").encode()
    out = core.receive(request(body=sdp), udp_in(), 0.0)
    [alloc] = [a for a in out if isinstance(a, AllocateMedia)]
    assert not requests(out)  # nothing leaves before the media is anchored
    out = core.media_ready(alloc.alloc_id, None, "no free port pair", 0.01)
    [final] = [r for r in responses(out) if r.status >= 200]
    assert final.status == 503 and final.headers.get("Retry-After")
    assert not [m for m, _ in requests(out) if m.method == "INVITE"]
    # With ports the forwarded SDP names only the relay.
    out = core.receive(request(body=sdp), udp_in(), 1.0)
    [alloc] = [a for a in out if isinstance(a, AllocateMedia)]
    out = core.media_ready(alloc.alloc_id, {0: (36000, 36002)}, "", 1.01)
    fwd, _ = forwarded(out)
    assert CALLER[0] not in fwd.body.decode() and "m=audio 36002 " in fwd.body.decode()
    out = core.receive(answer(fwd, 486), udp_in(CALLEE), 1.1)
    assert [a for a in out if isinstance(a, ReleaseMedia)]


def test_2xx_for_a_caller_whose_traversal_connection_is_gone_is_cleared() -> None:
    """The core resumed after a stall: the edge's traversal connection the INVITE came on
    is gone and no replacement is up yet. The callee's 2xx can reach no one: the core
    clears the call toward the callee (ACK + BYE) instead of leaving it established."""
    core = ProxyCore(config(zones=[
        {"name": "T", "type": "traversal_client", "peers": ["192.0.2.2:7001"], "username": "u", "password": "p"},
        neighbour("CUCM", CALLEE)], rules=[rule("CUCM")]))
    trav = Flow("tls", (NODE, 40001), ("192.0.2.2", 7001), 3, "traversal")
    core.zone_changed("T", [trav], 0.0)
    out = core.receive(request(transport="TLS"), trav, 0.0, "T")
    fwd, _ = forwarded(out)
    core.flow_closed(trav, 1.0, "reset")
    core.zone_changed("T", [], 1.0)
    out = core.receive(answer(fwd, 200), udp_in(CALLEE), 2.0)
    assert sorted(m.method for m, f in requests(out) if f.remote == CALLEE) == ["ACK", "BYE"]
    assert not responses(out)
    # Once a replacement is up, a later response would have gone on it instead.
    trav2 = Flow("tls", (NODE, 40002), ("192.0.2.2", 7001), 4, "traversal")
    core.zone_changed("T", [trav2], 3.0)
    out = core.receive(request(transport="TLS"), trav2, 3.0, "T")
    fwd, _ = forwarded(out)
    core.flow_closed(trav2, 3.5, "reset")
    trav3 = Flow("tls", (NODE, 40003), ("192.0.2.2", 7001), 5, "traversal")
    core.zone_changed("T", [trav3], 3.6)
    out = core.receive(answer(fwd, 200), udp_in(CALLEE), 4.0)
    assert [f for r, f in ((a.message, a.flow) for a in sent(out)) if isinstance(r, Response) and r.status == 200] == [trav3]


def test_timer_c_cancels_a_branch_that_rings_forever() -> None:
    """RFC 3261 §16.8: no final response within Timer C of the last provisional: the
    branch is cancelled, its 487 goes upstream."""
    core = ProxyCore(parse_config({"role": "core", "name": "unit", "timers": {"timer_c_s": 181},
                                   "sip": {"listen_ip": NODE}, "zones": [neighbour("P", CALLEE)],
                                   "search_rules": [rule("P")]}))
    out = core.receive(request(), udp_in(), 0.0)
    fwd, _ = forwarded(out)
    core.receive(answer(fwd, 180), udp_in(CALLEE), 10.0)
    assert not [m for m, _ in requests(core.timers(190.0)) if m.method == "CANCEL"]  # reset by the 180 at 10 s
    out = core.timers(191.5)
    assert [m.method for m, _ in requests(out)] == ["CANCEL"]
    out = core.receive(answer(fwd, 487), udp_in(CALLEE), 192.0)
    assert [r.status for r in responses(out) if r.status >= 200] == [487]


def test_the_edge_connects_only_where_its_own_dns_and_neighbour_zones_point() -> None:
    """The one place the edge's connections are allowed (the driver's connect guard):
    hops its DNS or neighbour zones chose; never a traversal zone, a dialog party's
    address, a Via address, or a hop of an unknown zone. A core may connect anywhere."""
    from edgeway.proxy.driver import connect_allowed

    edge = config(role="edge", zones=[
        {"name": "Traversal", "type": "traversal_server", "username": "core", "tls_verify_subject_name": "core.test"},
        {"name": "Partner", "type": "dns", "default_transport": "tls"}, neighbour("SBC", CALLEE, "tcp")])
    allowed = [Hop("tls", "203.0.113.5", 5061, "Partner", origin="dns"), Hop("tcp", *CALLEE, "SBC", origin="neighbour")]
    refused = [Hop("tls", "10.0.0.3", 44611, "Traversal", origin="traversal"),
               Hop("tcp", "10.0.0.4", 5060, "DefaultZone", origin="dialog"),
               Hop("tcp", "10.0.0.4", 5060, "Partner", origin="dialog"),
               Hop("tcp", "10.0.0.4", 5060, "DefaultZone", origin="via"),
               Hop("tcp", "10.0.0.4", 5060, "Partner", origin="neighbour"),  # origin and zone type disagree
               Hop("tcp", "10.0.0.4", 5060, "Nowhere", origin="dns")]
    assert all(connect_allowed(edge, h) for h in allowed)
    assert not any(connect_allowed(edge, h) for h in refused)
    core = config(zones=[neighbour("CUCM", CALLEE, "tcp")])
    assert all(connect_allowed(core, h) for h in refused)


def test_edge_hides_the_core_in_responses_to_requests_outside_any_call() -> None:
    edge = _edge()
    edge.zone_changed("Traversal", [TRAV], 0.0)
    out = edge.receive(request("OPTIONS", ruri="sip:alice@corp.test"), udp_in(), 0.0)
    fwd, flow = forwarded(out, "OPTIONS")
    assert flow == TRAV
    nf = make_response(fwd, 404, to_tag="c1", extra=[("Warning", '399 10.0.0.3 "Policy Response"'), ("Server", "Edgeway/core")])
    out = edge.receive(nf, TRAV, 0.1, "Traversal")
    [up] = [r for r in responses(out) if r.status == 404]
    assert "10.0.0.3" not in up.to_bytes().decode() and up.headers.get("Server") is None
    assert up.headers.get("Warning") == f'399 {NODE} "Policy Response"'


# ------------------------------------------------------------------ the node's own registrar


def _registrar_core() -> ProxyCore:
    cfg = parse_config({
        "role": "core", "name": "unit",
        "sip": {"listen_ip": NODE, "udp_port": 5060, "tcp_port": 5060, "tls_port": 5061},
        "registrar": {"domains": ["corp.test"]},
        "search_rules": [{"name": "registered users", "priority": 10, "mode": "alias_pattern_match",
                          "pattern_type": "suffix", "pattern": "@corp.test", "target_zone": "LocalZone"}],
    })
    return ProxyCore(cfg)


def _register(core: ProxyCore, flow: Flow, contact: str, now: float, cseq: int = 1) -> Response:
    req = request("REGISTER", "sip:corp.test", transport="TCP", cseq=cseq, call_id="reg@ua",
                  extra=[("Expires", "600")])
    req.headers.set("To", "<sip:carol@corp.test>")
    req.headers.set("Contact", f"<{contact}>")
    [resp] = responses(core.receive(req, flow, now))
    return resp


def test_register_then_call_reaches_the_contact_over_its_own_connection() -> None:
    """Issue 9 item 6: REGISTER for a registrar domain is answered by the node; an INVITE
    whose search rule targets LocalZone goes to the binding's contact, over the
    connection the REGISTER came on (a client behind NAT is reachable only there)."""
    core = _registrar_core()
    client = tcp_in(("198.51.100.50", 40123), conn_id=42)
    resp = _register(core, client, "sip:carol@10.1.1.5:5060;transport=tcp", 0.0)
    assert resp.status == 200 and resp.headers.get_all("Contact")
    acts = core.receive(request("INVITE", "sip:carol@corp.test"), udp_in(), 1.0)
    fwd, flow = forwarded(acts)
    assert fwd.uri == "sip:carol@10.1.1.5:5060;transport=tcp"
    assert flow == client  # the REGISTER's connection, not 10.1.1.5
    assert any(isinstance(a, Event) and a.name == "registered" for a in []) is False


def test_registered_contact_gone_or_unknown_user_is_404() -> None:
    core = _registrar_core()
    client = tcp_in(("198.51.100.50", 40123), conn_id=42)
    _register(core, client, "sip:carol@10.1.1.5:5060;transport=tcp", 0.0)
    core.flow_closed(client, 1.0)
    assert statuses(core.receive(request("INVITE", "sip:carol@corp.test"), udp_in(), 2.0))[-1] == 404
    assert statuses(core.receive(request("INVITE", "sip:nobody@corp.test"), udp_in(), 2.0))[-1] == 404


def test_two_contacts_are_forked_in_parallel() -> None:
    core = _registrar_core()
    a = tcp_in(("198.51.100.50", 40001), conn_id=51)
    b = tcp_in(("198.51.100.51", 40002), conn_id=52)
    _register(core, a, "sip:carol@10.1.1.5;transport=tcp", 0.0)
    req = request("REGISTER", "sip:corp.test", transport="TCP", cseq=1, call_id="reg2@ua2", extra=[("Expires", "600")])
    req.headers.set("To", "<sip:carol@corp.test>")
    req.headers.set("Contact", "<sip:carol@10.1.1.6;transport=tcp>;q=0.5")
    assert statuses(core.receive(req, b, 0.0)) == [200]
    acts = core.receive(request("INVITE", "sip:carol@corp.test"), udp_in(), 1.0)
    invites = [(m.uri, f.conn_id) for m, f in requests(acts) if m.method == "INVITE"]
    assert sorted(invites) == [("sip:carol@10.1.1.5;transport=tcp", 51), ("sip:carol@10.1.1.6;transport=tcp", 52)]


def test_registration_through_the_edge_comes_back_over_the_clients_connection() -> None:
    """Issue 9 item 5: a REGISTER from an outside client's TLS connection is forwarded
    into the traversal zone with a Path entry naming that connection (RFC 3327 + RFC 5626
    §5.3); a request from inside routed by that Path (the registrar's binding) goes down
    the same connection; once it is gone, 430 Flow Failed."""
    edge = ProxyCore(config(role="edge", zones=[
        {"name": "Traversal", "type": "traversal_server", "username": "core", "tls_verify_subject_name": "core.test"},
    ], rules=[rule("Traversal", 10, pattern_type="regex", pattern=r"(.*@)?corp\.test", mode="alias_pattern_match")]))
    edge.zone_changed("Traversal", [TRAV], 0.0)
    client = Flow("tls", (NODE, 5061), ("198.51.100.50", 40999), 9)
    reg = request("REGISTER", "sip:corp.test", via_host="198.51.100.50", transport="TLS", extra=[("Expires", "600")])
    reg.headers.set("To", "<sip:carol@corp.test>")
    reg.headers.set("Contact", "<sip:carol@192.168.1.5:5061;transport=tls>")
    fwd, flow = forwarded(edge.receive(reg, client, 0.0, None), "REGISTER")
    assert flow == TRAV
    [path] = fwd.headers.get_all("Path")
    path_uri = parse_name_addr(path).uri
    assert path_uri.host == NODE and path_uri.port == 5061 and path_uri.user and "lr" in path_uri.params
    # The core's registrar keeps the Path; its INVITE for carol carries it as Route.
    inv = request("INVITE", "sip:carol@192.168.1.5:5061;transport=tls", via_host="10.0.0.3", transport="TLS",
                  extra=[("Route", path)])
    inv.headers.add("Via", "SIP/2.0/TLS 10.0.0.3:44611;branch=z9hG4bKcorein;rport", first=True)
    out = edge.receive(inv, TRAV, 1.0, "Traversal")
    fwd_inv, out_flow = forwarded(out)
    assert out_flow == client and fwd_inv.uri == "sip:carol@192.168.1.5:5061;transport=tls"
    assert not fwd_inv.headers.get_all("Route")
    # The client's connection ends: the next one gets 430 Flow Failed.
    edge.flow_closed(client, 2.0)
    inv2 = request("INVITE", "sip:carol@192.168.1.5:5061;transport=tls", via_host="10.0.0.3", transport="TLS",
                   extra=[("Route", path)])
    assert 430 in statuses(edge.receive(inv2, TRAV, 3.0, "Traversal"))


def test_core_registrar_sends_path_bindings_down_the_traversal_zone() -> None:
    """On the core, a binding registered through the traversal zone is reached with its
    Path as the route set, over the zone's current connection (the one the REGISTER came
    on may have been replaced)."""
    cfg = parse_config({
        "role": "core", "name": "unit",
        "sip": {"listen_ip": NODE, "udp_port": 5060, "tcp_port": 5060, "tls_port": 5061},
        "zones": [{"name": "T", "type": "traversal_client", "peers": ["192.0.2.2:7001"], "username": "u", "password": "p"}],
        "registrar": {"domains": ["corp.test"]},
        "search_rules": [{"name": "registered", "priority": 10, "mode": "alias_pattern_match", "pattern_type": "suffix",
                          "pattern": "@corp.test", "target_zone": "LocalZone"}],
    })
    core = ProxyCore(cfg)
    old = Flow("tls", (NODE, 44611), ("192.0.2.2", 7001), 21, "traversal")
    new = Flow("tls", (NODE, 44622), ("192.0.2.2", 7001), 22, "traversal")
    core.zone_changed("T", [old], 0.0)
    path = "<sip:ew9.0123456789ab@192.0.2.2:5061;transport=tls;lr>"
    reg = request("REGISTER", "sip:corp.test", via_host="192.0.2.2", transport="TLS", extra=[("Expires", "600"), ("Path", path)])
    reg.headers.set("To", "<sip:carol@corp.test>")
    reg.headers.set("Contact", "<sip:carol@192.168.1.5:5061;transport=tls>")
    assert statuses(core.receive(reg, old, 0.0, "T")) == [200]
    core.flow_closed(old, 1.0)
    core.zone_changed("T", [new], 1.0)
    fwd, flow = forwarded(core.receive(request("INVITE", "sip:carol@corp.test"), udp_in(), 2.0))
    assert flow == new and fwd.uri == "sip:carol@192.168.1.5:5061;transport=tls"
    assert fwd.headers.get_all("Route") == [path]


def _proxying_core(path_headers: bool) -> tuple[ProxyCore, Flow]:
    """A core whose REGISTERs from traversal zone T go to call control's registrar
    (UDP neighbour at CALLEE), in seed 002 §2.3's default mode or with SIP Path headers."""
    cfg = parse_config({
        "role": "core", "name": "unit",
        "sip": {"listen_ip": NODE, "udp_port": 5060, "tcp_port": 5060, "tls_port": 5061, "path_headers": path_headers},
        "zones": [{"name": "T", "type": "traversal_client", "peers": ["192.0.2.2:7001"], "username": "u", "password": "p"},
                  neighbour("CallControl", CALLEE)],
        "search_rules": [{"name": "registrations to call control", "priority": 10, "mode": "alias_pattern_match",
                          "pattern_type": "regex", "pattern": r"(.*@)?corp\.test", "source_zone": "T",
                          "target_zone": "CallControl"}],
    })
    core = ProxyCore(cfg)
    trav = Flow("tls", (NODE, 44611), ("192.0.2.2", 7001), 21, "traversal")
    core.zone_changed("T", [trav], 0.0)
    return core, trav


EDGE_PATH = "<sip:ew9.0123456789ab@192.0.2.2:7001;transport=tls;lr>"
CLIENT_CONTACT = "sip:carol@192.168.1.5:5061;transport=tls"


def _remote_register(core: ProxyCore, trav: Flow, now: float) -> Request:
    reg = request("REGISTER", "sip:corp.test", via_host="192.0.2.2", transport="TLS", call_id="reg@remote",
                  extra=[("Expires", "600"), ("Path", EDGE_PATH)])
    reg.headers.set("To", "<sip:carol@corp.test>")
    reg.headers.set("Contact", f'<{CLIENT_CONTACT}>;+sip.instance="<urn:uuid:1>"')
    fwd, flow = forwarded(core.receive(reg, trav, now, "T"), "REGISTER")
    assert flow.remote == CALLEE
    return fwd


def _registrar_ok(core: ProxyCore, fwd: Request, now: float, inside_phone: bool = True) -> Response:
    """The registrar's 2xx listing the binding just made and an inside phone's."""
    [mine] = fwd.headers.get_all("Contact")
    contacts = [("Contact", parse_name_addr(mine).uri.__str__().join("<>") + ";expires=600")]
    if inside_phone:
        contacts.append(("Contact", "<sip:carol@10.9.9.9:5060>;expires=300"))
    ok = make_response(fwd, 200, to_tag="reg1", extra=contacts)
    [up] = [r for r in responses(core.receive(ok, udp_in(CALLEE), now)) if r.status == 200]
    return up


def test_core_rewrites_contact_of_registrations_from_the_traversal_zone() -> None:
    """Seed 002 §2.3 / catalogue case 32, SIP Path headers Off (the default): the REGISTER
    reaching call control has its Contact rewritten to the core's address and no Path; the
    2xx going back lists only the client's own binding, with its original Contact; call
    control's INVITE to the rewritten Contact goes over the traversal zone's current
    connection with the client's Contact as Request-URI and the edge's Path as Route."""
    core, trav = _proxying_core(False)
    fwd = _remote_register(core, trav, 0.0)
    assert not fwd.headers.get_all("Path")
    [c] = fwd.headers.get_all("Contact")
    na = parse_name_addr(c)
    assert na.uri.host == NODE and na.uri.port == 5060 and na.uri.user.startswith("ewr")
    assert na.params.get("+sip.instance") == '"<urn:uuid:1>"'  # header parameters kept
    rewritten = str(na.uri)
    # A refresh maps to the same Contact (the registrar refreshes, it does not add one).
    assert parse_name_addr(_remote_register(core, trav, 1.0).headers.get("Contact")).uri.user == na.uri.user
    up = _registrar_ok(core, fwd, 1.1)
    assert [parse_name_addr(v).uri.__str__() for v in up.headers.get_all("Contact")] == [CLIENT_CONTACT]
    assert "10.9.9.9" not in up.to_bytes().decode()
    # The traversal connection is replaced; call control calls the rewritten Contact.
    new = Flow("tls", (NODE, 44622), ("192.0.2.2", 7001), 22, "traversal")
    core.flow_closed(trav, 2.0)
    core.zone_changed("T", [new], 2.0)
    inv = request("INVITE", rewritten, via_host=CALLEE[0])
    out, flow = forwarded(core.receive(inv, udp_in(CALLEE), 3.0))
    assert flow == new and out.uri == CLIENT_CONTACT
    assert out.headers.get_all("Route") == [EDGE_PATH]
    # An unknown (or expired) rewritten Contact: 480, nothing forwarded.
    stale = request("INVITE", f"sip:ewr{'0' * 20}@{NODE}:5060;transport=udp", via_host=CALLEE[0])
    acts = core.receive(stale, udp_in(CALLEE), 4.0)
    assert statuses(acts)[-1] == 480 and not [m for m, _ in requests(acts) if m.method == "INVITE"]
    acts = core.receive(request("INVITE", rewritten, via_host=CALLEE[0]), udp_in(CALLEE), 700.0)
    assert statuses(acts)[-1] == 480


def test_core_adds_its_path_with_sip_path_headers_on() -> None:
    """SIP Path headers On: Contact unchanged, the core's Path entry on top of the edge's;
    call control's INVITE routed by them goes over the traversal zone with the edge's entry
    left as its Route; the 2xx going back keeps only the client's own binding."""
    core, trav = _proxying_core(True)
    fwd = _remote_register(core, trav, 0.0)
    assert parse_name_addr(fwd.headers.get("Contact")).uri.__str__() == CLIENT_CONTACT
    paths = fwd.headers.get_all("Path")
    assert len(paths) == 2 and paths[1] == EDGE_PATH
    mine = parse_name_addr(paths[0]).uri
    assert mine.host == NODE and mine.port == 5060 and "lr" in mine.params and mine.user.startswith("ewp")
    up = _registrar_ok(core, fwd, 0.1)
    assert [parse_name_addr(v).uri.__str__() for v in up.headers.get_all("Contact")] == [CLIENT_CONTACT]
    inv = request("INVITE", CLIENT_CONTACT, via_host=CALLEE[0], extra=[("Route", paths[0]), ("Route", EDGE_PATH)])
    out, flow = forwarded(core.receive(inv, udp_in(CALLEE), 1.0))
    assert flow == trav and out.uri == CLIENT_CONTACT and out.headers.get_all("Route") == [EDGE_PATH]
    # The zone is down: 503 naming it, nothing forwarded.
    core.flow_closed(trav, 2.0)
    core.zone_changed("T", [], 2.0)
    inv = request("INVITE", CLIENT_CONTACT, via_host=CALLEE[0], extra=[("Route", paths[0]), ("Route", EDGE_PATH)])
    assert statuses(core.receive(inv, udp_in(CALLEE), 3.0))[-1] == 503


def test_edge_caps_proxied_registrations() -> None:
    """Issue 9 item 5: beyond ``limits.max_proxied_registrations`` distinct AORs a new
    REGISTER gets 503 + Retry-After; a refresh of a counted AOR still goes through, and an
    AOR whose bindings are all removed no longer counts."""
    cfg = config(role="edge", zones=[
        {"name": "Traversal", "type": "traversal_server", "username": "core", "tls_verify_subject_name": "core.test"},
    ], rules=[rule("Traversal", 10)])
    cfg.limits.max_proxied_registrations = 1
    edge = ProxyCore(cfg)
    edge.zone_changed("Traversal", [TRAV], 0.0)
    client = Flow("tls", (NODE, 5061), ("198.51.100.50", 40999), 9)

    def register(user: str, now: float, expires: str = "600") -> list:
        reg = request("REGISTER", "sip:corp.test", via_host="198.51.100.50", transport="TLS", extra=[("Expires", expires)])
        reg.headers.set("To", f"<sip:{user}@corp.test>")
        reg.headers.set("Contact", f"<sip:{user}@192.168.1.5:5061;transport=tls>")
        return edge.receive(reg, client, now, None)

    def accept(actions: list, now: float, expires: int = 600) -> None:
        fwd, _ = forwarded(actions, "REGISTER")
        ok = make_response(fwd, 200, to_tag="r1", extra=[("Contact", f"<sip:x@192.168.1.5:5061;transport=tls>;expires={expires}")]
                           if expires else [])
        edge.receive(ok, TRAV, now, "Traversal")

    accept(register("carol", 0.0), 0.1)
    assert 503 in statuses(register("dave", 1.0))  # a second AOR: over the cap of 1
    accept(register("carol", 2.0), 2.1)  # carol's refresh still passes
    accept(register("carol", 3.0, "0"), 3.1, expires=0)  # carol removes her binding
    forwarded(register("dave", 4.0), "REGISTER")  # now dave fits


def test_maintenance_mode_refuses_new_calls_and_registrations_only() -> None:
    core = ProxyCore(config(zones=[neighbour("Partner", CALLEE)], rules=[rule("Partner")]))
    inv = request()
    fwd, _ = forwarded(core.receive(inv, udp_in(), 0.0))  # an established call's INVITE went out
    core.maintenance = True
    assert statuses(core.receive(request(), udp_in(), 1.0)) == [503]
    [resp] = responses(core.receive(request("REGISTER", "sip:corp.test"), udp_in(), 1.0))
    assert resp.status == 503 and resp.headers.get("Retry-After") and "Maintenance" in resp.headers.get("Warning")
    # What is under way goes on: the answer to the first INVITE still reaches the caller.
    assert 200 in statuses(core.receive(answer(fwd, 200), udp_in(CALLEE), 2.0))
    core.maintenance = False
    forwarded(core.receive(request(), udp_in(), 3.0))


def test_edge_asks_for_the_mux_pair_on_the_traversal_side_only() -> None:
    """Seed 002 §7.2: the edge's relay side facing the traversal zone goes on the shared
    mux pair (its port is then the same for every call); the outside side and every
    side on a core keep a pair of their own."""
    sdp = (f"v=0\r\no=a 1 1 IN IP4 {CALLER[0]}\r\ns=-\r\nc=IN IP4 {CALLER[0]}\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 8\r\n").encode()
    edge = _edge()
    edge.zone_changed("Traversal", [TRAV], 0.0)
    out = edge.receive(request(ruri="sip:alice@corp.test", body=sdp), udp_in(), 0.0, None)
    [alloc] = [a for a in out if isinstance(a, AllocateMedia)]
    assert (alloc.mux_a, alloc.mux_b, alloc.latch_a, alloc.latch_b) == (False, True, False, True)
    out = edge.media_ready(alloc.alloc_id, {0: (36002, 36000)}, "", 0.01)
    fwd, flow = forwarded(out)
    assert flow == TRAV and "m=audio 36000 " in fwd.body.decode()  # the core sends to the mux port
    core = ProxyCore(config(zones=[neighbour("P", CALLEE)], rules=[rule("P")]))
    out = core.receive(request(body=sdp), udp_in(), 0.0)
    [alloc] = [a for a in out if isinstance(a, AllocateMedia)]
    assert not alloc.mux_a and not alloc.mux_b
