"""One Edgeway node (edge or core) assembled from its configuration.

Starts the SIP listeners (UDP, TCP, TLS), the traversal server listener (edge,
mutual TLS) or traversal client links (core), the media relay and the proxy, and
stops them all on :meth:`Node.close`.
"""

from __future__ import annotations

import asyncio

from .config.models import NodeConfig
from .diag.events import EventLog
from .media.relay import MediaRelay
from .proxy.core import Hop, Proxy
from .proxy.media import MediaAnchor
from .security.tls import client_context, server_context
from .transport.layer import TransportLayer
from .traversal.link import TRAVERSAL_LISTENER, Traversal

__all__ = ["Node"]


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
        targets = await resolve(uri.host, uri.port, uri.transport, uri.scheme == "sips", self.resolver, default_transport=default_transport)
        self.events.emit("dns resolved", host=uri.host, zone=zone, targets=[f"{t.transport}:{t.host}:{t.port}" for t in targets])
        return [Hop(t.transport, t.host, t.port, zone) for t in targets]

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
        self.traversal.start()
        self.events.emit("node started", role=cfg.role, listen_ip=s.listen_ip, udp=s.udp_port, tcp=s.tcp_port, tls=s.tls_port)

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
