"""Tests for SDES (edgeway.sip.sdes), SRTP contexts (edgeway.media.srtp) and
SRTP<->RTP interworking in the media relay.

Loopback only (127.0.0.23x); every socket/session opened here is closed by the
test or its fixture; each async test is bounded by asyncio timeouts.
"""

from __future__ import annotations

import base64
import random
import socket
import struct
from collections.abc import Callable, Iterator

import pylibsrtp
import pytest

from udputil import LOOP_KINDS, port_range, run
from udputil import addr_of as addr, nothing_on, recv, udp_sockets
from edgeway.media import LATCH_PROBE, MediaRelay, PortAllocator
from edgeway.media import srtp as srtp_mod
from edgeway.media.srtp import (
    FAST_PATH,
    UNENCRYPTED_SRTCP_SUPPORTED,
    SrtpContext,
    SrtpError,
)
from edgeway.sip import sdes
from edgeway.sip.sdes import CryptoAttribute, SdesError
from edgeway.sip.sdp import SessionDescription


RELAY_A, RELAY_B = "127.0.0.231", "127.0.0.232"
PARTY_A, PARTY_B, PARTY_X = "127.0.0.233", "127.0.0.234", "127.0.0.235"

KEY1 = bytes(range(30))
KEY2 = bytes(range(100, 130))


class FixedRng:
    """Deterministic stand-in for :mod:`secrets` (``token_bytes``)."""

    def __init__(self, seed: int = 1) -> None:
        self._r = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self._r.randbytes(n)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def rtp_packet(seq: int, payload: bytes = b"\xd5" * 160, ssrc: int = 0x11223344,
               pt: int = 0, ts: int | None = None) -> bytes:
    ts = seq * 160 if ts is None else ts
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def rtcp_packet(ssrc: int = 0x11223344, extra: bytes = b"") -> bytes:
    """An RTCP receiver report without report blocks (+ optional bytes)."""
    body = struct.pack("!BBHI", 0x80, 201, 1, ssrc) + extra
    return body


# ======================================================================================
# SDES (RFC 4568)

SEED_LINES = [
    f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY1)}",
    f"2 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY2)} UNENCRYPTED_SRTCP",
    f"3 AES_CM_128_HMAC_SHA1_32 inline:{b64(KEY1)}",
    f"4 AES_CM_128_HMAC_SHA1_32 inline:{b64(KEY2)} UNENCRYPTED_SRTCP",
]


@pytest.mark.parametrize("line", SEED_LINES + [
    # RFC 4568 §4 example: lifetime and MKI.
    "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
    "7 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^31",
    "2 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|1:4 KDR=1 WSH=256",
    "3 AEAD_AES_256_GCM inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
])
def test_crypto_round_trip(line):
    attr = CryptoAttribute.parse(line)
    assert str(attr) == line
    assert CryptoAttribute.parse(str(attr)) == attr


def test_crypto_parse_fields():
    a = CryptoAttribute.parse(SEED_LINES[1])
    assert (a.tag, a.suite, a.key_salt) == (2, "AES_CM_128_HMAC_SHA1_80", KEY2)
    assert a.session_params == ["UNENCRYPTED_SRTCP"] and a.unencrypted_srtcp
    assert a.lifetime is None and a.mki is None
    r = CryptoAttribute.parse(
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"
    )
    assert (r.lifetime, r.mki, len(r.key_salt)) == ("2^20", "1:32", 30)
    assert not r.unencrypted_srtcp
    w = CryptoAttribute.parse(f"5 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY1)} WSH=512")
    assert w.window_size_hint == 512


def test_seed_lines_in_sdp_parse_and_serialise():
    lines = [
        "v=0", "o=tandberg 0 1 IN IP4 64.102.241.236", "s=-", "c=IN IP4 64.102.241.236",
        "b=AS:384", "t=0 0", "m=audio 52668 RTP/SAVP 18 101", "a=rtpmap:18 G729/8000",
        "a=fmtp:18 annexb=no", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15",
        *(f"a=crypto:{line}" for line in SEED_LINES),
        "a=sendrecv", "a=rtcp:52669 IN IP4 64.102.241.236",
    ]
    body = "\r\n".join(lines) + "\r\n"
    sdp = SessionDescription.parse(body)
    attrs = sdes.crypto_attributes(sdp.media[0], strict=True)
    assert [str(a) for a in attrs] == SEED_LINES
    assert [a.tag for a in attrs] == [1, 2, 3, 4]
    assert sdes.is_savp(sdp.media[0])
    assert str(sdp) == body


@pytest.mark.parametrize("value, why", [
    ("1 AES_CM_128_HMAC_SHA1_80", "expected"),
    ("x AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1), "tag"),
    ("1234567890 AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1), "tag"),
    ("1 AES_CM_128_HMAC_SHA1_80 uri:" + b64(KEY1), "inline"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:", "base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1)[:-1] + "*", "base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1[:16]), "30 bytes"),
    ("1 AES_CM_128_HMAC_SHA1_32 inline:" + b64(KEY1 + b"xx"), "30 bytes"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1) + "|2^x", "lifetime"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1) + "|1:0", "MKI"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1) + "|2^31|1:4|3", "too many"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY1) + ";inline:" + b64(KEY2), "MKI"),
])
def test_crypto_malformed(value, why):
    with pytest.raises(SdesError, match=why):
        CryptoAttribute.parse(value)
    assert issubclass(SdesError, ValueError)


def test_unknown_suite_parses_but_is_refused_when_used():
    a = CryptoAttribute.parse("1 F8_128_HMAC_SHA1_80 inline:" + b64(KEY1))
    assert not sdes.is_usable(a)
    with pytest.raises(SdesError, match="unsupported crypto-suite"):
        a.check_usable()
    with pytest.raises(SdesError, match="unsupported crypto-suite"):
        SrtpContext.from_crypto(a, "inbound")


def test_make_offer_is_seed_shape_with_fresh_keys():
    offer = sdes.make_offer()
    assert [(a.tag, a.suite, a.session_params) for a in offer] == [
        (1, "AES_CM_128_HMAC_SHA1_80", []),
        (2, "AES_CM_128_HMAC_SHA1_80", ["UNENCRYPTED_SRTCP"]),
        (3, "AES_CM_128_HMAC_SHA1_32", []),
        (4, "AES_CM_128_HMAC_SHA1_32", ["UNENCRYPTED_SRTCP"]),
    ]
    assert all(len(a.key_salt) == 30 for a in offer)
    assert len({a.key_salt for a in offer}) == 4
    assert {a.key_salt for a in offer}.isdisjoint(a.key_salt for a in sdes.make_offer())
    lines = [str(a) for a in sdes.make_offer(FixedRng(3))]
    assert lines == [str(a) for a in sdes.make_offer(FixedRng(3))]
    assert all(CryptoAttribute.parse(line) is not None for line in lines)
    short = sdes.make_offer(include_unencrypted_srtcp=False)
    assert [(a.tag, a.suite, a.session_params) for a in short] == [
        (1, "AES_CM_128_HMAC_SHA1_80", []), (2, "AES_CM_128_HMAC_SHA1_32", []),
    ]


def test_choose_answer_follows_offerer_order():
    offer = sdes.make_offer(FixedRng(1))
    chosen, answer = sdes.choose_answer(offer)
    assert chosen is offer[0]
    assert (answer.tag, answer.suite, answer.session_params) == (1, "AES_CM_128_HMAC_SHA1_80", [])
    assert len(answer.key_salt) == 30 and answer.key_salt != chosen.key_salt
    # Offerer prefers _32 with UNENCRYPTED_SRTCP: we take it, session params echoed.
    pref = [offer[3], offer[0]]
    chosen, answer = sdes.choose_answer(pref)
    assert chosen is offer[3]
    assert (answer.tag, answer.suite, answer.session_params) == (
        4, "AES_CM_128_HMAC_SHA1_32", ["UNENCRYPTED_SRTCP"])
    # If unencrypted SRTCP cannot be honoured, that variant is passed over.
    chosen, answer = sdes.choose_answer(pref, allow_unencrypted_srtcp=False)
    assert chosen is offer[0]
    assert sdes.choose_answer([offer[1], offer[3]], allow_unencrypted_srtcp=False) is None


def test_choose_answer_skips_what_cannot_be_honoured():
    key = b64(KEY1)
    offered = [CryptoAttribute.parse(v) for v in [
        f"1 AEAD_AES_256_GCM inline:{key}",
        f"2 F8_128_HMAC_SHA1_80 inline:{key}",
        f"3 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:4",
        f"4 AES_CM_128_HMAC_SHA1_80 inline:{key} KDR=10",
        f"5 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP",
        f"6 AES_CM_128_HMAC_SHA1_80 inline:{key} UNAUTHENTICATED_SRTP",
        f"7 AES_CM_128_HMAC_SHA1_80 inline:{key} FEC_ORDER=SRTP_FEC",
        f"8 AES_CM_128_HMAC_SHA1_80 inline:{key} FOO=1",
    ]]
    assert sdes.choose_answer(offered) is None
    ok = CryptoAttribute.parse(f"9 AES_CM_128_HMAC_SHA1_32 inline:{key}|2^31 WSH=128")
    chosen, answer = sdes.choose_answer(offered + [ok], FixedRng(2))
    assert chosen is ok
    assert (answer.tag, answer.suite, answer.session_params, answer.lifetime) == (
        9, "AES_CM_128_HMAC_SHA1_32", ["WSH=128"], None)
    assert sdes.choose_answer([]) is None


def test_accept_answer():
    offer = sdes.make_offer(FixedRng(5))
    _, answer = sdes.choose_answer(offer[2:])
    ours, theirs = sdes.accept_answer(offer, [answer])
    assert ours is offer[2] and theirs is answer
    with pytest.raises(SdesError, match="exactly one"):
        sdes.accept_answer(offer, [])
    with pytest.raises(SdesError, match="exactly one"):
        sdes.accept_answer(offer, [answer, answer])
    bad_tag = CryptoAttribute(9, answer.suite, answer.key_salt)
    with pytest.raises(SdesError, match="not offered"):
        sdes.accept_answer(offer, [bad_tag])
    bad_suite = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_32", answer.key_salt)
    with pytest.raises(SdesError, match="offered AES_CM_128_HMAC_SHA1_80"):
        sdes.accept_answer(offer, [bad_suite])
    bad_params = CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_80", answer.key_salt)
    with pytest.raises(SdesError, match="session parameters"):
        sdes.accept_answer(offer, [bad_params])


AVP_SDP = (
    "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\na=rtcp:4001\r\n"
    "m=video 4002 RTP/AVPF 96\r\na=rtpmap:96 H264/90000\r\n"
)


def test_to_savp_and_back():
    sdp = SessionDescription.parse(AVP_SDP)
    audio, video = sdp.media
    offer = sdes.make_offer(FixedRng(7))
    assert sdes.to_savp(audio, offer) is audio
    assert audio.mline == "audio 4000 RTP/SAVP 0 101"
    names = [n for n, _ in audio.attributes]
    assert names == ["rtpmap", "rtpmap", "crypto", "crypto", "crypto", "crypto", "sendrecv", "rtcp"]
    assert sdes.crypto_attributes(audio) == offer
    sdes.to_savp(video, offer[:1])
    assert video.proto == "RTP/SAVPF" and video.crypto == [str(offer[0])]
    # Re-keying replaces the lines in place.
    _, answer = sdes.choose_answer(offer)
    sdes.to_savp(audio, [answer])
    assert [n for n, _ in audio.attributes] == ["rtpmap", "rtpmap", "crypto", "sendrecv", "rtcp"]
    assert audio.crypto == [str(answer)]
    text = str(sdp)
    assert "m=audio 4000 RTP/SAVP 0 101\r\n" in text and f"a=crypto:{answer}\r\n" in text
    back = SessionDescription.parse(text)
    assert sdes.crypto_attributes(back.media[0]) == [answer]
    sdes.to_avp(back.media[0])
    sdes.to_avp(back.media[1])
    assert str(back) == AVP_SDP


def test_to_savp_refuses_other_protocols_and_crypto_attributes_skips_malformed():
    sdp = SessionDescription.parse(
        "v=0\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 UDP/TLS/RTP/SAVP 0\r\n"
        "m=audio 4002 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:short\r\n"
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY1)}\r\n"
    )
    with pytest.raises(SdesError, match="UDP/TLS/RTP/SAVP"):
        sdes.to_savp(sdp.media[0], sdes.make_offer())
    attrs = sdes.crypto_attributes(sdp.media[1])
    assert [a.tag for a in attrs] == [2]
    with pytest.raises(SdesError):
        sdes.crypto_attributes(sdp.media[1], strict=True)


# ======================================================================================
# SrtpContext


def test_self_tests_pass_with_installed_pylibsrtp():
    # The installed pylibsrtp (bundling libsrtp 2) supports both.
    assert FAST_PATH is True
    assert UNENCRYPTED_SRTCP_SUPPORTED is True


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "public-api"])
@pytest.mark.parametrize("suite, tag_len", [
    ("AES_CM_128_HMAC_SHA1_80", 10), ("AES_CM_128_HMAC_SHA1_32", 4),
])
def test_protect_unprotect_round_trip(suite, tag_len, fast):
    attr = CryptoAttribute(1, suite, KEY1)
    tx = SrtpContext(suite, KEY1, "outbound", _fast=fast)
    rx = SrtpContext(suite, KEY1, "inbound", _fast=fast)
    assert repr(SrtpContext.from_crypto(attr, "outbound")).startswith("<SrtpContext outbound")
    for seq in range(5):
        pkt = rtp_packet(seq, bytes([seq]) * 160)
        enc = tx.protect_rtp(pkt)
        assert len(enc) == len(pkt) + tag_len
        assert enc[:12] == pkt[:12] and enc[12:172] != pkt[12:]
        assert rx.unprotect_rtp(enc) == pkt
    rtcp = rtcp_packet(extra=b"hello world!")
    enc = tx.protect_rtcp(rtcp)
    assert len(enc) == len(rtcp) + 4 + 10  # SRTCP index + 80-bit tag for both suites
    assert enc[len(rtcp)] & 0x80  # E bit: encrypted
    assert rx.unprotect_rtcp(enc) == rtcp
    # Interoperates with a plain pylibsrtp session keyed the same way.
    profile = srtp_mod.PROFILES[suite]
    peer_rx = pylibsrtp.Session(pylibsrtp.Policy(
        key=KEY1, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    peer_tx = pylibsrtp.Session(pylibsrtp.Policy(
        key=KEY1, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    pkt = rtp_packet(100, ssrc=0xABCDEF01)
    assert peer_rx.unprotect(tx.protect_rtp(pkt)) == pkt
    assert rx.unprotect_rtp(peer_tx.protect(pkt)) == pkt


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "public-api"])
def test_tamper_replay_wrong_key_raise_srtp_error(fast):
    suite = "AES_CM_128_HMAC_SHA1_80"
    tx = SrtpContext(suite, KEY1, "outbound", _fast=fast)
    rx = SrtpContext(suite, KEY1, "inbound", _fast=fast)
    wrong = SrtpContext(suite, KEY2, "inbound", _fast=fast)
    enc = tx.protect_rtp(rtp_packet(1))
    bad = bytearray(enc)
    bad[20] ^= 0x01
    with pytest.raises(SrtpError) as ei:
        rx.unprotect_rtp(bytes(bad))
    assert ei.value.kind == "auth"
    with pytest.raises(SrtpError) as ei:
        wrong.unprotect_rtp(enc)
    assert ei.value.kind == "auth"
    assert rx.unprotect_rtp(enc) == rtp_packet(1)  # the tampered copy did not poison it
    with pytest.raises(SrtpError) as ei:
        rx.unprotect_rtp(enc)
    assert ei.value.kind == "replay"
    enc_rtcp = bytearray(tx.protect_rtcp(rtcp_packet()))
    enc_rtcp[-1] ^= 0xFF
    with pytest.raises(SrtpError) as ei:
        rx.unprotect_rtcp(bytes(enc_rtcp))
    assert ei.value.kind == "auth"
    with pytest.raises(SrtpError):
        tx.protect_rtp(b"\x80\x00\x00")  # shorter than an RTP header
    with pytest.raises(ValueError, match="inbound context"):
        rx.protect_rtp(rtp_packet(2))
    with pytest.raises(ValueError, match="outbound context"):
        tx.unprotect_rtp(enc)


def test_large_packets_fit_on_fast_path():
    suite = "AES_CM_128_HMAC_SHA1_80"
    tx = SrtpContext(suite, KEY1, "outbound")
    rx = SrtpContext(suite, KEY1, "inbound")
    pkt = rtp_packet(7, b"v" * 1460, pt=96)  # a full-MTU video packet
    assert rx.unprotect_rtp(tx.protect_rtp(pkt)) == pkt
    buf = bytearray(4000)
    pkt2 = rtp_packet(8, b"w" * 1460, pt=96)
    buf[: len(pkt2)] = pkt2
    n = tx.apply_rtp(buf, len(pkt2))
    assert n == len(pkt2) + 10
    assert rx.apply_rtp(buf, n) == len(pkt2) and buf[: len(pkt2)] == pkt2
    with pytest.raises(SrtpError, match="too long"):
        tx.apply_rtp(buf, 3900)


def test_bad_keys_and_directions():
    with pytest.raises(SdesError, match="30 bytes"):
        SrtpContext("AES_CM_128_HMAC_SHA1_80", KEY1[:29], "inbound")
    with pytest.raises(SdesError, match="unsupported"):
        SrtpContext("AES_256_CM_HMAC_SHA1_80", bytes(46), "inbound")
    with pytest.raises(ValueError, match="direction"):
        SrtpContext("AES_CM_128_HMAC_SHA1_80", KEY1, "both")  # type: ignore[arg-type]
    mki = CryptoAttribute.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY1)}|2^31|1:4")
    with pytest.raises(SdesError, match="MKI"):
        SrtpContext.from_crypto(mki, "outbound")


def test_wsh_sets_inbound_replay_window():
    attr = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", KEY1, session_params=["WSH=1000"])
    tx = SrtpContext.from_crypto(attr, "outbound")
    rx = SrtpContext.from_crypto(attr, "inbound")
    pkts = [tx.protect_rtp(rtp_packet(i)) for i in range(600)]
    assert rx.unprotect_rtp(pkts[-1]) == rtp_packet(599)
    # 500 behind: inside a 1000-packet window, outside libsrtp's default of 128.
    assert rx.unprotect_rtp(pkts[99]) == rtp_packet(99)
    rx_default = SrtpContext("AES_CM_128_HMAC_SHA1_80", KEY1, "inbound")
    rx_default.unprotect_rtp(pkts[-1])
    with pytest.raises(SrtpError) as ei:
        rx_default.unprotect_rtp(pkts[99])
    assert ei.value.kind == "replay"


@pytest.mark.skipif(not UNENCRYPTED_SRTCP_SUPPORTED, reason="pylibsrtp cannot do it")
@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
def test_unencrypted_srtcp(suite):
    attr = CryptoAttribute(2, suite, KEY1, session_params=["UNENCRYPTED_SRTCP"])
    tx = SrtpContext.from_crypto(attr, "outbound")
    rx = SrtpContext.from_crypto(attr, "inbound")
    assert tx.unencrypted_srtcp and "UNENCRYPTED_SRTCP" in repr(tx)
    rtcp = rtcp_packet(extra=b"sdes-cname-ish!!")
    enc = tx.protect_rtcp(rtcp)
    assert enc[: len(rtcp)] == rtcp  # sent in clear...
    assert not enc[len(rtcp)] & 0x80  # ...with the E bit unset...
    assert len(enc) == len(rtcp) + 14  # ...but authenticated
    assert rx.unprotect_rtcp(enc) == rtcp
    tampered = bytearray(enc)
    tampered[9] ^= 1
    with pytest.raises(SrtpError):
        rx.unprotect_rtcp(bytes(tampered))
    # SRTP itself stays encrypted.
    pkt = rtp_packet(3)
    enc_rtp = tx.protect_rtp(pkt)
    assert enc_rtp[12:172] != pkt[12:] and rx.unprotect_rtp(enc_rtp) == pkt
    # A receiver that expects encrypted SRTCP refuses it (and vice versa).
    plain_rx = SrtpContext(suite, KEY1, "inbound")
    with pytest.raises(SrtpError) as ei:
        plain_rx.unprotect_rtcp(enc)
    assert ei.value.kind == "auth"
    plain_tx = SrtpContext(suite, KEY1, "outbound")
    with pytest.raises(SrtpError):
        rx.unprotect_rtcp(plain_tx.protect_rtcp(rtcp_packet(ssrc=5)))


def test_unencrypted_srtcp_refused_when_unsupported(monkeypatch):
    monkeypatch.setattr(srtp_mod, "UNENCRYPTED_SRTCP_SUPPORTED", False)
    attr = CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_80", KEY1, session_params=["UNENCRYPTED_SRTCP"])
    with pytest.raises(SdesError, match="UNENCRYPTED_SRTCP"):
        SrtpContext.from_crypto(attr, "inbound")
    monkeypatch.setattr(srtp_mod, "_set_rtcp_auth_only", lambda policy: False)
    with pytest.raises(SdesError, match="UNENCRYPTED_SRTCP"):
        SrtpContext("AES_CM_128_HMAC_SHA1_80", KEY1, "outbound", unencrypted_srtcp=True)


# ======================================================================================
# Relay: plain RTP on side A, SRTP on side B




@pytest.fixture
def udp() -> Iterator[Callable[..., socket.socket]]:
    with udp_sockets(PARTY_A) as make:
        yield make


class SrtpEndpoint:
    """Party B: an SRTP endpoint with its own pylibsrtp sessions (public API).

    It offered ``offer`` (its sending keys); the relay answered ``answer``.
    """

    def __init__(self, chosen: CryptoAttribute, answer: CryptoAttribute) -> None:
        profile = srtp_mod.PROFILES[chosen.suite]
        self.tx = pylibsrtp.Policy(key=chosen.key_salt, srtp_profile=profile,
                                   ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.rx = pylibsrtp.Policy(key=answer.key_salt, srtp_profile=profile,
                                   ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        if chosen.unencrypted_srtcp:  # same libsrtp knob the relay uses
            assert srtp_mod._set_rtcp_auth_only(self.tx)
            assert srtp_mod._set_rtcp_auth_only(self.rx)
        self.send = pylibsrtp.Session(self.tx)
        self.recv = pylibsrtp.Session(self.rx)


async def _srtp_session(relay: MediaRelay, a_alloc, b_alloc, udp, offer_variant: int):
    """Open a session with A plain and B SRTP keyed by choose_answer()."""
    offer = sdes.make_offer(FixedRng(offer_variant))
    chosen, answer = sdes.choose_answer([offer[offer_variant - 1]])
    s = relay.open_session(a_alloc, b_alloc, label="srtp")
    s.set_crypto(
        "b",
        inbound=SrtpContext.from_crypto(chosen, "inbound"),
        outbound=SrtpContext.from_crypto(answer, "outbound"),
    )
    pa_rtp, pa_rtcp = udp(PARTY_A), udp(PARTY_A)
    pb_rtp, pb_rtcp = udp(PARTY_B), udp(PARTY_B)
    s.set_remote("a", PARTY_A, addr(pa_rtp)[1], addr(pa_rtcp)[1])
    s.set_remote("b", PARTY_B, addr(pb_rtp)[1], addr(pb_rtcp)[1])
    return s, SrtpEndpoint(chosen, answer), (pa_rtp, pa_rtcp, pb_rtp, pb_rtcp), chosen


@pytest.mark.parametrize("kind", LOOP_KINDS)
@pytest.mark.parametrize("variant", [1, 2, 3, 4], ids=["80", "80-uSRTCP", "32", "32-uSRTCP"])
def test_relay_plain_a_srtp_b_end_to_end(udp, kind, variant):
    if variant in (2, 4) and not UNENCRYPTED_SRTCP_SUPPORTED:
        pytest.skip("UNENCRYPTED_SRTCP unsupported")
    lo, hi = port_range(4)

    async def main():
        relay = MediaRelay(inactivity_timeout_s=None)
        a_alloc, b_alloc = PortAllocator(RELAY_A, lo, hi), PortAllocator(RELAY_B, lo, hi)
        try:
            s, ep, (pa_rtp, pa_rtcp, pb_rtp, pb_rtcp), chosen = await _srtp_session(
                relay, a_alloc, b_alloc, udp, variant)
            la, lb = s.local("a"), s.local("b")
            tag_len = 10 if chosen.suite.endswith("_80") else 4
            # A -> B: plain RTP in, valid SRTP out.
            for seq in range(3):
                pkt = rtp_packet(seq, bytes([seq + 1]) * 160)
                pa_rtp.sendto(pkt, (la.ip, la.rtp_port))
                data, src = await recv(pb_rtp)
                assert src == (lb.ip, lb.rtp_port)
                assert len(data) == len(pkt) + tag_len and data[12:172] != pkt[12:]
                assert ep.recv.unprotect(data) == pkt
            rtcp = rtcp_packet(extra=b"report from A")
            pa_rtcp.sendto(rtcp, (la.ip, la.rtcp_port))
            data, src = await recv(pb_rtcp)
            assert src == (lb.ip, lb.rtcp_port)
            assert ep.recv.unprotect_rtcp(data) == rtcp
            assert (data[: len(rtcp)] == rtcp) == chosen.unencrypted_srtcp
            # B -> A: SRTP in, the original RTP out.
            for seq in range(3):
                pkt = rtp_packet(1000 + seq, b"B" * 160, ssrc=0x55667788)
                pb_rtp.sendto(ep.send.protect(pkt), (lb.ip, lb.rtp_port))
                data, src = await recv(pa_rtp)
                assert (data, src) == (pkt, (la.ip, la.rtp_port))
            rtcp_b = rtcp_packet(0x55667788, b"report from B")
            pb_rtcp.sendto(ep.send.protect_rtcp(rtcp_b), (lb.ip, lb.rtcp_port))
            data, src = await recv(pa_rtcp)
            assert (data, src) == (rtcp_b, (la.ip, la.rtcp_port))
            # A corrupted SRTP packet (and an SRTP replay) from B is dropped and counted.
            good = ep.send.protect(rtp_packet(2000, ssrc=0x55667788))
            bad = bytearray(good)
            bad[-1] ^= 0x5A
            pb_rtp.sendto(bytes(bad), (lb.ip, lb.rtp_port))
            bad_rtcp = bytearray(ep.send.protect_rtcp(rtcp_packet(0x55667788)))
            bad_rtcp[-2] ^= 0x01
            pb_rtcp.sendto(bytes(bad_rtcp), (lb.ip, lb.rtcp_port))
            await nothing_on(pa_rtp, pa_rtcp)
            pb_rtp.sendto(good, (lb.ip, lb.rtp_port))
            assert (await recv(pa_rtp))[0] == rtp_packet(2000, ssrc=0x55667788)
            pb_rtp.sendto(good, (lb.ip, lb.rtp_port))  # replayed
            await nothing_on(pa_rtp)
            st = s.stats()
            b2a, a2b = st["b_to_a"], st["a_to_b"]
            assert b2a["srtp_auth_failures"] == 2
            assert b2a["srtp_replay_drops"] == 1
            assert b2a["srtp_errors"] == 0
            assert b2a["rtp_packets"] == 4 and b2a["rtcp_packets"] == 1
            assert b2a["dropped"] == 3
            assert a2b["rtp_packets"] == 3 and a2b["rtcp_packets"] == 1
            assert a2b["rtp_bytes"] == 3 * (172 + tag_len)
            assert a2b["dropped"] == 0
            assert st["b"]["srtp_inbound"] == str(chosen.suite) + (
                " UNENCRYPTED_SRTCP" if chosen.unencrypted_srtcp else "")
            assert st["a"]["srtp_inbound"] is None and st["a"]["srtp_outbound"] is None
            assert relay.stats()["dropped"] == 3
        finally:
            relay.close()
        assert relay.stats()["dropped"] == 3

    run(main, kind)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_relay_srtp_latching_probes_and_fallback_to_plain(udp, kind):
    lo, hi = port_range(4)

    async def main():
        relay = MediaRelay(inactivity_timeout_s=None)
        a_alloc, b_alloc = PortAllocator(RELAY_A, lo, hi), PortAllocator(RELAY_B, lo, hi)
        try:
            s, ep, (pa_rtp, pa_rtcp, pb_rtp, pb_rtcp), _ = await _srtp_session(
                relay, a_alloc, b_alloc, udp, 1)
            la, lb = s.local("a"), s.local("b")
            # Unauthenticated datagrams from a stranger do not latch side B.
            px = udp(PARTY_X)
            px.sendto(b"\x80\x00" + bytes(180), (lb.ip, lb.rtp_port))
            await nothing_on(pa_rtp)
            assert s.stats()["b"]["latched_rtp"] is None
            assert s.stats()["b_to_a"]["srtp_auth_failures"] == 1
            # A latch probe stays plain, latches, is never forwarded nor counted as SRTP.
            pb_rtcp.sendto(LATCH_PROBE, (lb.ip, lb.rtcp_port))
            await nothing_on(pa_rtcp)
            st = s.stats()
            assert st["b"]["latched_rtcp"] == addr(pb_rtcp)
            assert st["b_to_a"]["probes_received"] == 1
            assert st["b_to_a"]["srtp_auth_failures"] == 1
            # Probes sent by the relay toward the SRTP side are plain too.
            assert s.send_latch_probe("b") == 2
            assert (await recv(pb_rtp))[0] == LATCH_PROBE
            assert (await recv(pb_rtcp))[0] == LATCH_PROBE
            # The first authenticated packet latches B's RTP; then strangers are foreign.
            pkt = rtp_packet(1, ssrc=7)
            pb_rtp.sendto(ep.send.protect(pkt), (lb.ip, lb.rtp_port))
            assert (await recv(pa_rtp))[0] == pkt
            assert s.stats()["b"]["latched_rtp"] == addr(pb_rtp)
            px.sendto(ep.send.protect(rtp_packet(2, ssrc=7)), (lb.ip, lb.rtp_port))
            await nothing_on(pa_rtp)
            assert s.stats()["b_to_a"]["dropped_foreign_source"] == 1
            # A duplicated plain packet from A cannot be protected twice: dropped.
            dup = rtp_packet(50)
            pa_rtp.sendto(dup, (la.ip, la.rtp_port))
            assert ep.recv.unprotect((await recv(pb_rtp))[0]) == dup
            pa_rtp.sendto(dup, (la.ip, la.rtp_port))
            await nothing_on(pb_rtp)
            pa_rtp.sendto(b"\x80", (la.ip, la.rtp_port))  # too short to protect
            await nothing_on(pb_rtp)
            a2b = s.stats()["a_to_b"]
            assert (a2b["srtp_replay_drops"], a2b["srtp_errors"]) == (1, 1)
            # Back to plain on both directions.
            s.set_crypto("b", inbound=None, outbound=None)
            assert s.crypto("b") == (None, None)
            pa_rtp.sendto(b"plain again", (la.ip, la.rtp_port))
            assert (await recv(pb_rtp))[0] == b"plain again"
            pb_rtp.sendto(b"plain back", (lb.ip, lb.rtp_port))
            assert (await recv(pa_rtp))[0] == b"plain back"
            with pytest.raises(ValueError, match="direction"):
                s.set_crypto("a", inbound=SrtpContext(
                    "AES_CM_128_HMAC_SHA1_80", KEY1, "outbound"), outbound=None)
            s.close()
            s.set_crypto("b", inbound=None, outbound=None)  # no-op when closed
        finally:
            relay.close()

    run(main, kind)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_relay_srtp_both_sides_and_rtcp_mux(udp, kind):
    """SRTP on both sides with different keys (re-keying relay), and RTCP that
    arrives on the RTP port (RFC 5761) is handled as SRTCP."""
    lo, hi = port_range(4)

    async def main():
        relay = MediaRelay(inactivity_timeout_s=None)
        a_alloc, b_alloc = PortAllocator(RELAY_A, lo, hi), PortAllocator(RELAY_B, lo, hi)
        try:
            s = relay.open_session(a_alloc, b_alloc)
            suite = "AES_CM_128_HMAC_SHA1_80"
            keys = {k: bytes([k]) * 30 for k in range(1, 5)}
            s.set_crypto("a", inbound=SrtpContext(suite, keys[1], "inbound"),
                         outbound=SrtpContext(suite, keys[2], "outbound"))
            s.set_crypto("b", inbound=SrtpContext(suite, keys[3], "inbound"),
                         outbound=SrtpContext(suite, keys[4], "outbound"))
            a_tx = SrtpContext(suite, keys[1], "outbound")
            b_rx = SrtpContext(suite, keys[4], "inbound")
            pa, pb = udp(PARTY_A), udp(PARTY_B)
            s.set_remote("a", PARTY_A, addr(pa)[1])
            s.set_remote("b", PARTY_B, addr(pb)[1])
            la = s.local("a")
            pkt = rtp_packet(9, ssrc=99)
            pa.sendto(a_tx.protect_rtp(pkt), (la.ip, la.rtp_port))
            assert b_rx.unprotect_rtp((await recv(pb))[0]) == pkt
            rtcp = rtcp_packet(99, b"muxed")
            pa.sendto(a_tx.protect_rtcp(rtcp), (la.ip, la.rtp_port))
            assert b_rx.unprotect_rtcp((await recv(pb))[0]) == rtcp
            assert s.stats()["dropped"] == 0
        finally:
            relay.close()

    run(main, kind)


def test_plain_sessions_keep_the_plain_reader(udp):
    """A session without crypto is served by the unchanged plain reader, and
    SRTP legs by the separate one."""
    lo, hi = port_range(4)

    async def main():
        relay = MediaRelay(inactivity_timeout_s=None)
        a_alloc, b_alloc = PortAllocator(RELAY_A, lo, hi), PortAllocator(RELAY_B, lo, hi)
        try:
            plain = relay.open_session(a_alloc, b_alloc)
            legs = [plain._a_rtp, plain._a_rtcp, plain._b_rtp, plain._b_rtcp]
            assert not any(leg.srtp for leg in legs)
            s = relay.open_session(a_alloc, b_alloc)
            s.set_crypto("b", inbound=None,
                         outbound=SrtpContext("AES_CM_128_HMAC_SHA1_32", KEY1, "outbound"))
            # Only A's legs (which send out of B) need SRTP.
            assert [leg.srtp for leg in (s._a_rtp, s._a_rtcp, s._b_rtp, s._b_rtcp)] == [
                True, True, False, False]
            assert s._a_rtp.sbuf is relay._sbuf and len(relay._sbuf) > len(relay._buf)
        finally:
            relay.close()

    run(main, "asyncio")
