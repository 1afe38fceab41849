"""The asyncio driver of the proxy core (the aioquic ``asyncio/protocol.py`` pattern).

:class:`ProxyDriver` is the thin adapter between the node's transports and the sans-IO
:class:`~edgeway.proxy.core.ProxyCore`: it hands the core every message, connection end
and traversal zone change, carries out the actions the core returns (sends, RFC 3263
lookups, connects, relay port allocation and configuration, events) and keeps **one**
timer armed at the core's next deadline.

Overload (issue 6 item 7): while messages wait in the kernel, new INVITEs wait in a
bounded queue drained a batch per event-loop turn, after the messages of calls already
set up (in-dialog requests and responses are never queued or shed). An INVITE that finds the queue full, waited longer
than :data:`INVITE_QUEUE_MAX_AGE_S`, or arrives while the node is overloaded (its UDP
receive queue in the kernel stays more than :data:`OVERLOAD_BACKLOG` full: messages wait
there longer than the node takes to process them: more than
:data:`OVERLOAD_BACKLOG_BYTES` waiting) is answered ``503 Service
Unavailable`` with ``Retry-After`` instead of being left to time out.

The edge's connect guard lives here, in one place: an edge opens an outbound connection
only toward a hop chosen by one of its own DNS or neighbour zones; anything for a
traversal zone goes on the traversal connection or fails (DESIGN.md §8).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..config.models import NodeConfig
from ..diag.events import EventLog
from ..media.mux import MuxPair
from ..media.ports import PortAllocator, PortsExhausted
from ..media.relay import MediaRelay, RelaySession
from ..media.srtp import UNENCRYPTED_SRTCP_SUPPORTED, SrtpContext, SrtpError
from ..sip.message import ParseError, Request, Response, make_response
from ..sip.target import Hop
from ..transport.layer import Connection, Source, TransportError, TransportLayer
from .actions import AllocateMedia, Connect, Event, MediaCrypto, MediaRemote, ReleaseMedia, Resolve, Send
from ..security import flood
from .core import DEFAULT_ZONE, STATELESS_TAG, ProxyCore
from .media import PROBE_COUNT, PROBE_INTERVAL_S

__all__ = ["ProxyDriver", "RelaySessions", "MAX_QUEUED_INVITES", "INVITE_QUEUE_MAX_AGE_S", "connect_allowed"]

#: Seconds between two checks of the mux pairs' unknown-source drops (one ``media mux
#: unknown source`` event per period that had any: a flood costs one event per period).
MUX_REPORT_S = 10.0

#: New INVITEs waiting to be processed beyond which further ones get 503.
MAX_QUEUED_INVITES = 400
#: Seconds a new INVITE may wait in the queue before it gets 503 (the caller's Timer A
#: would already have retransmitted it: T1 = 0.5 s).
INVITE_QUEUE_MAX_AGE_S = 1.0
#: Bytes waiting in the kernel above which a new INVITE is queued rather than processed
#: at once (a few messages: below that there is nothing to prioritise over it).
QUEUE_AFTER_BACKLOG_BYTES = 16 * 1024
#: New INVITEs processed per event-loop turn.
DRAIN_BATCH = 32
#: Retry-After (seconds) of a 503 for load shedding.
RETRY_AFTER_S = 5
#: Bytes waiting in a UDP listener's kernel receive queue (kernel accounting: 1.3–2.3 KiB per
#: INVITE) above which the node sheds new INVITEs (~60–100 INVITEs: ~0.1 s of work), or
#: the fraction of that buffer, whichever comes first; and how often it is checked (s).
OVERLOAD_BACKLOG_BYTES = 128 * 1024
OVERLOAD_BACKLOG = 0.5
LOAD_CHECK_S = 0.05
#: To tags of the 503s of load shedding start with this (their ACKs are absorbed).
SHED_TAG = STATELESS_TAG

Resolver = Callable[[Any, str, str], Awaitable[list[Hop]]]


def connect_allowed(cfg: NodeConfig, hop: Hop) -> bool:
    """Whether this node may open a connection toward ``hop``: always on a core; on an
    edge only toward a hop one of its own DNS or neighbour zones chose (``origin``
    "dns"/"neighbour" and the hop's zone of that type). The edge never connects
    inward: traversal zones, dialog parties' addresses and Via addresses are refused."""
    if cfg.role != "edge":
        return True
    if hop.origin not in ("dns", "neighbour"):
        return False
    for z in cfg.zones:
        if z.name == hop.zone:
            return z.type == hop.origin
    return False


def _mux_load(p: MuxPair) -> int:
    return p.sessions


class RelaySessions:
    """The relay sessions of each call, by the core's call key (the media side of the
    driver): allocation, remote addresses, latch probes, SRTP keys, release."""

    def __init__(self, cfg: NodeConfig, relay: MediaRelay, events: EventLog):
        m = cfg.media
        self.relay = relay
        self.events = events
        ip = m.ip or cfg.sip.listen_ip
        mux = cfg.role == "edge" and m.traversal_mux
        #: The edge's multiplexed traversal pairs (seed 002 §7.2), bound at start.
        self.muxes: list[MuxPair] = []
        if mux:
            try:
                for port in m.mux_rtp_ports():
                    self.muxes.append(MuxPair(ip, port))
            except OSError as exc:
                for p in self.muxes:
                    p.close()
                raise OSError(exc.errno, f"media.traversal_mux: cannot bind {ip}:{port}/{port + 1}: {exc.strerror}") from exc
            for p in self.muxes:
                relay.attach_mux(p)
            events.emit("media mux", ip=ip, ports=[(p.rtp_port, p.rtcp_port) for p in self.muxes],
                        relay_range=list(m.relay_range(True)))
        self._mux_seen = [0] * len(self.muxes)
        self._mux_handle = relay.loop.call_later(MUX_REPORT_S, self._mux_tick) if self.muxes else None
        self.alloc = PortAllocator(ip, *m.relay_range(mux))
        relay.warm(self.alloc)  # bound pairs ready before the first call (the relay keeps the pool)
        self.calls: dict[int, dict[int, RelaySession]] = {}
        self.call_ids: dict[int, str] = {}

    def report_mux(self) -> None:
        """Emit ``media mux unknown source`` for each mux pair that dropped datagrams
        from sources no call's SDP named since the last report (never relayed: a
        misrouted core, NAT between core and edge, or a scan/injection attempt)."""
        for i, p in enumerate(self.muxes):
            rtp, rtcp = p.rtp_table, p.rtcp_table
            total = rtp.unknown + rtcp.unknown
            if total != self._mux_seen[i]:
                self.events.emit("media mux unknown source", ip=p.ip, port=p.rtp_port, dropped=total - self._mux_seen[i],
                                 dropped_total=total, rtp=rtp.unknown, rtcp=rtcp.unknown, held_then_replayed=rtp.replayed + rtcp.replayed)
                self._mux_seen[i] = total

    def _mux_tick(self) -> None:
        self.report_mux()
        self._mux_handle = self.relay.loop.call_later(MUX_REPORT_S, self._mux_tick)

    def _mux(self, wanted: bool) -> MuxPair | None:
        """The least-loaded mux pair for a new stream (None: not wanted or none)."""
        if not wanted or not self.muxes:
            return None
        return min(self.muxes, key=_mux_load)

    def allocate(self, a: AllocateMedia) -> dict[int, tuple[int, int]]:
        """Open one session per stream; raises PortsExhausted/OSError (nothing leaked)."""
        streams = self.calls.setdefault(a.call_key, {})
        self.call_ids[a.call_key] = a.label
        out: dict[int, tuple[int, int]] = {}
        opened: list[RelaySession] = []
        try:
            for i in a.streams:
                s = self.relay.open_session(self.alloc, self.alloc, a_latch_only=a.latch_a, b_latch_only=a.latch_b,
                                            label=f"{a.label}/{i}", a_mux=self._mux(a.mux_a), b_mux=self._mux(a.mux_b))
                opened.append(s)
                streams[i] = s
                out[i] = (s.local("a").rtp_port, s.local("b").rtp_port)
        except BaseException:
            for s in opened:
                s.close("error")
            raise
        return out

    def _session(self, call_key: int, index: int) -> RelaySession | None:
        s = self.calls.get(call_key, {}).get(index)
        return s if s is not None and not s.closed else None

    def remote(self, a: MediaRemote) -> None:
        s = self._session(a.call_key, a.index)
        if s is None:
            return
        s.set_remote(a.side, a.ip, a.rtp_port, a.rtcp_port)  # type: ignore[arg-type]
        if a.probe:
            s.start_probing(a.side, PROBE_INTERVAL_S, PROBE_COUNT)  # type: ignore[arg-type]

    def crypto(self, a: MediaCrypto) -> None:
        s = self._session(a.call_key, a.index)
        if s is None:
            return
        try:
            s.set_crypto(a.side, inbound=SrtpContext.from_crypto(a.inbound, "inbound"),  # type: ignore[arg-type]
                         outbound=SrtpContext.from_crypto(a.outbound, "outbound"))
        except SrtpError as exc:
            self.events.emit("srtp interworking failed", call_id=self.call_ids.get(a.call_key), stream=a.index, error=str(exc))

    def release(self, call_key: int, call_id: str, reason: str) -> None:
        self.call_ids.pop(call_key, None)
        for s in self.calls.pop(call_key, {}).values():
            if not s.closed:
                self.events.emit("media closed", call_id=call_id, reason=reason, session=s.label, stats=s.stats())
                s.close(reason)

    def __len__(self) -> int:
        return len(self.calls)

    def close(self) -> None:
        if self._mux_handle is not None:
            self._mux_handle.cancel()
            self._mux_handle = None
            self.report_mux()
        for key in list(self.calls):
            self.release(key, self.call_ids.get(key, ""), "shutdown")


class ProxyDriver:
    """Runs a :class:`ProxyCore` on the event loop.

    ``cfg`` node configuration; ``tl`` its transport layer; ``relay`` its media relay;
    ``events`` its event log; ``resolver`` ``async (uri, default_transport, zone) ->
    list[Hop]`` for DNS zones (None: every lookup answers nothing).
    """

    def __init__(self, cfg: NodeConfig, tl: TransportLayer, relay: MediaRelay, events: EventLog,
                 resolver: Resolver | None = None):
        self.cfg = cfg
        self.tl = tl
        self.events = events
        self.resolver = resolver
        self.core = ProxyCore(cfg, unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED)
        #: Per-source flood control (the core's table: it also withholds retransmissions).
        self.sources = self.core.sources
        self._prechecked: str | None = None
        #: Called with the source address of a request that failed digest
        #: authentication (the node wires it to intrusion protection).
        self.on_auth_failure: Callable[[str], None] = lambda ip: None
        #: A running diagnostic capture (:class:`edgeway.diag.capture.Capture`): every SIP
        #: message received and sent, in clear; None when none runs.
        self.capture: Any = None
        if self.sources.rate:
            tl.udp_drop = self.udp_drop
        self.media = RelaySessions(cfg, relay, events)
        relay.on_closed = self._session_closed
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self._invites: deque[tuple[Request, Source, float]] = deque()
        self._draining = False
        self._closed = False
        self.shed = 0
        self.overloaded = False
        self._load_handle = self.loop.call_later(LOAD_CHECK_S, self._check_load)

    def _check_load(self) -> None:
        q = self._invites
        queued, fraction = self.tl.udp_backlog()
        self.overloaded = (queued > OVERLOAD_BACKLOG_BYTES or fraction > OVERLOAD_BACKLOG
                           or bool(q and self.loop.time() - q[0][2] > INVITE_QUEUE_MAX_AGE_S / 2))
        if not self._closed:
            self._load_handle = self.loop.call_later(LOAD_CHECK_S, self._check_load)

    # ------------------------------------------------------------ inbound
    def receive(self, msg: Request | Response, src: Source) -> None:
        """A message from the transport (after the traversal link took its own)."""
        if self.capture is not None:
            self.capture.message(msg.to_bytes(), (src.ip, src.port), (src.local_ip, src.local_port))
        if self.events.sip_messages:
            self._log("in", msg, src.transport, src.ip, src.port, msg.call_id)
        if type(msg) is Request:
            method = msg.method
            conn = src.conn
            if self._prechecked is not None and conn is None and self._prechecked == src.ip:
                self._prechecked = None  # counted by udp_drop before parsing
            elif (conn is None or conn.zone is None) and self.sources.rate:
                if self.core.classify_source(src.ip) == DEFAULT_ZONE:
                    verdict = self.sources.check(src.ip, self.loop.time())
                    if verdict is not flood.OK:
                        self._flooded(msg, src, verdict)
                        return
            if method == "ACK" and (msg.to_tag or "").startswith(SHED_TAG):
                return  # the ACK of a 503 of load shedding
        else:
            method = ""
        if method == "INVITE" and "tag=" not in (msg.headers.get("To") or ""):
            if self.overloaded or len(self._invites) >= MAX_QUEUED_INVITES:
                self._shed(msg, src, "overloaded" if self.overloaded else "queue full")
                return
            if self._invites or self.tl.udp_backlog()[0] > QUEUE_AFTER_BACKLOG_BYTES:
                # Messages are waiting: new calls wait their turn behind calls in progress.
                self._invites.append((msg, src, self.loop.time()))
                if not self._draining:
                    self._draining = True
                    self.loop.call_soon(self._drain)
                return
        zone = src.conn.zone if src.conn is not None else None
        self._run(self.core.receive(msg, src.flow, self.loop.time(), zone))

    def _drain(self) -> None:
        self._draining = False
        q = self._invites
        now = self.loop.time()
        for _ in range(min(DRAIN_BATCH, len(q))):
            msg, src, t = q.popleft()
            if now - t > INVITE_QUEUE_MAX_AGE_S:
                self._shed(msg, src, f"waited {now - t:.2f} s")
                continue
            zone = src.conn.zone if src.conn is not None else None
            self._run(self.core.receive(msg, src.flow, now, zone))
        if q and not self._closed:
            self._draining = True
            self.loop.call_soon(self._drain)

    def udp_drop(self, data: bytes, ip: str) -> bool:
        """The transport's pre-parse filter (``TransportLayer.udp_drop``): a request from
        a source in an over-limit episode or blocked is counted and dropped without
        being parsed (a flood costs a dict lookup per datagram, not a parse); responses
        and everyone else pass."""
        sources = self.sources
        now = self.loop.time()
        if not sources.over_limit(ip, now) or data.startswith(b"SIP/2.0 "):
            return False
        verdict = sources.check(ip, now)
        if verdict is flood.OK:
            self._prechecked = ip  # receive() must not count it twice
            return False
        if verdict is flood.BLOCK:
            self.events.emit("source blocked", source=ip, transport="udp", seconds=sources.block_s,
                             reason=f"over {sources.rate:g} requests/s for {sources.block_after_s:g} s")
        return True

    def _flooded(self, msg: Request, src: Source, verdict: str) -> None:
        """A request from a DefaultZone source over its flood limit (issue 7 item 3):
        the first of an episode gets 503 + Retry-After; later ones are dropped on UDP
        (no response toward a spoofable source) and refused 503 on a connection; a
        source blocked is reported once and its connection closed."""
        conn = src.conn
        if verdict == flood.LIMIT:
            self.events.emit("flood limit", source=src.ip, transport=src.transport, call_id=msg.call_id,
                             limit_per_s=self.sources.rate, burst=self.sources.burst)
        elif verdict == flood.BLOCK:
            self.events.emit("source blocked", source=src.ip, transport=src.transport, seconds=self.sources.block_s,
                             reason=f"over {self.sources.rate:g} requests/s for {self.sources.block_after_s:g} s")
        if verdict in (flood.BLOCK, flood.BLOCKED):
            if conn is not None:
                conn.attrs["close_reason"] = "source blocked (flood control)"
                conn.abort()
            return
        if msg.method == "ACK" or (verdict == flood.DROP and conn is None):
            return
        resp = make_response(msg, 503, "Service Unavailable", to_tag=SHED_TAG + secrets.token_hex(4),
                             extra=[("Retry-After", str(RETRY_AFTER_S)), ("Server", f"Edgeway/{self.cfg.role}")])
        self._run(self.core.stateless_response(resp, src.flow, self.loop.time(), None))

    def _shed(self, msg: Request, src: Source, why: str) -> None:
        """Answer a new INVITE 503 + Retry-After without processing it (load shedding)."""
        self.shed += 1
        if self.shed == 1 or self.shed % 100 == 0:
            self.events.emit("load shed", call_id=msg.call_id, reason=why, total=self.shed)
        resp = make_response(msg, 503, "Service Unavailable", to_tag=SHED_TAG + secrets.token_hex(4),
                             extra=[("Retry-After", str(RETRY_AFTER_S)), ("Server", f"Edgeway/{self.cfg.role}")])
        self._run(self.core.stateless_response(resp, src.flow, self.loop.time(), src.conn.zone if src.conn else None))

    def bad_message(self, exc: ParseError, src: Source) -> None:
        self._run(self.core.bad_message(exc, src.flow, self.loop.time()))

    def connection_closed(self, conn: Connection) -> None:
        self._run(self.core.flow_closed(conn.flow, self.loop.time(), conn.attrs.get("close_reason", "connection closed")))

    def zone_changed(self, zone: str, conns: list[Connection]) -> None:
        self._run(self.core.zone_changed(zone, [c.flow for c in conns], self.loop.time()))

    def _session_closed(self, session: RelaySession, reason: str) -> None:
        if reason != "inactivity":
            return
        for key, streams in list(self.media.calls.items()):
            if any(s is session for s in streams.values()):
                call_id = self.media.call_ids.get(key, "")
                self.events.emit("media closed", call_id=call_id, reason=reason, session=session.label, stats=session.stats())
                if all(s.closed for s in streams.values()):
                    self.media.calls.pop(key, None)
                    self.media.call_ids.pop(key, None)
                    self._run(self.core.call_media_closed(key, self.loop.time()))
                return

    # ------------------------------------------------------------ actions
    def _run(self, actions: list) -> None:
        q = deque(actions)
        while q:
            a = q.popleft()
            t = type(a)
            if t is Send:
                self._send(a)
            elif t is Event:
                self.events.emit(a.name, **a.fields)
                if a.name == "sip authentication failed":
                    self.on_auth_failure(a.fields["source"])
            elif t is AllocateMedia:
                try:
                    ports = self.media.allocate(a)
                except (PortsExhausted, OSError) as exc:
                    q.extend(self.core.media_ready(a.alloc_id, None, str(exc) or type(exc).__name__, self.loop.time()))
                else:
                    q.extend(self.core.media_ready(a.alloc_id, ports, "", self.loop.time()))
            elif t is MediaRemote:
                self.media.remote(a)
            elif t is MediaCrypto:
                self.media.crypto(a)
            elif t is ReleaseMedia:
                self.media.release(a.call_key, a.call_id, a.reason)
            elif t is Connect:
                self._spawn(self._connect(a))
            elif t is Resolve:
                self._spawn(self._resolve(a))
        self._arm()

    def _send(self, a: Send) -> None:
        msg = a.message
        flow = a.flow
        data = msg.to_bytes()
        if self.capture is not None:
            self.capture.message(data, flow.local, flow.remote)
        try:
            self.tl.send(flow, data)
        except (TransportError, OSError) as exc:
            self.events.emit("send failed", call_id=msg.call_id, peer=f"{flow.remote[0]}:{flow.remote[1]}", cause=str(exc))
            return
        if self.events.sip_messages:
            self._log("out", msg, flow.transport, flow.remote[0], flow.remote[1], a.log_call_id or msg.call_id)

    def _log(self, direction: str, msg: Request | Response, transport: str, ip: str, port: int, call_id: str) -> None:
        line = msg.start_line() if type(msg) is Response else f"{msg.method} {msg.uri}"
        self.events.sip_message(direction, transport, f"{ip}:{port}", call_id, line, msg.headers.get("CSeq"))

    def _arm(self) -> None:
        d = self.core.next_deadline()
        if d is None or self._closed:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= d:
                return
            self._timer.cancel()
        self._timer_at = d
        self._timer = self.loop.call_at(d, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self._run(self.core.timers(self.loop.time()))

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.events.emit("internal error", where="proxy driver task", error=repr(task.exception()))

    async def _connect(self, a: Connect) -> None:
        hop = a.hop
        if not connect_allowed(self.cfg, hop):
            cause = f"the edge does not open connections to {hop.ip}:{hop.port} ({hop.origin} of zone {hop.zone})"
            self.events.emit("connect refused", peer=f"{hop.ip}:{hop.port}", zone=hop.zone, origin=hop.origin, cause=cause)
            self._run(self.core.connected(a.connect_id, None, cause, self.loop.time()))
            return
        ssl_ctx = self.tl.client_ssl if hop.transport == "tls" else None
        try:
            conn = await self.tl.connect(hop.transport, hop.ip, hop.port, local_ip=self.cfg.sip.listen_ip, ssl_ctx=ssl_ctx,
                                         verify_name=hop.verify_name, zone=hop.zone)
        except TransportError as exc:
            self.events.emit("next hop failed", hop=str(hop), zone=hop.zone, cause=str(exc))
            self._run(self.core.connected(a.connect_id, None, str(exc), self.loop.time()))
            return
        self._run(self.core.connected(a.connect_id, conn.flow, "", self.loop.time()))

    async def _resolve(self, a: Resolve) -> None:
        hops: list[Hop] = []
        if self.resolver is not None:
            try:
                hops = await self.resolver(a.uri, a.default_transport, a.zone)
            except Exception as exc:  # noqa: BLE001 - a lookup failure is an empty answer
                self.events.emit("dns failed", host=a.uri.host, zone=a.zone, cause=str(exc) or type(exc).__name__)
        self._run(self.core.resolved(a.query_id, hops, self.loop.time()))

    # ------------------------------------------------------------ shutdown
    async def close(self) -> None:
        self._closed = True
        self._load_handle.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.media.close()
