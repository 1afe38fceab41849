"""Run inside a fresh network namespace (``unshare -n``): start a node, feed it every
RFC 4475 message over UDP and TCP, print what came back as JSON on stdout.

Used by tests/test_node_torture.py; the messages name outside addresses, so the node
must not be able to reach anything but loopback.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tomllib
from pathlib import Path

from edgeway.config import parse_config
from edgeway.diag.events import EventLog
from edgeway.node import Node

NODE_IP, CLIENT_IP = "127.0.0.2", "127.0.0.9"


def first_lines(data: bytes, call_id: str) -> list[str]:
    """Status lines of the responses in ``data`` that belong to ``call_id`` (INVITE
    final responses are retransmitted until ACKed and may arrive late)."""
    out = []
    for chunk in data.split(b"SIP/2.0 ")[1:]:
        text = chunk.decode(errors="replace")
        if f"Call-ID: {call_id}\r\n" in text or f"i: {call_id}\r\n" in text:
            out.append("SIP/2.0 " + text.split("\r\n", 1)[0])
    return out


def call_id_of(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"call-id", b"i"):
            return value.strip().decode(errors="replace")
    return ""


async def udp_exchange(payload: bytes, wait: float = 0.2) -> list[str]:
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((CLIENT_IP, 5060))  # the torture Vias have no rport: answers go to port 5060
    s.setblocking(False)
    s.sendto(payload, (NODE_IP, 5060))
    got = b""
    end = loop.time() + wait
    while loop.time() < end:
        try:
            got += s.recv(65535)
        except BlockingIOError:
            await asyncio.sleep(0.01)
    s.close()
    return first_lines(got, call_id_of(payload))


async def tcp_exchange(payload: bytes, wait: float = 0.2) -> tuple[list[str], bool]:
    r, w = await asyncio.open_connection(NODE_IP, 5060, local_addr=(CLIENT_IP, 0))
    w.write(payload)
    await w.drain()
    got = b""
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(r.read(65535), wait)
            if not chunk:
                closed = True
                break
            got += chunk
    except asyncio.TimeoutError:
        pass
    w.close()
    return first_lines(got, call_id_of(payload)), closed


async def main(rfc4475: Path) -> None:
    cfg = parse_config({"role": "edge", "name": "torture", "sip": {"listen_ip": NODE_IP, "tls_port": 0},
                        # Several torture messages share a branch; a 2 ms T1 ends each
                        # server transaction (64*T1) before the next message is sent.
                        "timers": {"t1_ms": 2, "t2_ms": 4},
                        "log": {"file": None}})
    manifest = tomllib.loads((rfc4475 / "MANIFEST.toml").read_text())["message"]
    results: dict = {m["name"]: {} for m in manifest}
    # One node per transport: the same message over UDP then TCP would otherwise match
    # the first one's server transaction (same branch) and count as a retransmission.
    for transport in ("udp", "tcp"):
        node = Node(cfg, EventLog("torture", stream=sys.stderr, sip_messages=False))
        await node.start()
        for m in manifest:
            data = (rfc4475 / m["file"]).read_bytes()
            if transport == "udp":
                results[m["name"]]["udp"] = await udp_exchange(data)
            else:
                lines, closed = await tcp_exchange(data)
                results[m["name"]].update(tcp=lines, tcp_closed=closed)
        probe = (
            f"OPTIONS sip:127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/{transport.upper()} 127.0.0.9:5060;branch=z9hG4bKalive\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.9>;tag=1\r\nTo: <sip:127.0.0.2>\r\nCall-ID: alive@x\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        if transport == "udp":
            results["_alive_udp"] = await udp_exchange(probe)
        else:
            results["_alive_tcp"] = (await tcp_exchange(probe))[0]
        await node.close()
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
