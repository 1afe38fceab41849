"""TLS diagnostics (seed 003 §3.3, failure modes M1–M4 and the alert of M3/M5/M7): every failed handshake,
inbound or outbound, logs exactly one ``tls handshake failed`` event naming the
direction, zone, peer address, the peer certificate's CN/SANs when known and the
cause in operator words.

One in-process edge node (127.0.0.51: UDP/TCP 5060, mutual TLS on 5062) runs in a
background thread for the whole module. Each test provokes one cause with
``openssl s_client`` / ``openssl s_server`` or a certificate made for the purpose,
and reads the events the node logged since the provocation started:

- inbound (peer -> edge:5062, listener ``mtls``): untrusted CA, expired and not
  yet valid client certificate, no client certificate (TLS 1.2 and TLS 1.3);
- outbound (edge -> a DNS zone with TLS verify on): subject name not in the peer
  certificate, peer rejected our certificate (alert), peer closed without alert.

A good mutual-TLS connection is opened before any failure and must still carry
an OPTIONS afterwards; a UDP OPTIONS must be answered too, and an OPTIONS for
``sip:127.0.0.51:5062`` names the node itself.

Seen while writing this: the edge sends no TLS alert when it refuses a
handshake (asyncio drops the pending alert), so OpenSSL clients see
"unexpected eof" rather than unknown_ca; the tests assert only that they are
refused.

Addresses: 127.0.0.51 node, .52/.54/.55 outbound peers, .53 UDP caller, .56 good
mTLS client, .57 inbound ``s_client`` source, .59 configured but unused DNS server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgeway.config import parse_config
from edgeway.diag.events import EventLog
from edgeway.node import Node
from edgeway.security.pki import make_ca, make_cert, write_pem
from edgeway.sip.message import Response, StreamFramer, parse_message

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")

NODE = "127.0.0.51"
PEER_NAME = "127.0.0.52"  # s_server whose certificate lacks the verify subject name
CALLER = "127.0.0.53"  # UDP SIP client
PEER_REJECT = "127.0.0.54"  # s_server that does not trust our certificate
PEER_CLOSE = "127.0.0.55"  # TCP listener that closes without a TLS alert
GOOD = "127.0.0.56"  # mutual-TLS client with a valid lab certificate
INBOUND = "127.0.0.57"  # source address of every inbound s_client
MTLS_PORT = 5062
ZONE = "Hybrid Call Services DNS"
VERIFY_NAME = "callservice.cloud.test"
SUBPROCESS_TIMEOUT_S = 10.0
EVENT_WAIT_S = 6.0  # > CONNECT_TIMEOUT_S of the transport layer
QUIET_S = 0.3  # how long to wait for a (wrong) second event


# --------------------------------------------------------------------------- fixtures


class Edge:
    """The running node, its PKI and its event log."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.log = tmp / "events.jsonl"
        self.pki: dict[str, Path] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.node: Node | None = None
        self.good: ssl.SSLSocket | None = None
        self.good_framer = StreamFramer()

    # -- event log ---------------------------------------------------------
    def mark(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def events_since(self, mark: int) -> list[dict]:
        with self.log.open("rb") as fh:
            fh.seek(mark)
            data = fh.read()
        lines = data.decode().splitlines()
        if lines and not data.endswith(b"\n"):
            lines = lines[:-1]  # a line still being written
        return [json.loads(line) for line in lines if line.strip()]

    def failures_since(self, mark: int, peer_ip: str, *, expect: int = 1) -> list[dict]:
        """Wait for ``expect`` ``tls handshake failed`` events from ``peer_ip`` logged
        after ``mark``, then a little longer to catch any extra one; return them all."""

        def matching() -> list[dict]:
            return [
                e for e in self.events_since(mark)
                if e["event"] == "tls handshake failed" and str(e.get("peer", "")).rsplit(":", 1)[0] == peer_ip
            ]

        end = time.monotonic() + EVENT_WAIT_S
        while time.monotonic() < end and len(matching()) < expect:
            time.sleep(0.02)
        time.sleep(QUIET_S)
        return matching()

    def open_conns_from(self, ip: str) -> int:
        """Stream connections the node holds with ``ip`` (read in the node's thread)."""

        async def count() -> int:
            assert self.node is not None
            return sum(1 for c in self.node.tl.conns.values() if c.remote[0] == ip and not c.closed)

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)


def _pki(tmp: Path) -> dict[str, Path]:
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = make_ca("Lab CA")
    other, other_key = make_ca("Other CA")
    out = {"ca": write_pem(tmp / "ca.pem", ca), "other_ca": write_pem(tmp / "other_ca.pem", other)}

    def leaf(name: str, issuer, issuer_key, cn: str, sans: list[str], ips: list[str] = [], **kw) -> None:  # noqa: B006
        cert, key = make_cert(issuer, issuer_key, cn, sans, ips, **kw)
        out[name] = write_pem(tmp / f"{name}.pem", cert, issuer)  # leaf + CA: the full chain
        out[name + "_leaf"] = write_pem(tmp / f"{name}_leaf.pem", cert)
        out[name + "_key"] = write_pem(tmp / f"{name}.key", key)

    leaf("edge", ca, ca_key, "edge.test", ["edge.test"], [NODE])
    leaf("good", ca, ca_key, "client.test", ["client.test"])
    leaf("rogue", other, other_key, "rogue.test", ["rogue.test"])
    leaf("expired", ca, ca_key, "expired.test", ["expired.test"],
         not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    leaf("notyet", ca, ca_key, "notyet.test", ["notyet.test"],
         not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30))
    # Valid lab-CA server certificate whose names are not the zone's verify subject name.
    leaf("wrongname", ca, ca_key, "l2sip-a.cloud.test", ["l2sip-a.cloud.test", "callservice.other.test"])
    # Valid lab-CA server certificate that does carry the verify subject name.
    leaf("cloud", ca, ca_key, "l2sip-b.cloud.test", ["l2sip-b.cloud.test", VERIFY_NAME])
    return out


def _config(pki: dict[str, Path]) -> dict:
    return {
        "role": "edge",
        "name": "edge",
        "sip": {"listen_ip": NODE, "udp_port": 5060, "tcp_port": 5060, "tls_port": 0,
                "mtls_enabled": True, "mtls_port": MTLS_PORT},
        "timers": {"t1_ms": 50, "t2_ms": 400},
        "tls": {"cert_file": str(pki["edge"]), "key_file": str(pki["edge_key"]), "ca_file": str(pki["ca"])},
        "dns": {"servers": ["127.0.0.59:5300"], "timeout_s": 0.5},  # never queried: IP-literal URIs
        "zones": [
            {"type": "dns", "name": ZONE, "default_transport": "tls",
             "tls_verify_mode": True, "tls_verify_subject_name": VERIFY_NAME},
        ],
        "search_rules": [
            {"name": "to the cloud peers", "priority": 10, "pattern": r".*@127\.0\.0\.5[245].*", "target_zone": ZONE},
        ],
    }


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tlsdiag")
    e = Edge(tmp)
    e.pki = _pki(tmp)
    e.loop = asyncio.new_event_loop()
    e.thread = threading.Thread(target=e.loop.run_forever, name="edge-node", daemon=True)
    e.thread.start()
    e.node = Node(parse_config(_config(e.pki)), EventLog("edge", str(e.log)))
    try:
        asyncio.run_coroutine_threadsafe(e.node.start(), e.loop).result(10)
        # The good mutual-TLS connection, opened before any failure is provoked.
        e.good = _tls_client(e.pki["good"], e.pki["good_key"], e.pki["ca"], GOOD)
        yield e
    finally:
        if e.good is not None:
            e.good.close()
        try:
            asyncio.run_coroutine_threadsafe(e.node.close(), e.loop).result(10)
        finally:
            e.loop.call_soon_threadsafe(e.loop.stop)
            e.thread.join(5)
            e.loop.close()


# --------------------------------------------------------------------------- helpers


def _tls_client(cert: Path, key: Path, ca: Path, bind_ip: str) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection((NODE, MTLS_PORT), timeout=5, source_address=(bind_ip, 0))
    return ctx.wrap_socket(raw)


def _s_client(*args: str) -> subprocess.CompletedProcess:
    """One ``openssl s_client`` connection to the mTLS port from 127.0.0.57.

    ``-ign_eof``: do not quit on stdin EOF but read until the server closes, so a
    refusal shows as a non-zero exit even in TLS 1.3, where the client's side of
    the handshake completes before the server has checked the client certificate.
    """
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"{NODE}:{MTLS_PORT}", "-bind", f"{INBOUND}:0", "-ign_eof", *args],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )


def _assert_refused(edge: Edge, r: subprocess.CompletedProcess) -> None:
    """The s_client connection was closed by the edge and nothing of it remains."""
    assert r.returncode != 0, (r.stdout + r.stderr).decode(errors="replace")[-2000:]
    assert edge.open_conns_from(INBOUND) == 0


class SServer:
    """``openssl s_server`` on ip:5062 for one connection (``-naccept 1``), stopped by PID."""

    def __init__(self, ip: str, *args: str):
        self.proc = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", f"{ip}:{MTLS_PORT}", "-naccept", "1", *args],
            stdin=subprocess.PIPE,  # kept open: EOF on stdin would end the session early
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out = b""
        end = time.monotonic() + SUBPROCESS_TIMEOUT_S
        assert self.proc.stdout is not None
        while b"ACCEPT" not in out:
            left = end - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"s_server did not start: {out!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = self.proc.stdout.read1(4096)
                if not chunk:
                    continue
                out += chunk

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID (Popen.kill signals this one process)
        try:
            self.proc.wait(SUBPROCESS_TIMEOUT_S)
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()


def _request(method: str, uri: str, transport: str, host: str, port: int) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:tester@{host}>;tag={secrets.token_hex(4)}",
        f"To: <{uri}>",
        f"Call-ID: {secrets.token_hex(8)}@{host}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:tester@{host}:{port}>",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def _udp_final(payload: bytes) -> Response:
    """Send ``payload`` from 127.0.0.53:5060 to the node; return the first final response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((CALLER, 5060))
        s.settimeout(EVENT_WAIT_S + 2)
        s.sendto(payload, (NODE, 5060))
        while True:
            msg = parse_message(s.recv(65535))
            if isinstance(msg, Response) and msg.status >= 200:
                return msg


def _invite_to(peer_ip: str) -> Response:
    uri = f"sip:u@{peer_ip}:{MTLS_PORT};transport=tls"
    return _udp_final(_request("INVITE", uri, "UDP", CALLER, 5060))


def _good_options(edge: Edge, uri: str) -> Response:
    """Send an OPTIONS over the good mutual-TLS connection; return its final response."""
    good = edge.good
    assert good is not None
    local_ip, local_port = good.getsockname()[:2]
    good.settimeout(5)
    good.sendall(_request("OPTIONS", uri, "TLS", local_ip, local_port))
    while True:
        data = good.recv(65535)
        assert data, "the good mutual-TLS connection was closed"
        for ev in edge.good_framer.feed(data):
            if isinstance(ev, Response) and ev.status >= 200:
                return ev


def _one_failure(edge: Edge, mark: int, peer_ip: str) -> dict:
    got = edge.failures_since(mark, peer_ip)
    assert len(got) == 1, got
    return got[0]


# --------------------------------------------------------------------------- inbound


def test_inbound_untrusted_ca(edge: Edge) -> None:
    """M1: a client certificate from a CA the edge does not trust."""
    mark = edge.mark()
    r = _s_client("-cert", str(edge.pki["rogue_leaf"]), "-key", str(edge.pki["rogue_key"]),
                  "-CAfile", str(edge.pki["ca"]))
    ev = _one_failure(edge, mark, INBOUND)
    _assert_refused(edge, r)
    assert ev["direction"] == "inbound" and ev["listener"] == "mtls"
    assert ev["cause"].startswith("untrusted CA"), ev
    assert "unable to get local issuer certificate" in ev["cause"]
    assert ev["peer"].startswith(f"{INBOUND}:") and "zone" in ev


@pytest.mark.parametrize("which", ["expired", "notyet"])
def test_inbound_certificate_outside_validity(edge: Edge, which: str) -> None:
    """A client certificate from the trusted CA, expired or not yet valid."""
    mark = edge.mark()
    r = _s_client("-cert", str(edge.pki[which + "_leaf"]), "-key", str(edge.pki[which + "_key"]),
              "-CAfile", str(edge.pki["ca"]))
    ev = _one_failure(edge, mark, INBOUND)
    _assert_refused(edge, r)
    assert ev["direction"] == "inbound" and ev["listener"] == "mtls"
    assert ev["cause"] == "certificate expired or not yet valid", ev


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_inbound_no_client_certificate(edge: Edge, version: str) -> None:
    """Mutual TLS required and the client sends no certificate: the server sees the
    cause under both versions (in TLS 1.3 only after the client's Finished)."""
    mark = edge.mark()
    r = _s_client(version, "-CAfile", str(edge.pki["ca"]))
    ev = _one_failure(edge, mark, INBOUND)
    _assert_refused(edge, r)
    assert ev["direction"] == "inbound" and ev["listener"] == "mtls"
    assert ev["cause"] == "no client certificate presented", ev
    assert ev["peer_names"] == []


# --------------------------------------------------------------------------- outbound


def test_outbound_subject_name_not_in_certificate(edge: Edge) -> None:
    """M2: the peer's chain is trusted but its CN/SANs lack the zone's verify subject name."""
    server = SServer(PEER_NAME, "-cert", str(edge.pki["wrongname"]), "-key", str(edge.pki["wrongname_key"]))
    try:
        mark = edge.mark()
        final = _invite_to(PEER_NAME)
        ev = _one_failure(edge, mark, PEER_NAME)
    finally:
        server.stop()
    assert final.status == 503 and edge.open_conns_from(ev["peer"].rsplit(":", 1)[0]) == 0
    assert ev["direction"] == "outbound" and ev["zone"] == ZONE
    assert ev["peer"] == f"{PEER_NAME}:{MTLS_PORT}"
    assert ev["peer_names"] == ["l2sip-a.cloud.test", "l2sip-a.cloud.test", "callservice.other.test"]
    assert ev["cause"].startswith(f"subject name '{VERIFY_NAME}' not in the peer certificate"), ev
    assert "callservice.other.test" in ev["cause"]


def test_outbound_peer_rejected_our_certificate(edge: Edge) -> None:
    """M3/M5/M7: the peer does not trust our certificate and says so with an alert.
    TLS 1.2, because in TLS 1.3 the client finishes before the server checks it."""
    server = SServer(PEER_REJECT, "-tls1_2", "-cert", str(edge.pki["cloud"]), "-key", str(edge.pki["cloud_key"]),
                     "-Verify", "1", "-verify_return_error", "-CAfile", str(edge.pki["other_ca"]))
    try:
        mark = edge.mark()
        final = _invite_to(PEER_REJECT)
        ev = _one_failure(edge, mark, PEER_REJECT)
    finally:
        server.stop()
    assert final.status == 503 and edge.open_conns_from(ev["peer"].rsplit(":", 1)[0]) == 0
    assert ev["direction"] == "outbound" and ev["zone"] == ZONE
    assert ev["peer"] == f"{PEER_REJECT}:{MTLS_PORT}"
    assert ev["cause"] == "peer rejected our certificate (alert received: unknown ca)", ev


def test_outbound_peer_closed_without_alert(edge: Edge) -> None:
    """M4: something accepts the TCP connection and closes it mid-handshake."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((PEER_CLOSE, MTLS_PORT))
    lsock.listen(1)
    lsock.settimeout(SUBPROCESS_TIMEOUT_S)
    accepted: list[bytes] = []

    def middlebox() -> None:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        with c:
            c.settimeout(2)
            try:
                accepted.append(c.recv(4096))  # the ClientHello, then close: FIN, no alert
            except OSError:
                accepted.append(b"")

    t = threading.Thread(target=middlebox, daemon=True)
    t.start()
    try:
        mark = edge.mark()
        final = _invite_to(PEER_CLOSE)
        ev = _one_failure(edge, mark, PEER_CLOSE)
    finally:
        lsock.close()
        t.join(SUBPROCESS_TIMEOUT_S)
    assert accepted and accepted[0][:1] == b"\x16"  # a TLS handshake record was sent
    assert final.status == 503 and edge.open_conns_from(ev["peer"].rsplit(":", 1)[0]) == 0
    assert ev["direction"] == "outbound" and ev["zone"] == ZONE
    assert ev["cause"] == "peer closed the connection without an alert (middlebox suspected)", ev
    assert ev["peer_names"] == []


# --------------------------------------------------------------------------- no collateral damage


def test_failures_do_not_disturb_other_connections(edge: Edge) -> None:
    """The good mutual-TLS connection opened before every failure still carries an
    OPTIONS for the node, and UDP is answered too. One more inbound failure is
    provoked here so the check holds whatever order the tests run in."""
    mark = edge.mark()
    _s_client("-tls1_2", "-CAfile", str(edge.pki["ca"]))
    assert len(edge.failures_since(mark, INBOUND)) == 1
    # Request-URI without a port: see test_options_for_the_mtls_port_is_for_the_node.
    assert _good_options(edge, f"sip:{NODE}").status == 200
    assert edge.open_conns_from(GOOD) == 1
    udp = _udp_final(_request("OPTIONS", f"sip:{NODE}:5060", "UDP", CALLER, 5060))
    assert udp.status == 200
    # Only the good client ever completed a handshake, and it is still connected.
    ok = [e for e in edge.events_since(0) if e["event"] == "tls handshake"]
    assert [e["peer"].rsplit(":", 1)[0] for e in ok] == [GOOD]


def test_options_for_the_mtls_port_is_for_the_node(edge: Edge) -> None:
    """``OPTIONS sip:127.0.0.51:5062`` on the mutual-TLS connection names the node itself."""
    assert _good_options(edge, f"sip:{NODE}:{MTLS_PORT}").status == 200
