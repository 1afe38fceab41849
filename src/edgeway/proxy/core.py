"""The stateful proxy of both roles (RFC 3261 §16), with media anchoring.

Composes the sans-IO pieces: the parser, transactions (``sip.transaction``), the
routing engine (``routing``), SDP rewriting (``sip.sdp``) and the media relay. This
module is the asyncio glue: it owns no protocol rules of its own beyond the order in
which §16 applies them.

Processing of a new request (RFC 3261 §16.3–§16.6, seed 003 §2.3 and §6.1):
validate (416/483/420/482) → classify the source zone → Route processing (strict
and loose routing, our own Route entries removed) → for an initial request:
transforms → search rules → target zones tried in order (DNS targets in RFC 3263
order with fail-over) → forward with our Via (``egress-zone=``), Record-Route on
both sides when ingress and egress differ (RFC 5658), Max-Forwards − 1, SDP
rewritten to our relay ports. No route → 404 with ``Warning: 399 <host> "Policy
Response"``.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config.models import NodeConfig, zone_token
from ..diag.events import EventLog
from ..routing.policy import evaluate_policy
from ..routing.search import plan_search
from ..routing.transforms import apply_transforms
from ..sip import transaction as tx
from ..sip.message import (
    MAGIC_COOKIE,
    Headers,
    ParseError,
    Request,
    Response,
    Via,
    make_response,
)
from ..sip.uri import Uri, UriError, format_params, parse_name_addr, parse_uri
from ..transport.layer import Connection, Source, TransportError, TransportLayer
from .checks import check_request, loop_hash, response_next_hop_forbidden
from . import b2bua
from .media import MediaAnchor

if TYPE_CHECKING:
    from ..traversal.link import Traversal

__all__ = ["Proxy", "Hop"]

#: Statuses after which the next target (DNS target or search-rule candidate) is
#: tried (RFC 3263 §4.3: fail over on transport error, timeout or 503).
FAILOVER_STATUSES = frozenset({408, 503})
#: Statuses after which the next search-rule candidate (progress "continue") is tried.
NEXT_CANDIDATE_STATUSES = frozenset({404, 408, 480, 503, 604})
_BRANCH_PREFIX = MAGIC_COOKIE + "ew"


@dataclass
class Hop:
    """A concrete next hop: ``transport`` ("udp"/"tcp"/"tls"), ``ip``, ``port``, the
    stream connection to use when already known, and the egress ``zone`` name."""

    transport: str
    ip: str
    port: int
    zone: str
    conn: Connection | None = None
    may_connect: bool = True
    ssl: object | None = None
    verify_name: str | None = None
    """TLS: the name the peer certificate must carry (a DNS zone's verify subject name)."""


@dataclass
class _ServerTxn:
    txn: object
    req: Request
    src: Source
    clients: list = field(default_factory=list)
    final_sent: bool = False
    cancelled: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass
class _ClientTxn:
    txn: object
    req: Request
    hop: Hop
    on_response: object
    provisional: bool = False
    timer: asyncio.TimerHandle | None = None
    cancel_sent: bool = False
    server: _ServerTxn | None = None
    conn: Connection | None = None
    done: asyncio.Future | None = None
    #: Fix (see Proxy._send_cancel): gives the INVITE branch up 64*T1 after its CANCEL.
    give_up: asyncio.TimerHandle | None = None


class Proxy:
    """One node's stateful proxy.

    ``cfg``: the node configuration; ``transport``: its transport layer (the proxy
    installs its message handlers there); ``media``: the media anchor;
    ``resolver_fn``: ``async (uri: Uri, default_transport) -> list[Hop]`` for DNS
    zones; ``traversal``: the traversal link of the node (set after construction).
    """

    def __init__(self, cfg: NodeConfig, transport: TransportLayer, media: MediaAnchor, events: EventLog, resolver_fn=None):
        self.cfg = cfg
        self.tl = transport
        self.media = media
        self.events = events
        self.resolver_fn = resolver_fn
        self.traversal: "Traversal | None" = None
        self.timers = tx.TimerConfig(t1=cfg.timers.t1_ms / 1000, t2=cfg.timers.t2_ms / 1000, t4=cfg.timers.t4_ms / 1000)
        #: Server transactions (RFC 3261 and RFC 2543 matching); each carries its
        #: proxy-side state as ``txn.tu`` (a :class:`_ServerTxn`).
        self.server_table = tx.TransactionTable()
        self.clients: dict[tuple, _ClientTxn] = {}
        self.local_waiters: dict[str, asyncio.Future] = {}
        #: B2BUA Contact tokens → the real Contact URI (str), and the tokens per Call-ID.
        self.b2b_contacts: dict[str, str] = {}
        self.b2b_calls: dict[str, list[str]] = {}
        self.local_request_handlers: dict[str, object] = {}
        self._branch_ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self.ip = cfg.sip.listen_ip
        self.host_tag = f"{cfg.sip.public_ip}"
        self.zone_names = {z.name: z for z in cfg.zones}
        self.stats = {"calls_attempted": 0, "calls_connected": 0, "calls_rejected": 0}
        transport.on_message = self.on_message
        transport.on_bad_message = self.on_bad_message
        prev_closed = transport.on_connection_closed

        def closed(conn: Connection) -> None:
            self._fail_branches_on(conn)
            prev_closed(conn)

        transport.on_connection_closed = closed

    # ------------------------------------------------------------------ helpers
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.events.emit("internal error", where="proxy task", error=repr(exc))

    def our_ports(self) -> set[int]:
        s = self.cfg.sip
        ports = {p for p in (s.udp_port, s.tcp_port, s.tls_port) if p}
        if s.mtls_enabled:
            ports.add(s.mtls_port)
        for z in self.cfg.zones:
            if z.type == "traversal_server":
                ports.add(z.port)
        return ports

    def is_ours(self, uri: Uri) -> bool:
        """True when ``uri`` names this node (one of its addresses and ports)."""
        if not uri.is_sip:
            return False
        if uri.host not in (self.cfg.sip.listen_ip, self.cfg.sip.public_ip) and not (
            self.cfg.sip.hostname and uri.host.lower() == self.cfg.sip.hostname.lower()
        ):
            return False
        if uri.port is None or uri.port in self.our_ports():
            return True
        # The local port of a traversal connection we opened (core side).
        return any(c.local[1] == uri.port for c in self.tl.conns.values() if c.outbound and c.listener == "traversal")

    def listener_port(self, transport: str) -> int:
        s = self.cfg.sip
        return {"udp": s.udp_port, "tcp": s.tcp_port, "tls": s.tls_port}.get(transport, 0) or s.tcp_port or 5060

    def egress_address(self, hop: Hop, conn: Connection | None) -> tuple[str, int]:
        """The address we stand at toward ``hop``: our listener, or for a traversal
        connection its own local address (the edge can only reach us through it)."""
        if conn is not None and conn.listener == "traversal":
            return conn.local[0], conn.local[1]
        return self.ip, self.listener_port(hop.transport)

    def new_branch(self, req: Request) -> str:
        return f"{_BRANCH_PREFIX}{loop_hash(req)}.{next(self._branch_ids):x}{secrets.token_hex(2)}"

    def warning(self) -> str:
        return f'399 {self.cfg.sip.public_ip} "Policy Response"'

    # ------------------------------------------------------------------ inbound
    def on_bad_message(self, exc: ParseError, src: Source) -> None:
        """Answer a malformed request 400 with the reason (RFC 3261 §21.4.1) when a
        response can be formed; otherwise drop it. (The transport closes a stream whose
        framing is lost.)"""
        req = exc.partial
        if req is not None and req.method != "ACK":
            try:
                self._stamp_received(req, src)
            except ParseError:
                return
            resp = make_response(req, 400, f"Bad Request - {exc.reason}"[:120], to_tag=secrets.token_hex(4))
            self.send_response_stateless(resp, src)

    def on_message(self, msg: Request | Response, src: Source) -> None:
        if isinstance(msg, Request):
            self.log_sip("in", msg, src.transport, src.ip, src.port)
            self.on_request(msg, src)
        else:
            self.log_sip("in", msg, src.transport, src.ip, src.port)
            self.on_response(msg, src)

    def log_sip(self, direction: str, msg, transport: str, ip: str, port: int) -> None:
        if not self.events.sip_messages:
            return
        first = msg.start_line() if isinstance(msg, Response) else f"{msg.method} {msg.uri}"
        self.events.emit("sip message", dir=direction, transport=transport, peer=f"{ip}:{port}", call_id=msg.call_id, line=first, cseq=msg.headers.get("CSeq"))

    def _stamp_received(self, req: Request, src: Source) -> None:
        """Add received= and rport= to the top Via (RFC 3261 §18.2.1, RFC 3581 §4)."""
        via = req.top_via()
        changed = False
        if via.host != src.ip:
            via.params["received"] = src.ip
            changed = True
        if "rport" in via.params:
            via.params["rport"] = str(src.port)
            via.params["received"] = src.ip
            changed = True
        if changed:
            req.headers.replace_first("Via", str(via))

    def on_request(self, req: Request, src: Source) -> None:
        try:
            self._stamp_received(req, src)
        except ParseError:
            return
        now = self.now()
        # Traversal housekeeping requests (authentication, probes) on traversal links.
        if self.traversal is not None and self.traversal.intercept_request(req, src):
            return
        existing = self.server_table.find_server(req)
        if existing is not None:
            st = existing.tu
            self._run_server_actions(st, st.txn.on_message(req, now))
            return
        if req.method == "ACK":
            self.spawn(self.forward_stateless_ack(req, src))
            return
        if req.method == "CANCEL":
            self.handle_cancel(req, src)
            return
        cls = tx.ServerInviteTransaction if req.method == "INVITE" else tx.ServerNonInviteTransaction
        txn = cls(req, src.transport != "udp", self.timers, now)
        st = _ServerTxn(txn, req, src)
        txn.tu = st
        self.server_table.add(txn)
        if req.method == "INVITE":
            self.respond(st, 100)
        if req.method == "OPTIONS" and not req.headers.get_all("Route") and self._addressed_to_us(req):
            # An OPTIONS for this node itself (keepalive probes of the traversal link).
            self.respond(st, 200, extra=[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE")])
            return
        rej = check_request(req, answer_options_mf0=False)
        if rej is not None:
            self.respond(st, rej.status, rej.reason, extra=list(rej.headers))
            return
        if self._is_loop(req):
            self.respond(st, 482, "Loop Detected")
            return
        self.spawn(self.route_request(st))

    def _addressed_to_us(self, req: Request) -> bool:
        try:
            uri = req.ruri
        except UriError:
            return False
        return uri.user is None and self.is_ours(uri)

    def _is_loop(self, req: Request) -> bool:
        """RFC 3261 §16.3 item 4: a Via of ours whose branch carries the same loop hash."""
        h = _BRANCH_PREFIX + loop_hash(req)
        for v in req.headers.get_all("Via")[1:] + req.headers.get_all("Via")[:1]:
            try:
                via = Via.parse(v)
            except ParseError:
                continue
            if via.host == self.ip and (via.branch or "").startswith(h):
                return True
        return False

    # --------------------------------------------------------------- responses up
    def respond(self, st: _ServerTxn, status: int, reason: str | None = None, *, extra: list | None = None, warning: bool = False) -> None:
        """Send a response we generate ourselves through server transaction ``st``."""
        extra = list(extra or [])
        if warning:
            extra.append(("Warning", self.warning()))
        extra.append(("Server", f"Edgeway/{self.cfg.role}"))
        resp = make_response(st.req, status, reason, to_tag=secrets.token_hex(5), extra=extra)
        self.send_upstream(st, resp)

    def send_upstream(self, st: _ServerTxn, resp: Response) -> None:
        if resp.status >= 200:
            if st.final_sent and not (200 <= resp.status < 300 and st.req.method == "INVITE"):
                return
            st.final_sent = True
        self._run_server_actions(st, st.txn.send_response(resp, self.now()))

    def _run_server_actions(self, st: _ServerTxn, actions) -> None:
        for a in actions:
            if isinstance(a, tx.Send):
                self.send_response_stateless(a.message, st.src)
            elif isinstance(a, tx.Deliver) and isinstance(a.message, Request) and a.message.method == "ACK":
                # An ACK for a 2xx reusing the INVITE's branch (RFC 6026 Accepted): end to end.
                self.spawn(self.forward_stateless_ack(a.message, st.src))
            elif isinstance(a, tx.Terminated):
                self.server_table.remove(st.txn)
        self._arm(st, lambda: self._run_server_actions(st, st.txn.on_timer(self.now())))

    def _arm(self, holder, fire) -> None:
        if holder.timer is not None:
            holder.timer.cancel()
            holder.timer = None
        t = holder.txn.next_timer()
        if t is not None:
            holder.timer = asyncio.get_running_loop().call_at(t, fire)

    def send_response_stateless(self, resp: Response, src: Source) -> None:
        """Send a response toward its top Via (RFC 3261 §18.2.2 with RFC 3581):
        over the connection the request came on when still open; for UDP to
        received/rport. Responses to broadcast sent-by are dropped (RFC 4475 bcast)."""
        try:
            via = resp.top_via()
        except ParseError:
            return
        if response_next_hop_forbidden(via):
            self.events.emit("response dropped", reason="broadcast or unspecified Via sent-by", call_id=resp.call_id)
            return
        data = resp.to_bytes()
        conn = src.conn
        if conn is not None and not conn.closed:
            try:
                conn.send(data)
                self.log_sip("out", resp, conn.transport, conn.remote[0], conn.remote[1])
                return
            except TransportError:
                pass
        if src.transport == "udp":
            ip = via.params.get("received") or via.host
            if not _is_ip(ip):
                ip = src.ip  # never resolve a sent-by through the system resolver
            rport = via.params.get("rport")
            port = int(rport) if rport else (via.port or 5060)
            try:
                self.tl.send_udp(data, (src.local_ip, src.local_port), (ip, port))
                self.log_sip("out", resp, "udp", ip, port)
            except (TransportError, OSError) as exc:
                self.events.emit("send failed", call_id=resp.call_id, cause=str(exc))
            return
        # Stream closed: RFC 3261 §18.2.2 opens a new connection to the Via address,
        # but never from the edge toward the inside.
        if self.cfg.role == "edge" and src.listener == "traversal":
            return
        ip = via.params.get("received") or via.host
        port = int(via.params.get("rport") or via.port or 5060)
        if via.transport == "UDP":
            try:
                self.tl.send_udp(data, (self.ip, self.cfg.sip.udp_port), (ip, port))
            except (TransportError, OSError):
                pass
            return
        self.spawn(self._send_on_new_conn(via.transport.lower(), ip, port, data))

    async def _send_on_new_conn(self, transport: str, ip: str, port: int, data: bytes) -> None:
        try:
            conn = await self.tl.connect(transport, ip, port, local_ip=self.ip)
            conn.send(data)
        except TransportError:
            pass

    # ----------------------------------------------------------------- routing
    async def route_request(self, st: _ServerTxn) -> None:
        req, src = st.req, st.src
        ingress = self.classify(src)
        self._tag_ingress(req, ingress)
        self._b2bua_restore(req)
        try:
            routes = self._route_processing(req)
        except (UriError, ParseError) as exc:
            self.respond(st, 400, f"Bad Request - {exc}"[:120])
            return
        initial = req.to_tag is None
        if routes and initial and req.method != "ACK":
            # Preloaded route (seed 003 §2.5): the zone either rejects it before any
            # search, or routes on the Route host (with its parameters) as the alias
            # while the Request-URI and the Route header stay as they are.
            zone = self.zone_names.get(ingress)
            if zone is not None and zone.preloaded_routes == "reject":
                self.events.emit("search completed", call_id=req.call_id, alias=routes[0], rule=None, zone=None,
                                 found=False, reason="Policy Response", detail="preloaded SIP routes rejected by zone")
                self.events.emit("call rejected", call_id=req.call_id, status=404, reason="preloaded SIP routes not accepted")
                self.respond(st, 404, "Not Found", warning=True)
                return
            route_uri = parse_uri(routes[0])
            await self.route_initial(st, ingress, alias=route_uri.alias() + format_params(route_uri.params), keep_ruri=True)
            return
        if routes or not initial:
            target = parse_uri(routes[0]) if routes else req.ruri
            hop = await self.hop_for_uri(target, zone=ingress)
            if hop is None:
                self.respond(st, 404, "Not Found", warning=True)
                return
            final = await self.forward(st, req, hop, ingress)
            self._finish(st, final)
            return
        await self.route_initial(st, ingress)

    def classify(self, src: Source) -> str:
        """The zone a request arrived from (DESIGN.md §2)."""
        if src.conn is not None and src.conn.zone:
            return src.conn.zone
        for z in self.cfg.zones:
            if z.type == "neighbour" and getattr(z, "match_source", True) and z.host == src.ip:
                return z.name
        return "DefaultZone"

    def _tag_ingress(self, req: Request, zone: str) -> None:
        via = req.top_via()
        via.params["ingress-zone"] = zone_token(zone)
        req.headers.replace_first("Via", str(via))

    def _route_processing(self, req: Request) -> list[str]:
        """RFC 3261 §16.4: undo strict routing, drop our own top Route entries.
        Returns the remaining Route URIs (str) in order."""
        ruri = req.ruri
        routes = req.headers.get_all("Route")
        if self.is_ours(ruri) and routes and "lr" not in ruri.params:
            # Strict-routing previous hop: the Request-URI is our Record-Route value.
            last = parse_name_addr(routes[-1])
            req.uri = str(last.uri)
            req.headers.remove("Route")
            for r in routes[:-1]:
                req.headers.add("Route", r)
            routes = routes[:-1]
        while routes:
            na = parse_name_addr(routes[0])
            if na.uri is not None and self.is_ours(na.uri):
                req.headers.pop_first("Route")
                routes = routes[1:]
            else:
                break
        return [str(parse_name_addr(r).uri) for r in routes]

    async def hop_for_uri(self, uri: Uri, *, zone: str) -> Hop | None:
        """A next hop for a URI (Route entry or in-dialog Request-URI), using an
        existing connection when one leads there (a traversal link in particular)."""
        transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
        port = uri.port or (5061 if transport == "tls" else 5060)
        if self.traversal is not None:
            hop = self.traversal.hop_for_address(uri.host, port, transport)
            if hop is not None:
                return hop
        host = uri.host
        if not _is_ip(host):
            if self.resolver_fn is None:
                return None
            hops = await self.resolver_fn(uri, "udp", zone)
            return hops[0] if hops else None
        return Hop(transport, host.strip("[]"), port, zone)

    async def route_initial(self, st: _ServerTxn, ingress: str, *, alias: str | None = None, keep_ruri: bool = False) -> None:
        """Transforms → call policy → search rules → target zones (seed 003 §6.1).

        ``alias`` defaults to the Request-URI's; ``keep_ruri`` (preloaded routes)
        forwards with the Request-URI unchanged whatever the rules did to the alias."""
        req = st.req
        ruri = req.ruri
        alias = ruri.alias() if alias is None else alias
        domains = list(self.cfg.sip.domains)
        call_id = req.call_id
        if req.method == "INVITE":
            self.stats["calls_attempted"] += 1
            self.events.emit("call attempted", call_id=call_id, src_zone=ingress, src=f"{st.src.ip}:{st.src.port}",
                             src_alias=str(req.from_.uri), dst_alias=req.uri, transport=st.src.transport)
        transformed = apply_transforms(alias, self.cfg.transforms, domains)
        if self.cfg.call_policy:
            source = req.from_.uri
            decision = evaluate_policy(source.alias() if source is not None else "", transformed, self.cfg.call_policy, domains)
            if decision.rejected:
                self.events.emit("search completed", call_id=call_id, alias=transformed, rule=None, zone=None, found=False,
                                 reason="Forbidden", detail="Policy Response", cpl=decision.trace)
                self.events.emit("call rejected", call_id=call_id, status=403, reason="call policy")
                self.stats["calls_rejected"] += 1
                self.respond(st, 403, "Forbidden", warning=True)
                return
        candidates, log = plan_search(transformed, ingress, self.cfg.search_rules, domains)
        last_status: Response | None = None
        for cand in candidates:
            new_ruri = ruri if keep_ruri else _ruri_with_alias(ruri, cand.alias)
            fwd = req.copy()
            fwd.uri = str(new_ruri)
            hops = await self.zone_hops(cand.zone, new_ruri)
            self.events.emit("search completed", call_id=call_id, alias=transformed, rule=cand.rule, zone=cand.zone,
                             found=bool(hops), log=log)
            if not hops:
                last_status = last_status or self._zone_unavailable(cand.zone)
                continue
            final = None
            for hop in hops:
                final = await self.forward(st, fwd, hop, ingress)
                if final is None or final.status not in FAILOVER_STATUSES or st.cancelled:
                    break
            if final is None or final.status < 300 or st.cancelled:
                self._finish(st, final)
                return
            last_status = final
            if final.status not in NEXT_CANDIDATE_STATUSES:
                break
        if last_status is not None:
            self._finish(st, last_status)
            return
        self.events.emit("search completed", call_id=call_id, alias=transformed, rule=None, zone=None, found=False,
                         log=log, reason="Policy Response")
        self.events.emit("call rejected", call_id=call_id, status=404, reason="no search rule matched")
        self.stats["calls_rejected"] += 1
        self.respond(st, 404, "Not Found", warning=True)

    def _zone_unavailable(self, zone: str) -> Response:
        z = self.zone_names.get(zone)
        if z is not None and z.type in ("traversal_server", "traversal_client"):
            status, reason = 503, "Service Unavailable"
            warn = f'399 {self.cfg.sip.public_ip} "Traversal zone {zone_token(zone)} is not connected"'
        else:
            status, reason = 404, "Not Found"
            warn = self.warning()
        h = Headers()
        h.add("Warning", warn)
        return Response(status, reason, h)

    async def zone_hops(self, zone: str, uri: Uri) -> list[Hop]:
        """Concrete next hops for a target zone, in the order to try them."""
        if zone == "LocalZone":
            return []  # no registrar yet: nothing is registered locally
        z = self.zone_names.get(zone)
        if z is None:
            return []
        if z.type == "neighbour":
            return [Hop(z.transport, z.host, z.port, z.name)]
        if z.type in ("traversal_server", "traversal_client"):
            return self.traversal.hops_for_zone(z.name) if self.traversal else []
        if z.type == "dns":
            if self.resolver_fn is None:
                return []
            return await self.resolver_fn(uri, z.default_transport, z.name)
        return []

    def _finish(self, st: _ServerTxn, final: Response | None) -> None:
        """Send the best final response upstream if none was sent yet."""
        if final is None or st.final_sent:
            return
        if final.status >= 300:
            self.media.release_call(st.req.call_id, "final-response")
            if st.req.to_tag is None:
                self.forget_call(st.req.call_id)
            if st.req.method == "INVITE":
                self.events.emit("call rejected", call_id=st.req.call_id, status=final.status, reason=final.reason)
                self.stats["calls_rejected"] += 1
        resp = final.copy()
        if resp.headers.get("Via") is None or resp.headers.get_all("Via") != st.req.headers.get_all("Via"):
            # A response we made (or one from a downstream branch): rebuild on the upstream request.
            base = make_response(st.req, resp.status, resp.reason, to_tag=(_safe_to_tag(resp) or secrets.token_hex(5)))
            for n, v in resp.headers:
                if n.lower() not in ("via", "from", "to", "call-id", "cseq", "content-length"):
                    base.headers.add(n, v)
            base.body = resp.body
            resp = base
        self.send_upstream(st, resp)

    # ----------------------------------------------------------------- forwarding
    def _prepare(self, req: Request, hop: Hop, ingress: str, conn: Connection | None, src: Source | None) -> tuple[Request, str]:
        fwd = req.copy()
        mf = fwd.headers.get("Max-Forwards")
        fwd.headers.set("Max-Forwards", str(int(mf) - 1 if mf is not None else self.cfg.sip.max_forwards_out))
        ip, port = self.egress_address(hop, conn)
        branch = self.new_branch(req)
        via = Via(hop.transport.upper(), ip, port, {"branch": branch, "rport": None, "egress-zone": zone_token(hop.zone)})
        fwd.headers.add("Via", str(via), first=True)
        if req.method in ("INVITE", "SUBSCRIBE", "REFER") and req.to_tag is None and src is not None:
            in_addr = self._ingress_rr(src, ingress)
            out_addr = f"sip:{self._rr_host(hop.zone, ip)}:{port};transport={hop.transport};lr"
            if in_addr != out_addr:
                fwd.headers.add("Record-Route", f"<{in_addr}>", first=True)
            fwd.headers.add("Record-Route", f"<{out_addr}>", first=True)
        return fwd, branch

    # ------------------------------------------------------------------ B2BUA
    def _b2b_call(self, msg) -> object | None:
        call = self.media.calls.get(msg.call_id)
        return call if call is not None and self.media.interworking(call) else None

    def _preserve(self, call) -> bool:
        za, zb = self.zone_names.get(call.a_zone), self.zone_names.get(call.b_zone)
        return bool(za and za.parameter_preservation and zb and zb.parameter_preservation)

    def _b2b_remember(self, call_id: str, got) -> None:
        if got is not None:
            token, original = got
            self.b2b_contacts[token] = original
            self.b2b_calls.setdefault(call_id, []).append(token)

    def _b2bua_request(self, fwd: Request, hop: Hop, conn: Connection | None) -> None:
        """Contact, Request-URI parameters and session timers of a request leaving
        through the B2BUA (only for calls whose zones' encryption modes differ)."""
        call = self._b2b_call(fwd)
        if call is None or fwd.method in ("ACK", "CANCEL", "BYE"):
            return
        ip, port = self.egress_address(hop, conn)
        preserve = self._preserve(call)
        self._b2b_remember(fwd.call_id, b2bua.rewrite_contact(fwd, f"{ip}:{port}", hop.transport, preserve=preserve))
        if fwd.method == "INVITE" and fwd.to_tag is None:
            if not preserve:
                b2bua.strip_ruri_params(fwd)
            b2bua.add_session_timer(fwd)

    def _b2bua_response(self, up: Response, st: "_ServerTxn") -> None:
        call = self._b2b_call(up)
        if call is None or up.status < 101:
            return
        if st.req.method not in ("INVITE", "UPDATE", "SUBSCRIBE"):
            # No dialog target to keep: a Contact here (e.g. in the 200 to a BYE) would
            # only leak the other side's address.
            up.headers.remove("Contact")
            return
        src = st.src
        ip, port = (src.conn.local if src.conn is not None and src.conn.listener == "traversal" else (src.local_ip, src.local_port))
        self._b2b_remember(up.call_id, b2bua.rewrite_contact(up, f"{ip}:{port}", src.transport, preserve=self._preserve(call)))

    def _b2bua_restore(self, req: Request) -> None:
        """An in-dialog request sent to a B2BUA Contact of ours goes to the real Contact."""
        try:
            uri = req.ruri
        except UriError:
            return
        token = b2bua.contact_token(uri.user)
        if token is not None and self.is_ours(uri) and token in self.b2b_contacts:
            req.uri = self.b2b_contacts[token]

    def forget_call(self, call_id: str) -> None:
        """Drop per-call proxy state (B2BUA Contact tokens) at the end of a call."""
        for token in self.b2b_calls.pop(call_id, []):
            self.b2b_contacts.pop(token, None)

    def _rr_host(self, zone: str, ip: str) -> str:
        """Our address in a Record-Route toward ``zone``: the IP, or ``sip.hostname``
        when the zone's Record-Route address type is hostname (seed 003 §7.2)."""
        z = self.zone_names.get(zone)
        if z is not None and z.record_route_address_type == "hostname" and self.cfg.sip.hostname:
            return self.cfg.sip.hostname
        return ip

    def _ingress_rr(self, src: Source, zone: str = "DefaultZone") -> str:
        if src.conn is not None and src.conn.listener == "traversal":
            ip, port = src.conn.local
        else:
            ip, port = src.local_ip, src.local_port
        return f"sip:{self._rr_host(zone, ip)}:{port};transport={src.transport};lr"

    async def _connection_for(self, hop: Hop) -> Connection | None:
        if hop.transport == "udp":
            return None
        conn = hop.conn if hop.conn is not None and not hop.conn.closed else self.tl.find_connection(hop.transport, hop.ip, hop.port)
        if conn is not None:
            return conn
        if not hop.may_connect:
            raise TransportError(f"no connection to {hop.ip}:{hop.port} and this node may not open one")
        return await self.tl.connect(hop.transport, hop.ip, hop.port, local_ip=self.ip, ssl_ctx=hop.ssl,
                                     verify_name=hop.verify_name, zone=hop.zone)

    def _send_request(self, req: Request, hop: Hop, conn: Connection | None) -> None:
        data = req.to_bytes()
        if hop.transport == "udp":
            self.tl.send_udp(data, (self.ip, self.cfg.sip.udp_port), (hop.ip, hop.port))
            self.log_sip("out", req, "udp", hop.ip, hop.port)
        else:
            assert conn is not None
            conn.send(data)
            self.log_sip("out", req, conn.transport, conn.remote[0], conn.remote[1])

    async def forward(self, st: _ServerTxn, req: Request, hop: Hop, ingress: str) -> Response | None:
        """Forward ``req`` to ``hop`` in a client transaction; relay provisional and
        2xx responses upstream as they come; return the final response (a synthesised
        408 on timeout, 503 on transport failure) or None after a 2xx."""
        try:
            conn = await self._connection_for(hop)
        except TransportError as exc:
            self.events.emit("next hop failed", call_id=req.call_id, hop=f"{hop.transport}:{hop.ip}:{hop.port}", zone=hop.zone, cause=str(exc))
            return Response(503, "Service Unavailable", Headers([["Warning", f'399 {self.cfg.sip.public_ip} "Next hop {hop.ip}:{hop.port} unreachable"']]))
        if st.cancelled:
            # Fix: the CANCEL arrived while the next hop was being resolved or connected
            # (handle_cancel already answered 487 and released the media). Forwarding
            # now would start a branch nobody cancels (a callee answering 200 at once
            # would connect a call the caller gave up) and re-open relay sessions that
            # are never released (RFC 3261 §16.10: no new branches after CANCEL).
            return Response(487, "Request Terminated")
        fwd, branch = self._prepare(req, hop, ingress, conn, st.src)
        if req.method == "INVITE" and req.to_tag is None:
            self.media.on_initial_invite(fwd, ingress, hop.zone)
        try:
            self.media.rewrite_message(fwd)
        except Exception as exc:  # noqa: BLE001 - SDP trouble must not lose the call
            self.events.emit("sdp rewrite failed", call_id=req.call_id, error=str(exc))
        self._b2bua_request(fwd, hop, conn)
        done: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_response(resp: Response) -> None:
            self._on_downstream_response(st, ct, resp, done)

        cls = tx.ClientInviteTransaction if req.method == "INVITE" else tx.ClientNonInviteTransaction
        txn = cls(fwd, hop.transport != "udp", self.timers, self.now())
        ct = _ClientTxn(txn, fwd, hop, on_response, server=st, conn=conn, done=done)
        key = (branch, fwd.method)
        self.clients[key] = ct
        st.clients.append(ct)
        self._run_client_actions(ct, txn.start(self.now()), done, key)
        return await done

    def _run_client_actions(self, ct: _ClientTxn, actions, done: asyncio.Future, key) -> None:
        for a in actions:
            if isinstance(a, tx.Send):
                try:
                    self._send_request(a.message, ct.hop, ct.conn)
                except (TransportError, OSError) as exc:
                    if not done.done():
                        done.set_result(Response(503, "Service Unavailable", Headers([["Warning", f'399 {self.cfg.sip.public_ip} "{exc}"']])))
            elif isinstance(a, tx.Deliver):
                ct.on_response(a.message)  # type: ignore[operator]
            elif isinstance(a, tx.Timeout):
                if not done.done():
                    self.events.emit("next hop timeout", call_id=ct.req.call_id, hop=f"{ct.hop.ip}:{ct.hop.port}", zone=ct.hop.zone)
                    done.set_result(Response(408, "Request Timeout"))
            elif isinstance(a, tx.TransportError):
                if not done.done():
                    done.set_result(Response(503, "Service Unavailable"))
            elif isinstance(a, tx.Terminated):
                if self.clients.get(key) is ct:
                    del self.clients[key]
        self._arm(ct, lambda: self._run_client_actions(ct, ct.txn.on_timer(self.now()), done, key))

    def on_response(self, resp: Response, src: Source) -> None:
        try:
            via = resp.top_via()
        except ParseError:
            return
        if self.traversal is not None and self.traversal.intercept_response(resp, src):
            return
        if not (via.branch or "").startswith(_BRANCH_PREFIX):
            return  # not ours: a proxy drops responses whose top Via isn't its own (§16.7)
        key = (via.branch, resp.cseq[1])
        ct = self.clients.get(key)
        if ct is None:
            # 2xx retransmissions after the client transaction ended: forward statelessly (§16.7).
            if 200 <= resp.status < 300 and resp.cseq[1] == "INVITE":
                self._forward_response_stateless(resp)
            return
        self._run_client_actions(ct, ct.txn.on_message(resp, self.now()), ct.done, key)

    def _on_downstream_response(self, st: _ServerTxn, ct: _ClientTxn, resp: Response, done: asyncio.Future) -> None:
        if resp.status == 100:
            return
        up = resp.copy()
        up.headers.pop_first("Via")
        if st.req.method == "INVITE":
            try:
                self.media.rewrite_message(up)
            except Exception as exc:  # noqa: BLE001
                self.events.emit("sdp rewrite failed", call_id=resp.call_id, error=str(exc))
        self._b2bua_response(up, st)
        if resp.status < 200:
            ct.provisional = True
            if st.cancelled and not ct.cancel_sent:
                self._send_cancel(ct)
            self.send_upstream(st, up)
            return
        if resp.status < 300:
            if st.req.method == "INVITE":
                self.stats["calls_connected"] += 1
                self.events.emit("call connected", call_id=resp.call_id, zone=ct.hop.zone)
            if not st.final_sent or st.req.method == "INVITE":
                st.final_sent = False if st.req.method == "INVITE" else st.final_sent
                self.send_upstream(st, up)
            if st.req.method == "BYE":
                self.media.release_call(resp.call_id, "bye")
                self.forget_call(resp.call_id)
                self.events.emit("call disconnected", call_id=resp.call_id, reason="bye")
            if not done.done():
                done.set_result(None)
            return
        if not done.done():
            done.set_result(up)

    def _forward_response_stateless(self, resp: Response) -> None:
        up = resp.copy()
        up.headers.pop_first("Via")
        try:
            via = up.top_via()
        except ParseError:
            return
        try:
            self.media.rewrite_message(up)
        except Exception:  # noqa: BLE001
            pass
        ip = via.params.get("received") or via.host
        port = int(via.params.get("rport") or via.port or 5060)
        transport = via.transport.lower()
        src = Source(transport, ip, port, self.ip, self.listener_port(transport))
        src.conn = self.tl.find_connection(transport, ip, port)
        if src.conn is None and self.traversal is not None:
            hop = self.traversal.hop_for_address(ip, port, transport)
            src.conn = hop.conn if hop else None
        self.send_response_stateless(up, src)

    def _fail_branches_on(self, conn: Connection) -> None:
        """A connection closed under pending client transactions: they get a 503 at
        once (RFC 3261 §8.1.3.1 transport error) so the next target can be tried."""
        for ct in list(self.clients.values()):
            if ct.conn is conn and ct.done is not None and not ct.done.done():
                reason = conn.attrs.get("close_reason", "connection closed")
                ct.done.set_result(Response(503, "Service Unavailable", Headers([["Warning", f'399 {self.cfg.sip.public_ip} "{reason}"']])))

    # ------------------------------------------------------------ ACK and CANCEL
    async def forward_stateless_ack(self, req: Request, src: Source) -> None:
        """ACK for a 2xx travels end to end along the route set (RFC 3261 §16.11 /
        §13.2.2.4): forwarded statelessly with our Via and Max-Forwards − 1."""
        ingress = self.classify(src)
        if req.headers.get("Max-Forwards") == "0":
            # Fix: an ACK cannot be answered 483 (check_request skips ACK), so one that
            # has run out of hops is dropped; it used to go out with "Max-Forwards: -1".
            self.events.emit("ack dropped", call_id=req.call_id, reason="Max-Forwards 0")
            return
        self._b2bua_restore(req)
        try:
            routes = self._route_processing(req)
            target = parse_uri(routes[0]) if routes else req.ruri
        except (UriError, ParseError):
            return
        hop = await self.hop_for_uri(target, zone=ingress)
        if hop is None:
            return
        try:
            conn = await self._connection_for(hop)
        except TransportError:
            return
        fwd, _ = self._prepare(req, hop, ingress, conn, None)
        try:
            self.media.rewrite_message(fwd)
        except Exception:  # noqa: BLE001
            pass
        try:
            self._send_request(fwd, hop, conn)
        except (TransportError, OSError):
            pass

    def handle_cancel(self, req: Request, src: Source) -> None:
        """CANCEL (RFC 3261 §16.10): 200 to the CANCEL, 487 to the INVITE, CANCEL
        each pending branch (after a provisional response, §9.1)."""
        invite = self.server_table.find_invite_for_cancel(req)
        st = invite.tu if invite is not None else None
        resp = make_response(req, 200 if st is not None else 481, None, to_tag=secrets.token_hex(4))
        self.send_response_stateless(resp, src)
        if st is None:
            return
        st.cancelled = True
        for ct in st.clients:
            if ct.provisional and not ct.cancel_sent:
                self._send_cancel(ct)
        if not st.final_sent:
            self.respond(st, 487, "Request Terminated")
            self.media.release_call(st.req.call_id, "cancel")

    def _send_cancel(self, ct: _ClientTxn) -> None:
        ct.cancel_sent = True
        inv = ct.req
        c = Request("CANCEL", inv.uri)
        c.headers.add("Via", inv.headers.get("Via") or "")
        for n in ("Max-Forwards", "From", "To", "Call-ID"):
            if inv.headers.get(n) is not None:
                c.headers.add(n, inv.headers.get(n) or "")
        c.headers.add("CSeq", f"{inv.cseq[0]} CANCEL")
        for r in inv.headers.get_all("Route"):
            c.headers.add("Route", r)
        # Fix: the CANCEL used to be sent once, outside any transaction: lost over UDP
        # it was never retransmitted, and an INVITE branch whose callee never sent a
        # final response kept its client transaction and routing task forever. Now the
        # CANCEL runs in a non-INVITE client transaction (Timer E retransmits it, RFC
        # 3261 §9.1/§17.1.2; its 200 is absorbed there), and 64*T1 after it the INVITE
        # branch is given up if still without a final response (RFC 3261 §9.1).
        loop = asyncio.get_running_loop()
        key = (c.top_via().branch, "CANCEL")
        txn = tx.ClientNonInviteTransaction(c, ct.hop.transport != "udp", self.timers, self.now())
        cct = _ClientTxn(txn, c, ct.hop, lambda resp: None, conn=ct.conn, done=loop.create_future())
        self.clients[key] = cct
        self._run_client_actions(cct, txn.start(self.now()), cct.done, key)
        ct.give_up = loop.call_later(64 * self.timers.t1, self._abandon_cancelled, ct)

    def _abandon_cancelled(self, ct: _ClientTxn) -> None:
        """64*T1 after our CANCEL the INVITE branch still has no final response:
        consider it cancelled and destroy its client transaction (RFC 3261 §9.1)."""
        ct.give_up = None
        if ct.done is None or ct.done.done():
            return
        self.events.emit("next hop timeout", call_id=ct.req.call_id, hop=f"{ct.hop.ip}:{ct.hop.port}", zone=ct.hop.zone,
                         cause="no final response to the cancelled INVITE within 64*T1")
        if ct.timer is not None:
            ct.timer.cancel()
            ct.timer = None
        key = (ct.req.top_via().branch, "INVITE")
        if self.clients.get(key) is ct:
            del self.clients[key]
        ct.done.set_result(Response(487, "Request Terminated"))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        servers = [t.tu for t in self.server_table if not t.is_client]
        for holder in servers + list(self.clients.values()):
            if holder.timer is not None:
                holder.timer.cancel()
            if getattr(holder, "give_up", None) is not None:  # fix: CANCEL give-up timer
                holder.give_up.cancel()


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _safe_to_tag(resp: Response) -> str | None:
    try:
        return resp.to_tag
    except Exception:  # noqa: BLE001
        return None


def _ruri_with_alias(ruri: Uri, alias: str) -> Uri:
    """The Request-URI after a transform/search rule changed the alias (``user@host``)."""
    if alias == ruri.alias():
        return ruri
    user, at, hostport = alias.rpartition("@")
    try:
        parsed = parse_uri(f"{ruri.scheme if ruri.is_sip else 'sip'}:{alias}")
    except UriError:
        return ruri
    return ruri.copy(user=parsed.user, password=None, host=parsed.host, port=parsed.port) if at else ruri.copy(host=parsed.host, port=parsed.port)
