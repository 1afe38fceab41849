"""MRA HTTPS proxy (issue 9 items 1-2): the sans-IO tunnel machines, then an in-process
edge + core pair on 127.0.24.x with an internal web service behind the core and Debian curl
as the remote client.

Addresses (this module only): edge 127.0.24.2 (HTTPS 18443, tunnel 12222, traversal 17001),
core 127.0.24.3, internal service 127.0.24.4:18080, a second deployment's internal service
127.0.24.5:18080.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgeway.config import parse_config
from edgeway.diag.events import EventLog
from edgeway.mra.edge_config import answer_edge_config, decode_domain
from edgeway.mra.gate import Gate
from edgeway.mra.tunnel import (
    Authenticated, AuthFailed, CoreTunnel, DataReceived, EdgeTunnel, RequestReceived, ResponseReceived,
    StreamEnded, StreamReset, STREAM_WINDOW,
)
from edgeway.node import Node
from edgeway.security.pki import write_lab_pki

EDGE_IP, CORE_IP, INTERNAL_IP, STAGING_IP = "127.0.24.2", "127.0.24.3", "127.0.24.4", "127.0.24.5"
HTTPS_PORT, TUNNEL_PORT, TRAVERSAL_PORT, INTERNAL_PORT = 18443, 12222, 17001, 18080
DOMAIN = "corp.mra.test"
EDGE_FQDN = f"edge.{DOMAIN}"
B64 = base64.b64encode(DOMAIN.encode()).decode()


# ---- sans-IO -----------------------------------------------------------------------------------

def _pair(password: str = "pw") -> tuple[EdgeTunnel, CoreTunnel, list, list]:
    edge, core = EdgeTunnel({"core": "pw"}, "core", "nonce-1"), CoreTunnel("core", password)
    edge.initiate()
    core.initiate()
    return edge, core, *_pump(edge, core)


def _pump(edge: EdgeTunnel, core: CoreTunnel) -> tuple[list, list]:
    """Carry bytes both ways until quiet; (events at the edge, events at the core)."""
    at_edge, at_core = [], []
    while True:
        a, b = edge.data_to_send(), core.data_to_send()
        if not a and not b:
            return at_edge, at_core
        if a:
            at_core += core.receive_data(a)
        if b:
            at_edge += edge.receive_data(b)


def test_tunnel_authenticates_the_core_before_any_request() -> None:
    edge, core, at_edge, at_core = _pair()
    assert at_edge == [Authenticated("core")] and at_core == []  # the check is answered inside CoreTunnel
    assert edge.can_start()
    edge2, _core2, at_edge2, _ = _pair(password="wrong")
    assert [type(e) for e in at_edge2] == [AuthFailed] and not edge2.can_start()
    with pytest.raises(RuntimeError):
        edge2.start_request("GET", "/x", "edge", [], end=True)


def test_tunnel_request_response_and_flow_control() -> None:
    """A 600 KiB request body crosses only as far as the core acknowledges it (one stream
    window buffered at most); the response streams back on the same stream."""
    edge, core, _, _ = _pair()
    sid = edge.start_request("POST", f"/{B64}/http/h/80/p", "edge", [("content-type", "x/y")], end=False)
    edge.send_data(sid, b"a" * (600 * 1024), end=True)
    _, at_core = _pump(edge, core)
    assert isinstance(at_core[0], RequestReceived) and at_core[0].method == "POST" and not at_core[0].ended
    assert ("content-type", "x/y") in at_core[0].headers
    got = sum(len(e.data) for e in at_core if isinstance(e, DataReceived))
    assert got <= STREAM_WINDOW and edge.pending(sid) == 600 * 1024 - got
    total = got
    while edge.pending(sid) or not any(isinstance(e, (StreamEnded,)) or (isinstance(e, DataReceived) and e.ended) for e in at_core):
        core.ack(sid, got)
        _, at_core = _pump(edge, core)
        got = sum(len(e.data) for e in at_core if isinstance(e, DataReceived))
        total += got
    assert total == 600 * 1024
    core.send_response(sid, 201, [("x-a", "1")])
    core.send_data(sid, b"done", end=True)
    at_edge, _ = _pump(edge, core)
    assert at_edge[0] == ResponseReceived(sid, 201, [("x-a", "1")], False)
    assert at_edge[1] == DataReceived(sid, b"done", True)


def test_tunnel_reset_reaches_the_other_side() -> None:
    edge, core, _, _ = _pair()
    sid = edge.start_request("GET", "/x", "edge", [], end=True)
    _pump(edge, core)
    edge.reset(sid)
    _, at_core = _pump(edge, core)
    assert [type(e) for e in at_core] == [StreamReset]


def test_edge_config_document_and_domains() -> None:
    mra = parse_config(_core_cfg(Path("/nonexistent"), {"ca": "c", "cert": "c", "key": "k"})).mra
    status, headers, body = answer_edge_config(mra, EDGE_FQDN, "GET",
                                               f"/{B64}/get_edge_config?service_name=_cisco-uds&service_name=_cuplogin")
    assert status == 200 and ("content-type", "application/xml; charset=utf-8") in headers
    text = body.decode()
    for piece in ("<getEdgeConfigResponse", "<name>_cisco-uds</name>", f"<address>{INTERNAL_IP}</address>",
                  "<port>8443</port>", "<name>_cuplogin</name>", f"<sipEdgeServer><server><address>{EDGE_FQDN}</address><tlsPort>5061</tlsPort>",
                  f"<httpEdgeServer><server><address>{EDGE_FQDN}</address><tlsPort>8443</tlsPort>",
                  "<turnEdgeServer><server><address>turn.corp.mra.test</address><udpPort>3478</udpPort>"):
        assert piece in text, piece
    other = base64.b64encode(b"elsewhere.test").decode()
    assert answer_edge_config(mra, EDGE_FQDN, "GET", f"/{other}/get_edge_config")[0] == 404
    assert answer_edge_config(mra, EDGE_FQDN, "GET", "/!!!/get_edge_config")[0] == 404
    assert answer_edge_config(mra, EDGE_FQDN, "POST", f"/{B64}/get_edge_config")[0] == 405
    assert decode_domain(base64.urlsafe_b64encode(b"Corp.MRA.test").decode().rstrip("=")) == DOMAIN


STAGING = "staging.mra.test"
B64_STAGING = base64.b64encode(STAGING.encode()).decode()


def _two_deployments(**extra: Any) -> dict[str, Any]:
    """``[mra]`` overrides: DOMAIN in the Default deployment with the internal service as its
    UDS server, STAGING in "Staging" with its own UDS servers (issue 9 item 7)."""
    return {"deployments": ["Staging"],
            "domains": [DOMAIN, {"name": STAGING, "deployment": "Staging"}],
            "uds_servers": [INTERNAL_IP, {"address": "ucm1.staging.test:9443", "deployment": "Staging"},
                            {"address": "ucm2.staging.test", "deployment": "Staging"}], **extra}


def _uds_addresses(body: bytes) -> list[tuple[str, str]]:
    from xml.etree import ElementTree as ET

    root = ET.fromstring(body)
    [uds] = [s for s in root.iter("service") if s.findtext("name") == "_cisco-uds"]
    return [(srv.findtext("address"), srv.findtext("port")) for srv in uds.iter("server")]


def test_edge_config_lists_only_the_deployment_s_uds_servers() -> None:
    """Seed 002 §3: the clients of a domain see their deployment's services; the edge's own
    addresses and TURN are the same for every deployment."""
    mra = parse_config(_core_cfg(Path("/nonexistent"), {"ca": "c", "cert": "c", "key": "k"}, **_two_deployments())).mra
    st, _, default = answer_edge_config(mra, EDGE_FQDN, "GET", f"/{B64}/get_edge_config?service_name=_cisco-uds")
    assert st == 200 and _uds_addresses(default) == [(INTERNAL_IP, "8443")]
    st, _, staging = answer_edge_config(mra, EDGE_FQDN, "GET", f"/{B64_STAGING}/get_edge_config")
    assert st == 200 and _uds_addresses(staging) == [("ucm1.staging.test", "9443"), ("ucm2.staging.test", "8443")]
    for body in (default, staging):
        text = body.decode()
        assert f"<sipEdgeServer><server><address>{EDGE_FQDN}</address><tlsPort>5061</tlsPort>" in text
        assert "<turnEdgeServer><server><address>turn.corp.mra.test</address>" in text
    # the domain is compared case-insensitively, a trailing dot ignored; others are 404
    upper = base64.urlsafe_b64encode(b"STAGING.mra.test.").decode().rstrip("=")
    assert answer_edge_config(mra, EDGE_FQDN, "GET", f"/{upper}/get_edge_config")[2] == staging
    other = base64.b64encode(b"elsewhere.test").decode()
    assert answer_edge_config(mra, EDGE_FQDN, "GET", f"/{other}/get_edge_config")[0] == 404
    # a deployment without UDS servers lists none (not another deployment's)
    bare = parse_config(_core_cfg(Path("/nonexistent"), {"ca": "c", "cert": "c", "key": "k"},
                                  **_two_deployments(uds_servers=[INTERNAL_IP]))).mra
    assert _uds_addresses(answer_edge_config(bare, EDGE_FQDN, "GET", f"/{B64_STAGING}/get_edge_config")[2]) == []


# ---- the pair ----------------------------------------------------------------------------------

class FakeAllowList:
    """Test-only stand-in for edgeway.mra.allowlist.AllowList: allows GET/POST on
    http://127.0.24.4:18080 under /allowed/ and /slow, nothing else."""

    @dataclass
    class Decision:
        allowed: bool
        status: int
        reason: str
        rule: str | None
        url: str | None

    def check(self, method: str, target: str, deployment: str = "Default deployment") -> "FakeAllowList.Decision":
        base = f"http://{INTERNAL_IP}:{INTERNAL_PORT}/"
        ok = target.startswith(base + "allowed/") or target.startswith(base + "slow")
        return self.Decision(ok and method in ("GET", "POST"), 200 if ok else 403, "fake", "fake" if ok else None, target)


@dataclass
class _Target:
    url: str


def fake_parse(raw_path: str) -> _Target:
    """Test-only decoder: ``/<b64>/<scheme>/<host>/<port>/<rest>`` → absolute URL (no normalisation)."""
    parts = raw_path.split("/", 5)
    if len(parts) < 5 or parts[2] not in ("http", "https"):
        raise ValueError("bad proxied path")
    return _Target(f"{parts[2]}://{parts[3]}:{parts[4]}/{parts[5] if len(parts) > 5 else ''}")


def _common(role: str, ip: str, certs: dict, tmp: Path) -> dict[str, Any]:
    return {"role": role, "name": role,
            "sip": {"listen_ip": ip, "udp_port": 0, "tcp_port": 0, "tls_port": 0, "domains": [DOMAIN]},
            "tls": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"]), "ca_file": str(certs["ca"])},
            "media": {"port_min": 41000, "port_max": 41999},
            "log": {"file": str(tmp / f"{role}.jsonl"), "max_events_per_s": 0}}


def _edge_cfg(tmp: Path, certs: dict, **mra: Any) -> dict[str, Any]:
    d = _common("edge", EDGE_IP, certs, tmp)
    d["credentials"] = [{"username": "core", "password": "tunnel-secret"}]
    d["zones"] = [{"type": "traversal_server", "name": "Traversal", "port": TRAVERSAL_PORT, "username": "core",
                   "tls_verify_subject_name": f"core.{DOMAIN}", "keepalive_interval_s": 1.0,
                   "probe_retry_count": 2, "probe_retry_interval_s": 0.5}]
    d["mra"] = {"enabled": True, "domains": [DOMAIN], "https_port": HTTPS_PORT, "tunnel_port": TUNNEL_PORT,
                "https_listen_ips": [EDGE_IP, "::1"], "request_timeout_s": 2.0, "max_request_bytes": 1 << 20,
                "max_response_bytes": 1 << 20, **mra}
    # These tests provoke many refusals from one client on purpose: intrusion protection
    # would ban it (tests/test_mra_lab.py checks that ban through the lab).
    d["intrusion_protection"] = {"enabled": False}
    return d


def _core_cfg(tmp: Path, certs: dict, **mra: Any) -> dict[str, Any]:
    d = _common("core", CORE_IP, certs, tmp)
    d["zones"] = [{"type": "traversal_client", "name": "Traversal", "peers": [f"{EDGE_IP}:{TRAVERSAL_PORT}"],
                   "username": "core", "password": "tunnel-secret", "keepalive_interval_s": 1.0,
                   "probe_retry_count": 2, "probe_retry_interval_s": 0.5, "retry_interval_s": 0.3}]
    d["mra"] = {"enabled": True, "domains": [DOMAIN], "tunnel_port": TUNNEL_PORT, "edge_hostname": EDGE_FQDN,
                "request_timeout_s": 5.0, "uds_servers": [INTERNAL_IP],
                "turn_servers": [{"host": f"turn.{DOMAIN}"}], **mra}
    return d


async def _internal_service() -> web.AppRunner:
    async def allowed(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=f"internal {request.method} {request.path_qs} {len(body)}")

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b"z" * 65536)  # 2.5 MiB, no Content-Length: cut at the edge's limit
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)  # over the edge's 2 s request timeout
        return web.Response(text="late")

    async def uds_user(request: web.Request) -> web.Response:
        return web.Response(status=401, text="unknown user")  # as call control: it knows nobody

    app = web.Application()
    app.router.add_route("*", "/allowed/big", big)
    app.router.add_route("*", "/allowed/{tail:.*}", allowed)
    app.router.add_get("/slow", slow)
    app.router.add_get("/secret", allowed)
    app.router.add_get("/cucm-uds/user/{user}", uds_user)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, INTERNAL_IP, INTERNAL_PORT).start()
    return runner


class Pair:
    """An edge and a core in this process. ``core_mra``: overrides of the core's ``[mra]``;
    ``real_gate``: the core decides with the allow list of its configuration (default: the
    :class:`FakeAllowList`, for tests about the tunnel rather than the rules)."""

    def __init__(self, tmp: Path, core_mra: dict[str, Any] | None = None, real_gate: bool = False):
        self.tmp = tmp
        self.real_gate = real_gate
        certs = write_lab_pki(tmp / "pki", {
            "edge": {"common_name": EDGE_FQDN, "ip_sans": [EDGE_IP, "::1"]},
            "core": {"common_name": f"core.{DOMAIN}", "ip_sans": [CORE_IP]}})
        self.ca = certs["edge"]["ca"]
        self.edge_cfg = parse_config(_edge_cfg(tmp, certs["edge"]))
        self.core_cfg = parse_config(_core_cfg(tmp, certs["core"], **(core_mra or {})))
        self.edge: Node | None = None
        self.core: Node | None = None
        self.connects: list[tuple[Any, Any, Any]] = []

    async def start_core(self) -> None:
        from edgeway.mra.core import CoreMra

        core = Node(self.core_cfg, EventLog("core", str(self.tmp / "core.jsonl")))
        if self.real_gate:
            await core.start()
            self.core = core
            return
        orig = CoreMra.__init__

        def init(obj, cfg, events, client_ssl, gate=None):
            orig(obj, cfg, events, client_ssl, Gate(FakeAllowList(), fake_parse))

        CoreMra.__init__ = init  # a fake allow list: these tests are about the tunnel, not the rules
        try:
            await core.start()
        finally:
            CoreMra.__init__ = orig
        self.core = core

    async def wait_tunnel(self, up: bool = True, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if (self.edge.mra.status()["state"] == "active") == up:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"tunnel not {'up' if up else 'down'}: {self.edge.mra.status()}")

    def events(self, node: str) -> list[dict]:
        running = self.edge if node == "edge" else self.core
        if running is not None:
            running.events.flush()  # lines reach the file within FLUSH_INTERVAL_S otherwise
        return [json.loads(line) for line in (self.tmp / f"{node}.jsonl").read_text().splitlines()]


@contextlib.asynccontextmanager
async def running_pair(tmp: Path, core_mra: dict[str, Any] | None = None, real_gate: bool = False):
    pair = Pair(tmp, core_mra, real_gate)
    loop = asyncio.get_running_loop()
    orig_cc = loop.create_connection

    async def create_connection(factory, host=None, port=None, **kw):
        sock = kw.get("sock")  # aiohttp connects the socket itself (happy eyeballs), then hands it over
        if sock is not None:
            pair.connects.append((*sock.getpeername()[:2], sock.getsockname()[:2]))
        else:
            pair.connects.append((host, port, kw.get("local_addr")))
        return await orig_cc(factory, host, port, **kw)

    loop.create_connection = create_connection  # type: ignore[method-assign]
    internal = await _internal_service()
    pair.edge = Node(pair.edge_cfg, EventLog("edge", str(tmp / "edge.jsonl")))
    await pair.edge.start()
    await pair.start_core()
    try:
        await pair.wait_tunnel()
        yield pair
    finally:
        if pair.core is not None:
            await pair.core.close()
        await pair.edge.close()
        await internal.cleanup()
        loop.create_connection = orig_cc  # type: ignore[method-assign]


async def curl(pair: Pair, path: str, *args: str, host: str = EDGE_IP) -> tuple[int, str, str]:
    """curl https://edge.<domain>:18443<path> (resolved to ``host``); (status, reason, body).
    Every answer the edge gives names no software but its own (``Server: Edgeway``)."""
    url = f"https://{EDGE_FQDN}:{HTTPS_PORT}{path}"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "--cacert", str(pair.ca), "--resolve", f"{EDGE_FQDN}:{HTTPS_PORT}:{host}",
        "--tlsv1.2", "-i", *args, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    text = out.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    if not head:
        return 0, err.decode(), ""
    status_line = head.split("\r\n")[0].split(" ", 2)
    servers = [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")[1:] if ln.lower().startswith("server:")]
    assert servers == ["Edgeway"], head
    return int(status_line[1]), status_line[2] if len(status_line) > 2 else "", body


pytestmark_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl (Debian) not installed")


@pytestmark_curl
def test_edge_https_through_core_initiated_tunnel(tmp_path: Path) -> None:
    """curl → edge:18443 → tunnel (opened by the core) → core → internal service, and the
    edge's own answers: 404 unknown domain, 403 blocked, 413/502 limits, 504 slow, 502 down."""

    async def scenario() -> None:
        async with running_pair(tmp_path) as pair:
            st, _, body = await curl(pair, f"/{B64}/get_edge_config?service_name=_cisco-uds&service_name=_cuplogin")
            assert st == 200 and "<getEdgeConfigResponse" in body and f"<address>{EDGE_FQDN}</address>" in body, body
            st, _, body = await curl(pair, f"/{B64}/get_edge_config?service_name=_cisco-uds", host="::1")
            assert st == 200 and "<name>_cisco-uds</name>" in body  # IPv6 listener
            other = base64.b64encode(b"unknown.test").decode()
            assert (await curl(pair, f"/{other}/get_edge_config"))[0] == 404

            st, _, body = await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/allowed/user?x=1")
            assert (st, body) == (200, "internal GET /allowed/user?x=1 0"), body
            st, _, body = await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/allowed/up", "--data-binary", "@-",
                                     "-H", "Content-Type: application/octet-stream")
            assert st == 200
            st, _, _ = await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/secret")
            assert st == 403
            # keep-alive: two requests on one connection
            st, _, body = await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/allowed/a", "--next", "-i",
                                     "--cacert", str(pair.ca), f"https://{EDGE_FQDN}:{HTTPS_PORT}/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/allowed/b")
            assert st == 200 and "internal GET /allowed/b 0" in body
            big = tmp_path / "big.bin"
            big.write_bytes(b"q" * (2 << 20))
            assert (await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/allowed/up", "--data-binary", f"@{big}"))[0] == 413
            st, _, _ = await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/allowed/up", "-H", "Transfer-Encoding: chunked",
                                  "--data-binary", f"@{big}")
            assert st == 413  # counted while streaming (no Content-Length)
            st, _, _ = await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/allowed/big")
            assert st in (0, 200)  # head relayed, body cut at max_response_bytes (curl reports the cut)
            st, _, _ = await curl(pair, f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/slow")
            assert st == 504

            await pair.core.close()
            pair.core = None
            await pair.wait_tunnel(up=False)
            st, reason, _ = await curl(pair, f"/{B64}/get_edge_config")
            assert (st, reason) == (502, "Next Hop Connection Failed")

            await pair.start_core()  # the core comes back: the tunnel is re-established by the core
            await pair.wait_tunnel()
            assert (await curl(pair, f"/{B64}/get_edge_config"))[0] == 200

            # The edge never opens a connection: every outbound connection of this process
            # (tunnel and internal service alike) was opened bound to the core's address.
            assert pair.connects and all(local and local[0] == CORE_IP for _, _, local in pair.connects), pair.connects
            assert {(h, p) for h, p, _ in pair.connects} <= {(EDGE_IP, TUNNEL_PORT), (EDGE_IP, TRAVERSAL_PORT),
                                                               (INTERNAL_IP, INTERNAL_PORT)}
            edge_events = pair.events("edge")
            assert any(e["event"] == "mra tunnel connected" for e in edge_events)
            assert any(e["event"] == "mra request failed" and e.get("status") == 502 for e in edge_events)

    asyncio.run(scenario())


@pytestmark_curl
def test_edge_refuses_a_tunnel_from_a_certificate_without_the_subject_name(tmp_path: Path) -> None:
    """The edge checks the core's certificate like the traversal zone: CA + subject name."""

    async def scenario() -> None:
        pair = Pair(tmp_path)
        pair.core_cfg = pair.core_cfg.model_copy(update={"tls": pair.core_cfg.tls.model_copy(update={
            "cert_file": pair.edge_cfg.tls.cert_file, "key_file": pair.edge_cfg.tls.key_file})})
        pair.edge = Node(pair.edge_cfg, EventLog("edge", str(tmp_path / "edge.jsonl")))
        await pair.edge.start()
        await pair.start_core()
        try:
            await asyncio.sleep(1.0)
            assert pair.edge.mra.status()["state"] == "down"
            assert (await curl(pair, f"/{B64}/get_edge_config"))[:2] == (502, "Next Hop Connection Failed")
        finally:
            await pair.core.close()
            await pair.edge.close()
        failures = [e for e in pair.events("edge") if e["event"] == "tls handshake failed" and e.get("listener") == "mra tunnel"]
        assert failures and "subject name" in failures[0]["cause"]

    asyncio.run(scenario())


# ---- deployments through the core's handler (issue 9 item 7; seed 002 §3) -----------------------

async def _uds_service(ip: str, name: str, users: dict[str, str]) -> web.AppRunner:
    """An internal service at ``ip``:INTERNAL_PORT answering ``internal <name> <method> <path>``;
    ``/cucm-uds/user/<user>`` is 200 only with the Basic credentials of one of ``users``."""

    async def uds_user(request: web.Request) -> web.Response:
        user = request.match_info["user"]
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(f"{user}:{users.get(user)}".encode()).decode():
            return web.Response(status=401, text="unauthorized")
        return web.Response(text=f"internal {name} user {user}")

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text=f"internal {name} {request.method} {request.path}")

    app = web.Application()
    app.router.add_get("/cucm-uds/user/{user}", uds_user)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, ip, INTERNAL_PORT).start()
    return runner


def _deployments_mra() -> dict[str, Any]:
    """Core ``[mra]``: DOMAIN (plain string: the Default deployment) reaches 127.0.24.4 by an
    editable rule, STAGING ("Staging") reaches 127.0.24.5, a call-control server of Staging
    whose automatic rules and UDS belong to Staging."""
    return {"deployments": ["Staging"],
            "domains": [DOMAIN, {"name": STAGING, "deployment": "Staging"}],
            "uds_servers": [f"{INTERNAL_IP}:{INTERNAL_PORT}",
                            {"address": f"{STAGING_IP}:{INTERNAL_PORT}", "deployment": "Staging"}],
            "internal_servers": [
                {"type": "call_control", "host": INTERNAL_IP, "ports": [INTERNAL_PORT], "scheme": "http"},
                {"type": "call_control", "host": STAGING_IP, "ports": [INTERNAL_PORT], "scheme": "http",
                 "deployment": "Staging"}],
            "allow_rules": [
                {"url": f"http://{INTERNAL_IP}:{INTERNAL_PORT}/allowed/", "methods": ["GET", "POST"]},
                {"url": f"http://{STAGING_IP}:{INTERNAL_PORT}/allowed/", "methods": ["GET", "POST"],
                 "deployment": "Staging"}]}


@pytestmark_curl
def test_core_answers_each_request_for_the_deployment_of_its_domain(tmp_path: Path) -> None:
    """curl → edge → tunnel → core with the real allow list: a rule (editable or automatic)
    of one deployment never allows a request that arrives for a domain of the other (403);
    get_edge_config lists the domain's deployment's UDS server; credentials are checked by
    the deployment's call control and its tokens are unknown in the other; an unknown domain
    is 404."""

    def path(b64: str, ip: str, rest: str) -> str:
        return f"/{b64}/http/{ip}/{INTERNAL_PORT}/{rest}"

    async def scenario() -> None:
        staging = await _uds_service(STAGING_IP, "staging", {"sam": "staging-pw"})
        try:
            async with running_pair(tmp_path, _deployments_mra(), real_gate=True) as pair:
                st, _, body = await curl(pair, f"/{B64}/get_edge_config?service_name=_cisco-uds")
                assert st == 200 and _uds_addresses(body.encode()) == [(INTERNAL_IP, str(INTERNAL_PORT))], body
                st, _, body = await curl(pair, f"/{B64_STAGING}/get_edge_config?service_name=_cisco-uds")
                assert st == 200 and _uds_addresses(body.encode()) == [(STAGING_IP, str(INTERNAL_PORT))], body

                # editable rules: each domain reaches its own deployment's service only
                st, _, body = await curl(pair, path(B64, INTERNAL_IP, "allowed/a"))
                assert (st, body) == (200, "internal GET /allowed/a 0"), body
                st, _, body = await curl(pair, path(B64_STAGING, STAGING_IP, "allowed/a"))
                assert (st, body) == (200, "internal staging GET /allowed/a"), body
                assert (await curl(pair, path(B64_STAGING, INTERNAL_IP, "allowed/a")))[0] == 403
                assert (await curl(pair, path(B64, STAGING_IP, "allowed/a")))[0] == 403
                # automatic rules of Staging's call-control server belong to Staging
                st, _, body = await curl(pair, path(B64_STAGING, STAGING_IP, "cucm-uds/version"))
                assert (st, body) == (200, "internal staging GET /cucm-uds/version"), body
                assert (await curl(pair, path(B64, STAGING_IP, "cucm-uds/version")))[0] == 403
                # a domain no deployment serves
                nowhere = base64.b64encode(b"nowhere.test").decode()
                assert (await curl(pair, path(nowhere, INTERNAL_IP, "allowed/a")))[0] == 404

                # credentials: checked by the deployment's call control, tokens per deployment
                hdrs = tmp_path / "headers.txt"
                st, _, body = await curl(pair, path(B64_STAGING, STAGING_IP, "cucm-uds/user/sam"),
                                         "-u", "sam:staging-pw", "-D", str(hdrs))
                assert (st, body) == (200, "internal staging user sam"), body
                [token] = [ln.split(":", 1)[1].strip() for ln in hdrs.read_text().splitlines()
                           if ln.lower().startswith("x-edgeway-access-token:")]
                st, _, body = await curl(pair, path(B64_STAGING, STAGING_IP, "allowed/t"),
                                         "-H", f"Authorization: Bearer {token}")
                assert (st, body) == (200, "internal staging GET /allowed/t"), body
                bearer = ("-H", f"Authorization: Bearer {token}")
                assert (await curl(pair, path(B64, INTERNAL_IP, "allowed/t"), *bearer))[0] == 401
                # the default deployment's call control (127.0.24.4) does not know sam
                assert (await curl(pair, path(B64, INTERNAL_IP, "allowed/t"), "-u", "sam:staging-pw"))[0] == 401

                blocked = [e for e in pair.events("core") if e["event"] == "mra request blocked"]
                assert {(e["status"], e.get("deployment")) for e in blocked} == {
                    (403, "Staging"), (403, "Default deployment"), (404, None)}, blocked
        finally:
            await staging.cleanup()

    asyncio.run(scenario())
