#!/usr/bin/env python3
"""Connection flood against a SIP stream listener (issue 7 item 1; loopback only; not a test).

Holds ``--count`` (default 25,000) TCP connections to HOST:PORT from many loopback
source addresses (``--source-net``, ``--per-source`` connections each) and reports what
the node did with them:

* ``refused``: reset within ``REFUSED_WITHIN_S`` of the connect (admission caps reset at
  accept, before any TLS);
* ``closed``: ended by the node later (pre-message idle timeout, TLS handshake timeout,
  flow idle timeout), with how long they lived;
* ``open``: still held at the end; ``connect_failed`` / ``connect_timeout``: the
  connect itself did not complete (a full accept backlog retries SYNs for seconds).

``--mode idle`` sends nothing; ``--mode slowloris`` trickles one byte of a never-ending
SIP request on every connection every ``--interval-s`` seconds (spread over the
interval). A TLS port can be flooded too: the raw connections never speak TLS.

While the flood is held (right after the connect phase, and again at the end), a TLS
client (``--tls HOST:PORT``, from ``--client-source``, outside the flood's sources)
connects, shakes hands and sends OPTIONS: the report says whether it got a SIP answer
and how long that took. That is the question of the findings: with the descriptors
full, new TLS clients timed out.

Bounded: at most MAX_COUNT connections, ``--hold-s`` seconds of hold (default 30, past
the 15 s pre-message timeout), everything within ``--budget-s`` (default 120). The
connections are spread over worker processes, each raising its descriptor limit to the
hard limit and holding at most that many less 256 (``--procs`` to override).

Against a running lab (started elsewhere; this script never starts one)::

    .venv/bin/python bench/conn_flood.py 127.0.0.2:5060 --tls 127.0.0.2:5061
    .venv/bin/python bench/conn_flood.py 127.0.0.2:5061 --tls 127.0.0.2:5061 --mode slowloris

``--self-test`` first starts an in-process TransportLayer (its own process) with a TCP
listener on PORT and a TLS listener on PORT+1 (throwaway PKI; OPTIONS answered 200)
on HOST, with the ``--st-*`` limits, floods it, and prints its admission counters::

    .venv/bin/python bench/conn_flood.py 127.0.22.1:23000 --self-test --count 3000 \\
        --source-net 127.0.22.64/26 --hold-s 6 --st-pre-message-s 3 --st-handshake-s 2
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import multiprocessing as mp
import os
import resource
import signal
import socket
import ssl
import statistics
import sys
import time
from pathlib import Path

MAX_COUNT = 60_000
#: A reset this soon after the connect is a refusal at accept (the node resets at once).
REFUSED_WITHIN_S = 1.0
#: Connects in flight per worker at most.
CONNECT_CONCURRENCY = 512
CONNECT_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 5.0
TRICKLE = (b"OPTIONS sip:flood@invalid SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKflood\r\n"
           b"X-Slow: " + b"a" * 4096)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: want HOST:PORT")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r}: want an IP address") from None
    if not ip.is_loopback:
        raise argparse.ArgumentTypeError(f"{host}: loopback addresses only")
    return host, int(port)


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


# ---------------------------------------------------------------------------- flood worker


def worker_main(idx: int, target: tuple[str, int], sources: list[str], per_source: int, first: int, count: int,
                mode: str, interval_s: float, events, report_q) -> None:
    """Open connections ``first`` .. ``first + count - 1`` of the flood, report
    "connected", hold them until ``events['stop']`` is set, then report the outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _raise_nofile()
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    rep = loop.run_until_complete(_flood(loop, idx, target, sources, per_source, first, count, mode, interval_s,
                                         events, report_q))
    report_q.put(("done", idx, rep))


async def _flood(loop, idx, target, sources, per_source, first, count, mode, interval_s, events, report_q) -> dict:
    open_: dict[int, tuple[socket.socket, float]] = {}
    rep = {"attempted": count, "connected": 0, "refused": 0, "closed": 0, "lifetimes": [], "connect_failed": {},
           "connect_timeout": 0, "bytes_from_node": 0}
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    pos: dict[int, int] = {}

    def ended(fd: int, reset: bool) -> None:
        s, t = open_.pop(fd)
        loop.remove_reader(fd)
        life = time.monotonic() - t
        if reset and life < REFUSED_WITHIN_S:
            rep["refused"] += 1
        else:
            rep["closed"] += 1
            rep["lifetimes"].append(round(life, 3))
        s.close()

    def readable(fd: int) -> None:
        s = open_[fd][0]
        try:
            data = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            ended(fd, True)
            return
        except OSError:
            ended(fd, False)
            return
        if not data:
            ended(fd, False)
        else:
            rep["bytes_from_node"] += len(data)

    async def one(i: int) -> None:
        src = sources[(first + i) // per_source]
        async with sem:
            s = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.bind((src, 0))
                await asyncio.wait_for(loop.sock_connect(s, target), CONNECT_TIMEOUT_S)
            except ConnectionResetError:
                rep["refused"] += 1
                s.close()
                return
            except asyncio.TimeoutError:
                rep["connect_timeout"] += 1
                s.close()
                return
            except OSError as exc:
                name = type(exc).__name__ if not exc.errno else os.strerror(exc.errno)
                rep["connect_failed"][name] = rep["connect_failed"].get(name, 0) + 1
                s.close()
                return
        rep["connected"] += 1
        fd = s.fileno()
        open_[fd] = (s, time.monotonic())
        pos[fd] = 0
        loop.add_reader(fd, readable, fd)

    await asyncio.gather(*(one(i) for i in range(count)))
    report_q.put(("connected", idx, {"connected": rep["connected"], "refused_so_far": rep["refused"]}))

    tick = 0.1
    slices = max(1, round(interval_s / tick))
    n = 0
    while not events["stop"].is_set():
        await asyncio.sleep(tick)
        if mode != "slowloris":
            continue
        n += 1
        for fd, (s, _) in list(open_.items()):
            if fd % slices != n % slices:
                continue
            p = pos[fd] % len(TRICKLE)
            try:
                s.send(TRICKLE[p:p + 1])
                pos[fd] = p + 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass  # the reader sees the end
    await asyncio.sleep(0.2)  # let closes in flight land
    rep["open"] = len(open_)
    for fd, (s, _) in list(open_.items()):
        loop.remove_reader(fd)
        s.close()
    return rep


# ---------------------------------------------------------------------------- TLS client check


def tls_check(target: tuple[str, int], source: str, ca: str | None) -> dict:
    """One TLS client: connect, handshake, OPTIONS, wait for a status line."""
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if not ca:
        ctx.verify_mode = ssl.CERT_NONE
    out: dict = {"source": source}
    t0 = time.monotonic()
    try:
        raw = socket.create_connection(target, timeout=CLIENT_TIMEOUT_S, source_address=(source, 0))
    except OSError as exc:
        return {**out, "ok": False, "stage": "connect", "error": str(exc), "after_s": round(time.monotonic() - t0, 3)}
    with raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=target[0]) as s:
                out["handshake_s"] = round(time.monotonic() - t0, 3)
                port = s.getsockname()[1]
                s.sendall((
                    f"OPTIONS sip:{target[0]}:{target[1]};transport=tls SIP/2.0\r\n"
                    f"Via: SIP/2.0/TLS {source}:{port};branch=z9hG4bKfloodcheck{int(t0 * 1000)}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:check@{source}>;tag=fc\r\nTo: <sip:{target[0]}>\r\n"
                    f"Call-ID: floodcheck{int(t0 * 1000)}@{source}\r\nCSeq: 1 OPTIONS\r\n"
                    f"Contact: <sip:check@{source}:{port};transport=tls>\r\nContent-Length: 0\r\n\r\n").encode())
                buf = b""
                while b"\r\n" not in buf:
                    data = s.recv(4096)
                    if not data:
                        raise ConnectionError("closed by the node before an answer")
                    buf += data
                line = buf.split(b"\r\n", 1)[0].decode(errors="replace")
                out.update(ok=line.startswith("SIP/2.0 "), status=line, answered_s=round(time.monotonic() - t0, 3))
                return out
        except (OSError, ssl.SSLError) as exc:
            stage = "answer" if "handshake_s" in out else "handshake"
            return {**out, "ok": False, "stage": stage, "error": str(exc) or type(exc).__name__,
                    "after_s": round(time.monotonic() - t0, 3)}


# ---------------------------------------------------------------------------- self-test server


def server_main(host: str, port: int, args, status_conn, ready) -> None:
    """A TransportLayer on host:port (TCP) and host:port+1 (TLS) answering OPTIONS 200;
    sends its admission counters on ``status_conn`` when asked, stops on "stop"."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from edgeway.security import pki, tls
    from edgeway.sip.message import Request, make_response
    from edgeway.transport.admission import ConnectionLimits, plan_fds, raise_fd_limit
    from edgeway.transport.layer import TransportLayer

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, soft, _ = raise_fd_limit()
    tmp = tempfile.mkdtemp(prefix="conn-flood-pki-")
    p = pki.write_lab_pki(tmp, {"node": {"common_name": "flood.edgeway.test", "ip_sans": [host]}})["node"]
    limits = ConnectionLimits(
        max_connections=args.st_max_connections or plan_fds(soft, 24_000).max_connections,
        max_connections_per_source=args.st_per_source, tls_handshake_timeout_s=args.st_handshake_s,
        pre_message_idle_s=args.st_pre_message_s, flow_idle_s=args.st_flow_s)

    class Quiet:
        counts: dict = {}

        def emit(self, event, **fields) -> None:
            self.counts[event] = self.counts.get(event, 0) + 1

    events = Quiet()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tl = TransportLayer(events, limits)  # type: ignore[arg-type]

        def answer(msg, src) -> None:
            if type(msg) is Request:
                src.conn.send(make_response(msg, 200).to_bytes())

        tl.on_message = answer
        await tl.listen_stream(host, port)
        await tl.listen_stream(host, port + 1, tls=tls.server_context(p["cert"], p["key"]))
        stop = loop.create_future()

        def on_cmd() -> None:
            cmd = status_conn.recv()
            if cmd == "stop":
                stop.set_result(None)
            else:
                status_conn.send({**tl.admission_status(), "events": dict(events.counts), "fd_soft": soft,
                                  "limits": limits.__dict__})

        loop.add_reader(status_conn.fileno(), on_cmd)
        ready.set()
        await stop
        loop.remove_reader(status_conn.fileno())
        await tl.close()

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())


# ---------------------------------------------------------------------------- main


def _summary(reps: list[dict]) -> dict:
    tot: dict = {"attempted": 0, "connected": 0, "refused": 0, "closed": 0, "open": 0, "connect_timeout": 0,
                 "bytes_from_node": 0, "connect_failed": {}}
    lives: list[float] = []
    for r in reps:
        for k in ("attempted", "connected", "refused", "closed", "open", "connect_timeout", "bytes_from_node"):
            tot[k] += r.get(k, 0)
        for k, v in r["connect_failed"].items():
            tot["connect_failed"][k] = tot["connect_failed"].get(k, 0) + v
        lives += r["lifetimes"]
    tot["held"] = tot["closed"] + tot["open"]  # connected and not refused at accept
    if lives:
        lives.sort()
        tot["closed_lifetime_s"] = {"min": lives[0], "median": statistics.median(lives), "max": lives[-1]}
    return tot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", type=_hostport, help="HOST:PORT of the listener to flood (loopback)")
    ap.add_argument("--count", type=int, default=25_000, help=f"connections to hold (<= {MAX_COUNT})")
    ap.add_argument("--mode", choices=("idle", "slowloris"), default="idle")
    ap.add_argument("--interval-s", type=float, default=5.0, help="slowloris: seconds between bytes per connection")
    ap.add_argument("--source-net", default="127.0.128.0/17", help="loopback network the flood comes from")
    ap.add_argument("--per-source", type=int, default=100, help="connections per source address")
    ap.add_argument("--hold-s", type=float, default=30.0, help="seconds to hold the flood after the connect phase")
    ap.add_argument("--budget-s", type=float, default=120.0, help="hard bound on the whole run")
    ap.add_argument("--tls", type=_hostport, help="HOST:PORT a TLS client checks during the flood")
    ap.add_argument("--tls-ca", help="CA file to verify the node with (default: no verification)")
    ap.add_argument("--client-source", default="127.0.127.1", help="source address of the TLS client")
    ap.add_argument("--procs", type=int, default=0, help="worker processes (default: from the fd limit)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--self-test", action="store_true", help="flood an in-process TransportLayer (see above)")
    ap.add_argument("--st-max-connections", type=int, default=0)
    ap.add_argument("--st-per-source", type=int, default=256)
    ap.add_argument("--st-handshake-s", type=float, default=5.0)
    ap.add_argument("--st-pre-message-s", type=float, default=15.0)
    ap.add_argument("--st-flow-s", type=float, default=3600.0)
    args = ap.parse_args()

    if not 1 <= args.count <= MAX_COUNT:
        ap.error(f"--count must be between 1 and {MAX_COUNT}")
    net = ipaddress.ip_network(args.source_net, strict=False)
    if not net.is_loopback:
        ap.error("--source-net must be a loopback network")
    n_sources = math.ceil(args.count / args.per_source)
    hosts = [str(h) for h in net.hosts() if str(h) != args.client_source]
    if len(hosts) < n_sources:
        ap.error(f"--source-net has {len(hosts)} addresses, {n_sources} needed at --per-source {args.per_source}")
    sources = hosts[:n_sources]
    deadline = time.monotonic() + args.budget_s
    ctx = mp.get_context("fork")

    server = status = None
    if args.self_test:
        status, child_end = ctx.Pipe()
        ready = ctx.Event()
        server = ctx.Process(target=server_main, args=(args.target[0], args.target[1], args, child_end, ready),
                             daemon=True)
        server.start()
        if not ready.wait(30):
            print("self-test server did not start", file=sys.stderr)
            server.kill()
            return 1
        if args.tls is None:
            args.tls = (args.target[0], args.target[1] + 1)

    soft = _raise_nofile()
    per_proc = max(1, soft - 256)
    procs = args.procs or math.ceil(args.count / per_proc)
    stop = ctx.Event()
    q = ctx.Queue()
    shares = [args.count // procs + (1 if i < args.count % procs else 0) for i in range(procs)]
    workers = []
    start = 0
    t0 = time.monotonic()
    for i, n in enumerate(shares):
        # connection k of the whole flood comes from sources[k // per_source], whichever
        # worker opens it, so --per-source holds across workers
        p = ctx.Process(target=worker_main, args=(i, args.target, sources, args.per_source, start, n, args.mode,
                                                  args.interval_s, {"stop": stop}, q), daemon=True)
        p.start()
        workers.append(p)
        start += n

    report: dict = {"target": f"{args.target[0]}:{args.target[1]}", "count": args.count, "mode": args.mode,
                    "sources": len(sources), "per_source": args.per_source, "procs": procs, "checks": []}
    connected = 0
    pending = set(range(procs))
    while pending and time.monotonic() < deadline:
        try:
            kind, idx, data = q.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        if kind == "connected":
            pending.discard(idx)
            connected += data["connected"]
    report["connect_phase_s"] = round(time.monotonic() - t0, 3)
    report["connected_at_flood"] = connected

    def check(when: str) -> None:
        if args.tls is not None:
            report["checks"].append({"when": when, **tls_check(args.tls, args.client_source, args.tls_ca)})
        if status is not None:
            status.send("status")
            if status.poll(5):
                report.setdefault("node", {})[when] = status.recv()

    check("flood established")
    hold_end = min(deadline - 5, time.monotonic() + args.hold_s)
    while time.monotonic() < hold_end:
        time.sleep(min(0.5, max(0.0, hold_end - time.monotonic())))
    check("end of hold")
    stop.set()
    reps = []
    while len(reps) < procs and time.monotonic() < deadline + 10:
        try:
            kind, idx, data = q.get(timeout=1.0)
        except Exception:  # noqa: BLE001
            continue
        if kind == "done":
            reps.append(data)
    for p in workers:
        p.join(2)
        if p.is_alive():
            p.kill()
    report["flood"] = _summary(reps)
    if server is not None and status is not None:
        status.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
    report["elapsed_s"] = round(time.monotonic() - t0, 3)

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        f = report["flood"]
        print(f"flood {report['target']}: {args.count} {args.mode} connections from {len(sources)} sources "
              f"({args.per_source} each), {procs} process(es); connect phase {report['connect_phase_s']} s")
        print(f"  TCP connects completed {f['connected']}, refused at accept {f['refused']}, held {f['held']}: "
              f"closed later by the node "
              f"{f['closed']}, still open {f['open']}, connect timeouts {f['connect_timeout']}, "
              f"connect errors {f['connect_failed'] or 0}")
        if "closed_lifetime_s" in f:
            print(f"  closed after (s): {f['closed_lifetime_s']}")
        for c in report["checks"]:
            if c["ok"]:
                print(f"  TLS client at {c['when']}: handshake {c['handshake_s']} s, answer {c['status']!r} "
                      f"after {c['answered_s']} s")
            else:
                print(f"  TLS client at {c['when']}: FAILED at {c['stage']} after {c['after_s']} s: {c['error']}")
        for when, st in report.get("node", {}).items():
            print(f"  node at {when}: {json.dumps(st)}")
    return 0 if all(c["ok"] for c in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
