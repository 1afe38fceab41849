"""Calls per second through the traversal pair (SIPp UAC → edge → core → SIPp UAS).

Starts ``edgeway lab up``, then for each offered rate runs a bounded SIPp load
(``--seconds`` of calls, no RTP, 100 ms hold) and prints: calls offered, successful,
failed, achieved calls/s, and CPU ms per call on the edge and on the core. Repeats
``--runs`` times and prints medians. Loopback only; every process is stopped by PID.
Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgeway.lab.harness import SIPP_DIR, LabUp, cpu_seconds, sipp_available, sipp_result, start_sipp


def one_run(lab: LabUp, work: Path, rate: int, seconds: int) -> dict:
    calls = rate * seconds
    pids = lab.node_pids()
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    uas = start_sipp(["-sf", str(SIPP_DIR / "uas_echo.xml"), "-i", "127.0.0.4", "-p", "5060", "-t", "t1",
                      "-mi", "127.0.0.4", "-mp", "20000", "-m", str(calls)], work, "uas")
    t0 = time.monotonic()
    uac = start_sipp(["-sf", str(SIPP_DIR / "uac_basic.xml"), "-i", "127.0.0.5", "-p", "5070", "-t", "u1",
                      "-s", "alice", "-key", "domain", "corp.edgeway.test", "-d", "100", "-r", str(rate),
                      "-m", str(calls), "-l", str(rate * 5), "-timeout", str(seconds + 60), "127.0.0.2:5060"], work, "uac")
    res = sipp_result(uac, work, "uac", timeout_s=seconds + 90)
    elapsed = time.monotonic() - t0
    sipp_result(uas, work, "uas", timeout_s=10)
    cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in pids.items()}
    ok = max(res.successful, 1)
    return {"rate": rate, "calls": calls, "ok": res.successful, "failed": res.failed, "cps": res.successful / elapsed,
            "edge_ms": 1000 * cpu["edge"] / ok, "core_ms": 1000 * cpu["core"] / ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", default="50,100,200", help="offered calls/s, comma-separated")
    ap.add_argument("--seconds", type=int, default=10, help="seconds of load per run (bounded)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not sipp_available():
        print("sipp (Debian sip-tester) is required", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        lab = LabUp(Path(tmp) / "lab")
        lab.start()
        try:
            print(f"{'offered':>8} {'ok':>6} {'failed':>6} {'calls/s':>8} {'edge ms/call':>13} {'core ms/call':>13}")
            for rate in [int(r) for r in args.rates.split(",")]:
                runs = []
                for i in range(args.runs):
                    work = Path(tmp) / f"r{rate}-{i}"
                    work.mkdir()
                    runs.append(one_run(lab, work, rate, args.seconds))
                med = {k: statistics.median(r[k] for r in runs) for k in ("ok", "failed", "cps", "edge_ms", "core_ms")}
                print(f"{rate:>8} {med['ok']:>6.0f} {med['failed']:>6.0f} {med['cps']:>8.1f} {med['edge_ms']:>13.2f} {med['core_ms']:>13.2f}"
                      f"   (median of {args.runs}; cps {min(r['cps'] for r in runs):.1f}-{max(r['cps'] for r in runs):.1f})")
        finally:
            lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
