"""CPU cost of the sans-IO proxy core per call, without sockets or an event loop.

Feeds :class:`~edgeway.proxy.core.ProxyCore` the messages of complete calls (INVITE
with SDP / 100 / 180 / 200 with SDP / ACK / BYE / 200, caller over UDP, callee a UDP
neighbour, media anchoring answered at once as the driver does) and prints the median
µs of CPU per call over several runs, split into parsing the received bytes, the core's
decisions and serialising what it sends. Not a test: it prints numbers.

    python bench/core_bench.py [--calls 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgeway.config import parse_config
from edgeway.proxy.actions import AllocateMedia, Send
from edgeway.proxy.core import ProxyCore
from edgeway.sip.message import Response, make_response, parse_message
from edgeway.sip.target import Flow

NODE = "192.0.2.1"
CALLER = ("198.51.100.7", 5060)
CALLEE = ("203.0.113.9", 5060)
SDP = (b"v=0\r\no=sipp 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def _invite(n: int) -> bytes:
    lines = ["INVITE sip:bob@partner.test SIP/2.0",
             f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{n};rport",
             f'From: "sipp" <sip:sipp@{CALLER[0]}:{CALLER[1]}>;tag={n}SIPpTag00', "To: <sip:bob@partner.test>",
             f"Call-ID: {n}-1234@{CALLER[0]}", "CSeq: 1 INVITE", f"Contact: <sip:sipp@{CALLER[0]}:{CALLER[1]};transport=udp>",
             "Max-Forwards: 70", "Content-Type: application/sdp", f"Content-Length: {len(SDP)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + SDP


def _caller_request(method: str, ok: Response, n: int, cseq: int) -> bytes:
    routes = "".join(f"Route: {r}\r\n" for r in reversed(ok.headers.get_all("Record-Route")))
    return (f"{method} sip:bob@{CALLEE[0]}:{CALLEE[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{method}{n};rport\r\n"
            f'From: "sipp" <sip:sipp@{CALLER[0]}:{CALLER[1]}>;tag={n}SIPpTag00\r\nTo: {ok.headers.get("To")}\r\n'
            f"Call-ID: {ok.call_id}\r\nCSeq: {cseq} {method}\r\n{routes}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


class Timer:
    def __init__(self) -> None:
        self.parse = self.core = self.serialise = 0.0


def run_calls(calls: int, t: Timer) -> None:
    core = ProxyCore(parse_config({
        "role": "core", "name": "bench", "sip": {"listen_ip": NODE},
        "zones": [{"name": "P", "type": "neighbour", "host": CALLEE[0], "port": CALLEE[1], "transport": "udp"}],
        "search_rules": [{"name": "all", "priority": 1, "mode": "any_alias", "target_zone": "P"}],
    }))
    cin, cout = Flow("udp", (NODE, 5060), CALLER), Flow("udp", (NODE, 5060), CALLEE)
    clock = time.process_time
    port = 36000

    def feed(data: bytes, flow: Flow, now: float) -> list:
        nonlocal port
        a = clock()
        msg = parse_message(data)
        b = clock()
        out = core.receive(msg, flow, now)
        i = 0
        while i < len(out):
            act = out[i]
            if type(act) is AllocateMedia:
                out += core.media_ready(act.alloc_id, {s: (port, port + 2) for s in act.streams}, "", now)
                port = port + 4 if port < 59000 else 36000
            i += 1
        c = clock()
        wire = [x.message.to_bytes() for x in out if type(x) is Send]
        d = clock()
        t.parse += b - a
        t.core += c - b
        t.serialise += d - c
        return [parse_message(w) for w in wire]

    now = 0.0
    for n in range(calls):
        now += 0.001
        fwd = [m for m in feed(_invite(n), cin, now) if not isinstance(m, Response)][0]
        for status, body in ((100, b""), (180, b""), (200, SDP)):
            r = make_response(fwd, status, to_tag="b1" if status > 100 else None,
                              extra=[("Contact", f"<sip:bob@{CALLEE[0]}:{CALLEE[1]}>")], body=body)
            for v in fwd.headers.get_all("Record-Route"):
                r.headers.add("Record-Route", v)
            if body:
                r.headers.add("Content-Type", "application/sdp")
            up = feed(r.to_bytes(), cout, now)
        ok = [m for m in up if isinstance(m, Response) and m.status == 200][0]
        feed(_caller_request("ACK", ok, n, 1), cin, now)
        bye = [m for m in feed(_caller_request("BYE", ok, n, 2), cin, now) if not isinstance(m, Response)][0]
        feed(make_response(bye, 200).to_bytes(), cout, now)
        if n % 200 == 0:
            core.timers(now + 40)  # let terminated transactions go


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        t = Timer()
        run_calls(args.calls, t)
        rows.append((t.parse, t.core, t.serialise))
    med = [statistics.median(r[i] for r in rows) * 1e6 / args.calls for i in range(3)]
    print(f"proxy core, {args.calls} calls x {args.runs} runs (median µs CPU per call, 7 messages received, 7 sent):")
    print(f"  parse {med[0]:8.1f}   core {med[1]:8.1f}   serialise {med[2]:8.1f}   total {sum(med):8.1f}")


if __name__ == "__main__":
    main()
