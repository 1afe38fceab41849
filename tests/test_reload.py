"""Live reload (issue 11 item 7): ``edgeway reload`` (and SIGHUP) applies a changed search
rule and a swapped certificate on a running lab node without dropping the traversal
connection; a configuration that fails validation is refused whole."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from edgeway.lab.topology import dump_toml
from edgeway.security.pki import make_cert, write_pem
from support.harness import LabUp


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    up = LabUp(tmp_path_factory.mktemp("reload") / "lab")
    up.start()
    yield up
    up.stop()


def _edgeway(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeway", *args], capture_output=True, text=True, timeout=60)


def _edit(path: Path, change) -> None:
    data = tomllib.loads(path.read_text())
    change(data)
    path.write_text(dump_toml(data))


def _disconnects(lab: LabUp, node: str) -> int:
    return sum(1 for e in lab.events(node) if e.get("event") == "traversal disconnected")


def _server_cert(ip: str, port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_search_rule_and_certificate_reloaded_live(lab: LabUp) -> None:
    core_toml, edge_toml = lab.workdir / "core.toml", lab.workdir / "edge.toml"
    before = _disconnects(lab, "core"), _disconnects(lab, "edge")

    # A search rule added to the core: the next search uses it.
    r = json.loads(_edgeway("locate", "ann@newpartner.test", "--from", "Call Control", "--json", "-c", str(core_toml)).stdout)
    assert not any(t["rule"] == "New partners" for t in r["targets"])

    def add_rule(d):
        d["search_rules"].append({"name": "New partners", "priority": 15, "pattern_type": "suffix",
                                  "pattern": "@newpartner.test", "source_zone": "Call Control",
                                  "target_zone": "Traversal Zone", "progress": "stop"})
    _edit(core_toml, add_rule)
    out = _edgeway("reload", "-c", str(core_toml))
    assert out.returncode == 0 and "applied: search_rules" in out.stdout, out
    r = json.loads(_edgeway("locate", "ann@newpartner.test", "--from", "Call Control", "--json", "-c", str(core_toml)).stdout)
    assert r["targets"][0]["rule"] == "New partners" and r["found"], r

    # A neighbour zone added with a rule toward it: both apply live.
    def add_zone(d):
        d["zones"].append({"type": "neighbour", "name": "Partner B", "host": "127.0.0.29", "port": 5060,
                           "transport": "udp"})
        d["search_rules"].append({"name": "To partner B", "priority": 17, "pattern_type": "suffix",
                                  "pattern": "@partnerb.test", "target_zone": "Partner B", "progress": "stop"})
    _edit(core_toml, add_zone)
    out = _edgeway("reload", "-c", str(core_toml))
    assert out.returncode == 0 and "applied: zones, search_rules" in out.stdout, out
    r = json.loads(_edgeway("locate", "bo@partnerb.test", "--from", "Call Control", "--json", "-c", str(core_toml)).stdout)
    assert (r["targets"][0]["zone"], r["targets"][0]["zone_type"], r["targets"][0]["hops"]) == \
        ("Partner B", "neighbour", ["udp:127.0.0.29:5060"]), r

    # A configuration that fails validation is refused whole; the running one stays.
    good = core_toml.read_text()

    def break_it(d):
        d["search_rules"].append({"name": "Broken", "priority": 16, "pattern_type": "regex", "pattern": "(",
                                  "target_zone": "Traversal Zone"})
        d["search_rules"][0]["name"] = "Renamed"
    _edit(core_toml, break_it)
    out = _edgeway("reload", "-c", str(core_toml))
    assert out.returncode == 1 and "refused" in out.stderr and "valid regular expression" in out.stderr, out
    core_toml.write_text(good)
    r = json.loads(_edgeway("locate", "ann@newpartner.test", "--from", "Call Control", "--json", "-c", str(core_toml)).stdout)
    assert r["targets"][0]["rule"] == "New partners"

    # The edge's certificate swapped (same CA, new key): new handshakes present it.
    pki = lab.workdir / "pki"
    old = _server_cert("127.0.0.2", 5061)
    ca = x509.load_pem_x509_certificates((pki / "ca.pem").read_bytes())[0]
    from cryptography.hazmat.primitives import serialization
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    cert, key = make_cert(ca, ca_key, "edge.corp.edgeway.test",
                          ["edge.corp.edgeway.test", "collab-edge.corp.edgeway.test"], ["127.0.0.2"])
    write_pem(pki / "edge-new.pem", cert, ca)
    write_pem(pki / "edge-new.key", key)
    os.chmod(pki / "edge-new.key", 0o600)

    def swap(d):
        d["tls"]["cert_file"] = str(pki / "edge-new.pem")
        d["tls"]["key_file"] = str(pki / "edge-new.key")
    _edit(edge_toml, swap)
    # SIGHUP does what `edgeway reload` does.
    os.kill(lab.node_pids()["edge"], signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not any(e.get("event") == "config reloaded" for e in lab.events("edge")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [ev] = [e for e in lab.events("edge") if e.get("event") == "config reloaded"]
    assert ev["applied"] == ["tls"], ev
    new = _server_cert("127.0.0.2", 5061)
    assert new.serial_number == cert.serial_number != old.serial_number
    assert _server_cert("127.0.0.2", 8443).serial_number == cert.serial_number  # the MRA listener too
    # Neither reload dropped the traversal connection.
    time.sleep(0.5)
    assert (_disconnects(lab, "core"), _disconnects(lab, "edge")) == before


def test_reload_during_calls_drops_none(lab: LabUp, tmp_path: Path) -> None:
    """100 calls at 10 calls/s outside → inside (SIPp both ends); after 3 s the edge's
    certificate is swapped and after 5 s a search rule is added on the core that takes the
    calls: 0 failed calls, and the calls after the reload are routed by the new rule."""
    from support.harness import PCAP, SIPP_DIR, sipp_available, sipp_result, start_sipp

    if not sipp_available():
        pytest.skip("sipp (Debian sip-tester) is not installed")
    calls, rate = 100, 10
    core_toml, edge_toml = lab.workdir / "core.toml", lab.workdir / "edge.toml"
    uas = start_sipp(["-sf", str(SIPP_DIR / "uas_echo.xml"), "-i", "127.0.0.4", "-p", "5060", "-t", "t1",
                      "-mi", "127.0.0.4", "-mp", "20000", "-rtp_echo", "-m", str(calls)], tmp_path, "uas")
    try:
        uac = start_sipp(["-sf", str(SIPP_DIR / "uac_pcap.xml"), "-i", "127.0.0.5", "-p", "5070", "-t", "u1",
                          "-s", "alice", "-key", "domain", "corp.edgeway.test", "-key", "pcap", str(PCAP),
                          "-mi", "127.0.0.5", "-mp", "30000", "-d", "500", "-r", str(rate), "-m", str(calls),
                          "-l", "50", "-timeout", "120", "127.0.0.2:5060"], tmp_path, "uac")
        time.sleep(3)
        pki = lab.workdir / "pki"

        def swap_back(d):
            d["tls"]["cert_file"] = str(pki / "edge.pem")
            d["tls"]["key_file"] = str(pki / "edge.key")
        _edit(edge_toml, swap_back)
        out = _edgeway("reload", "-c", str(edge_toml))
        assert out.returncode == 0 and "tls" in out.stdout, out
        time.sleep(2)

        def take_calls(d):
            d["search_rules"].insert(0, {"name": "Reloaded inbound", "priority": 1, "pattern_type": "suffix",
                                         "pattern": "@corp.edgeway.test", "source_zone": "Traversal Zone",
                                         "target_zone": "Call Control", "progress": "stop"})
        _edit(core_toml, take_calls)
        out = _edgeway("reload", "-c", str(core_toml))
        assert out.returncode == 0 and "search_rules" in out.stdout, out
        res = sipp_result(uac, tmp_path, "uac", timeout_s=60)
    finally:
        uas_res = sipp_result(uas, tmp_path, "uas", timeout_s=15)
    assert res.failed == 0 and res.successful == calls, res.log
    assert uas_res.successful == calls
    rules = [e.get("rule") for e in lab.events("core")
             if e.get("event") == "search completed" and res.call_id_marker in e.get("call_id", "")]
    assert len(rules) == calls and rules[-1] == "Reloaded inbound" and rules[0] != "Reloaded inbound", rules[:3]
