"""Acceptance tests of the proxy's dialog behaviour through the traversal pair, against a
running lab (``edgeway lab up``) with independent peers (SIPp, baresip).

    outside (127.0.0.5)  →  edge 127.0.0.2 (5060 udp/tcp, 5061 tls)  ═mTLS 7001═  core 127.0.0.3  →  inside 127.0.0.4:5060/tcp

What they pin down (several fail on today's proxy, on purpose: each test's docstring says
what it expects, its assertion message what happened instead, message by message):

* dialog scenarios outside → inside over UDP and TCP: callee hangs up, caller hangs up,
  callee re-INVITE, caller CANCEL while ringing, 486 Busy Here; 0 failed calls on both sides.
  Over TCP the UAC's Contact names a port where it does not listen (like a client whose
  connection leaves from an ephemeral port, or one behind NAT), so a request toward it can
  only arrive on its own connection; a canary on that port records anything sent there;
* topology hiding: nothing the outside party receives names 127.0.0.3, 127.0.0.4, the
  traversal port 7001 or the core's ephemeral traversal port;
* a UAS that does not echo Record-Route (SIPp's built-in ``-sn uas``): the call still runs
  through the core and the edge opens nothing toward the inside;
* a crafted in-dialog request from outside whose Request-URI (or Route) names an inside
  address does not get the edge to connect there;
* the core stalled (SIGSTOP) under load: fast 503s, no call established on the inside that
  the caller does not have, recovery, no stray traversal connections afterwards;
* baresip over TLS hears the callee's BYE on its own connection.

Every process a test starts is stopped by PID (SIPp through ``stop_process``, the core is
SIGCONTed in a ``finally``); every wait is bounded. The connection checks read the kernel's
TCP table of the test's network namespace (:class:`~support.harness.TcpWatch`), so they
do not depend on what the nodes log. Run inside ``unshare -n`` (fixed loopback addresses).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.harness import (
    SIPP_DIR,
    Baresip,
    Canary,
    LabUp,
    SippMessage,
    SippResult,
    TcpWatch,
    baresip_available,
    free_port,
    sipp_available,
    sipp_messages,
    sipp_result,
    start_sipp,
    stop_process,
    tcp_sockets,
    wait_tcp_listening,
    wait_udp_bound,
)

pytestmark = pytest.mark.skipif(not sipp_available(), reason="sipp (Debian sip-tester) is not installed")

EDGE_IP = "127.0.0.2"
CORE_IP = "127.0.0.3"
INSIDE_IP = "127.0.0.4"
OUTSIDE_IP = "127.0.0.5"
BARESIP_IP = "127.0.0.8"
#: Addresses nothing the edge sends outside may name, and it may never connect to.
INSIDE_ADDRESSES = (CORE_IP, INSIDE_IP)
SIP_PORT = 5060
TRAVERSAL_PORT = 7001
UAC_PORT = 5070
#: The TCP UAC's Contact port: the UAC does not listen there (a canary does).
TCP_CONTACT_PORT = 5071

CALLS = 3
RATE = 5
HOLD_MS = 500
#: SIPp's per-message receive timeout: a lost message fails the call after this.
RECV_TIMEOUT_MS = 6000
#: SIPp quits after this whatever happens (-timeout), and the test waits this long at most.
SIPP_TIMEOUT_S = 30
#: Outside UAC → alice@corp.edgeway.test (the edge's search rules send it to the traversal zone).
TO_ALICE = ["-s", "alice", "-key", "domain", "corp.edgeway.test"]



# ---- running SIPp pairs ----------------------------------------------------------------------

@dataclass
class Side:
    """One SIPp of a pair: where it runs and how."""

    scenario: list[str]  # ["-sf", path] or ["-sn", "uas"]
    ip: str
    port: int
    transport: str  # "udp" / "tcp"
    #: The port our scenarios put in Contact (-key contact_port); None for built-in scenarios.
    contact_port: int | None = None
    media_port: int = 30000

    def args(self) -> list[str]:
        keys = ["-key", "contact_port", str(self.contact_port)] if self.contact_port is not None else []
        return [*self.scenario, "-i", self.ip, "-p", str(self.port), "-t", "u1" if self.transport == "udp" else "t1",
                "-mi", self.ip, "-mp", str(self.media_port), *keys]


@dataclass
class PairRun:
    tmp: Path
    uac: SippResult
    uas: SippResult
    uac_msgs: list[SippMessage]
    uas_msgs: list[SippMessage]

    def summary(self) -> str:
        return (f"UAC: rc {self.uac.returncode}, {self.uac.successful} ok, {self.uac.failed} failed; "
                f"UAS: rc {self.uas.returncode}, {self.uas.successful} ok, {self.uas.failed} failed\n"
                f"--- UAC errors:\n{sipp_errors(self.tmp, self.uac)}\n--- UAS errors:\n{sipp_errors(self.tmp, self.uas)}")


def sipp_error_events(tmp: Path, res: SippResult) -> list[str]:
    """The events the SIPp behind ``res`` wrote to its ``-trace_err`` log in ``tmp`` (e.g.
    "Aborting call on unexpected message … received 'SIP/2.0 503 …'"), one line each."""
    pid = res.call_id_marker.strip("-@")
    text = "".join(p.read_text(errors="replace") for p in sorted(tmp.glob(f"*_{pid}_errors.log")))
    events = re.split(r"\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+\d+\.\d+: ", text)
    return [" ".join(e.split()) for e in events if e.strip() and not e.startswith("The following events")]


def sipp_errors(tmp: Path, res: SippResult, limit: int = 6) -> str:
    """:func:`sipp_error_events`, at most ``limit`` of them, for assertion messages."""
    out = sipp_error_events(tmp, res)
    if not out:
        return "  (no errors logged)"
    more = f"\n  … {len(out) - limit} more" if len(out) > limit else ""
    return "\n".join(f"  {e[:260]}" for e in out[:limit]) + more


def unexpected_messages(run: PairRun) -> list[str]:
    """Messages either SIPp of ``run`` did not expect where it was in its scenario. With
    ``-nd`` SIPp continues such a call instead of aborting it, so a test must look."""
    return [f"{side}: {e[:260]}" for side, res in (("UAC", run.uac), ("UAS", run.uas))
            for e in sipp_error_events(run.tmp, res) if "unexpected message" in e]


def _scenario(name: str) -> list[str]:
    return ["-sf", str(SIPP_DIR / name)]


def _sipp_common(tmp: Path, name: str, calls: int | None) -> list[str]:
    return [*(["-m", str(calls)] if calls is not None else []), "-nd", "-trace_msg", "-message_file", str(tmp / f"{name}_messages.log"),
            "-recv_timeout", str(RECV_TIMEOUT_MS), "-timeout", str(SIPP_TIMEOUT_S)]


def _wait_ready(side: Side, proc) -> None:
    ok = (wait_tcp_listening if side.transport == "tcp" else wait_udp_bound)(side.ip, side.port, 5.0, proc)
    assert ok, f"SIPp UAS is not listening on {side.ip}:{side.port}/{side.transport}"


def run_pair(tmp: Path, *, uas: Side, uac: Side, target: str, uac_args: list[str], calls: int = CALLS,
             rate: int = RATE, hold_ms: int = HOLD_MS) -> PairRun:
    """Start the UAS, wait until it listens, run the UAC (``calls`` at ``rate``/s to
    ``target``), then let the UAS finish; both stopped by PID whatever happens."""
    uas_p = start_sipp([*uas.args(), "-d", str(hold_ms), *_sipp_common(tmp, "uas", calls)], tmp, "uas")
    try:
        _wait_ready(uas, uas_p)
        uac_p = start_sipp([*uac.args(), *uac_args, "-d", str(hold_ms), "-r", str(rate), *_sipp_common(tmp, "uac", calls),
                            target], tmp, "uac")
        try:
            uac_res = sipp_result(uac_p, tmp, "uac", timeout_s=SIPP_TIMEOUT_S + 5)
        finally:
            stop_process(uac_p, signal.SIGTERM, 5)
    finally:
        uas_res = sipp_result(uas_p, tmp, "uas", timeout_s=RECV_TIMEOUT_MS / 1000 + 5)
        stop_process(uas_p, signal.SIGTERM, 5)
    return PairRun(tmp, uac_res, uas_res, sipp_messages(tmp / "uac_messages.log"), sipp_messages(tmp / "uas_messages.log"))


def outside_uac(transport: str, scenario: str, *, contact_port: int | None = None) -> Side:
    return Side(_scenario(scenario), OUTSIDE_IP, UAC_PORT, transport, contact_port or UAC_PORT)


def inside_uas(scenario: list[str]) -> Side:
    return Side(scenario, INSIDE_IP, SIP_PORT, "tcp", SIP_PORT if scenario[0] == "-sf" else None, media_port=20000)


def _ladder(msgs: list[SippMessage], limit: int = 40) -> str:
    """``+0.012s sent INVITE sip:…`` lines, for assertion messages."""
    if not msgs:
        return "(no messages)"
    t0 = msgs[0].ts
    return "\n".join(f"  +{m.ts - t0:6.3f}s {m.direction:8} {m.first_line[:90]}  [{m.call_id}]" for m in msgs[:limit])


def _edge_connects(lab: LabUp, since: float, ips: tuple[str, ...]) -> list[str]:
    """The edge's ``connect failed`` events toward ``ips`` since ``since`` (epoch seconds):
    connections it tried to open (refused ones leave no row in the TCP table)."""
    out = []
    for ev in lab.events("edge"):
        if ev.get("event") == "connect failed" and ev.get("ts", 0) >= since and str(ev.get("peer", "")).split(":")[0] in ips:
            out.append(f"{ev.get('transport')} to {ev.get('peer')}: {ev.get('cause')}")
    return out


def _inward_problems(lab: LabUp, watch: TcpWatch, since: float) -> list[str]:
    """Connections the edge opened (or tried to open) toward the inside."""
    problems = []
    opened = watch.opened(EDGE_IP, INSIDE_ADDRESSES)
    if opened:
        problems.append("the edge opened TCP connection(s) toward the inside: "
                        + ", ".join(f"{c[0]}:{c[1]} → {s[0]}:{s[1]}" for c, s in opened))
    tried = _edge_connects(lab, since, INSIDE_ADDRESSES)
    if tried:
        problems.append("the edge tried to connect toward the inside: " + "; ".join(tried))
    return problems


# ---- 1. dialog scenarios, outside → inside -------------------------------------------------

DIALOG_CASES = {
    "callee-bye": "callee_bye",
    "caller-bye": "caller_bye",
    "callee-reinvite": "reinvite",
    "caller-cancel": "cancel",
    "callee-busy": "busy",
}


@pytest.mark.parametrize("transport", ["udp", "tcp"], ids=["uac-udp", "uac-tcp"])
@pytest.mark.parametrize("case", list(DIALOG_CASES))
def test_dialog_outside_to_inside(lab: LabUp, tmp_path: Path, case: str, transport: str) -> None:
    """Outside SIPp UAC → edge → core → inside SIPp UAS (TCP), one scenario pair per case;
    0 failed calls on both sides. Over TCP the UAC's Contact port (5071) is not where it
    listens: requests toward it must use its connection; nothing may reach the canary there,
    and the edge opens no connection toward the UAC (or the inside)."""
    name = DIALOG_CASES[case]
    since = time.time()
    canary = Canary(OUTSIDE_IP, TCP_CONTACT_PORT) if transport == "tcp" else None
    try:
        with TcpWatch() as watch:
            run = run_pair(
                tmp_path, uas=inside_uas(_scenario(f"dlg_uas_{name}.xml")),
                uac=outside_uac(transport, f"dlg_uac_{name}.xml",
                                contact_port=TCP_CONTACT_PORT if transport == "tcp" else UAC_PORT),
                target=f"{EDGE_IP}:{SIP_PORT}", uac_args=TO_ALICE,
            )
    finally:
        if canary is not None:
            canary.close()
    problems = []
    if canary is not None and canary.hits:
        problems.append(f"the edge sent to the UAC's Contact {OUTSIDE_IP}:{TCP_CONTACT_PORT} instead of on the UAC's "
                        f"connection: {canary.summary()}")
    toward_uac = watch.opened(EDGE_IP, (OUTSIDE_IP,))
    if toward_uac:
        problems.append("the edge opened TCP connection(s) toward the UAC: "
                        + ", ".join(f"{c[0]}:{c[1]} → {s[0]}:{s[1]}" for c, s in toward_uac))
    if transport == "tcp":
        tried = _edge_connects(lab, since, (OUTSIDE_IP,))
        if tried:
            problems.append("the edge tried to connect toward the UAC: " + "; ".join(tried))
    problems += _inward_problems(lab, watch, since)
    ok = (run.uac.returncode == 0 and run.uac.successful == CALLS and run.uac.failed == 0
          and run.uas.successful == CALLS and run.uas.failed == 0)
    if not ok:
        problems.append("calls failed: " + run.summary())
    elif unexpected := unexpected_messages(run):
        problems.append("unexpected messages: " + "\n  ".join(unexpected[:6]))
    assert not problems, ("\n".join(problems) + f"\n--- UAC ladder:\n{_ladder(run.uac_msgs)}"
                          f"\n--- UAS ladder:\n{_ladder(run.uas_msgs)}")


# ---- 2. topology hiding ----------------------------------------------------------------------

def _core_traversal_port(lab: LabUp) -> int:
    """The core's ephemeral port of its current traversal connection (edge's view)."""
    peers = [ev.get("peer", "") for ev in lab.events("edge") if ev.get("event") == "traversal connected"]
    assert peers, "no 'traversal connected' event on the edge"
    ip, _, port = peers[-1].rpartition(":")
    assert ip == CORE_IP, peers[-1]
    return int(port)


_INSIDE_IP_RE = re.compile(r"(?<![\d.])127\.0\.0\.[34](?![\d])")


@dataclass
class Leak:
    """Where one header (or ``Request-URI``, ``SDP o=``/``SDP c=``, ``body``) named an inside
    address or port: distinct values seen (a few) and the kinds of message it was in."""

    values: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


def _kind(m: SippMessage) -> str:
    return m.method if m.is_request else f"{m.status}/{m.method}"


def leaks(messages: list[SippMessage], ports: tuple[int, ...]) -> dict[str, Leak]:
    """Where received ``messages`` name an inside address (127.0.0.3, 127.0.0.4) or one of
    ``ports`` (as ``host:port`` or a ``rport=``/``port=`` value), by header."""
    port_re = re.compile(r"[:=]\s*(?:{})(?!\d)".format("|".join(str(p) for p in ports)))
    found: dict[str, Leak] = {}

    def shape(value: str) -> str:
        """``value`` without what differs per call or transaction (tags, branches, counters)."""
        return re.sub(r"(tag|branch)=[^;>,\s]+|\b\d+-\d+@", "", value.strip())

    def check(label: str, value: str, m: SippMessage) -> None:
        if _INSIDE_IP_RE.search(value) or port_re.search(value):
            leak = found.setdefault(label, Leak())
            if len(leak.values) < 3 and all(shape(v) != shape(value) for v in leak.values):
                leak.values.append(value.strip()[:170])
            if _kind(m) not in leak.kinds:
                leak.kinds.append(_kind(m))

    for m in messages:
        check("Request-URI", m.first_line, m)
        for name, value in m.header_lines:
            check(name, value, m)
        for line in m.body.splitlines():
            check(f"SDP {line[:2]}" if re.match(r"^[a-z]=", line) else "body", line, m)
    return found


def _format_leaks(found: dict[str, Leak]) -> str:
    return "\n".join(f"  {label} (in {', '.join(leak.kinds)}): " + "\n      ".join(leak.values)
                     for label, leak in sorted(found.items()))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("direction", ["outside-to-inside", "inside-to-outside"])
def test_topology_hiding(lab: LabUp, tmp_path: Path, direction: str, transport: str) -> None:
    """The outside SIPp (UAC for outside → inside, UAS for inside → outside; over UDP and TCP)
    runs a call with every message kind both ways (re-INVITE from the callee, INFO from the
    caller, BYE from the callee) with ``-trace_msg``; no header, Request-URI or body of any
    message it received may carry 127.0.0.3, 127.0.0.4, port 7001 or the core's ephemeral
    traversal port."""
    core_port = _core_traversal_port(lab)
    if direction == "outside-to-inside":
        run = run_pair(tmp_path, uas=inside_uas(_scenario("dlg_uas_full.xml")),
                       uac=outside_uac(transport, "dlg_uac_full.xml"),
                       target=f"{EDGE_IP}:{SIP_PORT}", uac_args=TO_ALICE)
        outside = run.uac_msgs
    else:
        domain = "partner.edgeway.test" + (";transport=tcp" if transport == "tcp" else "")
        run = run_pair(tmp_path, uas=Side(_scenario("dlg_uas_full.xml"), OUTSIDE_IP, SIP_PORT, transport, SIP_PORT, 20000),
                       uac=Side(_scenario("dlg_uac_full.xml"), INSIDE_IP, UAC_PORT, "tcp", UAC_PORT),
                       target=f"{CORE_IP}:{SIP_PORT}", uac_args=["-s", "bob", "-key", "domain", domain])
        outside = run.uas_msgs
    received = [m for m in outside if m.direction == "received"]
    assert received, f"the outside SIPp received nothing:\n{run.summary()}"
    found = leaks(received, (TRAVERSAL_PORT, core_port))
    assert not found, (f"inside addresses / traversal ports (7001, core's {core_port}) in what the outside "
                       f"received ({len(received)} messages):\n{_format_leaks(found)}")
    # The check covered a complete call each time (else what was not received was not checked).
    assert run.uac.successful == CALLS and run.uac.failed == 0 and run.uas.successful == CALLS, run.summary()


# ---- 3. a UAS that does not echo Record-Route ----------------------------------------------

def _top_via_host(m: SippMessage) -> str:
    via = m.header("Via") or m.header("v") or ""
    first = via.split(",")[0]
    hostport = first.split()[1] if len(first.split()) > 1 else ""
    return hostport.split(";")[0].rsplit(":", 1)[0]


@pytest.mark.parametrize("transport", ["udp", "tcp"], ids=["uac-udp", "uac-tcp"])
def test_uas_without_record_route(lab: LabUp, tmp_path: Path, transport: str) -> None:
    """SIPp's built-in ``-sn uas`` (no Record-Route in its 200) at 127.0.0.4:5060/TCP behind
    the core: outside calls complete on both sides, the UAS receives every ACK and BYE from
    the core (top Via 127.0.0.3), and the edge sends nothing toward the inside by itself (no
    TCP connection, no connection attempt, no UDP datagram at 127.0.0.4:5060)."""
    since = time.time()
    udp_canary = Canary(INSIDE_IP, SIP_PORT, tcp=False)
    try:
        with TcpWatch() as watch:
            run = run_pair(tmp_path, uas=inside_uas(["-sn", "uas"]), uac=outside_uac(transport, "dlg_uac_caller_bye.xml"),
                           target=f"{EDGE_IP}:{SIP_PORT}", uac_args=TO_ALICE)
    finally:
        udp_canary.close()
    problems = _inward_problems(lab, watch, since)
    if udp_canary.hits:
        problems.append(f"UDP toward {INSIDE_IP}:{SIP_PORT}: {udp_canary.summary()}")
    direct = [f"{m.first_line} (top Via {_top_via_host(m)})" for m in run.uas_msgs
              if m.direction == "received" and m.is_request and m.method in ("ACK", "BYE") and _top_via_host(m) != CORE_IP]
    if direct:
        problems.append("in-dialog requests reached the UAS without passing the core: " + "; ".join(direct[:4]))
    reached = {m.method for m in run.uas_msgs if m.direction == "received" and m.is_request}
    if not {"ACK", "BYE"} <= reached:
        problems.append(f"the UAS received only {sorted(reached)}")
    if not (run.uac.successful == CALLS and run.uac.failed == 0 and run.uas.successful == CALLS and run.uas.failed == 0):
        problems.append("calls failed: " + run.summary())
    elif unexpected := unexpected_messages(run):
        problems.append("unexpected messages: " + "\n  ".join(unexpected[:6]))
    assert not problems, "\n".join(problems) + f"\n--- UAS ladder:\n{_ladder(run.uas_msgs)}"


# ---- 4. a crafted in-dialog request from outside -------------------------------------------

CRAFTED = [
    ("BYE", "ruri", INSIDE_IP),
    ("INFO", "ruri", INSIDE_IP),
    ("BYE", "ruri", CORE_IP),
    ("INFO", "route", INSIDE_IP),
]


@pytest.mark.parametrize(("method", "where", "target_ip"), CRAFTED, ids=[f"{m}-{w}-{ip}" for m, w, ip in CRAFTED])
def test_crafted_in_dialog_request(lab: LabUp, method: str, where: str, target_ip: str) -> None:
    """A raw UDP socket at 127.0.0.5 sends the edge a BYE/INFO with a To tag (an in-dialog
    request of no dialog) whose Request-URI — or Route — names an inside
    ``IP:port;transport=tcp`` where the test listens (TCP and UDP): the edge answers 481 or
    403 and nothing reaches the listener within 2 s."""
    port = free_port(target_ip)
    inside_uri = f"sip:alice@{target_ip}:{port};transport=tcp"
    ruri = inside_uri if where == "ruri" else "sip:alice@corp.edgeway.test"
    route = f"Route: <sip:{target_ip}:{port};transport=tcp;lr>\r\n" if where == "route" else ""
    since = time.time()
    canary = Canary(target_ip, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    responses: list[str] = []
    try:
        with TcpWatch() as watch:
            sock.bind((OUTSIDE_IP, 0))
            lport = sock.getsockname()[1]
            body = "Signal=5\r\nDuration=160\r\n" if method == "INFO" else ""
            msg = (f"{method} {ruri} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {OUTSIDE_IP}:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                   f"{route}Max-Forwards: 70\r\n"
                   f"From: <sip:mallory@partner.edgeway.test>;tag={secrets.token_hex(4)}\r\n"
                   f"To: <sip:alice@corp.edgeway.test>;tag={secrets.token_hex(4)}\r\n"
                   f"Call-ID: crafted-{secrets.token_hex(6)}@{OUTSIDE_IP}\r\n"
                   f"CSeq: 7 {method}\r\n"
                   f"Contact: <sip:mallory@{OUTSIDE_IP}:{lport}>\r\n"
                   + ("Content-Type: application/dtmf-relay\r\n" if body else "")
                   + f"Content-Length: {len(body)}\r\n\r\n{body}")
            sock.sendto(msg.encode(), (EDGE_IP, SIP_PORT))
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                sock.settimeout(max(0.01, end - time.monotonic()))
                try:
                    data = sock.recv(65535).decode(errors="replace")
                except TimeoutError:
                    break
                responses.append(data)
            # Nothing may reach the listener within 2 s of sending, answer or not.
            time.sleep(max(0.0, since + 2.0 - time.time()))
    finally:
        sock.close()
        canary.close()
    finals = [r.split("\r\n", 1)[0] for r in responses if re.match(r"SIP/2\.0 [2-6]\d\d", r)]
    problems = []
    if canary.hits:
        via_core = any(peer.startswith(f"{CORE_IP}:") for _, peer, _ in canary.hits)
        problems.append(f"the crafted {method} reached the inside listener {target_ip}:{port}"
                        + (" (sent by the core: the edge passed it down the traversal connection)" if via_core else "")
                        + f": {canary.summary()}")
    problems += _inward_problems(lab, watch, since)
    if not finals or not re.match(r"SIP/2\.0 (403|481) ", finals[0]):
        problems.append(f"the edge answered {finals or [r.split(chr(13))[0] for r in responses] or 'nothing within 2 s'}"
                        f" (expected 481 or 403)")
    assert not problems, "\n".join(problems)


# ---- 6. TLS client (baresip) hung up on by the callee ------------------------------------------

BARESIP_ACCOUNT = ('<sip:carol@partner.edgeway.test;transport=tls>;outbound="sip:127.0.0.2:5061;transport=tls"'
                   ";regint=0;audio_codecs=PCMA")


def _baresip_connection_and_byes(log: str) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    """From baresip's ``-s`` SIP trace (``TLS <from> -> <to>`` before each message): the
    connection its INVITE went out on (local, remote), and the (from, to) of every BYE it
    received (requests whose ``to`` is not the edge)."""
    invite = None
    byes = []
    for m in re.finditer(r"^(?:TLS|TCP|UDP) (\S+) -> (\S+)\s*\n(\w+) ", log, re.MULTILINE):
        src, dst, method = m.groups()
        if method == "INVITE" and invite is None:
            invite = (src, dst)
        elif method == "BYE" and not dst.startswith(f"{EDGE_IP}:"):
            byes.append((src, dst))
    return invite, byes


@pytest.mark.skipif(not baresip_available(), reason="baresip (Debian baresip-core) is not installed")
def test_baresip_tls_hears_callee_bye(lab: LabUp, tmp_path: Path) -> None:
    """baresip over TLS (5061) to the edge calls alice (inside SIPp UAS that sends BYE after
    ~1 s): baresip's call closes by the remote hangup, the UAS's BYE got its 200, and the edge
    opened no connection toward baresip (the BYE came on baresip's own connection)."""
    since = time.time()
    uas_side = inside_uas(_scenario("dlg_uas_callee_bye.xml"))
    uas = start_sipp([*uas_side.args(), "-d", "1000", *_sipp_common(tmp_path, "uas", 1)], tmp_path, "uas")
    bs = Baresip(tmp_path / "baresip", account=BARESIP_ACCOUNT, listen=f"{BARESIP_IP}:5070",
                 ca_file=lab.workdir / "pki" / "ca.pem", ctrl=(BARESIP_IP, 4444), max_seconds=40, args=["-s"])
    est = closed = None
    hung_up_ourselves = False
    try:
        with TcpWatch() as watch:
            _wait_ready(uas_side, uas)
            bs.start()
            resp = bs.command("dial", "sip:alice@corp.edgeway.test")
            assert resp.get("ok"), resp
            est = bs.wait_event(("CALL_ESTABLISHED", "CALL_CLOSED"), timeout_s=10)
            if est is not None and est["type"] == "CALL_ESTABLISHED":
                closed = bs.wait_event("CALL_CLOSED", timeout_s=1 + RECV_TIMEOUT_MS / 1000)
                if closed is None:
                    hung_up_ourselves = True
                    bs.command("hangup")
                    bs.wait_event("CALL_CLOSED", timeout_s=3)
    finally:
        bs.stop()
        res = sipp_result(uas, tmp_path, "uas", timeout_s=RECV_TIMEOUT_MS / 1000 + 5)
        stop_process(uas, signal.SIGTERM, 5)
    log = bs.log()
    uas_msgs = sipp_messages(tmp_path / "uas_messages.log")
    assert est is not None and est["type"] == "CALL_ESTABLISHED", f"baresip: call not established ({est}):\n{log[-3000:]}"
    problems = []
    toward = watch.opened(EDGE_IP, (BARESIP_IP, "127.0.0.1"))
    if toward:
        problems.append("the edge opened TCP connection(s) toward baresip: "
                        + ", ".join(f"{c[0]}:{c[1]} → {s[0]}:{s[1]}" for c, s in toward))
    tried = _edge_connects(lab, since, (BARESIP_IP, "127.0.0.1"))
    if tried:
        problems.append("the edge tried to connect toward baresip: " + "; ".join(tried))
    if hung_up_ourselves:
        problems.append(f"baresip's call did not close within {1 + RECV_TIMEOUT_MS / 1000:.0f} s of the callee's BYE "
                        f"(the test hung up)")
    elif closed is not None and "reset by peer" not in str(closed.get("param", "")):
        # baresip 1.0 reports a BYE from the peer as "Connection reset by peer".
        problems.append(f"baresip's call closed for another reason than the remote BYE: {closed}")
    own, byes = _baresip_connection_and_byes(log)
    if not byes:
        problems.append(f"baresip received no BYE (its INVITE went out on {own[0]} → {own[1]})" if own
                        else "baresip received no BYE")
    elif own and not any(src == own[1] and dst == own[0] for src, dst in byes):
        problems.append(f"baresip received the BYE on another connection ({', '.join(f'{a} → {b}' for a, b in byes)}) "
                        f"than its own ({own[0]} → {own[1]})")
    bye_final = [m.first_line for m in uas_msgs if m.direction == "received" and not m.is_request and m.method == "BYE"]
    if not bye_final or not bye_final[0].startswith("SIP/2.0 200"):
        problems.append(f"the UAS's BYE was answered {bye_final or 'by nothing'}")
    if not (res.successful == 1 and res.failed == 0):
        problems.append(f"UAS: {res.successful} ok, {res.failed} failed\n{sipp_errors(tmp_path, res)}")
    assert not problems, "\n".join(problems) + f"\n--- UAS ladder:\n{_ladder(uas_msgs)}\n--- baresip:\n{log[-2500:]}"


# ---- 5. the core stalled under load (last: it takes the traversal zone down) -----------------

STALL_RATE = 5
STALL_HOLD_MS = 1500
STALL_BEFORE_S = 3.0
STALL_S = 15.0
STALL_AFTER_S = 5.0
#: Scheduling and probe round-trip slack on top of the keepalive budget.
STALL_MARGIN_S = 2.5
#: After SIGCONT a new call must succeed within this.
RECOVERY_S = 15.0


def _keepalive_budget(lab: LabUp) -> float:
    """Seconds within which the edge must find a silent core gone: keepalive interval plus
    the probe retries (from the lab's edge configuration)."""
    cfg = tomllib.loads((lab.workdir / "edge.toml").read_text())
    z = next(z for z in cfg["zones"] if z["type"] == "traversal_server")
    return z["keepalive_interval_s"] + z["probe_retry_count"] * z["probe_retry_interval_s"]


@dataclass
class CallFate:
    invite_ts: float
    final: int | None = None
    final_ts: float | None = None
    late_2xx: bool = False
    bye_final: int | None = None


def _uac_fates(msgs: list[SippMessage]) -> dict[str, CallFate]:
    fates: dict[str, CallFate] = {}
    for m in msgs:
        if m.direction == "sent" and m.is_request and m.method == "INVITE" and m.call_id not in fates:
            fates[m.call_id] = CallFate(m.ts)
        fate = fates.get(m.call_id)
        if fate is None or m.direction != "received" or m.is_request:
            continue
        if m.method == "INVITE" and m.status >= 200:
            if fate.final is None:
                fate.final, fate.final_ts = m.status, m.ts
            elif m.status < 300 and fate.final >= 300:
                fate.late_2xx = True
        elif m.method == "BYE" and m.status >= 200 and fate.bye_final is None:
            fate.bye_final = m.status
    return fates


def _traversal_conns_now() -> list[str]:
    return [f"{s.local[0]}:{s.local[1]}" for s in tcp_sockets()
            if s.state == "ESTABLISHED" and s.local[0] == CORE_IP and s.remote == (EDGE_IP, TRAVERSAL_PORT)]


def _probe_call(tmp: Path, i: int) -> tuple[bool, list[SippMessage]]:
    """One caller-hangs-up call outside → inside (the load UAS answers it): whether it
    succeeded, and the UAC's messages."""
    d = tmp / f"probe{i}"
    d.mkdir()
    side = Side(_scenario("dlg_uac_caller_bye.xml"), OUTSIDE_IP, UAC_PORT + 10, "udp", UAC_PORT + 10)
    p = start_sipp([*side.args(), *TO_ALICE, "-d", "200", "-m", "1", "-nd", "-recv_timeout", "4000", "-timeout", "10",
                    "-trace_msg", "-message_file", str(d / "probe_messages.log"), f"{EDGE_IP}:{SIP_PORT}"], d, "probe")
    try:
        res = sipp_result(p, d, "probe", timeout_s=15)
    finally:
        stop_process(p, signal.SIGTERM, 5)
    return res.successful == 1 and res.failed == 0, sipp_messages(d / "probe_messages.log")


def test_core_stalled(lab: LabUp, tmp_path: Path) -> None:
    """Calls at 5/s outside → inside with a 1.5 s hold; the core is SIGSTOPped for 15 s, then
    SIGCONTed. Calls attempted during the stall (and INVITEs in flight when it began) get 503
    within the keepalive budget + margin; every call the inside UAS completed (200 + ACK) the
    caller completed too; after SIGCONT a new call succeeds within RECOVERY_S; and the core
    then has one traversal connection open to the edge (no extra ones for late responses)."""
    core_pid = lab.node_pids()["core"]
    budget = _keepalive_budget(lab) + STALL_MARGIN_S
    calls = int((STALL_BEFORE_S + STALL_S + STALL_AFTER_S) * STALL_RATE)
    uas_side = inside_uas(_scenario("dlg_uas_caller_bye.xml"))
    uac_side = outside_uac("udp", "dlg_uac_load.xml")
    common = ["-nd", "-trace_msg", "-recv_timeout", "10000", "-timeout", "120"]
    uas = start_sipp([*uas_side.args(), *common, "-message_file", str(tmp_path / "uas_messages.log")], tmp_path, "uas")
    uac = None
    uac_res = None
    t_stop = t_cont = None
    recovered_after = None
    probe_msgs: list[SippMessage] = []
    try:
        with TcpWatch(interval_s=0.05) as watch:
            _wait_ready(uas_side, uas)
            uac = start_sipp([*uac_side.args(), *TO_ALICE, "-d", str(STALL_HOLD_MS), "-r", str(STALL_RATE), "-m", str(calls),
                              *common, "-message_file", str(tmp_path / "uac_messages.log"), f"{EDGE_IP}:{SIP_PORT}"],
                             tmp_path, "uac")
            time.sleep(STALL_BEFORE_S)
            try:
                t_stop = time.time()
                os.kill(core_pid, signal.SIGSTOP)
                time.sleep(STALL_S)
            finally:
                os.kill(core_pid, signal.SIGCONT)
                t_cont = time.time()
            uac_res = sipp_result(uac, tmp_path, "uac", timeout_s=STALL_AFTER_S + 10 + 15)
            # Recovery: a call placed after SIGCONT succeeds within RECOVERY_S (a load call, else a probe call).
            recovered = [f.final_ts - t_cont for f in _uac_fates(sipp_messages(tmp_path / "uac_messages.log")).values()
                         if f.invite_ts >= t_cont and f.final == 200 and f.final_ts - t_cont <= RECOVERY_S]
            recovered_after = min(recovered) if recovered else None
            i = 0
            while recovered_after is None and time.time() < t_cont + RECOVERY_S:
                i += 1
                ok, msgs = _probe_call(tmp_path, i)
                probe_msgs += msgs
                if ok:
                    recovered_after = time.time() - t_cont
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # let late responses (if any) open what they open
            conns = _traversal_conns_now()
    finally:
        if t_stop is not None and t_cont is None:
            os.kill(core_pid, signal.SIGCONT)
        if uac is not None:
            stop_process(uac, signal.SIGTERM, 5)
        stop_process(uas, signal.SIGTERM, 5)
    uac_msgs = sipp_messages(tmp_path / "uac_messages.log")
    uas_msgs = sipp_messages(tmp_path / "uas_messages.log")
    fates = _uac_fates(uac_msgs)
    probe_fates = _uac_fates(probe_msgs)
    assert fates, f"the load UAC sent nothing:\n{sipp_errors(tmp_path, uac_res) if uac_res else ''}"

    problems = []
    # (a) fail fast: INVITEs sent during the stall, or in flight when it began, end in 503 in time.
    slow = []
    for cid, f in sorted(fates.items(), key=lambda kv: kv[1].invite_ts):
        in_flight = f.invite_ts < t_stop and (f.final_ts is None or f.final_ts >= t_stop)
        during = t_stop <= f.invite_ts < t_cont
        if not (in_flight or during):
            continue
        deadline = max(f.invite_ts, t_stop) + budget
        if f.final != 503 or f.final_ts is None or f.final_ts > deadline:
            got = "no final response" if f.final is None else f"{f.final} after {f.final_ts - f.invite_ts:.1f} s"
            slow.append(f"{cid} (INVITE at stall{f.invite_ts - t_stop:+.1f} s): {got}")
    if slow:
        problems.append(f"{len(slow)} call(s) attempted during the stall (or in flight when it began) did not get 503 "
                        f"within {budget:.1f} s: " + "; ".join(slow[:6]))
    # (b) no call established inside that the caller does not have.
    uac_established = {cid for cid, f in {**fates, **probe_fates}.items() if f.final is not None and 200 <= f.final < 300}
    uas_established = {m.call_id for m in uas_msgs if m.direction == "received" and m.is_request and m.method == "ACK"}
    ghosts = sorted(uas_established - uac_established)
    if ghosts:
        problems.append(f"{len(ghosts)} call(s) the inside UAS completed (200 + ACK) that the caller does not have: "
                        + ", ".join(ghosts[:6]))
    late = sorted(cid for cid, f in fates.items() if f.late_2xx)
    if late:
        problems.append(f"{len(late)} call(s) got a 2xx after their final error response: " + ", ".join(late[:6]))
    # (c) recovery.
    if recovered_after is None:
        problems.append(f"no call succeeded within {RECOVERY_S:.0f} s after SIGCONT")
    # (d) traversal connections afterwards.
    if len(conns) > 1:
        opened = [c for c, s in watch.opened(CORE_IP, (EDGE_IP,)) if s[1] == TRAVERSAL_PORT]
        problems.append(f"the core has {len(conns)} connections open to the edge's traversal port after recovery "
                        f"(from {', '.join(conns[:4])}{', …' if len(conns) > 4 else ''}); it opened {len(opened)} "
                        f"during the test")
    outcome: dict[str, dict[int | None, int]] = {"before": {}, "during": {}, "after": {}}
    for f in fates.values():
        phase = outcome["before" if f.invite_ts < t_stop else "during" if f.invite_ts < t_cont else "after"]
        phase[f.final] = phase.get(f.final, 0) + 1
    down = [ev["ts"] - t_stop for ev in lab.events("edge") if ev.get("event") == "traversal disconnected" and ev.get("ts", 0) >= t_stop]
    context = (f"final statuses of the {len(fates)} load INVITEs placed before/during/after the stall: {outcome}; "
               + (f"the edge marked the zone down at stall+{down[0]:.1f} s; " if down else "the edge never marked the zone down; ")
               + ("no recovery" if recovered_after is None else f"a call succeeded {recovered_after:.1f} s after SIGCONT"))
    assert not problems, "\n".join(problems) + f"\n({context})"
