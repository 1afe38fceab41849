"""Traversal zones: the core's traversal client and the edge's traversal server.

The core opens a mutual-TLS connection to each configured edge peer (up to 6,
default port 7001), authenticates with SIP digest (RFC 8760, SHA-256) against the
edge's local credential store by sending REGISTER over that connection, and keeps
it alive with OPTIONS probes (``keepalive_interval_s``, ``probe_retry_count``,
``probe_retry_interval_s``; seed 003 §2.4 defaults 20 s / 5 / 2 s). When a peer is
lost the core reconnects after ``retry_interval_s`` (default 120 s). The edge checks
the core's certificate (trusted CA, and the zone's TLS verify subject name as CN or
DNS SAN), answers the digest challenge, binds the connection to the zone and sends
requests for the inside down it. **The edge never opens a connection to the core**:
with no core connected, calls to the zone get 503 with a Warning naming the zone.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.models import NodeConfig, TraversalClientZone, TraversalServerZone
from ..diag.events import EventLog
from ..security import digest
from ..security.tls import subject_name_matches
from ..sip.message import Request, Response, make_response
from ..transport.layer import Connection, Source, TransportError, TransportLayer

__all__ = ["Traversal", "ZoneState"]

TRAVERSAL_LISTENER = "traversal"
_LOCAL_BRANCH = "z9hG4bKtrav"


@dataclass
class ZoneState:
    """Live state of one traversal zone: ``connections`` (authenticated links, newest
    last), ``state`` ("active"/"down"), the time it last changed (loop seconds)."""

    name: str
    connections: list[Connection] = field(default_factory=list)
    state: str = "down"
    since: float = 0.0


class Traversal:
    """Traversal client (core) or server (edge) for every traversal zone of a node.

    ``tl`` the node's transport layer (the core opens its traversal connections
    through it); ``client_ssl`` the TLS context the core presents its certificate with.
    The node wires :meth:`check_peer`, :meth:`intercept_request`,
    :meth:`intercept_response` and :meth:`connection_closed` into its inbound chain and
    :attr:`on_zone_change` to the proxy; this module imports nothing of the proxy.
    """

    def __init__(self, cfg: NodeConfig, tl: TransportLayer, events: EventLog, client_ssl: ssl.SSLContext | None = None):
        self.cfg = cfg
        self.tl = tl
        self.events = events
        self.client_ssl = client_ssl
        self.zones: dict[str, ZoneState] = {}
        self.server_zones: dict[int, TraversalServerZone] = {}
        self.client_zones: list[TraversalClientZone] = []
        for z in cfg.zones:
            if isinstance(z, TraversalServerZone):
                self.server_zones[z.port] = z
                self.zones[z.name] = ZoneState(z.name)
            elif isinstance(z, TraversalClientZone):
                self.client_zones.append(z)
                self.zones[z.name] = ZoneState(z.name)
        self.credentials = {c.username: c.password for c in cfg.credentials}
        self._waiters: dict[str, asyncio.Future] = {}
        self._tasks: list[asyncio.Task] = []
        self._nonces: dict[int, str] = {}
        #: Called with (zone name, live authenticated connections newest first) whenever a
        #: zone's connections change; the node wires it to the proxy.
        self.on_zone_change: Callable[[str, list[Connection]], None] = lambda zone, conns: None
        #: Called with the peer's address when a traversal client fails the credential
        #: check (the node wires it to intrusion protection).
        self.on_auth_failure: Callable[[str], None] = lambda ip: None

    # ------------------------------------------------------------ zone state
    def _set_state(self, zs: ZoneState, state: str, **info) -> None:
        if zs.state != state:
            zs.state = state
            zs.since = asyncio.get_running_loop().time()
            self.events.emit("traversal connected" if state == "active" else "traversal disconnected", zone=zs.name, **info)

    def status(self) -> dict[str, dict]:
        """Zone name → {"state", "connections": [peer addresses]} for reports."""
        return {
            n: {"state": z.state, "connections": [f"{c.remote[0]}:{c.remote[1]}" for c in z.connections if not c.closed]}
            for n, z in self.zones.items()
        }

    def _notify(self, zs: ZoneState) -> None:
        self.on_zone_change(zs.name, [c for c in reversed(zs.connections) if not c.closed])

    def connection_closed(self, conn: Connection) -> None:
        """A connection ended (wired by the node to the transport's close callback)."""
        if conn.zone and conn.zone in self.zones:
            zs = self.zones[conn.zone]
            if conn in zs.connections:
                zs.connections.remove(conn)
                self._notify(zs)
            if not any(not c.closed for c in zs.connections):
                self._set_state(zs, "down", peer=f"{conn.remote[0]}:{conn.remote[1]}", reason=conn.attrs.get("close_reason", "connection closed"))

    def _join(self, zs: ZoneState, conn: Connection, **info) -> None:
        conn.zone = zs.name
        zs.connections.append(conn)
        self._notify(zs)
        self._set_state(zs, "active", **info)

    # ------------------------------------------------------------ edge: server side
    def check_peer(self, conn: Connection) -> bool:
        """TLS identity check of an inbound traversal connection (wired by the node to
        the transport's handshake callback): the zone's TLS verify subject name must be
        the certificate's CN or a DNS SAN."""
        return self._check_peer(conn)

    def _check_peer(self, conn: Connection) -> bool:
        if conn.listener != TRAVERSAL_LISTENER or conn.outbound:
            return True
        zone = self.server_zones.get(conn.local[1])
        if zone is None:
            return False
        if not subject_name_matches(conn.peer_names, zone.tls_verify_subject_name):
            self.events.emit(
                "tls handshake failed", direction="inbound", zone=zone.name, peer=f"{conn.remote[0]}:{conn.remote[1]}",
                peer_names=conn.peer_names,
                cause=f"subject name {zone.tls_verify_subject_name!r} not in the peer certificate (CN/SAN: {', '.join(conn.peer_names) or 'none'})",
            )
            return False
        return True

    def intercept_request(self, req: Request, src: Source) -> bool:
        """Handle traversal housekeeping; True when ``req`` was consumed here.

        Edge: REGISTER on a traversal connection is the core's authentication
        (401 challenge, then 200 and the connection joins the zone); any other
        request on a traversal connection that has not authenticated gets 403.
        """
        conn = src.conn
        if conn is None or conn.listener != TRAVERSAL_LISTENER or conn.outbound:
            return False
        zone = self.server_zones.get(conn.local[1])
        if zone is None:
            return False
        if req.method == "REGISTER":
            self._register(req, src, conn, zone)
            return True
        if conn.zone is None:
            if req.method != "ACK":
                self._reply(src, make_response(req, 403, "Forbidden", to_tag=secrets.token_hex(4), extra=[("Warning", f'399 {self.cfg.sip.public_ip} "traversal client not authenticated"')]))
            return True
        return False

    def _reply(self, src: Source, resp: Response) -> None:
        """Answer on the traversal connection the request came on (never elsewhere)."""
        if src.conn is None:
            return
        try:
            src.conn.send(resp.to_bytes())
        except TransportError:
            pass

    def _register(self, req: Request, src: Source, conn: Connection, zone: TraversalServerZone) -> None:
        auth = req.headers.get("Authorization")
        realm = self.cfg.name
        if auth is None:
            nonce = secrets.token_hex(16)
            self._nonces[conn.id] = nonce
            self._reply(src, make_response(req, 401, "Unauthorized", to_tag=secrets.token_hex(4), extra=[("WWW-Authenticate", digest.challenge(realm, nonce))]))
            return
        try:
            creds = digest.parse_auth_header(auth)
        except ValueError:
            creds = {}
        user = creds.get("username", "")
        password = self.credentials.get(user)
        ok = (
            user == zone.username
            and password is not None
            and digest.verify(creds, password, "REGISTER", self._nonces.get(conn.id, ""))
        )
        if not ok:
            self.events.emit("traversal authentication failed", zone=zone.name, peer=f"{conn.remote[0]}:{conn.remote[1]}", username=user)
            self.on_auth_failure(conn.remote[0])
            self._reply(src, make_response(req, 403, "Forbidden", to_tag=secrets.token_hex(4)))
            conn.attrs["close_reason"] = "authentication failed"
            asyncio.get_running_loop().call_later(0.1, conn.close)
            return
        zs = self.zones[zone.name]
        self._reply(src, make_response(req, 200, "OK", to_tag=secrets.token_hex(4), extra=[("Expires", "3600")]))
        self._join(zs, conn, peer=f"{conn.remote[0]}:{conn.remote[1]}", peer_names=conn.peer_names)
        self._spawn(self._probe_loop(conn, zone))

    # ------------------------------------------------------------ both: probes
    def intercept_response(self, resp: Response, src: Source) -> bool:
        try:
            branch = resp.top_via().branch or ""
        except Exception:  # noqa: BLE001
            return False
        fut = self._waiters.pop(branch, None)
        if fut is None:
            return False
        if not fut.done():
            fut.set_result(resp)
        return True

    async def _local_request(self, conn: Connection, method: str, *, extra: list[tuple[str, str]] = (), timeout: float = 5.0, mf: int = 70) -> Response | None:
        """Send a request of our own on ``conn`` and wait up to ``timeout`` seconds
        for its final response (None on timeout or when the connection is closed)."""
        branch = f"{_LOCAL_BRANCH}{secrets.token_hex(8)}"
        ip, port = conn.local
        peer = f"{conn.remote[0]}:{conn.remote[1]}"
        r = Request(method, f"sip:{conn.remote[0]}:{conn.remote[1]};transport=tls")
        h = r.headers
        h.add("Via", f"SIP/2.0/TLS {ip}:{port};branch={branch};rport")
        h.add("Max-Forwards", str(mf))
        h.add("From", f"<sip:{self.cfg.name}@{ip}>;tag={secrets.token_hex(4)}")
        h.add("To", f"<sip:{peer}>")
        h.add("Call-ID", f"{secrets.token_hex(8)}@{ip}")
        h.add("CSeq", f"1 {method}")
        for n, v in extra:
            h.add(n, v)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[branch] = fut
        try:
            conn.send(r.to_bytes())
            return await asyncio.wait_for(fut, timeout)
        except (asyncio.TimeoutError, TransportError):
            return None
        finally:
            self._waiters.pop(branch, None)

    async def _probe_loop(self, conn: Connection, zone) -> None:
        """Probe ``conn`` every keepalive interval with OPTIONS (Max-Forwards 0);
        after ``probe_retry_count`` unanswered retries close it (zone goes down)."""
        while not conn.closed:
            await asyncio.sleep(zone.keepalive_interval_s)
            ok = False
            for _ in range(zone.probe_retry_count):
                if conn.closed:
                    return
                if await self._local_request(conn, "OPTIONS", timeout=zone.probe_retry_interval_s, mf=0) is not None:
                    ok = True
                    break
            if not ok:
                # A silent peer (stopped, not closed): abort at once rather than wait on a
                # graceful TLS close it will never answer; the transport then reports the
                # connection closed and every transaction pending on it fails (503).
                conn.attrs["close_reason"] = f"no answer to {zone.probe_retry_count} keepalive probes"
                conn.abort()
                self.connection_closed(conn)
                return

    # ------------------------------------------------------------ core: client side
    def start(self) -> None:
        """Start a traversal client task per (zone, peer) (core only)."""
        for z in self.client_zones:
            for host, port in z.peer_addresses:
                self._spawn(self._client_loop(z, host, port))

    def _spawn(self, coro) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def _client_loop(self, zone: TraversalClientZone, host: str, port: int) -> None:
        zs = self.zones[zone.name]
        while True:
            conn = None
            try:
                conn = await self.tl.connect("tls", host, port, local_ip=self.cfg.sip.listen_ip, ssl_ctx=self.client_ssl, listener=TRAVERSAL_LISTENER)
                # Ours and toward the zone's edge from the start: the edge may send a call
                # right behind the 200 to our REGISTER, before we have read that 200.
                conn.zone = zone.name
                # The edge fails what it sent us when it gives up on this link (stall,
                # keepalive loss): never act on those bytes once it has reset it.
                conn.discard_after_peer_close = True
                if await self._authenticate(conn, zone):
                    self._join(zs, conn, peer=f"{host}:{port}")
                    await self._probe_loop(conn, zone)
                else:
                    conn.close()
            except TransportError as exc:
                self.events.emit("traversal connect failed", zone=zone.name, peer=f"{host}:{port}", cause=str(exc))
            except asyncio.CancelledError:
                if conn is not None:
                    conn.close()
                raise
            # Wait for the connection to end (closed by the peer or by the probe loop).
            while conn is not None and not conn.closed:
                await asyncio.sleep(0.2)
            await asyncio.sleep(zone.retry_interval_s)

    async def _authenticate(self, conn: Connection, zone: TraversalClientZone) -> bool:
        resp = await self._local_request(conn, "REGISTER", extra=[("Contact", f"<sip:{conn.local[0]}:{conn.local[1]};transport=tls>"), ("Expires", "3600")])
        if resp is not None and resp.status == 401:
            chal = digest.parse_auth_header(resp.headers.get("WWW-Authenticate") or "")
            uri = f"sip:{conn.remote[0]}:{conn.remote[1]};transport=tls"
            auth = digest.authorization(chal, zone.username, zone.password, "REGISTER", uri)
            resp = await self._local_request(conn, "REGISTER", extra=[("Authorization", auth), ("Contact", f"<sip:{conn.local[0]}:{conn.local[1]};transport=tls>"), ("Expires", "3600")])
        if resp is None or resp.status != 200:
            self.events.emit("traversal authentication failed", zone=zone.name, peer=f"{conn.remote[0]}:{conn.remote[1]}",
                             status=resp.status if resp else None, reason=resp.reason if resp else "no response")
            return False
        return True

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
