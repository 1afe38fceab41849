"""One Edgeway node (edge or core) assembled from its configuration.

Starts the SIP listeners (UDP, TCP, TLS), the traversal server listener (edge,
mutual TLS) or traversal client links (core), the media relay and the proxy, and
stops them all on :meth:`Node.close`.
"""

from __future__ import annotations

import asyncio

from .config.models import DnsZone, NodeConfig
from .diag.events import EventLog
from .media.relay import MediaRelay
from .proxy.core import Hop, Proxy
from .proxy.media import MediaAnchor
from .routing.zones import classify_by_tls_identity
from .security.tls import client_context, server_context
from .transport.layer import TransportLayer
from .traversal.link import TRAVERSAL_LISTENER, Traversal

__all__ = ["Node", "MTLS_LISTENER"]

#: Listener name of the mutual-TLS SIP port (5062).
MTLS_LISTENER = "mtls"


class Node:
    """A running node. ``await start()`` binds every listener; ``await close()``
    releases every socket and task it opened."""

    def __init__(self, cfg: NodeConfig, events: EventLog | None = None):
        self.cfg = cfg
        self.events = events or EventLog(cfg.name, cfg.log.file, sip_messages=cfg.log.sip_messages)
        self.tl = TransportLayer(self.events)
        self.relay: MediaRelay | None = None
        self.proxy: Proxy | None = None
        self.traversal: Traversal | None = None
        self.resolver = None

    async def _resolve(self, uri, default_transport: str, zone: str) -> list[Hop]:
        from .routing.resolver import resolve

        if self.resolver is None:
            return []
        z = next((z for z in self.cfg.zones if z.name == zone), None)
        override = z.dns_request_domain if isinstance(z, DnsZone) and z.modify_dns_request else None
        verify = z.tls_verify_subject_name if isinstance(z, DnsZone) and z.tls_verify_mode else None
        trace: list = []
        targets = await resolve(uri.host, uri.port, uri.transport, uri.scheme == "sips", self.resolver,
                                default_transport=default_transport, srv_override_domain=override, trace=trace)
        self.events.emit("dns resolved", host=override or uri.host, zone=zone, modify_dns_request=bool(override),
                         queries=[f"{n} {t}: {o}" for n, t, o in trace],
                         targets=[f"{t.transport}:{t.host}:{t.port}" for t in targets])
        return [Hop(t.transport, t.host, t.port, zone, verify_name=verify if t.transport == "tls" else None) for t in targets]

    async def start(self) -> None:
        cfg = self.cfg
        s = cfg.sip
        t = cfg.tls
        loop = asyncio.get_running_loop()
        client_ssl = None
        if t.cert_file and t.key_file:
            client_ssl = client_context(t.cert_file, t.key_file, t.ca_file, min_version=t.min_version)
            self.tl.client_ssl = client_ssl
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
                await self.tl.listen_stream(s.listen_ip, z.port, tls=mtls, listener=TRAVERSAL_LISTENER)
        self.relay = MediaRelay(loop, inactivity_timeout_s=cfg.media.inactivity_timeout_s)
        anchor = MediaAnchor(cfg, self.relay, self.events)
        if cfg.dns.servers:
            from .routing.resolver import make_resolver

            self.resolver = make_resolver(cfg.dns.nameservers, cfg.dns.timeout_s)
        self.proxy = Proxy(cfg, self.tl, anchor, self.events, self._resolve)
        self.traversal = Traversal(cfg, self.tl, self.proxy, self.events, client_ssl)
        self._install_tls_classification()
        self.traversal.start()
        self.events.emit("node started", role=cfg.role, listen_ip=s.listen_ip, udp=s.udp_port, tcp=s.tcp_port, tls=s.tls_port)

    def _install_tls_classification(self) -> None:
        """Classify inbound TLS connections into DNS zones by peer identity (seed 003
        §3.2): the zone's TLS verify subject name as CN or DNS SAN, first match wins;
        otherwise the connection's requests fall to DefaultZone."""
        prev = self.tl.on_tls_established

        def classify(conn) -> bool:
            if not prev(conn):
                return False
            if not conn.outbound and conn.listener != TRAVERSAL_LISTENER and conn.peer_names:
                got = classify_by_tls_identity(self.cfg, conn.peer_names)
                if got.zone is not None:
                    conn.zone = got.zone
                self.events.emit("tls classified", peer=f"{conn.remote[0]}:{conn.remote[1]}", listener=conn.listener,
                                 zone=got.zone or "DefaultZone", matched_identity=got.identity,
                                 candidates="".join(got.candidates))
            return True

        self.tl.on_tls_established = classify

    async def close(self) -> None:
        if self.traversal:
            await self.traversal.close()
        if self.proxy:
            await self.proxy.close()
            self.proxy.media.close()
        await self.tl.close()
        if self.relay:
            self.relay.close()
        self.events.emit("node stopped")
        self.events.close()  # the node owns its event log, whoever opened it
