"""Remote registration through the traversal pair (issue 9 items 5–6), with baresip as
the remote client and SIPp as the inside caller:

    baresip carol@remote.edgeway.test 127.0.0.8 (TLS, digest credentials)
      REGISTER → edge 127.0.0.2:5061/TLS → Path (flow token of baresip's connection)
               → traversal → core 127.0.0.3 (its own registrar, remote.edgeway.test)
    SIPp UAC 127.0.0.4 (call control) INVITE carol@remote.edgeway.test → core
      → LocalZone binding, Path as route set → traversal → edge
      → down baresip's own TLS connection (never to its Contact address)

baresip answers automatically; RTP flows both ways through both relays. Checked: the
core's registrar challenged and then bound carol (``registered``), the call reached
baresip over its registration's connection and was established, SIPp completed it,
the edge relayed RTP both ways, and after baresip is gone the next call is refused
without reaching anyone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from edgeway.lab.topology import REMOTE_DOMAIN, REMOTE_USERS
from support.harness import PCAP, SIPP_DIR, Baresip, LabUp, baresip_available, sipp_result, start_sipp

pytestmark = [
    pytest.mark.skipif(not baresip_available(), reason="baresip (Debian baresip-core) is not installed"),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is not installed"),
]

BARESIP_IP = "127.0.0.8"
INSIDE_CALLER = "127.0.0.4"
CORE = ("127.0.0.3", 5060)
ACCOUNT = (
    f'<sip:carol@{REMOTE_DOMAIN};transport=tls>;outbound="sip:127.0.0.2:5061;transport=tls"'
    f";auth_pass={REMOTE_USERS['carol']};regint=600;answermode=auto;audio_codecs=PCMA"
)


def _events(lab: LabUp, node: str, name: str) -> list[dict]:
    return [e for e in lab.events(node) if e.get("event") == name]


def _call(tmp_path: Path, name: str, hold_ms: int = 2000) -> tuple:
    """One call from the inside caller to carol (uac_pcap.xml: RTP from the pcap)."""
    d = tmp_path / name
    d.mkdir()
    p = start_sipp(["-sf", str(SIPP_DIR / "uac_pcap.xml"), "-i", INSIDE_CALLER, "-p", "5090", "-t", "t1",
                    "-s", "carol", "-key", "domain", REMOTE_DOMAIN, "-key", "pcap", str(PCAP),
                    "-mi", INSIDE_CALLER, "-mp", "31000",
                    "-m", "1", "-d", str(hold_ms), "-recv_timeout", "8000", "-timeout", "30",
                    "-trace_msg", "-message_file", str(d / "messages.log"), f"{CORE[0]}:{CORE[1]}"], d, "uac")
    return sipp_result(p, d, "uac", timeout_s=40), d


def test_remote_client_registers_through_the_pair_and_is_called_over_its_connection(lab: LabUp, tmp_path: Path) -> None:
    bs = Baresip(tmp_path / "baresip", account=ACCOUNT, listen=f"{BARESIP_IP}:5070",
                 ca_file=lab.workdir / "pki" / "ca.pem", ctrl=(BARESIP_IP, 4445), max_seconds=60)
    try:
        bs.start()
        # (baresip's REGISTER_OK may fire before its control connection is up: ask the core.)
        deadline = time.monotonic() + 10
        while not (registered := _events(lab, "core", "registered")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert registered and registered[-1]["aor"] == f"sip:carol@{REMOTE_DOMAIN}", \
            f"baresip did not register:\n{bs.log()[-3000:]}"
        assert "200 OK (Edgeway/core) [1 binding]" in bs.log()

        res, d = _call(tmp_path, "call1")
        est = bs.wait_event("CALL_ESTABLISHED", timeout_s=5)
        assert res.successful == 1 and res.failed == 0, f"{res.log}\n{bs.log()[-3000:]}"
        assert est is not None, bs.log()[-3000:]
        call_id = est.get("id")
        time.sleep(0.5)
    finally:
        bs.stop()
    # The edge sent the INVITE down baresip's registration connection and relayed RTP
    # both ways (its events name the call by the inside Call-ID, SIPp's).
    deadline = time.monotonic() + 5
    while not (media := [e for e in _events(lab, "edge", "media closed") if res.call_id_marker in e.get("call_id", "")]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert media, f"no media closed event on the edge for SIPp's call ({res.call_id_marker}); baresip saw {call_id}"
    st = media[0]["stats"]
    assert st["a_to_b"]["rtp_packets"] > 20 and st["b_to_a"]["rtp_packets"] > 20, st
    assert st["b"]["sdp_rtp"][0] == BARESIP_IP, st  # the far side is baresip's media
    # baresip is gone: its connection is closed, the next call is refused, nothing rings.
    time.sleep(0.5)
    res2, _ = _call(tmp_path, "call2", hold_ms=500)
    assert res2.successful == 0 and res2.failed == 1, res2.log
