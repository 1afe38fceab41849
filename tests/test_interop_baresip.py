"""baresip (Debian 1.0) as the outside user agent: an SRTP (SDES) call over TLS to the
edge, interworked to plain RTP toward a SIPp UAS behind the core.

    baresip carol@partner.edgeway.test 127.0.0.8 (TLS, RTP/SAVP, mediaenc=srtp-mand)
      → edge 127.0.0.2:5061/TLS  (traversal zone media_encryption "off": SRTP ↔ RTP)
      → traversal → core 127.0.0.3
      → SIPp UAS (uas_echo.xml, -rtp_echo) 127.0.0.4:5060/TCP, RTP/AVP PCMA

baresip's microphone is a sine (``ausine``), its speaker an unconnected ``aubridge``
device, so no sound card is needed. It is driven over ``ctrl_tcp``: dial, ~3 s of
media, hangup. It is given the lab CA (``sip_cafile``), but baresip 1.0 / libre 1.1
does not enforce server certificate verification (any certificate is accepted), so
the test checks the edge's certificate against the lab CA itself.

Checked: the UAS answered exactly one call and baresip reported it established; the
INVITE the UAS received offered ``RTP/AVP`` without ``a=crypto``; the edge's
``media closed`` event for the call has RTP both ways, SRTP contexts only on the side
facing baresip, every SRTP packet baresip sent was authenticated and decrypted, its
SRTCP too, and baresip authenticated and decoded the echo the edge encrypted. The
only SRTP drops allowed are the (at most two) RTCP packets baresip 1.0 sends in
clear on an SRTP stream.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import time
from pathlib import Path

import pytest

from support.harness import (
    SIPP_DIR,
    Baresip,
    LabUp,
    baresip_available,
    sipp_result,
    start_sipp,
)

pytestmark = [
    pytest.mark.skipif(not baresip_available(), reason="baresip (Debian baresip-core) is not installed"),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is not installed"),
]

BARESIP_IP = "127.0.0.8"
EDGE = ("127.0.0.2", 5061)
EDGE_NAME = "edge.corp.edgeway.test"
UAS = ("127.0.0.4", 5060)
ALICE_URI = "sip:alice@corp.edgeway.test"
ACCOUNT = (
    '<sip:carol@partner.edgeway.test;transport=tls>;outbound="sip:127.0.0.2:5061;transport=tls"'
    ";mediaenc=srtp-mand;regint=0;audio_codecs=PCMA"
)
SUITE = "AES_CM_128_HMAC_SHA1_80"
HOLD_S = 3.0
#: RTP packets of a ~3 s 20 ms-ptime call, with slack (150 expected each way).
MIN_PACKETS = 100
#: RTCP packets baresip 1.0 sends in clear on an SRTP stream (see Baresip's docstring).
CLEARTEXT_RTCP = 2



def _tcp_listening(ip: str, port: int) -> bool:
    """Whether a TCP socket listens on ip:port (Linux /proc/net/tcp, no connection made)."""
    want = f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want and fields[3] == "0A":
            return True
    return False


def _invite_sdp(trace: str) -> str:
    """The SDP body of the first INVITE SIPp logged as received."""
    m = re.search(r"message received \[\d+\] bytes :\s*\n\s*INVITE .*?(?=\n-{5,}|\Z)", trace, re.DOTALL)
    assert m, f"no INVITE in the UAS message trace:\n{trace[:3000]}"
    return m.group(0).replace("\r\n", "\n").partition("\n\n")[2]


def _edge_media_closed(lab: LabUp, call_id: str) -> list[dict]:
    return [ev for ev in lab.events("edge") if ev.get("event") == "media closed" and ev.get("call_id") == call_id]


def _tls_failures(lab: LabUp) -> str:
    """The edge's ``tls handshake failed`` events, for assertion messages."""
    return "\n".join(f"edge: tls handshake failed from {ev.get('peer')}: {ev.get('cause')}"
                     for ev in lab.events("edge") if ev.get("event") == "tls handshake failed")


def test_edge_certificate_verifies_against_lab_ca(lab: LabUp) -> None:
    """What baresip 1.0 would check if it enforced ``sip_cafile``: the edge's TLS
    certificate chains to the lab CA and names edge.corp.edgeway.test."""
    ctx = ssl.create_default_context(cafile=str(lab.workdir / "pki" / "ca.pem"))
    try:
        with socket.create_connection(EDGE, timeout=6) as raw, ctx.wrap_socket(raw, server_hostname=EDGE_NAME) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            sans = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "DNS"]
            assert EDGE_NAME in sans
    except OSError as exc:  # ssl.SSLError, TimeoutError, ConnectionError
        time.sleep(0.5)
        pytest.fail(f"TLS handshake with the edge failed: {exc!r}\n{_tls_failures(lab)}")


def test_baresip_srtp_over_tls_to_plain_rtp_inside(lab: LabUp, tmp_path: Path) -> None:
    ca = lab.workdir / "pki" / "ca.pem"
    assert ca.exists(), ca

    uas = start_sipp(
        ["-sf", str(SIPP_DIR / "uas_echo.xml"), "-i", UAS[0], "-p", str(UAS[1]), "-t", "t1",
         "-mi", UAS[0], "-mp", "20000", "-rtp_echo", "-m", "1", "-timeout", "40",
         "-trace_msg", "-message_file", str(tmp_path / "uas_messages.log")],
        tmp_path, "uas",
    )
    bs = Baresip(tmp_path / "baresip", account=ACCOUNT, listen=f"{BARESIP_IP}:5070", ca_file=ca,
                 ctrl=(BARESIP_IP, 4444), max_seconds=40)
    callstat = ""
    try:
        end = time.monotonic() + 5
        while not _tcp_listening(*UAS) and time.monotonic() < end and uas.poll() is None:
            time.sleep(0.1)
        assert _tcp_listening(*UAS), "SIPp UAS is not listening on 127.0.0.4:5060/TCP"
        bs.start()
        resp = bs.command("dial", ALICE_URI)
        assert resp.get("ok"), resp
        est = bs.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), timeout_s=10)
        assert est is not None and est["type"] == "CALL_ESTABLISHED", (
            f"baresip: call not established ({est}):\n{bs.log()[-3000:]}\n{_tls_failures(lab)}")
        call_id = est.get("id")
        time.sleep(HOLD_S)
        callstat = bs.command("callstat").get("data", "")
        resp = bs.command("hangup")
        assert resp.get("ok"), resp
        closed = bs.wait_event("CALL_CLOSED", timeout_s=5)
        assert closed is not None, f"baresip: no CALL_CLOSED after hangup:\n{bs.log()[-3000:]}"
        time.sleep(0.5)  # the call summary is printed as the call is freed
    finally:
        bs.stop()
        res = sipp_result(uas, tmp_path, "uas", timeout_s=10)

    log = bs.log()
    # -- answered: SIPp counted one successful call, baresip saw it established ----------
    assert res.successful == 1 and res.failed == 0, res.log
    assert "Call established" in log, log[-3000:]
    assert call_id, est

    # -- the inside saw plain RTP: RTP/AVP, no a=crypto ---------------------------------
    sdp = _invite_sdp((tmp_path / "uas_messages.log").read_text(errors="replace"))
    m_lines = [ln for ln in sdp.splitlines() if ln.startswith("m=audio")]
    assert m_lines and all(ln.split()[2] == "RTP/AVP" for ln in m_lines), sdp
    assert "a=crypto" not in sdp, sdp

    # -- the edge interworked the call: keyed toward baresip, RTP both ways --------------
    deadline = time.monotonic() + 5
    while not (sessions := _edge_media_closed(lab, call_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(sessions) == 1, f"edge media sessions for call {call_id}: {sessions}"
    st = sessions[0]["stats"]
    a, b, a_to_b, b_to_a = st["a"], st["b"], st["a_to_b"], st["b_to_a"]  # side A: baresip's
    assert a["srtp_inbound"] == SUITE and a["srtp_outbound"] == SUITE, st
    assert b["srtp_inbound"] is None and b["srtp_outbound"] is None, st
    assert a["latched_rtp"] and a["latched_rtp"][1] == a["sdp_rtp"][1], st  # baresip's RTP port
    assert a_to_b["rtp_packets"] >= MIN_PACKETS and b_to_a["rtp_packets"] >= MIN_PACKETS, st

    # -- baresip's numbers: every SRTP packet it sent got through the edge's decryption, and
    #    it authenticated what the edge encrypted ------------------------------------------
    summary = bs.call_summary()
    assert summary and "audio" in summary, f"no call summary in the baresip log:\n{log[-3000:]}\n{callstat}"
    audio = summary["audio"]
    # The edge counts a packet only after authenticating and decrypting it (the last one
    # or two may still be in flight when the BYE closes the relay).
    assert audio["tx_packets"] - 2 <= a_to_b["rtp_packets"] <= audio["tx_packets"], (audio, st)
    # baresip counts a packet only after its SRTP context authenticated it.
    assert b_to_a["rtp_packets"] - 2 <= audio["rx_packets"] <= b_to_a["rtp_packets"], (audio, st)
    assert audio["rx_packets"] >= MIN_PACKETS and audio["rx_errors"] == 0, audio
    assert "srtp: failed to decrypt" not in log, log[-3000:]

    # -- SRTP drops: none from the plain side, no replays, and toward the inside only
    #    baresip's cleartext RTCP; its SRTCP (the APP "PING" at media start) went through ----
    assert a_to_b["rtcp_packets"] >= 1, st
    for d in (a_to_b, b_to_a):
        assert d["srtp_replay_drops"] == 0, st
    assert b_to_a["srtp_auth_failures"] == 0 and b_to_a["srtp_errors"] == 0, st
    assert a_to_b["srtp_auth_failures"] + a_to_b["srtp_errors"] <= CLEARTEXT_RTCP, st
    assert a_to_b["dropped"] == a_to_b["srtp_auth_failures"] + a_to_b["srtp_errors"], st
