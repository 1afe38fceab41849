"""Mobile and remote access through `edgeway lab up` with curl as the remote client
(issue 9 "Checked by"): the `_collab-edge._tls` SRV record in the lab DNS, get_edge_config,
an allowed request (200 with the internal body), blocked ones (403, 400), tunnel down (502).
Loopback only; the lab DNS answers on 127.0.0.10:5300."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import dns.resolver
import pytest

from edgeway.lab.topology import CORP_DOMAIN, DNS_IP, DNS_PORT, EDGE_FQDN, EDGE_IP, INSIDE_DNS_IP
from edgeway.lab.webservice import LAB_USERS
from support.harness import LabUp

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

B64 = base64.urlsafe_b64encode(CORP_DOMAIN.encode()).decode().rstrip("=")
BASE = f"https://{EDGE_FQDN}:8443/{B64}"


def curl(lab: LabUp, path: str, *extra: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(lab.workdir / "pki" / "ca.pem"),
                          "--resolve", f"{EDGE_FQDN}:8443:{EDGE_IP}", "-o", "-", "-w", "\n%{http_code}",
                          *extra, BASE + path], capture_output=True, text=True, timeout=20)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def test_discovery_allowed_blocked_and_tunnel_down(lab: LabUp) -> None:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port = [DNS_IP], DNS_PORT
    [srv] = r.resolve(f"_collab-edge._tls.{CORP_DOMAIN}", "SRV")
    assert (srv.port, str(srv.target).rstrip(".")) == (8443, EDGE_FQDN)
    # Split DNS (seed 002 §8.1, §12.2): _cisco-uds._tcp only in the inside view.
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve(f"_cisco-uds._tcp.{CORP_DOMAIN}", "SRV")
    inside = dns.resolver.Resolver(configure=False)
    inside.nameservers, inside.port = [INSIDE_DNS_IP], DNS_PORT
    [uds] = inside.resolve(f"_cisco-uds._tcp.{CORP_DOMAIN}", "SRV")
    assert (uds.port, str(uds.target).rstrip(".")) == (8443, f"cucm.{CORP_DOMAIN}")
    [edge_srv] = inside.resolve(f"_collab-edge._tls.{CORP_DOMAIN}", "SRV")
    assert edge_srv.port == 8443

    code, body = curl(lab, "/get_edge_config?service_name=_cisco-uds&service_name=_cuplogin")
    assert code == 200 and EDGE_FQDN in body and "8443" in body, body
    bad_domain = base64.urlsafe_b64encode(b"nowhere.test").decode().rstrip("=")
    code, _ = curl(lab, f"/../{bad_domain}/get_edge_config")  # normalised by curl to /<b64>/get_edge_config
    assert code == 404

    user, password = next(iter(LAB_USERS.items()))
    hdrs = lab.workdir.parent / "headers.txt"
    code, body = curl(lab, f"/http/127.0.0.4/8443/cucm-uds/user/{user}", "-u", f"{user}:{password}", "-D", str(hdrs))
    assert code == 200 and f"<userName>{user}</userName>" in body, body
    # Checked once against call control: an access token comes back, and stands for the credentials.
    [token] = [ln.split(":", 1)[1].strip() for ln in hdrs.read_text().splitlines()
               if ln.lower().startswith("x-edgeway-access-token:")]
    code, body = curl(lab, f"/http/127.0.0.4/8443/cucm-uds/user/{user}", "-H", f"Authorization: Bearer {token}")
    assert code == 200 and f"<userName>{user}</userName>" in body, body
    assert curl(lab, f"/http/127.0.0.4/8443/cucm-uds/user/{user}", "-H", "Authorization: Bearer forged")[0] == 401
    code, _ = curl(lab, "/http/127.0.0.4/8443/admin/secrets")
    assert code == 403  # no rule allows it
    code, _ = curl(lab, "/http/127.0.0.4/8443/cucm-uds/%2e%2e/admin", "--path-as-is")
    assert code in (400, 403)  # a dot segment, encoded, never widens a rule

    # Repeated bad credentials (the inside answers 401) ban the client's address on the edge
    # (more than 5 → 10 minutes); the operator lifts the ban through the control socket.
    # (Each bad attempt is a credential check: after mra.max_authorizations (5 per 60 s,
    # one used above) authorization rate control answers 429, which counts too.)
    got = [curl(lab, f"/http/127.0.0.4/8443/cucm-uds/user/{user}", "-u", f"{user}:wrong")[0] for _ in range(5)]
    assert got[:4] == [401] * 4 and got[4] == 429, got
    code, _ = curl(lab, f"/http/127.0.0.4/8443/cucm-uds/user/{user}", "-u", f"{user}:{password}")
    assert code == 0  # banned: cut off unanswered
    deadline = time.monotonic() + 3
    while not (bans := [e for e in lab.events("edge") if e.get("event") == "source blocked"]) and time.monotonic() < deadline:
        time.sleep(0.1)  # the event log reaches its file within 0.1 s
    assert bans and bans[-1]["category"] == "http_proxy_authorization_failure", bans
    banned = bans[-1]["source"]
    # Refused at accept, before TLS: a connection that sends nothing is reset at once (an
    # admitted one would wait for its ClientHello).
    with pytest.raises(ConnectionResetError):  # from connect() or the first recv()
        with socket.create_connection((EDGE_IP, 8443), timeout=3, source_address=(banned, 0)) as raw:
            raw.recv(1)
    cli = [sys.executable, "-m", "edgeway", "blocked"]
    listed = subprocess.run([*cli, "list", "-c", str(lab.workdir / "edge.toml")], capture_output=True, text=True, timeout=20)
    assert listed.returncode == 0 and banned in listed.stdout, listed
    lifted = subprocess.run([*cli, "unblock", banned, "-c", str(lab.workdir / "edge.toml")], capture_output=True,
                            text=True, timeout=20)
    assert lifted.returncode == 0, lifted
    code, _ = curl(lab, f"/http/127.0.0.4/8443/cucm-uds/user/{user}", "-u", f"{user}:{password}")
    assert code == 200

    # Maintenance mode on the core (seed 002 §16): new requests 503, then back.
    cli_core = [sys.executable, "-m", "edgeway", "maintenance"]
    on = subprocess.run([*cli_core, "on", "-c", str(lab.workdir / "core.toml")], capture_output=True, text=True, timeout=20)
    assert on.returncode == 0 and "maintenance mode: on" in on.stdout, on
    try:
        code, _ = curl(lab, "/get_edge_config?service_name=_cisco-uds")
        assert code == 503
    finally:
        off = subprocess.run([*cli_core, "off", "-c", str(lab.workdir / "core.toml")], capture_output=True, text=True,
                             timeout=20)
    assert off.returncode == 0 and "maintenance mode: off" in off.stdout, off
    assert curl(lab, "/get_edge_config?service_name=_cisco-uds")[0] == 200

    core = lab.node_pids()["core"]
    os.kill(core, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 25
        code = 0
        while time.monotonic() < deadline:  # the edge finds the stalled tunnel dead by its keepalive
            code, body = curl(lab, f"/http/127.0.0.4/8443/cucm-uds/user/{user}", "-u", f"{user}:{password}",
                              "--max-time", "3")
            if code == 502:
                break
            time.sleep(0.5)
        assert code == 502 and "Next Hop Connection Failed" in body, (code, body)
    finally:
        os.kill(core, signal.SIGCONT)


@pytest.mark.skipif(shutil.which("turnutils_uclient") is None or shutil.which("turnutils_peer") is None,
                    reason="coturn tools (turnutils_uclient, turnutils_peer) are not installed")
def test_turn_on_the_lab_edge_advertised_and_relaying(lab: LabUp) -> None:
    """Issue 10 item 3: the lab edge's TURN server is listed in get_edge_config
    (turnEdgeServer) and relays for a remote user (carol's credentials) with channels."""
    from edgeway.lab.topology import REMOTE_USERS

    deadline = time.monotonic() + 20  # the test before leaves the tunnel down for a while
    while (got := curl(lab, "/get_edge_config?service_name=_cisco-uds"))[0] == 502 and time.monotonic() < deadline:
        time.sleep(0.5)
    code, body = got
    assert code == 200 and "<turnEdgeServer>" in body and "<udpPort>3478</udpPort>" in body, body
    peer = subprocess.Popen(["turnutils_peer", "-L", "127.0.0.30", "-p", "3480"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.2)
        out = subprocess.run(["turnutils_uclient", "-e", "127.0.0.30", "-r", "3480", "-n", "10", "-m", "1", "-z", "5",
                              "-c", "-L", "127.0.0.8", "-u", "carol", "-w", REMOTE_USERS["carol"], "-p", "3478",
                              EDGE_IP], capture_output=True, text=True, timeout=30)
    finally:
        os.killpg(peer.pid, signal.SIGTERM)
        peer.wait(5)
    sent = [int(x) for x in re.findall(r"tot_send_msgs=(\d+)", out.stdout + out.stderr)]
    recv = [int(x) for x in re.findall(r"tot_recv_msgs=(\d+)", out.stdout + out.stderr)]
    assert sent and recv and sent[-1] == 10 and recv[-1] >= 9, (out.stdout + out.stderr)[-2000:]
