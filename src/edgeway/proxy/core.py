"""The stateful proxy of both roles as a sans-IO machine (RFC 3261 §16; DESIGN.md §8).

:class:`ProxyCore` owns every §16 decision and no I/O. Its driver feeds it what happens
and carries out the :mod:`~edgeway.proxy.actions` it returns::

    core = ProxyCore(cfg)
    actions = core.receive(msg, flow, now, zone=None)   # a parsed request or response
    actions = core.bad_message(exc, flow, now)          # a malformed one (400 when possible)
    actions = core.resolved(query_id, hops, now)        # answer to a Resolve action
    actions = core.connected(connect_id, flow, cause, now)
    actions = core.media_ready(alloc_id, ports, cause, now)
    actions = core.flow_closed(flow, now, reason)       # a connection ended
    actions = core.zone_changed(zone, flows, now)       # a traversal zone's live connections
    actions = core.timers(now)                          # at or after core.next_deadline()

Processing of a new request: validate (§16.3: 416/483/420/482) → classify the source
zone → route processing (§16.4) → an initial request goes through transforms → call
policy → search rules → target zones tried in order (DNS targets in RFC 3263 order with
fail-over); an in-dialog request is routed by the dialog this node holds, or refused
with 481 → forwarded on a branch (§16.6) with our Via (``egress-zone=``), Record-Route
on both sides when they differ (RFC 5658; flow tokens for connections, RFC 5626 §5.3),
Max-Forwards − 1, SDP anchored on the relay. Responses are collected by the request's
:class:`~edgeway.proxy.reply.ResponseContext` (§16.7).

Flows (issue 6 item 3): a party that reached the node over a connection is reached for
the life of its dialog over that connection; when it has gone, a traversal zone's
replacement connection is used, a TLS party gets ``430 Flow Failed`` (RFC 5626 §5.3),
others are reached at their Contact by RFC 3263.

On the edge, calls crossing between a traversal zone and any other zone are
topology-hidden toward the outside (:mod:`~edgeway.proxy.hiding`).
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections import deque
from typing import Any

from ..config.models import NodeConfig, zone_token
from ..registrar import Registrar, aor_of
from ..routing.search import Candidate
from ..security.flood import SourceTable
from ..sip import transaction as txn
from ..sip.dialog import ack_for_2xx, bye_after_2xx
from ..sip.message import Headers, ParseError, Request, Response, make_response
from ..sip.sdp import SdpError
from ..sip.target import Flow, FlowTokens, Hop, is_ip_literal, response_hop
from ..sip.uri import Uri, UriError, format_params, parse_name_addr, parse_uri
from . import b2bua, hiding
from .actions import AllocateMedia, Connect, Event, ReleaseMedia, Resolve, Send
from .checks import loop_hash, response_next_hop_forbidden
from .dialogs import DIALOG_METHODS, Call, CallTable, Dialog, DialogSide, other_side
from .forward import branch_request, cancel_for, new_branch, record_route_entry, via_value
from .media import CallMedia, MediaPlanner
from .registrations import REWRITE_PREFIX, ContactMap, PathTokens, restore_contacts
from .reply import (FAILOVER_STATUSES, NEXT_CANDIDATE_STATUSES, Branch, Lane, ResponseContext, choose_best, group_by_priority,
                    upstream_response)
from .request import BRANCH_PREFIX, is_loop, plan_initial, process_routes, stamp_received, validate

__all__ = ["ProxyCore", "BRANCH_PREFIX", "STATELESS_TAG", "DEFAULT_ZONE"]

#: The built-in zone of sources no configured zone claims (seed 003 §5).
DEFAULT_ZONE = "DefaultZone"
#: To-tag prefix of responses sent without a server transaction (stateless 404/403 to
#: DefaultZone over UDP, load shedding, flood control): their ACKs are dropped unread.
STATELESS_TAG = "ewsl-"

_BRANCH_PREFIX = BRANCH_PREFIX  # the name earlier code and tests use
#: Methods whose responses keep a (masked) Contact: they establish or refresh a target.
_TARGET_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
#: Seconds a call without activity is kept (a BYE that never came).
CALL_IDLE_S = 12 * 3600.0
#: Seconds between Timer C sweeps (Timer C fires up to this late).
TIMER_C_SWEEP_S = 1.0
#: Seconds between sweeps for idle calls.
CALL_SWEEP_S = 60.0
_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"


def _contact_uri(msg: Request | Response) -> str | None:
    """The single Contact URI of ``msg`` (str), or None."""
    na = b2bua.single_contact(msg)
    return str(na.uri) if na is not None else None


class ProxyCore:
    """One node's proxy decisions (edge or core role).

    ``cfg``: the node configuration; ``tokens``: the node's flow-token authenticator
    (default: a fresh secret); ``unencrypted_srtcp``: whether the SRTP library supports
    UNENCRYPTED_SRTCP. Times are seconds on any monotonic clock, passed in.
    """

    def __init__(self, cfg: NodeConfig, *, tokens: FlowTokens | None = None, unencrypted_srtcp: bool = True):
        self.cfg = cfg
        self.role = cfg.role
        s = cfg.sip
        self.zones = {z.name: z for z in cfg.zones}
        #: Timer C of proxied INVITE branches, seconds (> 3 minutes by RFC 3261 §16.6).
        self.timer_c = float(cfg.timers.timer_c_s)
        self.tx_timers = txn.TimerConfig(t1=cfg.timers.t1_ms / 1000, t2=cfg.timers.t2_ms / 1000, t4=cfg.timers.t4_ms / 1000)
        self.table = txn.TransactionTable()
        self.calls = CallTable()
        self.planner = MediaPlanner(cfg, unencrypted_srtcp=unencrypted_srtcp)
        self.tokens = tokens or FlowTokens()
        self.ip = s.listen_ip
        self.public = s.public_ip
        self.udp_local = (s.listen_ip, s.udp_port or 5060)
        hosts = {s.listen_ip.lower(), s.public_ip.lower()}
        if s.hostname:
            hosts.add(s.hostname.lower())
        self.our_hosts = frozenset(hosts)
        ports = {p for p in (s.udp_port, s.tcp_port, s.tls_port) if p}
        if s.mtls_enabled:
            ports.add(s.mtls_port)
        for z in cfg.zones:
            if z.type == "traversal_server":
                ports.add(z.port)
        self.our_ports = frozenset(ports)
        self.own_addresses = frozenset({s.listen_ip, s.public_ip})
        #: Open stream flows by connection id, and the newest by (transport, ip, port).
        self.conns: dict[int, Flow] = {}
        self.conn_by_key: dict[tuple[str, str, int], Flow] = {}
        #: Live flows of each traversal zone, newest first.
        self.zone_flows: dict[str, list[Flow]] = {z.name: [] for z in cfg.zones if z.type in ("traversal_server", "traversal_client")}
        self._traversal_ports: frozenset[int] = frozenset()
        #: Branches by the connection they were sent on (to fail them when it ends).
        self._flow_branches: dict[int, set[Branch]] = {}
        #: INVITE branches that failed locally, by client key, kept 64*T1 for a late 2xx.
        self._failed: dict[tuple, Branch] = {}
        self._pending: dict[int, Any] = {}
        self._connecting: dict[tuple[str, str, int], int] = {}
        self._ids = itertools.count(1)
        #: Neighbour-zone source addresses → zone name (requests from them are that zone's).
        self._source_zones = {z.host: z.name for z in reversed(cfg.zones) if z.type == "neighbour" and z.match_source}
        #: Maintenance mode (seed 002 §16): new calls and registrations get 503 while
        #: established dialogs continue; switched by the node's control socket.
        self.maintenance = False
        #: Edge: address-of-record → expiry (seconds) of registrations proxied inward.
        self._proxied_regs: dict[str, float] = {}
        #: Core: registrations proxied from a traversal zone to an inside registrar
        #: (seed 002 §2.3): rewritten Contacts (default mode) and Path entry tokens.
        self.contact_map = ContactMap()
        self.path_tokens = PathTokens()
        rc = cfg.registrar
        #: The node's own registrar (None when it serves no domain): REGISTERs for its
        #: domains are answered here; LocalZone search-rule targets are its bindings.
        self.registrar: Registrar | None = None
        if rc.domains:
            self.registrar = Registrar(rc.domains, users={u.username: u.password for u in rc.users} or None,
                                       realm=rc.realm or rc.domains[0], min_expires_s=rc.min_expires_s,
                                       max_expires_s=rc.max_expires_s, default_expires_s=rc.default_expires_s,
                                       max_bindings=rc.max_bindings, algorithms=tuple(rc.digest_algorithms))
        fc = cfg.flood
        #: Per-source flood control of DefaultZone requests (the driver checks it first).
        self.sources = SourceTable(fc.requests_per_s, fc.burst, block_after_s=fc.block_after_s, block_s=fc.block_s,
                                   exempt=fc.exempt, max_sources=fc.max_sources)
        #: Why the last media anchoring failed (the Warning text of the refusal).
        self._media_cause = "Media could not be anchored"
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._now = 0.0
        self._out: list = []
        self._sweeping = False
        #: INVITE branches waiting for a final response (Timer C), swept once a second
        #: so that no timer entry keeps a finished branch alive.
        self._timer_c_branches: set[Branch] = set()
        self._timer_c_armed = False
        self.stats = {"calls_attempted": 0, "calls_connected": 0, "calls_rejected": 0, "calls_cleared": 0}

    # ================================================================ driver API
    def receive(self, msg: Request | Response, flow: Flow, now: float, zone: str | None = None) -> list:
        """A message arrived on ``flow``; ``zone`` is the zone the flow is bound to
        (traversal connection, TLS identity classification) or None."""
        self._now = now
        out = self._out = []
        if flow.conn_id and flow.conn_id not in self.conns:
            self._note_conn(flow)
        try:
            if isinstance(msg, Request):
                self._on_request(msg, flow, zone)
            else:
                self._on_response(msg, flow)
        except (ParseError, UriError, ValueError, KeyError) as exc:
            out.append(Event("message dropped", {"call_id": msg.call_id, "peer": f"{flow.remote[0]}:{flow.remote[1]}",
                                                 "reason": str(exc)[:200]}))
        return out

    def bad_message(self, exc: ParseError, flow: Flow, now: float) -> list:
        """Answer a malformed request when a response can be formed (``exc.partial``;
        never an ACK) with ``exc.status``: 400 ``Bad Request - <reason>`` (RFC 3261
        §21.4.1) or 513 ``Message Too Large`` (§21.5.14); otherwise nothing. On a
        stream whose framing is lost the transport closes the connection after this
        answer is written."""
        self._now = now
        self._out = []
        if flow.conn_id and flow.conn_id not in self.conns:
            self._note_conn(flow)
        req = exc.partial
        if req is not None and req.method != "ACK":
            from ..sip.message import REASON_PHRASES  # here: only this function of core.py is ours to edit

            status = exc.status
            reason = f"Bad Request - {exc.reason}"[:120] if status == 400 else REASON_PHRASES.get(status, "")
            try:
                stamp_received(req, flow)
                resp = make_response(req, status, reason, to_tag=secrets.token_hex(4))
                self._send_response(resp, flow, None)
            except (ParseError, ValueError):
                pass
        return self._out

    def stateless_response(self, resp: Response, flow: Flow, now: float, zone: str | None = None) -> list:
        """Send ``resp`` (made outside any transaction, e.g. a 503 of load shedding)
        toward its top Via, as :meth:`_send_response` does."""
        self._now = now
        self._out = []
        if flow.conn_id and flow.conn_id not in self.conns:
            self._note_conn(flow)
        self._send_response(resp, flow, zone)
        return self._out

    def resolved(self, query_id: int, hops: list[Hop], now: float) -> list:
        """The RFC 3263 answer to :class:`Resolve` ``query_id``: the hops in order."""
        self._now = now
        self._out = []
        entry = self._pending.pop(query_id, None)
        if entry is None:
            return self._out
        kind, ctx, lane = entry
        lane.waiting = None
        if ctx.final_sent:
            return self._out
        if kind == "candidate":
            self._lane_hops(ctx, lane, hops)
        else:
            lane.hops = deque(hops)
            if not hops:
                ctx.finals.append(self._warned(404, "Not Found", f"no address for {lane.ruri}"))
        self._advance(ctx)
        return self._out

    def connected(self, connect_id: int, flow: Flow | None, cause: str, now: float) -> list:
        """The :class:`Connect` ``connect_id`` ended: ``flow`` the new connection, or None
        and ``cause`` (str) why not."""
        self._now = now
        self._out = []
        entry = self._pending.pop(connect_id, None)
        if entry is None:
            return self._out
        key, waiters = entry
        if self._connecting.get(key) == connect_id:
            del self._connecting[key]
        if flow is not None:
            self._note_conn(flow)
        for w in waiters:
            if w[0] == "ctx":
                _, ctx, lane, hop = w
                lane.waiting = None
                if ctx.final_sent:
                    continue
                if flow is None:
                    self._out.append(Event("next hop failed", {"call_id": ctx.req.call_id, "hop": str(hop), "zone": hop.zone, "cause": cause}))
                    self._lane_final(ctx, lane, self._warned(503, "Service Unavailable", f"Next hop {hop.ip}:{hop.port} unreachable"))
                else:
                    self._forward(ctx, lane, hop, flow)
            elif flow is not None:
                self._out.append(Send(flow, w[1], w[2]))
            else:
                self._out.append(Event("send failed", {"call_id": w[1].call_id, "hop": str(key), "cause": cause}))
        return self._out

    def media_ready(self, alloc_id: int, ports: dict[int, tuple[int, int]] | None, cause: str, now: float) -> list:
        """The :class:`AllocateMedia` ``alloc_id`` ended: ``ports`` {index: (a_port,
        b_port)}, or None and ``cause`` (str) why not."""
        self._now = now
        self._out = []
        entry = self._pending.pop(alloc_id, None)
        if entry is None:
            return self._out
        cont, call, msg, desc = entry
        if ports is None:
            self._out.append(Event("media ports exhausted", {"call_id": call.call_id, "cause": cause}))
            self._media_cause = f"Media ports exhausted: {cause}" if cause else "Media ports exhausted"
            cont(None)
            return self._out
        if call.ended:
            self._out.append(ReleaseMedia(call.key, call.call_id, "failed"))
            return self._out
        self.planner.allocated(call.media, ports)
        self._out += self.planner.rewrite(call.media, msg, desc)
        cont(msg)
        return self._out

    def flow_closed(self, flow: Flow, now: float, reason: str = "connection closed") -> list:
        """Connection ``flow`` ended: every branch pending on it fails at once with 503
        (RFC 3261 §8.1.3.1 transport error) naming the zone or the cause."""
        self._now = now
        self._out = []
        self.conns.pop(flow.conn_id, None)
        key = (flow.transport, flow.remote[0], flow.remote[1])
        if self.conn_by_key.get(key) == flow:
            del self.conn_by_key[key]
        for b in list(self._flow_branches.pop(flow.conn_id, ())):
            if b.final is not None or b.ctx is None:
                continue
            zone = b.hop.zone
            if self._is_traversal(zone):
                text = f"Traversal zone {zone_token(zone)} lost: {reason}"
            else:
                text = reason
            self._out.append(Event("next hop failed", {"call_id": b.request.call_id, "hop": str(b.hop), "zone": zone, "cause": reason}))
            self._branch_failed(b, self._warned(503, "Service Unavailable", text))
        return self._out

    def zone_changed(self, zone: str, flows: list[Flow], now: float) -> list:
        """The live, authenticated connections of traversal zone ``zone`` (newest
        first) changed."""
        self._now = now
        self._out = []
        self.zone_flows[zone] = list(flows)
        for f in flows:
            self._note_conn(f)
        self._traversal_ports = frozenset(f.local[1] for fl in self.zone_flows.values() for f in fl)
        return self._out

    def call_media_closed(self, call_key: int, now: float) -> list:
        """The relay closed a call's media for inactivity: forget the call."""
        self._now = now
        self._out = []
        call = self.calls.by_key.get(call_key)
        if call is not None:
            self._end_call(call, "media inactive", release=False)
        return self._out

    def timers(self, now: float) -> list:
        """Fire everything due at ``now``."""
        self._now = now
        self._out = []
        for tx, actions in self.table.due(now):
            tu = tx.tu
            if tx.is_client:
                self._client_actions(tu, actions)
            elif tu is not None:
                if tu.flow.conn_id == 0 and self.sources.over_limit(tu.flow.remote[0], now):
                    # A source over its flood limit gets no retransmissions (Timer G):
                    # a response to a spoofable address is an amplifier (issue 7 item 3).
                    actions = [a for a in actions if type(a) is not txn.Send]
                self._server_actions(tu, actions)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, obj = heapq.heappop(heap)
            if kind == "giveup":
                self._give_up(obj)
            elif kind == "timer_c":
                for b in [b for b in self._timer_c_branches if b.final is not None or b.timer_c <= now]:
                    self._timer_c_branches.discard(b)
                    if b.final is None:
                        self._timer_c(b)
                self._timer_c_armed = bool(self._timer_c_branches)
                if self._timer_c_armed:
                    self._schedule(now + TIMER_C_SWEEP_S, "timer_c", None)
            elif kind == "failed":
                if self._failed.get(obj[0]) is obj[1]:
                    del self._failed[obj[0]]
            elif kind == "sweep":
                for call in [c for c in self.calls.by_key.values() if c.expires <= now]:
                    self._end_call(call, "idle")
                self._sweeping = bool(self.calls.by_key)
                if self._sweeping:
                    self._schedule(now + CALL_SWEEP_S, "sweep", None)
        return self._out

    def next_deadline(self) -> float | None:
        """When :meth:`timers` must be called next (seconds), or None."""
        t = self.table.next_deadline()
        if self._heap and (t is None or self._heap[0][0] < t):
            return self._heap[0][0]
        return t

    def pending_transactions(self) -> int:
        return len(self.table)

    # ================================================================ helpers
    def _schedule(self, when: float, kind: str, obj: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, obj))

    def _note_conn(self, flow: Flow) -> None:
        self.conns[flow.conn_id] = flow
        self.conn_by_key[(flow.transport, flow.remote[0], flow.remote[1])] = flow

    def _is_traversal(self, zone: str | None) -> bool:
        return zone in self.zone_flows

    def _zone_flow(self, zone: str) -> Flow | None:
        for f in self.zone_flows.get(zone, ()):
            if f.conn_id in self.conns:
                return f
        return None

    def is_ours(self, uri: Uri) -> bool:
        """True when ``uri`` names this node: one of its addresses, and one of its
        listening ports, a traversal connection's local port or a valid flow token."""
        if not uri.is_sip or uri.host.lower() not in self.our_hosts:
            return False
        port = uri.port
        if port is None or port in self.our_ports or port in self._traversal_ports:
            return True
        return self.tokens.decode(uri.user) is not None

    def _classify(self, flow: Flow) -> str:
        """The zone a request arrived from (DESIGN.md §2) when its flow is not bound."""
        return self._source_zones.get(flow.remote[0], DEFAULT_ZONE)

    def reload_zones(self) -> None:
        """The configuration's zones changed (live reload, issue 11 item 7; traversal zones
        unchanged): rebuild the zone table, the neighbour source addresses and the media
        planner's zone modes from ``cfg.zones``. Calls under way keep their flows."""
        zones = self.cfg.zones
        self.zones = {z.name: z for z in zones}
        self._source_zones = {z.host: z.name for z in reversed(zones) if z.type == "neighbour" and z.match_source}
        self.planner.zone_types = {z.name: z.type for z in zones}
        self.planner.zone_modes = {z.name: z.media_encryption for z in zones}

    def classify_source(self, ip: str) -> str:
        """The zone requests from address ``ip`` on an unbound flow belong to: the
        neighbour zone that matches its source, else DefaultZone."""
        return self._source_zones.get(ip, DEFAULT_ZONE)

    def _warned(self, status: int, reason: str, text: str) -> Response:
        return Response(status, reason, Headers([["Warning", f'399 {self.public} "{text}"']]))

    def _policy_warning(self) -> str:
        return f'399 {self.public} "Policy Response"'

    def _zone_unavailable(self, zone: str) -> Response:
        if self._is_traversal(zone):
            return self._warned(503, "Service Unavailable", f"Traversal zone {zone_token(zone)} is not connected")
        return Response(404, "Not Found", Headers([["Warning", self._policy_warning()]]))

    def _listener_port(self, transport: str) -> int:
        s = self.cfg.sip
        return {"udp": s.udp_port, "tcp": s.tcp_port, "tls": s.tls_port}.get(transport, 0) or s.tcp_port or s.udp_port or 5060

    def _egress_address(self, flow: Flow) -> tuple[str, int]:
        """The address we stand at on ``flow``: a traversal connection's own local
        address, else our listener for its transport."""
        if flow.listener != "sip" or flow.transport == "udp":
            return flow.local
        return self.ip, self._listener_port(flow.transport)

    def _rr_host(self, zone: str, ip: str) -> str:
        z = self.zones.get(zone)
        if z is not None and z.record_route_address_type == "hostname" and self.cfg.sip.hostname:
            return self.cfg.sip.hostname
        return ip

    def _token(self, flow: Flow) -> str | None:
        return self.tokens.encode(flow.conn_id) if flow.conn_id else None

    # ================================================================ requests
    def _on_request(self, req: Request, flow: Flow, zone: str | None) -> None:
        ingress = zone or self._classify(flow)
        method = req.method
        stamp_received(req, flow, zone_token(ingress) if method != "ACK" and method != "CANCEL" else None)
        st = self.table.find_server(req)
        if st is not None:
            if st.tu is not None:
                self._server_actions(st.tu, st.on_message(req, self._now))
            return
        if method == "ACK":
            if not (req.to_tag or "").startswith(STATELESS_TAG):  # else: the ACK of a stateless answer
                self._ack(req, flow, ingress)
            return
        if method == "CANCEL":
            self._cancel(req, flow, ingress)
            return
        if method == "INVITE":
            st = txn.ServerInviteTransaction(req, flow.conn_id != 0, self.tx_timers, self._now)
        else:
            st = txn.ServerNonInviteTransaction(req, flow.conn_id != 0, self.tx_timers, self._now)
        ctx = ResponseContext(st, req, flow, ingress)
        st.tu = ctx
        self.table.add(st)
        st.start(self._now)
        self._new_request(ctx)
        if ctx.final_sent:
            if ctx.stateless and not ctx.branches:
                # Answered at once (no route, policy, validation) to a source no zone
                # claims, over UDP: keep no transaction, so a flood cannot make the node
                # hold state or retransmit toward a spoofable address (issue 7 item 3).
                self.table.remove(st)
                st.tu = None
        elif method == "INVITE":
            # Only when the answer is not immediate (RFC 3261 §16.2: within 200 ms).
            self._respond(ctx, 100)

    def _new_request(self, ctx: ResponseContext) -> None:
        """§16.3 checks and routing of a request that opened server transaction ``ctx``."""
        req, flow, ingress, method = ctx.req, ctx.flow, ctx.ingress, ctx.req.method
        if flow.conn_id == 0 and ingress == DEFAULT_ZONE:
            ctx.stateless = True
        if method == "OPTIONS" and not req.headers.get_all("Route") and self._addressed_to_us(req):
            self._respond(ctx, 200, extra=[("Allow", _ALLOW)])
            return
        if self.maintenance and method in ("INVITE", "REGISTER", "SUBSCRIBE", "MESSAGE") and req.to_tag is None:
            # Maintenance mode (seed 002 §16): no new calls or registrations; dialogs go on.
            self._respond(ctx, 503, "Service Unavailable", extra=[
                ("Retry-After", "300"), ("Warning", f'399 {self.public} "Maintenance mode"')])
            return
        if method == "REGISTER" and self._for_registrar(req):
            self._register(ctx)
            return
        if method == "REGISTER" and self.role == "edge" and not self._is_traversal(ingress) and self._registrations_full(req):
            self._respond(ctx, 503, "Service Unavailable", extra=[
                ("Retry-After", "60"), ("Warning", f'399 {self.public} "Proxied registration limit reached"')])
            return
        rej = validate(req)
        if rej is not None:
            self._respond(ctx, rej.status, rej.reason, extra=list(rej.headers))
            return
        ctx.loop_hash = loop_hash(req)
        if is_loop(req, self.our_hosts, ctx.loop_hash):
            self._respond(ctx, 482, "Loop Detected")
            return
        try:
            routes, popped = process_routes(req, self.is_ours)
        except (UriError, ParseError) as exc:
            self._respond(ctx, 400, f"Bad Request - {exc}"[:120])
            return
        if req.to_tag is not None:
            self._in_dialog(ctx)
            return
        if popped and self._to_path_flow(ctx, popped, routes):
            return
        if not routes and self._to_rewritten_contact(ctx):
            return
        if routes:
            # Preloaded route (seed 003 §2.5): the zone rejects it before any search, or
            # routes on the Route host (with its parameters) as the alias while the
            # Request-URI and the Route header stay as they are.
            z = self.zones.get(ingress)
            if z is not None and z.preloaded_routes == "reject":
                self._out.append(Event("search completed", {"call_id": req.call_id, "src_zone": ingress, "method": method,
                                                            "alias": routes[0], "rule": None, "zone": None,
                                                            "found": False, "reason": "Policy Response",
                                                            "detail": "preloaded SIP routes rejected by zone"}))
                self._out.append(Event("call rejected", {"call_id": req.call_id, "status": 404, "reason": "preloaded SIP routes not accepted"}))
                self._respond(ctx, 404, "Not Found", warning=True)
                return
            route_uri = parse_uri(routes[0])
            self._route_initial(ctx, alias=route_uri.alias() + format_params(route_uri.params), keep_ruri=True)
            return
        self._route_initial(ctx)

    def _for_registrar(self, req: Request) -> bool:
        """A REGISTER for one of the registrar's domains with no Route left to follow."""
        if self.registrar is None or req.headers.get_all("Route"):
            return False
        try:
            uri = req.ruri
        except UriError:
            return False
        return uri.user is None and uri.host.lower() in self.registrar.domains

    def _register(self, ctx: ResponseContext) -> None:
        """Answer a REGISTER with the node's own registrar (RFC 3261 §10.3)."""
        req = ctx.req
        resp = self.registrar.register(req, ctx.flow, self._now, zone=ctx.ingress)  # type: ignore[union-attr]
        if resp.status in (401, 403) and req.headers.get("Authorization"):
            self._out.append(Event("sip authentication failed", {"source": ctx.flow.remote[0], "call_id": req.call_id,
                                                                  "status": resp.status}))
        elif resp.status == 200:
            self._out.append(Event("registered", {"aor": aor_of(req.headers.get("To") or ""),
                                                  "contacts": len(resp.headers.get_all("Contact")),
                                                  "source": f"{ctx.flow.remote[0]}:{ctx.flow.remote[1]}"}))
        resp.headers.add("Server", f"Edgeway/{self.role}")
        self._send_up(ctx, resp)

    def _registered_hops(self, ctx: ResponseContext, lane: Lane) -> list[tuple[str, Hop, tuple[str, ...]]]:
        """LocalZone targets: ``(contact, hop)`` per live binding of the Request-URI's
        address-of-record, best q first. A binding is reached over the flow its
        REGISTER came on (the way back through a NAT or the traversal zone) while that
        connection lives; a UDP binding at the REGISTER's source address."""
        if self.registrar is None:
            return []
        try:
            aor = aor_of(lane.ruri or ctx.req.uri)
        except UriError:
            return []
        out = []
        for b in self.registrar.lookup(aor, self._now):
            f = b.flow
            if f is not None and f.conn_id and f.conn_id not in self.conns:
                # Its connection is gone. Through a traversal zone (a Path binding) any
                # live connection of the zone reaches the edge that holds the client.
                f = self._zone_flow(b.zone) if b.path and b.zone and self._is_traversal(b.zone) else None
            if f is None:
                continue  # unreachable until it registers again
            out.append((b.contact, Hop(f.transport, f.remote[0], f.remote[1], b.zone or "LocalZone", flow=f,
                                       origin="registration"), b.path))
        return out

    def _to_path_flow(self, ctx: ResponseContext, popped: list[Uri], routes: list[str]) -> bool:
        """An initial request routed by our own Path entry (RFC 3327, RFC 5626 §5.3:
        a registration made through this node). The edge's entry (no Route left after it)
        sends it to the client's connection its flow token names, or answers 430 Flow
        Failed when that connection is gone; the core's entry (Path mode, seed 002 §2.3)
        sends it over the live connection of the traversal zone the entry names, with the
        rest of its route set (the edge's entry). False when no popped entry is such an
        entry (route as usual)."""
        for uri in popped:
            zone = self.path_tokens.decode(uri.user, self.zone_flows) if self.role == "core" else None
            if zone is not None:
                f = self._zone_flow(zone)
                if f is None:
                    r = self._zone_unavailable(zone)
                    self._respond(ctx, r.status, r.reason, extra=list(r.headers))
                    return True
                hop = Hop(f.transport, f.remote[0], f.remote[1], zone, flow=f, origin="registration")
                self._route_initial(ctx, lanes=[Lane(Candidate("registration (Path)", 0, zone, ctx.req.uri), None, [hop])])
                return True
            if routes:
                continue
            cid = self.tokens.decode(uri.user)
            if cid is None:
                continue
            flow = self.conns.get(cid)
            if flow is None:
                self._respond(ctx, 430, "Flow Failed")
                return True
            zone = self._classify(flow)
            hop = Hop(flow.transport, flow.remote[0], flow.remote[1], zone, flow=flow, origin="registration")
            self._route_initial(ctx, lanes=[Lane(Candidate("registration (Path)", 0, zone, ctx.req.uri), None, [hop])])
            return True
        return False

    def _to_rewritten_contact(self, ctx: ResponseContext) -> bool:
        """An initial request for a Contact the core rewrote (default registration mode,
        seed 002 §2.3): sent over the live connection of the traversal zone the REGISTER
        came from, with the client's original Contact as Request-URI and the edge's Path
        as route set; 480 when the binding is unknown or expired. False when the
        Request-URI is not such a Contact."""
        try:
            uri = ctx.req.ruri
        except UriError:
            return False
        if self.role != "core" or not uri.user or not uri.user.startswith(REWRITE_PREFIX) or not self.is_ours(uri):
            return False
        m = self.contact_map.lookup(uri.user, self._now)
        if m is None:
            self._respond(ctx, 480, "Temporarily Unavailable", extra=[
                ("Warning", f'399 {self.public} "Registration through the traversal zone has expired"')])
            return True
        f = self._zone_flow(m.zone)
        if f is None:
            r = self._zone_unavailable(m.zone)
            self._respond(ctx, r.status, r.reason, extra=list(r.headers))
            return True
        hop = Hop(f.transport, f.remote[0], f.remote[1], m.zone, flow=f, origin="registration")
        lane = Lane(Candidate("registration (Contact)", 0, m.zone, m.contact), m.contact, [hop])
        lane.route = m.path
        self._route_initial(ctx, lanes=[lane], note=f"routed by the registration of {m.aor} (rewritten Contact)")
        return True

    def _proxy_registration(self, ctx: ResponseContext, fwd: Request, hop: Hop, flow: Flow, ip: str, port: int) -> None:
        """Core: a REGISTER from a traversal zone on its way to an inside registrar
        (seed 002 §2.3): Path mode adds the core's own Path entry on top of the edge's;
        the default mode rewrites Contact (:class:`~edgeway.proxy.registrations.ContactMap`).
        Raises UriError on a Contact or To it cannot parse."""
        host = self._rr_host(hop.zone, ip)
        if self.cfg.sip.path_headers:
            fwd.headers.add("Path", record_route_entry(host, port, flow.transport, self.path_tokens.encode(ctx.ingress)),
                            first=True)
            return
        self.contact_map.rewrite_register(fwd, aor_of(fwd.headers.get("To") or ""), ctx.ingress, host, port,
                                          flow.transport, self._now)

    def _registrations_full(self, req: Request) -> bool:
        """Whether a REGISTER for a new address-of-record would pass the edge's cap on
        proxied registrations (``limits.max_proxied_registrations``; expired ones first
        dropped)."""
        regs = self._proxied_regs
        if len(regs) < self.cfg.limits.max_proxied_registrations:
            return False
        try:
            aor = aor_of(req.headers.get("To") or "")
        except UriError:
            return False
        if aor in regs:
            return False
        for k in [k for k, t in regs.items() if t <= self._now]:
            del regs[k]
        return len(regs) >= self.cfg.limits.max_proxied_registrations

    def _note_registration(self, req: Request, resp: Response) -> None:
        """A 2xx to a REGISTER the edge proxied inward: the AOR counts until its longest
        binding expires (none left: it no longer counts)."""
        try:
            aor = aor_of(req.headers.get("To") or "")
        except UriError:
            return
        longest = 0
        for v in resp.headers.get_all("Contact"):
            try:
                expires = parse_name_addr(v).params.get("expires")
            except UriError:
                continue
            if expires is None:
                expires = resp.headers.get("Expires") or "3600"
            if expires.isascii() and expires.isdigit():
                longest = max(longest, int(expires[:9]))
        if longest:
            self._proxied_regs[aor] = self._now + longest
        else:
            self._proxied_regs.pop(aor, None)

    def _addressed_to_us(self, req: Request) -> bool:
        try:
            uri = req.ruri
        except UriError:
            return False
        return uri.user is None and self.is_ours(uri)

    def _route_initial(self, ctx: ResponseContext, *, alias: str | None = None, keep_ruri: bool = False,
                       lanes: list[Lane] | None = None, note: str = "routed by its registration's Path (RFC 3327)") -> None:
        """Transforms → call policy → search rules → target zones (seed 003 §6.1);
        ``lanes``: targets already known (a registration's flow), no search."""
        req = ctx.req
        if req.method == "INVITE":
            self.stats["calls_attempted"] += 1
            try:
                src_alias = str(req.from_.uri)
            except UriError:
                src_alias = ""
            self._out.append(Event("call attempted", {"call_id": req.call_id, "src_zone": ctx.ingress,
                                                      "src": f"{ctx.flow.remote[0]}:{ctx.flow.remote[1]}",
                                                      "src_alias": src_alias, "dst_alias": req.uri, "transport": ctx.flow.transport}))
        if lanes is not None:
            plan = None
        else:
            try:
                plan = plan_initial(self.cfg, req, ctx.ingress, alias=alias, keep_ruri=keep_ruri)
            except UriError as exc:
                self._respond(ctx, 400, f"Bad Request - {exc}"[:120])
                return
        if plan is not None and plan.rejection is not None:
            self._out.append(Event("search completed", {"call_id": req.call_id, "src_zone": ctx.ingress, "method": req.method,
                                                        "alias": plan.alias, "rule": None, "zone": None,
                                                        "found": False, "reason": "Forbidden", "detail": "Policy Response",
                                                        "cpl": plan.policy_trace}))
            self._out.append(Event("call rejected", {"call_id": req.call_id, "status": 403, "reason": "call policy"}))
            self.stats["calls_rejected"] += 1
            self._respond(ctx, 403, "Forbidden", warning=True)
            return
        ctx.initial = True
        if plan is not None:
            ctx.search = (plan.alias, plan.log)
            ctx.groups = group_by_priority(plan.candidates)
        else:
            ctx.search = (req.uri, [note])
            ctx.lanes = lanes
        if req.method in DIALOG_METHODS:
            call = Call(next(self._ids), req.method, req.call_id, req.from_tag, ctx.ingress, ctx.flow)
            call.a_target = _contact_uri(req)
            call.a_path = req.headers.get_all("Record-Route")
            call.expires = self._now + CALL_IDLE_S
            if not self._sweeping:
                self._sweeping = True
                self._schedule(self._now + CALL_SWEEP_S, "sweep", None)
            ctx.call = call
            self.calls.add(call)
        self._advance(ctx)

    # ---------------------------------------------------------------- targets
    def _advance(self, ctx: ResponseContext) -> None:
        """Start what ``ctx`` can start now: the next hop of every idle lane; when every
        lane of the current priority group has ended, the next group (if the search
        goes on); with nothing left to try and nothing pending, the best final
        response (§16.7 step 6)."""
        while not ctx.final_sent:
            if not (ctx.stop or ctx.cancelled):
                for lane in ctx.lanes:
                    if not lane.done and not lane.waiting and not any(b.lane is lane and b.final is None for b in ctx.branches):
                        self._run_lane(ctx, lane)
            if ctx.busy():
                return
            if ctx.stop or ctx.cancelled or not ctx.groups or not self._search_goes_on(ctx):
                break
            ctx.lanes = [Lane(cand, ruri) for cand, ruri in ctx.groups.popleft()]
            for lane in ctx.lanes:
                self._start_lane(ctx, lane)
        if not ctx.busy():
            self._finish(ctx)

    @staticmethod
    def _search_goes_on(ctx: ResponseContext) -> bool:
        """After a priority group ended without success: the next group is tried only
        when every lane ended with a status that means "not here" (404, 408, 480, 503,
        604) or found no target at all."""
        return all(lane.last is None or lane.last in NEXT_CANDIDATE_STATUSES for lane in ctx.lanes)

    def _run_lane(self, ctx: ResponseContext, lane: Lane) -> None:
        while lane.hops:
            if self._try_hop(ctx, lane, lane.hops.popleft()):
                return
        lane.done = True

    def _start_lane(self, ctx: ResponseContext, lane: Lane) -> None:
        """Find the next hops of a search-rule candidate's target zone."""
        if lane.hops:
            return  # a fork made with its hop (another registered contact)
        zone = lane.cand.zone
        z = self.zones.get(zone)
        if zone == "LocalZone" and self.registrar is not None:
            found = self._registered_hops(ctx, lane)
            # Forking (RFC 3261 §16.6): one lane per registered contact, in parallel;
            # a binding's Path (RFC 3327) becomes the request's route set.
            for contact, hop, path in found[1:]:
                fork = Lane(lane.cand, contact, [hop])
                fork.route = path
                ctx.lanes.append(fork)
            if found:
                lane.ruri, lane.route = found[0][0], found[0][2]
            hops: list[Hop] = [found[0][1]] if found else []
        elif z is None:
            hops = []
        elif z.type == "neighbour":
            hops = [Hop(z.transport, z.host, z.port, z.name, origin="neighbour")]
        elif z.type in ("traversal_server", "traversal_client"):
            hops = [Hop(f.transport, f.remote[0], f.remote[1], zone, flow=f, origin="traversal")
                    for f in self.zone_flows.get(zone, ()) if f.conn_id in self.conns]
        elif z.type == "dns":
            qid = next(self._ids)
            self._pending[qid] = ("candidate", ctx, lane)
            lane.waiting = "dns"
            self._out.append(Resolve(qid, parse_uri(lane.ruri), zone, z.default_transport))
            return
        else:
            hops = []
        self._lane_hops(ctx, lane, hops)

    def _lane_hops(self, ctx: ResponseContext, lane: Lane, hops: list[Hop]) -> None:
        cand = lane.cand
        alias, log = ctx.search or ("", [])
        self._out.append(Event("search completed", {"call_id": ctx.req.call_id, "src_zone": ctx.ingress, "method": ctx.req.method,
                                                    "alias": alias, "rule": cand.rule,
                                                    "zone": cand.zone, "found": bool(hops), "log": log}))
        if hops:
            lane.hops = deque(hops)
        else:
            lane.done = True
            ctx.finals.append(self._zone_unavailable(cand.zone))

    def _lane_final(self, ctx: ResponseContext, lane: Lane, resp: Response) -> None:
        """A lane's current hop ended with final ``resp`` (received or made by us): fail
        over to its next hop on 408/503, else the lane is done."""
        ctx.finals.append(resp)
        lane.last = resp.status
        if resp.status not in FAILOVER_STATUSES:
            lane.hops.clear()
            lane.done = True
        self._advance(ctx)

    def _flow_for(self, hop: Hop) -> Flow | None | str:
        """The flow to send to ``hop`` on: a live known flow, a UDP flow, the newest
        connection to its address, "connect" when one must be opened, or None."""
        f = hop.flow
        if f is not None:
            if not f.conn_id or f.conn_id in self.conns:
                return f
            return self._zone_flow(hop.zone) if self._is_traversal(hop.zone) else None
        if hop.transport == "udp":
            return Flow("udp", self.udp_local, (hop.ip, hop.port))
        f = self.conn_by_key.get(hop.key)
        if f is not None:
            return f
        if self._is_traversal(hop.zone):
            return None  # the traversal zone is reached on its own connections only
        return "connect"

    def _try_hop(self, ctx: ResponseContext, lane: Lane, hop: Hop) -> bool:
        """Send ``ctx``'s request to ``hop`` (True) or record why not (False)."""
        flow = self._flow_for(hop)
        if flow is None:
            resp = (self._zone_unavailable(hop.zone) if self._is_traversal(hop.zone)
                    else self._warned(503, "Service Unavailable", f"Next hop {hop.ip}:{hop.port} unreachable"))
            ctx.finals.append(resp)
            lane.last = resp.status
            return False
        if flow == "connect":
            self._connect(hop, ("ctx", ctx, lane, hop))
            lane.waiting = "connect"
            return True
        self._forward(ctx, lane, hop, flow)  # type: ignore[arg-type]
        return True

    def _connect(self, hop: Hop, waiter: tuple) -> None:
        cid = self._connecting.get(hop.key)
        if cid is not None and cid in self._pending:
            self._pending[cid][1].append(waiter)
            return
        cid = next(self._ids)
        self._connecting[hop.key] = cid
        self._pending[cid] = (hop.key, [waiter])
        self._out.append(Connect(cid, hop))

    # ---------------------------------------------------------------- forwarding
    def _forward(self, ctx: ResponseContext, lane: Lane, hop: Hop, flow: Flow) -> None:
        """Build the request for one branch (RFC 3261 §16.6), anchor its media, start
        its client transaction."""
        if ctx.final_sent or ctx.cancelled or ctx.stop:
            self._advance(ctx)
            return
        req = ctx.req
        if self.role == "edge" and self._is_traversal(hop.zone) and not self._is_traversal(ctx.ingress):
            ctx.inward = True
        ip, port = self._egress_address(flow)
        branch = new_branch(req, ctx.loop_hash)
        via = via_value(flow.transport, ip, port, branch, zone_token(hop.zone))
        call = ctx.call
        rr: tuple[str, ...] = ()
        if ctx.initial and call is not None:
            in_ip, in_port = ctx.flow.local
            in_entry = record_route_entry(self._rr_host(ctx.ingress, in_ip), in_port, ctx.flow.transport, self._token(ctx.flow))
            out_entry = record_route_entry(self._rr_host(hop.zone, ip), port, flow.transport, self._token(flow))
            rr = (out_entry,) if in_entry == out_entry else (out_entry, in_entry)
        fwd = branch_request(req, ruri=lane.ruri, via=via, record_route=rr, default_max_forwards=self.cfg.sip.max_forwards_out)
        if req.method == "REGISTER" and ctx.inward and ctx.flow.conn_id:
            # RFC 3327 + RFC 5626 §5.3: the edge names the client's own connection in a
            # Path entry, so requests for the registration come back to it.
            in_ip, in_port = ctx.flow.local
            fwd.headers.add("Path", record_route_entry(self._rr_host(ctx.ingress, in_ip), in_port, ctx.flow.transport,
                                                       self._token(ctx.flow)), first=True)
        elif (req.method == "REGISTER" and self.role == "core" and self._is_traversal(ctx.ingress)
              and not self._is_traversal(hop.zone)):
            try:
                self._proxy_registration(ctx, fwd, hop, flow, ip, port)
            except UriError as exc:
                ctx.stop = True
                self._lane_final(ctx, lane, Response(400, f"Bad Request - {exc}"[:120]))
                return
        if lane.route:
            fwd.headers.remove("Route")
            for r in lane.route:
                fwd.headers.add("Route", r)
        if ctx.route_override is not None:
            fwd.headers.remove("Route")
            for r in ctx.route_override:
                fwd.headers.add("Route", r)
        if call is not None:
            if ctx.initial:
                ctx.rr_ours = rr
                self._setup_call(ctx, call, hop)
            self._rewrite_request(ctx, call, fwd, hop, flow)
        lane.waiting = "media"

        def cont(m: Request | None) -> None:
            lane.waiting = None
            if m is not None:
                self._start_branch(ctx, lane, hop, flow, m)
            else:
                self._media_failed(ctx, lane)

        self._with_media(call, fwd, cont)

    def _media_failed(self, ctx: ResponseContext, lane: Lane) -> None:
        """Media could not be anchored: the call is refused with 503 and a Warning naming
        the cause (never forwarded with the party's own address in its SDP; issue 7
        item 2)."""
        ctx.stop = True
        self._lane_final(ctx, lane, Response(503, "Service Unavailable", Headers([
            ["Warning", f'399 {self.public} "{self._media_cause}"'], ["Retry-After", "5"]])))

    def _with_media(self, call: Call | None, msg: Request | Response, cont) -> None:
        """Anchor the SDP of ``msg`` (a message of ``call``) then call ``cont(msg)``;
        ``cont(None)`` when the media cannot be anchored (the call is then refused:
        never forward un-anchored SDP)."""
        if call is None or call.media is None or not msg.body:
            cont(msg)
            return
        try:
            desc = self.planner.parse(call.media, msg)
        except SdpError as exc:
            self._out.append(Event("sdp rewrite failed", {"call_id": call.call_id, "error": str(exc)}))
            self._media_cause = "Media could not be anchored: SDP not understood"
            cont(None)
            return
        if desc is None:
            cont(msg)
            return
        missing = MediaPlanner.missing(call.media, desc)
        if missing:
            aid = next(self._ids)
            self._pending[aid] = (cont, call, msg, desc)
            pl = self.planner
            self._out.append(AllocateMedia(aid, call.key, tuple(missing), pl.latch_only(call.a_zone),
                                           pl.latch_only(call.b_zone), call.call_id,
                                           pl.mux(call.a_zone), pl.mux(call.b_zone)))
            return
        self._out += self.planner.rewrite(call.media, msg, desc)
        cont(msg)

    def _start_branch(self, ctx: ResponseContext, lane: Lane, hop: Hop, flow: Flow, fwd: Request) -> None:
        if ctx.final_sent or ctx.cancelled:
            if ctx.call is not None and ctx.call.ended and ctx.call.media is not None:
                self._out.append(ReleaseMedia(ctx.call.key, ctx.call.call_id, "cancel"))
            return
        b = Branch(ctx, hop, flow, fwd, lane)
        if fwd.method == "INVITE":
            tx = txn.ClientInviteTransaction(fwd, flow.conn_id != 0, self.tx_timers, self._now)
        else:
            tx = txn.ClientNonInviteTransaction(fwd, flow.conn_id != 0, self.tx_timers, self._now)
        tx.tu = b
        b.tx = tx
        self.table.add(tx)
        ctx.branches.append(b)
        if flow.conn_id:
            self._flow_branches.setdefault(flow.conn_id, set()).add(b)
        self._client_actions(b, tx.start(self._now))
        if fwd.method == "INVITE":
            b.timer_c = self._now + self.timer_c
            self._timer_c_branches.add(b)
            if not self._timer_c_armed:
                self._timer_c_armed = True
                self._schedule(self._now + TIMER_C_SWEEP_S, "timer_c", None)

    def _client_actions(self, b: Branch, actions: list) -> None:
        for a in actions:
            t = type(a)
            if t is txn.Send:
                self._out.append(Send(b.flow, a.data))
            elif t is txn.Deliver:
                if b.ctx is not None:
                    self._on_branch_response(b, a.msg)
            elif t is txn.Timeout:
                if b.ctx is not None and b.final is None:
                    self._out.append(Event("next hop timeout", {"call_id": b.request.call_id, "hop": f"{b.hop.ip}:{b.hop.port}", "zone": b.hop.zone}))
                    self._branch_failed(b, Response(408, "Request Timeout"))
            elif t is txn.TransportError:
                if b.ctx is not None and b.final is None:
                    self._branch_failed(b, self._warned(503, "Service Unavailable", a.reason or "transport error"))
            elif t is txn.Terminated:
                self.table.remove(b.tx)
                b.tx.tu = None  # break the cycles so reference counting frees it (no GC work)
                if b.ctx is not None and b.final is not None:
                    try:
                        b.ctx.branches.remove(b)
                    except ValueError:
                        pass
                if b.flow.conn_id:
                    s = self._flow_branches.get(b.flow.conn_id)
                    if s is not None:
                        s.discard(b)

    # ---------------------------------------------------------------- responses
    def _on_response(self, resp: Response, flow: Flow) -> None:
        tx = self.table.find_client(resp)
        if tx is not None:
            self._client_actions(tx.tu, tx.on_message(resp, self._now))
            return
        if 200 <= resp.status < 300 and resp.cseq[1] == "INVITE":
            b = self._failed.get(txn.client_key(resp))
            if b is not None:
                # A 2xx for an INVITE branch we already gave up (its connection failed, it
                # timed out or was cancelled): no call may exist on one side only.
                self._clear_callee(b, resp, "late 2xx for a failed branch", flow)

    def _on_branch_response(self, b: Branch, resp: Response) -> None:
        ctx = b.ctx
        status = resp.status
        if status < 200:
            b.provisional = True
            if b.timer_c is not None and status > 100:
                b.timer_c = self._now + self.timer_c  # reset by each 101-199 (RFC 3261 §16.7 step 2)
            if (ctx.cancelled or ctx.stop) and not b.cancel_sent:
                self._cancel_branch(b)
            if status == 100 or ctx.final_sent:
                return
            self._relay_up(ctx, b, resp)
            return
        if status < 300:
            if ctx.req.method == "INVITE":
                if ctx.final_sent and not ctx.answered_2xx:
                    b.final = resp
                    self._clear_callee(b, resp, "caller already answered " + ("487" if ctx.cancelled else "with a final response"))
                    return
                if not ctx.answered_2xx and not self._reachable(ctx.flow, ctx.ingress):
                    # The caller's connection is gone and nothing replaces it (a traversal
                    # zone not yet reconnected): it will never hear this 2xx.
                    b.final = resp
                    ctx.final_sent = True
                    self._clear_callee(b, resp, "the caller's connection is gone")
                    return
                if not ctx.answered_2xx:
                    self.stats["calls_connected"] += 1
                    self._out.append(Event("call connected", {"call_id": ctx.req.call_id, "zone": b.hop.zone}))
                ctx.answered_2xx = True
                ctx.stop = True
                for other in ctx.branches:
                    if other is not b and other.final is None and other.provisional and not other.cancel_sent:
                        self._cancel_branch(other)
            elif ctx.final_sent:
                return
            b.final = resp
            self._relay_up(ctx, b, resp)
            if ctx.req.method == "BYE":
                self._bye_done(ctx, resp)
            return
        b.final = resp
        if ctx.req.method == "BYE":
            self._bye_done(ctx, resp)
        self._branch_final(b, resp)

    def _branch_failed(self, b: Branch, resp: Response) -> None:
        """A branch ended without a final response from downstream (timeout, transport
        failure): ``resp`` stands for it; an INVITE branch is remembered 64*T1 so a
        late 2xx can be cleared."""
        if b.final is not None:
            return
        b.final = resp
        b.failed_at = self._now
        self._client_actions(b, b.tx.on_transport_error(self._now))  # terminates it (its events are ignored: final set)
        self.table.remove(b.tx)
        if b.request.method == "INVITE":
            key = b.tx.key
            self._failed[key] = b
            self._schedule(self._now + 64 * self.tx_timers.t1, "failed", (key, b))
        if b.ctx is not None:
            self._branch_final(b, resp)

    def _branch_final(self, b: Branch, resp: Response) -> None:
        """A branch ended without a 2xx: a 6xx ends the search and cancels the other
        branches (§16.7 step 5); otherwise its lane fails over or ends."""
        ctx = b.ctx
        if ctx.final_sent:
            return
        if resp.status >= 600:
            ctx.stop = True
            for other in ctx.branches:
                if other.final is None and other.provisional and not other.cancel_sent:
                    self._cancel_branch(other)
        self._lane_final(ctx, b.lane, resp)

    def _finish(self, ctx: ResponseContext) -> None:
        """Send the best final response upstream (§16.7 step 6) if none was sent."""
        if ctx.final_sent or ctx.busy():
            return
        best = choose_best(ctx.finals)
        req = ctx.req
        if best is None:
            alias, log = ctx.search or ("", [])
            self._out.append(Event("search completed", {"call_id": req.call_id, "src_zone": ctx.ingress, "method": req.method,
                                                        "alias": alias, "rule": None, "zone": None,
                                                        "found": False, "log": log, "reason": "Policy Response"}))
            if req.method == "INVITE":
                self._out.append(Event("call rejected", {"call_id": req.call_id, "status": 404, "reason": "no search rule matched"}))
                self.stats["calls_rejected"] += 1
            self._end_failed_call(ctx)
            self._respond(ctx, 404, "Not Found", warning=True)
            return
        if req.method == "INVITE" and best.status >= 300:
            self._out.append(Event("call rejected", {"call_id": req.call_id, "status": best.status, "reason": best.reason}))
            self.stats["calls_rejected"] += 1
        self._end_failed_call(ctx)
        if best.headers.get("To") is None:
            # A response we made (timeout, transport failure, zone down): on the request.
            up = make_response(req, best.status, best.reason, to_tag=self._local_tag(ctx),
                               extra=[(n, v) for n, v in best.headers if n != "Content-Length"] + [("Server", f"Edgeway/{self.role}")])
        else:
            up = upstream_response(best, req)
            self._hide_response(ctx, up, None)
        self._send_up(ctx, up)

    def _end_failed_call(self, ctx: ResponseContext) -> None:
        call = ctx.call
        if call is not None and ctx.initial and not any(d.confirmed for d in call.dialogs.values()):
            self._end_call(call, "final-response")

    def _relay_up(self, ctx: ResponseContext, b: Branch, resp: Response) -> None:
        """Forward a 1xx/2xx from branch ``b`` upstream (§16.7 steps 3–5, 9)."""
        up = upstream_response(resp, ctx.req)
        call = ctx.call
        if ctx.req.method == "REGISTER" and 200 <= resp.status < 300:
            if ctx.inward:
                self._note_registration(ctx.req, resp)
            elif self.role == "core" and self._is_traversal(ctx.ingress) and not self._is_traversal(b.hop.zone):
                # Only the client's own bindings go back out (no inside phone's Contact).
                if self.cfg.sip.path_headers:
                    restore_contacts(up, ctx.req)
                else:
                    self.contact_map.restore(up, self._now)
        if call is None:
            self._send_up(ctx, up)
            return
        self._dialog_bookkeeping(ctx, b, resp)
        self._hide_response(ctx, up, b)

        def cont(m: Response | None) -> None:
            if m is None:
                if 200 <= resp.status < 300 and ctx.req.method == "INVITE":
                    self._clear_callee(b, resp, "media could not be anchored")
                    ctx.answered_2xx = False
                    refusal = self._warned_up(ctx, 503, "Service Unavailable", self._media_cause)
                    refusal.headers.add("Retry-After", "5")
                    self._send_up(ctx, refusal)
                return
            self._send_up(ctx, m)

        self._with_media(call, up, cont)

    def _warned_up(self, ctx: ResponseContext, status: int, reason: str, text: str) -> Response:
        return make_response(ctx.req, status, reason, to_tag=secrets.token_hex(5),
                             extra=[("Warning", f'399 {self.public} "{text}"'), ("Server", f"Edgeway/{self.role}")])

    # ---------------------------------------------------------------- upstream
    def _respond(self, ctx: ResponseContext, status: int, reason: str | None = None, *, extra: list | None = None,
                 warning: bool = False) -> None:
        """Send a response we generate ourselves through ``ctx``'s server transaction."""
        extra = list(extra or [])
        if warning:
            extra.append(("Warning", self._policy_warning()))
        extra.append(("Server", f"Edgeway/{self.role}"))
        resp = make_response(ctx.req, status, reason, to_tag=self._local_tag(ctx) if status > 100 else None, extra=extra)
        self._send_up(ctx, resp)

    def _local_tag(self, ctx: ResponseContext) -> str:
        """A To tag for a response we make: :data:`STATELESS_TAG`-prefixed while
        ``ctx`` may still be answered statelessly (its ACK is then dropped unread)."""
        if ctx.stateless and not ctx.branches:
            return STATELESS_TAG + secrets.token_hex(4)
        return secrets.token_hex(5)

    def _send_up(self, ctx: ResponseContext, resp: Response) -> None:
        if resp.status >= 200:
            if ctx.final_sent and not (resp.status < 300 and ctx.req.method == "INVITE"):
                return
            ctx.final_sent = True
        self._server_actions(ctx, ctx.st.send_response(resp, self._now))

    def _server_actions(self, ctx: ResponseContext, actions: list) -> None:
        for a in actions:
            t = type(a)
            if t is txn.Send:
                self._send_response(a.data, ctx.flow, ctx.ingress, ctx.call.call_id if ctx.call is not None else None)
            elif t is txn.Deliver:
                msg = a.msg
                if isinstance(msg, Request) and msg.method == "ACK":
                    self._ack(msg, ctx.flow, ctx.ingress)  # an ACK for a 2xx reusing the branch (RFC 6026)
            elif t is txn.Terminated:
                self.table.remove(ctx.st)
                ctx.st.tu = None  # break the cycle (reference counting frees the context)

    def _reachable(self, flow: Flow, zone: str | None) -> bool:
        """Whether a response can still reach the party of ``flow``: UDP, a live
        connection, a traversal zone's replacement connection, or (not on an edge) a new
        connection to its Via address."""
        if not flow.conn_id or flow.conn_id in self.conns:
            return True
        if self._is_traversal(zone):
            return self._zone_flow(zone) is not None  # type: ignore[arg-type]
        return self.role != "edge"

    def _send_response(self, resp: Response, flow: Flow, zone: str | None, log_call_id: str | None = None) -> None:
        """Send a response toward its top Via (RFC 3261 §18.2.2, RFC 3581): on the flow
        its request came on while it lives, else on the traversal zone's replacement
        connection, else (UDP) to received/rport or (TCP/TLS) over a new connection to
        the Via address. Never to a broadcast, multicast or unspecified address."""
        try:
            via = resp.top_via()
        except ParseError:
            return
        if response_next_hop_forbidden(via):
            self._out.append(Event("response dropped", {"reason": "broadcast or unspecified Via sent-by", "call_id": resp.call_id}))
            return
        if flow.conn_id:
            if flow.conn_id in self.conns:
                self._out.append(Send(flow, resp, log_call_id))
                return
            if self._is_traversal(zone):
                f = self._zone_flow(zone)  # type: ignore[arg-type]
                if f is not None:
                    self._out.append(Send(f, resp, log_call_id))
                else:
                    self._out.append(Event("response dropped", {"reason": f"traversal zone {zone} is not connected", "call_id": resp.call_id}))
                return
            hop = response_hop(via, zone or "DefaultZone")
            if hop is None:
                return
            if hop.transport == "udp":
                self._out.append(Send(Flow("udp", self.udp_local, (hop.ip, hop.port)), resp, log_call_id))
                return
            f = self.conn_by_key.get(hop.key)
            if f is not None:
                self._out.append(Send(f, resp, log_call_id))
            else:
                self._connect(hop, ("send", resp, log_call_id))
            return
        hop = response_hop(via, zone or "DefaultZone")
        dest = (hop.ip, hop.port) if hop is not None and hop.transport == "udp" else flow.remote
        self._out.append(Send(flow if dest == flow.remote else Flow("udp", flow.local, dest), resp, log_call_id))

    # ================================================================ CANCEL, ACK
    def _cancel(self, req: Request, flow: Flow, zone: str) -> None:
        """CANCEL (RFC 3261 §16.10): 200 to the CANCEL, 487 to the INVITE, CANCEL to each
        pending branch that had a provisional response (§9.1; the others when theirs
        comes)."""
        inv = self.table.find_invite_for_cancel(req)
        ctx = inv.tu if inv is not None else None
        resp = make_response(req, 200 if ctx is not None else 481, None, to_tag=secrets.token_hex(4))
        self._send_response(resp, flow, zone)
        if ctx is None:
            return
        ctx.cancelled = True
        for b in ctx.branches:
            if b.final is None and b.provisional and not b.cancel_sent:
                self._cancel_branch(b)
        if not ctx.final_sent:
            self._respond(ctx, 487, "Request Terminated")
            if ctx.call is not None and ctx.initial and not any(d.confirmed for d in ctx.call.dialogs.values()):
                self._end_call(ctx.call, "cancel")

    def _cancel_branch(self, b: Branch) -> None:
        """CANCEL branch ``b`` in its own non-INVITE client transaction (retransmitted by
        Timer E; its 200 absorbed there); 64*T1 later the INVITE branch is given up if it
        still has no final response (RFC 3261 §9.1)."""
        b.cancel_sent = True
        c = cancel_for(b.request)
        cb = Branch(None, b.hop, b.flow, c)  # type: ignore[arg-type]
        tx = txn.ClientNonInviteTransaction(c, b.flow.conn_id != 0, self.tx_timers, self._now)
        tx.tu = cb
        cb.tx = tx
        try:
            self.table.add(tx)
        except ValueError:
            return
        self._client_actions(cb, tx.start(self._now))
        self._schedule(self._now + 64 * self.tx_timers.t1, "giveup", b)

    def _timer_c(self, b: Branch) -> None:
        """Timer C of an INVITE branch fired (RFC 3261 §16.8): no final response within
        ``timers.timer_c_s`` of its last provisional. A branch that rang is CANCELled (its
        487, or the give-up 64*T1 later, ends it); one that never answered gets 408."""
        b.timer_c = None
        self._out.append(Event("next hop timeout", {"call_id": b.request.call_id, "hop": f"{b.hop.ip}:{b.hop.port}",
                                                    "zone": b.hop.zone, "cause": "Timer C: no final response"}))
        if b.provisional:
            if not b.cancel_sent:
                self._cancel_branch(b)
        else:
            self._branch_failed(b, Response(408, "Request Timeout"))

    def _give_up(self, b: Branch) -> None:
        if b.final is not None:
            return
        self._out.append(Event("next hop timeout", {"call_id": b.request.call_id, "hop": f"{b.hop.ip}:{b.hop.port}", "zone": b.hop.zone,
                                                    "cause": "no final response to the cancelled INVITE within 64*T1"}))
        self._branch_failed(b, Response(487, "Request Terminated"))

    def _ack(self, req: Request, flow: Flow, ingress: str) -> None:
        """An ACK for a 2xx travels end to end (RFC 3261 §16.11, §13.2.2.4): forwarded
        statelessly along the dialog with our Via and Max-Forwards − 1."""
        if req.headers.get("Max-Forwards") == "0":
            self._out.append(Event("ack dropped", {"call_id": req.call_id, "reason": "Max-Forwards 0"}))
            return
        try:
            process_routes(req, self.is_ours)
        except (UriError, ParseError):
            return
        call, dlg, frm = self.calls.find(req.call_id, req.from_tag, req.to_tag)
        if dlg is None:
            self._out.append(Event("ack dropped", {"call_id": req.call_id, "reason": "no dialog"}))
            return
        to = other_side(frm)  # type: ignore[arg-type]
        side = dlg.sides[to]
        ruri = side.target if to in call.masked and side.target else None
        hop = self._dialog_hop(side, req, ruri)
        if not isinstance(hop, Hop):
            self._out.append(Event("ack dropped", {"call_id": req.call_id, "reason": "party unreachable"}))
            return
        f = self._flow_for(hop)
        if f is None or f == "connect" or f == "resolve":
            self._out.append(Event("ack dropped", {"call_id": req.call_id, "reason": "party unreachable"}))
            return
        flow_out: Flow = f  # type: ignore[assignment]
        ip, port = self._egress_address(flow_out)
        fwd = branch_request(req, ruri=ruri, via=via_value(flow_out.transport, ip, port, new_branch(req), zone_token(hop.zone)))
        if side.route is not None:
            fwd.headers.remove("Route")
            for r in side.route:
                fwd.headers.add("Route", r)
        self._hide_request(call, fwd, frm, to, flow_out)

        def cont(m: Request | None) -> None:
            if m is not None:
                self._out.append(Send(flow_out, m, call.call_id))

        self._with_media(call, fwd, cont)

    # ================================================================ dialogs
    def _in_dialog(self, ctx: ResponseContext) -> None:
        """Route an in-dialog request by the dialog this node holds (issue 6 item 4):
        its party's flow, kept route set and Contact; 481 when no dialog matches."""
        req = ctx.req
        call, dlg, frm = self.calls.find(req.call_id, req.from_tag, req.to_tag)
        if dlg is None:
            self._out.append(Event("dialog not found", {"call_id": req.call_id, "method": req.method,
                                                        "src": f"{ctx.flow.remote[0]}:{ctx.flow.remote[1]}"}))
            self._respond(ctx, 481, "Call/Transaction Does Not Exist")
            return
        to = other_side(frm)  # type: ignore[arg-type]
        side = dlg.sides[to]
        ctx.call, ctx.dialog, ctx.from_side, ctx.to_side = call, dlg, frm, to
        call.expires = self._now + CALL_IDLE_S
        ruri = side.target if to in call.masked and side.target else None
        ctx.route_override = side.route
        if req.method in _TARGET_METHODS:
            contact = _contact_uri(req)
            if contact is not None:
                dlg.sides[frm].target = contact  # target refresh (RFC 3261 §12.2.2)
        hop = self._dialog_hop(side, req, ruri)
        lane = Lane(None, ruri)
        ctx.lanes = [lane]
        if isinstance(hop, Response):
            self._send_up(ctx, make_response(req, hop.status, hop.reason, to_tag=None,
                                             extra=[(n, v) for n, v in hop.headers] + [("Server", f"Edgeway/{self.role}")]))
            return
        if isinstance(hop, tuple):
            uri, zone, default_transport = hop
            qid = next(self._ids)
            self._pending[qid] = ("dialog", ctx, lane)
            lane.waiting = "dns"
            self._out.append(Resolve(qid, uri, zone, default_transport))
            return
        lane.hops = deque([hop])
        self._advance(ctx)

    def _dialog_hop(self, side: DialogSide, req: Request, ruri: str | None):
        """Where an in-dialog request toward ``side`` goes: a :class:`Hop` on its flow;
        the traversal zone's replacement connection; ``430 Flow Failed`` for a TLS party
        whose connection is gone (RFC 5626 §5.3); else the next hop URI (first Route,
        else its Contact) as a Hop, or ``(uri, zone, default transport)`` to resolve."""
        f = side.flow
        zone = side.zone
        if f is not None and f.conn_id:
            if f.conn_id in self.conns:
                return Hop(f.transport, f.remote[0], f.remote[1], zone, flow=f, origin="dialog")
            if self._is_traversal(zone):
                r = self._zone_flow(zone)
                return Hop(r.transport, r.remote[0], r.remote[1], zone, flow=r, origin="traversal") if r else self._zone_unavailable(zone)
            z = self.zones.get(zone)
            if f.transport == "tls" and not (z is not None and z.type == "dns"):
                # A TLS party (behind NAT, reachable only on its own connection): 430
                # upstream (RFC 5626 §5.3). A DNS zone's server is found again by DNS.
                self._out.append(Event("flow failed", {"call_id": req.call_id, "peer": f"{f.remote[0]}:{f.remote[1]}", "zone": zone}))
                return Response(430, "Flow Failed")
        if self._is_traversal(zone):
            r = self._zone_flow(zone)
            return Hop(r.transport, r.remote[0], r.remote[1], zone, flow=r, origin="traversal") if r else self._zone_unavailable(zone)
        routes = side.path
        try:
            text = str(parse_name_addr(routes[0]).uri) if routes else (side.target or ruri or req.uri)
            uri = parse_uri(text)
        except UriError:
            return Response(400, "Bad Request")
        transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")  # RFC 3263 §4.1 for an IP literal
        z = self.zones.get(zone)
        if not is_ip_literal(uri.host):
            return (uri, zone, z.default_transport if z is not None and z.type == "dns" else transport)
        port = uri.port or (5061 if transport == "tls" else 5060)
        origin = "dns" if z is not None and z.type == "dns" else ("neighbour" if z is not None and z.type == "neighbour" else "dialog")
        return Hop(transport, uri.host.strip("[]"), port, zone, origin=origin)

    def _setup_call(self, ctx: ResponseContext, call: Call, hop: Hop) -> None:
        """Decide, for the branch about to start, what the node hides and masks and
        create the call's media state (initial INVITE)."""
        call.b_zone = hop.zone
        a_trav, b_trav = self._is_traversal(call.a_zone), self._is_traversal(hop.zone)
        call.inside = ("a" if a_trav else "b") if self.role == "edge" and a_trav != b_trav else None
        call.masked = {call.inside} if call.inside else set()
        if call.method == "INVITE":
            if call.media is None:
                call.media = CallMedia(call.key, call.call_id, call.a_tag, call.a_zone, hop.zone)
            else:
                call.media.b_zone = hop.zone
            call.b2bua = self.planner.interworking(call.media)
            if call.b2bua:
                call.masked |= {"a", "b"}
                za, zb = self.zones.get(call.a_zone), self.zones.get(call.b_zone)
                call.preserve = bool(za and za.parameter_preservation and zb and zb.parameter_preservation)

    def _mask_contact(self, call: Call, side: str, msg: Request | Response, flow: Flow) -> str | None:
        """Replace the Contact of ``msg`` (from party ``side``) by one of ours reachable
        on ``flow``; returns the party's real Contact URI (str) or None."""
        token = call.contact_tokens.get(side)
        if token is None:
            token = secrets.token_hex(8)
            self.calls.add_token(call, side, token)
        ip, port = self._egress_address(flow)
        host = f"[{ip}]" if ":" in ip else ip
        got = b2bua.rewrite_contact(msg, f"{host}:{port}", flow.transport, preserve=call.preserve, token=token)
        return got[1] if got is not None else None

    def _rewrite_request(self, ctx: ResponseContext, call: Call, fwd: Request, hop: Hop, flow: Flow) -> None:
        frm = ctx.from_side or "a"
        to = ctx.to_side or "b"
        if ctx.initial and call.inside == "a":
            # Inside caller going outside: keep the inside's Record-Route entries back.
            rr = fwd.headers.get_all("Record-Route")
            if len(rr) > 1:
                fwd.headers.set("Record-Route", rr[0])
                ctx.hidden_rr_tail = rr[1:]
                call.a_route = rr[2:] if len(ctx.rr_ours) > 1 else rr[1:]
        self._hide_request(call, fwd, frm, to, flow)
        if call.b2bua and ctx.initial and fwd.method == "INVITE":
            if not call.preserve:
                b2bua.strip_ruri_params(fwd)
            b2bua.add_session_timer(fwd)

    def _hide_request(self, call: Call, fwd: Request, frm: str, to: str, flow: Flow) -> None:
        """Topology hiding and Contact masking of a request going from side ``frm`` to
        side ``to`` on ``flow``."""
        if call.inside is not None:
            if to != call.inside:
                hiding.keep_top_via(fwd)
                self._mask_identity(call, fwd)
                hiding.rewrite_warning_agents(fwd, self.public)
            else:
                self._unmask_identity(call, fwd)
        if frm in call.masked and fwd.method not in ("ACK", "CANCEL", "BYE"):
            original = self._mask_contact(call, frm, fwd, flow)
            if original is not None and frm == "a" and call.a_target is None:
                call.a_target = original

    def _mask_identity(self, call: Call, msg: Request | Response) -> None:
        """Toward the outside: the hidden Call-ID and the masked URI of the inside party."""
        inside = call.inside
        outside = other_side(inside)  # type: ignore[arg-type]
        if (inside == "a" and call.call_ids[outside] == call.call_ids[inside]
                and hiding.needs_mask(call.call_ids[inside], self.own_addresses)):
            hidden = hiding.masked_call_id(self.public)
            call.call_ids[outside] = hidden
            self.calls.index_call_id(call, hidden)
        msg.headers.set("Call-ID", call.call_ids[outside])
        mask = call.uri_masks.get(inside)
        if mask is None and inside == "a" and isinstance(msg, Request):
            try:
                uri = msg.from_.uri
            except UriError:
                uri = None
            new = hiding.masked_uri(uri, self.public) if uri is not None and hiding.needs_mask(uri.host, self.own_addresses) else None
            if new is not None:
                mask = call.uri_masks[inside] = (str(uri), str(new))
        if mask is not None:
            for name in ("From", "To"):
                hiding.swap_uri(msg, name, mask[0], mask[1])

    def _unmask_identity(self, call: Call, msg: Request | Response) -> None:
        inside = call.inside
        msg.headers.set("Call-ID", call.call_ids[inside])  # type: ignore[index]
        mask = call.uri_masks.get(inside)  # type: ignore[arg-type]
        if mask is not None:
            for name in ("From", "To"):
                hiding.swap_uri(msg, name, mask[1], mask[0])

    def _hide_response(self, ctx: ResponseContext, up: Response, b: Branch | None) -> None:
        """Topology hiding and Contact masking of a response going upstream."""
        call = ctx.call
        if call is None:
            if ctx.inward:
                hiding.rewrite_warning_agents(up, self.public)
                up.headers.remove("Server")
            return
        responder = ctx.to_side or "b"
        if call.inside == responder:
            hiding.rewrite_warning_agents(up, self.public)
            up.headers.remove("Server")  # the inside's software is not the outside's business
            if ctx.initial and ctx.rr_ours:
                rr = up.headers.get_all("Record-Route")
                i = hiding.find_entries(rr, ctx.rr_ours)
                up.headers.remove("Record-Route")
                if i is not None:
                    for v in rr[i + len(ctx.rr_ours) - 1:]:
                        up.headers.add("Record-Route", v)
        elif call.inside is not None and ctx.initial and ctx.hidden_rr_tail:
            rr = up.headers.get_all("Record-Route")
            if rr and rr[-1] == ctx.rr_ours[0]:
                for v in ctx.hidden_rr_tail:
                    up.headers.add("Record-Route", v)
        if responder in call.masked and b is not None:
            if ctx.req.method in _TARGET_METHODS and up.status >= 101:
                self._mask_contact(call, responder, up, ctx.flow)
            else:
                up.headers.remove("Contact")

    def _dialog_bookkeeping(self, ctx: ResponseContext, b: Branch, resp: Response) -> None:
        """Create or update the dialog a 1xx-with-tag or 2xx establishes, and take a
        target refresh from a 2xx to an in-dialog request."""
        call = ctx.call
        if not ctx.initial:
            if ctx.dialog is not None and ctx.req.method in _TARGET_METHODS and 200 <= resp.status < 300:
                contact = _contact_uri(resp)
                if contact is not None:
                    ctx.dialog.sides[ctx.to_side].target = contact
            return
        tag = resp.to_tag
        if tag is None:
            return
        dlg = call.dialogs.get(tag)
        contact = _contact_uri(resp)
        if dlg is None:
            rr = resp.headers.get_all("Record-Route")
            i = hiding.find_entries(rr, ctx.rr_ours)
            path_b = list(reversed(rr[:i])) if i is not None else []
            a = DialogSide(call.a_zone, call.a_flow, call.a_target, call.a_route, call.a_route if call.a_route is not None else call.a_path)
            bs = DialogSide(b.hop.zone, b.flow, contact, path_b if call.inside == "b" else None, path_b)
            dlg = Dialog(call, tag, a, bs)
            call.dialogs[tag] = dlg
        elif contact is not None:
            dlg.sides["b"].target = contact
        if 200 <= resp.status < 300:
            dlg.confirmed = True

    def _bye_done(self, ctx: ResponseContext, resp: Response) -> None:
        dlg = ctx.dialog
        if dlg is None:
            return
        call = dlg.call
        call.dialogs.pop(dlg.b_tag, None)
        if 200 <= resp.status < 300:
            self._out.append(Event("call disconnected", {"call_id": call.call_id, "reason": "bye"}))
        if not any(d.confirmed for d in call.dialogs.values()):
            self._end_call(call, "bye")

    def _end_call(self, call: Call, reason: str, *, release: bool = True) -> None:
        if call.ended:
            return
        self.calls.remove(call)
        call.dialogs = {}  # dialogs point back at the call: break the cycle
        if release and call.media is not None:
            self._out.append(ReleaseMedia(call.key, call.call_id, reason))

    def _clear_callee(self, b: Branch, resp: Response, reason: str, arrival: Flow | None = None) -> None:
        """Clear a call the callee answered but the caller does not have: ACK and BYE
        toward the callee along the 2xx's route (RFC 3261 §13.2.2.4, §15.1.1), on the
        branch's connection, else the one the 2xx came on, else the traversal zone's
        current one."""
        inv = b.request
        flow: Flow | None = b.flow
        if flow.conn_id and flow.conn_id not in self.conns:
            if arrival is not None and (not arrival.conn_id or arrival.conn_id in self.conns):
                flow = arrival
            else:
                flow = self._zone_flow(b.hop.zone) if self._is_traversal(b.hop.zone) else None
        self.stats["calls_cleared"] += 1
        self._out.append(Event("call cleared", {"call_id": inv.call_id, "reason": reason, "hop": str(b.hop), "zone": b.hop.zone}))
        call = b.ctx.call if b.ctx is not None else None
        if call is not None:
            call.dialogs.pop(resp.to_tag or "", None)
            if not any(d.confirmed for d in call.dialogs.values()):
                self._end_call(call, "cleared")
        if flow is None:
            return
        rr = resp.headers.get_all("Record-Route")
        ours = b.ctx.rr_ours if b.ctx is not None else ()
        i = hiding.find_entries(rr, ours)
        route = list(reversed(rr[:i])) if i is not None else []
        ip, port = self._egress_address(flow)
        zt = zone_token(b.hop.zone)
        ack = ack_for_2xx(inv, resp, via=str(via_value(flow.transport, ip, port, new_branch(inv), zt)), route=route)
        bye = bye_after_2xx(inv, resp, via=str(via_value(flow.transport, ip, port, new_branch(inv), zt)), route=route)
        if ack is None or bye is None:
            return
        bye.headers.add("Reason", 'SIP;cause=480;text="Call cleared by Edgeway"')
        self._out.append(Send(flow, ack))
        cb = Branch(None, b.hop, flow, bye)  # type: ignore[arg-type]
        tx = txn.ClientNonInviteTransaction(bye, flow.conn_id != 0, self.tx_timers, self._now)
        tx.tu = cb
        cb.tx = tx
        self.table.add(tx)
        self._client_actions(cb, tx.start(self._now))
