"""``edgeway lab`` end to end: set-up, four calls with RTP (two plain, two hybrid with the
cloud calling service stand-in over mutual TLS and SRTP), the mobile and remote access
section (SRV discovery, HTTPS through the edge, a remote registration over TLS and a call
to it), report, exit status 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


def _section(out: str, title: str) -> str:
    """The report section of one call: from its heading to the next one."""
    start = out.index(title)
    nxt = re.search(r"\n (PASS|FAIL) ", out[start:])
    return out[start: start + nxt.start()] if nxt else out[start:]


def test_edgeway_lab_passes(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edgeway", "lab", "--workdir", str(tmp_path / "lab"), "--media-seconds", "1"],
        capture_output=True, text=True, timeout=150, env={**os.environ, "COLUMNS": "160"},
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "4/4 calls passed, MRA 9/9 steps passed, media probe 2/2 passed" in out
    # Media node discovery (issue 10 item 5): media-b does not listen on UDP; the probe says so.
    probe = out[out.index("Media node discovery (edgeway probe)"):]
    assert "best: node media-a over udp" in probe, probe
    assert "media-b  udp  :5004  not reachable: port unreachable (ICMP)" in probe, probe
    assert "best: node media-b over tcp" in probe and "fell back from udp (port unreachable (ICMP))" in probe, probe
    for hop in ("bob(127.0.0.5) → edge", "edge → core", "core → alice(127.0.0.4)", "edge → bob(127.0.0.5)"):
        assert hop in out, hop

    # the hybrid zone: the cloud's certificate SAN classified its TLS connection
    assert re.search(r"edge: TLS from cloud \(127\.0\.0\.6:\d+, listener \w+\) classified into "
                     r"'Hybrid Call Services DNS' \(certificate name callservice\.cloud\.edgeway\.test matched\)", out), out

    inbound = _section(out, "call 3: hybrid inbound")
    for hop in ("cloud(127.0.0.6) → edge  INVITE sip:alice@corp.edgeway.test", "edge → core  INVITE",
                "core → alice(127.0.0.4)  INVITE", "edge → cloud(127.0.0.6)  200 OK (INVITE)"):
        assert hop in inbound, (hop, inbound)
    assert "cloud(127.0.0.6) ⇄ edge SRTP AES_CM_128" in inbound and "core ⇄ alice(127.0.0.4) RTP" in inbound, inbound
    assert "SRTP: cloud SRTP (0 auth failures), alice plain RTP" in inbound, inbound
    assert "search rule 'Hybrid inbound' → Traversal Zone" in inbound
    assert "encryption OK" in inbound

    outbound = _section(out, "call 4: hybrid outbound")
    for hop in ("alice(127.0.0.4) → core  INVITE", "core → edge  INVITE", "edge → cloud(127.0.0.6)  INVITE",
                "cloud(127.0.0.6) → edge  200 OK (INVITE)"):
        assert hop in outbound, (hop, outbound)
    assert "edge ⇄ cloud(127.0.0.6) SRTP AES_CM_128" in outbound and "alice(127.0.0.4) ⇄ core RTP" in outbound, outbound
    assert "SRTP: alice plain RTP, cloud SRTP (0 auth failures)" in outbound, outbound
    assert "search rule 'Hybrid outbound' → Hybrid Call Services DNS" in outbound
    assert "(Modify DNS request): callservice.cloud.edgeway.test" in outbound and "tls:127.0.0.6:5062" in outbound
    assert "edge's client certificate names: edge.corp.edgeway.test" in outbound
    assert "encryption OK" in outbound
    _check_mra_section(out)
    assert elapsed < 60
    _check_traversal_mux(tmp_path / "lab")


def _check_traversal_mux(workdir: Path) -> None:
    """Seed 002 §7.2: every call's edge leg toward the core is on the one mux pair
    (127.0.0.2:36000/36001), the per-call range starts after it, and RTP and RTCP
    crossed both relays both ways with nothing dropped."""
    import json

    def events(node: str) -> list[dict]:
        return [json.loads(line) for line in (workdir / f"{node}.events.jsonl").read_text().splitlines() if line]

    edge, core = events("edge"), events("core")
    mux = [e for e in edge if e["event"] == "media mux"]
    assert mux and mux[0]["ports"] == [[36000, 36001]] and mux[0]["relay_range"] == [36002, 59999], mux
    closed = {node: [e["stats"] for e in evs if e["event"] == "media closed"] for node, evs in (("edge", edge), ("core", core))}
    assert len(closed["edge"]) == len(closed["core"]) >= 4  # every call the lab places crosses both
    for st in closed["edge"]:
        sides = {s: st[s] for s in ("a", "b")}
        muxed = [s for s, info in sides.items() if info["mux"]]
        assert len(muxed) == 1, st
        inside, outside = sides[muxed[0]], sides["b" if muxed[0] == "a" else "a"]
        assert tuple(inside["local"]) == ("127.0.0.2", 36000, 36001) and inside["latched_rtp"][0] == "127.0.0.3"
        assert outside["local"][1] >= 36002
    for node, sessions in closed.items():
        for st in sessions:
            assert st["dropped"] == 0, (node, st)
            for d in ("a_to_b", "b_to_a"):
                assert st[d]["rtp_packets"] >= 49 and st[d]["rtcp_packets"] >= 1, (node, d, st)
    # the core sent every call's traversal media to the edge's mux port
    for st in closed["core"]:
        toward_edge = [st[s] for s in ("a", "b") if (st[s]["sdp_rtp"] or [None])[0] == "127.0.0.2"]
        assert [s["sdp_rtp"][1] for s in toward_edge] == [36000], st


def _step(mra: str, title: str) -> str:
    """One MRA step: from its PASS/FAIL heading to the next heading."""
    m = re.search(r"\n (PASS|FAIL)  " + re.escape(title), mra)
    assert m is not None, (title, mra)
    assert m.group(1) == "PASS", mra[m.start():m.start() + 3000]
    nxt = re.search(r"\n (PASS|FAIL) ", mra[m.end():])
    return mra[m.end(): m.end() + nxt.start()] if nxt else mra[m.end():]


def _check_mra_section(out: str) -> None:
    """The MRA steps after the calls, each with its result (from a real lab run)."""
    start = out.index("Mobile and remote access (carol, outside at 127.0.0.8)")
    mra = out[start: out.index("· configs, certificates and logs")]
    assert start > out.index("call 4: hybrid outbound")

    srv = _step(mra, "SRV discovery")
    assert ("_collab-edge._tls.corp.edgeway.test SRV → 10 10 8443 edge.corp.edgeway.test; "
            "A edge.corp.edgeway.test → 127.0.0.2 (lab DNS 127.0.0.10:5300") in srv, srv
    cfg = _step(mra, "get_edge_config")
    assert "/get_edge_config?service_name=_cisco-uds&service_name=_cuplogin (no credentials) → 200 OK" in cfg, cfg
    assert "SIP edge edge.corp.edgeway.test:5061 (TLS), HTTP edge edge.corp.edgeway.test:8443, UDS 127.0.0.4:8443" in cfg
    uds = _step(mra, "allowed request: UDS user lookup")
    assert "…/http/127.0.0.4/8443/cucm-uds/user/carol (Basic carol) → 200 OK" in uds, uds
    assert "<userName>carol</userName>; access token issued" in uds
    vm = _step(mra, "allowed request: voicemail with the access token")
    assert "…/http/127.0.0.4/8080/vmrest/mailbox (Bearer token) → 200 OK" in vm and "carol's mailbox" in vm, vm
    tftp = _step(mra, "allowed request: configuration file (TFTP over HTTP)")
    assert "…/http/127.0.0.4/6970/jabber-config.xml (no credentials) → 200 OK" in tftp, tftp
    blocked = _step(mra, "blocked request (no allow-list rule)")
    assert "…/http/127.0.0.4/8443/admin/secrets (Basic carol) → 403 Forbidden" in blocked, blocked
    assert "core: mra request blocked (no rule of deployment 'Default deployment' allows " \
           "http://127.0.0.4:8443/admin/secrets): nothing sent inside" in blocked

    reg = _step(mra, "remote registration (TLS, through edge and core)")
    assert re.search(r"200 OK after a digest challenge \(MD5, 1 answered\); bound for 600 s over "
                     r"TLS 127\.0\.0\.8:\d+ → edge 127\.0\.0\.2:5061", reg), reg
    assert "the SIP edge get_edge_config named: edge.corp.edgeway.test:5061 = 127.0.0.2 (lab DNS)" in reg
    assert "the edge's certificate names: edge.corp.edgeway.test" in reg
    hops = ["carol(127.0.0.8) → edge  REGISTER sip:remote.edgeway.test", "edge → core  REGISTER sip:remote.edgeway.test",
            "core → edge  401 Unauthorized (REGISTER)", "edge → carol(127.0.0.8)  401 Unauthorized (REGISTER)",
            "carol(127.0.0.8) → edge  REGISTER sip:remote.edgeway.test", "core → edge  200 OK (REGISTER)",
            "edge → carol(127.0.0.8)  200 OK (REGISTER)"]
    at = 0
    for hop in hops:  # in this order
        at = reg.index(hop, at) + len(hop)
    assert "core registrar: registered sip:carol@remote.edgeway.test (1 binding) from 127.0.0.2:7001" in reg
    assert re.search(r"Path \(the edge's flow token for carol's connection\): <sip:[\w.]+@127\.0\.0\.2:5061;"
                     r"transport=tls;lr>", reg), reg

    call = _step(mra, "call 5: inside → remote client (alice → core → edge → carol)")
    assert "alice calls sip:carol@remote.edgeway.test: 200 OK" in call, call
    for hop in ("alice(127.0.0.4) → core  INVITE sip:carol@remote.edgeway.test", "core → edge  INVITE sip:carol@",
                "edge → carol(127.0.0.8)  INVITE sip:carol@", "carol(127.0.0.8) → edge  200 OK (INVITE)",
                "core → alice(127.0.0.4)  200 OK (INVITE)", "edge → carol(127.0.0.8)  BYE"):
        assert hop in call, (hop, call)
    for row in ("alice → carol", "carol → alice"):  # RTP per leg: sent, via core, via edge, received, loss
        m = re.search(re.escape(row) + r"\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+) %", call)
        assert m is not None, (row, call)
        sent, received, loss = int(m.group(1)), int(m.group(4)), float(m.group(5))
        assert sent > 20 and received >= 0.8 * sent and loss <= 20.0, (row, call)
    assert "media legs: alice(127.0.0.4) ⇄ core RTP, core ⇄ edge RTP, edge ⇄ carol(127.0.0.8) RTP" in call
    assert "signalling OK, media OK" in call
    assert re.search(r"carol: INVITE arrived on her registration's connection 127\.0\.0\.8:(\d+) ⇄ "
                     r"127\.0\.0\.2:5061 \(tls\) \(her Contact, port \d+, was never dialled\)", call), call
    assert "core: search rule 'Registered remote users' → LocalZone" in call

    unreg = _step(mra, "un-registration when carol's phone closes")
    assert "REGISTER Expires: 0 → 200 OK; the core's registrar has no binding left" in unreg, unreg


def test_mra_verdict_needs_every_step() -> None:
    """Report logic only (no network): the MRA section passes only with all its steps run
    and passed, and the lab's exit status follows it."""
    from rich.console import Console

    from edgeway.lab.report import LabReport, MraReport, MraStep

    steps = [MraStep(f"step {i}", True, "ok") for i in range(MraReport.EXPECTED_STEPS)]
    assert MraReport(steps=steps).passed
    short = MraReport(steps=steps[:4])
    assert not short.passed and short.summary() == "MRA 4/9 steps passed"
    failed = MraReport(steps=steps[:-1] + [MraStep("un-registration", False, "FAILED: 408 Request Timeout")])
    assert not failed.passed
    console = Console(record=True, width=200, color_system=None)
    short.render(console, {})
    failed.render(console, {})
    text = console.export_text()
    assert "5 step(s) not run (an earlier step failed)" in text
    assert " FAIL  un-registration\n  FAILED: 408 Request Timeout" in text
    assert LabReport(calls=[], mra=MraReport(steps=steps)).exit_code == 1  # no calls: still a failure


def test_hybrid_verdict_needs_srtp_on_the_cloud_leg_and_rtp_inside() -> None:
    """Report logic only (no network): the media legs come from the INVITE path and the
    relays' ``media closed`` SRTP sides; a hybrid call fails when alice got SRTP, the
    cloud got plain RTP, or the cloud saw authentication failures."""
    from rich.console import Console

    from edgeway.lab.report import CallReport, media_legs
    from edgeway.lab.ua import CallResult, CallStats

    cid = "hyb-1@cloud.edgeway.test"
    names = {"127.0.0.2": "edge", "127.0.0.3": "core", "127.0.0.4": "alice", "127.0.0.6": "cloud"}

    def sip(ts, node, d, peer, line):
        return {"ts": ts, "node": node, "event": "sip message", "dir": d, "peer": peer, "call_id": cid, "line": line}

    def closed(node, a_srtp, b_srtp, auth=0):
        side = lambda s: {"srtp_inbound": s, "srtp_outbound": s}
        return {"ts": 10.0, "node": node, "event": "media closed", "call_id": cid, "session": "s",
                "stats": {"a": side(a_srtp), "b": side(b_srtp), "a_to_b": {"rtp_packets": 50, "srtp_auth_failures": auth},
                          "b_to_a": {"rtp_packets": 50, "srtp_auth_failures": 0}, "dropped": auth}}

    events = [
        sip(1.000, "edge", "in", "127.0.0.6:40000", "INVITE sip:alice@corp.edgeway.test SIP/2.0"),
        sip(1.001, "edge", "out", "127.0.0.3:5061", "INVITE sip:alice@corp.edgeway.test SIP/2.0"),
        sip(1.002, "core", "out", "127.0.0.4:5060", "INVITE sip:alice@corp.edgeway.test SIP/2.0"),
        {"ts": 1.01, "node": "edge", "event": "srtp keyed", "call_id": cid, "side": "a", "suite": "AES_CM_128_HMAC_SHA1_80"},
    ]

    def build(cloud_srtp=True, alice_srtp=False, cloud_auth=0, relay_auth=0):
        evs = events + [closed("edge", "AES_CM_128_HMAC_SHA1_80", None, relay_auth), closed("core", None, None)]
        res = CallResult(call_id=cid, ok=True, status=200, reason="OK", rtp_sent=50, rtp_received=50,
                         srtp=cloud_srtp, srtp_suite="AES_CM_128_HMAC_SHA1_80" if cloud_srtp else None,
                         srtp_auth_failures=cloud_auth)
        stats = CallStats(call_id=cid, answered=True, ended=True, rtp_sent=50, rtp_received=50, srtp=alice_srtp)
        return CallReport.build("call 3", "cloud", "alice", "sip:alice@corp.edgeway.test", res, stats, evs,
                                host_names=names, expect_srtp={"cloud": True, "alice": False})

    good = build()
    assert good.passed and good.srtp_ok, good.srtp_problems()
    assert good.legs == [("cloud(127.0.0.6)", "edge", "SRTP AES_CM_128_HMAC_SHA1_80"), ("edge", "core", "RTP"),
                         ("core", "alice(127.0.0.4)", "RTP")]
    console = Console(record=True, width=200, color_system=None)
    good.render(console)
    text = console.export_text()
    assert "media legs: cloud(127.0.0.6) ⇄ edge SRTP AES_CM_128_HMAC_SHA1_80, edge ⇄ core RTP" in text
    assert "SRTP: cloud SRTP (0 auth failures), alice plain RTP; relay keyed: edge side a" in text
    assert "encryption OK" in text

    leaked = build(alice_srtp=True)
    assert not leaked.passed and "alice used SRTP, expected plain RTP" in leaked.srtp_problems()
    assert ("core", "alice(127.0.0.4)", "mismatch: only alice(127.0.0.4) uses SRTP") in leaked.legs
    plain = build(cloud_srtp=False)
    assert not plain.passed and "cloud used plain RTP, expected SRTP" in plain.srtp_problems()
    assert not build(cloud_auth=3).passed
    assert not build(relay_auth=2).passed
    # a leg nobody reports on
    assert media_legs(["x", "n", "y"], None, None, {}) == [("x", "n", "?"), ("n", "y", "?")]


def test_the_remote_user_has_one_account() -> None:
    """carol's HTTPS (UDS, voicemail) and SIP (registrar digest) credentials are the same
    account, as on a real call control."""
    from edgeway.lab.topology import REMOTE_USERS, LabTopology
    from edgeway.lab.webservice import LAB_USERS

    assert LAB_USERS["carol"] == REMOTE_USERS["carol"]
    assert LabTopology().host_names["127.0.0.8"] == "carol"
    assert "127.0.0.8" not in LabTopology(mra=False).host_names
