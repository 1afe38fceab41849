"""SIPp (Debian sip-tester) drives calls through ``edgeway lab up``: an independent SIP
implementation on both ends, RTP from SIPp's g711a.pcap echoed by the far UAS.

Each run: 0 failed calls, and for every call RTP crossed both relays in both directions
(the echo coming back proves the packets reached the far side). Call count and rate:
EDGEWAY_SIPP_CALLS (default 500) at EDGEWAY_SIPP_RATE calls/s (default 20).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.harness import PCAP, SIPP_DIR, LabUp, sipp_available, sipp_result, start_sipp

pytestmark = pytest.mark.skipif(not sipp_available(), reason="sipp (Debian sip-tester) is not installed")

CALLS = int(os.environ.get("EDGEWAY_SIPP_CALLS", "500"))
RATE = int(os.environ.get("EDGEWAY_SIPP_RATE", "20"))
HOLD_MS = 1000



def _media_by_call(lab: LabUp, node: str, marker: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for ev in lab.events(node):
        if ev.get("event") == "media closed" and marker in ev.get("call_id", ""):
            out.setdefault(ev["call_id"], []).append(ev["stats"])
    return out


def _run(lab: LabUp, tmp: Path, *, uas: list[str], uac: list[str]) -> None:
    uas_p = start_sipp(["-sf", str(SIPP_DIR / "uas_echo.xml"), *uas, "-rtp_echo", "-m", str(CALLS)], tmp, "uas")
    try:
        uac_p = start_sipp(
            ["-sf", str(SIPP_DIR / "uac_pcap.xml"), *uac, "-key", "pcap", str(PCAP), "-d", str(HOLD_MS),
             "-r", str(RATE), "-m", str(CALLS), "-l", str(RATE * 10), "-timeout", "300"],
            tmp, "uac",
        )
        res = sipp_result(uac_p, tmp, "uac", timeout_s=CALLS / RATE + 120)
    finally:
        uas_res = sipp_result(uas_p, tmp, "uas", timeout_s=15)
    assert res.returncode == 0 and res.failed == 0 and res.successful == CALLS, res.log
    assert uas_res.successful == CALLS, uas_res.log
    for node in ("edge", "core"):
        media = _media_by_call(lab, node, res.call_id_marker)
        assert len(media) == CALLS, f"{node}: media sessions for {len(media)} of {CALLS} calls"
        silent = [cid for cid, sessions in media.items()
                  if not all(s["a_to_b"]["rtp_packets"] > 0 and s["b_to_a"]["rtp_packets"] > 0 for s in sessions)]
        assert not silent, f"{node}: no RTP one way for {len(silent)} calls, e.g. {silent[:3]}"


@pytest.mark.parametrize("uac_transport", ["u1", "t1"], ids=["uac-udp", "uac-tcp"])
def test_outside_to_inside(lab: LabUp, tmp_path: Path, uac_transport: str) -> None:
    """SIPp UAC outside → edge 127.0.0.2:5060 → traversal → core → SIPp UAS on the
    call-control neighbour address 127.0.0.4:5060 over TCP."""
    _run(
        lab, tmp_path,
        uas=["-i", "127.0.0.4", "-p", "5060", "-t", "t1", "-mi", "127.0.0.4", "-mp", "20000"],
        uac=["-i", "127.0.0.5", "-p", "5070", "-t", uac_transport, "-s", "alice", "-key", "domain", "corp.edgeway.test",
             "-mi", "127.0.0.5", "-mp", "30000", "127.0.0.2:5060"],
    )


def test_inside_to_outside(lab: LabUp, tmp_path: Path) -> None:
    """SIPp UAC behind the core (call-control address 127.0.0.4, TCP) → core → traversal
    → edge → DNS zone (SRV _sip._udp.partner.edgeway.test) → SIPp UAS 127.0.0.5:5060/UDP."""
    _run(
        lab, tmp_path,
        uas=["-i", "127.0.0.5", "-p", "5060", "-t", "u1", "-mi", "127.0.0.5", "-mp", "20000"],
        uac=["-i", "127.0.0.4", "-p", "5070", "-t", "t1", "-s", "bob", "-key", "domain", "partner.edgeway.test",
             "-mi", "127.0.0.4", "-mp", "30000", "127.0.0.3:5060"],
    )
