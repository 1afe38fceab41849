"""``edgeway lab`` end to end: set-up, two calls with RTP, report, exit status 0."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def test_edgeway_lab_passes(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edgeway", "lab", "--workdir", str(tmp_path / "lab"), "--media-seconds", "1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"},
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "2/2 calls passed" in out
    for hop in ("bob(127.0.0.5) → edge", "edge → core", "core → alice(127.0.0.4)", "edge → bob(127.0.0.5)"):
        assert hop in out, hop
    assert elapsed < 60
