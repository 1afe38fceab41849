"""``edgeway probe`` against independent peers on loopback (issue 10 item 4, seed 004):
coturn ``turnserver`` as the media node (UDP + TCP + TLS; and one with ``--no-udp`` so the
probe falls back to TCP and says so), ``tinyproxy`` with Basic authentication as the HTTP proxy
of the last fallback. Every process is started from a tmp config and stopped by its PID."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from support.probe_peers import Coturn, Tinyproxy, free_port, tinyproxy_available, turnserver_available

pytestmark = [
    pytest.mark.skipif(not turnserver_available(), reason="turnserver (Debian coturn) is not installed"),
    pytest.mark.timeout(120),
]

FULL, PROXY, NOUDP = "127.0.32.41", "127.0.32.42", "127.0.32.43"


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    from edgeway.security.pki import write_lab_pki

    d = tmp_path_factory.mktemp("probe")
    pki = write_lab_pki(d / "pki", {"full": {"common_name": "media1.lab.test", "ip_sans": [FULL]},
                                    "noudp": {"common_name": "media2.lab.test", "ip_sans": [NOUDP]}})
    started = []
    try:
        full = Coturn(d / "full", FULL, cert=pki["full"]["cert"], key=pki["full"]["key"]).start()
        started.append(full)
        noudp = Coturn(d / "noudp", NOUDP, cert=pki["noudp"]["cert"], key=pki["noudp"]["key"], udp=False).start()
        started.append(noudp)
        proxy = None
        if tinyproxy_available():
            proxy = Tinyproxy(d / "proxy", PROXY, [full.tls_port, noudp.tls_port]).start()
            started.append(proxy)
        yield {"full": full, "noudp": noudp, "proxy": proxy, "ca": str(pki["full"]["ca"]), "dir": d}
    finally:
        for p in reversed(started):
            p.stop()


def probe(*args: str, ok: bool = True):
    from edgeway.cli.main import app

    res = CliRunner().invoke(app, ["probe", *args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def ports(c: Coturn) -> list[str]:
    return ["--udp-port", str(c.port), "--tcp-port", str(c.port), "--tls-port", str(c.tls_port)]


def by_transport(out: dict) -> dict:
    return {(r["node"], r["transport"]): r for r in out["results"]}


def test_coturn_udp_tcp_tls_reachable_udp_wins(peers):
    c = peers["full"]
    out = json.loads(probe(FULL, *ports(c), "--ca-file", peers["ca"], "--no-cache", "--json").output)
    rs = by_transport(out)
    for t in ("udp", "tcp", "tls"):
        r = rs[(FULL, t)]
        assert r["reachable"] and r["lost"] == 0 and len(r["samples"]) == 3, r
        assert r["rtt_min_ms"] <= r["rtt_median_ms"] < 1000
        assert r["mapped"].startswith("127.")  # XOR-MAPPED-ADDRESS from coturn
    assert "checked against" in rs[(FULL, "tls")]["note"]
    assert out["best"]["transport"] == "udp" and out["best"]["node"] == FULL and out["fallback"] == []
    assert rs[(FULL, "proxy-tls")]["skipped"] == "no --proxy given"


def test_tls_verification_default_and_insecure(peers):
    c = peers["full"]
    out = json.loads(probe(FULL, *ports(c), "--transports", "tls", "--no-cache", "--json", ok=False).output)
    assert "TLS certificate not accepted" in by_transport(out)[(FULL, "tls")]["error"] and out["best"] is None
    res = probe(FULL, *ports(c), "--transports", "tls", "--no-cache", "--insecure")
    assert "TLS certificates are NOT verified (--insecure)" in res.output
    assert f"best: node {FULL} over tls" in res.output


def test_node_without_udp_falls_back_to_tcp_and_says_so(peers):
    c = peers["noudp"]
    res = probe(NOUDP, *ports(c), "--ca-file", peers["ca"], "--no-cache", "--samples", "2")
    assert f"best: node {NOUDP} over tcp" in res.output
    assert "fell back from udp (port unreachable (ICMP))" in res.output
    assert f"{NOUDP} udp: failed: port unreachable (ICMP)" in res.output
    assert f"{NOUDP} tls: lost:" in res.output and "but tcp is preferred" in res.output


def test_two_nodes_udp_node_beats_tcp_only_node(peers):
    full, noudp = peers["full"], peers["noudp"]
    # host:port gives the UDP/TCP port per node; one --tls-port for both is not possible, so TLS is left out
    out = json.loads(probe(f"{NOUDP}:{noudp.port}", f"{FULL}:{full.port}", "--transports", "udp,tcp",
                           "--no-cache", "--json").output)
    assert out["best"]["node"] == f"{FULL}:{full.port}" and out["best"]["transport"] == "udp"
    lost = {(r["node"], r["transport"]): r for r in out["reasons"]}[(f"{NOUDP}:{noudp.port}", "tcp")]
    assert lost["verdict"] == "lost" and "reachable over udp, which is preferred" in lost["text"]


def _closed_port(host: str) -> int:
    return free_port(host)  # nothing listens there: UDP gets ICMP unreachable, TCP a reset


@pytest.mark.skipif(not tinyproxy_available(), reason="tinyproxy is not installed")
def test_proxy_only_through_tinyproxy_basic_auth(peers):
    c, px = peers["full"], peers["proxy"]
    out = json.loads(probe(FULL, *ports(c), "--ca-file", peers["ca"], "--proxy", px.url, "--proxy-only",
                           "--no-cache", "--json").output)
    rs = by_transport(out)
    assert out["best"]["transport"] == "proxy-tls", out["headline"]
    assert rs[(FULL, "proxy-tls")]["lost"] == 0 and "via proxy" in rs[(FULL, "proxy-tls")]["note"]
    assert rs[(FULL, "udp")]["skipped"] == "--proxy-only"
    assert "403" in rs[(FULL, "proxy-tcp")]["error"]  # tinyproxy allows CONNECT only to the TLS ports


@pytest.mark.skipif(not tinyproxy_available(), reason="tinyproxy is not installed")
def test_direct_blocked_falls_back_to_proxy_and_says_why(peers):
    c, px = peers["full"], peers["proxy"]
    closed = str(_closed_port(FULL))
    res = probe(FULL, "--udp-port", closed, "--tcp-port", closed, "--tls-port", closed,
                "--proxy-port", str(c.tls_port), "--ca-file", peers["ca"], "--proxy", px.url, "--no-cache",
                "--timeout", "0.5")
    assert f"best: node {FULL} over proxy-tls" in res.output, res.output
    assert "fell back from udp (port unreachable (ICMP)), tcp (tcp connect: connection refused), " \
           "tls (tls connect: connection refused)" in res.output


@pytest.mark.skipif(not tinyproxy_available(), reason="tinyproxy is not installed")
def test_proxy_wrong_password_is_reported(peers):
    c, px = peers["full"], peers["proxy"]
    bad = px.url.replace(px.password, "wrong")
    out = json.loads(probe(FULL, *ports(c), "--proxy", bad, "--proxy-only", "--no-cache", "--json", "--insecure",
                           ok=False).output)
    err = by_transport(out)[(FULL, "proxy-tls")]["error"]
    assert ("407" in err or "401" in err) and "credentials missing or wrong" in err and out["best"] is None


def test_cache_reused_refreshed_and_keyed_by_nodes(peers, tmp_path):
    c = peers["full"]
    cache = tmp_path / "probe.json"
    args = [FULL, *ports(c), "--transports", "udp", "--cache", str(cache), "--json"]
    first = json.loads(probe(*args).output)
    assert first["source"] == "probe" and "no cached probe" in first["cache"] and cache.exists()
    second = json.loads(probe(*args).output)
    assert second["source"] == "cache" and second["best"] == first["best"]
    third = json.loads(probe(*args, "--refresh").output)
    assert third["source"] == "probe" and "--refresh" in third["cache"]
    # another network: the cached probe was made from another local address, so probe again
    data = json.loads(cache.read_text())
    data["entries"][0]["local_address"] = "192.0.2.99"
    cache.write_text(json.dumps(data))
    fourth = json.loads(probe(*args).output)
    assert fourth["source"] == "probe" and "local address changed from 192.0.2.99 to 127.0.0.1" in fourth["cache"]
    other = json.loads(probe(FULL, *ports(c), "--transports", "udp,tcp", "--cache", str(cache), "--json").output)
    assert other["source"] == "probe"  # another probe set: its own entry
    insecure = json.loads(probe(*args, "--insecure").output)
    assert insecure["source"] == "probe"  # another TLS verification mode: its own entry
    assert len(json.loads(cache.read_text())["entries"]) == 3


def test_hold_sends_keepalives_on_the_chosen_flow(peers):
    c = peers["full"]
    out = json.loads(probe(FULL, *ports(c), "--transports", "udp,tcp", "--no-cache", "--json",
                           "--hold", "0.65", "--keepalive", "0.1").output)
    h = out["hold"]
    assert h["sent"] >= 4 and h["answered"] == h["sent"] and h["error"] is None
    assert h["max_gap"] < 0.3
