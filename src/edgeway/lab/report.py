"""What a lab run did: traversal state, hop-by-hop SIP ladders, RTP counts, PASS/FAIL.

The inputs are plain data so the report can be built (and tested) without
running anything:

* node events: the JSON-lines event logs of the edge and core
  (:mod:`edgeway.diag.events`), parsed with :func:`load_events`;
  ``sip message`` events (``ts``, ``node``, ``dir`` ``"in"``/``"out"``,
  ``transport``, ``peer`` ``"ip:port"``, ``call_id``, ``line``) make the
  nodes' part of the ladder, ``traversal connected`` / ``traversal
  disconnected`` the zone history, ``tls classified`` the zone an inbound TLS
  connection was put in by its certificate (hybrid calling), ``media closed``
  (``stats``) the relay counters and which relay sides were SRTP
  (``stats["a"|"b"]["srtp_inbound"]``), ``srtp keyed`` when a relay side got
  its keys, and ``dns resolved`` (no Call-ID: matched by time) how a node
  found the next hop;
* the user agents' call results (:class:`edgeway.lab.ua.CallResult`, or
  anything with the same attribute names) and the callee's per-call stats.

:func:`merge_ladder` turns the user agents' and nodes' message records into one
ladder where each hop appears once (the sender's record is kept; the
receiver's matching ``in`` record is dropped), rendered as::

    +0.0 ms  bob(127.0.0.5) → edge  INVITE sip:alice@corp.edgeway.test
    +1.2 ms  edge → core  INVITE sip:alice@corp.edgeway.test
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgeway.lab.topology import HOST_NAMES

__all__ = [
    "LadderEntry", "CallReport", "LabReport", "load_events", "parse_events", "events_for_call",
    "node_ladder", "ua_ladder", "parse_ua_line", "normalize_line", "align_ladder", "merge_ladder", "format_ladder",
    "traversal_history", "tls_classifications", "relay_stats", "media_path", "media_legs", "MraStep", "MraReport",
    "MEDIA_MIN_RATIO", "MAX_LADDER_LINES",
]

#: Media succeeds when each side received at least this share of what the other sent.
MEDIA_MIN_RATIO = 0.8
#: A ladder longer than this is cut (the report stays a screenful per call).
MAX_LADDER_LINES = 40
#: An ``in`` record pairs with an ``out`` record of the same message sent at most
#: this long before (seconds), with this much clock slack the other way.
_PAIR_WINDOW_S = 2.0
_PAIR_SLACK_S = 0.2
#: A response logged at most this long before its request (clock and logging skew
#: between loggers) is moved after the request.
_CAUSAL_SLACK_S = 0.05
_RESPONSE_LINE = re.compile(r"^\d{3}\b.*\((?P<method>[A-Z]+)\)$")


# ---- event logs --------------------------------------------------------------------------------

def parse_events(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse JSON-lines event records; blank, partial or non-object lines are skipped
    (a node may be writing its last line while we read)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def load_events(path: Path | str) -> list[dict[str, Any]]:
    """All events of a JSON-lines log file (``[]`` when the file does not exist yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_events(fh)
    except FileNotFoundError:
        return []


def events_for_call(events: Iterable[Mapping[str, Any]], call_id: str | None) -> list[dict[str, Any]]:
    """The events that carry ``call_id`` (empty for ``None``), in log order."""
    if not call_id:
        return []
    return [dict(e) for e in events if e.get("call_id") == call_id]


# ---- ladders -----------------------------------------------------------------------------------

@dataclass
class LadderEntry:
    """One SIP message on one hop.

    ``src``/``dst`` are display labels (``"edge"``, ``"bob(127.0.0.5)"`` or
    ``"ip:port"`` for unknown hosts); ``logger`` is who recorded it and
    ``dir`` its direction as seen by the logger.
    """

    ts: float
    src: str
    dst: str
    line: str
    transport: str = ""
    call_id: str = ""
    logger: str = ""
    dir: str = "out"


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _peer_ip(peer: Any) -> tuple[str, str]:
    """``"ip:port"`` / ``"[v6]:port"`` / ``(ip, port)`` → ``(ip, text)``."""
    if isinstance(peer, (tuple, list)) and peer:
        ip = str(peer[0])
        return ip, f"{ip}:{peer[1]}" if len(peer) > 1 else ip
    text = str(peer or "")
    if text.startswith("["):
        return text[1:text.find("]")], text
    if text.count(":") == 1:
        return text.split(":")[0], text
    return text, text


class _Labels:
    def __init__(self, host_names: Mapping[str, str], ua_names: Iterable[str]):
        self.host_names = dict(host_names)
        self.ua_names = set(ua_names)
        self.ips = {n: ip for ip, n in self.host_names.items()}

    def name(self, who: str) -> str:
        """A logger name (node or UA) as a label."""
        if who in self.ua_names and who in self.ips:
            return f"{who}({self.ips[who]})"
        return who

    def peer(self, peer: Any) -> str:
        ip, text = _peer_ip(peer)
        name = self.host_names.get(ip)
        if name is None:
            return text
        return self.name(name)


_UA_LINE = re.compile(
    r"^\s*(?P<ms>-?\d+(?:\.\d+)?)\s*ms\s+(?P<dir>→|←|->|<-)\s+(?P<peer>\S+)\s+\((?P<transport>\w+)\)\s+(?P<line>.*?)"
    r"(?P<retx>\s+\[retransmission\])?\s*$"
)


def normalize_line(line: str, cseq: str | None = None) -> str:
    """One spelling for a message's first line wherever it was logged: requests
    as ``METHOD uri`` (version dropped), responses as ``200 OK (INVITE)``
    (status, reason and, when ``cseq`` is given, its method) — the form the lab
    user agents write."""
    line = line.strip()
    if line.startswith("SIP/2.0 "):
        line = line[len("SIP/2.0 "):]
        if cseq and not line.endswith(")"):
            method = cseq.split()[-1] if cseq.split() else ""
            if method:
                line = f"{line} ({method})"
    elif line.endswith(" SIP/2.0"):
        line = line[: -len(" SIP/2.0")]
    return line


def _key_line(line: str) -> str:
    return line.removesuffix(" [retransmission]")


def node_ladder(
    events: Iterable[Mapping[str, Any]],
    host_names: Mapping[str, str] = HOST_NAMES,
    ua_names: Iterable[str] = ("alice", "bob"),
    call_id: str | None = None,
) -> list[LadderEntry]:
    """Ladder entries from nodes' ``sip message`` events (optionally one Call-ID)."""
    lab = _Labels(host_names, ua_names)
    out: list[LadderEntry] = []
    for e in events:
        if e.get("event") != "sip message" or (call_id and e.get("call_id") != call_id):
            continue
        node = str(e.get("node", "?"))
        me, other = lab.name(node), lab.peer(e.get("peer"))
        d = "in" if str(e.get("dir", "out")) == "in" else "out"
        src, dst = (me, other) if d == "out" else (other, me)
        line = normalize_line(str(e.get("line", "")), e.get("cseq"))
        out.append(LadderEntry(float(e.get("ts", 0.0)), src, dst, line,
                               str(e.get("transport", "") or ""), str(e.get("call_id", "") or ""), node, d))
    return out


def parse_ua_line(text: str) -> dict[str, Any] | None:
    """Parse one :class:`~edgeway.lab.ua.LabUserAgent` ladder line
    (``"   12.3 ms → 127.0.0.2:5060 (udp) INVITE sip:..."``) into
    ``{"offset_s", "dir", "peer", "transport", "line"}``; None if it does not parse.
    ``→`` is ``"out"``, ``←`` ``"in"``; a retransmission keeps its
    ``[retransmission]`` mark in ``line``."""
    m = _UA_LINE.match(text)
    if m is None:
        return None
    line = m.group("line") + (" [retransmission]" if m.group("retx") else "")
    return {"offset_s": float(m.group("ms")) / 1000.0, "dir": "out" if m.group("dir") in ("→", "->") else "in",
            "peer": m.group("peer"), "transport": m.group("transport"), "line": line}


def ua_ladder(
    name: str,
    ladder: Iterable[Any],
    host_names: Mapping[str, str] = HOST_NAMES,
    ua_names: Iterable[str] = ("alice", "bob"),
    call_id: str = "",
    t0: float | None = None,
) -> list[LadderEntry]:
    """Ladder entries from a user agent's own record of a call.

    Entries may be the UA's text lines (see :func:`parse_ua_line`; their times
    are offsets from the call's start, so give the start as epoch seconds in
    ``t0``, or leave ``t0`` None and let :func:`align_ladder` place them), or
    mappings/objects with ``ts`` (epoch seconds), ``dir``, ``peer``, ``line``
    and optionally ``transport``. :class:`LadderEntry` items pass through.
    Unparseable lines are skipped.
    """
    lab = _Labels(host_names, ua_names)
    me = lab.name(name)
    base = t0 or 0.0
    out: list[LadderEntry] = []
    for item in ladder:
        if isinstance(item, LadderEntry):
            out.append(item)
            continue
        if isinstance(item, str):
            parsed = parse_ua_line(item)
            if parsed is None:
                continue
            ts = base + parsed["offset_s"]
            d, peer, transport, line = parsed["dir"], parsed["peer"], parsed["transport"], parsed["line"]
        else:
            ts = float(_get(item, "ts", 0.0) or 0.0)
            d = str(_get(item, "dir", _get(item, "direction", "out"))).lower()
            d = "in" if d in ("in", "recv", "received", "rx", "<-", "←") else "out"
            peer, transport = _get(item, "peer", ""), str(_get(item, "transport", "") or "")
            line = normalize_line(str(_get(item, "line", "")), _get(item, "cseq"))
        other = lab.peer(peer)
        src, dst = (me, other) if d == "out" else (other, me)
        out.append(LadderEntry(ts, src, dst, line, transport, call_id, name, d))
    return out


def align_ladder(entries: list[LadderEntry], reference: list[LadderEntry]) -> list[LadderEntry]:
    """Shift ``entries`` (times relative to an unknown start) onto the clock of
    ``reference`` (absolute times): the first entry with a counterpart in
    ``reference`` (same hop and line, recorded by the other end) takes that
    counterpart's time. Without any counterpart, the entries start at the
    reference's first time. Returns new entries; the inputs are unchanged."""
    if not entries:
        return []
    shift = None
    for e in entries:
        for r in reference:
            if r.dir != e.dir and r.src == e.src and r.dst == e.dst and _key_line(r.line) == _key_line(e.line):
                shift = r.ts - e.ts
                break
        if shift is not None:
            break
    if shift is None:
        shift = (min(r.ts for r in reference) if reference else 0.0) - entries[0].ts
    return [LadderEntry(e.ts + shift, e.src, e.dst, e.line, e.transport, e.call_id, e.logger, e.dir) for e in entries]


def merge_ladder(*entry_lists: Iterable[LadderEntry]) -> list[LadderEntry]:
    """Merge ladders from several loggers into one, sorted by time, one entry per hop.

    The same message on a hop is usually recorded twice: ``out`` by its sender
    and ``in`` by its receiver. The receiver's record is dropped when an
    unpaired sender record of the same ``src``/``dst``/``line`` lies within
    2 s before it (0.2 s after, for logging delays); the closest one is taken,
    so retransmissions still show as separate lines. The kept entry gets the
    earlier of the two times: a node may log a message it sent only after the
    receiver has already logged (and forwarded) it, and the ladder must not show
    an effect before its cause. Records whose counterpart was not logged (e.g.
    an unknown far end) stay.
    """
    entries = sorted((e for lst in entry_lists for e in lst), key=lambda e: (e.ts, e.dir != "out"))
    outs = [i for i, e in enumerate(entries) if e.dir == "out"]
    times = {i: entries[i].ts for i in outs}
    used: set[int] = set()
    dropped: set[int] = set()
    for j, e in enumerate(entries):
        if e.dir == "out":
            continue
        best, best_gap = None, None
        for i in outs:
            o = entries[i]
            if i in used or o.src != e.src or o.dst != e.dst or _key_line(o.line) != _key_line(e.line):
                continue
            if e.ts - _PAIR_WINDOW_S <= o.ts <= e.ts + _PAIR_SLACK_S:
                gap = abs(e.ts - o.ts)
                if best_gap is None or gap < best_gap:
                    best, best_gap = i, gap
        if best is not None:
            used.add(best)
            dropped.add(j)
            times[best] = min(times[best], e.ts)
    keep = []
    for k, e in enumerate(entries):
        if k in dropped:
            continue
        if k in times and times[k] != e.ts:
            e = LadderEntry(times[k], e.src, e.dst, e.line, e.transport, e.call_id, e.logger, e.dir)
        keep.append(e)
    keep.sort(key=lambda e: e.ts)
    return _causal_order(keep)


def _causal_order(entries: list[LadderEntry]) -> list[LadderEntry]:
    """Move a response that sorts before its request (same method, reverse hop,
    no such request earlier) to just after that request, when the two are at most
    :data:`_CAUSAL_SLACK_S` apart: different loggers' clocks may put, e.g.,
    ``alice → core 200 OK (BYE)`` a hair before ``core → alice BYE``."""
    out = list(entries)
    i = 0
    while i < len(out):
        e = out[i]
        m = _RESPONSE_LINE.match(_key_line(e.line))
        if m is not None:
            method = m.group("method") + " "

            def is_request(x: LadderEntry, e: LadderEntry = e, method: str = method) -> bool:
                return x.src == e.dst and x.dst == e.src and x.line.startswith(method)

            if not any(is_request(x) for x in out[:i]):
                j = next((k for k in range(i + 1, len(out)) if is_request(out[k])), None)
                if j is not None and out[j].ts - e.ts <= _CAUSAL_SLACK_S:
                    del out[i]
                    out.insert(j, LadderEntry(max(e.ts, out[j - 1].ts), e.src, e.dst, e.line, e.transport,
                                              e.call_id, e.logger, e.dir))
                    continue
        i += 1
    return out


def format_ladder(entries: list[LadderEntry], t0: float | None = None,
                  max_lines: int = MAX_LADDER_LINES) -> list[str]:
    """Render ladder entries as ``+12.3 ms  bob(127.0.0.5) → edge  INVITE sip:...``
    lines, times relative to ``t0`` (default: the first entry)."""
    if not entries:
        return []
    base = entries[0].ts if t0 is None else t0
    lines = []
    for e in entries[:max_lines]:
        ms = (e.ts - base) * 1000.0
        lines.append(f"{'+%.1f ms' % ms:>11}  {e.src} → {e.dst}  {e.line}")
    if len(entries) > max_lines:
        lines.append(f"{'':>11}  … {len(entries) - max_lines} more message(s) not shown")
    return lines


# ---- traversal and relay -----------------------------------------------------------------------

def traversal_history(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``traversal connected`` / ``traversal disconnected`` events sorted by time."""
    out = [dict(e) for e in events if e.get("event") in ("traversal connected", "traversal disconnected")]
    out.sort(key=lambda e: float(e.get("ts", 0.0)))
    return out


def tls_classifications(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``tls classified`` events (an inbound TLS connection put into a zone by the
    peer certificate's CN/SAN) sorted by time."""
    out = [dict(e) for e in events if e.get("event") == "tls classified"]
    out.sort(key=lambda e: float(e.get("ts", 0.0)))
    return out


def relay_stats(events: Iterable[Mapping[str, Any]], call_id: str | None = None) -> list[dict[str, Any]]:
    """The relay counters of ``media closed`` events: per node and session,
    ``{"node", "session", "reason", "a_to_b", "b_to_a", "dropped"}`` where the
    directions are ``stats["a_to_b"]["rtp_packets"]`` etc. (``None`` when absent)."""
    out = []
    for e in events:
        if e.get("event") != "media closed" or (call_id and e.get("call_id") != call_id):
            continue
        st = e.get("stats") or {}
        if not isinstance(st, Mapping):
            st = {}

        def pk(direction: str) -> int | None:
            d = st.get(direction)
            return d.get("rtp_packets") if isinstance(d, Mapping) else None

        out.append({"node": e.get("node", "?"), "session": e.get("session") or st.get("label"),
                    "reason": e.get("reason"), "a_to_b": pk("a_to_b"), "b_to_a": pk("b_to_a"),
                    "dropped": st.get("dropped"), "stats": dict(st)})
    return out


def media_path(ladder: Iterable[LadderEntry], caller: str, callee: str, relay_nodes: Iterable[str]) -> list[str]:
    """The media path of a call: ``caller``, then the nodes in ``relay_nodes``
    in the order the initial INVITE reached them (from the ladder), then
    ``callee`` (all as ladder labels). Nodes that did not relay media are left
    out: the media bypassed them."""
    relays = set(relay_nodes)
    path = [caller]
    seen = {caller}
    hop = caller
    for e in ladder:
        if not e.line.startswith("INVITE ") or e.src != hop or e.dst in seen:
            continue
        path.append(e.dst)
        seen.add(e.dst)
        hop = e.dst
    nodes = [n for n in path[1:] if n in relays]
    nodes += sorted(relays - set(nodes))
    return [caller] + nodes + [callee]


def media_legs(path: list[str], caller_srtp: str | bool | None, callee_srtp: str | bool | None,
               relay_sides: Mapping[str, Mapping[str, str | None]]) -> list[tuple[str, str, str]]:
    """Per leg of ``path``: ``(left, right, "SRTP <suite>" | "RTP" | "?" | "mismatch …")``.

    What each end says about a leg: the caller/callee UA its ``srtp`` (a suite
    string, True, or False), a relaying node the SRTP suite of its side facing
    the leg (``relay_sides[node]["a"]`` toward the caller — side a is the
    offerer — and ``["b"]`` toward the callee; None = plain RTP). Unknown
    ends are left out; disagreeing ends give ``mismatch``."""
    def said(who: str, facing: str, index: int) -> str | bool | None:
        if index == 0:
            return caller_srtp if caller_srtp is not None else "?"
        if index == len(path) - 1:
            return callee_srtp if callee_srtp is not None else "?"
        sides = relay_sides.get(who)
        if sides is None:
            return "?"
        return sides.get(facing) or False

    out = []
    for i in range(len(path) - 1):
        left = said(path[i], "b", i)
        right = said(path[i + 1], "a", i + 1)
        views = [v for v in (left, right) if v != "?"]
        if not views:
            desc = "?"
        elif all(v is False for v in views):
            desc = "RTP"
        elif all(v is not False for v in views):
            suite = next((v for v in views if isinstance(v, str)), None)
            desc = f"SRTP {suite}" if suite else "SRTP"
        else:
            enc = path[i] if left not in (False, "?") else path[i + 1]
            desc = f"mismatch: only {enc} uses SRTP"
        out.append((path[i], path[i + 1], desc))
    return out


def _clock(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def _loss(sent: int | None, received: int | None) -> float | None:
    if not sent or received is None:
        return None
    return max(0.0, 1.0 - received / sent)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f} %"


def _n(x: Any) -> str:
    return "n/a" if x is None else str(x)


# ---- the report --------------------------------------------------------------------------------

def _merged_ladder(evs: list, host_names: Mapping[str, str], ua_names: list[str], call_id: str | None,
                   uas: Iterable[tuple[str, Any, float | None]]) -> list:
    """The nodes' ladder merged with each UA's own (``(name, ladder lines, t0)``); a UA
    ladder without a known start time is aligned against the nodes' records."""
    nodes = node_ladder(evs, host_names, ua_names)
    ladders = [nodes]
    for who, lines, t0 in uas:
        lines = list(lines or [])
        entries = ua_ladder(who, lines, host_names, ua_names, call_id or "", t0)
        if t0 is None and any(isinstance(x, str) for x in lines):
            entries = align_ladder(entries, nodes)
        ladders.append(entries)
    return merge_ladder(*ladders)


def _ua_srtp_view(srtp: bool | None, suite: str | None) -> str | bool | None:
    return (suite or True) if srtp else srtp


def _window_notes(node_events: Iterable[Mapping[str, Any]], window: tuple[float, float]) -> list[str]:
    """Notes from events without a Call-ID during the call: DNS answers, failed connects."""
    notes = []
    for e in node_events:
        if e.get("call_id") or not window[0] <= float(e.get("ts", 0.0)) <= window[1]:
            continue
        node = e.get("node", "?")
        if e.get("event") == "dns resolved":
            how = " (Modify DNS request)" if e.get("modify_dns_request") else ""
            queries = [str(q).split(":")[0] for q in e.get("queries") or [] if "additional" not in str(q)]
            notes.append(f"{node}: DNS for zone {e.get('zone')!r}{how}: {e.get('host')} "
                         f"({', '.join(queries) or 'no queries'}) → "
                         f"{', '.join(e.get('targets') or []) or 'no targets'}")
        elif e.get("event") == "connect failed":
            notes.append(f"{node}: connect failed ({e.get('transport')} {e.get('peer')}: {e.get('cause')})")
    return notes


_FAILURE_EVENTS = ("call rejected", "next hop failed", "next hop timeout", "sdp rewrite failed",
                   "media ports exhausted", "send failed", "srtp interworking failed")


def _call_event_notes(evs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Notes from the call's own events: the search-rule outcome and every failure."""
    notes = []
    for e in evs:
        name, node = e.get("event"), e.get("node", "?")
        if name == "search completed":
            if e.get("found", e.get("zone") is not None):
                notes.append(f"{node}: search rule {e.get('rule')!r} → {e.get('zone')}")
            else:
                notes.append(f"{node}: no search rule matched {e.get('alias')!r}")
        elif name in _FAILURE_EVENTS:
            detail = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "node", "event", "call_id"))
            notes.append(f"{node}: {name} ({detail})")
    return notes


@dataclass
class CallReport:
    """One demo call: signalling result, ladder, media counts and verdict.

    ``caller_*`` come from the caller's :class:`CallResult`, ``callee_*`` from
    the callee UA's per-call stats. Media passes when both sides sent RTP and
    each received at least :data:`MEDIA_MIN_RATIO` of what the other sent.
    """

    title: str
    caller: str
    callee: str
    target: str
    call_id: str | None = None
    ok: bool = False
    status: int | None = None
    reason: str = ""
    setup_ms: float | None = None
    error: str | None = None
    caller_rtp_sent: int | None = None
    caller_rtp_received: int | None = None
    caller_rtcp_received: int | None = None
    callee_rtp_sent: int | None = None
    callee_rtp_received: int | None = None
    ladder: list[LadderEntry] = field(default_factory=list)
    relays: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    caller_srtp: bool | None = None
    callee_srtp: bool | None = None
    caller_srtp_suite: str | None = None
    callee_srtp_suite: str | None = None
    caller_srtp_auth_failures: int | None = None
    callee_srtp_auth_failures: int | None = None
    expect_srtp: dict[str, bool] | None = None
    legs: list[tuple[str, str, str]] = field(default_factory=list)
    srtp_keyed: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        title: str,
        caller: str,
        callee: str,
        target: str,
        result: Any,
        callee_stats: Any,
        node_events: Iterable[Mapping[str, Any]],
        *,
        callee_ladder: Iterable[Any] = (),
        caller_t0: float | None = None,
        callee_t0: float | None = None,
        host_names: Mapping[str, str] = HOST_NAMES,
        notes: Iterable[str] = (),
        expect_srtp: Mapping[str, bool] | None = None,
        window: tuple[float, float] | None = None,
    ) -> CallReport:
        """Assemble a call's report from the caller's result (``None`` if the
        call could not be placed), the callee's stats (mapping or object with
        ``rtp_sent``/``rtp_received``; ``None`` if it never answered), all node
        events (filtered here by Call-ID) and the callee's ladder, if any.

        ``caller_t0`` / ``callee_t0`` are the epoch times the UA ladders'
        offsets count from; when unknown the ladder is placed with
        :func:`align_ladder` against the nodes' records.

        ``expect_srtp`` maps the caller's and/or callee's name to whether its
        media must be SRTP (the call only passes if so, with no SRTP
        authentication failures). ``window`` = ``(start, end)`` epoch seconds
        of the call: events without a Call-ID in it (``dns resolved``,
        ``connect failed``) become notes."""
        ua_names = [caller, callee]
        call_id = _get(result, "call_id") if result is not None else None
        evs = events_for_call(node_events, call_id)
        ladder = _merged_ladder(evs, host_names, ua_names, call_id,
                                ((caller, _get(result, "ladder", None) if result is not None else None, caller_t0),
                                 (callee, callee_ladder, callee_t0)))
        rep = cls._from_results(title, caller, callee, target, call_id, result, callee_stats, evs, ladder,
                                notes, expect_srtp)
        rep._add_media_legs(_Labels(host_names, ua_names))
        if window is not None:
            rep.notes += _window_notes(node_events, window)
        rep.notes += _call_event_notes(evs)
        return rep

    @classmethod
    def _from_results(cls, title: str, caller: str, callee: str, target: str, call_id: str | None, result: Any,
                      callee_stats: Any, evs: list, ladder: list, notes: Iterable[str],
                      expect_srtp: Mapping[str, bool] | None) -> CallReport:
        """The report's fields from the caller's result and the callee's stats."""
        rep = cls(
            title=title, caller=caller, callee=callee, target=target, call_id=call_id,
            ok=bool(_get(result, "ok", False)) if result is not None else False,
            status=_get(result, "status"), reason=str(_get(result, "reason", "") or ""),
            setup_ms=_get(result, "setup_ms"), error=_get(result, "error"),
            caller_rtp_sent=_get(result, "rtp_sent"), caller_rtp_received=_get(result, "rtp_received"),
            caller_rtcp_received=_get(result, "rtcp_received"),
            callee_rtp_sent=_get(callee_stats, "rtp_sent") if callee_stats is not None else None,
            callee_rtp_received=_get(callee_stats, "rtp_received") if callee_stats is not None else None,
            ladder=ladder,
            relays=relay_stats(evs),
            notes=list(notes),
            expect_srtp=dict(expect_srtp) if expect_srtp is not None else None,
            srtp_keyed=[e for e in evs if e.get("event") == "srtp keyed"],
        )
        for prefix, src in (("caller", result), ("callee", callee_stats)):
            if src is None:
                continue
            srtp = _get(src, "srtp")
            setattr(rep, f"{prefix}_srtp", None if srtp is None else bool(srtp))
            setattr(rep, f"{prefix}_srtp_suite", _get(src, "srtp_suite"))
            setattr(rep, f"{prefix}_srtp_auth_failures", _get(src, "srtp_auth_failures"))
        return rep

    def _add_media_legs(self, lab: "_Labels") -> None:
        """The RTP legs of an answered call, with SRTP per side as each relay saw it."""
        if self.status is None or not 200 <= self.status < 300:
            return  # no media legs for a call never answered
        sides: dict[str, dict[str, str | None]] = {}
        for r in self.relays:
            st = r.get("stats") or {}
            node_sides = sides.setdefault(str(r["node"]), {"a": None, "b": None})
            for side in ("a", "b"):
                info = st.get(side)
                if isinstance(info, Mapping) and info.get("srtp_inbound"):
                    node_sides[side] = str(info["srtp_inbound"])
        path = media_path(self.ladder, lab.name(self.caller), lab.name(self.callee), sides)
        self.legs = media_legs(path, _ua_srtp_view(self.caller_srtp, self.caller_srtp_suite),
                               _ua_srtp_view(self.callee_srtp, self.callee_srtp_suite), sides)

    def relay_totals(self) -> dict[str, dict[str, int | None]]:
        """Per node, in path order (as the nodes first appear in the ladder), the RTP
        packets its relay forwarded caller → callee (``a_to_b``; side a is the
        offerer) and back (``b_to_a``), and ``dropped``, summed over the call's
        sessions (``None`` where a count is missing)."""
        order: list[str] = []
        for e in self.ladder:
            for who in (e.src, e.dst):
                if who not in order:
                    order.append(who)
        nodes = sorted({str(r["node"]) for r in self.relays},
                       key=lambda n: order.index(n) if n in order else len(order))
        out: dict[str, dict[str, int | None]] = {}
        for n in nodes:
            tot: dict[str, int | None] = {}
            for key in ("a_to_b", "b_to_a", "dropped"):
                vals = [r[key] for r in self.relays if r["node"] == n]
                tot[key] = None if any(v is None for v in vals) else sum(vals)
            out[n] = tot
        return out

    @property
    def forward_loss(self) -> float | None:
        """Caller → callee RTP loss (1 − callee received / caller sent)."""
        return _loss(self.caller_rtp_sent, self.callee_rtp_received)

    @property
    def backward_loss(self) -> float | None:
        """Callee → caller RTP loss (1 − caller received / callee sent)."""
        return _loss(self.callee_rtp_sent, self.caller_rtp_received)

    @property
    def media_ok(self) -> bool:
        """Both sides sent RTP and each got ≥ :data:`MEDIA_MIN_RATIO` of the other's packets."""
        vals = (self.caller_rtp_sent, self.caller_rtp_received, self.callee_rtp_sent, self.callee_rtp_received)
        if any(v is None for v in vals) or not self.caller_rtp_sent or not self.callee_rtp_sent:
            return False
        return (self.callee_rtp_received >= MEDIA_MIN_RATIO * self.caller_rtp_sent
                and self.caller_rtp_received >= MEDIA_MIN_RATIO * self.callee_rtp_sent)

    def srtp_problems(self) -> list[str]:
        """Why the call's media encryption is not what :attr:`expect_srtp` asks for
        (empty when it is, or when nothing is expected)."""
        out: list[str] = []
        for who, want in (self.expect_srtp or {}).items():
            if who == self.caller:
                got, auth = self.caller_srtp, self.caller_srtp_auth_failures
            elif who == self.callee:
                got, auth = self.callee_srtp, self.callee_srtp_auth_failures
            else:
                continue
            if got is None:
                out.append(f"{who}: media encryption unknown")
            elif got != want:
                out.append(f"{who} used {'SRTP' if got else 'plain RTP'}, expected {'SRTP' if want else 'plain RTP'}")
            if auth:
                out.append(f"{who}: {auth} SRTP authentication failure(s)")
        for a, b, desc in self.legs:
            if desc.startswith("mismatch"):
                out.append(f"{a} ⇄ {b}: {desc}")
        if self.expect_srtp:
            for node, n in self.relay_srtp_auth_failures().items():
                if n:
                    out.append(f"{node} relay: {n} SRTP authentication failure(s)")
        return out

    def relay_srtp_auth_failures(self) -> dict[str, int]:
        """Per node whose relay had SRTP keys for this call: packets it dropped
        because SRTP/SRTCP authentication failed (both directions summed)."""
        out: dict[str, int] = {}
        keyed = {str(e.get("node", "?")) for e in self.srtp_keyed}
        for r in self.relays:
            st = r.get("stats") or {}
            node = str(r["node"])
            srtp = node in keyed or any(isinstance(st.get(x), Mapping) and st[x].get("srtp_inbound") for x in "ab")
            if not srtp:
                continue
            n = 0
            for direction in ("a_to_b", "b_to_a"):
                d = st.get(direction)
                if isinstance(d, Mapping):
                    n += int(d.get("srtp_auth_failures") or 0)
            out[node] = out.get(node, 0) + n
        return out

    @property
    def srtp_ok(self) -> bool:
        """Media encryption is as :attr:`expect_srtp` asks (True when nothing is expected)."""
        return not self.srtp_problems()

    @property
    def passed(self) -> bool:
        """Signalling succeeded, media flowed both ways and was (not) encrypted as expected."""
        return self.ok and self.media_ok and self.srtp_ok

    def render(self, console: Console, host_names: Mapping[str, str] = HOST_NAMES) -> None:
        """Print this call: heading, outcome, ladder, media table and notes."""
        verdict = Text(" PASS ", style="bold white on green") if self.passed else Text(" FAIL ", style="bold white on red")
        head = Text.assemble(verdict, " ", (self.title, "bold"))
        console.print(head)
        status = f"{self.status} {self.reason}".strip() if self.status else "no final response"
        line = f"  {self.caller} calls {self.target}: {status}"
        if self.setup_ms is not None:
            line += f", set-up {self.setup_ms:.1f} ms"
        if self.call_id:
            line += f"  (Call-ID {self.call_id})"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        if self.error:
            console.print(f"  error: {self.error}", style="red", markup=False, highlight=False, soft_wrap=True)
        if self.ladder:
            console.print("  SIP ladder (hop by hop):", markup=False, highlight=False)
            for text in format_ladder(self.ladder):
                console.print("  " + text, markup=False, highlight=False, soft_wrap=True)
        else:
            console.print("  SIP ladder: no messages recorded", markup=False, highlight=False)
        relays = self.relay_totals()
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2), pad_edge=False)
        table.add_column("  RTP packets")
        table.add_column("sent", justify="right")
        for node in relays:
            table.add_column(f"via {node}", justify="right")
        table.add_column("received", justify="right")
        table.add_column("loss", justify="right")
        table.add_row(f"  {self.caller} → {self.callee}", _n(self.caller_rtp_sent),
                      *[_n(r["a_to_b"]) for r in relays.values()], _n(self.callee_rtp_received),
                      _pct(self.forward_loss))
        table.add_row(f"  {self.callee} → {self.caller}", _n(self.callee_rtp_sent),
                      *[_n(r["b_to_a"]) for r in relays.values()], _n(self.caller_rtp_received),
                      _pct(self.backward_loss))
        console.print(table)
        for node, r in relays.items():
            if r["dropped"]:
                console.print(f"  {node} relay dropped {r['dropped']} packet(s)", style="yellow", markup=False,
                              highlight=False)
        if self.caller_rtcp_received is not None:
            console.print(f"  RTCP received by {self.caller}: {self.caller_rtcp_received}", markup=False, highlight=False)
        if self.legs:
            legs = ", ".join(f"{a} ⇄ {b} {desc}" for a, b, desc in self.legs)
            console.print(f"  media legs: {legs}", markup=False, highlight=False, soft_wrap=True)
        if self.expect_srtp or any(x for x in (self.caller_srtp, self.callee_srtp)):
            parts = []
            for who, srtp, auth in ((self.caller, self.caller_srtp, self.caller_srtp_auth_failures),
                                    (self.callee, self.callee_srtp, self.callee_srtp_auth_failures)):
                if srtp is None:
                    parts.append(f"{who} n/a")
                else:
                    parts.append(f"{who} {'SRTP' if srtp else 'plain RTP'}"
                                 + (f" ({auth or 0} auth failures)" if srtp else ""))
            keyed = sorted({f"{e.get('node', '?')} side {e.get('side', '?')}" for e in self.srtp_keyed})
            line = "  SRTP: " + ", ".join(parts)
            if keyed:
                line += f"; relay keyed: {', '.join(keyed)}"
            for node, n in self.relay_srtp_auth_failures().items():
                line += f"; {node} relay {n} auth failures"
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        media = "media OK" if self.media_ok else f"media FAILED (each side must receive ≥ {MEDIA_MIN_RATIO:.0%} of what the other sent)"
        verdicts = f"  {'signalling OK' if self.ok else 'signalling FAILED'}, {media}"
        if self.expect_srtp:
            problems = self.srtp_problems()
            verdicts += ", encryption OK" if not problems else f", encryption FAILED ({'; '.join(problems)})"
        console.print(verdicts, markup=False, highlight=False, soft_wrap=True)
        for n in self.notes:
            console.print(f"  · {n}", markup=False, highlight=False, soft_wrap=True)


@dataclass
class MraStep:
    """One step of the mobile and remote access demonstration: ``title``, whether it
    succeeded, its ``result`` in one line (status codes, answers) and ``details`` lines
    (e.g. a SIP ladder). A step that is a call carries its :class:`CallReport` in
    ``call`` and is printed as one."""

    title: str
    ok: bool
    result: str
    details: list[str] = field(default_factory=list)
    call: CallReport | None = None

    def render(self, console: Console, host_names: Mapping[str, str]) -> None:
        if self.call is not None:
            self.call.render(console, host_names)
            if self.call.passed and not self.ok:
                console.print("  FAILED: see the notes above", style="red", markup=False, highlight=False)
            return
        verdict = Text(" PASS ", style="bold white on green") if self.ok else Text(" FAIL ", style="bold white on red")
        console.print(Text.assemble(verdict, " ", (self.title, "bold")), soft_wrap=True)
        console.print(f"  {self.result}", markup=False, highlight=False, soft_wrap=True,
                      style=None if self.ok else "red")
        for d in self.details:
            console.print(f"  {d}", markup=False, highlight=False, soft_wrap=True)


@dataclass
class MediaProbeReport:
    """The media node discovery section of a lab run (``edgeway probe`` of the lab's media
    nodes, issue 10 item 5): one step per probe with its headline and per-transport rows."""

    steps: list[MraStep] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return len(self.steps) >= 2 and all(s.ok for s in self.steps)

    def summary(self) -> str:
        return f"media probe {sum(1 for s in self.steps if s.ok)}/{max(len(self.steps), 2)} passed"

    def render(self, console: Console, host_names: Mapping[str, str]) -> None:
        console.rule("Media node discovery (edgeway probe)")
        for step in self.steps:
            step.render(console, host_names)


@dataclass
class MraReport:
    """The MRA section of a lab run: the remote client's steps in order (discovery,
    HTTPS through the edge, registration, the call to it, un-registration)."""

    steps: list[MraStep] = field(default_factory=list)
    user: str = ""
    client: str = ""

    #: Steps a complete run has: SRV, get_edge_config, 3 allowed, 1 blocked, registration,
    #: call, un-registration.
    EXPECTED_STEPS = 9

    @property
    def passed(self) -> bool:
        """Every step succeeded and none was skipped (a failed step stops the ones that need it)."""
        return len(self.steps) >= self.EXPECTED_STEPS and all(s.ok for s in self.steps)

    def summary(self) -> str:
        ok = sum(1 for s in self.steps if s.ok)
        return f"MRA {ok}/{max(len(self.steps), self.EXPECTED_STEPS)} steps passed"

    def render(self, console: Console, host_names: Mapping[str, str]) -> None:
        who = self.user.partition("@")[0] or "remote user"
        console.rule(f"Mobile and remote access ({who}, outside at {self.client or '?'})")
        for step in self.steps:
            step.render(console, host_names)
        if len(self.steps) < self.EXPECTED_STEPS:
            console.print(f"  {self.EXPECTED_STEPS - len(self.steps)} step(s) not run (an earlier step failed)",
                          style="red", markup=False, highlight=False)


@dataclass
class LabReport:
    """The whole demo run: traversal zone history, one :class:`CallReport` per
    call, and a set-up error when the lab never got as far as calling."""

    calls: list[CallReport] = field(default_factory=list)
    traversal: list[dict[str, Any]] = field(default_factory=list)
    classifications: list[dict[str, Any]] = field(default_factory=list)
    workdir: Path | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    host_names: dict[str, str] = field(default_factory=lambda: dict(HOST_NAMES))
    created: float = field(default_factory=time.time)
    #: The mobile and remote access section (None when the run had none).
    mra: MraReport | None = None
    #: The media node discovery section (None when the run had none).
    media: MediaProbeReport | None = None

    @property
    def passed(self) -> bool:
        """True when there was no set-up error, at least one call, every call passed, and
        every MRA step passed (when the run had them)."""
        return (self.error is None and bool(self.calls) and all(c.passed for c in self.calls)
                and (self.mra is None or self.mra.passed) and (self.media is None or self.media.passed))

    @property
    def exit_code(self) -> int:
        """Process exit status: 0 when :attr:`passed`, else 1."""
        return 0 if self.passed else 1

    def traversal_state(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Last known state per ``(node, zone)``: the latest traversal event."""
        state: dict[tuple[str, str], dict[str, Any]] = {}
        for e in self.traversal:
            state[(str(e.get("node", "?")), str(e.get("zone", "?")))] = e
        return state

    def render(self, console: Console) -> None:
        """Print the report: traversal zone, each call, overall verdict."""
        console.rule("Edgeway lab report")
        if self.traversal or self.calls or self.error is None:
            console.print(Text("Traversal zone", style="bold"))
        if not self.traversal and (self.calls or self.error is None):
            console.print("  no traversal events recorded", style="yellow")
        for (node, zone), e in sorted(self.traversal_state().items()):
            up = e.get("event") == "traversal connected"
            state = Text("connected", style="green") if up else Text("disconnected", style="red")
            ts = e.get("ts")
            since = f" since {_clock(float(ts))}" if ts is not None else ""
            extra = f", {e['reason']}" if e.get("reason") and not up else ""
            console.print(Text.assemble(f"  {node}: {zone!r} ", state,
                                        f" (peer {e.get('peer', '?')}{since}{extra})"), soft_wrap=True)
        changes = len(self.traversal)
        if changes > 2:
            console.print(f"  {changes} state changes recorded", markup=False, highlight=False)
        seen: set[tuple[str, str, str, str]] = set()
        for e in self.classifications:
            peer_ip = _peer_ip(e.get("peer"))[0]
            who = self.host_names.get(peer_ip, peer_ip)
            key = (str(e.get("node", "?")), who, str(e.get("zone")), str(e.get("matched_identity")))
            if key in seen:
                continue
            seen.add(key)
            matched = e.get("matched_identity")
            how = f"certificate name {matched} matched" if matched else "no certificate name matched"
            console.print(f"  {key[0]}: TLS from {who} ({e.get('peer', '?')}, listener {e.get('listener', '?')}) "
                          f"classified into {key[2]!r} ({how})", markup=False, highlight=False, soft_wrap=True)
        for c in self.calls:
            console.print()
            c.render(console, self.host_names)
        if self.mra is not None:
            console.print()
            self.mra.render(console, self.host_names)
        if self.media is not None:
            console.print()
            self.media.render(console, self.host_names)
        for n in self.notes:
            console.print(f"· {n}", markup=False, highlight=False, soft_wrap=True)
        console.print()
        if self.error:
            console.print(f"Lab set-up failed: {self.error}", style="red", markup=False, highlight=False, soft_wrap=True)
        passed = sum(1 for c in self.calls if c.passed)
        summary = f"{passed}/{len(self.calls)} calls passed"
        if self.mra is not None:
            summary += f", {self.mra.summary()}"
        if self.media is not None:
            summary += f", {self.media.summary()}"
        if self.workdir is not None and self.calls:
            summary += f"; logs in {self.workdir}"
        verdict = Text(" PASS ", style="bold white on green") if self.passed else Text(" FAIL ", style="bold white on red")
        console.print(Text.assemble(verdict, " ", summary), soft_wrap=True)
