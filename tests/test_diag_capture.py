"""Diagnostic capture (issue 11 item 4): ``edgeway diag start | mark | stop`` on a running
lab node; the archive's pcap opens in tshark and shows the SIP ladder of a call in clear,
the traversal (TLS) leg included."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from support.harness import LabUp

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (Debian tshark) is not installed")


def _edgeway(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeway", *args], capture_output=True, text=True, timeout=60)


def test_capture_shows_the_tls_leg_in_clear(lab: LabUp, tmp_path: Path) -> None:
    edge = str(lab.workdir / "edge.toml")
    out = _edgeway("diag", "start", "--dir", str(tmp_path), "-c", edge)
    assert out.returncode == 0 and "capturing into" in out.stdout, out
    assert _edgeway("diag", "start", "-c", edge).returncode == 2  # one at a time
    assert _edgeway("diag", "mark", "before the call", "-c", edge).returncode == 0
    # inside → core → traversal (TLS, 7001) → edge: no outside target, 404 back down the traversal.
    _edgeway("call", "sip:nobody@nowhere.edgeway.test", "--via", "127.0.0.3:5060", "--transport", "tcp",
             "--bind", "127.0.0.4", "--duration", "1")
    out = _edgeway("diag", "stop", "-c", edge)
    assert out.returncode == 0 and "archive:" in out.stdout, out
    archive = Path(out.stdout.rsplit("archive:", 1)[1].strip())
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "x", filter="data")
    [pcap] = [n for n in names if n.endswith("/sip.pcap")]
    assert any(n.endswith("/events.jsonl") for n in names) and any(n.endswith("/marks.txt") for n in names)
    shown = subprocess.run(["tshark", "-r", str(tmp_path / "x" / pcap), "-d", "udp.port==7001,sip", "-Y", "sip",
                            "-T", "fields", "-e", "ip.src", "-e", "udp.dstport", "-e", "sip.Method",
                            "-e", "sip.Status-Code", "-e", "sip.r-uri"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split("\t") for line in shown.stdout.splitlines()]
    # The INVITE the core sent over the traversal's TLS connection, decoded as SIP.
    assert any(r[2] == "INVITE" and r[0] == "127.0.0.3" and r[4] == "sip:nobody@nowhere.edgeway.test" for r in rows), rows
    assert any(r[3] and int(r[3]) >= 400 for r in rows), rows  # the failure going back
    events = (tmp_path / "x" / next(n for n in names if n.endswith("/events.jsonl"))).read_text()
    assert '"diag mark"' in events and "before the call" in events
