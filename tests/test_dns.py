"""Lab DNS server and RFC 3263 resolver, over loopback UDP/TCP."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeway.lab.dns_server import LabDnsServer, Record, records_from_text
from edgeway.routing.resolver import Target, make_resolver, naptr_to_srv, order_srv, resolve

ZONE = """
$ORIGIN corp.edgeway.test.
; NAPTR -> SRV -> A
@                 NAPTR 10 50 "s" "SIPS+D2T" "" _sips._tcp
@                 NAPTR 20 50 "s" "SIP+D2T"  "" _sip._tcp
@                 NAPTR 30 50 "s" "SIP+D2U"  "" _sip._udp
_sips._tcp        SRV   10 60 5061 edge
_sips._tcp        SRV   20 10 5061 edge2
_sip._tcp         SRV   10 10 5060 core
_sip._udp         SRV   10 10 5060 core
edge        300   A     127.0.0.2
edge2             IN A  127.0.0.5
core              A     127.0.0.3
core              AAAA  ::1
cucm              A     127.0.0.4
@                 TXT   "token=abc"

$ORIGIN srvonly.edgeway.test.
_sip._tcp         SRV   10 0 5070 cucm.corp.edgeway.test.
_sip._udp         SRV   10 0 5071 cucm.corp.edgeway.test.

$ORIGIN aonly.edgeway.test.
@                 A     127.0.0.9

$ORIGIN callservice.ciscospark.com.
_sips._tcp        SRV   5 10 5062 l2sip-cfa-01.wbx2.com.
_sips._tcp        SRV   5 10 5062 l2sip-cfa-02.wbx2.com.

$ORIGIN wbx2.com.
l2sip-cfa-01      A     127.0.0.21
l2sip-cfa-02      A     127.0.0.22

$ORIGIN dmzlab.call.ciscospark.com.
_sips._tcp        SRV   5 10 5061 l2sip-cfa-01.wbx2.com.

$ORIGIN noservice.edgeway.test.
_sip._tcp         SRV   0 0 0 .
@                 A     127.0.0.10
"""

TIMEOUT = 2.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _with_server(fn, records=None, **kw):
    server = LabDnsServer(records if records is not None else records_from_text(ZONE), **kw)
    await server.start()
    try:
        resolver = make_resolver([server.address], TIMEOUT)
        return await fn(server, resolver)
    finally:
        await server.close()


def _resolve(*args, records=None, **kw):
    async def go(server, resolver):
        targets = await resolve(*args, resolver, **kw)
        return targets, list(server.queries)

    return run(_with_server(go, records))


# --------------------------------------------------------------------------- server


def test_records_from_text():
    recs = records_from_text(ZONE)
    r = recs[0]
    assert r.name == "corp.edgeway.test." and r.rtype == "NAPTR"
    assert r.data == '10 50 "s" "SIPS+D2T" "" _sips._tcp.corp.edgeway.test.'
    edge = [x for x in recs if x.name == "edge.corp.edgeway.test."][0]
    assert edge.ttl == 300 and edge.data == "127.0.0.2"
    assert [x for x in recs if x.name == "edge2.corp.edgeway.test."][0].rtype == "A"
    with pytest.raises(ValueError, match="line 1"):
        records_from_text("x.test. SRV 10 notanumber")
    with pytest.raises(ValueError):
        Record("x.test", "A", "not-an-ip")


def test_server_answers_directly():
    async def go(server, _resolver):
        loop_addr = server.address

        def ask(name, rtype, tcp=False):
            q = dns.message.make_query(name, rtype)
            f = dns.query.tcp if tcp else dns.query.udp
            return f(q, loop_addr[0], port=loop_addr[1], timeout=TIMEOUT)

        def in_thread(*a, **k):
            return asyncio.get_running_loop().run_in_executor(None, lambda: ask(*a, **k))

        r = await in_thread("_sips._tcp.corp.edgeway.test", "SRV")
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
        assert len(r.answer[0]) == 2
        add = {(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in r.additional}
        assert ("edge.corp.edgeway.test.", "A") in add and ("edge2.corp.edgeway.test.", "A") in add

        r = await in_thread("corp.edgeway.test", "NAPTR", tcp=True)
        assert len(r.answer[0]) == 3
        add = {(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in r.additional}
        assert ("_sips._tcp.corp.edgeway.test.", "SRV") in add
        assert ("core.corp.edgeway.test.", "AAAA") in add

        r = await in_thread("corp.edgeway.test", "TXT")
        assert r.answer[0][0].strings == (b"token=abc",)

        r = await in_thread("nope.corp.edgeway.test", "A")
        assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
        assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA

        r = await in_thread("_tcp.corp.edgeway.test", "A")  # empty non-terminal: NODATA
        assert r.rcode() == dns.rcode.NOERROR and not r.answer

        r = await in_thread("edge.corp.edgeway.test", "AAAA")  # exists, other type: NODATA
        assert r.rcode() == dns.rcode.NOERROR and not r.answer

        r = await in_thread("www.example.org", "A")
        assert r.rcode() == dns.rcode.REFUSED and not (r.flags & dns.flags.AA)

        # garbage is dropped without killing the server
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"\x00\x01garbage", loop_addr)
        s.close()
        r = await in_thread("edge.corp.edgeway.test", "A")
        assert r.answer[0][0].address == "127.0.0.2"
        assert ("edge.corp.edgeway.test", "A") in server.queries

    run(_with_server(go))


def test_udp_truncation_then_tcp():
    many = [Record("big.edgeway.test", "TXT", '"' + "x" * 200 + f'{i}"') for i in range(10)]

    async def go(server, resolver):
        q = dns.message.make_query("big.edgeway.test", "TXT")
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(
            None, lambda: dns.query.udp(q, server.host, port=server.port, timeout=TIMEOUT)
        )
        assert r.flags & dns.flags.TC and not r.answer
        ans = await resolver.resolve("big.edgeway.test.", "TXT")  # dnspython retries over TCP
        assert len(ans.rrset) == 10

    run(_with_server(go, many))


def test_explicit_zones_refuse_and_nxdomain():
    recs = [Record("a.lab.test", "A", "127.0.0.1")]

    async def go(server, resolver):
        assert server.zones == ["lab.test."]
        assert await resolve("b.lab.test", None, None, False, resolver) == []
        assert await resolve("a.other.test", None, None, False, resolver) == []
        assert await resolve("a.lab.test", None, None, False, resolver) == [
            Target("127.0.0.1", 5060, "tcp", "a.lab.test")
        ]

    run(_with_server(go, recs, zones=["lab.test"]))


# --------------------------------------------------------------------------- pure helpers


def test_naptr_to_srv_ordering_and_filtering():
    recs = [
        (20, 10, "s", "SIP+D2T", "", "_sip._tcp.x.test."),
        (10, 50, "S", "SIPS+D2T", "", "_sips._tcp.x.test."),
        (10, 10, "s", "SIP+D2U", "", "_sip._udp.x.test."),
        (5, 0, "s", "SIP+D2S", "", "_sip._sctp.x.test."),  # unsupported service
        (5, 0, "u", "SIP+D2T", "!^.*$!sip:x@y!", "."),  # not an SRV rewrite
        (5, 0, b"s", b"SIP+D2T", b"", "."),  # empty replacement
    ]
    assert naptr_to_srv(recs) == [
        ("udp", "_sip._udp.x.test"),
        ("tls", "_sips._tcp.x.test"),
        ("tcp", "_sip._tcp.x.test"),
    ]
    assert naptr_to_srv(recs, supported=("SIPS+D2T",)) == [("tls", "_sips._tcp.x.test")]


def test_order_srv_weights_distribution():
    recs = [(10, 90, 5061, "a"), (10, 10, 5061, "b"), (20, 0, 5061, "c"), (5, 0, 5061, "z")]
    rng = random.Random(1)
    firsts = Counter()
    for _ in range(2000):
        out = order_srv(recs, rng)
        assert out[0][3] == "z" and out[-1][3] == "c"
        firsts[out[1][3]] += 1
    assert 0.85 < firsts["a"] / 2000 < 0.95


def test_order_srv_weight_zero_rarely_first():
    recs = [(1, 0, 1, "zero"), (1, 100, 1, "heavy")]
    rng = random.Random(7)
    zero_first = sum(order_srv(recs, rng)[0][3] == "zero" for _ in range(5000))
    assert 0 < zero_first < 5000 * 0.03  # RFC 2782: chosen with a small, non-zero chance


srv_tuples = st.lists(
    st.tuples(
        st.integers(0, 5), st.integers(0, 100), st.integers(1, 65535), st.text("abcdef", min_size=1, max_size=4)
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(srv_tuples, st.integers(0, 2**32))
def test_order_srv_property(records, seed):
    out = order_srv(records, random.Random(seed))
    assert sorted(out) == sorted(records)  # a permutation
    prios = [r[0] for r in out]
    assert prios == sorted(prios)  # priorities non-decreasing


# --------------------------------------------------------------------------- resolve


def test_naptr_srv_a_chain():
    targets, queries = _resolve("corp.edgeway.test", None, None, False, rng=random.Random(0))
    assert targets == [
        Target("127.0.0.2", 5061, "tls", "edge.corp.edgeway.test"),
        Target("127.0.0.5", 5061, "tls", "edge2.corp.edgeway.test"),
        Target("127.0.0.3", 5060, "tcp", "core.corp.edgeway.test"),
        Target("::1", 5060, "tcp", "core.corp.edgeway.test"),
        Target("127.0.0.3", 5060, "udp", "core.corp.edgeway.test"),
        Target("::1", 5060, "udp", "core.corp.edgeway.test"),
    ]
    assert queries[0] == ("corp.edgeway.test", "NAPTR")
    # A/AAAA came from the additional sections: no address queries at all
    assert not [q for q in queries if q[1] in ("A", "AAAA")]


def test_naptr_sips_uri_only_tls():
    targets, queries = _resolve("corp.edgeway.test", None, None, True, rng=random.Random(0))
    assert [t.transport for t in targets] == ["tls", "tls"]
    assert targets[0] == Target("127.0.0.2", 5061, "tls", "edge.corp.edgeway.test")
    assert ("_sip._tcp.corp.edgeway.test", "SRV") not in queries


def test_srv_only():
    targets, queries = _resolve("srvonly.edgeway.test", None, None, False)
    assert targets == [
        Target("127.0.0.4", 5070, "tcp", "cucm.corp.edgeway.test"),
        Target("127.0.0.4", 5071, "udp", "cucm.corp.edgeway.test"),
    ]
    assert queries[:4] == [
        ("srvonly.edgeway.test", "NAPTR"),
        ("_sips._tcp.srvonly.edgeway.test", "SRV"),
        ("_sip._tcp.srvonly.edgeway.test", "SRV"),
        ("_sip._udp.srvonly.edgeway.test", "SRV"),
    ]


def test_srv_with_transport_param():
    targets, queries = _resolve("srvonly.edgeway.test", None, "UDP", False)
    assert targets == [Target("127.0.0.4", 5071, "udp", "cucm.corp.edgeway.test")]
    assert queries == [("_sip._udp.srvonly.edgeway.test", "SRV")]  # no NAPTR with a transport


def test_a_only():
    targets, _ = _resolve("aonly.edgeway.test", None, None, False)
    assert targets == [Target("127.0.0.9", 5060, "tcp", "aonly.edgeway.test")]
    targets, _ = _resolve("aonly.edgeway.test.", None, None, True)
    assert targets == [Target("127.0.0.9", 5061, "tls", "aonly.edgeway.test")]
    targets, _ = _resolve("aonly.edgeway.test", None, None, False, default_transport="udp")
    assert targets == [Target("127.0.0.9", 5060, "udp", "aonly.edgeway.test")]


def test_explicit_port_skips_naptr_and_srv():
    targets, queries = _resolve("core.corp.edgeway.test", 5080, None, False)
    assert targets == [
        Target("127.0.0.3", 5080, "tcp", "core.corp.edgeway.test"),
        Target("::1", 5080, "tcp", "core.corp.edgeway.test"),
    ]
    assert queries == [("core.corp.edgeway.test", "A"), ("core.corp.edgeway.test", "AAAA")]
    targets, _ = _resolve("core.corp.edgeway.test", 5080, None, False, address_types=("A",))
    assert targets == [Target("127.0.0.3", 5080, "tcp", "core.corp.edgeway.test")]


def test_ip_literal_no_dns():
    targets, queries = _resolve("127.0.0.4", None, None, False)
    assert targets == [Target("127.0.0.4", 5060, "tcp", "127.0.0.4")] and queries == []
    targets, _ = _resolve("127.0.0.4", None, None, True)
    assert targets == [Target("127.0.0.4", 5061, "tls", "127.0.0.4")]
    targets, _ = _resolve("[::1]", 5062, "tls", False)
    assert targets == [Target("::1", 5062, "tls", "::1")]
    targets, _ = _resolve("127.0.0.4", None, "udp", False)
    assert targets == [Target("127.0.0.4", 5060, "udp", "127.0.0.4")]
    # sips with transport=tcp is TLS (RFC 3261 §26.2.2); sips with udp is unusable
    assert _resolve("127.0.0.4", None, "tcp", True)[0][0].transport == "tls"
    assert _resolve("127.0.0.4", None, "udp", True)[0] == []


def test_override_domain_single_srv_query():
    """Seed 003 §4.2 / item 14: one SRV query, no NAPTR, 2 SRV + 2 A, port 5062."""
    trace: list = []
    targets, queries = _resolve(
        "dmzlab.call.ciscospark.com",
        None,
        None,
        True,
        srv_override_domain="callservice.ciscospark.com",
        rng=random.Random(3),
        trace=trace,
    )
    assert queries == [("_sips._tcp.callservice.ciscospark.com", "SRV")]
    assert {t.host for t in targets} == {"127.0.0.21", "127.0.0.22"}
    assert all(t.port == 5062 and t.transport == "tls" for t in targets)
    assert trace[0] == ("_sips._tcp.callservice.ciscospark.com", "SRV", "2 record(s)")


def test_default_dns_zone_algorithm_seed003_item13():
    targets, queries = _resolve("dmzlab.call.ciscospark.com", None, None, True)
    assert queries == [
        ("dmzlab.call.ciscospark.com", "NAPTR"),
        ("_sips._tcp.dmzlab.call.ciscospark.com", "SRV"),
    ]
    assert targets == [Target("127.0.0.21", 5061, "tls", "l2sip-cfa-01.wbx2.com")]


def test_override_domain_equal_weights_both_orders_occur():
    async def go(server, resolver):
        seen = set()
        for seed in range(40):
            ts = await resolve(
                "x", None, None, True, resolver,
                srv_override_domain="callservice.ciscospark.com", rng=random.Random(seed),
            )
            seen.add(tuple(t.host for t in ts))
        return seen

    assert run(_with_server(go)) == {("127.0.0.21", "127.0.0.22"), ("127.0.0.22", "127.0.0.21")}


def test_nxdomain_and_refused_give_empty():
    trace: list = []
    targets, _ = _resolve("missing.corp.edgeway.test", None, None, False, trace=trace)
    assert targets == []
    assert ("missing.corp.edgeway.test", "NAPTR", "NXDOMAIN") in trace
    assert _resolve("outside.example", None, None, False)[0] == []
    assert _resolve("missing.corp.edgeway.test", None, None, True, srv_override_domain="nope.edgeway.test")[0] == []


def test_srv_dot_means_no_service():
    targets, _ = _resolve("noservice.edgeway.test", None, "tcp", False)
    assert targets == []


def test_timeout_returns_empty_quickly():
    """A nameserver that never answers: [] after one timeout, not one per query."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:

        async def go():
            resolver = make_resolver([sink.getsockname()], 0.3)
            trace: list = []
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            out = await resolve("corp.edgeway.test", None, None, False, resolver, trace=trace)
            return out, loop.time() - t0, trace

        out, elapsed, trace = run(go())
    finally:
        sink.close()
    assert out == []
    assert elapsed < 1.5
    assert trace == [("corp.edgeway.test", "NAPTR", "timeout")]


def test_make_resolver_validation():
    r = make_resolver([("127.0.0.1", 5353)], 1.5)
    assert r.lifetime == 1.5 and r.nameservers[0].port == 5353
    with pytest.raises(ValueError):
        make_resolver([], 1)
    with pytest.raises(ValueError):
        make_resolver([("localhost", 53)], 1)
    with pytest.raises(ValueError):
        make_resolver([("127.0.0.1", 53)], 0)
