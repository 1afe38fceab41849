"""SDP parsing, serialisation and relay rewriting (RFC 4566, RFC 3264, RFC 3605)."""

from __future__ import annotations

import copy

import pytest
from conftest import RFC4475
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeway.sip.message import parse_message
from edgeway.sip.sdp import (
    Connection,
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
    addrtype_for,
    rewrite_for_relay,
)

OFFER = (
    "v=0\r\n"
    "o=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\n"
    "s=call\r\n"
    "i=an unknown-to-us info line\r\n"
    "c=IN IP4 10.0.0.5\r\n"
    "b=AS:2048\r\n"
    "t=0 0\r\n"
    "a=ice-ufrag:F7gI\r\n"
    "a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "b=TIAS:64000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtcp:49171 IN IP4 10.0.0.5\r\n"
    "a=candidate:1 1 UDP 2130706431 10.0.0.5 49170 typ host\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n"
    "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32\r\n"
    "a=sendonly\r\n"
    "m=video 0 RTP/AVP 31\r\n"
    "a=rtcp:9 IN IP4 10.0.0.5\r\n"
    "m=video 51372/2 RTP/AVP 99\r\n"
    "c=IN IP4 10.0.0.6\r\n"
    "y=unknown line type\r\n"
    "a=rtpmap:99 h263-1998/90000\r\n"
    "a=fmtp:99\r\n"
    "a=rtcp:51400\r\n"
)


def body(path: str) -> bytes:
    return parse_message((RFC4475 / path).read_bytes()).body


def test_parse_typed_fields():
    s = SessionDescription.parse(OFFER)
    assert s.version == 0
    assert s.origin == Origin("alice", "2890844526", 2890844526, "IN", "IP4", "10.0.0.5")
    assert s.session_name == "call"
    assert s.connection == Connection("IN", "IP4", "10.0.0.5")
    assert s.attributes[2] == ("group", "BUNDLE 0 1")
    assert ("i", "an unknown-to-us info line") in s.other and ("t", "0 0") in s.other
    audio, vid0, vid = s.media
    assert (audio.media, audio.port, audio.port_count, audio.proto, audio.fmts) == ("audio", 49170, None, "RTP/AVP", ["0", "8", "101"])
    assert audio.connection is None and s.connection_for(audio) == s.connection
    assert audio.other == [("b", "TIAS:64000")]
    assert audio.get_attribute("rtpmap") == "0 PCMU/8000"
    assert audio.rtcp_attribute == (49171, Connection("IN", "IP4", "10.0.0.5"))
    assert len(audio.crypto) == 2 and audio.crypto[0].startswith("1 AES_CM_128_HMAC_SHA1_80 ")
    assert audio.direction == "sendonly" and s.media_direction(0) == "sendonly"
    assert vid0.is_rejected and vid0.direction is None and s.media_direction(vid0) == "sendrecv"
    assert (vid.port, vid.port_count) == (51372, 2)
    assert vid.connection == Connection("IN", "IP4", "10.0.0.6")
    assert vid.other == [("y", "unknown line type")]
    assert ("fmtp", "99") in vid.attributes
    assert vid.rtcp_attribute == (51400, None)
    assert s.direction is None and s.session_direction == "sendrecv"


def test_round_trip_exact():
    s = SessionDescription.parse(OFFER.encode())
    assert s.to_bytes() == OFFER.encode()
    assert SessionDescription.parse(s.to_bytes()) == s


def test_lf_line_ends_accepted_and_crlf_written():
    s = SessionDescription.parse(OFFER.replace("\r\n", "\n"))
    assert s.to_bytes() == OFFER.encode()


def test_flag_vs_empty_value_attribute():
    s = SessionDescription.parse("v=0\r\na=flag\r\na=empty:\r\n")
    assert s.attributes == [("flag", None), ("empty", "")]
    assert s.to_bytes() == b"v=0\r\na=flag\r\na=empty:\r\n"


def test_rfc4475_sdp01_body():
    data = body("3.3-application/sdp01.dat")
    s = SessionDescription.parse(data)
    assert s.origin is not None and s.origin.address == "192.0.2.5"
    assert [(m.media, m.port, m.fmts) for m in s.media] == [("audio", 49217, ["0", "12"]), ("video", 3227, ["31"])]
    assert s.media[1].attributes == [("rtpmap", "31 LPC")]
    assert s.to_bytes() == data


def test_rfc4475_inv2543_body():
    data = body("3.4-backcompat/inv2543.dat")
    s = SessionDescription.parse(data)
    assert s.media[0].port == 49217
    assert s.to_bytes() == data


def test_rfc4475_dblreq_malformed_mline():
    data = (RFC4475 / "3.1.1-valid/dblreq.dat").read_bytes()
    sdp = data[data.index(b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.15"):]
    with pytest.raises(SdpError, match="m =video"):
        SessionDescription.parse(sdp)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "v="),
        ("o=x 1 1 IN IP4 1.2.3.4\r\nv=0\r\n", "v="),
        ("v=zero\r\n", "v="),
        ("v=0\r\nm=audio\r\n", "m= line"),
        ("v=0\r\nm=audio port RTP/AVP 0\r\n", "port 'port'"),
        ("v=0\r\nm=audio 70000 RTP/AVP 0\r\n", "port"),
        ("v=0\r\nm=audio 4000/x RTP/AVP 0\r\n", "port count"),
        ("v=0\r\no=only three fields\r\n", "o= line"),
        ("v=0\r\no=a b notnum IN IP4 h\r\n", "sess-version"),
        ("v=0\r\nc=IN IP4\r\n", "c= line"),
        ("v=0\r\nno equals sign\r\n", "malformed SDP line"),
        ("v=0\r\nab=two letters\r\n", "malformed SDP line"),
    ],
)
def test_malformed(text, match):
    with pytest.raises(SdpError, match=match):
        SessionDescription.parse(text)


def test_sdp_error_is_value_error():
    assert issubclass(SdpError, ValueError)


def test_malformed_rtcp_attribute():
    s = SessionDescription.parse("v=0\r\nm=audio 5000 RTP/AVP 0\r\na=rtcp:abc\r\n")
    with pytest.raises(SdpError):
        s.media[0].rtcp_attribute


def test_tolerant_unknown_lines_and_missing_origin():
    s = SessionDescription.parse("v=0\r\nq=whatever\r\nm=audio 0 RTP/AVP 0\r\n")
    assert s.origin is None and s.session_name is None
    assert s.other == [("q", "whatever")]
    assert s.to_bytes() == b"v=0\r\nq=whatever\r\nm=audio 0 RTP/AVP 0\r\n"


def test_edits_are_placed_in_rfc_order():
    s = SessionDescription.parse("v=0\r\no=a 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    s.connection = Connection.for_address("192.0.2.1")
    s.media[0].connection = Connection.for_address("192.0.2.2")
    s.media[0].set_direction("recvonly")
    s.attributes.append(("tool", "edgeway"))
    assert s.to_bytes().decode().splitlines() == [
        "v=0", "o=a 1 1 IN IP4 h", "s=-", "c=IN IP4 192.0.2.1", "t=0 0", "a=tool:edgeway",
        "m=audio 5000 RTP/AVP 0", "c=IN IP4 192.0.2.2", "a=rtpmap:0 PCMU/8000", "a=recvonly",
    ]
    s.media[0].set_direction("inactive")
    assert s.media[0].attributes[-1] == ("inactive", None) and s.media[0].direction == "inactive"
    with pytest.raises(ValueError):
        s.media[0].set_direction("sideways")
    s.media[0].set_direction(None)
    assert s.media[0].direction is None


def test_session_built_from_scratch():
    s = SessionDescription(
        origin=Origin("-", "1", 1, "IN", "IP4", "192.0.2.1"),
        connection=Connection.for_address("192.0.2.1"),
        other=[("t", "0 0")],
        media=[MediaDescription("audio", 4000, None, "RTP/AVP", ["0"], attributes=[("sendrecv", None)])],
    )
    text = s.to_bytes()
    assert text == (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"
    )
    assert SessionDescription.parse(text) == s


# ---------------------------------------------------------------------------
# rewrite_for_relay


def test_rewrite_for_relay_ipv4():
    s = SessionDescription.parse(OFFER)
    r = rewrite_for_relay(s, "203.0.113.10", [40000, 40002, 40004])
    assert s.to_bytes() == OFFER.encode()  # input untouched
    assert r.origin == Origin("alice", "2890844526", 2890844527, "IN", "IP4", "203.0.113.10")
    assert r.connection == Connection("IN", "IP4", "203.0.113.10")
    audio, vid0, vid = r.media
    assert audio.port == 40000 and audio.connection is None
    assert audio.rtcp_attribute == (40001, Connection("IN", "IP4", "203.0.113.10"))
    assert not any(n.startswith("ice-") or n == "candidate" for n, _ in r.attributes + audio.attributes)
    assert r.get_attribute("group") == "BUNDLE 0 1"
    assert audio.crypto == s.media[0].crypto and audio.direction == "sendonly"
    # port 0 passes through (RFC 3264 §6), its rtcp address is not leaked
    assert vid0.port == 0 and vid0.rtcp_attribute is None
    assert (vid.port, vid.port_count) == (40004, 2)
    assert vid.connection == Connection("IN", "IP4", "203.0.113.10")
    assert vid.rtcp_attribute == (40005, Connection("IN", "IP4", "203.0.113.10"))
    assert b"10.0.0." not in r.to_bytes()
    # the rewritten body parses and re-serialises identically
    assert SessionDescription.parse(r.to_bytes()) == r
    lines = r.to_bytes().decode().splitlines()
    assert lines[:6] == ["v=0", "o=alice 2890844526 2890844527 IN IP4 203.0.113.10", "s=call",
                         "i=an unknown-to-us info line", "c=IN IP4 203.0.113.10", "b=AS:2048"]


def test_rewrite_none_port_disables_stream():
    s = SessionDescription.parse(OFFER)
    r = rewrite_for_relay(s, "203.0.113.10", [None, 50000, 40004])
    assert r.media[0].port == 0 and r.media[0].rtcp_attribute is None
    assert r.media[1].port == 0  # rejected stays rejected even if a port is offered


def test_rewrite_ipv6_and_origin_address():
    data = body("3.3-application/sdp01.dat")
    s = SessionDescription.parse(data)
    r = rewrite_for_relay(s, "[2001:db8::10]", [30000, 30002], origin_address="198.51.100.1")
    assert r.connection == Connection("IN", "IP6", "2001:db8::10")
    assert r.origin is not None
    assert (r.origin.addrtype, r.origin.address, r.origin.sess_version, r.origin.sess_id) == ("IP4", "198.51.100.1", 7272940, "29739")
    assert [m.port for m in r.media] == [30000, 30002]
    assert b"c=IN IP6 2001:db8::10\r\n" in r.to_bytes()


def test_rewrite_version_is_consistent():
    s = SessionDescription.parse(OFFER)
    a = rewrite_for_relay(s, "203.0.113.10", [1000, 1002, 1004])
    b = rewrite_for_relay(s, "203.0.113.10", [1000, 1002, 1004])
    assert a.to_bytes() == b.to_bytes()
    s.origin.sess_version += 1  # type: ignore[union-attr]
    c = rewrite_for_relay(s, "203.0.113.10", [1000, 1002, 1004])
    assert c.origin.sess_version == a.origin.sess_version + 1  # type: ignore[union-attr]
    assert c.origin.sess_id == a.origin.sess_id  # type: ignore[union-attr]


def test_rewrite_media_level_only_connection():
    s = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 0\r\nc=IN IP4 10.1.1.1\r\nc=IN IP4 10.1.1.2\r\n"
        "m=video 5002 RTP/AVP 96\r\n"
    )
    r = rewrite_for_relay(s, "192.0.2.7", [6000, 6002])
    assert r.connection is None
    assert all(m.connection == Connection("IN", "IP4", "192.0.2.7") for m in r.media)
    assert b"10.1.1." not in r.to_bytes()


def test_rewrite_arguments_checked():
    s = SessionDescription.parse(OFFER)
    with pytest.raises(ValueError):
        rewrite_for_relay(s, "192.0.2.1", [1000])
    with pytest.raises(ValueError):
        rewrite_for_relay(s, "192.0.2.1", [1000, 0, 70000])


def test_addrtype_for():
    assert addrtype_for("192.0.2.1") == "IP4"
    assert addrtype_for("::1") == "IP6" and addrtype_for("[::1]") == "IP6"
    assert addrtype_for("relay.example.com") == "IP4"


# ---------------------------------------------------------------------------
# property: generated simple SDPs round-trip

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._", min_size=1, max_size=12)
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).filter(lambda t: t.strip() == t and t != "")
_ip4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_conn = _ip4.map(lambda a: f"IN IP4 {a}")
_attr = st.one_of(
    _token.map(lambda n: f"a={n}"),
    st.tuples(_token, _text).map(lambda nv: f"a={nv[0]}:{nv[1]}"),
)
_other = st.tuples(st.sampled_from("ibkyx"), _text).map(lambda tv: f"{tv[0]}={tv[1]}")


@st.composite
def _media(draw) -> list[str]:
    port = draw(st.integers(0, 65535))
    count = draw(st.none() | st.integers(1, 8))
    fmts = draw(st.lists(st.integers(0, 127).map(str), min_size=1, max_size=5))
    mline = f"m={draw(st.sampled_from(['audio', 'video', 'application', 'text']))} {port}{'' if count is None else f'/{count}'} {draw(st.sampled_from(['RTP/AVP', 'RTP/SAVP', 'UDP/TLS/RTP/SAVPF']))} {' '.join(fmts)}"
    lines = [mline]
    lines += draw(st.lists(_other.filter(lambda l: l[0] == "i"), max_size=1))
    if draw(st.booleans()):
        lines.append("c=" + draw(_conn))
    lines += draw(st.lists(_other.filter(lambda l: l[0] != "i"), max_size=2))
    lines += draw(st.lists(_attr, max_size=5))
    return lines


@st.composite
def _sdp(draw) -> str:
    lines = ["v=0", f"o={draw(_token)} {draw(st.integers(0, 2**40))} {draw(st.integers(0, 2**40))} IN IP4 {draw(_ip4)}", f"s={draw(_text)}"]
    if draw(st.booleans()):
        lines.append("c=" + draw(_conn))
    lines.append("t=0 0")
    lines += draw(st.lists(_attr, max_size=4))
    for m in draw(st.lists(_media(), max_size=4)):
        lines += m
    return "\r\n".join(lines) + "\r\n"


@settings(max_examples=100, deadline=None)
@given(_sdp())
def test_round_trip_property(text: str):
    s = SessionDescription.parse(text)
    out = s.to_bytes()
    assert out == text.encode("utf-8")
    again = SessionDescription.parse(out)
    assert again == s
    assert again.to_bytes() == out


@settings(max_examples=50, deadline=None)
@given(_sdp(), st.data())
def test_rewrite_property(text: str, data):
    s = SessionDescription.parse(text)
    ports = data.draw(st.lists(st.none() | st.integers(1, 65534), min_size=len(s.media), max_size=len(s.media)))
    r = rewrite_for_relay(s, "192.0.2.99", ports)
    for m, orig, p in zip(r.media, s.media, ports):
        assert m.port == (0 if orig.port == 0 or p is None else p)
        assert r.connection_for(m) == Connection("IN", "IP4", "192.0.2.99")
    assert SessionDescription.parse(r.to_bytes()) == r


def _state(s: SessionDescription) -> tuple:
    """Everything a description holds, ``_layout`` included (not in ``==``)."""
    return (s, s._layout, [m._layout for m in s.media], s.to_bytes())


@settings(max_examples=100, deadline=None)
@given(_sdp())
def test_copy_is_a_deep_copy(text: str):
    s = SessionDescription.parse(text)
    if s.media and s.connection is not None:
        s.media[-1].connection = s.connection  # a shared object stays shared, as with deepcopy
    before = _state(s)
    c = s.copy()
    assert _state(c) == _state(copy.deepcopy(s)) == before
    if s.media and s.connection is not None:
        assert c.media[-1].connection is c.connection and c.connection is not s.connection
    # Changing anything in the copy leaves the original alone.
    if c.origin is not None:
        c.origin.sess_version += 1
    if c.connection is not None:
        c.connection.address = "198.51.100.1"
    c.attributes.append(("x-new", None))
    c._layout.append(("attr", "a"))
    for m in c.media:
        m.fmts.append("99")
        m.attributes.append(("x", "y"))
        m.other.append(("i", "z"))
        m._layout.append(("other", "i"))
        if m.connection is not None:
            m.connection.addrtype = "IP6"
    c.media.append(MediaDescription.parse_mline("audio 9 RTP/AVP 0"))
    assert _state(s) == before


def _outcome(fn, *args):
    """``("ok", fields as plain data, bytes)`` or ``(error type, text)``."""
    import dataclasses

    try:
        s = fn(*args)
    except Exception as exc:  # noqa: BLE001 - same error type and text expected
        return (type(exc).__name__, str(exc))
    return ("ok", dataclasses.asdict(s), s.to_bytes())


_sdp_noise = st.text(alphabet="vosctmaib=: \t\r\nIP4N0123456789/é\x85-", max_size=60)


@st.composite
def _mangled_sdp(draw) -> str:
    """A generated SDP with line ends, blank lines and characters changed."""
    text = draw(_sdp())
    text = text.replace("\r\n", draw(st.sampled_from(["\r\n", "\n", "\r\n\r\n", "\n \n", "\r\r\n"])))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(list("=\r\n \tvma1é"))) + text[i + 1:]
    if draw(st.booleans()):
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines)))
        lines.insert(i, draw(st.sampled_from(["1=x", "é=y", "==", "=", "a", " a=x", "ab=c", "Z=", "\x85=1"])))
        text = "\n".join(lines)
    return text


@settings(max_examples=300, deadline=None)
@given(st.one_of(_sdp(), _mangled_sdp(), _sdp_noise.map(lambda t: "v=0\r\n" + t)), st.booleans(),
       st.sampled_from(["192.0.2.99", "2001:db8::9", "[2001:db8::9]", "relay.example.com"]))
def test_parse_copy_rewrite_match_reference(text: str, as_bytes: bool, address: str):
    """Parsing, copying, rewriting and writing give what the module gave before its
    speed-ups (tests/sdp_reference.py), errors included."""
    import sdp_reference as ref

    data = text.encode("utf-8", "surrogateescape") if as_bytes else text
    got = _outcome(SessionDescription.parse, data)
    assert got == _outcome(ref.SessionDescription.parse, data)
    if got[0] != "ok":
        return
    mine, theirs = SessionDescription.parse(data), ref.SessionDescription.parse(data)
    assert _outcome(mine.copy) == _outcome(theirs.copy)
    ports = [None if i % 3 == 2 else 40000 + 2 * i for i in range(len(mine.media))]
    assert _outcome(rewrite_for_relay, mine, address, ports) == _outcome(ref.rewrite_for_relay, theirs, address, ports)
    assert addrtype_for(address) == ref.addrtype_for(address)


# ---------------------------------------------------------------------------
# The relay fast path (scan_for_relay / RelayScan.rewrite) against the object model.

_SESSION_LINES = ["s=-", "s=call", "t=0 0", "b=AS:64", "i=info", "a=group:BUNDLE 0", "a=ice-ufrag:abc", "a=ice-lite",
                  "a=sendrecv", "c=IN IP4 192.0.2.9", "o=dup 1 1 IN IP4 192.0.2.8", "z=0 0", "x=unknown"]
_MEDIA_LINES = ["a=rtpmap:8 PCMA/8000", "a=rtcp:40001", "a=rtcp:40001 IN IP4 192.0.2.7", "a=candidate:1 1 UDP 1 192.0.2.7 40000 typ host",
                "a=end-of-candidates", "a=ice-pwd:xyz", "a=sendonly", "b=AS:32", "c=IN IP4 192.0.2.6", "c=IN IP6 2001:db8::6",
                "i=media", "k=prompt", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"]


@st.composite
def _sdp_bodies(draw) -> bytes:
    lines = ["v=0", f"o=alice {draw(st.integers(0, 9))} {draw(st.integers(0, 99))} IN IP4 192.0.2.1"]
    lines += draw(st.lists(st.sampled_from(_SESSION_LINES), max_size=6))
    lines.insert(draw(st.integers(2, len(lines))), "c=IN IP4 192.0.2.1")  # the fast path needs a session c=
    for _ in range(draw(st.integers(0, 3))):
        port = draw(st.sampled_from(["0", "40000", "40002/2", "9"]))
        lines.append(f"m={draw(st.sampled_from(['audio', 'video']))} {port} {draw(st.sampled_from(['RTP/AVP', 'RTP/SAVP']))} 8 0")
        lines += draw(st.lists(st.sampled_from(_MEDIA_LINES), max_size=6))
    end = draw(st.sampled_from(["\r\n", "\n"]))
    return (end.join(lines) + end).encode()


@settings(max_examples=400, deadline=None)
@given(_sdp_bodies(), st.data())
def test_relay_fast_path_equals_the_object_model(body: bytes, data) -> None:
    from edgeway.sip import sdp as S

    scan = S.scan_for_relay(body)
    model = S.SessionDescription.parse(body)
    assert scan is not None, body  # every body of this grammar has a session c= and is well formed
    ports = [data.draw(st.sampled_from([None, 36000, 50000])) for _ in model.media]
    assert scan.rewrite("203.0.113.1", ports) == S.rewrite_for_relay(model, "203.0.113.1", ports).to_bytes()
    want = []
    for m in model.media:
        c = m.connection or model.connection
        rtcp = m.rtcp_attribute
        want.append((m.port, m.proto, c.address if c else None, rtcp[0] if rtcp else None))
    assert scan.media == want


def test_relay_fast_path_declines_what_it_does_not_take() -> None:
    from edgeway.sip import sdp as S

    assert S.scan_for_relay(b"v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n") is None  # no session c=
    assert S.scan_for_relay(b"m =audio 4000 RTP/AVP 0\r\n") is None
    assert S.scan_for_relay(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 99999 RTP/AVP 0\r\n") is None
    assert S.scan_for_relay(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\n") is None
