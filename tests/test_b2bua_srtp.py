"""SRTP ↔ RTP interworking where two zones' media encryption modes differ (issue 3 item 4).

alice (LabUserAgent, plain RTP) sits in a zone with encryption off; the far end is a
small SRTP peer written here with pylibsrtp, in a zone with encryption on. The INVITE
reaching it must offer RTP/SAVP with the four SDES lines of seed 003 §8; the SRTP it
sends must reach alice as plain RTP, and alice's RTP must reach it as SRTP it can
decrypt with the key the node offered.
"""

from __future__ import annotations

import asyncio
import secrets
import socket

from edgeway.config import parse_config
from edgeway.diag.events import EventLog
from edgeway.lab.ua import LabUserAgent, build_rtp_packet
from edgeway.media.srtp import SrtpContext
from edgeway.node import Node
from edgeway.sip.message import Headers, Response, parse_message
from edgeway.sip.sdes import CryptoAttribute, crypto_attributes
from edgeway.sip.sdp import SessionDescription

NODE, INSIDE, CLOUD = "127.0.0.60", "127.0.0.61", "127.0.0.62"


def _config() -> dict:
    return {
        "role": "edge", "name": "edge", "sip": {"listen_ip": NODE, "tls_port": 0, "domains": ["corp.test"]},
        "media": {"port_min": 42000, "port_max": 42999},
        "zones": [
            {"type": "neighbour", "name": "Inside", "host": INSIDE, "port": 5060, "transport": "udp", "media_encryption": "off"},
            {"type": "neighbour", "name": "Cloud", "host": CLOUD, "port": 5060, "transport": "udp", "media_encryption": "on"},
        ],
        "search_rules": [{"name": "to cloud", "priority": 10, "pattern": r".*@cloud\.test", "target_zone": "Cloud"}],
    }


async def _srtp_peer(sock: socket.socket, seen: dict) -> None:
    """Answer one INVITE with SRTP (tag 1), send 50 SRTP packets, count what arrives."""
    loop = asyncio.get_running_loop()
    data, addr = await loop.sock_recvfrom(sock, 65535)
    inv = parse_message(data)
    seen["invite"] = inv
    offer = SessionDescription.parse(inv.body)
    m = offer.media[0]
    offered = crypto_attributes(m, strict=True)
    seen["offered"] = offered
    relay = (offer.connection_for(0).address, m.port)
    our_key = CryptoAttribute(offered[0].tag, offered[0].suite, secrets.token_bytes(30))
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind((CLOUD, 0))
    media.setblocking(False)
    port = media.getsockname()[1]
    sdp = (f"v=0\r\no=cloud 1 1 IN IP4 {CLOUD}\r\ns=-\r\nc=IN IP4 {CLOUD}\r\nt=0 0\r\n"
           f"m=audio {port} RTP/SAVP 8\r\na=rtpmap:8 PCMA/8000\r\na=crypto:{our_key}\r\na=sendrecv\r\n").encode()
    h = Headers()
    for v in inv.headers.get_all("Via"):
        h.add("Via", v)
    for n in ("From", "Call-ID", "CSeq"):
        h.add(n, inv.headers.get(n))
    h.add("To", inv.headers.get("To") + ";tag=cloud1")
    h.add("Contact", f"<sip:svc@{CLOUD}:5060>")
    for rr in inv.headers.get_all("Record-Route"):
        h.add("Record-Route", rr)
    h.add("Content-Type", "application/sdp")
    sock.sendto(Response(200, "OK", h, sdp).to_bytes(), addr)
    tx = SrtpContext.from_crypto(our_key, "outbound")
    rx = SrtpContext.from_crypto(offered[0], "inbound")
    seen["decrypted"] = 0
    for seq in range(50):
        media.sendto(tx.protect_rtp(build_rtp_packet(8, seq, seq * 160, 0x1234, b"\xd5" * 160)), relay)
        end = loop.time() + 0.02
        while loop.time() < end:
            try:
                pkt = media.recv(2048)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            if len(pkt) > 12 and pkt[0] >> 6 == 2 and pkt[1] & 0x7F < 64:
                plain = rx.unprotect_rtp(pkt)
                if plain[12:] == b"\xd5" * 160 or len(plain) == 172:
                    seen["decrypted"] += 1
    media.close()
    end = loop.time() + 5
    while loop.time() < end:  # answer the BYE (the ACK needs nothing)
        try:
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), end - loop.time())
        except asyncio.TimeoutError:
            break
        req = parse_message(data)
        if getattr(req, "method", None) == "BYE":
            seen["bye"] = req
            rh = Headers()
            for v in req.headers.get_all("Via"):
                rh.add("Via", v)
            for n in ("From", "To", "Call-ID", "CSeq"):
                rh.add(n, req.headers.get(n))
            sock.sendto(Response(200, "OK", rh).to_bytes(), addr)
            break


def test_rtp_inside_srtp_toward_the_cloud(tmp_path) -> None:
    async def scenario() -> dict:
        node = Node(parse_config(_config()), EventLog("edge", str(tmp_path / "e.jsonl")))
        await node.start()
        sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sip.bind((CLOUD, 5060))
        sip.setblocking(False)
        alice = LabUserAgent("alice", INSIDE, 5060, transport="udp", domain="corp.test", rtp_port_base=44000)
        await alice.start()
        seen: dict = {}
        try:
            peer = asyncio.create_task(_srtp_peer(sip, seen))
            result = await alice.call("sip:svc@cloud.test;call-type=squared", proxy=(NODE, 5060, "udp"), from_user="alice",
                                      media_seconds=1.0, timeout_s=10,
                                      extra_headers=[("X-TAATag", "3f1c"), ("Session-ID", "ab" * 16 + ";remote=" + "0" * 32)])
            await asyncio.wait_for(peer, 10)
            seen["result"] = result
        finally:
            await alice.close()
            sip.close()
            await node.close()
        return seen

    seen = asyncio.run(scenario())
    offer_media = SessionDescription.parse(seen["invite"].body).media[0]
    assert offer_media.proto == "RTP/SAVP"
    assert [(a.tag, a.suite, a.unencrypted_srtcp) for a in seen["offered"]] == [
        (1, "AES_CM_128_HMAC_SHA1_80", False), (2, "AES_CM_128_HMAC_SHA1_80", True),
        (3, "AES_CM_128_HMAC_SHA1_32", False), (4, "AES_CM_128_HMAC_SHA1_32", True)]
    result = seen["result"]
    assert result.status == 200
    inv = seen["invite"]
    # B2BUA signalling: Call-ID and unknown headers kept, Contact ours, session timers asked for,
    # Request-URI parameters dropped (parameter preservation is off on these zones).
    assert inv.call_id == result.call_id
    assert inv.headers.get("X-TAATag") == "3f1c" and inv.headers.get("Session-ID").startswith("ab" * 16)
    contact = inv.headers.get("Contact")
    assert contact.startswith("<sip:b2b-") and f"@{NODE}:5060;transport=udp>" in contact, contact
    assert inv.headers.get("Session-Expires") == "1800;refresher=uac" and inv.headers.get("Min-SE") == "500"
    assert inv.uri == "sip:svc@cloud.test"
    # The BYE alice sent to our Contact reached the cloud's real Contact.
    assert seen["bye"].uri == f"sip:svc@{CLOUD}:5060"
    assert result.rtp_received >= 40, result  # the cloud's SRTP arrived at alice as plain RTP
    assert seen["decrypted"] >= 10, seen["decrypted"]  # alice's RTP arrived at the cloud as SRTP


def test_contact_rewrite_and_parameter_preservation() -> None:
    """Seed 003 §7.3: with preservation on the Contact keeps ``call-type=squared``;
    with it off the parameter is gone; either way the Contact is ours."""
    from edgeway.proxy import b2bua
    from edgeway.sip.message import Request

    for preserve in (True, False):
        req = Request("INVITE", "sip:bob@corp.test")
        req.headers.add("Contact", '"l2sip-UA" <sip:l2sip-UA@l2sip-cfa-01.wbx2.com:5062;transport=tls>;call-type=squared')
        token, original = b2bua.rewrite_contact(req, "192.0.2.6:5073", "tls", preserve=preserve)
        assert original == "sip:l2sip-UA@l2sip-cfa-01.wbx2.com:5062;transport=tls"
        contact = req.headers.get("Contact")
        assert contact.startswith(f'"l2sip-UA" <sip:b2b-{token}@192.0.2.6:5073;transport=tls>')
        assert contact.endswith(";call-type=squared") is preserve
