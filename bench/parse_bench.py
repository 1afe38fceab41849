#!/usr/bin/env python3
"""CPU cost of SIP message handling on one proxy node (sans-IO; not a test).

Builds the messages one proxy node receives in a basic call, SIPp style: an INVITE
with SDP, three Vias (two comma-joined on one line, as SIPp and the cloud SBC send
them), Record-Route and Route entries, then 100, 180, 200 with SDP (each with the
node's own Via on top), ACK, BYE and its 200.
For each operation below it runs ``--runs`` timed runs of ``--n`` iterations and
prints the median cost in µs per operation (and the spread of the runs):

Every message measured belongs to a call not seen before (its own Call-ID, tags
and branches), so per-value memos see what they would see under load: within a
call, values repeat from message to message; the proxies' Route/Record-Route and
the endpoints' Contacts repeat across calls. (So ``parse <response>`` alone pays
for Vias and tags that, in a call, its request already brought; ``call`` is the
realistic mix.)

* ``parse <msg>``: :func:`parse_message` on the datagram bytes of each message;
* ``framer (7 msgs/chunk)``: :meth:`StreamFramer.feed` with all seven messages in one
  chunk, cost per message;
* ``access <msg>``: what a proxy reads from a freshly parsed message once: top Via,
  Call-ID, CSeq, From and To tags, and for requests the Request-URI, the Route list and
  Max-Forwards (the messages are parsed before the timing starts);
* ``copy+edit+ser <msg>``: ``copy()``, then for a request: push a Via, set
  Max-Forwards; for a response: pop the top Via; then ``to_bytes()``;
* ``call: parse+access+copy/edit/ser x7``: the three above for the seven messages of
  one call, i.e. the SIP message handling one node does per call (µs per call);
* ``sdp parse+relay+ser``: :meth:`SessionDescription.parse`, :func:`rewrite_for_relay`
  and ``to_bytes()`` on the INVITE's SDP;
* ``eventlog emit (file)``: one ``sip message`` event written by :class:`EventLog`
  to a file.

Timings on a shared machine are noisy: compare medians, or run under
``valgrind --tool=callgrind`` with ``--runs 1`` for repeatable instruction counts.
``--src`` picks the source tree to import (default: this checkout's ``src``), so the
same script measures another revision, e.g. one exported with ``git archive``;
``--json`` writes the medians and ``--compare before.json`` prints a before/after
table with the ratio.

    PYTHONPATH= .venv/bin/python bench/parse_bench.py [--runs 7] [--n 2000]
    .venv/bin/python bench/parse_bench.py --src /tmp/base/src --json before.json
    .venv/bin/python bench/parse_bench.py --compare before.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SDP_OFFER = (
    "v=0\r\n"
    "o=user1 53655765 2353687637 IN IP4 127.0.0.5\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.5\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=rtcp:6001 IN IP4 127.0.0.5\r\n"
    "a=sendrecv\r\n"
)
SDP_ANSWER = SDP_OFFER.replace("user1 53655765 2353687637", "user2 91827364 1928374655").replace(
    "127.0.0.5", "127.0.0.4").replace("m=audio 6000", "m=audio 20000").replace("rtcp:6001", "rtcp:20001")

CALL_ID = "1-4711@127.0.0.5"
TO = "service <sip:bob@corp.edgeway.test>"
RR = "Record-Route: <sip:127.0.0.2:7001;transport=tls;lr>, <sip:127.0.0.9:5060;lr>"
ROUTE = "Route: <sip:127.0.0.3:5060;lr>, <sip:127.0.0.4:5060;transport=udp;lr>"


def _msg(start: str, headers: list[str], body: str = "") -> bytes:
    head = [start, *headers]
    if body:
        head.append("Content-Type: application/sdp")
    head.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def call_messages(call: int = 1) -> dict[str, bytes]:
    """The seven messages of basic call number ``call`` as one node receives them
    (bytes). Call-ID, tags and branches depend on ``call``, as in a SIPp run."""
    frm = f"sipp <sip:alice@127.0.0.5:5070>;tag=4711SIPpTag00{call}"
    to_tagged = f"{TO};tag=3928SIPpTag01{call}"
    call_id = f"{call}-4711@127.0.0.5"
    b = f"{call:08x}"
    vias_inv, vias_bye = ([  # as received by the core: edge's Via on top, SIPp's at the bottom
        f"Via: SIP/2.0/TLS 127.0.0.2:7001;branch=z9hG4bK.ew1.5f0d2c3b{b}{n};rport;egress-zone=traversal",
        (f"Via: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bK.sbc.77a1b{b}{n}, "
         f"SIP/2.0/UDP 127.0.0.5:5070;branch=z9hG4bK-4711-{call}-{n};rport=5070"),
    ] for n in (0, 2))
    vias_ack = [v.replace("z9hG4bK-4711", "z9hG4bK-4712") for v in vias_inv]
    # Responses come back with this node's own Via (added when it forwarded) on top.
    ours_inv, ours_bye = ([f"Via: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK.ew1.0a1b2c3d{b}{n};rport"] for n in (0, 2))

    def common(to: str, cseq: str) -> list[str]:
        return [f"From: {frm}", f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {cseq}"]

    req_extra = ["Max-Forwards: 69", "Subject: Performance Test", "User-Agent: SIPp"]
    return {
        "INVITE": _msg("INVITE sip:bob@corp.edgeway.test SIP/2.0", [
            *vias_inv, RR, ROUTE, *common(TO, "1 INVITE"),
            "Contact: <sip:alice@127.0.0.5:5070;transport=udp>", *req_extra,
            "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS", "Supported: timer, replaces"], SDP_OFFER),
        "100": _msg("SIP/2.0 100 Trying", [*ours_inv, *vias_inv, *common(TO, "1 INVITE")]),
        "180": _msg("SIP/2.0 180 Ringing", [
            *ours_inv, *vias_inv, RR, *common(to_tagged, "1 INVITE"), "Contact: <sip:bob@127.0.0.4:5060;transport=udp>"]),
        "200": _msg("SIP/2.0 200 OK", [
            *ours_inv, *vias_inv, RR, *common(to_tagged, "1 INVITE"), "Contact: <sip:bob@127.0.0.4:5060;transport=udp>",
            "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS", "Supported: timer"], SDP_ANSWER),
        "ACK": _msg("ACK sip:bob@127.0.0.4:5060;transport=udp SIP/2.0", [
            *vias_ack, ROUTE, *common(to_tagged, "1 ACK"), "Contact: <sip:alice@127.0.0.5:5070;transport=udp>",
            *req_extra]),
        "BYE": _msg("BYE sip:bob@127.0.0.4:5060;transport=udp SIP/2.0", [
            *vias_bye, ROUTE, *common(to_tagged, "2 BYE"), "Contact: <sip:alice@127.0.0.5:5070;transport=udp>",
            *req_extra]),
        "200-BYE": _msg("SIP/2.0 200 OK", [*ours_bye, *vias_bye, *common(to_tagged, "2 BYE")]),
    }


def access(msg) -> None:
    """What a proxy reads from each message (transaction key, dialog, routing)."""
    msg.top_via()
    msg.call_id  # noqa: B018 - the read is what is measured
    msg.cseq  # noqa: B018
    msg.from_tag  # noqa: B018
    msg.to_tag  # noqa: B018
    if hasattr(msg, "method"):
        msg.ruri  # noqa: B018
        msg.headers.get_all("Route")
        msg.headers.get("Max-Forwards")


NEW_VIA = "SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK.ew1.0123456789abcdef;rport"


def copy_edit_ser(msg) -> bytes:
    """Forwarding edits: push our Via and decrement Max-Forwards (request), or pop
    our Via (response); then serialise."""
    fwd = msg.copy()
    if hasattr(msg, "method"):
        fwd.headers.add("Via", NEW_VIA, first=True)
        fwd.headers.set("Max-Forwards", "68")
    else:
        fwd.headers.pop_first("Via")
    return fwd.to_bytes()


_next_call = 0


def fresh_calls(k: int) -> list[dict[str, bytes]]:
    """``k`` calls never handed out before (numbered on from the last one)."""
    global _next_call
    out = [call_messages(i) for i in range(_next_call + 1, _next_call + k + 1)]
    _next_call += k
    return out


def timed(op, prepare, runs: int, per: int = 1) -> list[float]:
    """``runs`` measurements, in µs per operation, of ``op`` applied to each item
    that ``prepare()`` returns (prepared anew for each run, outside the timing);
    each item counts as ``per`` operations."""
    out = []
    for _ in range(runs):
        items = prepare()
        t0 = time.perf_counter_ns()
        for x in items:
            op(x)
        out.append((time.perf_counter_ns() - t0) / 1000 / (len(items) * per))
    return out


def run(args) -> dict[str, list[float]]:
    from edgeway.diag.events import EventLog
    from edgeway.sip.message import StreamFramer, parse_message
    from edgeway.sip.sdp import SessionDescription, rewrite_for_relay

    kinds = list(call_messages(0))
    for c in fresh_calls(3):  # sanity: every message parses and round-trips
        for kind, data in c.items():
            m = parse_message(data)
            assert parse_message(m.to_bytes()) == m, kind
    n, runs = args.n, args.runs
    res: dict[str, list[float]] = {}

    def want(name: str) -> bool:
        return not args.only or any(o in name for o in args.only)

    def datagrams(kind: str):
        return lambda: [c[kind] for c in fresh_calls(n)]

    def parsed(kind: str):
        return lambda: [parse_message(c[kind]) for c in fresh_calls(n)]

    for kind in kinds:
        if want(f"parse {kind}"):
            res[f"parse {kind}"] = timed(parse_message, datagrams(kind), runs)
    if want("framer"):
        def feed(chunk: bytes) -> None:
            out = StreamFramer().feed(chunk)
            assert len(out) == len(kinds), out

        res["framer (7 msgs/chunk)"] = timed(feed, lambda: [b"".join(c.values()) for c in fresh_calls(n)], runs,
                                             per=len(kinds))
    for kind in kinds:
        if want(f"access {kind}"):
            res[f"access {kind}"] = timed(access, parsed(kind), runs)
    for kind in kinds:
        if want(f"copy+edit+ser {kind}"):
            res[f"copy+edit+ser {kind}"] = timed(copy_edit_ser, parsed(kind), runs)
    if want("call"):
        def call(c: dict[str, bytes]) -> None:
            for d in c.values():
                m = parse_message(d)
                access(m)
                copy_edit_ser(m)

        res["call: parse+access+copy/edit/ser x7"] = timed(call, lambda: fresh_calls(max(1, n // 4)), runs)
    if want("sdp"):
        def sdp(body: bytes) -> None:
            rewrite_for_relay(SessionDescription.parse(body), "192.0.2.10", [40000]).to_bytes()

        res["sdp parse+relay+ser"] = timed(sdp, lambda: [SDP_OFFER.encode()] * n, runs)
    if want("eventlog"):
        with tempfile.TemporaryDirectory() as tmp:
            log = EventLog("edge", os.path.join(tmp, "events.jsonl"))

            def emit(i: int) -> None:
                log.emit("sip message", dir="in", transport="udp", peer="127.0.0.5:5070", call_id=CALL_ID,
                         line="INVITE sip:bob@corp.edgeway.test", cseq="1 INVITE")

            res["eventlog emit (file)"] = timed(emit, lambda: range(n), runs)
            log.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs per operation (median reported)")
    ap.add_argument("--n", type=int, default=2000, help="iterations per run")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"),
                    help="source tree to import edgeway from")
    ap.add_argument("--only", nargs="*", help="run only operations whose name contains one of these")
    ap.add_argument("--json", help="write {operation: median µs} to this file")
    ap.add_argument("--compare", help="a --json file from a previous run: print before/after/ratio")
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    import edgeway

    print(f"edgeway from {Path(edgeway.__file__).parent}; {args.runs} runs x {args.n} iterations; Python {sys.version.split()[0]}")
    res = run(args)
    med = {k: statistics.median(v) for k, v in res.items()}
    before = json.loads(Path(args.compare).read_text()) if args.compare else None
    w = max(len(k) for k in res)
    if before is None:
        print(f"{'operation':<{w}}  {'median µs':>10}  {'min':>8}  {'max':>8}")
        for k, v in res.items():
            print(f"{k:<{w}}  {med[k]:>10.2f}  {min(v):>8.2f}  {max(v):>8.2f}")
    else:
        print(f"{'operation':<{w}}  {'before µs':>10}  {'after µs':>10}  {'ratio':>7}")
        for k in res:
            b = before.get(k)
            ratio = f"{b / med[k]:>6.1f}x" if b else "      -"
            print(f"{k:<{w}}  {b if b is not None else float('nan'):>10.2f}  {med[k]:>10.2f}  {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(med, indent=1))


if __name__ == "__main__":
    main()
