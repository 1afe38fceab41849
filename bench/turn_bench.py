#!/usr/bin/env python3
"""Benchmark: TURN relayed packets per second and server CPU µs per packet
(loopback only; not a test).

Two processes pinned to different CPUs when there are at least 2: the server (one
event loop, uvloop by default, :class:`edgeway.turn.server.TurnServer` + a
:class:`edgeway.turn.allocations.TurnCore` on 127.0.31.1, relay ports 127.0.31.1:
43000-43999) and a load process that, per run, makes ``--allocations`` allocations
over UDP from 127.0.31.7 (long-term credentials, CreatePermission + ChannelBind to a
peer socket on 127.0.31.8), then blasts ``--packets`` datagrams of 172 bytes (a G.711
RTP packet) round robin, either

- ``client->peer``: ChannelData from the clients to the server (relayed to the peers), or
- ``peer->client``: UDP from the peers to the relayed addresses (relayed to the clients
  as ChannelData).

The receiving sockets are not read during the run (as in ``bench/relay_bench.py``: the
server's ``sendto`` still performs the full loopback delivery).  The server samples
its relay counters and ``time.process_time()`` every 10 ms; a run's rate is packets
relayed between the first and last sample with progress over that time, and its CPU
cost the server's CPU over that span per relayed packet.  Compare the µs/packet with
``bench/relay_bench.py``'s "relay CPU us/packet" (issue 10: within 1.5×).  Measured on the
project's 2-core box (uvloop, 20 allocations, medians of 5 runs, same session as
relay_bench's 5.94 µs): client->peer 6.39 µs/packet (153,000 packets/s), peer->client
6.28 µs/packet (156,000 packets/s), i.e. ~1.07× the RTP relay.  The allocations are
deleted (Refresh LIFETIME 0) at the end of each run.

Bounded: each run stops after ``--max-run-s`` s or ``--packets`` datagrams.

    /work/main/.venv/bin/python bench/turn_bench.py [--packets 200000] [--runs 5] [--allocations 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _samples import analyse, run_loop, serve_samples  # noqa: E402

SERVER_IP = "127.0.31.1"
CLIENT_IP = "127.0.31.7"
PEER_IP = "127.0.31.8"
USER, PASSWORD, REALM = "bench", "bench-pw", "edgeway.bench"


def _pin(cpu: int) -> None:
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def server_proc(conn, loop_kind: str) -> None:
    _pin(0)
    from edgeway.media.ports import PortAllocator
    from edgeway.turn.allocations import TurnCore
    from edgeway.turn.server import TurnServer
    from edgeway.turn.stun import Auth

    async def main():
        core = TurnCore(Auth(REALM, {USER: PASSWORD}), max_allocations_per_user=1000, denied_peers=())
        srv = TurnServer(core.binding, core, PortAllocator(SERVER_IP, 43000, 43999))
        addr = await srv.listen_udp(SERVER_IP, 0)
        conn.send(addr)

        def relayed() -> int:
            st = core.stats()
            return st["to_peer_packets"] + st["to_client_packets"]

        await serve_samples(conn, relayed, core.stats)
        await srv.close()

    run_loop(main, loop_kind)


def _request(sock, server, method, attrs, nonce=None, raw=()):
    from aioice import stun as A

    from edgeway.turn import stun as S

    m = A.Message(A.Method(method), A.Class.REQUEST, attributes=dict(attrs))
    if nonce is not None:
        m.attributes.update({"USERNAME": USER, "REALM": REALM, "NONCE": nonce})
    data = bytes(m)
    for t, v in raw:
        data = S.append_attr(data, t, v)
    if nonce is not None:
        data = S.finish(data, S.long_term_key(USER, REALM, PASSWORD))
    sock.sendto(data, server)
    while True:  # skip relayed ChannelData still queued on the client socket
        got = sock.recv(70000)
        if got[0] < 0x40:
            return A.parse_message(got)


def load_proc(server, direction: str, n_alloc: int, packets: int, max_s: float, q) -> None:
    _pin(1)
    clients, peers, relayed, nonces = [], [], [], []
    for i in range(n_alloc):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((CLIENT_IP, 0))
        c.settimeout(2)
        p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        p.bind((PEER_IP, 0))
        r = _request(c, server, 3, {"REQUESTED-TRANSPORT": 17 << 24})
        nonce = r.attributes["NONCE"]
        r = _request(c, server, 3, {"REQUESTED-TRANSPORT": 17 << 24}, nonce)
        relayed.append(r.attributes["XOR-RELAYED-ADDRESS"])
        r = _request(c, server, 9, {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": p.getsockname()}, nonce)
        assert r.message_class.name == "RESPONSE", r
        nonces.append(nonce)
        c.setblocking(False)
        p.setblocking(False)
        clients.append(c)
        peers.append(p)
    payload = b"\x80" + bytes(171)
    chdata = struct.pack("!HH", 0x4000, len(payload)) + payload
    if direction == "client->peer":
        jobs = [(c.sendto, chdata, server) for c in clients]
    else:
        jobs = [(p.sendto, payload, tuple(ra)) for p, ra in zip(peers, relayed)]
    q.put("ready")
    sent = 0
    end = time.monotonic() + max_s
    k = len(jobs)
    for i in range(packets):
        send, data, dest = jobs[i % k]
        try:
            send(data, dest)
            sent += 1
        except BlockingIOError:
            pass
        if i & 1023 == 0 and time.monotonic() > end:
            break
    time.sleep(0.3)
    q.put(sent)
    for c, nonce in zip(clients, nonces):  # RFC 8656 §8: LIFETIME 0 deletes the allocation
        for _ in range(100_000):  # drain what was relayed (a full buffer would drop the answer)
            try:
                c.recv(70000)
            except BlockingIOError:
                break
        c.setblocking(True)
        c.settimeout(2)
        _request(c, server, 4, {"LIFETIME": 0}, nonce)
    for s in clients + peers:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--allocations", type=int, default=20)
    ap.add_argument("--direction", choices=["client->peer", "peer->client", "both"], default="both")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--max-run-s", type=float, default=4.0)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    srv = ctx.Process(target=server_proc, args=(child, args.loop))
    srv.start()
    directions = ["client->peer", "peer->client"] if args.direction == "both" else [args.direction]
    try:
        server = parent.recv()
        for direction in directions:
            rates, cpus = [], []
            for run in range(args.runs):
                q = ctx.Queue()
                ld = ctx.Process(target=load_proc, args=(server, direction, args.allocations, args.packets,
                                                         args.max_run_s, q))
                ld.start()
                assert q.get(timeout=20) == "ready"
                parent.send("reset")
                parent.recv()
                sent = q.get(timeout=args.max_run_s + 10)
                ld.join(5)
                if ld.is_alive():
                    ld.kill()
                parent.send("report")
                samples, stats = parent.recv()
                n, rate, cpu = analyse(samples)
                rates.append(rate)
                cpus.append(cpu)
                print(f"{direction} run {run + 1}: offered {sent}, relayed {n}: {rate:,.0f} packets/s, "
                      f"server CPU {cpu:.2f} us/packet (allocations open {stats['allocations']})")
            print(f"median {direction} ({args.loop}): {statistics.median(rates):,.0f} packets/s, "
                  f"{statistics.median(cpus):.2f} us CPU/packet")
    finally:
        parent.send("stop")
        srv.join(5)
        if srv.is_alive():
            srv.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
