"""The traversal pair as separate processes: zone state, keepalive budget, 503 while the
core is away, recovery without restarting the edge, and refused traversal clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from pathlib import Path


from typer.testing import CliRunner

from edgeway.cli.main import app
from edgeway.config import load_config
from edgeway.config.models import ControlConfig, IntrusionCategory
from edgeway.diag.events import EventLog
from edgeway.lab.dns_server import LabDnsServer
from edgeway.lab.runner import Lab
from edgeway.lab.topology import LabTopology
from edgeway.lab.ua import LabUserAgent
from edgeway.node import Node
from edgeway.sip.message import parse_message

#: keepalive 2 s + 2 probes × 1 s (the lab's settings) plus scheduling slack.
KEEPALIVE_BUDGET_S = 2 + 2 * 1 + 2


def _options_to_edge(uri: str) -> str:
    """Send an OPTIONS for ``uri`` to the edge over UDP and return the raw response text."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.5", 0))
    s.settimeout(5)
    port = s.getsockname()[1]
    msg = (
        f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.5:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@partner.edgeway.test>;tag=1\r\nTo: <{uri}>\r\n"
        f"Call-ID: {secrets.token_hex(6)}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    s.sendto(msg.encode(), ("127.0.0.2", 5060))
    try:
        while True:
            data = s.recv(65535)
            if not data.startswith(b"SIP/2.0 100"):
                return data.decode()
    finally:
        s.close()


def test_core_killed_and_restarted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Lab(tmp_path / "lab") as lab:
            await lab.wait_traversal(20)
            edge_pid = lab.pids["edge"]
            alice = LabUserAgent("alice", "127.0.0.4", 5060, transport="tcp", domain="corp.edgeway.test")
            bob = LabUserAgent("bob", "127.0.0.5", 5060, transport="udp", domain="partner.edgeway.test")
            await alice.start()
            await bob.start()
            try:
                first = await bob.call("sip:alice@corp.edgeway.test", proxy=("127.0.0.2", 5060, "udp"), from_user="bob", media_seconds=0.5)
                assert first.ok and first.rtp_received > 0, first

                t_kill = time.time()
                await lab.kill_core()
                waited = await lab.wait_zone_state("edge", "disconnected", KEEPALIVE_BUDGET_S, since=t_kill - 1)
                assert waited <= KEEPALIVE_BUDGET_S

                refused = await bob.call("sip:alice@corp.edgeway.test", proxy=("127.0.0.2", 5060, "udp"), from_user="bob", media_seconds=0.2)
                assert refused.status == 503, refused
                raw = await asyncio.to_thread(_options_to_edge, "sip:alice@corp.edgeway.test")
                resp = parse_message(raw.encode())
                assert resp.status == 503
                assert "TraversalZone" in (resp.headers.get("Warning") or ""), resp.headers.get("Warning")

                t_restart = time.time()
                await lab.start_core()
                await lab.wait_traversal(20, since=t_restart)
                again = await bob.call("sip:alice@corp.edgeway.test", proxy=("127.0.0.2", 5060, "udp"), from_user="bob", media_seconds=0.5)
                assert again.ok and again.rtp_received > 0, again
                out = await alice.call("sip:bob@partner.edgeway.test", proxy=("127.0.0.3", 5060, "tcp"), from_user="alice", media_seconds=0.5)
                assert out.ok and out.rtp_received > 0, out
                assert lab.pids["edge"] == edge_pid and lab.procs["edge"].poll() is None  # no edge restart
            finally:
                await alice.close()
                await bob.close()
            # The edge never opened a connection toward the core.
            edge_events = lab.events("edge")
            assert not [e for e in edge_events if e.get("event") == "connect failed" and "127.0.0.3" in e.get("peer", "")]
            assert any(e.get("event") == "traversal disconnected" for e in edge_events)

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def _running_pair(tmp_path: Path, core_change, edge_change=None):
    """An in-process lab DNS, edge and core (events to ``e.jsonl`` / ``c.jsonl`` in
    ``tmp_path``); each config is updated with ``*_change(edge_cfg, core_cfg) -> dict``.
    Yields ``(edge, core, topology)``; everything is closed on exit."""
    topo = LabTopology(retry_interval_s=30)
    files = topo.build(tmp_path)
    edge_cfg = load_config(files.config("edge"))
    core_cfg = load_config(files.config("core"))
    if edge_change is not None:
        edge_cfg = edge_cfg.model_copy(update=edge_change(edge_cfg, core_cfg))
    core_cfg = core_cfg.model_copy(update=core_change(edge_cfg, core_cfg))
    dns = LabDnsServer(topo.dns_records(), host=topo.dns_ip, port=topo.dns_port)
    await dns.start()
    edge = Node(edge_cfg, EventLog("edge", str(tmp_path / "e.jsonl")))
    core = Node(core_cfg, EventLog("core", str(tmp_path / "c.jsonl")))
    try:
        await edge.start()
        await core.start()
        yield edge, core, topo
    finally:
        await core.close()
        await edge.close()
        await dns.close()


def _edge_events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]


async def _pair_with(tmp_path: Path, change) -> tuple[list[dict], str]:
    """Start an in-process edge, and a core whose config is updated with
    ``change(edge_cfg, core_cfg) -> dict``; return the edge's events and the zone state."""
    async with _running_pair(tmp_path, change) as (edge, core, _topo):
        await asyncio.sleep(1.0)
        state = core.traversal.status()["Traversal Zone"]["state"]
        edge_state = edge.traversal.status()["Traversal Zone"]["state"]
    assert edge_state == state
    return _edge_events(tmp_path), state


def test_wrong_password_is_refused(tmp_path: Path) -> None:
    def change(edge_cfg, core_cfg):
        zones = [z.model_copy(update={"password": "not-the-password"}) if z.type == "traversal_client" else z for z in core_cfg.zones]
        return {"zones": zones}

    events, state = asyncio.run(_pair_with(tmp_path, change))
    assert state == "down"
    assert any(e["event"] == "traversal authentication failed" for e in events)


def test_certificate_without_subject_name_is_refused(tmp_path: Path) -> None:
    """The edge requires the zone's TLS verify subject name as CN or DNS SAN of the core's
    certificate; the edge's own certificate (CN edge.corp.edgeway.test) does not carry it."""

    def change(edge_cfg, core_cfg):
        return {"tls": core_cfg.tls.model_copy(update={"cert_file": edge_cfg.tls.cert_file, "key_file": edge_cfg.tls.key_file})}

    events, state = asyncio.run(_pair_with(tmp_path, change))
    assert state == "down"
    failures = [e for e in events if e["event"] == "tls handshake failed"]
    assert failures and "subject name" in failures[0]["cause"] and "core.corp.edgeway.test" in failures[0]["cause"]


def test_repeated_traversal_auth_failures_ban_the_address(tmp_path: Path) -> None:
    """Intrusion protection (issue 9 item 8, seed 002 §10.9): a traversal client failing
    the credential check more than the trigger level (2 here) is banned; its next
    connections are reset at accept, before TLS; unblocking lets it in again."""

    def edge_change(edge_cfg, core_cfg):
        return {"intrusion_protection": edge_cfg.intrusion_protection.model_copy(
                    update={"categories": {"traversal_authentication_failure": IntrusionCategory(trigger_level=2, ban_s=30)}}),
                "control": ControlConfig(socket=str(tmp_path / "edge.ctl"))}

    def core_change(edge_cfg, core_cfg):
        return {"zones": [z.model_copy(update={"password": "not-the-password", "retry_interval_s": 0.05})
                          if z.type == "traversal_client" else z for z in core_cfg.zones]}

    async def scenario():
        async with _running_pair(tmp_path, core_change, edge_change) as (edge, _core, topo):
            await asyncio.sleep(2.0)
            blocked = edge.intrusion.blocked_list(asyncio.get_running_loop().time())
            refused = edge.tl.stats["refused_blocked"]
            # The operator's view, through the node's control socket (blocking CLI: a thread).
            ctl = ["--socket", str(tmp_path / "edge.ctl")]
            listed = await asyncio.to_thread(CliRunner().invoke, app, ["blocked", "list", *ctl])
            unblock = await asyncio.to_thread(CliRunner().invoke, app, ["blocked", "unblock", topo.core_ip, *ctl])
            again = await asyncio.to_thread(CliRunner().invoke, app, ["blocked", "unblock", topo.core_ip, *ctl])
            unblocked = (listed.exit_code, listed.output, unblock.exit_code, again.exit_code)
        return _edge_events(tmp_path), blocked, refused, unblocked

    events, blocked, refused, unblocked = asyncio.run(scenario())
    failures = [e for e in events if e["event"] == "traversal authentication failed"]
    bans = [e for e in events if e["event"] == "source blocked"]
    assert len(bans) == 1 and bans[0]["category"] == "traversal_authentication_failure"
    # The third failure is over the trigger level of 2 (after the unblock the core fails again).
    assert len([e for e in failures if e["ts"] <= bans[0]["ts"]]) == 3, failures
    assert [b["address"] for b in blocked] == ["127.0.0.3"]
    assert refused >= 1  # later connects were reset at accept
    listed_rc, listed_out, unblock_rc, again_rc = unblocked
    assert listed_rc == 0 and "127.0.0.3" in listed_out and "traversal_authentication_failure" in listed_out, listed_out
    assert (unblock_rc, again_rc) == (0, 1)
