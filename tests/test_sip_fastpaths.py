"""The SIP parser's fast paths, memos and cached views change no behaviour.

The oracle is ``sip_reference`` (the parser before the fast paths, kept verbatim):
on generated and mutated inputs, every function gives the same result or raises the
same error with the same text. Cached views must agree with a fresh parse of the
serialised message after any sequence of edits.
"""

from __future__ import annotations

import itertools
import tomllib

import pytest
import sip_reference as ref
from conftest import RFC4475
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from edgeway.sip import message as M
from edgeway.sip import uri as U

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- comparison


def norm(x):
    """Plain data for results of either implementation (so they compare)."""
    name = type(x).__name__
    if name == "Uri":
        return ("uri", x.scheme, x.user, x.password, x.host, x.port, norm(x.params), x.headers, x.opaque)
    if name == "NameAddr":
        return ("na", norm(x.uri) if x.uri is not None else None, x.display, norm(x.params), x.star)
    if name == "Via":
        return ("via", x.transport, x.host, x.port, norm(x.params), x.protocol)
    if name in ("Request", "Response"):
        return (name, x.start_line(), [tuple(e) for e in x.headers], x.body)
    if isinstance(x, U.Params):  # repeated names: the reference kept the last value of each
        return tuple(dict(x.all_items()).items())
    if isinstance(x, dict):
        return tuple(x.items())
    if isinstance(x, (list, tuple)):
        return [norm(e) for e in x]
    return x


def outcome(fn, *args, **kw):
    """("ok", result) or the error: kind, text and (ParseError) stream flag and partial."""
    try:
        return ("ok", norm(fn(*args, **kw)))
    except (M.ParseError, ref.ParseError) as exc:
        return ("ParseError", exc.reason, exc.fatal_for_stream, norm(exc.partial) if exc.partial else None)
    except (U.UriError, ref.UriError) as exc:
        return ("UriError", str(exc))
    except Exception as exc:  # noqa: BLE001 - same exception type and text expected
        return (type(exc).__name__, str(exc))


def agrees(got, theirs) -> bool:
    """``got`` (ours) is the reference's outcome ``theirs``, or the intended fix of
    it: where the reference let a bare ValueError out of ``int()`` (a non-ASCII digit,
    e.g. ``CSeq: ² INVITE``), ours raises its documented error instead; where the
    reference had no partial request for a malformed header section, ours may have
    salvaged one (start line and the headers a response needs)."""
    if theirs[0] == "ValueError" and got[0] in ("ParseError", "UriError"):
        return True
    if got[0] == theirs[0] == "ParseError" and got[1:3] == theirs[1:3] and theirs[3] is None:
        return got[3] is None or got[3][0] == "Request"  # ours salvaged a request to answer
    return got == theirs


def views(msg) -> dict:
    """Every typed view of a message, each as an outcome."""
    out = {
        "top_via": outcome(msg.top_via),
        "vias": outcome(msg.vias),
        "from": outcome(lambda: msg.from_),
        "to": outcome(lambda: msg.to),
        "from_tag": outcome(lambda: msg.from_tag),
        "to_tag": outcome(lambda: msg.to_tag),
        "cseq": outcome(lambda: msg.cseq),
        "call_id": outcome(lambda: msg.call_id),
        "content_type": outcome(lambda: msg.content_type),
    }
    if hasattr(msg, "method"):
        out["ruri"] = outcome(lambda: msg.ruri)
        out["branch"] = outcome(lambda: msg.branch)
    return out


# ----------------------------------------------------------------------------- generators

# Characters that matter to the grammars, some non-ASCII and Unicode whitespace.
ALPHABET = "sipSIPtelTag:;=,<>\"@?[]/.-_!%*+`'~ \t0123456789abcdefxyzUDP\\()&$#{}|^\x85\xa0é\u2028"
noise = st.text(alphabet=ALPHABET, max_size=40)

hosts = st.one_of(
    st.sampled_from([
        "127.0.0.1", "10.0.0.255", "999.1.1.1", "256.0.0.1", "1.2.3", "example.com", "ex_ample.com",
        "-bad.com", "a..b", "host.", "[::1]", "[2001:db8::1]", "[::1", "[zz]", "", "h%41", "é.com",
    ]),
    st.from_regex(r"[a-z0-9._\-]{1,12}", fullmatch=True),
)
ports = st.sampled_from(["", ":5060", ":0", ":65535", ":65536", ":99999", ":00", ":5060a", ":", ": 5060"])
users = st.sampled_from(["", "alice@", "a;b@", "a:pw@", "a%20b@", "@", "a@b@", "+1555@", "a b@", "a?b@", "ALICE@"])
pnames = st.sampled_from(["branch", "rport", "lr", "transport", "tag", "x", "", "a b", "Tag", "re;ceived", "é"])
pvalues = st.sampled_from([
    None, "z9hG4bK1", "udp", "", '"q"', '"a;b"', '"unterminated', "a b", "a=b", "1.2.3.4", "[::1]", "a@b",
    "a?b", "<x>", "x,y", " v ", "é", "a\x85",
])
seps = st.sampled_from([";", ";", ";", " ;", "; ", " ; "])


@st.composite
def param_texts(draw) -> str:
    out = ""
    for _ in range(draw(st.integers(0, 3))):
        name, value = draw(pnames), draw(pvalues)
        out += draw(seps) + name + ("" if value is None else draw(st.sampled_from(["=", " = ", "="])) + value)
    return out


@st.composite
def uris(draw) -> str:
    scheme = draw(st.sampled_from(["sip", "sip", "sips", "SIP", "tel", "mailto", "http", "1x", ""]))
    if scheme == "tel":
        return "tel:" + draw(st.sampled_from(["+15551234", "", "911"])) + draw(param_texts())
    text = f"{scheme}:{draw(users)}{draw(hosts)}{draw(ports)}{draw(param_texts())}"
    if draw(st.booleans()) and draw(st.booleans()):
        text += "?" + draw(st.sampled_from(["subject=x", "", "a=b&c=d"]))
    return text


@st.composite
def name_addrs(draw) -> str:
    form = draw(st.sampled_from(["angle", "angle", "display", "addr-spec", "star", "noise"]))
    if form == "star":
        return draw(st.sampled_from(["*", " * ", "**"]))
    if form == "noise":
        return draw(noise)
    uri = draw(uris())
    if form == "addr-spec":
        return uri + draw(param_texts())
    display = ""
    if form == "display":
        display = draw(st.sampled_from([
            '"Alice"', '"A \\"q\\" B"', '""', "Alice", "Alice Smith", "Al<ice", '"unterminated', "Al@ice",
            "sipp", '"é"', "A  B",
        ])) + draw(st.sampled_from(["", " ", "  ", "\t"]))
    inner = draw(st.sampled_from(["", "", "", " "]))
    return f"{display}<{inner}{uri}{inner}>" + draw(param_texts()) + draw(st.sampled_from(["", "", " ", "x"]))


@st.composite
def vias(draw) -> str:
    proto = draw(st.sampled_from([
        "SIP/2.0/UDP", "SIP/2.0/TCP", "SIP/2.0/tls", "sip/2.0/UDP", "SIP / 2.0 / UDP", "SIP/2.1/UDP",
        "SIP/2.0/U@P", "SIP/2.0", "SIP/2.0/UDP/X",
    ]))
    sp = draw(st.sampled_from([" ", " ", "  ", "\t", ""]))
    return f"{proto}{sp}{draw(hosts)}{draw(ports)}{draw(param_texts())}" + draw(st.sampled_from(["", "", " ", " (c)"]))


@st.composite
def mutated(draw, base: st.SearchStrategy[str]) -> str:
    """A value from ``base`` with a few characters inserted, deleted or replaced."""
    s = draw(base)
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(s)))
        op = draw(st.sampled_from(["ins", "del", "rep"]))
        c = draw(st.sampled_from(ALPHABET))
        s = s[:i] + c + s[i:] if op == "ins" else s[:i] + s[i + 1:] if op == "del" else s[:i] + c + s[i + 1:]
    return s


valid_vias = st.builds(
    lambda t, h, p, b, r: f"SIP/2.0/{t} {h}{p};branch=z9hG4bK{b}{r}",
    st.sampled_from(["UDP", "TCP", "TLS", "tls"]), st.sampled_from(["10.0.0.1", "[::1]", "edge.example.com"]),
    st.sampled_from(["", ":5060", ":7001"]), st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True),
    st.sampled_from(["", ";rport", ";rport=5060;received=192.0.2.1", ";x=\"q\""]),
)
valid_addrs = st.builds(
    lambda d, u, t: f"{d}<{u}>" + (f";tag={t}" if t else ""),
    st.sampled_from(["", "Alice ", '"Bob B" ']),
    st.sampled_from(["sip:alice@example.com", "sip:bob@10.0.0.1:5060;transport=tcp", "sips:c@h.example.com"]),
    st.one_of(st.none(), st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)),
)


# ----------------------------------------------------------------------------- primitives


@SETTINGS
@given(st.one_of(noise, st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{0,12}", fullmatch=True)))
def test_is_token_matches_reference(text):
    assert U.is_token(text) == ref.is_token(text)


@SETTINGS
@given(st.one_of(hosts, noise, mutated(hosts)))
def test_valid_host_matches_reference_and_memo_is_stable(host):
    assert U.valid_host(host) == ref.valid_host(host)
    assert U.valid_host(host) == ref.valid_host(host)  # second call: from the memo


@SETTINGS
@given(st.one_of(noise, mutated(param_texts())), st.sampled_from([";", ","]))
def test_split_outside_quotes_matches_reference(text, sep):
    assert outcome(U._split_outside_quotes, text, sep) == outcome(ref._split_outside_quotes, text, sep)


@SETTINGS
@given(st.one_of(
    noise,
    st.text(alphabet='<>,a ;"\\', max_size=16),  # bracket and comma structure, densely
    st.lists(st.one_of(name_addrs(), vias()), min_size=1, max_size=3).map(", ".join),
    mutated(st.lists(name_addrs(), min_size=1, max_size=3).map(",".join)),
))
def test_split_header_list_matches_reference(value):
    assert outcome(U.split_header_list, value) == outcome(ref.split_header_list, value)


@SETTINGS
@example("<a<b>,c")
@example("<a>>,<b,c>")
@example("a>,<b>,c")
@example("<a,b>, c ,")
@given(st.text(alphabet="<>,a ;", max_size=14))
def test_split_header_list_bracket_structure_matches_reference(value):
    """Quote-free values made of brackets and commas only: every way the depth can go."""
    assert outcome(U.split_header_list, value) == outcome(ref.split_header_list, value)


@SETTINGS
@given(st.one_of(param_texts().map(lambda t: t.removeprefix(";")), noise, mutated(param_texts())))
def test_parse_params_matches_reference(text):
    assert outcome(U.parse_params, text, where="X") == outcome(ref.parse_params, text, where="X")


# Inputs at the edge of the fast paths' forms (each must decline or agree).
URI_EDGES = [
    "sip:a:pw@h.example.com", "sip:a:@h", "SIP:a@h", "Sip:a@h", "sips:a@h", "sip:a@h;x=a@b", "sip:a@h;x=a?b",
    "sip:h;x=a@b", "sip:a@h?x=1", "sip:h:0", "sip:h:65535", "sip:h:65536", "sip:h:5060a", "sip:999.1.1.1",
    "sip:1.2.3.4.5", "sip:a@[::1]:5060", "sip:[::1", "sip:a@h;lr;lr", "sip:a@h;lr=", "sip:a@h;=x", "sip:a@h;",
    "sip:a;b@h", "sip:a,b@h", "sip:a%20b@h", "sip:@h", "sip:a@@h", "sip:-h", "sip:h-", "sip:h_", "sip:h.",
    "sip:a@h;maddr=[::1]", "sip:a@h;x=(1)", "tel:+1555;x=1", "sip:a@h;X=Y;x=y",
]


@SETTINGS
@example(URI_EDGES[0])
@given(st.one_of(uris(), mutated(uris()), noise, st.sampled_from(URI_EDGES)))
def test_parse_uri_matches_reference(text):
    got = outcome(U.parse_uri, text)
    assert agrees(got, outcome(ref.parse_uri, text))
    if got[0] == "ok":
        uri = U.parse_uri(text)
        if isinstance(uri.params, U.Params):  # the reference dropped all but the last value
            assert U.parse_uri(str(uri)) == uri
        else:
            assert str(uri) == str(ref.parse_uri(text))


@SETTINGS
@given(st.from_regex(r"sips?:([a-z0-9.%+\-]{1,8}@)?[a-z0-9]{1,8}(\.[a-z]{1,5}){0,2}(:[1-9][0-9]{0,3})?", fullmatch=True),
       st.lists(st.sampled_from(["lr", "transport=udp", "transport=tls", "user=phone", "x=A1", "maddr=[::1]"]),
                max_size=3, unique_by=lambda p: p.partition("=")[0]))
def test_plain_uris_round_trip(base, params):
    """Accepted URIs serialise back to the same text (lossless forwarding; repeated
    parameter names are test_parser_hardening's)."""
    text = base + "".join(";" + p for p in params)
    assert str(U.parse_uri(text)) == text


NAME_ADDR_EDGES = [f"<{u}>" for u in URI_EDGES] + [f"{u};tag=1" for u in URI_EDGES] + [
    '"A" <sip:a@h>', '"A"<sip:a@h>', '"A"  <sip:a@h>', '"A\\"B" <sip:a@h>', '"" <sip:a@h>', "A B <sip:a@h>",
    "A  B <sip:a@h>", "A<sip:a@h>", "<sip:a@h> ;tag=1", "<sip:a@h>;tag=1 ", " <sip:a@h>", "<sip:a@h>;tag",
    "<sip:a@h>;tag=", "<sip:a@h>;tag=a@b", "<sip:a@h>;tag=<x>", "sip:a@h;tag=1;lr", "sip:a@h?x;tag=1", "*",
    "<sip:a@h;lr>x", '<sip:a@h>;x="q"', "A@B <sip:a@h>",
]


@SETTINGS
@given(st.one_of(name_addrs(), mutated(name_addrs()), st.sampled_from(NAME_ADDR_EDGES)), st.booleans())
def test_parse_name_addr_matches_reference(value, allow_star):
    got = outcome(U.parse_name_addr, value, allow_star=allow_star)
    assert got == outcome(ref.parse_name_addr, value, allow_star=allow_star)
    # Again: now possibly answered by the memo, which must not change anything.
    assert outcome(U.parse_name_addr, value, allow_star=allow_star) == got
    assert outcome(U._check_name_addr, value, allow_star) == (got if got[0] != "ok" else ("ok", None))


VIA_EDGES = [
    "SIP/2.0/UDP h", "SIP/2.0/UDP h:5060", "SIP/2.0/udp h;rport", "sip/2.0/UDP h", "SIP/2.0/UDP  h",
    "SIP/2.0/UDP\th", "SIP/2.0/UDP h ;branch=x", "SIP/2.0/UDP h:0", "SIP/2.0/UDP h:65536", "SIP/2.0/UDP [::1]:5060",
    "SIP/2.0/UDP [::1]5060", "SIP/2.0/UDP 999.0.0.1", "SIP/2.0/UDP h;branch", "SIP/2.0/UDP h;branch=",
    "SIP/2.0/UDP h;;x", "SIP/2.0/UDP h;x=\"q\"", "SIP/2.0/UDP h;received=a@b", "SIP/2.0/U.P h", "SIP/2.0/UDP h:",
]


@SETTINGS
@given(st.one_of(vias(), mutated(vias()), noise, st.sampled_from(VIA_EDGES)))
def test_via_parse_matches_reference(value):
    got = outcome(M.Via.parse, value)
    assert agrees(got, outcome(ref.Via.parse, value))
    assert outcome(M.Via.parse, value) == got  # memo
    if got[0] == "ok":
        via = M.Via.parse(value)
        if isinstance(via.params, U.Params):  # the reference dropped all but the last value
            assert M.Via.parse(str(via)) == via
        else:
            assert str(via) == str(ref.Via.parse(value))


def test_memoised_results_are_fresh_objects():
    """A caller changing a parse result does not change later parses of the text."""
    value = "Bob <sip:bob@example.com;transport=tcp>;tag=abc"
    a = U.parse_name_addr(value)
    a.params["tag"] = "changed"
    a.uri.params["transport"] = "udp"
    b = U.parse_name_addr(value)
    assert b is not a and b.tag == "abc" and b.uri.params == {"transport": "tcp"}
    via = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK77;rport"
    v1 = M.Via.parse(via)
    v1.params["received"] = "192.0.2.1"
    v2 = M.Via.parse(via)
    assert v2 is not v1 and "received" not in v2.params


# ----------------------------------------------------------------------------- whole messages

MANIFEST = tomllib.loads((RFC4475 / "MANIFEST.toml").read_text())["message"]
CORPUS = [(RFC4475 / m["file"]).read_bytes() for m in MANIFEST]


def _call_messages() -> list[bytes]:
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "parse_bench.py"
    spec = importlib.util.spec_from_file_location("parse_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return list(mod.call_messages(7).values())


CALL = _call_messages()
SAMPLES = CORPUS + CALL

safe_lines = st.one_of(
    valid_vias.map(lambda v: "Via: " + v),
    st.lists(valid_vias, min_size=2, max_size=3).map(lambda vs: "v: " + " ,  ".join(vs)),
    st.lists(valid_addrs, min_size=1, max_size=3).map(lambda vs: "Record-Route: " + ", ".join(vs)),
    st.lists(valid_addrs, min_size=1, max_size=3).map(lambda vs: "Route:" + ",".join(vs)),
    valid_addrs.map(lambda v: "m: " + v),
    st.sampled_from([
        "Subject: ends in SP ", "Subject: folded \r\n after SP", "Subject: folded\r\n\t after HT",
        "Subject:  two  spaces\tand tab ", "X-Trailing: x  ", "Max-Forwards: 70", "Expires: 60",
        "Route: <sip:a.example.com;lr> ,\r\n <sip:b.example.com;lr>", "Content-Type: application/sdp",
        "Warning: 399 h \"x\"", "User-Agent: \xc3\xa9 agent", "Allow: INVITE,  ACK",
    ]),
)
header_lines = st.one_of(
    vias().map(lambda v: "Via: " + v),
    st.lists(vias(), min_size=2, max_size=3).map(lambda vs: "v: " + ", ".join(vs)),
    name_addrs().map(lambda v: "From: " + v),
    name_addrs().map(lambda v: "t: " + v),
    st.lists(name_addrs(), min_size=1, max_size=3).map(lambda vs: "Route: " + ", ".join(vs)),
    st.lists(name_addrs(), min_size=1, max_size=2).map(lambda vs: "Record-Route:" + ",".join(vs)),
    name_addrs().map(lambda v: "Contact: " + v),
    st.sampled_from([
        "Call-ID: abc@host", "i: x", "Call-ID: a b", "Call-ID:", "CSeq: 1 INVITE", "CSeq: 2 BYE", "CSeq: x INVITE",
        "CSeq: 1  INVITE", "cseq: 4294967296 INVITE", "CSeq: ² INVITE", "Max-Forwards: 70", "Max-Forwards: 256",
        "Max-Forwards: 0", "Expires: 3600", "Expires: -1", "Retry-After: 18;duration=3 (x)", "Retry-After: x",
        "Date: Sat, 13 Nov 2010 23:29:00 GMT", "Date: yesterday", "Warning: 399 h \"x\"", "Warning: 39 h",
        "Content-Length: 0", "Content-Length: 5", "l: 3", "Content-Length: 999999", "Content-Type: application/sdp",
        "Subject: hi\t there  you", "Bad Header: x", "NoColon", ": empty", "X-é: y", "Via :SIP/2.0/UDP h",
        " Folded: x", "\tcontinued", "Proxy-Require: foo", "Unknown-Header: \x85x\x85", "Subject: ends in SP ",
        "Subject: a\t", " continued after SP", "X-Trailing: x  ", "Subject: folded \r\n after SP",
        "Subject: folded\r\n\t after HT", "Route: <sip:a.example.com;lr> ,\r\n <sip:b.example.com;lr>",
    ]),
)


@st.composite
def messages(draw) -> bytes:
    start = draw(st.sampled_from([
        "INVITE sip:bob@example.com SIP/2.0", "BYE sip:bob@10.0.0.1:5060;transport=udp SIP/2.0",
        "OPTIONS sips:h.example.com SIP/2.0", "INVITE sip:bob@example.com?subject=x SIP/2.0",
        "INVITE  sip:bob@example.com SIP/2.0", "INVITE sip:bob@example.com SIP/2.1", "INV@TE sip:a@b SIP/2.0",
        "INVITE <sip:bob@example.com> SIP/2.0", "SIP/2.0 200 OK", "SIP/2.0 180 Ringing", "SIP/2.0 99 x",
        "SIP/2.0 100", "SIP/3.0 200 OK", "INVITE tel:+1555 SIP/2.0", "",
    ]))
    extra = draw(st.lists(header_lines, max_size=12))
    if draw(st.booleans()):  # mostly valid: the required headers and harmless extras
        start = draw(st.sampled_from(["INVITE sip:bob@example.com SIP/2.0", "SIP/2.0 200 OK", "SIP/2.0 180  Ringing",
                                      "BYE sip:b@10.0.0.1:5060;transport=udp SIP/2.0", "OPTIONS sip:h.example.com SIP/2.0"]))
        method = start.split(" ")[0] if not start.startswith("SIP/") else "INVITE"
        required = [f"Via: {draw(valid_vias)}", f"From: {draw(valid_addrs)}", f"To: {draw(valid_addrs)}",
                    "Call-ID: a1@example.com", f"CSeq: 1 {method}"]
        safe = draw(st.lists(safe_lines, max_size=8))
        extra = draw(st.permutations(required + safe + extra[:draw(st.integers(0, 1))]))
    lines = [start] + extra
    body = draw(st.sampled_from([b"", b"", b"v=0\r\n", b"abc"]))
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    return (eol.join(lines) + eol + eol).encode("utf-8", "surrogateescape") + body


@st.composite
def mutated_bytes(draw, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["ins", "del", "rep"]))
        c = ord(draw(st.sampled_from(ALPHABET[:60] + "\r\n")))
        if op == "ins":
            data[i:i] = bytes([c])
        elif i < len(data):
            if op == "del":
                del data[i]
            else:
                data[i] = c
    return bytes(data)


any_message = st.one_of(messages(), mutated_bytes(messages()), mutated_bytes(st.sampled_from(SAMPLES)))


def _compare_parse(data: bytes) -> None:
    got = outcome(M.parse_message, data)
    assert agrees(got, outcome(ref.parse_message, data))
    if got[0] == "ok":
        mine, theirs = M.parse_message(data), ref.parse_message(data)
        assert views(mine) == views(theirs)
        assert mine.to_bytes() == theirs.to_bytes()


@st.composite
def whitespace_messages(draw) -> bytes:
    """Valid messages whose extra headers play with SP/HT runs, trailing blanks and
    folding (a folded line joined after a trailing SP makes a run of two). Half of
    them have no tab and no double SP in the raw text, where the run can only come
    from the folding."""
    plain = draw(st.booleans())
    ws = st.sampled_from(["", " "] if plain else ["", " ", "  ", "\t", " \t"])
    fold = st.sampled_from([" "] if plain else [" ", "\t", "  "])
    lines = ["OPTIONS sip:h.example.com SIP/2.0", "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1",
             "From: <sip:a@example.com>;tag=1", "To: <sip:b@example.com>", "Call-ID: c1", "CSeq: 1 OPTIONS"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["Subject", "Route", "X-H", "Contact"]))
        value = "<sip:r.example.com;lr>" if name in ("Route", "Contact") else "a"
        line = f"{name}{draw(ws)}:{draw(ws)}{value}{draw(ws)}"
        for _ in range(draw(st.integers(0, 2))):
            more = ",<sip:s.example.com;lr>" if name in ("Route", "Contact") else "b"
            line += "\r\n" + draw(fold) + draw(ws) + more + draw(ws)
        lines.insert(draw(st.integers(1, len(lines))), line)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@SETTINGS
@given(whitespace_messages())
def test_whitespace_and_folding_match_reference(data):
    _compare_parse(data)


@pytest.mark.parametrize("data", SAMPLES, ids=[m["name"] for m in MANIFEST] + [f"call{i}" for i in range(len(CALL))])
def test_corpus_parses_as_reference(data):
    _compare_parse(data)


@SETTINGS
@given(any_message)
def test_parse_message_matches_reference(data):
    _compare_parse(data)


def _events(out: list) -> list:
    """Framer events as plain data: "ping"/"pong", messages, errors."""
    return [
        e if isinstance(e, str)
        else ("error", e.reason, e.fatal_for_stream, norm(e.partial) if e.partial else None)
        if isinstance(e, Exception) else norm(e)
        for e in out
    ]


def _framer_run(framer, stream: bytes, bounds: list[int]) -> tuple[list, bool]:
    """Every event of feeding ``stream`` cut at ``bounds``, and whether ``feed`` raised
    (the reference's framer lets int()'s ValueError out on a non-ASCII digit)."""
    events: list = []
    for a, b in itertools.pairwise(bounds):
        try:
            events += _events(framer.feed(stream[a:b]))
        except ValueError:
            return events, True
    return events, False


@SETTINGS
@given(st.lists(st.one_of(any_message, st.sampled_from([b"\r\n\r\n", b"\r\n"])), min_size=1, max_size=4),
       st.lists(st.integers(0, 4000), max_size=4))
def test_stream_framer_matches_reference(msgs, cuts):
    """Same events as the reference on CRLF streams up to the first fatal error, apart
    from the intended changes: a message without Content-Length is fatal on a stream
    (RFC 3261 §18.3; the reference delivered it with an empty body), a non-ASCII
    digit is a fatal ParseError where the reference's feed raised ValueError, a
    bare LF before a start line is skipped where the reference failed ("empty
    message"), and errors may carry a salvaged partial request. Bare-LF streams are left to
    test_parser_hardening (the reference never framed them)."""
    stream = b"".join(msgs)
    assume(b"\n" not in stream.replace(b"\r\n", b""))
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    mine = M.StreamFramer()
    got, raised = _framer_run(mine, stream, bounds)
    want, ref_raised = _framer_run(ref.StreamFramer(), stream, bounds)
    assert not raised
    strip = lambda e: e[:3] if isinstance(e, tuple) and e[0] == "error" else e  # noqa: E731
    # A Content-Length that cuts a CRLF leaves a bare LF in front of what follows: it is
    # skipped now (RFC 3261 §7.5), so a keepalive behind it is seen where the reference
    # kept waiting for a head. Keepalives are left out of this comparison (their framing has
    # tests of its own in test_parser_hardening); the rest is compared event by event.
    keep = ("ping", "pong")
    got = [e for e in got if e not in keep]
    want = [e for e in want if e not in keep]
    for i, ev in enumerate(got):
        if i < len(want) and want[i][:2] == ("error", "empty message"):
            return  # a bare LF left before a start line: skipped now (RFC 3261 §7.5), was fatal
        if isinstance(ev, tuple) and ev[0] == "error" and ev[2]:  # our first fatal error: the stream ends
            assert got[i + 1:] == [] and mine.broken
            if ev[1].startswith("no Content-Length") or (ref_raised and i == len(want)):
                return
            assert strip(ev) == strip(want[i])
            return
        assert strip(ev) == strip(want[i])
    if len(want) == len(got) + 1 and want[-1][:2] == ("error", "empty message"):
        return  # the bare LF the reference failed on is skipped now (see above)
    assert len(got) == len(want) and not ref_raised and not mine.broken


# ----------------------------------------------------------------------------- Headers API

header_names = st.sampled_from([
    "Via", "v", "VIA", "via", "Route", "route", "Content-Length", "content-length", "l", "CSeq", "cseq",
    "X-Custom", "x-custom", "Warning", "Max-Forwards",
])
header_values = st.sampled_from(["a", "b", "SIP/2.0/UDP h;branch=z9hG4bK1", "", "<sip:x;lr>", "70"])


@SETTINGS
@given(st.lists(st.tuples(header_names, header_values), max_size=6),
       st.lists(st.tuples(st.sampled_from(["get", "get_all", "count", "set", "add", "add_first", "remove",
                                           "pop_first", "replace_first", "copy", "items", "iter", "len",
                                           "to_bytes"]),
                          header_names, header_values), max_size=12))
def test_headers_api_matches_reference(items, ops):
    """Same answers and same entries as the reference after any sequence of calls,
    including on raw (non-canonical) names given to the constructor."""
    mine, theirs = M.Headers([list(e) for e in items]), ref.Headers([list(e) for e in items])
    for op, name, value in ops:
        if op == "get":
            r = (mine.get(name), theirs.get(name))
        elif op == "get_all":
            r = (mine.get_all(name), theirs.get_all(name))
        elif op == "count":
            r = (mine.count(name), theirs.count(name))
        elif op == "set":
            r = (mine.set(name, value), theirs.set(name, value))
        elif op == "add":
            r = (mine.add(name, value), theirs.add(name, value))
        elif op == "add_first":
            r = (mine.add(name, value, first=True), theirs.add(name, value, first=True))
        elif op == "remove":
            r = (mine.remove(name), theirs.remove(name))
        elif op == "pop_first":
            r = (mine.pop_first(name), theirs.pop_first(name))
        elif op == "replace_first":
            r = (outcome(mine.replace_first, name, value), outcome(theirs.replace_first, name, value))
        elif op == "copy":
            mine, theirs = mine.copy(), theirs.copy()
            r = (None, None)
        elif op == "items":
            r = (mine.items(), theirs.items())
        elif op == "iter":
            r = (list(mine), list(theirs))
        elif op == "len":
            r = (len(mine), len(theirs))
        else:
            r = (M.Response(200, None, mine, b"x").to_bytes(), ref.Response(200, None, theirs, b"x").to_bytes())
        assert r[0] == r[1], op
        assert mine.items() == [tuple(e) for e in theirs]


# ----------------------------------------------------------------------------- cache coherence

valid_ruris = st.sampled_from(["sip:bob@example.com", "sip:bob@10.0.0.9:5070;transport=udp", "sips:h.example.com;lr"])

edits = st.one_of(
    st.tuples(st.just("push_via"), valid_vias),
    st.tuples(st.just("pop_via"), st.none()),
    st.tuples(st.just("replace_via"), valid_vias),
    st.tuples(st.just("set_via"), valid_vias),
    st.tuples(st.just("set_from"), valid_addrs),
    st.tuples(st.just("replace_to"), valid_addrs),
    st.tuples(st.just("set_cseq"), st.integers(1, 2**31 - 1)),
    st.tuples(st.just("set_call_id"), st.from_regex(r"[a-z0-9@.]{1,10}", fullmatch=True)),
    st.tuples(st.just("set_mf"), st.integers(0, 255).map(str)),
    st.tuples(st.just("add_route"), valid_addrs),
    st.tuples(st.just("remove_route"), st.none()),
    st.tuples(st.just("set_ct"), st.sampled_from(["application/sdp", "Text/Plain;charset=x"])),
    st.tuples(st.just("set_uri"), valid_ruris),
    st.tuples(st.just("new_headers"), st.none()),
    st.tuples(st.just("set_body"), st.binary(max_size=8)),
    st.tuples(st.just("mutate_view_and_write_back"), st.sampled_from(["via", "from", "to"])),
    st.tuples(st.just("read"), st.none()),
)


def _apply(msg, op: str, arg) -> None:
    h = msg.headers
    if op == "push_via":
        h.add("Via", arg, first=True)
    elif op == "pop_via":
        if h.count("Via") > 1:
            h.pop_first("v")
    elif op == "replace_via":
        h.replace_first("VIA", arg)
    elif op == "set_via":
        h.set("Via", arg)
    elif op == "set_from":
        h.set("f", arg)
    elif op == "replace_to":
        h.replace_first("To", arg)
    elif op == "set_cseq":
        method = msg.method if hasattr(msg, "method") else msg.cseq[1]
        h.set("CSeq", f"{arg} {method}")
    elif op == "set_call_id":
        h.set("i", arg)
    elif op == "set_mf":
        h.set("Max-Forwards", arg)
    elif op == "add_route":
        h.add("Route", arg)
    elif op == "remove_route":
        h.remove("route")
    elif op == "set_ct":
        h.set("c", arg)
    elif op == "set_uri":
        if hasattr(msg, "method"):
            msg.uri = arg
    elif op == "new_headers":
        msg.headers = h.copy()
    elif op == "set_body":
        msg.body = arg
    elif op == "mutate_view_and_write_back":  # the documented way to change a header
        if arg == "via":
            via = msg.top_via()
            via.params["received"] = "192.0.2.77"
            h.replace_first("Via", str(via))
        else:
            na = msg.from_ if arg == "from" else msg.to
            na.params["tag"] = "rewritten"
            h.replace_first("From" if arg == "from" else "To", str(na))
    views(msg)  # populate the caches between edits


@SETTINGS
@given(st.sampled_from(CALL + [d for d, m in zip(CORPUS, MANIFEST) if m["outcome"] != "reject"]),
       st.lists(edits, max_size=10))
def test_cached_views_follow_every_edit(data, ops):
    msg = M.parse_message(data)
    views(msg)
    for op, arg in ops:
        before = views(msg)
        copy = msg.copy()
        _apply(copy, op, arg)  # editing a copy leaves the original's views alone
        assert views(msg) == before
        _apply(msg, op, arg)
        wire = msg.to_bytes()
        assert views(msg) == views(ref.parse_message(wire)), op
        assert views(msg) == views(M.parse_message(wire)), op
        assert views(copy) == views(msg)


def test_views_are_cached_and_dropped_on_edit():
    msg = M.parse_message(CALL[0])
    assert msg.top_via() is msg.top_via()
    assert msg.from_ is msg.from_ and msg.to is msg.to and msg.ruri is msg.ruri
    via = msg.top_via()
    msg.headers.add("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnew", first=True)
    assert msg.top_via() is not via and msg.top_via().host == "192.0.2.1"
    to = msg.to
    msg.headers.set("To", "<sip:x@example.com>;tag=t1")
    assert msg.to is not to and msg.to_tag == "t1"
    ruri = msg.ruri
    msg.uri = "sip:other@example.com"
    assert msg.ruri is not ruri and msg.ruri.user == "other"
    frm = msg.from_
    msg.headers = msg.headers.copy()
    assert msg.from_ is not frm and msg.from_ == frm
    copy = msg.copy()
    assert copy.top_via() is not msg.top_via() and copy.top_via() == msg.top_via()


def test_constructor_forms_and_attributes_kept():
    h = M.Headers([["Warning", '399 h "x"']])
    assert h.get("warning") == '399 h "x"' and list(h) == [("Warning", '399 h "x"')]
    assert len(M.Headers()) == 0
    req = M.Request("INVITE", "sip:a@example.com")
    req.headers.add("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")
    req.body = b"x"
    assert (req.method, req.uri, req.body, req.version) == ("INVITE", "sip:a@example.com", b"x", "SIP/2.0")
    resp = M.make_response(req, 180, to_tag="abc")
    assert (resp.status, resp.reason) == (180, "Ringing") and resp.copy() == resp
    assert M.Via("UDP", "h", 5060, {"branch": "z9hG4bK1"}).sent_by == "h:5060"


def test_to_bytes_forms_match_reference():
    """No headers, no/one/two Content-Length, a raw lower-case one, non-str values."""
    cases = [[], [["Content-Length", "9"]], [["Content-Length", "1"], ["Content-Length", "2"]],
             [["content-length", "3"], ["Via", "x"]], [["Expires", 60], ["Via", "x"]], [["l", "5"]]]
    for items in cases:
        for body in (b"", b"abc"):
            mine = M.Request("OPTIONS", "sip:h", M.Headers([list(e) for e in items]), body).to_bytes()
            theirs = ref.Request("OPTIONS", "sip:h", ref.Headers([list(e) for e in items]), body).to_bytes()
            assert mine == theirs, items
