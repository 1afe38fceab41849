"""Sans-IO parts of ``edgeway probe`` (seed 004 media node discovery): STUN transactions and
framing, the choice rules and fallback reasons, the 2 h cache keyed by local address, keepalive
timing with fake time."""

from __future__ import annotations

import pytest
from aioice import stun

from edgeway.probe.cache import CACHE_LIFETIME, ProbeCache, probe_set_key
from edgeway.probe.choice import Sample, TransportResult, choose, needs_proxy, result_from_dict
from edgeway.probe.keepalive import MAX_INTERVAL, Keepalive
from edgeway.probe.stun import (ProbeError, StreamFramer, UdpTransaction, binding_request,
                                parse_binding_response)


def _answer(req: stun.Message, mapped=("192.0.2.7", 40000), cls=stun.Class.RESPONSE, tid=None) -> bytes:
    attrs = {"XOR-MAPPED-ADDRESS": mapped} if cls == stun.Class.RESPONSE else {"ERROR-CODE": (400, "Bad Request")}
    return bytes(stun.Message(stun.Method.BINDING, cls, tid or req.transaction_id, attrs))


# --- STUN -------------------------------------------------------------------------------------

def test_binding_request_is_valid_stun_with_fingerprint():
    req = binding_request()
    parsed = stun.parse_message(bytes(req))
    assert parsed.message_method == stun.Method.BINDING and parsed.message_class == stun.Class.REQUEST
    assert "FINGERPRINT" in parsed.attributes


def test_parse_matches_transaction_and_reads_xor_mapped_address():
    req = binding_request()
    resp = parse_binding_response(_answer(req), req.transaction_id)
    assert resp.mapped == ("192.0.2.7", 40000) and resp.error is None
    assert parse_binding_response(_answer(binding_request()), req.transaction_id) is None  # other transaction
    err = parse_binding_response(_answer(req, cls=stun.Class.ERROR), req.transaction_id)
    assert err.error == (400, "Bad Request")
    with pytest.raises(ProbeError, match="not a STUN"):
        parse_binding_response(b"HTTP/1.1 400 Bad Request\r\n\r\n", req.transaction_id)
    with pytest.raises(ProbeError, match="magic cookie"):
        parse_binding_response(bytes(20), req.transaction_id)


def test_udp_transaction_retransmits_per_rfc8489_and_is_bounded_by_timeout():
    tx = UdpTransaction(timeout=4.0)
    sends = [0.0]
    tx.start(0.0)
    now = 0.0
    for _ in range(20):
        dl = tx.next_deadline()
        if dl is None:
            break
        now = dl
        if tx.on_timer(now) is not None:
            sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5]  # RTO 500 ms, doubling (RFC 8489 §6.2.1)
    assert tx.done and tx.response is None and "no answer in 4 s (4 requests)" in tx.error


def test_udp_transaction_gives_up_after_rc_requests_and_rm_wait():
    tx = UdpTransaction(timeout=1000.0)
    tx.start(0.0)
    times = []
    for _ in range(20):
        dl = tx.next_deadline()
        if dl is None:
            break
        if tx.on_timer(dl) is not None:
            times.append(dl)
    # Rc = 7 requests at 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5; then Rm·RTO = 8 s: done at 39.5 s
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5] and "7 requests" in tx.error and tx.done


def test_udp_transaction_rtt_from_last_copy_and_ignores_strays():
    tx = UdpTransaction(timeout=3.0)
    tx.start(10.0)
    assert tx.on_timer(10.5) is not None
    assert not tx.receive(b"garbage-not-stun-at-all", 10.6)
    assert not tx.receive(_answer(binding_request()), 10.6)
    assert tx.receive(_answer(tx.request), 10.7)
    assert tx.rtt == pytest.approx(0.2) and tx.retransmits == 1 and tx.error is None


def test_stream_framer_splits_and_joins_messages():
    a, b = bytes(binding_request()), bytes(binding_request())
    f = StreamFramer()
    blob = a + b
    assert f.feed(blob[:7]) == [] and f.feed(blob[7:len(a) + 3]) == [a] and f.feed(blob[len(a) + 3:]) == [b]
    with pytest.raises(ProbeError, match="does not carry STUN"):
        StreamFramer().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


# --- choice rules -----------------------------------------------------------------------------

def ok(*rtts):
    return [Sample(rtt=r) for r in rtts]


def bad(n=3, why="no answer in 1 s (3 requests)"):
    return [Sample(error=why) for _ in range(n)]


def test_udp_preferred_over_faster_tcp_and_reasons_name_why():
    rs = [TransportResult("a", "udp", 5004, ok(0.050, 0.040, 0.060)),
          TransportResult("a", "tcp", 5004, ok(0.010, 0.010, 0.010)),
          TransportResult("b", "udp", 5004, ok(0.020, 0.030, 0.025)),
          TransportResult("b", "tls", 443, bad(1, "tls connect: connection refused"))]
    c = choose(rs, ["a", "b"])
    assert (c.best.node, c.best.transport) == ("b", "udp") and c.best.rtt_median == pytest.approx(0.025)
    why = {(r.node, r.transport): (r.verdict, r.text) for r in c.reasons}
    assert why[("a", "udp")][0] == "lost" and "slower than b" in why[("a", "udp")][1]
    assert why[("a", "tcp")][0] == "lost" and "udp, which is preferred" in why[("a", "tcp")][1]
    assert why[("b", "tls")] == ("failed", "tls connect: connection refused")
    assert c.fallback == [] and c.headline().startswith("best: node b over udp")


def test_no_udp_falls_back_to_tcp_and_says_so():
    rs = [TransportResult("m", "udp", 5004, bad(3, "port unreachable (ICMP)")),
          TransportResult("m", "tcp", 5004, ok(0.002, 0.003, 0.001)),
          TransportResult("m", "tls", 443, ok(0.001, 0.001, 0.001))]
    c = choose(rs)
    assert c.best.transport == "tcp" and c.best.rtt_min == pytest.approx(0.001)
    assert [(r.transport, r.verdict) for r in c.fallback] == [("udp", "failed")]
    assert "fell back from udp (port unreachable (ICMP))" in c.headline()
    tls = next(r for r in c.reasons if r.transport == "tls")
    assert "tcp is preferred" in tls.text


def test_losses_then_rtt_then_node_order_break_ties():
    a = TransportResult("a", "udp", 1, ok(0.001, 0.001) + bad(1))
    b = TransportResult("b", "udp", 1, ok(0.009, 0.009, 0.009))
    assert choose([a, b]).best.node == "b"
    c = TransportResult("c", "udp", 1, ok(0.009, 0.009, 0.009))
    assert choose([c, b], ["b", "c"]).best.node == "b"
    assert "listed first" in choose([c, b], ["b", "c"]).reasons[0].text


def test_nothing_reachable_and_proxy_rule():
    rs = [TransportResult("a", t, 1, bad(1)) for t in ("udp", "tcp", "tls")]
    assert needs_proxy(rs) and choose(rs).best is None
    assert choose(rs).headline() == "no media node reachable over any transport"
    rs.append(TransportResult("a", "proxy-tls", 443, ok(0.004)))
    c = choose(rs)
    assert c.best.transport == "proxy-tls" and [r.transport for r in c.fallback] == ["udp", "tcp", "tls"]
    assert not needs_proxy([TransportResult("a", "tls", 443, ok(0.1))])


def test_error_is_most_frequent_and_dict_round_trip():
    r = TransportResult("a", "udp", 5004, [Sample(error="x"), Sample(error="y"), Sample(error="y")])
    assert r.error == "y" and not r.usable
    r2 = TransportResult("a", "tls", 443, ok(0.002) + bad(1), note="TLS certificate NOT verified (--insecure)")
    d = r2.to_dict()
    assert d["reachable"] and d["rtt_min_ms"] == 2.0 and d["lost"] == 1
    back = result_from_dict(d)
    assert back.rtt_min == r2.rtt_min and back.note == r2.note and back.lost == 1
    assert TransportResult("a", "proxy-tls", 443, skipped="no --proxy given").error == "no --proxy given"


# --- cache ------------------------------------------------------------------------------------

def test_cache_hits_for_two_hours_from_the_same_local_address():
    key = probe_set_key([("m1", 5004, 5004, 443)], None)
    cache = ProbeCache()
    cache.store(key, "10.0.0.5", 1000.0, [{"x": 1}])
    e, why = cache.lookup(key, "10.0.0.5", 1000.0 + CACHE_LIFETIME - 1)
    assert e is not None and e.results == [{"x": 1}] and "min ago" in why
    e, why = cache.lookup(key, "10.0.0.5", 1000.0 + CACHE_LIFETIME)
    assert e is None and "expired (120 min old" in why
    e, why = cache.lookup(key, "192.168.1.9", 1001.0)
    assert e is None and why == "local address changed from 10.0.0.5 to 192.168.1.9"
    e, why = cache.lookup(probe_set_key([("m2", 5004, 5004, 443)], None), "10.0.0.5", 1001.0)
    assert e is None and "no cached probe" in why


def test_cache_json_round_trip_and_bad_file_is_empty():
    cache = ProbeCache()
    key = probe_set_key([("m1", 1, 2, 3)], "proxy:3128", True)
    assert key == "m1/1/2/3 via proxy:3128 proxy-only"
    cache.store(key, "127.0.0.1", 5.0, [{"node": "m1"}])
    back = ProbeCache.from_json(cache.to_json())
    assert back.lookup(key, "127.0.0.1", 6.0)[0].results == [{"node": "m1"}]
    assert ProbeCache.from_json("{not json").entries == {}
    assert ProbeCache.from_json('{"version": 9}').entries == {}


# --- keepalive --------------------------------------------------------------------------------

def test_keepalive_at_least_every_30s_when_idle_and_not_when_media_flows():
    ka = Keepalive(0.0)  # default 15 s
    t, sent_at = 0.0, []
    for _ in range(20):
        t = ka.next_deadline()
        if t > 100:
            break
        if ka.poll(t) is not None:
            sent_at.append(t)
    assert sent_at == [15.0, 30.0, 45.0, 60.0, 75.0, 90.0]
    assert all(b - a <= MAX_INTERVAL for a, b in zip([0.0] + sent_at, sent_at))
    ka2 = Keepalive(0.0, 30.0)
    for media in range(1, 60):  # a packet every second: no keepalive needed
        ka2.note_sent(float(media))
        assert ka2.poll(float(media)) is None
    assert ka2.next_deadline() == 89.0
    data = ka2.poll(89.0)
    assert stun.parse_message(data).message_class == stun.Class.INDICATION
    assert stun.parse_message(Keepalive(0.0, request=True).poll(15.0)).message_class == stun.Class.REQUEST


def test_keepalive_interval_must_fit_the_30s_pinhole():
    with pytest.raises(ValueError, match="seed 004"):
        Keepalive(0.0, 31.0)
    with pytest.raises(ValueError):
        Keepalive(0.0, 0.0)


# --- option parsing ---------------------------------------------------------------------------

def test_parse_node_and_proxy():
    from edgeway.probe.client import parse_node, parse_proxy

    n = parse_node("media.example.com", 5004, 5004, 443)
    assert (n.host, n.udp_port, n.tcp_port, n.tls_port) == ("media.example.com", 5004, 5004, 443)
    n = parse_node("192.0.2.1:3478", 5004, 5004, 443)
    assert (n.host, n.udp_port, n.tcp_port, n.tls_port, n.name) == ("192.0.2.1", 3478, 3478, 443, "192.0.2.1:3478")
    assert parse_node("[2001:db8::1]:9", 1, 2, 3).host == "2001:db8::1"
    assert parse_node("2001:db8::1", 1, 2, 3).udp_port == 1
    for bad in ("h:0", "h:x", ":5", "[::1", "[::1]x"):
        with pytest.raises(ValueError):
            parse_node(bad, 1, 2, 3)
    p = parse_proxy("http://us%20er:p%3A%40ss@proxy.corp:3128")
    assert (p.host, p.port, p.user, p.password) == ("proxy.corp", 3128, "us er", "p:@ss")
    import base64
    assert base64.b64decode(p.authorization().split()[1]) == b"us er:p:@ss"  # RFC 7617 user-pass
    with pytest.raises(ValueError, match="RFC 7617"):
        parse_proxy("http://us%3Aer:x@proxy.corp:3128")
    assert parse_proxy("proxy.corp").port == 8080 and parse_proxy("proxy.corp").authorization() is None
    with pytest.raises(ValueError, match="only http://"):
        parse_proxy("https://proxy.corp:443")


def test_cli_rejects_bad_options_with_exit_2():
    from typer.testing import CliRunner

    from edgeway.cli.main import app

    for args, text in ((["h", "--proxy-only"], "--proxy-only needs --proxy"),
                       (["h", "--transports", "udp,sctp"], "sctp"),
                       (["h", "--proxy", "https://p:1"], "only http://"),
                       (["h:0"], "port must be 1-65535"),
                       (["h", "--keepalive", "31"], "30")):
        res = CliRunner().invoke(app, ["probe", *args])
        assert res.exit_code == 2 and text in res.output, (args, res.output)
