"""Process harness for tests and benchmarks: ``edgeway lab up`` as a process, SIPp
runs against it, and the CPU time of the node processes.

Every process started here is stopped by the helper that started it, by its PID
(its whole session, SIGINT first, SIGKILL after a grace period).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: SIPp scenarios shipped with the lab (UAC with pcap RTP, UAS with RTP echo, ...).
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
PCAP = Path("/usr/share/sip-tester/g711a.pcap")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, grace_s: float = 10.0) -> None:
    """Stop ``proc`` (its whole session) with ``sig``, then SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class LabUp:
    """``edgeway lab up`` in ``workdir``: ``start()`` waits until it prints that it is up."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.out = workdir.parent / f"{workdir.name}.out"

    def start(self, timeout_s: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeway", "lab", "up", "--workdir", str(self.workdir)],
            stdout=open(self.out, "w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "COLUMNS": "120"},
        )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if "Press Ctrl-C" in self.out.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        text = self.out.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"edgeway lab up did not come up:\n{text[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def node_pids(self) -> dict[str, int]:
        """Node name → PID, from the ``<node> started on … (pid N)`` lines lab up prints."""
        import re

        return {m.group(1): int(m.group(2)) for m in re.finditer(r"(edge|core) started on \S+ \(pid (\d+)\)", self.out.read_text(errors="replace"))}

    def events(self, node: str) -> list[dict]:
        path = self.workdir / f"{node}.events.jsonl"
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    call_id_marker: str
    log: str


def sipp_available() -> bool:
    return shutil.which("sipp") is not None and PCAP.exists()


def start_sipp(args: list[str], workdir: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["sipp", *args, "-nostdin", "-trace_err", "-trace_stat", "-stf", str(workdir / f"{name}.csv"), "-fd", "1"],
        cwd=workdir, stdout=open(workdir / f"{name}.out", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def sipp_result(proc: subprocess.Popen, workdir: Path, name: str, timeout_s: float) -> SippResult:
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGTERM, 5)
        rc = -1
    ok = failed = 0
    path = workdir / f"{name}.csv"
    if path.exists():
        rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
        if len(rows) >= 2:
            head, last = rows[0], rows[-1]
            ok = int(last[head.index("SuccessfulCall(C)")])
            failed = int(last[head.index("FailedCall(C)")])
    log = (workdir / f"{name}.out").read_text(errors="replace")[-2000:]
    for err in workdir.glob("*_errors.log"):
        log += "\n" + err.read_text(errors="replace")[-2000:]
    return SippResult(rc, ok, failed, f"-{proc.pid}@", log)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
