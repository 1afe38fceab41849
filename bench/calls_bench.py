"""Calls per second through the traversal pair, and through Kamailio on the same SIPp load.

What runs
---------
``edgeway lab up`` (edge 127.0.0.2, core 127.0.0.3) and, beside it, Kamailio as a plain
stateful record-routing proxy at 127.0.0.11 (``bench/kamailio-proxy.cfg``: Max-Forwards,
``sanity_check()``, CANCEL and retransmissions by tm, ``loose_route()`` in dialog,
``record_route(); t_relay();`` for new requests; ``children=2`` UDP workers and
``tcp_children=2`` TCP/TLS workers, since this machine has 2 cores). For every row, offered
rate and run, the same bounded SIPp load goes through the pair, then through Kamailio::

    SIPp UAC 127.0.0.5 → edge 127.0.0.2:5060 → core → SIPp UAS 127.0.0.4:5060/TCP
    SIPp UAC 127.0.0.5 → Kamailio 127.0.0.11:5060  → SIPp UAS 127.0.0.4:5060/TCP

Each call is INVITE with SDP / 100 / 180 / 200 / ACK / 100 ms hold / BYE / 200, no RTP
(``bench/sipp/uac_calls.xml`` and ``uas_calls.xml``: the lab's ``uac_basic.xml`` and
``uas_echo.xml`` plus a 503 branch and a Contact key). A load is ``rate × --seconds``
calls at ``rate`` calls/s, at most ``5 × rate`` at once; a call with no answer for 10 s
fails, and SIPp quits after ``--seconds`` + 60 s whatever happens.

Rows
----
* **UDP**: the UAC sends over UDP. **TCP**: over one TCP connection. The callee leg is TCP.
* **TLS both legs**: SIPp has no TLS, so stunnel in client mode turns the UAC's TCP
  connection into TLS toward the edge's 5061 (or Kamailio's 5061), and stunnel in server
  mode terminates TLS at 127.0.0.4:5061 in front of the UAS. The lab runs with
  ``--call-control-transport tls`` so that the core reaches call control over TLS, and
  Kamailio relays what came in over TLS over TLS. stunnel's CPU is not counted; its two
  extra hops are inside the latency figures.

How each number is measured
---------------------------
* offered: calls SIPp created (``OutgoingCall`` in its ``-trace_stat`` file).
* ok: calls SIPp completed (``SuccessfulCall``) less the 503 ones (the scenario ACKs a 503
  and ends the call, which SIPp counts as successful).
* failed: calls SIPp counted as failed (``FailedCall``): any other final response, a
  timeout, UDP retransmissions exhausted, a lost connection. 503s are not in it.
* 503: calls whose INVITE was answered 503 (load shedding), from SIPp's
  ``-trace_shortmsg`` log (one line per message, microsecond timestamps).
* calls/s: ok calls / (last message − first INVITE) in that log.
* CPU ms/call: CPU time used during the load (from before the UAS starts until the UAS
  has ended) divided by the ok calls. Per process it is the sum over its threads of
  ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds; ``/proc/<pid>/stat`` ticks are
  10 ms, too coarse for Kamailio's per-process share), or ``/proc/<pid>/stat`` where
  schedstat is missing. Edge and core are their node processes; Kamailio is the sum over
  every process of its process group (main, workers, timers, TCP main).
* 100 Trying p50 / p99: per call, from SIPp sending the first INVITE to SIPp receiving the
  first 100 Trying, taken from the same ``-trace_shortmsg`` timestamps rather than SIPp's
  ``start_rtd``/``rtd`` response times, which are whole milliseconds (SIPp's clock tick)
  and so mostly 0 or 1 on loopback. Over every call that got a 100; it includes SIPp's
  own scheduling delay (both ends of the measurement are SIPp's).
* ratio: Edgeway node CPU ms per call / Kamailio CPU ms per call, medians.

Each figure is the median over ``--runs`` runs, followed by [min–max] when the runs differ.
``--long`` is the 60 s soak. Uses fixed loopback addresses: run it inside ``unshare -n``.
Every process it starts has its own session and is stopped by its PID at the end, also on
an error, Ctrl-C or SIGTERM. A benchmark, not a test: it prints numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: SIPp, Kamailio

from support.harness import (  # noqa: E402
    Kamailio,
    LabUp,
    _listening,
    cpu_seconds,
    kamailio_available,
    sipp_available,
    start_sipp,
    stop_process,
)
from edgeway.security.pki import make_cert, write_pem

BENCH_DIR = Path(__file__).resolve().parent
SCENARIOS = BENCH_DIR / "sipp"

UAC_IP, UAC_PORT = "127.0.0.5", 5070
EDGE_IP = "127.0.0.2"
KAMAILIO_IP = "127.0.0.11"
CALLEE_IP = "127.0.0.4"
SIP_PORT, TLS_PORT = 5060, 5061
#: stunnel client listeners on the UAC's address: toward the edge's 5061, toward Kamailio's 5061.
TUNNEL_TO_EDGE, TUNNEL_TO_KAMAILIO = 5061, 5062
CALLEE_USER, CALLEE_DOMAIN = "alice", "corp.edgeway.test"
HOLD_MS = 100
#: A call with no answer for this long fails (SIPp -recv_timeout).
RECV_TIMEOUT_MS = 10_000
#: SIPp quits this long after the planned end of a load (-timeout), whatever happens.
SIPP_GRACE_S = 60
#: After the UAC ends, how long the UAS may take to finish (its 2 s timewait) before it is stopped.
UAS_TAIL_S = 4.0
#: Between loads, wait until the proxies are idle (below this share of one core over
#: SETTLE_SAMPLE_S), for at most SETTLE_MAX_S: after an overload they retransmit and
#: time out transactions for up to 32 s (timers B/F/H/J), which must not leak into the next load.
SETTLE_IDLE_SHARE = 0.05
SETTLE_SAMPLE_S = 0.5
SETTLE_MAX_S = 45.0


# ---- what is measured ------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """A transport row: how the UAC reaches the proxy, and whether both legs are TLS."""

    name: str
    sipp_transport: str  # SIPp -t: u1 (UDP, one socket) or t1 (TCP, one connection)
    tls: bool


ROWS = {
    "udp": Row("UDP", "u1", tls=False),
    "tcp": Row("TCP", "t1", tls=False),
    "tls": Row("TLS both legs", "t1", tls=True),
}


@dataclass
class System:
    """A proxy under test: where the UAC sends (plain / through stunnel) and its CPU meter."""

    name: str
    plain: tuple[str, int]
    tls: tuple[str, int]
    cpu: Callable[[], dict[str, float]]  # part name → CPU seconds used so far
    detail: str = ""

    def target(self, row: Row) -> tuple[str, int]:
        return self.tls if row.tls else self.plain


@dataclass
class Load:
    """One load's results."""

    offered: int
    ok: int
    failed: int
    shed: int
    cps: float
    cpu_ms: dict[str, float]  # part → CPU ms per ok call
    p50_ms: float | None
    p99_ms: float | None


# ---- CPU time from /proc ---------------------------------------------------------------------

#: Whether the kernel keeps per-task run time in nanoseconds (/proc/<pid>/task/<tid>/schedstat).
SCHEDSTAT = Path("/proc/self/schedstat").exists()


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds used by process ``pid``: the sum of its threads' schedstat run time
    (ns), or ``/proc/<pid>/stat`` (clock ticks) on a kernel without schedstat."""
    if not SCHEDSTAT:
        return cpu_seconds(pid)
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            ns += int((task / "schedstat").read_text().split()[0])
    return ns / 1e9


def process_group(pgid: int) -> list[int]:
    """PIDs of the processes in process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds used so far by every live process of process group ``pgid``."""
    total = 0.0
    for pid in process_group(pgid):
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(pid)
    return total


# ---- certificates and stunnel ----------------------------------------------------------------

def issue_bench_certs(lab_pki: Path, out: Path) -> dict[str, dict[str, Path]]:
    """Certificates of the lab's CA for Kamailio (127.0.0.11) and for stunnel in front of
    the UAS (127.0.0.4, the call-control address the core verifies against that CA)."""
    ca_cert = x509.load_pem_x509_certificate((lab_pki / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((lab_pki / "ca.key").read_bytes(), password=None)
    out.mkdir(parents=True, exist_ok=True)
    certs = {}
    for name, cn, ip in (("kamailio", "kamailio.bench.edgeway.test", KAMAILIO_IP),
                         ("callee", "callcontrol.corp.edgeway.test", CALLEE_IP)):
        cert, key = make_cert(ca_cert, ca_key, cn, [cn], [ip])
        certs[name] = {"cert": write_pem(out / f"{name}.pem", cert, ca_cert),
                       "key": write_pem(out / f"{name}.key", key), "ca": lab_pki / "ca.pem"}
    return certs


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


def stunnel_config(workdir: Path, ca: Path, callee: dict[str, Path]) -> str:
    """Client services toward the edge's and Kamailio's TLS ports (server verified against
    the lab CA and its IP), and a server service in front of the UAS."""
    lines = ["foreground = yes", "pid =", "syslog = no", f"output = {workdir / 'stunnel.log'}",
             "debug = warning", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1"]
    for name, port, ip in (("to-edge", TUNNEL_TO_EDGE, EDGE_IP), ("to-kamailio", TUNNEL_TO_KAMAILIO, KAMAILIO_IP)):
        lines += ["", f"[{name}]", "client = yes", f"accept = {UAC_IP}:{port}", f"connect = {ip}:{TLS_PORT}",
                  f"local = {UAC_IP}", f"CAfile = {ca}", "verifyChain = yes", f"checkIP = {ip}",
                  "sslVersionMin = TLSv1.2"]
    lines += ["", "[callee]", f"accept = {CALLEE_IP}:{TLS_PORT}", f"connect = {CALLEE_IP}:{SIP_PORT}",
              f"local = {CALLEE_IP}", f"cert = {callee['cert']}", f"key = {callee['key']}", f"CAfile = {ca}",
              "sslVersionMin = TLSv1.2"]
    return "\n".join(lines) + "\n"


class Stunnel:
    """stunnel in the foreground in its own session, stopped by PID."""

    def __init__(self, workdir: Path, config: str):
        self.workdir = workdir
        self.config = config
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        conf = self.workdir / "stunnel.conf"
        conf.write_text(self.config)
        with open(self.workdir / "stunnel.out", "w") as out:
            self.proc = subprocess.Popen([stunnel_binary(), str(conf)], cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        accepts = [(UAC_IP, TUNNEL_TO_EDGE), (UAC_IP, TUNNEL_TO_KAMAILIO), (CALLEE_IP, TLS_PORT)]
        if not wait_listening(accepts, timeout_s, self.proc):
            self.stop()
            log = self.workdir / "stunnel.log"
            raise RuntimeError(f"stunnel did not come up:\n{log.read_text()[-2000:] if log.exists() else ''}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 5.0)


def wait_listening(addrs: list[tuple[str, int]], timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait until a TCP socket listens on each of ``addrs`` (False on timeout or if ``proc`` exits)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if all(_listening("tcp", ip, port) for ip, port in addrs):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# ---- the systems under test ------------------------------------------------------------------

def edgeway_system(lab: LabUp) -> System:
    pids = lab.node_pids()
    return System("edgeway", (EDGE_IP, SIP_PORT), (UAC_IP, TUNNEL_TO_EDGE),
                  lambda: {node: process_cpu_seconds(pid) for node, pid in pids.items()},
                  detail=", ".join(f"{node} pid {pid}" for node, pid in pids.items()))


def kamailio_proxy(workdir: Path, certs: dict[str, Path]) -> Kamailio:
    values = {"PROXY_IP": KAMAILIO_IP, "SIP_PORT": SIP_PORT, "TLS_PORT": TLS_PORT, "CALLEE_IP": CALLEE_IP,
              "CALLEE_PORT": SIP_PORT, "CALLEE_TLS_PORT": TLS_PORT,
              "CERT": certs["cert"], "KEY": certs["key"], "CA": certs["ca"]}
    return Kamailio(workdir, {k: str(v) for k, v in values.items()}, name="kamailio-proxy",
                    cfg=BENCH_DIR / "kamailio-proxy.cfg", tls_cfg=BENCH_DIR / "kamailio-tls.cfg",
                    listen=[("udp", KAMAILIO_IP, SIP_PORT), ("tcp", KAMAILIO_IP, SIP_PORT),
                            ("tcp", KAMAILIO_IP, TLS_PORT)])


def kamailio_system(kam: Kamailio) -> System:
    assert kam.proc is not None
    pgid = kam.proc.pid  # its own session: the process group is the main process's PID
    return System("kamailio", (KAMAILIO_IP, SIP_PORT), (UAC_IP, TUNNEL_TO_KAMAILIO),
                  lambda: {"all": group_cpu_seconds(pgid)},
                  detail=f"{len(process_group(pgid))} processes, CPU summed over all of them")


@contextlib.contextmanager
def testbed(workdir: Path, tls: bool, with_kamailio: bool) -> Iterator[list[System]]:
    """The lab (call control over TCP, or over TLS behind stunnel), stunnel when ``tls``,
    and Kamailio; all stopped by PID when the block ends."""
    with contextlib.ExitStack() as stack:
        # One SIPp address offers the whole load: flood control would (rightly) limit it.
        lab = LabUp(workdir / "lab", ["--call-control-transport", "tls" if tls else "tcp", "--flood-limit", "0"])
        stack.callback(lab.stop)
        lab.start()
        systems = [edgeway_system(lab)]
        certs = issue_bench_certs(lab.workdir / "pki", workdir / "bench-pki")
        if tls:
            tunnel = Stunnel(workdir, stunnel_config(workdir, certs["callee"]["ca"], certs["callee"]))
            stack.callback(tunnel.stop)
            tunnel.start()
        if with_kamailio:
            kam = kamailio_proxy(workdir / "kamailio", certs["kamailio"])
            stack.callback(kam.stop)
            kam.start()
            systems.append(kamailio_system(kam))
        yield systems


def total_cpu(systems: list[System]) -> float:
    return sum(sum(s.cpu().values()) for s in systems)


def wait_idle(systems: list[System]) -> None:
    """Wait (bounded) until every system under test is idle again."""
    end = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < end:
        before = total_cpu(systems)
        time.sleep(SETTLE_SAMPLE_S)
        if total_cpu(systems) - before < SETTLE_IDLE_SHARE * SETTLE_SAMPLE_S:
            return


# ---- one load --------------------------------------------------------------------------------

def uas_args(row: Row, calls: int, seconds: int) -> list[str]:
    contact = (f"sip:sipp@{CALLEE_IP}:{TLS_PORT};transport=tls" if row.tls
               else f"sip:sipp@{CALLEE_IP}:{SIP_PORT};transport=tcp")
    return ["-sf", str(SCENARIOS / "uas_calls.xml"), "-i", CALLEE_IP, "-p", str(SIP_PORT), "-t", "t1",
            "-key", "contact", contact, "-mi", CALLEE_IP, "-mp", "20000", "-m", str(calls),
            "-timeout", str(seconds + SIPP_GRACE_S + 30)]


def uac_args(row: Row, target: tuple[str, int], rate: int, calls: int, seconds: int) -> list[str]:
    return ["-sf", str(SCENARIOS / "uac_calls.xml"), "-i", UAC_IP, "-p", str(UAC_PORT), "-t", row.sipp_transport,
            "-s", CALLEE_USER, "-key", "domain", CALLEE_DOMAIN, "-d", str(HOLD_MS), "-r", str(rate),
            "-m", str(calls), "-l", str(rate * 5), "-recv_timeout", str(RECV_TIMEOUT_MS),
            "-timeout", str(seconds + SIPP_GRACE_S), "-trace_shortmsg", "-shortmessage_file", "uac-short.log",
            f"{target[0]}:{target[1]}"]


def wait_or_stop(proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait for ``proc`` to end by itself for up to ``timeout_s``, then stop it by PID."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout_s)
    stop_process(proc, signal.SIGTERM, 5.0)


def run_sipp_pair(row: Row, target: tuple[str, int], rate: int, seconds: int, work: Path) -> None:
    """One bounded load: SIPp UAS, then the UAC; both stopped by PID however it ends."""
    calls = rate * seconds
    uas = start_sipp(uas_args(row, calls, seconds), work, "uas")
    try:
        if not wait_listening([(CALLEE_IP, SIP_PORT)], 10.0, uas):
            raise RuntimeError(f"SIPp UAS did not start:\n{(work / 'uas.out').read_text()[-2000:]}")
        uac = start_sipp(uac_args(row, target, rate, calls, seconds), work, "uac")
        try:
            uac.wait(seconds + SIPP_GRACE_S + 10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop_process(uac, signal.SIGTERM, 5.0)
        wait_or_stop(uas, UAS_TAIL_S)
    finally:
        stop_process(uas, signal.SIGTERM, 5.0)


def read_stat(path: Path) -> dict[str, str]:
    """The last line of a SIPp ``-trace_stat`` file, by column name."""
    rows = list(csv.reader(path.read_text().splitlines(), delimiter=";")) if path.exists() else []
    if len(rows) < 2:
        raise RuntimeError(f"no SIPp statistics in {path}")
    return dict(zip(rows[0], rows[-1]))


@dataclass
class Trace:
    """What the UAC's short message log says: 503'd calls, INVITE → 100 times, time span."""

    shed: int
    trying_ms: list[float]
    span_s: float


def read_trace(path: Path) -> Trace:
    """Parse SIPp's ``-trace_shortmsg`` log: tab-separated date, time, epoch seconds,
    S(ent)/R(eceived), Call-ID, ``CSeq:<n> <method>``, first line."""
    invite_at: dict[str, float] = {}
    trying_at: dict[str, float] = {}
    shed: set[str] = set()
    first = last = None
    for line in path.read_text(errors="replace").splitlines():
        f = line.split("\t")
        if len(f) < 7:
            continue
        t, direction, call_id, cseq, start_line = float(f[2]), f[3], f[4], f[5], f[6]
        last = t if last is None else max(last, t)
        if cseq != "CSeq:1 INVITE":
            continue
        if direction == "S":
            invite_at.setdefault(call_id, t)
            first = t if first is None else min(first, t)
        elif start_line.startswith("SIP/2.0 100 "):
            trying_at.setdefault(call_id, t)
        elif start_line.startswith("SIP/2.0 503 "):
            shed.add(call_id)
    # Only calls of this run: a proxy may still be retransmitting responses of the previous one.
    trying_ms = [1000 * (t - invite_at[c]) for c, t in trying_at.items() if c in invite_at]
    return Trace(len(shed & invite_at.keys()), trying_ms, (last - first) if first is not None else 0.0)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation, None without values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def one_load(system: System, row: Row, rate: int, seconds: int, work: Path) -> Load:
    work.mkdir(parents=True)
    cpu0 = system.cpu()
    run_sipp_pair(row, system.target(row), rate, seconds, work)
    cpu = {part: used - cpu0[part] for part, used in system.cpu().items()}
    stat = read_stat(work / "uac.csv")
    trace = read_trace(work / "uac-short.log")
    ok = int(stat["SuccessfulCall(C)"]) - trace.shed
    return Load(offered=int(stat["OutgoingCall(C)"]), ok=ok, failed=int(stat["FailedCall(C)"]), shed=trace.shed,
                cps=ok / trace.span_s if trace.span_s > 0 else 0.0,
                cpu_ms={part: 1000 * s / max(ok, 1) for part, s in cpu.items()},
                p50_ms=percentile(trace.trying_ms, 50), p99_ms=percentile(trace.trying_ms, 99))


# ---- printing --------------------------------------------------------------------------------

def spread(values: list[float | None], fmt: str) -> str:
    """Median, then [min–max] when the runs differ at this precision; '-' without values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    med, lo, hi = (format(v, fmt) for v in (statistics.median(vals), min(vals), max(vals)))
    return med if lo == hi else f"{med} [{lo}–{hi}]"


LINE = "{row:<13} {rate:>5}  {system:<9} {offered:>12} {ok:>16} {failed:>12} {shed:>14} {cps:>18}  {cpu:<46} {p50:>18} {p99:>18}"


def print_header(args: argparse.Namespace, kamailio_note: str) -> None:
    print(f"Calls through the Edgeway traversal pair and through {kamailio_note}, on the same SIPp load")
    print(f"  SIPp UAC {UAC_IP} → edge {EDGE_IP} → core → SIPp UAS {CALLEE_IP}  |  "
          f"SIPp UAC → Kamailio {KAMAILIO_IP} → the same UAS; callee leg TCP unless the row says TLS")
    print(f"  INVITE/100/180/200/ACK/{HOLD_MS} ms hold/BYE/200, no RTP; {args.seconds} s per load "
          f"(rate × {args.seconds} calls); median of {args.runs} run(s), [min–max] when runs differ")
    print("  TLS both legs: stunnel (client) in front of the proxy's TLS port 5061 and stunnel (server) at "
          f"{CALLEE_IP}:5061 in front of the UAS; stunnel's CPU is not counted, its hops are in the latency")
    print("  ok excludes 503s; failed = any other failure; CPU ms per ok call; 100 Trying = INVITE sent → 100 "
          "received at the UAC")
    print()
    print(LINE.format(row="row", rate="rate", system="system", offered="offered", ok="ok", failed="failed",
                      shed="503", cps="calls/s", cpu="CPU ms/call", p50="100 Trying p50 ms", p99="p99 ms"))


def print_system(row: Row, rate: int, system: str, loads: list[Load], first: bool) -> None:
    parts = list(loads[0].cpu_ms)
    cpu = "  ".join(f"{part} {spread([x.cpu_ms[part] for x in loads], '.2f')}" for part in parts)
    print(LINE.format(row=row.name if first else "", rate=rate if first else "", system=system,
                      offered=spread([x.offered for x in loads], ".0f"), ok=spread([x.ok for x in loads], ".0f"),
                      failed=spread([x.failed for x in loads], ".0f"), shed=spread([x.shed for x in loads], ".0f"),
                      cps=spread([x.cps for x in loads], ".1f"), cpu=cpu,
                      p50=spread([x.p50_ms for x in loads], ".2f"), p99=spread([x.p99_ms for x in loads], ".2f")))


def print_ratio(results: dict[str, list[Load]]) -> None:
    if "kamailio" not in results or "edgeway" not in results:
        return
    kam = statistics.median(x.cpu_ms["all"] for x in results["kamailio"])
    if kam <= 0:
        return
    ratios = ", ".join(f"{node}/kamailio {statistics.median(x.cpu_ms[node] for x in results['edgeway']) / kam:.1f}×"
                       for node in results["edgeway"][0].cpu_ms)
    print(f"{'':<13} {'':>5}  CPU per call ratio: {ratios}")


# ---- main ------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100,200,400", help="offered calls/s, comma-separated")
    ap.add_argument("--seconds", type=int, default=10, help="seconds of load per run (bounded)")
    ap.add_argument("--long", action="store_true", help="the 60 s soak: same as --seconds 60")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per rate (medians are printed)")
    ap.add_argument("--rows", default="udp,tcp,tls", help=f"rows, comma-separated, of {','.join(ROWS)}")
    args = ap.parse_args()
    if args.long:
        args.seconds = 60
    args.rates = [int(r) for r in args.rates.split(",")]
    args.rows = [ROWS[r.strip()] for r in args.rows.split(",")]
    return args


def kamailio_version() -> str:
    out = subprocess.run(["kamailio", "-v"], capture_output=True, text=True, timeout=10, check=False).stdout
    first = out.splitlines()[0] if out else "kamailio"
    return first.replace("version: kamailio ", "").split(" (")[0]


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_row(systems: list[System], row: Row, args: argparse.Namespace, tmp: Path) -> None:
    """Every rate of one row: runs interleaved between the systems, printed per rate."""
    for rate in args.rates:
        results: dict[str, list[Load]] = {s.name: [] for s in systems}
        for run in range(args.runs):
            for system in systems:
                wait_idle(systems)
                work = tmp / f"{row.sipp_transport}{'-tls' if row.tls else ''}-{rate}-{run}-{system.name}"
                load = one_load(system, row, rate, args.seconds, work)
                results[system.name].append(load)
                note(f"  {row.name} {rate}/s run {run + 1}/{args.runs} {system.name}: ok {load.ok} "
                     f"failed {load.failed} 503 {load.shed}")
        for i, system in enumerate(systems):
            print_system(row, rate, system.name, results[system.name], first=i == 0)
        print_ratio(results)
        sys.stdout.flush()


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    if not sipp_available():
        print("sipp (Debian sip-tester) is required", file=sys.stderr)
        return 2
    with_kamailio = kamailio_available()
    if not with_kamailio:
        note("kamailio (with its tls module) is not installed: Edgeway rows only")
    rows = args.rows
    if any(r.tls for r in rows) and stunnel_binary() is None:
        note("stunnel (Debian stunnel4) is not installed: no TLS row")
        rows = [r for r in rows if not r.tls]
    signal.signal(signal.SIGTERM, _terminate)
    kam_note = (f"Kamailio {kamailio_version()} (stateful record-routing proxy, children=2, tcp_children=2)"
                if with_kamailio else "no Kamailio")
    print_header(args, kam_note)
    try:
        with tempfile.TemporaryDirectory(prefix="calls-bench-") as tmp:
            for tls in (False, True):
                group = [r for r in rows if r.tls == tls]
                if not group:
                    continue
                bed = Path(tmp) / ("tls" if tls else "plain")
                bed.mkdir()
                with testbed(bed, tls, with_kamailio) as systems:
                    print(f"  [call control over {'TLS' if tls else 'TCP'}: "
                          + "; ".join(f"{s.name}: {s.detail}" for s in systems) + "]")
                    for row in group:
                        bench_row(systems, row, args, bed)
    except KeyboardInterrupt:
        note("interrupted: every process this bench started has been stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
