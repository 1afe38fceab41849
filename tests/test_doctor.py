"""``edgeway doctor`` (issue 11 item 5): each finding names its cause and its fix.

Pure checks (port ranges, host names, certificates made on the spot) and, against
``edgeway lab up``, the network checks the core runs toward its edge: the seed 003 / 002
symptoms the lab can reproduce (a blocked port, an untrusted CA, a certificate without the
name the client uses, a missing clientAuth EKU)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgeway.diag.doctor import check_certificate, check_hostname, check_port_ranges
from edgeway.lab.topology import dump_toml
from edgeway.security.pki import make_ca, make_cert, write_pem
from support.harness import LabUp


# ------------------------------------------------------------------ pure checks


def test_media_range_against_the_ephemeral_range() -> None:
    stock = check_port_ranges((36000, 59999), (32768, 60999))
    assert stock.level == "fail" and "overlap" in stock.cause and "ip_local_reserved_ports=36000-59999" in stock.fix
    assert check_port_ranges((36000, 59999), (32768, 60999), [(36000, 59999)]).level == "ok"
    assert check_port_ranges((36000, 59999), (20000, 35999)).level == "ok"
    assert check_port_ranges((36000, 59999), None).level == "warn"


def test_clock_skew_verdicts() -> None:
    from edgeway.diag.doctor import clock_finding

    assert clock_finding("edge:8443", 0.4).level == "ok"
    warn = clock_finding("edge:8443", -12)
    assert warn.level == "warn" and "12 s behind edge:8443" in warn.cause
    fail = clock_finding("edge:8443", 3600)
    assert fail.level == "fail" and "row 16" in fail.fix


def test_host_name_with_an_underscore() -> None:
    bad = check_hostname("edge_1.corp.example")
    assert bad is not None and bad.level == "fail" and "'_'" in bad.cause  # seed 002 §21 row 8
    assert check_hostname("edge-1.corp.example").level == "ok" and check_hostname(None) is None


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("certs")
    ca, ca_key = make_ca("Doctor CA")
    other, other_key = make_ca("Another CA")
    now = dt.datetime.now(dt.timezone.utc)
    out = {"ca": write_pem(d / "ca.pem", ca), "other_ca": write_pem(d / "other.pem", other)}

    def leaf(name: str, issuer=(ca, ca_key), **kw) -> None:
        cert, key = make_cert(issuer[0], issuer[1], "edge.corp.example", kw.pop("sans", ["edge.corp.example"]), **kw)
        out[name] = write_pem(d / f"{name}.pem", cert, issuer[0])
        out[name + ".key"] = write_pem(d / f"{name}.key", key)

    leaf("good", sans=["edge.corp.example", "collab-edge.corp.example"])
    leaf("expired", not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1))
    leaf("soon", not_after=now + dt.timedelta(days=5))
    leaf("server_only", client=False)
    leaf("foreign", issuer=(other, other_key))
    return out


def _levels(findings) -> dict[str, str]:
    return {f.cause: f.level for f in findings}


def test_certificate_checks(certs: dict[str, Path]) -> None:
    ok = check_certificate(certs["good"], certs["good.key"], certs["ca"], client_auth=True,
                           names=[("corp.example", "collab-edge.corp.example")])
    assert [f.level for f in ok] == ["ok"], ok
    [f] = check_certificate(certs["expired"], certs["expired.key"], certs["ca"], client_auth=True)
    assert f.level == "fail" and "expired" in f.cause and "renew" in f.fix
    assert any(f.level == "warn" and "expires in" in f.cause
               for f in check_certificate(certs["soon"], certs["soon.key"], certs["ca"], client_auth=True))
    [f] = check_certificate(certs["server_only"], certs["server_only.key"], certs["ca"], client_auth=True)
    assert f.level == "fail" and "clientAuth" in f.cause  # seed 002 §23 case 4
    assert check_certificate(certs["server_only"], certs["server_only.key"], certs["ca"], client_auth=False)[0].level == "ok"
    [f] = check_certificate(certs["foreign"], certs["foreign.key"], certs["ca"], client_auth=True)
    assert f.level == "fail" and "does not chain" in f.cause and "untrusted CA" in f.fix
    [f] = check_certificate(certs["good"], certs["expired.key"], certs["ca"], client_auth=True)
    assert f.level == "fail" and "is not the key of" in f.cause
    [f] = check_certificate(certs["expired"].parent / "soon.pem", certs["soon.key"], certs["ca"], client_auth=True,
                            names=[("corp.example", "collab-edge.corp.example")])[-1:]
    assert f.level == "fail" and "does not name corp.example or collab-edge.corp.example" in f.cause  # §21 row 5


# ------------------------------------------------------------------ against the lab


def _doctor(path: Path) -> tuple[int, list[dict]]:
    out = subprocess.run([sys.executable, "-m", "edgeway", "doctor", "-c", str(path), "--json"],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout)


def _variant(lab: LabUp, node: str, name: str, change) -> Path:
    data = tomllib.loads((lab.workdir / f"{node}.toml").read_text())
    change(data)
    path = lab.workdir.parent / f"{name}.toml"
    path.write_text(dump_toml(data))
    return path


def test_doctor_on_the_lab(lab: LabUp) -> None:
    code, core = _doctor(lab.workdir / "core.toml")
    assert [f["level"] for f in core if f["check"] == "zone"] == ["ok"], core  # the running node's traversal zone
    peers = [f for f in core if f["check"] == "peer"]
    assert len(peers) == 2 and all(f["level"] == "ok" for f in peers), peers  # traversal 7001, MRA tunnel 2222
    assert [f["level"] for f in core if f["check"] == "clock"] == ["ok"], core  # the edge's HTTPS Date
    assert any(f["check"] == "dns" and f["level"] == "ok" and "_cisco-uds._tcp" in f["cause"] for f in core)
    _, edge = _doctor(lab.workdir / "edge.toml")
    dns = {f["cause"].split(":")[0]: f["level"] for f in edge if f["check"] == "dns"}
    assert dns == {"SRV _sips._tcp.corp.edgeway.test": "ok", "SRV _collab-edge._tls.corp.edgeway.test": "ok",
                   "SRV _cisco-uds._tcp.corp.edgeway.test": "ok"}, edge
    assert not any(f["check"] == "peer" for f in edge)  # the edge never connects inward
    assert [f["level"] for f in edge if f["check"] == "hostname"] == ["ok"]

    # MRA on without the edge knowing its own name (clients' REGISTERs would get 404).
    def no_hostname(d):
        d["sip"].pop("hostname", None)
    _, found = _doctor(_variant(lab, "edge", "nohost", no_hostname))
    [f] = [f for f in found if f["check"] == "hostname"]
    assert f["level"] == "fail" and "[sip] hostname" in f["fix"], f

    # A blocked port: the core's traversal peer on a port nothing listens on.
    def closed_port(d):
        d["zones"][1]["peers"] = ["127.0.0.2:7999"]
    code, found = _doctor(_variant(lab, "core", "blocked", closed_port))
    [f] = [f for f in found if f["check"] == "peer" and "7999" in f["cause"]]
    assert code == 1 and f["level"] == "fail" and "refused" in f["cause"].lower() and "open TCP 7999" in f["fix"], f

    # An untrusted CA: the core trusts another CA than the edge's.
    other = lab.workdir.parent / "other-ca.pem"
    ca, _ = make_ca("Some Other CA")
    write_pem(other, ca)

    def untrusted(d):
        d["tls"]["ca_file"] = str(other)
    code, found = _doctor(_variant(lab, "core", "untrusted", untrusted))
    peer = [f for f in found if f["check"] == "peer"]
    assert code == 1 and peer and all(f["level"] == "fail" and "TLS handshake failed" in f["cause"] for f in peer), peer
    assert any(f["check"] == "certificate" and "does not chain" in f["cause"] for f in found)


# ------------------------------------------------------------------ configuration (seed 003 §12.4)


def _lab_edge(tmp_path: Path, **overrides):
    from edgeway.config import parse_config
    from edgeway.lab.topology import LabTopology

    topo = LabTopology(edge_overrides=overrides)
    files = topo.build(tmp_path / "lab")
    return parse_config(tomllib.loads(files.edge_config.read_text()))


def test_the_lab_edge_configuration_is_clean(tmp_path: Path) -> None:
    from edgeway.diag.doctor import check_hybrid, check_search_rules

    cfg = _lab_edge(tmp_path)
    assert check_search_rules(cfg) == [] and check_hybrid(cfg) == []


def test_seed_003_configuration_symptoms(tmp_path: Path) -> None:
    from edgeway.diag.doctor import check_hybrid, check_search_rules

    cfg = _lab_edge(tmp_path)
    # Row 15: the catch-all "Outbound to DNS" (100, stop) before the cloud rule moved to 101.
    for r in cfg.search_rules:
        if r.name == "Hybrid outbound":
            r.priority = 101
    [f] = check_search_rules(cfg)
    assert f.level == "warn" and "'Hybrid outbound' (priority 101) is shadowed: 'Outbound to DNS'" in f.cause, f
    assert "lower priority number than 100" in f.fix
    # Rows 10, 11, 13 on the hybrid zone and the edge.
    cfg = _lab_edge(tmp_path)
    cfg.sip.mtls_enabled = False
    hz = next(z for z in cfg.zones if z.name == "Hybrid Call Services DNS")
    hz.modify_dns_request = False
    next(z for z in cfg.zones if z.type == "traversal_server").preloaded_routes = "reject"
    got = {f.fix.rpartition("row ")[2].rstrip(")"): f.level for f in check_hybrid(cfg)}
    assert got == {"10": "fail", "13": "warn", "11": "fail"}, got
