"""Remote registration through the traversal pair to an inside registrar that is not
Edgeway's (issue 9 item 5; seed 002 §2.3, catalogue case 32): Kamailio's ``registrar``
module stands in for call control, in both of the core's modes.

    baresip carol@ucm.edgeway.test 127.0.0.8 (TLS)
      REGISTER → edge 127.0.0.2:5061/TLS (Path entry: flow token of baresip's connection)
               → traversal → core 127.0.0.3
               → Call Control zone: Kamailio registrar 127.0.0.4:5060/TCP
                 default mode: Contact rewritten to the core (sip:ewr…@127.0.0.3), no Path
                 Path mode:    Contact kept, Path: <core>, <edge>
    SIPp UAC 127.0.0.4:5090 INVITE carol@ucm.edgeway.test → Kamailio lookup("location")
      → core (rewritten Contact, or Path) → traversal → edge → down baresip's own TLS
        connection; baresip answers, RTP flows both ways through both relays.

Checked per mode: what Kamailio stored (its log of the REGISTER it saved), that baresip
saw exactly its own binding in the 200, the call established through Kamailio, core and
edge, and RTP both ways on the edge's relay.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from edgeway.lab.topology import CALL_CONTROL_IP, CORE_IP, EDGE_IP, SIP_PORT, UCM_DOMAIN
from support.harness import (
    PCAP,
    SIPP_DIR,
    Baresip,
    Kamailio,
    LabUp,
    baresip_available,
    kamailio_available,
    sipp_result,
    start_sipp,
)

pytestmark = [
    pytest.mark.skipif(not baresip_available(), reason="baresip (Debian baresip-core) is not installed"),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.skipif(not kamailio_available(), reason="kamailio is not installed"),
]

BARESIP_IP = "127.0.0.8"
ACCOUNT = (f'<sip:carol@{UCM_DOMAIN};transport=tls>;outbound="sip:{EDGE_IP}:5061;transport=tls"'
           ";regint=600;answermode=auto;audio_codecs=PCMA")
REGISTRAR = Path(__file__).parent / "support" / "kamailio" / "registrar.cfg"


@pytest.fixture(scope="module", params=["rewrite", "path"])
def pair(request, tmp_path_factory):
    """``edgeway lab up`` with the core's SIP Path headers off ("rewrite") or on ("path"),
    and Kamailio's registrar at the core's call-control address; both stopped by PID."""
    mode = request.param
    base = tmp_path_factory.mktemp(f"kam-{mode}")
    up = LabUp(base / "lab", ["--sip-path-headers"] if mode == "path" else [])
    up.start()
    kam = Kamailio(base / "kamailio", {"DEBUG": "2", "IP": CALL_CONTROL_IP, "PORT": str(SIP_PORT), "DOMAIN": UCM_DOMAIN},
                   name="registrar", cfg=REGISTRAR, tls_cfg=None,
                   listen=[("udp", CALL_CONTROL_IP, SIP_PORT), ("tcp", CALL_CONTROL_IP, SIP_PORT)])
    try:
        kam.start()
    except Exception:
        up.stop()
        raise
    yield mode, up, kam, base
    kam.stop()
    up.stop()


def _saved(kam: Kamailio) -> list[tuple[str, str]]:
    """(contact, path) of every REGISTER Kamailio saved, from its log."""
    return re.findall(r"registrar: REGISTER \S+ contact (.*?) path (.*)$", kam.log_text(), re.MULTILINE)


def test_baresip_registers_to_kamailio_through_the_pair_and_is_called(pair, tmp_path: Path) -> None:
    mode, lab, kam, base = pair
    bs = Baresip(tmp_path / "baresip", account=ACCOUNT, listen=f"{BARESIP_IP}:5070",
                 ca_file=lab.workdir / "pki" / "ca.pem", ctrl=(BARESIP_IP, 4445), max_seconds=60)
    try:
        bs.start()
        deadline = time.monotonic() + 10
        while "[1 binding]" not in bs.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        # baresip saw exactly its own binding (an inside phone's would not be shown).
        assert re.search(r"carol@ucm\.edgeway\.test: \{0/TLS/v4\} 200 OK \(.*\) \[1 binding\]", bs.log()), \
            f"baresip did not register:\n{bs.log()[-3000:]}\n{kam.log_text()[-3000:]}"
        contact, path = _saved(kam)[-1]
        if mode == "rewrite":
            # Catalogue case 32, Path mode Off: the core's address in Contact, no Path.
            assert re.search(rf"sip:ewr[0-9a-f]{{20}}@{re.escape(CORE_IP)}:{SIP_PORT};transport=tcp", contact), contact
            assert path == "<null>", path
        else:
            # Path mode On: baresip's Contact unchanged; the core's Path entry on top of the edge's.
            assert BARESIP_IP in contact and CORE_IP not in contact, contact
            entries = [e.strip() for e in path.split(",")]
            assert len(entries) == 2 and f"@{CORE_IP}:{SIP_PORT};transport=tcp;lr" in entries[0] \
                and f"@{EDGE_IP}:" in entries[1], path

        d = tmp_path / "call"
        d.mkdir()
        p = start_sipp(["-sf", str(SIPP_DIR / "uac_pcap.xml"), "-i", CALL_CONTROL_IP, "-p", "5090", "-t", "t1",
                        "-s", "carol", "-key", "domain", UCM_DOMAIN, "-key", "pcap", str(PCAP),
                        "-mi", CALL_CONTROL_IP, "-mp", "31000",
                        "-m", "1", "-d", "2000", "-recv_timeout", "8000", "-timeout", "30",
                        "-trace_msg", "-message_file", str(d / "messages.log"), f"{CALL_CONTROL_IP}:{SIP_PORT}"], d, "uac")
        res = sipp_result(p, d, "uac", timeout_s=40)
        est = bs.wait_event("CALL_ESTABLISHED", timeout_s=5)
        assert res.successful == 1 and res.failed == 0, f"{res.log}\n{bs.log()[-3000:]}\n{kam.log_text()[-3000:]}"
        assert est is not None, bs.log()[-3000:]
        time.sleep(0.5)
    finally:
        bs.stop()
    # Kamailio sent the INVITE to the core: to the rewritten Contact, or along Path.
    via = re.findall(r"registrar: INVITE to (\S+) via (\S+)", kam.log_text())
    assert via, kam.log_text()[-3000:]
    ruri, du = via[-1]
    if mode == "rewrite":
        assert ruri.startswith("sip:ewr") and CORE_IP in ruri, via
    else:
        assert BARESIP_IP in ruri and CORE_IP in du, via
    # The edge relayed RTP both ways for SIPp's call, with baresip as its far side.
    deadline = time.monotonic() + 5
    while not (media := [e for e in lab.events("edge") if e.get("event") == "media closed"
                         and res.call_id_marker in e.get("call_id", "")]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert media, f"no media closed event on the edge for SIPp's call ({res.call_id_marker})"
    st = media[0]["stats"]
    assert st["a_to_b"]["rtp_packets"] > 20 and st["b_to_a"]["rtp_packets"] > 20, st
    assert st["b"]["sdp_rtp"][0] == BARESIP_IP, st
