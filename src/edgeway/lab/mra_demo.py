"""The lab's mobile and remote access demonstration (issue 9 item 9): what a remote client does.

carol's phone (127.0.0.8, outside) finds the edge and is reached through it, the way a
Jabber client on the internet does (seed 002 §8, §12):

1. **SRV discovery**: ``_collab-edge._tls.<MRA domain>`` SRV and the target's A record,
   asked of the lab DNS server only (dnspython with the lab DNS as its one nameserver);
2. **get_edge_config** from the edge's HTTPS port (aiohttp, trusting the lab CA, the edge's
   name resolved through the lab DNS): where the SIP edge is and the UDS server;
3. **allowed requests** through the edge and the core's tunnel to the internal web services
   stand-in: carol's UDS user lookup with Basic credentials (checked once against call
   control; an access token comes back), her voicemail with that token as ``Bearer``, a
   configuration file over HTTP (TFTP port);
4. a **blocked request** (a path no allow-list rule covers): 403;
5. **remote registration**: carol registers ``sip:carol@remote.edgeway.test`` over TLS to the
   SIP edge get_edge_config named; the edge passes it (Path with a flow token naming her
   connection) through the traversal zone to the core's registrar, which challenges (digest);
6. **a call from inside**: alice (call control) calls ``sip:carol@remote.edgeway.test``
   through the core; the core's registrar binding and its Path send the INVITE to the edge,
   which sends it down carol's own TLS connection (never to her Contact address); RTP both
   ways through both relays;
7. **un-registration**: carol's phone closes and removes its binding (``Expires: 0``).

:func:`run_mra_demo` runs it (never raises for a failed step: the step says why);
:meth:`MraRun.report` turns what happened and the nodes' events into the report's
:class:`~edgeway.lab.report.MraReport`.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from xml.etree import ElementTree as ET

from edgeway.lab.report import CallReport, MraReport, MraStep, _merged_ladder, format_ladder
from edgeway.lab.topology import REMOTE_DOMAIN, REMOTE_UA_IP, REMOTE_USERS
from edgeway.lab.webservice import TFTP_PORT, UDS_PORT, VOICEMAIL_PORT

__all__ = ["run_mra_demo", "MraRun", "REMOTE_USER", "HTTP_TIMEOUT_S"]

#: The remote user of the demo (registrar user and directory user).
REMOTE_USER = "carol"
#: Seconds each HTTPS request of the demo may take.
HTTP_TIMEOUT_S = 10.0
#: The registration interval carol asks for.
REGISTER_EXPIRES_S = 600
#: The access token header the core answers Basic credentials with (edgeway.mra.core).
TOKEN_HEADER = "X-Edgeway-Access-Token"


@dataclass
class _Http:
    """One HTTPS exchange: what was asked and what came back."""

    title: str
    path: str
    auth: str
    status: int = 0
    reason: str = ""
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    ms: float = 0.0


@dataclass
class MraRun:
    """What :func:`run_mra_demo` did, before the nodes' events are read: the steps decided
    on the spot, the registration and the call (reported with the events)."""

    steps: list[MraStep] = field(default_factory=list)
    registration: Any = None  # edgeway.ua.register.RegistrationResult
    registration_wall: float | None = None
    call: dict[str, Any] | None = None
    unregistration: Any = None
    unregistration_wall: float | None = None
    edge_sip: tuple[str, str, int] | None = None  # (name, ip, port)
    blocked: MraStep | None = None  # the blocked request's step (checked against the core's events)
    blocked_path: str = ""

    def report(self, node_events: list[Mapping[str, Any]], host_names: Mapping[str, str]) -> MraReport:
        """The MRA section: the HTTPS steps, the registration (hop-by-hop ladder, the
        core's ``registered`` event), the call (a full :class:`CallReport`) and the
        un-registration."""
        rep = MraReport(steps=list(self.steps), user=f"{REMOTE_USER}@{REMOTE_DOMAIN}", client=REMOTE_UA_IP)
        if self.blocked is not None:
            self._check_blocked(self.blocked, node_events)
        if self.registration is not None:
            rep.steps.append(self._registration_step(node_events, host_names))
        if self.call is not None:
            rep.steps.append(self._call_step(node_events, host_names))
        if self.unregistration is not None:
            rep.steps.append(self._unregistration_step(node_events))
        return rep

    def _check_blocked(self, step: MraStep, node_events: list[Mapping[str, Any]]) -> None:
        """The 403 must be the core's allow list refusing the URL (``mra request blocked``):
        then nothing went to the inside server."""
        path = self.blocked_path.partition("?")[0]
        seen = [e for e in node_events if e.get("event") == "mra request blocked" and e.get("path") == path]
        if seen:
            step.details.append(f"core: mra request blocked ({seen[-1].get('reason')}): nothing sent inside")
        elif step.ok:
            step.ok = False
            step.result = f"FAILED: {step.result}: the core logged no 'mra request blocked' for it"

    def _ladder(self, result: Any, node_events: list[Mapping[str, Any]], host_names: Mapping[str, str]) -> list[str]:
        """The registration's hop-by-hop ladder (carol's record and the nodes'), up to
        the un-registration (same Call-ID, RFC 3261 §10.2.4). carol's lines are placed on
        the nodes' clock by her first REGISTER as the edge logged it (a wall-clock start
        taken beside hers could put her receiving a response before the edge sent it)."""
        call_id = _reg_call_id(result)
        until = self.unregistration_wall or float("inf")
        evs = [dict(e) for e in node_events if call_id and e.get("call_id") == call_id
               and float(e.get("ts", 0.0)) < until]
        return format_ladder(_merged_ladder(evs, host_names, [REMOTE_USER], call_id,
                                            [(REMOTE_USER, list(result.ladder), None)]))

    def _registration_step(self, node_events: list[Mapping[str, Any]], host_names: Mapping[str, str]) -> MraStep:
        r, t0 = self.registration, self.registration_wall or 0.0
        aor = r.aor
        bound = [e for e in node_events if e.get("event") == "registered" and e.get("aor") == aor
                 and float(e.get("ts", 0)) >= t0 - 0.5 and int(e.get("contacts") or 0) > 0]
        names = ", ".join(dict.fromkeys(r.tls_peer_names)) or "none"
        via = f"TLS {_hp(r.local)} → edge {_hp(r.remote)}" if r.local and r.remote else "no connection"
        challenge = (f" after a digest challenge ({r.algorithm}, {r.challenges} answered)" if r.challenges
                     else " without a challenge")
        if r.ok:
            result = f"{r.status} {r.reason}{challenge}; bound for {r.expires} s over {via}"
        else:
            result = f"FAILED: {r.status or 'no'} {r.reason or 'response'} — {r.error}"
        details = [f"REGISTER {aor} (Contact <{r.contact}>) to the SIP edge get_edge_config named"
                   + (f": {self.edge_sip[0]}:{self.edge_sip[2]} = {self.edge_sip[1]} (lab DNS)" if self.edge_sip else ""),
                   f"the edge's certificate names: {names}"]
        details += self._ladder(r, node_events, host_names)
        if bound:
            b = bound[0]
            details.append(f"core registrar: registered {b.get('aor')} ({b.get('contacts')} binding) from "
                           f"{b.get('source')} (the traversal zone)")
        if r.path:
            details.append(f"Path (the edge's flow token for carol's connection): {', '.join(r.path)}")
        ok = bool(r.ok and bound)
        if r.ok and not bound:
            details.append("FAILED: the core logged no 'registered' event for it")
        return MraStep("remote registration (TLS, through edge and core)", ok, result, details)

    def _call_step(self, node_events: list[Mapping[str, Any]], host_names: Mapping[str, str]) -> MraStep:
        c = self.call or {}
        result, stats, wall = c.get("result"), c.get("stats"), c.get("wall")
        end = wall + getattr(result, "duration_ms", 0.0) / 1000.0 + 0.5 if wall is not None else None
        notes = list(c.get("notes", []))
        reg = self.registration
        on_flow = False
        if stats is not None and reg is not None and reg.local is not None:
            peer = f"{_hp(reg.remote)} (tls)" if reg.remote else ""
            on_flow = stats.sip_local is not None and tuple(stats.sip_local) == tuple(reg.local) and stats.peer == peer
            if on_flow:
                contact_port = reg.contact.split(":")[-1].split(";")[0]
                notes.append(f"carol: INVITE arrived on her registration's connection {_hp(reg.local)} ⇄ {peer} "
                             f"(her Contact, port {contact_port}, was never dialled)")
            else:
                notes.append(f"FAILED: carol got the INVITE on {_hp(stats.sip_local)} ⇄ {stats.peer}, not on her "
                             f"registration's connection {_hp(reg.local)} ⇄ {peer}")
        call = CallReport.build(
            c.get("title", "call"), c.get("caller", "alice"), c.get("callee", REMOTE_USER), c.get("target", ""),
            result, stats, node_events, callee_ladder=getattr(stats, "ladder", None) or [], caller_t0=wall,
            host_names=host_names, notes=notes, window=(wall, end) if wall is not None and end is not None else None)
        return MraStep(call.title, call.passed and on_flow, "", [], call=call)

    def _unregistration_step(self, node_events: list[Mapping[str, Any]]) -> MraStep:
        r, t0 = self.unregistration, self.unregistration_wall or 0.0
        gone = [e for e in node_events if e.get("event") == "registered" and e.get("aor") == r.aor
                and float(e.get("ts", 0)) >= t0 - 0.5 and int(e.get("contacts") or 0) == 0]
        ok = r.expires == 0 and not r.error and bool(gone)
        result = (f"REGISTER Expires: 0 → {r.status} {r.reason}; the core's registrar has no binding left"
                  if ok else f"FAILED: {r.status or 'no'} {r.reason or 'response'}"
                             f"{' — ' + r.error if r.error else ''}{'' if gone else '; the core still holds a binding'}")
        return MraStep("un-registration when carol's phone closes", ok, result, [])


def _hp(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if addr else "?"


def _reg_call_id(result: Any) -> str | None:
    return getattr(result, "call_id", None) or None


def _b64(domain: str) -> str:
    return base64.urlsafe_b64encode(domain.encode()).decode().rstrip("=")


class _LabDns:
    """Lookups through the lab DNS server only (never the system resolver): dnspython's
    async resolver with the lab server as its one nameserver."""

    def __init__(self, server: tuple[str, int], timeout_s: float = 2.0):
        import dns.asyncresolver

        self.resolver = dns.asyncresolver.Resolver(configure=False)
        self.resolver.nameservers = [server[0]]
        self.resolver.port = server[1]
        self.resolver.lifetime = timeout_s
        self.server = server

    async def srv(self, name: str) -> list[tuple[int, int, int, str]]:
        answer = await self.resolver.resolve(name, "SRV")
        return sorted((r.priority, -r.weight, r.port, str(r.target).rstrip(".")) for r in answer)

    async def a(self, name: str) -> str:
        answer = await self.resolver.resolve(name, "A")
        return str(next(iter(answer)))

    async def sip_resolve(self, host: str, port: int) -> tuple[str, int]:
        """The user agent's resolver (host names in SIP URIs)."""
        return (await self.a(host), port)


def _aiohttp_resolver(dns: _LabDns) -> Any:
    """An aiohttp resolver asking the lab DNS (the HTTPS client never uses the system's)."""
    from aiohttp.abc import AbstractResolver

    class LabResolver(AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
            ip = await dns.a(host)
            return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET, "proto": 0,
                     "flags": socket.AI_NUMERICHOST}]

        async def close(self) -> None:
            return None

    return LabResolver()


async def _discover(dns: _LabDns, domain: str) -> tuple[MraStep, tuple[str, int] | None]:
    name = f"_collab-edge._tls.{domain}"
    where = f"lab DNS {dns.server[0]}:{dns.server[1]}"
    try:
        records = await dns.srv(name)
        _prio, _weight, port, target = records[0]  # the best: lowest priority, highest weight
        ip = await dns.a(target)
    except Exception as exc:  # noqa: BLE001 - a demo step reports, it does not crash
        return MraStep("SRV discovery", False, f"FAILED: {name} SRV ({where}): {type(exc).__name__}: {exc}", []), None
    answer = ", ".join(f"{p} {-w} {po} {t}" for p, w, po, t in records)
    result = f"{name} SRV → {answer}; A {target} → {ip} ({where}, never the system resolver)"
    return MraStep("SRV discovery", True, result, []), (target, port)


async def _get(session: Any, base: str, ex: _Http, headers: dict[str, str] | None = None) -> _Http:
    import asyncio

    import aiohttp

    t0 = time.monotonic()
    try:
        async with session.get(base + ex.path, headers=headers or {}, allow_redirects=False) as resp:
            ex.status, ex.reason = resp.status, resp.reason or ""
            ex.body = (await resp.read()).decode("utf-8", "replace")
            ex.headers = {k.lower(): v for k, v in resp.headers.items()}
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ssl.SSLError) as exc:
        ex.error = f"{type(exc).__name__}: {exc}"
    ex.ms = (time.monotonic() - t0) * 1000
    return ex


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _http_step(ex: _Http, want: int, check: Callable[[_Http], str | None]) -> MraStep:
    """A step from one exchange: ``want`` status and ``check`` (None when the body is
    right, else what is wrong)."""
    head = f"GET …{ex.path[ex.path.index('/', 1):]}" if ex.path.count("/") >= 2 else f"GET {ex.path}"
    if ex.error:
        return MraStep(ex.title, False, f"FAILED: {head} ({ex.auth}): {ex.error}", [])
    problem = None if ex.status == want else f"expected {want}"
    if problem is None:
        problem = check(ex)
    result = f"{head} ({ex.auth}) → {ex.status} {ex.reason} in {ex.ms:.0f} ms"
    if problem:
        return MraStep(ex.title, False, f"FAILED: {result}: {problem}", [ex.body[:200]] if ex.body else [])
    return MraStep(ex.title, True, result, [])


def _edge_config(ex: _Http) -> tuple[str | None, dict[str, str]]:
    """(problem, facts) of a get_edge_config answer."""
    try:
        root = ET.fromstring(ex.body)
    except ET.ParseError as exc:
        return f"not XML: {exc}", {}
    facts = {
        "sip_host": root.findtext("edgeConfig/sipEdgeServer/server/address") or "",
        "sip_port": root.findtext("edgeConfig/sipEdgeServer/server/tlsPort") or "",
        "http_host": root.findtext("edgeConfig/httpEdgeServer/server/address") or "",
        "http_port": root.findtext("edgeConfig/httpEdgeServer/server/tlsPort") or "",
        "route": root.findtext("edgeConfig/sipRequest/route") or "",
        "uds": ", ".join(f"{s.findtext('address')}:{s.findtext('port')}"
                         for svc in root.findall("serviceConfig/service") if svc.findtext("name") == "_cisco-uds"
                         for s in svc.findall("server")),
    }
    if not facts["sip_host"] or not facts["sip_port"].isdigit():
        return "no sipEdgeServer in the answer", facts
    return None, facts


async def run_mra_demo(lab: Any, alice: Any, *, media_seconds: float, call_timeout_s: float,
                       progress: Callable[[str], None] = lambda _m: None) -> MraRun:
    """Run the MRA steps against the running ``lab`` (a :class:`~edgeway.lab.runner.Lab`)
    with ``alice`` (the inside phone, started) as the caller. Never raises for a failed
    step."""
    import aiohttp

    from edgeway.lab.ua import LabUserAgent

    t = lab.topology
    files = lab.files
    run = MraRun()
    dns = _LabDns((t.dns_ip, lab.dns.port if lab.dns else t.dns_port), t.dns_timeout_s)
    domain = t.domain
    password = REMOTE_USERS[REMOTE_USER]
    progress(f"MRA: {REMOTE_USER}'s phone ({REMOTE_UA_IP}) discovers the edge by _collab-edge._tls.{domain}")
    step, https = await _discover(dns, domain)
    run.steps.append(step)
    if https is None:
        return run
    host, port = https
    base = f"https://{host}:{port}"
    ctx = ssl.create_default_context(cafile=str(files.ca))
    connector = aiohttp.TCPConnector(ssl=ctx, resolver=_aiohttp_resolver(dns), local_addr=(REMOTE_UA_IP, 0),
                                     force_close=True)
    facts: dict[str, str] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as s:
        ex = await _get(s, base, _Http("get_edge_config", "/" + _b64(domain)
                                       + "/get_edge_config?service_name=_cisco-uds&service_name=_cuplogin",
                                       "no credentials"))
        if ex.status == 401:  # an edge that wants credentials for it: carol's
            ex = await _get(s, base, _Http("get_edge_config", ex.path, f"Basic {REMOTE_USER}"),
                            _basic(REMOTE_USER, password))
        problem, facts = _edge_config(ex) if ex.status == 200 else (None, {})
        step = _http_step(ex, 200, lambda _e: problem)
        if step.ok:
            step.result += (f"; SIP edge {facts['sip_host']}:{facts['sip_port']} (TLS), HTTP edge "
                            f"{facts['http_host']}:{facts['http_port']}, UDS {facts['uds'] or 'none'}")
        run.steps.append(step)
        ip = t.call_control_ip
        uds = await _get(s, base, _Http("allowed request: UDS user lookup", f"/{_b64(domain)}/http/{ip}/{UDS_PORT}"
                                        f"/cucm-uds/user/{REMOTE_USER}", f"Basic {REMOTE_USER}"),
                         _basic(REMOTE_USER, password))
        token = uds.headers.get(TOKEN_HEADER.lower())
        step = _http_step(uds, 200, lambda e: None if f"<userName>{REMOTE_USER}</userName>" in e.body
                          else "the internal answer is not carol's user record")
        if step.ok:
            step.result += (f", body from the inside: <userName>{REMOTE_USER}</userName>; "
                            + ("access token issued" if token else "no access token"))
            step.ok = bool(token)
        run.steps.append(step)
        vm = await _get(s, base, _Http("allowed request: voicemail with the access token",
                                       f"/{_b64(domain)}/http/{ip}/{VOICEMAIL_PORT}/vmrest/mailbox", "Bearer token"),
                        {"Authorization": f"Bearer {token}"} if token else {})
        step = _http_step(vm, 200, lambda e: None if f'"user": "{REMOTE_USER}"' in e.body
                          else "the internal answer is not carol's mailbox")
        if step.ok:
            step.result += f", body from the inside: carol's mailbox ({vm.body.count('duration_s')} message)"
        run.steps.append(step)
        cfg = await _get(s, base, _Http("allowed request: configuration file (TFTP over HTTP)",
                                        f"/{_b64(domain)}/http/{ip}/{TFTP_PORT}/jabber-config.xml", "no credentials"))
        step = _http_step(cfg, 200, lambda e: None if 'file="jabber-config.xml"' in e.body else "not the file")
        if step.ok:
            step.result += ", body from the inside: jabber-config.xml"
        run.steps.append(step)
        blocked = await _get(s, base, _Http("blocked request (no allow-list rule)",
                                            f"/{_b64(domain)}/http/{ip}/{UDS_PORT}/admin/secrets", f"Basic {REMOTE_USER}"),
                             _basic(REMOTE_USER, password))
        run.blocked, run.blocked_path = _http_step(blocked, 403, lambda e: None), blocked.path
        run.steps.append(run.blocked)
    if problem is not None or not facts:
        return run
    sip_host, sip_port = facts["sip_host"], int(facts["sip_port"])
    carol = LabUserAgent(REMOTE_USER, REMOTE_UA_IP, 0, transport="tls", domain=REMOTE_DOMAIN, tls_ca=files.ca,
                         tls_server_name=sip_host, resolver=dns.sip_resolve)
    try:
        await carol.start()
        try:
            run.edge_sip = (sip_host, await dns.a(sip_host), sip_port)
        except Exception:  # noqa: BLE001 - the registration reports it
            run.edge_sip = None
        progress(f"MRA: {REMOTE_USER} registers sip:{REMOTE_USER}@{REMOTE_DOMAIN} over TLS to {sip_host}:{sip_port}")
        run.registration_wall = time.time()
        run.registration = await carol.register(REMOTE_USER, REMOTE_DOMAIN, proxy=(sip_host, sip_port, "tls"),
                                                password=password, expires=REGISTER_EXPIRES_S)
        if run.registration.ok:
            target = f"sip:{REMOTE_USER}@{REMOTE_DOMAIN}"
            progress(f"MRA: alice → {target} via core {t.core_ip}:{t.sip_port}/{t.call_control_transport}")
            run.call = await lab.place_call(alice, carol, target, (t.core_ip, t.sip_port, t.call_control_transport),
                                        "alice", {"media_seconds": media_seconds, "timeout_s": call_timeout_s})
            run.call["title"] = "call 5: inside → remote client (alice → core → edge → carol)"
    finally:
        if run.registration is not None and run.registration.ok:
            run.unregistration_wall = time.time()
        live = dict(carol.registrations)  # updated by the un-registration close() sends
        await carol.close()  # un-registers (Expires: 0) first
        if run.registration is not None and run.registration.ok:
            run.unregistration = live.get(run.registration.aor)
    return run
