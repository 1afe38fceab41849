"""Sans-IO parts of the user agent: SDP offer/answer (edgeway.ua.offer), dialog
state and in-dialog requests (edgeway.ua.call), RTCP report blocks (edgeway.ua.media).
No sockets, no event loop."""

from __future__ import annotations

import struct

import pytest

from edgeway.sip.message import Request, Response
from edgeway.sip.sdes import make_offer
from edgeway.ua.call import in_dialog_request, uac_dialog, uas_dialog
from edgeway.ua.media import MediaEndpoint
from edgeway.ua.offer import (
    OFFER_PTS,
    accept_srtp_answer,
    answer_pts,
    build_sdp,
    first_audio_pt,
    offer_problem,
    parse_sdp,
    srtp_answer,
)


def _invite(record_route: list[str] | None = None) -> Request:
    inv = Request("INVITE", "sip:bob@example.com")
    h = inv.headers
    h.add("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc")
    for rr in record_route or []:
        h.add("Record-Route", rr)
    h.add("From", "<sip:alice@example.com>;tag=a1")
    h.add("To", "<sip:bob@example.com>")
    h.add("Call-ID", "c1")
    h.add("CSeq", "5 INVITE")
    h.add("Contact", "<sip:alice@192.0.2.1:5060>")
    return inv


def _ok(inv: Request, record_route: list[str]) -> Response:
    resp = Response(200, "OK")
    for n in ("Via", "From", "Call-ID", "CSeq"):
        resp.headers.add(n, inv.headers.get(n))
    resp.headers.add("To", "<sip:bob@example.com>;tag=b1")
    for rr in record_route:
        resp.headers.add("Record-Route", rr)
    resp.headers.add("Contact", "<sip:bob@192.0.2.2:5070>")
    return resp


class _Flow:
    transport = "udp"


def test_offer_answer_codecs_and_srtp() -> None:
    offer = parse_sdp(build_sdp("a", 1, "192.0.2.1", 40000, [(0, "PCMU/8000"), (101, "telephone-event/8000")]))
    assert answer_pts(offer) == ([(0, "PCMU/8000"), (101, "telephone-event/8000")], 0)
    assert first_audio_pt(offer) == 0
    video_only = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4 RTP/AVP 9\r\n")
    assert answer_pts(video_only) == ([], None)
    assert offer_problem(offer, require_srtp=True, allow_unencrypted_srtcp=True) == "SRTP required, offer is RTP/AVP"
    keys = make_offer()
    savp = parse_sdp(build_sdp("a", 1, "192.0.2.1", 40000, OFFER_PTS, crypto=keys))
    assert offer_problem(savp, require_srtp=True, allow_unencrypted_srtcp=True) is None
    theirs, ours = srtp_answer(savp, None, allow_unencrypted_srtcp=True)
    assert theirs.tag == ours.tag == 1 and ours.key_salt != theirs.key_salt
    # a re-offer with the same suite keeps our key
    again = srtp_answer(savp, ours, allow_unencrypted_srtcp=True)[1]
    assert again.key_salt == ours.key_salt
    answer = parse_sdp(build_sdp("b", 1, "192.0.2.2", 40002, [(8, "PCMA/8000")], crypto=[ours]))
    assert [a.tag for a in accept_srtp_answer(keys, answer)] == [1, 1]
    with pytest.raises(ValueError):
        accept_srtp_answer(None, answer)  # SAVP answer to a plain offer
    with pytest.raises(ValueError):
        accept_srtp_answer(keys, parse_sdp(build_sdp("b", 1, "192.0.2.2", 40002, [(8, "PCMA/8000")])))


def test_uac_dialog_loose_and_strict_routes() -> None:
    inv = _invite()
    d = uac_dialog(inv, _ok(inv, ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]), _Flow(), "alice")
    assert d.key == ("c1", "a1", "b1") and d.remote_target == "sip:bob@192.0.2.2:5070"
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]  # reversed (§12.1.2)
    bye, hop = in_dialog_request(d, "BYE", 6, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx")
    assert bye.uri == "sip:bob@192.0.2.2:5070" and hop == "sip:p1.example.com;lr"
    assert bye.headers.get_all("Route") == d.route_set and bye.cseq == (6, "BYE")
    assert bye.from_tag == "a1" and bye.to_tag == "b1"
    d.route_set = ["<sip:strict.example.com;method=INVITE>"]
    bye, hop = in_dialog_request(d, "BYE", 7, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKy")
    assert bye.uri == "sip:strict.example.com"  # strict router in the Request-URI (§12.2.1.1)
    assert bye.headers.get_all("Route") == ["<sip:bob@192.0.2.2:5070>"]


def test_uas_dialog_keeps_record_route_order() -> None:
    inv = _invite(["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
    d = uas_dialog(inv, "b1", _Flow(), "bob", 100)
    assert d.key == ("c1", "b1", "a1") and d.remote_target == "sip:alice@192.0.2.1:5060"
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    bye, _ = in_dialog_request(d, "BYE", 101, "SIP/2.0/UDP 192.0.2.2:5070;branch=z9hG4bKz")
    assert bye.from_tag == "b1" and bye.to_tag == "a1" and bye.uri == "sip:alice@192.0.2.1:5060"


def test_rtcp_report_block_about_us() -> None:
    class _Pair:
        rtp_port = 40000

    m = MediaEndpoint(_Pair(), "192.0.2.1", "t")  # type: ignore[arg-type]
    m.first_seq = 65530
    block = struct.pack("!IIIIII", m.ssrc, 2, 65536 + 20, 0, 0, 0)  # 27 expected, 2 lost
    rr = struct.pack("!BBHI", 0x81, 201, 7, 0x1234) + block
    m._report_about_us(rr)
    assert m.peer_received == 25
    other = struct.pack("!BBHI", 0x81, 201, 7, 0x1234) + struct.pack("!IIIIII", m.ssrc ^ 1, 0, 99, 0, 0, 0)
    m.peer_received = None
    m._report_about_us(other)
    assert m.peer_received is None
