"""The asyncio prober against small misbehaving STUN servers on loopback (127.0.32.44): a UDP
server that drops the first copy of each request (RFC 8489 retransmission), one that answers with
an error response, a TCP server that speaks HTTP instead of STUN, one that never answers, and a
keepalive run against a UDP server that counts what it receives."""

from __future__ import annotations

import asyncio
import time

import pytest
from aioice import stun

from edgeway.probe.choice import choose
from edgeway.probe.client import Node, ProbeConfig, hold_flow, probe_nodes, probe_stream, probe_udp

HOST = "127.0.32.44"
pytestmark = pytest.mark.timeout(60)


def _answer(data: bytes, addr, error: bool = False) -> bytes:
    req = stun.parse_message(data)
    if error:
        return bytes(stun.Message(stun.Method.BINDING, stun.Class.ERROR, req.transaction_id,
                                  {"ERROR-CODE": (420, "Unknown Attribute")}))
    return bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, req.transaction_id,
                              {"XOR-MAPPED-ADDRESS": addr}))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, mode: str) -> None:
        self.mode, self.seen, self.times = mode, {}, []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.times.append(time.monotonic())
        msg = stun.parse_message(data)
        if msg.message_class != stun.Class.REQUEST:
            return
        n = self.seen[msg.transaction_id] = self.seen.get(msg.transaction_id, 0) + 1
        if self.mode == "drop-first" and n == 1:
            return
        self.transport.sendto(_answer(data, addr, error=self.mode == "error"), addr)


async def _udp_server(mode: str):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: _Udp(mode), local_addr=(HOST, 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


def test_udp_retransmission_recovers_a_dropped_request():
    async def run():
        t, proto, port = await _udp_server("drop-first")
        try:
            r = await probe_udp(Node("n", HOST, port, port, 443), ProbeConfig(samples=2, timeout=2.0))
        finally:
            t.close()
        return r, proto

    r, proto = asyncio.run(run())
    assert r.usable and r.lost == 0 and all(s.retransmits == 1 for s in r.samples)
    assert all(v == 2 for v in proto.seen.values())  # the same transaction ID both times (RFC 8489 §6.2.1)
    assert max(r.ok_rtts) < 0.4  # measured from the last copy (sent at 0.5 s), not from the first
    assert r.mapped.startswith("127.")


def test_udp_error_response_is_a_failed_sample():
    async def run():
        t, _, port = await _udp_server("error")
        try:
            return await probe_udp(Node("n", HOST, port, port, 443), ProbeConfig(samples=1, timeout=1.0))
        finally:
            t.close()

    r = asyncio.run(run())
    assert not r.usable and r.error == "error response 420 Unknown Attribute"


async def _tcp_server(handler):
    server = await asyncio.start_server(handler, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


def test_tcp_peer_that_is_not_stun_and_one_that_never_answers():
    async def http(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    async def silent(reader, writer):
        await asyncio.sleep(2)
        writer.close()

    async def run():
        s1, p1 = await _tcp_server(http)
        s2, p2 = await _tcp_server(silent)
        try:
            cfg = ProbeConfig(samples=2, timeout=0.3)
            return (await probe_stream(Node("a", HOST, 1, p1, 1), "tcp", cfg),
                    await probe_stream(Node("b", HOST, 1, p2, 1), "tcp", cfg))
        finally:
            s1.close()
            s2.close()

    t0 = time.monotonic()
    a, b = asyncio.run(run())
    assert "stream does not carry STUN" in a.error and len(a.samples) == 1  # stops on a non-STUN stream
    assert b.error == "no answer in 0.3 s" and len(b.samples) == 2
    assert time.monotonic() - t0 < 3


def test_probe_nodes_runs_transports_at_once_and_bounds_time():
    async def run():
        t, _, port = await _udp_server("ok")
        try:
            # TCP and TLS go to ports where nothing listens, UDP answers
            return await probe_nodes([Node("n", HOST, port, 9, 9)], ProbeConfig(samples=3, timeout=0.5))
        finally:
            t.close()

    t0 = time.monotonic()
    results = asyncio.run(run())
    assert time.monotonic() - t0 < 2.0
    c = choose(results)
    assert c.best.transport == "udp" and {r.transport for r in results} == {"udp", "tcp", "tls", "proxy-tls", "proxy-tcp"}


def test_hold_flow_keepalive_interval_on_udp():
    async def run():
        t, proto, port = await _udp_server("ok")
        try:
            rep = await hold_flow(Node("n", HOST, port, port, 443), "udp", ProbeConfig(timeout=0.2), 0.55, 0.1)
        finally:
            t.close()
        return rep, proto

    rep, proto = asyncio.run(run())
    assert rep.sent == len(proto.times) >= 4 and rep.answered == rep.sent and rep.error is None
    gaps = [b - a for a, b in zip(proto.times, proto.times[1:])]
    assert gaps and max(gaps) < 0.25


def test_cli_exit_1_and_says_so_when_nothing_answers(tmp_path):
    import subprocess
    import sys

    from support.probe_peers import free_port

    port = str(free_port(HOST))
    src = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")
    res = subprocess.run([sys.executable, "-m", "edgeway", "probe", HOST, "--udp-port", port, "--tcp-port", port,
                          "--tls-port", port, "--timeout", "0.3", "--samples", "1", "--cache", str(tmp_path / "c.json")],
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no media node reachable over any transport" in res.stdout
    assert f"{HOST} tcp: failed: tcp connect: connection refused" in res.stdout
