"""The lab plan (topology files, certificates, DNS zone) and the report machinery
(event-log parsing, ladder merging, rendering) — no node processes are started."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import subprocess
import sys
import time
import tomllib

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rich.console import Console

from edgeway.config import ConfigError, DnsZone, NeighbourZone, TraversalClientZone, TraversalServerZone, load_config
from edgeway.lab.cli import MARKER, fresh_workdir
from edgeway.lab.dns_server import LabDnsServer, records_from_text
from edgeway.lab.report import (
    CallReport,
    LabReport,
    LadderEntry,
    align_ladder,
    format_ladder,
    load_events,
    merge_ladder,
    node_ladder,
    normalize_line,
    parse_events,
    parse_ua_line,
    relay_stats,
    traversal_history,
    ua_ladder,
)
from edgeway.lab.runner import Lab, LabError
from edgeway.lab.topology import (
    ALICE,
    BOB,
    CALL_CONTROL_ZONE,
    CLOUD_SERVICE_FQDN,
    HYBRID_ZONE,
    DNS_ZONE,
    TRAVERSAL_ZONE,
    LabTopology,
    dump_toml,
)
from edgeway.lab.ua import CallResult, CallStats
from edgeway.routing.resolver import Target, make_resolver, resolve
from edgeway.security.pki import load_cert


def run(coro, timeout: float = 10.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One lab build shared by the read-only tests (certificate generation is the slow part)."""
    wd = tmp_path_factory.mktemp("lab")
    return LabTopology().build(wd)


# ---- topology ----------------------------------------------------------------------------------

def test_configs_validate_and_follow_the_plan(built):
    edge = load_config(built.edge_config)
    core = load_config(built.core_config)

    assert (edge.role, edge.name, edge.sip.listen_ip) == ("edge", "edge", "127.0.0.2")
    assert (edge.sip.udp_port, edge.sip.tcp_port, edge.sip.tls_port) == (5060, 5060, 5061)
    assert edge.sip.domains == ["corp.edgeway.test"] == core.sip.domains
    assert (core.role, core.name, core.sip.listen_ip) == ("core", "core", "127.0.0.3")
    for cfg, node in ((edge, "edge"), (core, "core")):
        assert cfg.tls.cert_file == str(built.workdir / "pki" / f"{node}.pem")
        assert cfg.tls.ca_file == str(built.ca)
        assert (cfg.media.port_min, cfg.media.port_max, cfg.media.inactivity_timeout_s) == (36000, 59999, 30.0)
        # Split DNS: the core resolves in the inside view (seed 002 §12.2).
        assert cfg.dns.nameservers == [("127.0.0.11" if node == "core" else "127.0.0.10", 5300)]
        assert cfg.log.file == str(built.workdir / f"{node}.events.jsonl") == str(built.events(node))

    ts, dz, hz = edge.zones
    assert isinstance(ts, TraversalServerZone) and ts.name == TRAVERSAL_ZONE and ts.media_encryption == "off"
    assert isinstance(hz, DnsZone) and hz.name == HYBRID_ZONE and hz.media_encryption == "on"
    assert (hz.tls_verify_subject_name, hz.inbound_classification, hz.modify_dns_request, hz.dns_request_domain) == (
        CLOUD_SERVICE_FQDN, True, True, CLOUD_SERVICE_FQDN)
    assert edge.sip.mtls_enabled and edge.sip.mtls_port == 5062
    assert (ts.port, ts.username, ts.tls_verify_subject_name) == (7001, "core", "core.corp.edgeway.test")
    assert (ts.keepalive_interval_s, ts.probe_retry_count, ts.probe_retry_interval_s) == (2.0, 2, 1.0)
    assert isinstance(dz, DnsZone) and (dz.name, dz.default_transport) == (DNS_ZONE, "udp")
    assert [(c.username, c.password) for c in edge.credentials] == [("core", built.password)]
    assert [(r.name, r.priority, r.pattern, r.source_zone, r.target_zone, r.progress) for r in edge.search_rules] == [
        ("Hybrid inbound", 5, "", HYBRID_ZONE, TRAVERSAL_ZONE, "stop"),
        ("Hybrid outbound", 50, r".*@(.*\.)?cloud\.edgeway\.test", TRAVERSAL_ZONE, HYBRID_ZONE, "stop"),
        ("Inbound to core", 10, ".*@%localdomains%", None, TRAVERSAL_ZONE, "stop"),
        ("Remote registrations", 11, r"(.*@)?(remote\.edgeway\.test|ucm\.edgeway\.test)", None, TRAVERSAL_ZONE, "stop"),
        ("Outbound to DNS", 100, "(?!.*@%localdomains%$).*", TRAVERSAL_ZONE, DNS_ZONE, "stop"),
    ]

    cc, tc = core.zones
    assert isinstance(cc, NeighbourZone) and (cc.name, cc.host, cc.port, cc.transport) == (
        CALL_CONTROL_ZONE, "127.0.0.4", 5060, "tcp")
    assert isinstance(tc, TraversalClientZone) and tc.peer_addresses == [("127.0.0.2", 7001)]
    assert (tc.username, tc.password, tc.retry_interval_s) == ("core", built.password, 1.0)
    assert (tc.keepalive_interval_s, tc.probe_retry_count, tc.probe_retry_interval_s) == (2.0, 2, 1.0)
    assert [(r.name, r.priority, r.source_zone, r.target_zone) for r in core.search_rules] == [
        ("Registered remote users", 5, None, "LocalZone"),
        ("Remote registrations to call control", 6, TRAVERSAL_ZONE, CALL_CONTROL_ZONE),
        ("Inbound to call control", 10, TRAVERSAL_ZONE, CALL_CONTROL_ZONE),
        ("Outbound via edge", 20, CALL_CONTROL_ZONE, TRAVERSAL_ZONE),
    ]
    assert core.registrar.domains == ["remote.edgeway.test"] and core.registrar.users
    assert core.sip.path_headers is False  # seed 002 §2.3: Contact rewriting by default
    assert len(built.password) >= 16
    assert (built.edge_config.stat().st_mode & 0o077) == 0  # it holds the password
    assert ALICE == "alice@corp.edgeway.test" and BOB == "bob@partner.edgeway.test"


def test_password_is_random_per_build_and_overrides_apply(tmp_path):
    topo = LabTopology(retry_interval_s=0.5, probe_retry_count=1,
                       edge_overrides={"log": {"level": "debug"}, "timers": {"t1_ms": 100}},
                       core_overrides={"media": {"port_min": 40000}})
    a = topo.build(tmp_path / "a")
    b = LabTopology().build(tmp_path / "b")
    assert a.password != b.password
    edge, core = load_config(a.edge_config), load_config(a.core_config)
    assert edge.log.level == "DEBUG" and edge.timers.t1_ms == 100
    assert core.media.port_min == 40000 and core.media.port_max == 59999
    assert core.zones[1].retry_interval_s == 0.5 and edge.zones[0].probe_retry_count == 1  # traversal server zone

    with pytest.raises(ConfigError, match=r"media.port_min"):
        LabTopology(edge_overrides={"media": {"port_min": 36001}}).build(tmp_path / "c")


def test_dump_toml_round_trips():
    data = {"a": 1, "b": 2.5, "c": True, "s": 'q"\\x.\n\u00e9', "l": ["x", "y"],
            "t": {"k": "v", "n": {"deep": 1}}, "arr": [{"x": 1}, {"x": 2, "y": [1, 2]}], "skip": None}
    out = tomllib.loads(dump_toml(data))
    del data["skip"]
    assert out == data


def test_certificates_carry_the_names(built):
    ca = load_cert(built.ca)
    for node, cn, ip in (("edge", "edge.corp.edgeway.test", "127.0.0.2"),
                         ("core", "core.corp.edgeway.test", "127.0.0.3")):
        cert = load_cert(built.edge_cert if node == "edge" else built.core_cert)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # The edge also names the MRA domain as a CollabEdgeDNS SAN (seed 002 §11.2).
        assert san.get_values_for_type(x509.DNSName) == ([cn, "collab-edge.corp.edgeway.test"] if node == "edge" else [cn])
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip)]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
    assert (built.edge_key.stat().st_mode & 0o077) == 0


def test_dns_zone_answers_what_the_lab_needs(built):
    topo = LabTopology()
    records = topo.dns_records()
    assert records == records_from_text(built.dns_zone.read_text())

    async def main():
        async with LabDnsServer(records, host="127.0.0.10", port=0, zones=["edgeway.test"]) as srv:
            res = make_resolver([srv.address], 2.0)
            corp = await resolve("corp.edgeway.test", None, None, False, res)
            partner = await resolve("partner.edgeway.test", None, None, False, res)
            sips = await resolve("corp.edgeway.test", None, None, True, res)
            edge = await resolve("edge.corp.edgeway.test", 5061, "tls", False, res)
            core = await resolve("core.corp.edgeway.test", 5060, None, False, res)
            udp_only = await resolve("partner.edgeway.test", None, "udp", False, res)
            return corp, partner, sips, edge, core, udp_only, list(srv.queries)

    corp, partner, sips, edge, core, udp_only, queries = run(main())
    E, U = "edge.corp.edgeway.test", "ua.partner.edgeway.test"
    assert corp == [Target("127.0.0.2", 5061, "tls", E), Target("127.0.0.2", 5060, "tcp", E),
                    Target("127.0.0.2", 5060, "udp", E)]
    assert partner == [Target("127.0.0.5", 5060, "udp", U), Target("127.0.0.5", 5060, "tcp", U)]
    assert sips == [Target("127.0.0.2", 5061, "tls", E)]
    assert edge == [Target("127.0.0.2", 5061, "tls", E)]
    assert core == [Target("127.0.0.3", 5060, "tcp", "core.corp.edgeway.test")]
    assert udp_only == [Target("127.0.0.5", 5060, "udp", U)]
    assert ("corp.edgeway.test", "NAPTR") in queries and ("partner.edgeway.test", "NAPTR") in queries


# ---- event logs and ladders ------------------------------------------------------------------------

T0 = 1_763_700_000.0
CID = "abc123@partner.edgeway.test"


def ev(dt_ms: float, node: str, event: str, **fields) -> dict:
    return {"ts": T0 + dt_ms / 1000.0, "node": node, "event": event, **fields}


def sip(dt_ms: float, node: str, d: str, peer: str, line: str, cseq: str = "1 INVITE", transport: str = "udp") -> dict:
    return ev(dt_ms, node, "sip message", dir=d, transport=transport, peer=peer, call_id=CID, line=line, cseq=cseq)


INVITE = "INVITE sip:alice@corp.edgeway.test SIP/2.0"


def node_events() -> list[dict]:
    return [
        ev(-500, "core", "traversal connected", zone=TRAVERSAL_ZONE, peer="127.0.0.2:7001"),
        ev(-499, "edge", "traversal connected", zone=TRAVERSAL_ZONE, peer="127.0.0.3:40000"),
        sip(0.5, "edge", "in", "127.0.0.5:5060", INVITE),
        sip(2.0, "edge", "out", "127.0.0.3:40000", INVITE, transport="tls"),
        sip(2.6, "core", "in", "127.0.0.2:7001", INVITE, transport="tls"),
        sip(4.0, "core", "out", "127.0.0.4:5060", INVITE, transport="tcp"),
        sip(6.0, "core", "in", "127.0.0.4:5060", "SIP/2.0 200 OK", transport="tcp"),
        # the core logs its send late: after the edge logged receiving it
        sip(7.4, "core", "out", "127.0.0.2:7001", "SIP/2.0 200 OK", transport="tls"),
        sip(7.0, "edge", "in", "127.0.0.3:40000", "SIP/2.0 200 OK", transport="tls"),
        sip(8.0, "edge", "out", "127.0.0.5:5060", "SIP/2.0 200 OK"),
        ev(1000, "edge", "media closed", call_id=CID, reason="bye", session=f"{CID}/0",
           stats={"a_to_b": {"rtp_packets": 150}, "b_to_a": {"rtp_packets": 149}, "dropped": 0}),
        ev(1001, "core", "media closed", call_id=CID, reason="bye", session=f"{CID}/0",
           stats={"a_to_b": {"rtp_packets": 150}, "b_to_a": {"rtp_packets": 149}, "dropped": 1}),
        ev(1002, "edge", "sip message", dir="in", transport="udp", peer="127.0.0.9:5060", call_id="other",
           line="OPTIONS sip:edge SIP/2.0"),
    ]


def test_parse_events_skips_junk(tmp_path):
    lines = [json.dumps(e) for e in node_events()]
    text = "\n".join(lines[:3] + ["", "not json", "[1, 2]", '{"ts": 1, "node": "edge", "ev'] + lines[3:])
    p = tmp_path / "x.jsonl"
    p.write_text(text)
    assert load_events(p) == parse_events(text.splitlines()) == node_events()
    assert load_events(tmp_path / "missing.jsonl") == []
    hist = traversal_history(node_events())
    assert [(e["node"], e["event"]) for e in hist] == [("core", "traversal connected"), ("edge", "traversal connected")]
    assert [(r["node"], r["a_to_b"], r["b_to_a"], r["dropped"]) for r in relay_stats(node_events(), CID)] == [
        ("edge", 150, 149, 0), ("core", 150, 149, 1)]


def test_line_normalisation_and_ua_lines():
    assert normalize_line("SIP/2.0 180 Ringing", "1 INVITE") == "180 Ringing (INVITE)"
    assert normalize_line(INVITE) == "INVITE sip:alice@corp.edgeway.test"
    p = parse_ua_line("    12.5 ms → 127.0.0.2:5060 (udp) INVITE sip:alice@corp.edgeway.test [retransmission]")
    assert p == {"offset_s": 0.0125, "dir": "out", "peer": "127.0.0.2:5060", "transport": "udp",
                 "line": "INVITE sip:alice@corp.edgeway.test [retransmission]"}
    assert parse_ua_line("     1.0 ms ← [::1]:5060 (tcp) 200 OK (BYE)")["peer"] == "[::1]:5060"
    assert parse_ua_line("garbage") is None


def test_ladder_merge_one_line_per_hop_in_causal_order():
    caller = ["     0.0 ms → 127.0.0.2:5060 (udp) INVITE sip:alice@corp.edgeway.test",
              "   500.0 ms → 127.0.0.2:5060 (udp) INVITE sip:alice@corp.edgeway.test [retransmission]",
              "     8.5 ms ← 127.0.0.2:5060 (udp) 200 OK (INVITE)"]
    callee = ["     0.0 ms ← 127.0.0.3:5060 (tcp) INVITE sip:alice@corp.edgeway.test",
              "     1.5 ms → 127.0.0.3:5060 (tcp) 200 OK (INVITE)"]
    nodes = node_ladder(node_events(), call_id=CID)
    assert all(e.call_id == CID for e in nodes) and len(nodes) == 8
    bob = ua_ladder("bob", caller, t0=T0, call_id=CID)
    alice = align_ladder(ua_ladder("alice", callee, call_id=CID), nodes)
    assert alice[0].ts == pytest.approx(T0 + 0.004)  # aligned on the core's INVITE to alice
    merged = merge_ladder(nodes, bob, alice)
    hops = [(e.src, e.dst, e.line) for e in merged]
    assert hops == [
        ("bob(127.0.0.5)", "edge", "INVITE sip:alice@corp.edgeway.test"),
        ("edge", "core", "INVITE sip:alice@corp.edgeway.test"),
        ("core", "alice(127.0.0.4)", "INVITE sip:alice@corp.edgeway.test"),
        ("alice(127.0.0.4)", "core", "200 OK (INVITE)"),
        ("core", "edge", "200 OK (INVITE)"),
        ("edge", "bob(127.0.0.5)", "200 OK (INVITE)"),
        ("bob(127.0.0.5)", "edge", "INVITE sip:alice@corp.edgeway.test [retransmission]"),
    ]
    core_200 = merged[4]
    assert core_200.ts == pytest.approx(T0 + 0.007)  # the receiver's earlier time wins
    lines = format_ladder(merged)
    assert lines[0] == "    +0.0 ms  bob(127.0.0.5) → edge  INVITE sip:alice@corp.edgeway.test"
    assert lines[1] == "    +2.0 ms  edge → core  INVITE sip:alice@corp.edgeway.test"
    assert lines[-1].endswith("[retransmission]") and "+500.0 ms" in lines[-1]
    assert len(format_ladder(merged, max_lines=3)) == 4


def test_unknown_peers_keep_their_address():
    evs = [ev(0, "edge", "sip message", dir="in", transport="udp", peer="192.0.2.7:5062", call_id="x",
              line="OPTIONS sip:edge.corp.edgeway.test SIP/2.0", cseq="1 OPTIONS")]
    [e] = merge_ladder(node_ladder(evs))
    assert (e.src, e.dst) == ("192.0.2.7:5062", "edge")


# ---- the report --------------------------------------------------------------------------------

def _call(ok=True, alice_received=149) -> CallReport:
    result = CallResult(call_id=CID, ok=ok, status=200 if ok else 503, reason="OK" if ok else "Service Unavailable",
                        ladder=["     0.0 ms → 127.0.0.2:5060 (udp) INVITE sip:alice@corp.edgeway.test",
                                "     8.5 ms ← 127.0.0.2:5060 (udp) 200 OK (INVITE)"],
                        rtp_sent=150, rtp_received=149, rtcp_received=3, setup_ms=8.5,
                        error=None if ok else "call rejected: 503 Service Unavailable")
    stats = CallStats(call_id=CID, answered=True, ended=True, rtp_sent=149, rtp_received=alice_received,
                      ladder=["     0.0 ms ← 127.0.0.3:5060 (tcp) INVITE sip:alice@corp.edgeway.test",
                              "     1.5 ms → 127.0.0.3:5060 (tcp) 200 OK (INVITE)"])
    events = node_events() + [
        ev(2.1, "edge", "search completed", call_id=CID, alias=ALICE, rule="Inbound to core", zone=TRAVERSAL_ZONE,
           found=True),
    ]
    return CallReport.build("call 1: outside → inside (bob → alice)", "bob", "alice", f"sip:{ALICE}", result,
                            stats, events, callee_ladder=stats.ladder, caller_t0=T0)


def test_report_renders_ladder_media_and_verdict():
    call = _call()
    assert call.ok and call.media_ok and call.passed
    assert call.forward_loss == pytest.approx(1 - 149 / 150) and call.backward_loss == 0.0
    assert list(call.relay_totals()) == ["edge", "core"]  # path order
    report = LabReport(calls=[call], traversal=traversal_history(node_events()))
    assert report.passed and report.exit_code == 0
    console = Console(record=True, width=160, color_system=None)
    report.render(console)
    text = console.export_text()
    assert "core: 'Traversal Zone' connected (peer 127.0.0.2:7001" in text
    assert "edge: 'Traversal Zone' connected (peer 127.0.0.3:40000" in text
    assert "+0.0 ms  bob(127.0.0.5) → edge  INVITE sip:alice@corp.edgeway.test" in text
    assert "+4.0 ms  core → alice(127.0.0.4)  INVITE sip:alice@corp.edgeway.test" in text
    assert "+8.0 ms  edge → bob(127.0.0.5)  200 OK (INVITE)" in text
    assert "bob calls sip:alice@corp.edgeway.test: 200 OK, set-up 8.5 ms" in text
    assert "edge: search rule 'Inbound to core' → Traversal Zone" in text
    assert "core relay dropped 1 packet(s)" in text
    rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("bob → alice", "alice → bob"))]
    assert rows == [["bob", "→", "alice", "150", "150", "150", "149", "0.7", "%"],
                    ["alice", "→", "bob", "149", "149", "149", "149", "0.0", "%"]]
    assert "PASS  call 1" in text and "PASS  1/1 calls passed" in text
    assert len(text.splitlines()) < 40


def test_report_fails_on_media_loss_signalling_or_setup_error():
    lossy = _call(alice_received=100)  # < 80 % of 150
    assert lossy.ok and not lossy.media_ok and not lossy.passed
    rejected = _call(ok=False)
    assert not rejected.passed
    assert LabReport(calls=[_call(), lossy]).exit_code == 1
    assert LabReport(calls=[]).exit_code == 1
    broken = LabReport(error="127.0.0.2:5060/udp is not available")
    console = Console(record=True, width=120, color_system=None)
    broken.render(console)
    text = console.export_text()
    assert "Lab set-up failed: 127.0.0.2:5060/udp is not available" in text and "FAIL" in text
    no_call = CallReport.build("c", "bob", "alice", f"sip:{ALICE}", None, None, [])
    assert not no_call.passed and no_call.ladder == [] and no_call.call_id is None
    console = Console(record=True, width=120, color_system=None)
    no_call.render(console)
    assert "no final response" in console.export_text()


# ---- runner pieces that need no node processes -------------------------------------------------------

def test_lab_zone_state_from_event_logs(tmp_path):
    lab = Lab(tmp_path)
    lab.files = lab.topology.build(tmp_path)
    lab.started_at = {"edge": T0 - 10, "core": T0 - 10}

    def write(node, events):
        with open(lab.files.events(node), "a") as fh:
            for e in events:
                fh.write(json.dumps(e) + "\n")

    assert lab.zone_state("edge") is None
    write("edge", [ev(0, "edge", "traversal connected", zone=TRAVERSAL_ZONE, peer="127.0.0.3:1")])
    write("core", [ev(0, "core", "traversal connected", zone=TRAVERSAL_ZONE, peer="127.0.0.2:7001")])
    assert run(lab.wait_traversal(1.0)) < 0.5
    write("edge", [ev(50, "edge", "traversal disconnected", zone=TRAVERSAL_ZONE, peer="127.0.0.3:1")])
    assert lab.zone_state("edge") == "disconnected" and lab.zone_state("core") == "connected"
    assert lab.zone_state("edge", since=T0 + 60) is None
    with pytest.raises(LabError, match="edge: traversal zone not connected after 0.3 s"):
        run(lab.wait_traversal(0.3))
    write("edge", [ev(70, "edge", "traversal connected", zone=TRAVERSAL_ZONE, peer="127.0.0.3:2")])
    run(lab.wait_traversal(1.0))
    assert [e["event"] for e in lab.events("edge")] == ["traversal connected", "traversal disconnected",
                                                        "traversal connected"]


def test_stop_node_escalates_to_sigkill(tmp_path):
    lab = Lab(tmp_path)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        lab.procs["edge"] = proc
        t = time.monotonic()
        assert run(lab.stop_node("edge", grace_s=0.3)) == -signal.SIGKILL
        assert time.monotonic() - t < 2.0
        assert lab.pids == {"edge": proc.pid}
        run(lab.close())  # idempotent with nothing left running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_fresh_workdir_wipes_only_lab_directories(tmp_path):
    wd = fresh_workdir(tmp_path / "lab-run")
    assert (wd / MARKER).exists()
    (wd / "old.log").write_text("x")
    fresh_workdir(wd)
    assert not (wd / "old.log").exists() and (wd / MARKER).exists()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data.txt").write_text("keep me")
    with pytest.raises(LabError, match="not an earlier lab directory"):
        fresh_workdir(other)
    assert (other / "data.txt").read_text() == "keep me"


def test_ladder_entry_passthrough():
    e = LadderEntry(T0, "a", "b", "INVITE sip:x")
    assert ua_ladder("bob", [e]) == [e]
