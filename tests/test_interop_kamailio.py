"""Kamailio stands in for the cloud calling service's SBC (seed 003 §2.1, §2.2, §3, §4, §11)
in front of ``edgeway lab up``: an independent SIP and TLS implementation on the far side
of the edge's mutual-TLS port.

    cloud user (SIPp)  127.0.0.7:5060/udp
    cloud SBC (Kamailio) udp:127.0.0.6:5060, tls:127.0.0.6:5062 (mutual TLS, lab CA,
                         pki/cloud.pem: SANs l2sip-a… and callservice.cloud.edgeway.test)
    edge  127.0.0.2:5062 mutual TLS, zone "Hybrid Call Services DNS"
    core  127.0.0.3 → call control (SIPp) 127.0.0.4:5060/tcp

1. cloud → edge → core → inside, classified into the Hybrid zone by the SBC's SAN;
2. inside → core → edge → cloud: Modify DNS request (SRV
   ``_sips._tcp.callservice.cloud.edgeway.test``), mutual TLS to Kamailio (which verifies
   the edge's certificate), SRTP (SDES) on the cloud leg, plain RTP inside;
3. mutual-TLS refusals: Kamailio presenting a certificate from another CA (the edge
   refuses it, untrusted CA), and Kamailio not trusting the edge's CA (the edge notices
   the TLS 1.3 post-handshake rejection on its first read).

Other suites use the same loopback addresses: run under ``flock /tmp/edgeway-lab.lock``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from support.harness import (
    PCAP,
    SIPP_DIR,
    Kamailio,
    LabUp,
    kamailio_available,
    sipp_available,
    sipp_result,
    start_sipp,
    stop_process,
)
from edgeway.lab.topology import (
    CALL_CONTROL_IP,
    CLOUD_DOMAIN,
    CLOUD_IP,
    CLOUD_SBC_FQDN,
    CLOUD_SERVICE_FQDN,
    CLOUD_USER_IP,
    CORE_IP,
    CORP_DOMAIN,
    EDGE_IP,
    HYBRID_ZONE,
    MTLS_PORT,
    SIP_PORT,
)
from edgeway.security.pki import write_lab_pki

pytestmark = [
    pytest.mark.skipif(not sipp_available(), reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.skipif(not kamailio_available(), reason="kamailio with its tls module is not installed"),
]

CALLS = 10
RATE = 5
HOLD_MS = 500
CLOUD_UAC_PORT = 5070
INSIDE_UAC_PORT = 5070
#: The cloud users' domain: an organisation's subdomain of the cloud domain, as
#: ``<org>.call.ciscospark.com`` (seed 003 §2.2); the lab's "Hybrid outbound" rule
#: matches ``.*@.*\.cloud\.edgeway\.test``. (A bare ``user@cloud.edgeway.test`` falls to
#: "Outbound to DNS" and the default DNS algorithm: ``_sips._tcp.cloud.edgeway.test`` →
#: port 5061, seed 003 §4.2's failure.)
CLOUD_ORG_DOMAIN = f"example.{CLOUD_DOMAIN}"

#: Cloud-side UAS answering the edge's SDES offer: RTP/SAVP with the offer's first
#: a=crypto line (tag 1 AES_CM_128_HMAC_SHA1_80, same key), so RTP echoed unchanged
#: by -rtp_echo decrypts at the edge: the SRTP leg is proved end to end.
UAS_SRTP = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="edgeway uas srtp answer">
  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp="a=crypto:1 [[:print:]]*" search_in="body" check_it="true" assign_to="crypto"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0
    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/SAVP 8
      a=rtpmap:8 PCMA/8000
      [$crypto]
    ]]>
  </send>
  <recv request="ACK" rtd="true" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0
    ]]>
  </send>
  <timewait milliseconds="2000"/>
</scenario>
"""


def _re(domain: str) -> str:
    return domain.replace(".", "[.]")


def sbc_values(cert: Path, key: Path, ca: Path) -> dict[str, str]:
    """Template values of cloud-sbc.cfg / tls.cfg for the lab plan."""
    return {
        "DEBUG": "2", "SBC_IP": CLOUD_IP, "UDP_PORT": str(SIP_PORT), "TLS_PORT": str(MTLS_PORT),
        "SBC_FQDN": CLOUD_SBC_FQDN, "CORP_DOMAIN_RE": _re(CORP_DOMAIN), "CLOUD_DOMAIN_RE": _re(CLOUD_DOMAIN),
        "EDGE_IP": EDGE_IP, "EDGE_MTLS_PORT": str(MTLS_PORT),
        "CLOUD_USER_IP": CLOUD_USER_IP, "CLOUD_USER_PORT": str(SIP_PORT),
        "CERT": str(cert), "KEY": str(key), "CA": str(ca),
    }


def make_sbc(workdir: Path, cert: Path, key: Path, ca: Path, name: str = "cloud-sbc") -> Kamailio:
    return Kamailio(workdir, sbc_values(cert, key, ca), name=name,
                    listen=[("udp", CLOUD_IP, SIP_PORT), ("tcp", CLOUD_IP, MTLS_PORT)])



@pytest.fixture(scope="module")
def sbc(lab: LabUp) -> Kamailio:
    pki = lab.workdir / "pki"
    k = make_sbc(lab.workdir.parent / "sbc", pki / "cloud.pem", pki / "cloud.key", pki / "ca.pem")
    k.start()
    yield k
    k.stop()


def _events(lab: LabUp, name: str, marker: str | None = None) -> list[dict]:
    return [e for e in lab.events("edge")
            if e.get("event") == name and (marker is None or marker in str(e.get("call_id", "")))]


def _wait_for(pred, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def _messages(path: Path) -> list[str]:
    """SIP messages of a SIPp -trace_msg file, split on its ``-----`` separators."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [m.strip("\n") for m in re.split(r"(?m)^-{10,}.*$", text) if m.strip()]


def _received(msgs: list[str], start: str) -> list[str]:
    """Messages SIPp received whose first SIP line starts with ``start``."""
    out = []
    for m in msgs:
        head, _, rest = m.partition("\n")
        if "message received" in head:
            first = next((ln.strip() for ln in rest.splitlines() if ln.strip()), "")
            if first.startswith(start):
                out.append(rest)
    return out


def _media_ok(lab: LabUp, node: str, marker: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for ev in lab.events(node):
        if ev.get("event") == "media closed" and marker in ev.get("call_id", ""):
            out.setdefault(ev["call_id"], []).append(ev["stats"])
    return out


def _run_calls(tmp: Path, *, uas_sf: Path, uas: list[str], uac: list[str], calls: int = CALLS):
    uas_p = start_sipp(["-sf", str(uas_sf), *uas, "-rtp_echo", "-m", str(calls),
                        "-trace_msg", "-message_file", str(tmp / "uas.msg")], tmp, "uas")
    try:
        time.sleep(0.3)
        uac_p = start_sipp(
            ["-sf", str(SIPP_DIR / "uac_pcap.xml"), *uac, "-key", "pcap", str(PCAP), "-d", str(HOLD_MS),
             "-r", str(RATE), "-m", str(calls), "-l", str(calls), "-timeout", "30",
             "-trace_msg", "-message_file", str(tmp / "uac.msg")],
            tmp, "uac",
        )
        res = sipp_result(uac_p, tmp, "uac", timeout_s=30)
    finally:
        uas_res = sipp_result(uas_p, tmp, "uas", timeout_s=10)
    return res, uas_res


def _assert_media(lab: LabUp, marker: str, calls: int) -> None:
    for node in ("edge", "core"):
        media = _media_ok(lab, node, marker)
        assert len(media) == calls, f"{node}: media sessions for {len(media)} of {calls} calls"
        silent = [cid for cid, sessions in media.items()
                  if not all(s["a_to_b"]["rtp_packets"] > 0 and s["b_to_a"]["rtp_packets"] > 0 for s in sessions)]
        assert not silent, f"{node}: no RTP one way for {len(silent)} calls, e.g. {silent[:3]}"


def test_cloud_to_inside(lab: LabUp, sbc: Kamailio, tmp_path: Path) -> None:
    """SIPp 127.0.0.7/UDP → Kamailio 127.0.0.6:5060 → mutual TLS → edge 127.0.0.2:5062
    (Hybrid zone by the SAN callservice.cloud.edgeway.test) → traversal → core → SIPp UAS
    127.0.0.4:5060/TCP."""
    res, uas_res = _run_calls(
        tmp_path, uas_sf=SIPP_DIR / "uas_echo.xml",
        uas=["-i", CALL_CONTROL_IP, "-p", str(SIP_PORT), "-t", "t1", "-mi", CALL_CONTROL_IP, "-mp", "20000"],
        uac=["-i", CLOUD_USER_IP, "-p", str(CLOUD_UAC_PORT), "-t", "u1", "-s", "alice", "-key", "domain", CORP_DOMAIN,
             "-mi", CLOUD_USER_IP, "-mp", "30000", f"{CLOUD_IP}:{SIP_PORT}"],
    )
    diag = res.log + "\n--- kamailio ---\n" + sbc.log_text()[-3000:]
    assert res.returncode == 0 and res.failed == 0 and res.successful == CALLS, diag
    assert uas_res.successful == CALLS, uas_res.log

    classified = [e for e in _events(lab, "tls classified") if e.get("listener") == "mtls"]
    assert classified, "no `tls classified` event for the mutual-TLS listener"
    assert all(e["zone"] == HYBRID_ZONE and e["matched_identity"] == CLOUD_SERVICE_FQDN for e in classified), classified
    # CN first, then the SANs in certificate order, up to the first match (seed 003 §3.2).
    assert classified[0]["candidates"] == f"{CLOUD_SBC_FQDN}{CLOUD_SBC_FQDN}{CLOUD_SERVICE_FQDN}", classified[0]
    searches = [e for e in _events(lab, "search completed", res.call_id_marker) if e.get("found", True)]
    per_call = {e["call_id"]: e for e in searches}
    assert len(per_call) == CALLS, f"search completed for {len(per_call)} of {CALLS} calls"
    assert {e["rule"] for e in searches} == {"Hybrid inbound"}, searches[:3]

    # The INVITEs reached the inside UAS with the SBC's double Record-Route ahead of the edge.
    invites = _received(_messages(tmp_path / "uas.msg"), "INVITE ")
    assert len(invites) >= CALLS
    rr = re.findall(r"(?im)^record-route:.*$", invites[0])
    assert any(f"{CLOUD_IP}:{MTLS_PORT};transport=tls" in h for h in rr), rr
    assert any(f"sip:{CLOUD_IP};" in h or f"sip:{CLOUD_IP}:{SIP_PORT};" in h for h in rr), rr
    _assert_media(lab, res.call_id_marker, CALLS)


def test_inside_to_cloud(lab: LabUp, sbc: Kamailio, tmp_path: Path) -> None:
    """SIPp 127.0.0.4/TCP → core → traversal → edge → Hybrid zone (Modify DNS request:
    SRV _sips._tcp.callservice.cloud.edgeway.test) → mutual TLS → Kamailio 127.0.0.6:5062
    → SIPp UAS 127.0.0.7:5060/UDP, calling user@example.cloud.edgeway.test. SRTP on the
    cloud leg, RTP/AVP inside."""
    uas_sf = tmp_path / "uas_srtp.xml"
    uas_sf.write_text(UAS_SRTP)
    res, uas_res = _run_calls(
        tmp_path, uas_sf=uas_sf,
        uas=["-i", CLOUD_USER_IP, "-p", str(SIP_PORT), "-t", "u1", "-mi", CLOUD_USER_IP, "-mp", "20000"],
        uac=["-i", CALL_CONTROL_IP, "-p", str(INSIDE_UAC_PORT), "-t", "t1", "-s", "user", "-key", "domain", CLOUD_ORG_DOMAIN,
             "-mi", CALL_CONTROL_IP, "-mp", "30000", f"{CORE_IP}:{SIP_PORT}"],
    )
    diag = res.log + "\n--- uas ---\n" + uas_res.log + "\n--- kamailio ---\n" + sbc.log_text()[-3000:]
    assert res.returncode == 0 and res.failed == 0 and res.successful == CALLS, diag
    assert uas_res.successful == CALLS, diag

    resolved = [e for e in _events(lab, "dns resolved") if e.get("zone") == HYBRID_ZONE]
    assert resolved, "no `dns resolved` event for the Hybrid zone"
    for e in resolved:
        assert e["modify_dns_request"] is True and e["host"] == CLOUD_SERVICE_FQDN, e
        # One query sent: the SRV of the configured domain, no NAPTR (seed 003 §4.2); the
        # SRV target's address came in the additional section.
        sent = [q for q in e["queries"] if "from additional section" not in q]
        assert len(sent) == 1 and sent[0].startswith(f"_sips._tcp.{CLOUD_SERVICE_FQDN} SRV:"), e["queries"]
        assert not any("NAPTR" in q for q in e["queries"]), e["queries"]
        assert e["targets"] == [f"tls:{CLOUD_IP}:{MTLS_PORT}"] or e["targets"][0].endswith(f":{MTLS_PORT}"), e
    searches = {e["call_id"]: e for e in _events(lab, "search completed", res.call_id_marker) if e.get("rule")}
    assert len(searches) == CALLS and {e["rule"] for e in searches.values()} == {"Hybrid outbound"}, searches

    # Cloud leg: the INVITE the cloud user got (through Kamailio) offers SRTP (SDES) and
    # keeps the dialled URI (Modify DNS request does not change the Request-URI).
    invites = _received(_messages(tmp_path / "uas.msg"), "INVITE ")
    assert len(invites) >= CALLS, f"{len(invites)} INVITEs traced at the cloud UAS"
    for inv in invites:
        first = next(ln.strip() for ln in inv.splitlines() if ln.strip())
        assert first.startswith(f"INVITE sip:user@{CLOUD_ORG_DOMAIN} "), first
        assert re.search(r"(?m)^m=audio \d+ RTP/SAVP ", inv), inv
        assert re.search(r"(?m)^a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:", inv), inv
        assert re.search(rf"(?im)^via: SIP/2\.0/UDP {re.escape(CLOUD_IP)}", inv), inv
    # Inside leg: the answer the inside caller got is plain RTP.
    oks = [m for m in _received(_messages(tmp_path / "uac.msg"), "SIP/2.0 200") if "m=audio" in m]
    assert len(oks) >= CALLS
    for ok in oks:
        assert re.search(r"(?m)^m=audio \d+ RTP/AVP ", ok) and "a=crypto" not in ok, ok
    keyed = [e for e in _events(lab, "srtp keyed", res.call_id_marker)]
    assert len({e["call_id"] for e in keyed}) == CALLS, keyed[:3]
    assert not _events(lab, "srtp interworking failed", res.call_id_marker)
    # The echo of the SRTP leg decrypted at the edge and reached the inside caller.
    _assert_media(lab, res.call_id_marker, CALLS)


def _rogue_pki(tmp: Path) -> dict[str, Path]:
    """A cloud certificate with the lab's names, issued by a CA the lab does not know."""
    plan = {"cloud": {"common_name": CLOUD_SBC_FQDN, "dns_sans": [CLOUD_SBC_FQDN, CLOUD_SERVICE_FQDN],
                      "ip_sans": [CLOUD_IP], "server": True, "client": True}}
    return write_lab_pki(tmp / "rogue-pki", plan, ca_common_name="Not The Lab CA")["cloud"]


@pytest.mark.parametrize("case", [
    "edge-rejects-sbc",
    "sbc-rejects-edge",
])
def test_mutual_tls_refused(lab: LabUp, sbc: Kamailio, tmp_path: Path, case: str) -> None:
    """Mutual TLS failures with Kamailio on the other end (seed 003 §3.3):

    * edge-rejects-sbc: Kamailio presents a certificate (same names) from another CA; a
      cloud → inside call makes the edge's mutual-TLS listener refuse the handshake with
      an untrusted-CA cause (M1) and nothing is classified or routed;
    * sbc-rejects-edge: Kamailio trusts only another CA; an inside → cloud call fails
      and the edge's outbound handshake event says the peer rejected our certificate
      (the cloud's Unknown CA alert, M3/M7)."""
    rogue = _rogue_pki(tmp_path)
    pki = lab.workdir / "pki"
    if case == "edge-rejects-sbc":
        # It still trusts the lab CA, so it accepts the edge's certificate; the edge must refuse it.
        cert, key, ca = rogue["cert"], rogue["key"], pki / "ca.pem"
        uac = ["-i", CLOUD_USER_IP, "-p", str(CLOUD_UAC_PORT), "-t", "u1", "-s", "alice", "-key", "domain", CORP_DOMAIN,
               f"{CLOUD_IP}:{SIP_PORT}"]
        direction = "inbound"
    else:
        cert, key, ca = pki / "cloud.pem", pki / "cloud.key", rogue["ca"]
        uac = ["-i", CALL_CONTROL_IP, "-p", str(INSIDE_UAC_PORT), "-t", "t1", "-s", "user", "-key", "domain",
               CLOUD_ORG_DOMAIN, f"{CORE_IP}:{SIP_PORT}"]
        direction = "outbound"
    before = len(lab.events("edge"))
    sbc.stop()
    bad = make_sbc(tmp_path / "sbc", cert, key, ca, name="rogue-sbc")
    uac_p = None
    try:
        bad.start()
        uac_p = start_sipp(["-sf", str(SIPP_DIR / "uac_basic.xml"), *uac, "-m", "1", "-timeout", "8"], tmp_path, "uac")

        def failed() -> list[dict]:
            return [e for e in lab.events("edge")[before:]
                    if e.get("event") == "tls handshake failed" and e.get("direction") == direction]

        got = _wait_for(lambda: bool(failed()), 6)
        res = sipp_result(uac_p, tmp_path, "uac", timeout_s=6)  # stopped by PID when still running
        new = lab.events("edge")[before:]
        diag = "\n".join(json.dumps(e)[:400] for e in new if e.get("event") != "sip message") + "\n" + bad.log_text()[-2000:]
        assert got, f"no {direction} `tls handshake failed` event:\n{diag}"
        ev = failed()[0]
        assert ev["peer"].startswith(f"{CLOUD_IP}:"), ev
        assert res.successful == 0, res.log
        if direction == "inbound":
            assert ev["listener"] == "mtls" and ev["cause"].startswith("untrusted CA"), ev
            assert not [e for e in new if e.get("event") == "tls classified"], "a refused peer was classified"
            assert not [e for e in new if e.get("event") == "search completed"], "a call crossed a refused handshake"
        else:
            assert ev["cause"].startswith("peer rejected our certificate"), ev
            assert ev.get("zone") == HYBRID_ZONE, ev
    finally:
        if uac_p is not None:
            stop_process(uac_p)
        bad.stop()
        sbc.start()
