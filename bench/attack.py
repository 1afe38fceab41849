"""Attacks on the lab's edge, and whether legitimate calls still get through (issue 7 item 8).

Starts ``edgeway lab up`` (edge 127.0.0.2, core 127.0.0.3) with a SIPp UAS as call
control (127.0.0.4), then runs each attack from attacker addresses 127.0.1.x while a
SIPp UAC at 127.0.0.5 places 5 legitimate calls through the edge. Loopback only; every
attack is bounded in count and time and everything started is stopped by its PID.

Attacks (``--attacks``, comma-separated; all by default):

* ``invite-flood``: INVITEs to an unknown domain from one UDP source at ``--rate`` per
  second (default 5,000) for ``--seconds`` (default 10).
* ``handshakes``: ``--handshakes`` (default 7,000) failed TLS handshakes on the edge's
  5061, 16 at a time: half send garbage, half reject the edge's certificate.
* ``trickle``: one 57 KB SIP message written one byte per TCP segment.
* ``conns`` / ``slowloris``: ``--conns`` (default 25,000) idle (or one byte every 5 s)
  connections held against the edge's 5060 from many 127.0.x.y sources
  (``bench/conn_flood.py``), a TLS client checking 5061, and the core stalled for 6 s
  meanwhile: the time the traversal zone takes to come back.

Per attack it prints: legitimate calls OK of 5 and their setup time (INVITE → 200,
median and max, ms); the edge's RSS (MiB) before / at the end / 10 s after, descriptors
at the end, CPU seconds used during the attack; the bytes the edge sent back per byte
the attacker sent; the growth of the edge's event log (MB).

Usage: ``python bench/attack.py [--attacks invite-flood,trickle] [--seconds 10]``
(``make benchdeps`` first: SIPp).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calls_bench import (  # noqa: E402
    CALLEE_IP,
    EDGE_IP,
    ROWS,
    SIP_PORT,
    TLS_PORT,
    process_cpu_seconds,
    uac_args,
    uas_args,
    wait_listening,
)

from support.harness import LabUp, sipp_available, start_sipp, stop_process  # noqa: E402

ATTACKER_IP = "127.0.1.1"
LEGIT_CALLS = 5
SETTLE_S = 10.0
MIB = 1 << 20


# ---- measurements --------------------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Result:
    attack: str
    legit_ok: int = 0
    setup_ms: list[float] = field(default_factory=list)
    rss_mib: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fds: int = 0
    cpu_s: float = 0.0
    sent: int = 0
    received: int = 0
    log_mb: float = 0.0
    note: str = ""

    def row(self) -> str:
        setup = (f"{statistics.median(self.setup_ms):.0f} / {max(self.setup_ms):.0f}" if self.setup_ms else "-")
        ratio = f"{self.received / self.sent:.3f}" if self.sent else "-"
        b, e, a = self.rss_mib
        return (f"{self.attack:<13} {self.legit_ok:>2}/{LEGIT_CALLS}  {setup:>13}  {b:>6.0f} {e:>6.0f} {a:>6.0f}  "
                f"{self.fds:>6}  {self.cpu_s:>7.1f}  {ratio:>9}  {self.log_mb:>7.2f}  {self.note}")


HEADER = (f"{'attack':<13} {'calls':>5}  {'setup ms p50/max':>13}  {'RSS MiB before/end/after':>22}  "
          f"{'fds':>6}  {'CPU s':>7}  {'bytes out/in':>9}  {'log MB':>7}  note")


def legit_calls(work: Path) -> tuple[int, list[float]]:
    """5 calls at 5/s from 127.0.0.5 through the edge to the SIPp UAS; (ok, setup ms)."""
    row = ROWS["udp"]
    work.mkdir(parents=True, exist_ok=True)
    uas = start_sipp(uas_args(row, LEGIT_CALLS, 20), work, "uas")
    try:
        if not wait_listening([(CALLEE_IP, SIP_PORT)], 10.0, uas):
            return 0, []
        uac = start_sipp(uac_args(row, (EDGE_IP, SIP_PORT), LEGIT_CALLS, LEGIT_CALLS, 20), work, "uac")
        try:
            uac.wait(45)
        except Exception:  # noqa: BLE001
            pass
        finally:
            stop_process(uac, signal.SIGTERM, 5.0)
    finally:
        stop_process(uas, signal.SIGTERM, 5.0)
    sent: dict[str, float] = {}
    ok: dict[str, float] = {}
    log = work / "uac-short.log"
    for line in (log.read_text(errors="replace").splitlines() if log.exists() else []):
        f = line.split("\t")
        if len(f) < 7 or f[5] != "CSeq:1 INVITE":
            continue
        t = float(f[2])
        if f[3] == "S":
            sent.setdefault(f[4], t)
        elif f[6].startswith("SIP/2.0 200 "):
            ok.setdefault(f[4], t)
    setup = [1000 * (ok[c] - sent[c]) for c in ok if c in sent]
    return len(setup), setup


# ---- attacks -------------------------------------------------------------------------------

class Counter:
    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.note = ""
        self.lock = threading.Lock()


def invite_flood(stop: threading.Event, c: Counter, rate: int, seconds: float) -> None:
    """INVITEs to an unknown domain from one UDP source, paced in 10 ms batches."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ATTACKER_IP, 0))
    s.setblocking(False)
    port = s.getsockname()[1]
    tmpl = ("INVITE sip:victim{n}@unknown.example SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ATTACKER_IP}:{port};branch=z9hG4bKfl{{n}};rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:flood@attacker.example>;tag=f{n}\r\n"
            "To: <sip:victim{n}@unknown.example>\r\nCall-ID: flood{n}@attacker.example\r\n"
            f"CSeq: 1 INVITE\r\nContact: <sip:flood@{ATTACKER_IP}:{port}>\r\nContent-Length: 0\r\n\r\n")
    end = time.monotonic() + seconds
    n = 0
    per_batch = max(1, rate // 100)
    next_at = time.monotonic()
    while not stop.is_set() and time.monotonic() < end:
        for _ in range(per_batch):
            data = tmpl.format(n=n).encode()
            n += 1
            with contextlib.suppress(BlockingIOError):
                s.sendto(data, (EDGE_IP, SIP_PORT))
                c.sent += len(data)
        while True:
            try:
                c.received += len(s.recv(65536))
            except BlockingIOError:
                break
        next_at += 0.01
        time.sleep(max(0.0, next_at - time.monotonic()))
    tail = time.monotonic() + 3.0  # what the edge still sends (retransmissions)
    while time.monotonic() < tail:
        try:
            c.received += len(s.recv(65536))
        except BlockingIOError:
            time.sleep(0.01)
    s.close()


def handshakes(stop: threading.Event, c: Counter, count: int) -> None:
    """``count`` failed TLS handshakes on the edge's 5061, 16 at a time: every other one
    sends garbage instead of a ClientHello, the rest get as far as the edge's
    certificate and reject it (a client that does not trust the edge)."""
    import ssl
    from concurrent.futures import ThreadPoolExecutor

    garbage = b"\x16\x03\x01\x00\xff" + random.randbytes(255)
    strict = ssl.create_default_context()  # the system CAs: the lab's edge is not trusted

    def one(i: int) -> None:
        if stop.is_set():
            return
        with contextlib.suppress(OSError), socket.socket() as s:
            s.settimeout(5)
            s.bind((f"127.0.1.{2 + i % 200}", 0))
            s.connect((EDGE_IP, TLS_PORT))
            if i % 2:
                s.sendall(garbage)
                with c.lock:
                    c.sent += len(garbage)
                while chunk := s.recv(4096):
                    with c.lock:
                        c.received += len(chunk)
            else:
                with strict.wrap_socket(s, server_hostname="edge.example"):
                    pass

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def trickle(stop: threading.Event, c: Counter) -> None:
    """A 57 KB message (27 KB head, 30 KB body) one byte per TCP segment."""
    head = ("OPTIONS sip:trickle@unknown.example SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.1.250:5999;branch=z9hG4bKtr\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:t@a.example>;tag=1\r\nTo: <sip:t@unknown.example>\r\n"
            "Call-ID: trickle@a.example\r\nCSeq: 1 OPTIONS\r\n"
            + "".join(f"X-Pad-{i}: {'p' * 60}\r\n" for i in range(380)) + "Content-Length: 30000\r\n\r\n").encode()
    data = head + b"b" * 30000
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind(("127.0.1.250", 0))
    s.connect((EDGE_IP, SIP_PORT))
    s.settimeout(5)
    try:
        for i in range(len(data)):
            if stop.is_set():
                break
            s.send(data[i:i + 1])
            c.sent += 1
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                c.received += len(chunk)
    except OSError:
        pass
    finally:
        s.close()


def conns(stop: threading.Event, c: Counter, lab: LabUp, count: int, seconds: float, mode: str = "idle") -> None:
    """``count`` idle (or slowloris) connections held against the edge's 5060 from
    127.0.128.0/17 for ``seconds`` (``bench/conn_flood.py``), a TLS client checking 5061
    meanwhile; 5 s into the hold the core is stopped for 6 s (SIGSTOP) and the time until
    the traversal zone is connected again is measured (before issue 7: 88 s)."""
    import json
    import subprocess

    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "conn_flood.py"),
                             f"{EDGE_IP}:{SIP_PORT}", "--tls", f"{EDGE_IP}:{TLS_PORT}", "--count", str(count),
                             "--mode", mode, "--hold-s", str(seconds), "--budget-s", str(seconds + 90), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    reconnect = None
    try:
        time.sleep(5.0)
        core = lab.node_pids()["core"]
        os.kill(core, signal.SIGSTOP)
        try:
            time.sleep(6.0)
        finally:
            os.kill(core, signal.SIGCONT)
        t_cont = time.time()
        end = time.monotonic() + 30
        while reconnect is None and time.monotonic() < end:
            ups = [e["ts"] - t_cont for e in lab.events("edge")
                   if e.get("event") == "traversal connected" and e.get("ts", 0) >= t_cont]
            reconnect = ups[0] if ups else None
            time.sleep(0.2)
        out, err = proc.communicate(timeout=seconds + 120)
    finally:
        stop_process(proc, signal.SIGTERM, 5.0)
    try:
        report = json.loads(out)
    except ValueError:
        c.note = f"conn_flood failed: {err.strip()[-200:]}"
        return
    f = report.get("flood", {})
    checks = report.get("checks", [])
    c.note = (f"{mode}: held {f.get('open', '?')} refused {f.get('refused', '?')} closed {f.get('closed', '?')}; "
              f"TLS client answered {sum(1 for ch in checks if ch.get('ok'))}/{len(checks)}; traversal back "
              + (f"{reconnect:.1f} s after the core resumed" if reconnect is not None else "NOT within 30 s"))


# ---- driver ----------------------------------------------------------------------------------

def run_attack(name: str, attack: Callable[[threading.Event, Counter], None], lab: LabUp, work: Path,
               settle_s: float = SETTLE_S) -> Result:
    """Run ``attack`` in a thread with the legitimate calls beside it; measure the edge
    before, at the end and ``settle_s`` seconds after."""
    pid = lab.node_pids()["edge"]
    log = lab.workdir / "edge.events.jsonl"
    log0 = log.stat().st_size if log.exists() else 0
    rss0, cpu0 = rss_bytes(pid), process_cpu_seconds(pid)
    stop, counter = threading.Event(), Counter()
    t = threading.Thread(target=attack, args=(stop, counter), daemon=True)
    t.start()
    time.sleep(1.0)  # let the attack build up
    ok, setup = legit_calls(work / name)
    t.join(120)
    stop.set()
    t.join(10)
    rss_end, fds, cpu = rss_bytes(pid), fd_count(pid), process_cpu_seconds(pid) - cpu0
    time.sleep(settle_s)
    rss_after = rss_bytes(pid)
    size = log.stat().st_size if log.exists() else 0
    return Result(name, ok, setup, (rss0 / MIB, rss_end / MIB, rss_after / MIB), fds, cpu,
                  counter.sent, counter.received, (size - log0) / 1e6, counter.note)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default="invite-flood,handshakes,trickle,conns,slowloris")
    ap.add_argument("--rate", type=int, default=5000, help="INVITEs per second of the flood")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the flood and of the held connections")
    ap.add_argument("--handshakes", type=int, default=7000)
    ap.add_argument("--conns", type=int, default=25000)
    args = ap.parse_args()
    if not sipp_available():
        print("SIPp is not installed (make benchdeps)", file=sys.stderr)
        return 2
    attacks: dict[str, Callable[[threading.Event, Counter], None]] = {
        "invite-flood": lambda s, c: invite_flood(s, c, args.rate, args.seconds),
        "handshakes": lambda s, c: handshakes(s, c, args.handshakes),
        "trickle": trickle,
        # Held past the 15 s pre-message timeout.
        "conns": lambda s, c: conns(s, c, lab, args.conns, max(args.seconds, 20.0)),
        "slowloris": lambda s, c: conns(s, c, lab, args.conns, max(args.seconds, 20.0), "slowloris"),
    }
    chosen = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in attacks]
    if unknown:
        print(f"unknown attack(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgeway-attack-") as tmp:
        lab = LabUp(Path(tmp) / "lab", ["--no-ladder"])  # the log as a product node writes it
        try:
            lab.start()
            print(f"edge pid {lab.node_pids()['edge']}; legitimate calls: {LEGIT_CALLS} from 127.0.0.5 during each attack")
            print(HEADER)
            for name in chosen:
                print(run_attack(name, attacks[name], lab, Path(tmp)).row(), flush=True)
        finally:
            lab.stop()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    raise SystemExit(main())
