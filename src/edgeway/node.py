"""One Edgeway node (edge or core) assembled from its configuration.

Starts the SIP listeners (UDP, TCP, TLS, mutual TLS), the traversal server listener
(edge) or traversal client links (core), the media relay and the proxy, wires them into
one explicit inbound chain and stops them all on :meth:`Node.close`::

    transport ─▶ TLS checks (traversal identity, classification by TLS identity)
              ─▶ traversal link (authentication, keepalive probes)
              ─▶ proxy driver ─▶ sans-IO proxy core
"""

from __future__ import annotations

import asyncio

from .config.models import DnsZone, NodeConfig
from .diag.control import ControlServer
from .diag.events import FLUSH_INTERVAL_S, EventLog
from .media.relay import MediaRelay
from .proxy.driver import ProxyDriver
from .routing.zones import classify_by_tls_identity
from .security.intrusion import Category, IntrusionProtection
from .security.tls import client_context, server_context
from .sip.message import ParseError, Request, Response
from .sip.target import Hop
from .transport.admission import ConnectionLimits, plan_fds, raise_fd_limit
from .transport.layer import Connection, Source, TransportLayer
from .traversal.link import TRAVERSAL_LISTENER, Traversal

__all__ = ["Node", "MTLS_LISTENER"]

#: Relay port pairs a node keeps bound ahead of calls (two per stream per call; refilled
#: in the background, see :class:`~edgeway.media.ports.PortAllocator`).
MEDIA_POOL_PAIRS = 64
#: Listener name of the mutual-TLS SIP port (5062).
MTLS_LISTENER = "mtls"


class Node:
    """A running node. ``await start()`` binds every listener; ``await close()``
    releases every socket and task it opened."""

    def __init__(self, cfg: NodeConfig, events: EventLog | None = None):
        self.cfg = cfg
        log = cfg.log
        self.events = events or EventLog(cfg.name, log.file, sip_messages=log.sip_messages, max_bytes=log.max_bytes,
                                         backup_count=log.backup_count, max_events_per_s=log.max_events_per_s)
        self.tl = TransportLayer(self.events)
        self.relay: MediaRelay | None = None
        self.proxy: ProxyDriver | None = None
        self.traversal: Traversal | None = None
        self.resolver = None
        #: The MRA HTTPS proxy (:class:`~edgeway.mra.edge.EdgeMra` or
        #: :class:`~edgeway.mra.core.CoreMra`) when ``mra.enabled``.
        self.mra = None
        self._flush_handle: asyncio.TimerHandle | None = None
        #: Automated intrusion protection (None when off): see :meth:`_intrusion_protection`.
        self.intrusion: IntrusionProtection | None = None
        #: The local control socket (``[control] socket``), or None.
        self.control: ControlServer | None = None

    async def _resolve(self, uri, default_transport: str, zone: str) -> list[Hop]:
        """RFC 3263 targets of ``uri`` for DNS zone ``zone`` (or the zone a dialog party
        is in), through the node's own DNS servers only."""
        from .routing.resolver import resolve

        if self.resolver is None:
            return []
        z = next((z for z in self.cfg.zones if z.name == zone), None)
        dns_zone = isinstance(z, DnsZone)
        override = z.dns_request_domain if dns_zone and z.modify_dns_request else None
        verify = z.tls_verify_subject_name if dns_zone and z.tls_verify_mode else None
        trace: list = []
        targets = await resolve(uri.host, uri.port, uri.transport, uri.scheme == "sips", self.resolver,
                                default_transport=default_transport, srv_override_domain=override, trace=trace)
        self.events.emit("dns resolved", host=override or uri.host, zone=zone, modify_dns_request=bool(override),
                         queries=[f"{n} {t}: {o}" for n, t, o in trace],
                         targets=[f"{t.transport}:{t.host}:{t.port}" for t in targets])
        origin = "dns" if dns_zone else "dialog"
        return [Hop(t.transport, t.host, t.port, zone, origin=origin, verify_name=verify if t.transport == "tls" else None)
                for t in targets]

    def _intrusion_protection(self) -> None:
        """Automated intrusion protection (seed 002 §10.9): on by default on an edge, off
        on a core (the seed's recommendation). Bans are enforced by the transport at
        accept time and before a datagram is parsed."""
        ip_cfg = self.cfg.intrusion_protection
        if not (ip_cfg.enabled if ip_cfg.enabled is not None else self.cfg.role == "edge"):
            return
        cats = {name: Category(c.enabled, c.trigger_level, c.detection_window_s, c.ban_s)
                for name, c in ip_cfg.categories.items()}
        self.intrusion = IntrusionProtection(cats, exempt=ip_cfg.exempt)
        loop = asyncio.get_running_loop()
        self.tl.source_blocked = lambda ip: self.intrusion.refuse(ip, loop.time())
        self.traversal.on_auth_failure = lambda ip: self.intrusion_failure("traversal_authentication_failure", ip)
        self.proxy.on_auth_failure = lambda ip: self.intrusion_failure("sip_authentication_failure", ip)

    def _maintenance(self, req: dict) -> dict:
        """Control command ``maintenance``: ``{"on": true|false}`` switches maintenance mode
        (seed 002 §16: new calls, registrations and MRA requests refused 503, what is under
        way continues); without ``on`` it only reports. Returns ``{"maintenance": bool}``."""
        if "on" in req:
            on = bool(req["on"])
            if self.proxy is not None and self.proxy.core.maintenance != on:
                self.events.emit("maintenance mode", on=on)
            if self.proxy is not None:
                self.proxy.core.maintenance = on
            if self.mra is not None and hasattr(self.mra, "maintenance"):
                self.mra.maintenance = on
        return {"maintenance": bool(self.proxy and self.proxy.core.maintenance)}

    def intrusion_failure(self, category: str, ip: str) -> None:
        """Count one failure of ``category`` from ``ip``; report a resulting ban once."""
        if self.intrusion is None:
            return
        now = asyncio.get_running_loop().time()
        if self.intrusion.failure(category, ip, now):
            [ban] = [b for b in self.intrusion.blocked_list(now) if b["address"] == ip]
            self.events.emit("source blocked", source=ip, category=category, failures=ban["failures"],
                             seconds=ban["seconds_left"], reason="intrusion protection")

    async def start(self) -> None:
        cfg = self.cfg
        s = cfg.sip
        t = cfg.tls
        loop = asyncio.get_running_loop()
        self._admission_limits()
        client_ssl = None
        if t.cert_file and t.key_file:
            client_ssl = client_context(t.cert_file, t.key_file, t.ca_file, min_version=t.min_version)
            self.tl.client_ssl = client_ssl
        self.relay = MediaRelay(loop, inactivity_timeout_s=cfg.media.inactivity_timeout_s, pool_size=MEDIA_POOL_PAIRS)
        if cfg.dns.servers:
            from .routing.resolver import make_resolver

            self.resolver = make_resolver(cfg.dns.nameservers, cfg.dns.timeout_s)
        self.proxy = ProxyDriver(cfg, self.tl, self.relay, self.events, self._resolve)
        self.traversal = Traversal(cfg, self.tl, self.events, client_ssl)
        self.traversal.on_zone_change = self.proxy.zone_changed
        self._intrusion_protection()
        if cfg.control.socket:
            self.control = ControlServer(cfg.control.socket, {
                "blocked": lambda req: {"blocked": self.intrusion.blocked_list(loop.time()) if self.intrusion else [],
                                        "intrusion_protection": self.intrusion is not None},
                "unblock": lambda req: {"unblocked": bool(self.intrusion and self.intrusion.unblock(str(req.get("address"))))},
                "maintenance": self._maintenance,
            })
            await self.control.start()
        self._wire_inbound_chain()
        if s.udp_port:
            await self.tl.listen_udp(s.listen_ip, s.udp_port)
        if s.tcp_port:
            await self.tl.listen_stream(s.listen_ip, s.tcp_port)
        if s.tls_port and t.cert_file and t.key_file:
            ctx = server_context(t.cert_file, t.key_file, t.ca_file, min_version=t.min_version)
            await self.tl.listen_stream(s.listen_ip, s.tls_port, tls=ctx)
        if s.mtls_enabled:
            if not (t.cert_file and t.key_file and t.ca_file):
                raise RuntimeError("sip.mtls_enabled needs tls.cert_file, tls.key_file and tls.ca_file")
            mtls = server_context(t.cert_file, t.key_file, t.ca_file, require_client_cert=True, min_version=t.min_version)
            await self.tl.listen_stream(s.listen_ip, s.mtls_port, tls=mtls, listener=MTLS_LISTENER)
        for z in cfg.zones:
            if z.type == "traversal_server":
                if not (t.cert_file and t.key_file and t.ca_file):
                    raise RuntimeError(f"zone {z.name!r}: a traversal server needs tls.cert_file, tls.key_file and tls.ca_file")
                mtls = server_context(t.cert_file, t.key_file, t.ca_file, require_client_cert=True, min_version=t.min_version)
                # The core's connections must always get in: not counted against the
                # caps, their descriptors come from the reserve (issue 7 item 1).
                await self.tl.listen_stream(s.listen_ip, z.port, tls=mtls, listener=TRAVERSAL_LISTENER, limited=False)
        self.traversal.start()
        if cfg.mra.enabled:
            await self._start_mra(client_ssl)
        self._flush_handle = loop.call_later(FLUSH_INTERVAL_S, self._flush_events)
        self.events.emit("node started", role=cfg.role, listen_ip=s.listen_ip, udp=s.udp_port, tcp=s.tcp_port, tls=s.tls_port)

    async def _start_mra(self, client_ssl) -> None:
        """MRA HTTPS proxy (issue 9): the edge's HTTPS and tunnel listeners, or the core's
        tunnel connections and request handler."""
        if self.cfg.role == "edge":
            from .mra.edge import EdgeMra

            self.mra = EdgeMra(self.cfg, self.events)
            if self.intrusion is not None:
                intrusion, loop = self.intrusion, asyncio.get_running_loop()
                self.mra.source_blocked = lambda ip: intrusion.refuse(ip, loop.time())
                self.mra.on_http_failure = self.intrusion_failure
        else:
            from .mra.core import CoreMra

            self.mra = CoreMra(self.cfg, self.events, client_ssl)
        await self.mra.start()

    def _admission_limits(self) -> None:
        """Raise the descriptor limit to the hard limit, share it out
        (:func:`~edgeway.transport.admission.plan_fds`: connections vs. the reserve for
        media, traversal and outbound connections) and give the transport its
        connection limits; one ``connection limits`` event says what was decided."""
        lim = self.cfg.limits
        before, soft, hard = raise_fd_limit()
        media_ports = self.cfg.media.port_max - self.cfg.media.port_min + 1
        plan = plan_fds(soft, media_ports, reserved_fds=lim.reserved_fds, max_connections=lim.max_connections)
        self.tl.limits = ConnectionLimits(
            max_connections=plan.max_connections,
            max_connections_per_source=lim.max_connections_per_source,
            tls_handshake_timeout_s=lim.tls_handshake_timeout_s,
            pre_message_idle_s=lim.pre_message_idle_s,
            flow_idle_s=lim.flow_idle_s,
        )
        self.events.emit(
            "connection limits", fd_soft_before=before, fd_soft=soft, fd_hard=hard,
            reserved_fds=plan.reserved_fds, reserved_fixed=plan.fixed_fds, reserved_media=plan.media_fds,
            max_connections=plan.max_connections, max_connections_configured=lim.max_connections,
            max_connections_clamped=plan.clamped, max_connections_per_source=lim.max_connections_per_source,
            tls_handshake_timeout_s=lim.tls_handshake_timeout_s, pre_message_idle_s=lim.pre_message_idle_s,
            flow_idle_s=lim.flow_idle_s,
        )

    # ------------------------------------------------------------ inbound chain
    def _wire_inbound_chain(self) -> None:
        self.tl.on_tls_established = self._tls_established
        self.tl.on_message = self._inbound
        self.tl.on_bad_message = self._inbound_bad
        self.tl.on_connection_closed = self._connection_closed

    def _tls_established(self, conn: Connection) -> bool:
        """Traversal identity check, then classification by TLS identity (seed 003 §3.2):
        an inbound connection whose certificate carries a DNS zone's TLS verify subject
        name (CN or DNS SAN, first match) belongs to that zone; otherwise its requests
        fall to DefaultZone."""
        assert self.traversal is not None
        if not self.traversal.check_peer(conn):
            return False
        if not conn.outbound and conn.listener != TRAVERSAL_LISTENER and conn.peer_names:
            got = classify_by_tls_identity(self.cfg, conn.peer_names)
            if got.zone is not None:
                conn.zone = got.zone
            self.events.emit("tls classified", peer=f"{conn.remote[0]}:{conn.remote[1]}", listener=conn.listener,
                             zone=got.zone or "DefaultZone", matched_identity=got.identity,
                             candidates="".join(got.candidates))
        return True

    def _inbound(self, msg: Request | Response, src: Source) -> None:
        assert self.traversal is not None and self.proxy is not None
        if src.conn is not None and src.conn.listener == TRAVERSAL_LISTENER:
            if type(msg) is Request:
                if self.traversal.intercept_request(msg, src):
                    return
            elif self.traversal.intercept_response(msg, src):
                return
        self.proxy.receive(msg, src)

    def _inbound_bad(self, exc: ParseError, src: Source) -> None:
        assert self.proxy is not None
        self.proxy.bad_message(exc, src)

    def _connection_closed(self, conn: Connection) -> None:
        assert self.traversal is not None and self.proxy is not None
        self.traversal.connection_closed(conn)
        self.proxy.connection_closed(conn)

    def _flush_events(self) -> None:
        """Flush the event log on its period, so that lines reach the file while idle."""
        self.events.flush()
        self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self._flush_events)

    async def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self.control is not None:
            await self.control.close()
        if self.mra is not None:
            await self.mra.close()
        if self.traversal:
            await self.traversal.close()
        if self.proxy:
            await self.proxy.close()
        await self.tl.close()
        if self.relay is not None:  # not "if self.relay": a relay with no session is falsy (__len__)
            self.relay.close()
        self.events.emit("node stopped")
        self.events.close()  # the node owns its event log, whoever opened it
