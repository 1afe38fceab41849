#!/usr/bin/env python3
"""Benchmark of the Edgeway RTP relay hot path (loopback only; not a test).

Layout (three processes, pinned to different CPUs when there are at least 2):

* relay process: one event loop (uvloop by default) running a
  :class:`edgeway.media.MediaRelay` with ``--sessions`` sessions, side A on
  127.0.0.101 and side B on 127.0.0.102;
* sender process: blasts ``--packets`` datagrams of 172 bytes (a G.711 20 ms
  RTP packet: 12-byte RTP header + 160 bytes of payload) round-robin over the
  sessions' A-side RTP ports, from 127.0.0.103, as fast as it can (or paced at
  ``--rate`` packets/s);
* this process: controls the runs and polls the relay's counters.  The B-side
  sinks (127.0.0.104) are not read during timed runs (the relay's ``sendto``
  still performs the full loopback delivery); a short sanity phase checks that
  paced packets are actually delivered.

For each of ``--runs`` runs it reports the relay throughput (packets forwarded
per second of wall time, from the start of the blast to the last forwarded
packet) and the relay process's CPU time per forwarded packet
(``time.process_time()`` delta / packets forwarded), then the median and the
min/max.  With an unpaced sender the relay is saturated, so throughput is its
capacity on one core, and packets it could not take are dropped by the kernel
at its sockets ("offered" vs "forwarded").

``--path`` (default ``both``) measures the per-call path (``percall``: side A of
each session on a port pair of its own, one ``add_reader`` per socket) and the
multiplexed path (``mux``: side A of every session on one shared RTP/RTCP pair,
as the edge's leg toward the core with ``media.traversal_mux``, seed 002 §7.2;
one reader, one dict lookup per datagram by source address, the sender using one
source port per session as the core does), one after the other with the same
arguments, and ends with one line comparing their median CPU µs/packet.  Measured
on the project's 2-core box (uvloop, 20 sessions): unpaced 5.70 (per-call) vs
5.73 (mux) µs/packet; paced at 100,000 packets/s 7.05 vs 6.28 (the shared socket
has more datagrams per wake-up).  The other direction (toward the core) is the
per-call reader sending out of the mux socket: the same cost as per-call.

With ``--srtp`` one side of every session uses SRTP (SDES-style fixed key,
``--srtp-suite``): ``--srtp protect`` (the default for a bare ``--srtp``) puts
it on side B, so the relay protects every packet (plain RTP in, SRTP out);
``--srtp unprotect`` puts it on side A, so the sender sends SRTP and the relay
unprotects (SRTP in, plain RTP out).  SRTP needs a new sequence number per
packet (libsrtp's replay protection), so in SRTP mode the sender numbers the
packets per session (distinct SSRCs) and builds, and for ``unprotect``
protects, each run's packets before the run starts (outside the timing).

First (``--lifecycle yes``, the default; ``only`` skips the packet runs), a
child process measures the cost of session set-up on its own loop: the median
call-path time of one ``open_session`` + ``close`` and of one
``allocate_pair`` + ``release`` (what a SIP transaction waits for), the
process CPU per operation with the loop running between operations (the "all
included" cost: pool refills, deferred handle closes), and ``allocate_pair`` +
``release`` outside any loop (bind on demand).  Medians over
``--lifecycle-runs`` runs of ``--lifecycle-ops`` operations.

Bounded: each run stops after ``--max-run-s`` seconds and the whole benchmark
after ``--budget-s`` seconds (default 20).

    .venv/bin/python bench/relay_bench.py [--sessions 20] [--packets 200000] [--runs 5]
    .venv/bin/python bench/relay_bench.py --srtp [protect|unprotect]
    .venv/bin/python bench/relay_bench.py --lifecycle only
    .venv/bin/python bench/relay_bench.py --path mux --srtp unprotect

``--budget-s`` bounds each path's runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from edgeway.media import MediaRelay, MuxPair, PortAllocator  # noqa: E402

RELAY_A, RELAY_B, SENDER_IP, SINK_IP = "127.0.0.101", "127.0.0.102", "127.0.0.103", "127.0.0.104"
PACKET_SIZE = 172  # G.711 20 ms: 12-byte RTP header + 160 samples
SRTP_KEY = bytes(range(30))  # master key || salt shared by the relay and the sender
SRTP_TAG = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4}


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


# ---------------------------------------------------------------------------- relay process


def relay_main(conn, n_sessions: int, loop_kind: str, cpu: int | None,
               srtp: str | None = None, suite: str = "", path: str = "percall") -> None:
    _pin(cpu)
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    relay = MediaRelay(loop, inactivity_timeout_s=600.0)
    b_alloc = PortAllocator(RELAY_B, 36000, 59999)
    if path == "mux":  # side A on one shared pair: the edge's traversal leg (seed 002 §7.2)
        mux = MuxPair(RELAY_A, 36000)
        sessions = [relay.open_session(None, b_alloc, a_mux=mux, label=f"bench-{i}") for i in range(n_sessions)]
    else:
        a_alloc = PortAllocator(RELAY_A, 36000, 59999)
        sessions = [
            relay.open_session(a_alloc, b_alloc, label=f"bench-{i}") for i in range(n_sessions)
        ]
    if srtp is not None:
        from edgeway.media.srtp import SrtpContext

        for s in sessions:
            if srtp == "protect":  # B is the SRTP side: protect what goes to B
                s.set_crypto("b", inbound=None,
                             outbound=SrtpContext(suite, SRTP_KEY, "outbound"))
            else:  # A is the SRTP side: unprotect what comes from A
                s.set_crypto("a", inbound=SrtpContext(suite, SRTP_KEY, "inbound"),
                             outbound=None)
    conn.send([tuple(s.local("a")) for s in sessions])
    sinks, sources = conn.recv()  # [(ip, rtp_port, rtcp_port)] per session; the sender's ports (mux)
    for s, (ip, rtp, rtcp) in zip(sessions, sinks):
        s.set_remote("b", ip, rtp, rtcp)
    for s, port in zip(sessions, sources or ()):
        s.set_remote("a", SENDER_IP, port)  # the demux key: the sender socket of this session
    done = loop.create_future()

    def on_cmd() -> None:
        try:
            cmd = conn.recv()
        except EOFError:
            cmd = "quit"
        if cmd == "snap":
            st = relay.stats()
            conn.send((time.monotonic(), time.process_time(), st["packets"], st["dropped"]))
        elif cmd == "quit":
            loop.remove_reader(conn.fileno())
            if not done.done():
                done.set_result(None)

    loop.add_reader(conn.fileno(), on_cmd)
    conn.send("ready")
    loop.run_until_complete(done)
    relay.close()
    loop.close()
    conn.send("bye")


# ------------------------------------------------------------------- session lifecycle cost


async def _spin(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _lifecycle(n_ops: int, runs: int) -> dict:
    """Median cost of ``open_session`` + ``close`` and of ``allocate_pair`` +
    ``release`` on the running loop.

    ``*_path_us``: wall time of the call itself (median per operation, µs): what
    a SIP transaction waits for.  ``*_cpu_us``: process CPU time per operation
    over a whole run, including whatever the loop runs between operations
    (e.g. refilling a warm pool), minus the same loop without the operations
    (µs per operation, median over runs): the "all included" cost.
    """
    loop = asyncio.get_running_loop()
    relay = MediaRelay(loop, inactivity_timeout_s=600.0)
    a_alloc = PortAllocator(RELAY_A, 36000, 59999)
    b_alloc = PortAllocator(RELAY_B, 36000, 59999)
    ns = time.perf_counter_ns
    out: dict[str, list[float]] = {k: [] for k in (
        "session_path_us", "session_cpu_us", "alloc_path_us", "alloc_cpu_us", "bind_path_us")}

    def one_session() -> None:
        relay.open_session(a_alloc, b_alloc, label="bench").close()

    def one_alloc() -> None:
        a_alloc.release(a_alloc.allocate_pair())

    async def timed(op, path_key: str, cpu_key: str | None) -> None:
        samples = []
        cpu0 = time.process_time()
        for _ in range(n_ops):
            t0 = ns()
            op()
            samples.append(ns() - t0)
            await asyncio.sleep(0)  # the loop runs between calls, as in a node
        await _spin(200)  # let deferred work (pool refill) finish inside the window
        cpu = time.process_time() - cpu0
        out[path_key].append(statistics.median(samples) / 1e3)
        if cpu_key is not None:
            cpu0 = time.process_time()
            await _spin(n_ops + 200)
            idle = time.process_time() - cpu0
            out[cpu_key].append(max(cpu - idle, 0.0) / n_ops * 1e6)

    for _ in range(100):  # warm-up: caches, pools
        one_session()
        one_alloc()
        await asyncio.sleep(0)
    await _spin(200)
    for _ in range(runs):
        await timed(one_session, "session_path_us", "session_cpu_us")
        await timed(one_alloc, "alloc_path_us", "alloc_cpu_us")
    relay.close()
    # Bind on demand: an allocator used outside any event loop.
    raw = PortAllocator(RELAY_B, 36000, 59999)
    for _ in range(runs):
        samples = []
        for _ in range(n_ops):
            t0 = ns()
            raw.release(raw.allocate_pair())
            samples.append(ns() - t0)
        out["bind_path_us"].append(statistics.median(samples) / 1e3)
    for alloc in (a_alloc, b_alloc, raw):
        close = getattr(alloc, "close", None)
        if close is not None:
            close()
    return {k: statistics.median(v) for k, v in out.items()} | {"runs": out}


def lifecycle_main(conn, loop_kind: str, cpu: int | None, n_ops: int, runs: int) -> None:
    _pin(cpu)
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        conn.send(loop.run_until_complete(_lifecycle(n_ops, runs)))
    finally:
        loop.close()


# --------------------------------------------------------------------------- sender process


class _Numbered:
    """SRTP mode: RTP packets numbered per session (and protected for --srtp
    unprotect), built ahead of each run."""

    def __init__(self, n_sessions: int, srtp: str, suite: str) -> None:
        self.seq = [0] * n_sessions
        self.payload = bytes(PACKET_SIZE - 12)
        self.ctx = None
        if srtp == "unprotect":
            from edgeway.media.srtp import SrtpContext

            self.ctx = SrtpContext(suite, SRTP_KEY, "outbound")

    def build(self, count: int) -> list[bytes]:
        n = len(self.seq)
        seq = self.seq
        out = []
        protect = self.ctx.protect_rtp if self.ctx is not None else None
        for i in range(count):
            k = i % n
            q = seq[k]
            seq[k] = q + 1
            pkt = struct.pack("!BBHII", 0x80, 0, q & 0xFFFF, (q * 160) & 0xFFFFFFFF, 0x1000 + k)
            pkt += self.payload
            out.append(protect(pkt) if protect is not None else pkt)
        return out


def sender_main(conn, targets, n_packets: int, rate: float, max_s: float, cpu: int | None,
                srtp: str | None = None, suite: str = "", bound=None) -> None:
    _pin(cpu)
    socks = []
    for i, (ip, port, _) in enumerate(targets):
        if bound is not None:  # made (and bound) by the controller: the relay knows their ports
            s = bound[i]
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((SENDER_IP, 0))
        s.connect((ip, port))
        s.setblocking(False)
        socks.append(s)
    sends = [s.send for s in socks]
    n = len(sends)
    payload = bytes([0x80, 0x00]) + bytes(PACKET_SIZE - 2)
    numbered = _Numbered(n, srtp, suite) if srtp is not None else None
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd == "quit":
            break
        count = n_packets if cmd == "go" else int(cmd[1])
        pace = rate if cmd == "go" else float(cmd[2])
        pkts = numbered.build(count) if numbered is not None else None
        t0 = time.monotonic()
        deadline = t0 + max_s
        sent = errors = 0
        if pace <= 0 and pkts is not None:
            i = 0
            while i < count:
                chunk = min(count, i + 4096)
                while i < chunk:
                    try:
                        sends[i % n](pkts[i])
                        sent += 1
                    except OSError:
                        errors += 1
                    i += 1
                if time.monotonic() > deadline:
                    break
        elif pace <= 0:
            i = 0
            while i < count:
                chunk = min(count, i + 4096)
                while i < chunk:
                    try:
                        sends[i % n](payload)
                        sent += 1
                    except OSError:  # full buffer / ICMP refusal
                        errors += 1
                    i += 1
                if time.monotonic() > deadline:
                    break
        else:
            tick = 0.001
            per_tick = pace * tick
            budget = 0.0
            i = 0
            next_t = t0
            while i < count and next_t < deadline:
                budget += per_tick
                while budget >= 1.0 and i < count:
                    try:
                        sends[i % n](payload if pkts is None else pkts[i])
                        sent += 1
                    except OSError:
                        errors += 1
                    i += 1
                    budget -= 1.0
                next_t += tick
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        conn.send((t0, time.monotonic(), sent, errors))
    for s in socks:
        s.close()


# ------------------------------------------------------------------------------ controller


def snap(conn):
    conn.send("snap")
    return conn.recv()


def one_run(relay_conn, sender_conn, cmd, max_run_s: float, poll_s: float) -> dict:
    t_mono0, cpu0, fwd0, drop0 = snap(relay_conn)
    sender_conn.send(cmd)
    sender_done = None
    last = snap(relay_conn)
    last_change_prev_t = last[0]  # poll time just before the value last changed
    stable = 0
    deadline = time.monotonic() + max_run_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        if sender_done is None and sender_conn.poll():
            sender_done = sender_conn.recv()
        cur = snap(relay_conn)
        if cur[2] != last[2]:
            last_change_prev_t = last[0]
            last = cur
            stable = 0
        else:
            stable += 1
            if sender_done is not None and stable * poll_s >= 0.05:
                break
    if sender_done is None:
        sender_done = sender_conn.recv()
    t_start, t_sent_end, sent, send_errors = sender_done
    # The last forwarded packet happened between the two polls around the change.
    t_end = (last_change_prev_t + last[0]) / 2
    fwd = last[2] - fwd0
    cpu = last[1] - cpu0
    wall = max(t_end - t_start, 1e-9)
    return {
        "offered": sent,
        "sender_pps": sent / max(t_sent_end - t_start, 1e-9),
        "forwarded": fwd,
        "dropped_in_relay": last[3] - drop0,
        "kernel_drops": sent - fwd - (last[3] - drop0),
        "wall_s": wall,
        "pps": fwd / wall,
        "cpu_us_per_pkt": (cpu / fwd * 1e6) if fwd else float("nan"),
        "relay_cpu_s": cpu,
    }


def sanity_check(relay_conn, sender_conn, sinks, n_sessions: int, size: int = PACKET_SIZE) -> int:
    """Send a few paced packets per session; count what reaches the sinks."""
    for s in sinks:
        while True:
            try:
                s.recv(2048)
            except BlockingIOError:
                break
    count = 10 * n_sessions
    sender_conn.send(("paced", count, 2000.0))
    sender_conn.recv()
    time.sleep(0.1)
    got = 0
    for s in sinks:
        while True:
            try:
                if len(s.recv(2048)) == size:
                    got += 1
            except BlockingIOError:
                break
    return got


def summarize(name: str, values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{name:>22}: median {med:{fmt}}  min {min(values):{fmt}}  max {max(values):{fmt}}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--path", choices=["percall", "mux", "both"], default="both",
                    help="per-call port pairs on side A, one shared mux pair (the edge's traversal leg), or both")
    ap.add_argument("--packets", type=int, default=200_000, help="packets per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="pace the sender at this many packets/s (0 = as fast as possible)")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--max-run-s", type=float, default=3.0)
    ap.add_argument("--budget-s", type=float, default=20.0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--srtp", nargs="?", const="protect", choices=["protect", "unprotect"],
                    help="SRTP on one side: 'protect' (B is SRTP; default) or 'unprotect' (A is SRTP)")
    ap.add_argument("--srtp-suite", choices=sorted(SRTP_TAG), default="AES_CM_128_HMAC_SHA1_80")
    ap.add_argument("--lifecycle-ops", type=int, default=2000,
                    help="session open+close (and allocate+release) operations per lifecycle run")
    ap.add_argument("--lifecycle-runs", type=int, default=5)
    ap.add_argument("--lifecycle", choices=["yes", "no", "only"], default="yes",
                    help="measure the session lifecycle cost first ('only': skip the packet runs)")
    args = ap.parse_args()
    t_begin = time.monotonic()

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and ncpu >= 2
    relay_cpu = cpus[0] if pin else None
    other_cpu = cpus[1] if pin else None

    ctx = mp.get_context("fork")
    life = None
    if args.lifecycle != "no":
        life_conn, life_child = ctx.Pipe()
        life_proc = ctx.Process(
            target=lifecycle_main,
            args=(life_child, args.loop, relay_cpu, args.lifecycle_ops, args.lifecycle_runs),
            daemon=True,
        )
        life_proc.start()
        if life_conn.poll(args.budget_s):
            life = life_conn.recv()
        life_proc.join(5)
        if life_proc.is_alive():
            life_proc.terminate()
            life_proc.join(1)
        if life is not None and not args.json:
            print(f"lifecycle ({args.lifecycle_runs} x {args.lifecycle_ops} ops, loop={args.loop}): "
                  f"session open+close median {life['session_path_us']:.1f} us on the call path, "
                  f"{life['session_cpu_us']:.1f} us CPU all included; "
                  f"allocate_pair+release {life['alloc_path_us']:.1f} us on the call path, "
                  f"{life['alloc_cpu_us']:.1f} us CPU all included; "
                  f"bind on demand (no loop) {life['bind_path_us']:.1f} us")
        if args.lifecycle == "only":
            if args.json:
                print(json.dumps({"args": vars(args), "lifecycle": life}, indent=2))
            return 0 if life is not None else 1
    paths = ["percall", "mux"] if args.path == "both" else [args.path]
    measured = {}
    for path in paths:
        measured[path] = measure(path, args, ctx, relay_cpu, other_cpu, time.monotonic())
    ok = all(d == e for d, e, _ in measured.values())
    if args.json:
        print(json.dumps({"args": vars(args), "lifecycle": life,
                          "paths": {p: {"sanity_delivered": d, "sanity_expected": e, "runs": r}
                                    for p, (d, e, r) in measured.items()}}, indent=2))
        return 0
    mode = f"paced at {args.rate:.0f} pkt/s" if args.rate > 0 else "unpaced (relay saturated)"
    if args.srtp == "protect":
        mode += f", SRTP {args.srtp_suite} on side B (relay protects)"
    elif args.srtp == "unprotect":
        mode += f", SRTP {args.srtp_suite} on side A (relay unprotects)"
    print(f"edgeway relay bench: {args.sessions} sessions, {args.packets} x {PACKET_SIZE}-byte "
          f"packets/run, {mode}, loop={args.loop}, pinned={pin}, python {sys.version.split()[0]}")
    for path, (delivered, expected, results) in measured.items():
        print(f"-- path {path}: {PATH_DOC[path]}")
        print(f"sanity: {delivered}/{expected} paced packets delivered end to end")
        print(f"{'run':>3} {'offered':>8} {'sender pps':>11} {'forwarded':>9} {'krn drop':>8} "
              f"{'wall s':>7} {'relay pps':>10} {'cpu us/pkt':>10}")
        for i, r in enumerate(results, 1):
            print(f"{i:>3} {r['offered']:>8} {r['sender_pps']:>11.0f} {r['forwarded']:>9} "
                  f"{r['kernel_drops']:>8} {r['wall_s']:>7.3f} {r['pps']:>10.0f} "
                  f"{r['cpu_us_per_pkt']:>10.2f}")
        if results:
            print(summarize("relay packets/s", [r["pps"] for r in results], ",.0f"))
            print(summarize("relay CPU us/packet", [r["cpu_us_per_pkt"] for r in results], ".2f"))
    if len(measured) > 1 and all(r for _, _, r in measured.values()):
        line = ", ".join(f"{p} {statistics.median(x['cpu_us_per_pkt'] for x in r):.2f}"
                         for p, (_, _, r) in measured.items())
        print(f"relay CPU us/packet, median of runs: {line}")
    print(f"total time {time.monotonic() - t_begin:.1f} s")
    return 0 if ok else 1


PATH_DOC = {
    "percall": "side A on a port pair of its own per session (add_reader per socket)",
    "mux": "side A of every session on one shared mux pair (the edge's traversal leg; "
           "one reader, one dict lookup per packet by source address)",
}


def measure(path: str, args, ctx, relay_cpu, other_cpu, t_begin: float) -> tuple[int, int, list[dict]]:
    """One relay + sender pair for ``path``: sanity phase then ``args.runs`` runs
    (bounded by ``args.budget_s`` from ``t_begin``); returns (delivered, expected, runs)."""
    sinks = []
    for _ in range(args.sessions):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((SINK_IP, 0))
        s.setblocking(False)
        sinks.append(s)
    sink_addrs = [(SINK_IP, s.getsockname()[1], s.getsockname()[1] + 1) for s in sinks]

    relay_conn, relay_child = ctx.Pipe()
    relay_proc = ctx.Process(
        target=relay_main,
        args=(relay_child, args.sessions, args.loop, relay_cpu, args.srtp, args.srtp_suite, path),
        daemon=True,
    )
    relay_proc.start()
    targets = relay_conn.recv()
    bound = None
    if path == "mux":  # the relay must know each session's source port (its demux key)
        bound = []
        for _ in range(args.sessions):
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b.bind((SENDER_IP, 0))
            bound.append(b)
    relay_conn.send((sink_addrs, [b.getsockname()[1] for b in bound] if bound else None))
    assert relay_conn.recv() == "ready"

    sender_conn, sender_child = ctx.Pipe()
    sender_proc = ctx.Process(
        target=sender_main,
        args=(sender_child, targets, args.packets, args.rate, args.max_run_s, other_cpu,
              args.srtp, args.srtp_suite, bound),
        daemon=True,
    )
    sender_proc.start()
    assert sender_conn.recv() == "ready"
    _pin(other_cpu)

    results = []
    try:
        out_size = PACKET_SIZE + (SRTP_TAG[args.srtp_suite] if args.srtp == "protect" else 0)
        delivered = sanity_check(relay_conn, sender_conn, sinks, args.sessions, out_size)
        expected = 10 * args.sessions
        for r in range(args.runs):
            if time.monotonic() - t_begin > args.budget_s - args.max_run_s - 1:
                print(f"# budget reached, stopping after {r} runs", file=sys.stderr)
                break
            # Each poll costs the relay ~tens of us: poll rarely when the load is light.
            poll_s = 0.01 if args.rate <= 0 else 0.1
            results.append(one_run(relay_conn, sender_conn, "go", args.max_run_s, poll_s))
            time.sleep(0.05)
    finally:
        sender_conn.send("quit")
        relay_conn.send("quit")
        sender_proc.join(5)
        relay_proc.join(5)
        for p in (sender_proc, relay_proc):
            if p.is_alive():
                p.terminate()
                p.join(1)
        for s in sinks:
            s.close()
        for b in bound or ():
            b.close()
    return delivered, expected, results



if __name__ == "__main__":
    sys.exit(main())
