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
import os
import ssl
from pathlib import Path

from .config.models import DnsZone, NodeConfig
from .diag.control import ControlServer
from .diag.events import FLUSH_INTERVAL_S, EventLog
from .diag.history import History
from .diag.status import EventCounters, StatusServer, StatusSource, snapshot
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

    def __init__(self, cfg: NodeConfig, events: EventLog | None = None, config_path: str | None = None):
        self.cfg = cfg
        #: The file the configuration came from (``edgeway reload`` and SIGHUP read it again).
        self.config_path = config_path
        log = cfg.log
        self.events = events or EventLog(cfg.name, log.file, sip_messages=log.sip_messages, max_bytes=log.max_bytes,
                                         backup_count=log.backup_count, max_events_per_s=log.max_events_per_s)
        from .diag.events import LEVELS

        self.events.level = LEVELS[log.level]
        self.events.module_levels = {m: LEVELS[lv] for m, lv in log.modules.items()}
        #: The last 500 searches and calls (seed 002 §1.7), fed by every emitted event.
        self.history = History()
        #: Event counts the Prometheus endpoint needs by cause (diag.status).
        self.counters = EventCounters()
        if self.events.observer is None:
            def observe(event: str, fields: dict) -> None:
                self.history.record(event, fields)
                self.counters.record(event, fields)

            self.events.observer = observe
        #: The status page / JSON / metrics server (``[status] listen``), or None.
        self.status: StatusServer | None = None
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
        #: The STUN/TURN server (:class:`~edgeway.turn.server.TurnServer`) of an edge with
        #: ``turn.enabled``; its counters are ``turn.stats()``.
        self.turn = None

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
        if not (ip_cfg.enabled if ip_cfg.enabled is not None else self.cfg.role != "core"):
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

    #: Sections a reload applies to the running node (issue 11 item 7).
    LIVE_SECTIONS = ("search_rules", "transforms", "call_policy", "credentials", "tls")

    def reload(self, new: NodeConfig) -> dict:
        """Apply a changed configuration without dropping calls or the traversal connection
        (issue 11 item 7). Applied live: neighbour and DNS zones (added, removed or
        changed; a traversal zone change needs a restart), search rules, transforms, call policy (the next
        request routes by them), credentials (the next traversal or tunnel login), TLS
        certificate, key and CA bundle (the next handshake; connections up keep theirs),
        ``[sip] domains``. Other changed sections are reported as needing a restart and
        keep their running values. Refused whole (nothing changes) when ``role`` or
        ``name`` differ, when a search rule would target a zone the running node does not
        have, or when the new certificate files cannot be loaded. Returns ``{"applied":
        [...], "restart_needed": [...], "unchanged": bool}``; raises ValueError when refused."""
        from .security.tls import reload_identity

        old = self.cfg
        if (new.role, new.name) != (old.role, old.name):
            raise ValueError(f"role/name changed ({old.role} {old.name!r} → {new.role} {new.name!r}): restart the node")
        changed = [k for k in type(old).model_fields if getattr(old, k) != getattr(new, k)]

        def traversal(cfg: NodeConfig) -> list:
            return [z for z in cfg.zones if z.type in ("traversal_client", "traversal_server")]

        # Neighbour and DNS zones apply live; a traversal zone change needs a restart.
        zones_live = "zones" in changed and traversal(old) == traversal(new)
        running_zones = {z.name for z in (new if zones_live else old).zones} | {"LocalZone", "DefaultZone"}
        missing = sorted({r.target_zone for r in new.search_rules} - running_zones)
        if missing:
            raise ValueError(f"search rules target zone(s) {', '.join(missing)} that the running node does not have: "
                             "add them in the same file (neighbour and DNS zones apply live)")
        applied: list[str] = []
        restart: list[str] = []
        if "tls" in changed and new.tls.cert_file:
            t = new.tls
            reload_identity(t.cert_file, t.key_file, t.ca_file)  # raises before anything changes
        if zones_live:
            old.zones = new.zones
            if self.proxy is not None:
                self.proxy.core.reload_zones()
            applied.append("zones")
        for k in changed:
            if k == "zones" and zones_live:
                continue
            if k in ("search_rules", "transforms", "call_policy", "tls"):
                setattr(old, k, getattr(new, k))
                applied.append(k)
            elif k == "credentials":
                old.credentials = new.credentials
                creds = {c.username: c.password for c in new.credentials}
                if self.traversal is not None:
                    self.traversal.credentials = creds
                if self.mra is not None and hasattr(self.mra, "credentials"):
                    self.mra.credentials = creds
                applied.append(k)
            elif k == "sip" and old.sip.model_copy(update={"domains": new.sip.domains}) == new.sip:
                old.sip.domains = new.sip.domains
                applied.append("sip.domains")
            else:
                restart.append(k)
        self.events.emit("config reloaded", applied=applied, restart_needed=restart)
        return {"applied": applied, "restart_needed": restart, "unchanged": not changed}

    def reload_file(self) -> dict:
        """Reload from :attr:`config_path` (control command ``reload``, SIGHUP). A file that
        fails validation is refused whole: the running configuration stays (ValueError
        naming every problem)."""
        from .config import ConfigError, load_config

        if self.config_path is None:
            raise ValueError("the node was not started from a file: nothing to reload")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.events.emit("config reload refused", reason=str(exc)[:2000])
            raise ValueError(f"{self.config_path}: {exc}") from None
        try:
            return self.reload(new)
        except (ValueError, OSError, ssl.SSLError) as exc:
            self.events.emit("config reload refused", reason=str(exc)[:2000])
            raise ValueError(str(exc)) from None

    def _diag_start(self, req: dict) -> dict:
        """Control command ``diag-start``: ``{"dir": str?, "tcpdump": bool?}`` starts a
        diagnostic capture (:mod:`edgeway.diag.capture`) into ``dir`` (default: beside the
        event log, else the system's temporary directory). One at a time."""
        import tempfile
        import time as _time

        from .diag.capture import Capture

        if self.proxy is None:
            raise ValueError("the node is not running")
        if self.proxy.capture is not None:
            raise ValueError("a diagnostic capture is already running (edgeway diag stop)")
        base = req.get("dir") or (os.path.dirname(self.cfg.log.file) if self.cfg.log.file else tempfile.gettempdir())
        work = Path(base) / f"diag-{self.cfg.name}-{_time.strftime('%Y%m%d-%H%M%S')}"
        s = self.cfg.sip
        ports = [p for p in (s.udp_port, s.tcp_port, s.tls_port, s.mtls_port if s.mtls_enabled else 0) if p]
        ports += [z.port for z in self.cfg.zones if z.type in ("traversal_server", "traversal_client")]
        cap = Capture(self.cfg.name, work, self.cfg.log.file, ports if req.get("tcpdump") else None)
        cap.start()
        self.proxy.capture = cap
        self.events.emit("diag started", dir=str(work), tcpdump=cap.tcpdump_note or None)
        return {"dir": str(work), "tcpdump": cap.tcpdump_note}

    def _diag_mark(self, req: dict) -> dict:
        """Control command ``diag-mark``: ``{"text": str}`` puts a mark in the event log and
        the capture's marks."""
        text = str(req.get("text", ""))[:500]
        self.events.emit("diag mark", text=text)
        if self.proxy is not None and self.proxy.capture is not None:
            self.proxy.capture.mark(text)
        return {"marked": text}

    def _diag_stop(self, req: dict) -> dict:
        """Control command ``diag-stop``: ends the capture; returns ``{"archive": path,
        "messages": n}``."""
        cap = self.proxy.capture if self.proxy is not None else None
        if cap is None:
            raise ValueError("no diagnostic capture is running (edgeway diag start)")
        self.proxy.capture = None
        self.events.emit("diag stopped", messages=cap.messages)
        self.events.flush()
        archive = cap.stop()
        return {"archive": str(archive), "messages": cap.messages}

    def _log_level(self, req: dict) -> dict:
        """Control command ``log-level``: ``{"module": str, "level": str}`` sets one module's
        level (``"default"`` as level: back to the node's ``[log] level``); without them it
        only reports. Returns ``{"level": str, "modules": {module: level}}``."""
        from .diag.events import LEVELS, MODULES

        names = {v: k for k, v in LEVELS.items()}
        if "module" in req:
            module, level = str(req["module"]), str(req.get("level", "")).upper()
            if module not in MODULES:
                raise ValueError(f"unknown module {module!r}; known: {', '.join(MODULES)}")
            if level == "DEFAULT":
                self.events.module_levels.pop(module, None)
            elif level in LEVELS:
                self.events.module_levels[module] = LEVELS[level]
            else:
                raise ValueError(f"unknown level {level!r}; one of {', '.join(LEVELS)} or default")
            self.events.emit("log level changed", module=module, level=level)
        return {"level": names.get(self.events.level, "DEBUG"),
                "modules": {m: names[v] for m, v in sorted(self.events.module_levels.items())}}

    async def _locate(self, req: dict) -> dict:
        """Control command ``locate``: ``{"alias": str, "zone": str, "from": str?}`` → the
        routing pipeline's steps (:func:`edgeway.proxy.locate.locate_plan`) with what this
        running node knows of each target: a neighbour's address, a traversal zone's
        connections, the registrar's bindings, the DNS queries and answers (through the
        node's own servers). No call is placed."""
        from .proxy.locate import locate_plan
        from .registrar import aor_of
        from .routing.resolver import resolve
        from .sip.uri import parse_uri

        res = locate_plan(self.cfg, str(req.get("alias", "")), str(req.get("zone", "DefaultZone")), str(req.get("from", "")))
        core = self.proxy.core if self.proxy is not None else None
        now = asyncio.get_running_loop().time()
        for t in res.targets:
            z = next((z for z in self.cfg.zones if z.name == t.zone), None)
            if t.zone_type == "neighbour" and z is not None:
                t.hops = [f"{z.transport}:{z.host}:{z.port}"]
            elif t.zone_type in ("traversal_client", "traversal_server") and core is not None:
                flows = [f for f in core.zone_flows.get(t.zone, ()) if f.conn_id in core.conns]
                t.hops = [f"{f.transport}:{f.remote[0]}:{f.remote[1]}" for f in flows]
                t.detail.append(f"{len(flows)} traversal connection(s) up" if flows else "zone not connected")
            elif t.zone_type == "local" and core is not None and core.registrar is not None:
                try:
                    bindings = core.registrar.lookup(aor_of(t.ruri), now)
                except ValueError:
                    bindings = []
                t.hops = [b.contact for b in bindings]
                t.detail.append(f"{len(bindings)} registered binding(s) of {t.ruri}")
            elif t.zone_type == "dns" and self.resolver is not None and z is not None:
                uri = parse_uri(t.ruri)
                trace: list = []
                override = z.dns_request_domain if z.modify_dns_request else None
                try:
                    targets = await resolve(uri.host, uri.port, uri.transport, uri.scheme == "sips", self.resolver,
                                            default_transport=z.default_transport, srv_override_domain=override,
                                            trace=trace)
                except Exception as exc:  # noqa: BLE001 - report, do not fail the command
                    targets = []
                    t.detail.append(f"lookup failed: {exc or type(exc).__name__}")
                t.detail += [f"{n} {rt}: {o}" for n, rt, o in trace]
                t.hops = [f"{x.transport}:{x.host}:{x.port}" for x in targets]
            t.found = bool(t.hops)
        return {"locate": res.as_dict()}

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
                "locate": self._locate,
                "reload": lambda req: self.reload_file(),
                "log-level": self._log_level,
                "diag-start": self._diag_start,
                "diag-mark": self._diag_mark,
                "diag-stop": self._diag_stop,
                "status": lambda req: snapshot(self._status_source()),
                "history": lambda req: {"searches": self.history.search_list(int(req.get("limit", 500))),
                                        "calls": self.history.call_list(int(req.get("limit", 500)))},
            })
            await self.control.start()
        if cfg.status.listen:
            from .config.models import split_hostport

            host, port = split_hostport(cfg.status.listen, 8090)
            src = self._status_source()
            st = cfg.status
            self.status = StatusServer(src, host, port, username=st.username, password=st.password, token=st.token)
            await self.status.start()
        if cfg.role == "media":
            await self._start_media_node()
            return
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
        if cfg.turn.enabled:
            from .turn.server import start_from_config

            # Relay ports come from the media port pool the call relay uses.
            self.turn = await start_from_config(cfg, self.proxy.media.alloc, self.events)
        self._flush_handle = loop.call_later(FLUSH_INTERVAL_S, self._flush_events)
        self.events.emit("node started", role=cfg.role, listen_ip=s.listen_ip, udp=s.udp_port, tcp=s.tcp_port, tls=s.tls_port)

    def _status_source(self) -> StatusSource:
        """What the status page, ``/status.json`` and the ``status`` control command read."""
        return StatusSource(self.cfg.name, self.cfg.role, list(self.cfg.zones),
                            core=self.proxy.core if self.proxy is not None else None, traversal=self.traversal,
                            relay=self.relay, tl=self.tl, history=self.history, counters=self.counters,
                            intrusion=self.intrusion, now=asyncio.get_running_loop().time)

    async def _start_media_node(self) -> None:
        """A media node (``role = "media"``, issue 10 item 5; seed 004's media nodes): the
        STUN/TURN server and its relay only, no SIP listener, zone or traversal."""
        from .turn.server import start_from_config

        cfg = self.cfg
        self.turn = await start_from_config(cfg, self.proxy.media.alloc, self.events)
        self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self._flush_events)
        t = cfg.turn
        self.events.emit("node started", role=cfg.role, listen_ip=t.listen_ip or cfg.sip.listen_ip, udp=t.udp_ports,
                         tcp=t.tcp_ports, tls=t.tls_ports)

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
        if self.status is not None:
            await self.status.close()
        if self.control is not None:
            await self.control.close()
        if self.mra is not None:
            await self.mra.close()
        if self.turn is not None:
            await self.turn.close()
        if self.traversal:
            await self.traversal.close()
        if self.proxy:
            await self.proxy.close()
        await self.tl.close()
        if self.relay is not None:  # not "if self.relay": a relay with no session is falsy (__len__)
            self.relay.close()
        self.events.emit("node stopped")
        self.events.close()  # the node owns its event log, whoever opened it
