"""``edgeway probe`` against Edgeway media nodes: two ``edgeway edge`` processes serving STUN only
(``[turn] enabled, relay = false``) as seed 004 media nodes — one on UDP, TCP and TLS, one with
UDP closed (``udp_ports = []``) — probed with the lab CA. Each node is a real process, stopped by
its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from support.probe_peers import _wait_tcp, free_port

A, B = "127.0.32.45", "127.0.32.46"
pytestmark = pytest.mark.timeout(120)


def _start_edge(d, name: str, ip: str, udp: list[int], tcp: list[int], tls: list[int], pki: dict, media: int):
    d.mkdir(parents=True, exist_ok=True)
    conf = d / f"{name}.toml"
    conf.write_text(f'''role = "edge"
name = "{name}"

[sip]
listen_ip = "{ip}"
udp_port = 0
tcp_port = 0
tls_port = 0

[tls]
cert_file = "{pki['cert']}"
key_file = "{pki['key']}"

[media]
port_min = {media}
port_max = {media + 99}

[log]
file = "{d / (name + '.jsonl')}"

[turn]
enabled = true
relay = false
udp_ports = {udp}
tcp_ports = {tcp}
tls_ports = {tls}
''')
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = d / f"{name}.out"
    proc = subprocess.Popen([sys.executable, "-m", "edgeway", "edge", "-c", str(conf)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=d)
    return proc, log


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    from edgeway.security.pki import write_lab_pki

    d = tmp_path_factory.mktemp("probe-edgeway")
    pki = write_lab_pki(d / "pki", {"a": {"common_name": "media-a.lab.test", "ip_sans": [A]},
                                    "b": {"common_name": "media-b.lab.test", "ip_sans": [B]}})
    pa, ta = free_port(A), free_port(A)
    pb, tb = free_port(B), free_port(B)
    procs = []
    try:
        procs.append(_start_edge(d / "a", "a", A, [pa], [pa], [ta], pki["a"], 42400))
        procs.append(_start_edge(d / "b", "b", B, [], [pb], [tb], pki["b"], 42500))
        _wait_tcp(A, ta, procs[0][0], procs[0][1], 20.0)
        _wait_tcp(B, tb, procs[1][0], procs[1][1], 20.0)
        time.sleep(0.1)
        yield {"a": (pa, ta), "b": (pb, tb), "ca": str(pki["a"]["ca"])}
    finally:
        for p, _ in reversed(procs):
            _stop(p)


def _probe(*args):
    from edgeway.cli.main import app

    res = CliRunner().invoke(app, ["probe", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_edgeway_media_node_udp_tcp_tls(nodes):
    pa, ta = nodes["a"]
    out = json.loads(_probe(A, "--udp-port", str(pa), "--tcp-port", str(pa), "--tls-port", str(ta),
                            "--ca-file", nodes["ca"], "--no-cache", "--json"))
    rs = {r["transport"]: r for r in out["results"]}
    assert all(rs[t]["reachable"] and rs[t]["lost"] == 0 for t in ("udp", "tcp", "tls")), out["results"]
    assert rs["udp"]["mapped"].startswith("127.") and out["best"]["transport"] == "udp"


def test_edgeway_media_node_without_udp_falls_back_to_tcp(nodes):
    pb, tb = nodes["b"]
    text = _probe(B, "--udp-port", str(pb), "--tcp-port", str(pb), "--tls-port", str(tb),
                  "--ca-file", nodes["ca"], "--no-cache")
    assert f"best: node {B} over tcp" in text and "fell back from udp (port unreachable (ICMP))" in text, text


def test_two_edgeway_nodes_udp_node_wins(nodes):
    (pa, _), (pb, _) = nodes["a"], nodes["b"]
    out = json.loads(_probe(f"{B}:{pb}", f"{A}:{pa}", "--transports", "udp,tcp", "--no-cache", "--json"))
    assert out["best"]["node"] == f"{A}:{pa}" and out["best"]["transport"] == "udp"
    why = {(r["node"], r["transport"]): r["text"] for r in out["reasons"]}
    assert "port unreachable" in why[(f"{B}:{pb}", "udp")]
    assert f"node {A}:{pa} is reachable over udp" in why[(f"{B}:{pb}", "tcp")]
