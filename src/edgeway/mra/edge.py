"""The edge's MRA HTTPS proxy (seed 002 §8.2, §13.3; issue 9 item 1): the outside HTTPS
listener and the listener the core's tunnel connections arrive on.

Outside (``mra.https_port``, default 8443, TLS ≥ 1.2 with the node's certificate, every
address of ``mra.https_listen_ips``, IPv4 and IPv6): HTTP/1.1 with keep-alive (aiohttp's
server). Each request becomes one HTTP/2 stream on the least-busy authenticated tunnel
connection; the core answers it. The edge only relays: it never decides what is reachable
inside, and it **never opens a connection**: it has listeners only.

Answers of the edge itself (seed 002 §5.4):

- no authenticated tunnel → ``502 Next Hop Connection Failed``;
- no response head within ``mra.request_timeout_s`` → ``504 Gateway Timeout`` (stream reset);
- request body over ``mra.max_request_bytes`` (Content-Length or counted) → ``413``;
- response over ``mra.max_response_bytes`` (Content-Length) → ``502``; a response body that
  grows past it, or stalls for ``request_timeout_s``, is cut (connection aborted);
- the stream reset or the tunnel lost before the head → ``502 Next Hop Connection Failed``.

Bodies stream both ways under HTTP/2 flow control (:mod:`edgeway.mra.tunnel`): request
pieces are read from the client only while the stream's window lets them leave, response
pieces are credited back to the core only after they were written to the client.

Tunnel listener (``mra.tunnel_port``, default 2222): mutual TLS; the core's certificate must
chain to ``tls.ca_file`` and carry the traversal zone's TLS verify subject name (CN or DNS
SAN, as the traversal zone checks it); then the core proves the zone's password
(:class:`~edgeway.mra.tunnel.EdgeTunnel`).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket
import ssl
import struct
from collections.abc import Callable

from aiohttp import web

from ..config.models import NodeConfig, TraversalServerZone
from ..diag.events import EventLog
from ..security.tls import peer_identities, server_context, subject_name_matches
from .link import Exchange, StreamAborted, TunnelLink, TunnelLost
from .tunnel import Authenticated, AuthFailed, EdgeTunnel, ResponseReceived, forwardable_headers

__all__ = ["EdgeMra", "NEXT_HOP_FAILED"]

#: Reason phrase of the edge's 502 when the core cannot be reached (seed 002 §5.4).
NEXT_HOP_FAILED = "Next Hop Connection Failed"
#: Request body pieces read from the client at a time (bytes).
READ_CHUNK = 64 * 1024


#: Seconds an outside client has to complete its TLS handshake.
TLS_HANDSHAKE_TIMEOUT_S = 10.0


def _listen(ip: str, port: int) -> socket.socket:
    """A non-blocking TCP listening socket on ``ip``:``port`` (IPv4 or IPv6, v6-only;
    port 0: an ephemeral one). Raises OSError when it cannot bind."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _TooLarge(Exception):
    pass


class EdgeTunnelLink(TunnelLink):
    """One tunnel connection the core opened to the edge."""

    def __init__(self, owner: "EdgeMra"):
        z = owner.zone
        super().__init__(z.keepalive_interval_s, z.probe_retry_count * z.probe_retry_interval_s, owner._link_closed)
        self.owner = owner
        self.authenticated = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        o = self.owner
        names = peer_identities(transport.get_extra_info("ssl_object"))
        if not subject_name_matches(names, o.zone.tls_verify_subject_name):
            o.events.emit("tls handshake failed", direction="inbound", listener="mra tunnel", zone=o.zone.name,
                          peer=self.peer, peer_names=names,
                          cause=f"subject name {o.zone.tls_verify_subject_name!r} not in the peer certificate "
                                f"(CN/SAN: {', '.join(names) or 'none'})")
            self.close_reason = "subject name mismatch"
            self.tunnel = EdgeTunnel({}, "", "")
            transport.abort()
            return
        self.tunnel = EdgeTunnel(o.credentials, o.zone.username, secrets.token_hex(16))
        self.tunnel.initiate()
        o.links.append(self)
        self._started()

    def _event(self, ev) -> None:
        if isinstance(ev, ResponseReceived):
            ex = self.exchanges.get(ev.stream_id)
            if ex is not None and not ex.head.done():
                ex.head.set_result(ev)
                if ev.ended:
                    ex.body.put_nowait(None)
        elif isinstance(ev, Authenticated):
            self.authenticated = True
            self.owner.events.emit("mra tunnel connected", peer=self.peer, username=ev.username,
                                   connections=len(self.owner.ready_links()))
        elif isinstance(ev, AuthFailed):
            self.owner.events.emit("mra tunnel authentication failed", peer=self.peer, cause=ev.reason)
            self.close_reason = f"authentication failed: {ev.reason}"
        else:
            super()._event(ev)

    def open(self, method: str, path: str, authority: str, headers: list[tuple[str, str]], end: bool) -> Exchange:
        sid = self.tunnel.start_request(method, path, authority, headers, end)
        ex = Exchange(sid, self._loop)
        self.exchanges[sid] = ex
        self.flush()
        return ex


#: The Server header of every answer the edge gives outside (not the inside service's, not
#: aiohttp's default ``Python/… aiohttp/…``).
SERVER = "Edgeway"

#: Inside answers that count as intrusion-protection failures of the client (seed 002 §10.9).
_FAILURE_CATEGORIES = {401: "http_proxy_authorization_failure", 429: "http_proxy_authorization_failure",
                       400: "http_proxy_protocol_violation",
                       403: "http_proxy_resource_access_failure", 404: "http_proxy_resource_access_failure"}


class EdgeMra:
    """The edge's MRA listeners. ``await start()`` binds them; ``await close()`` releases them."""

    def __init__(self, cfg: NodeConfig, events: EventLog):
        z = cfg.mra_zone()
        if not isinstance(z, TraversalServerZone):
            raise RuntimeError("mra on an edge needs its traversal_server zone (mra.tunnel_zone)")
        self.cfg = cfg
        self.mra = cfg.mra
        self.zone = z
        self.events = events
        self.credentials = {c.username: c.password for c in cfg.credentials}
        self.links: list[EdgeTunnelLink] = []
        self._tunnel_server: asyncio.AbstractServer | None = None
        self._runner: web.ServerRunner | None = None
        #: Addresses the HTTPS listener is bound to, ``(ip, port)`` (port 0 in the config binds
        #: an ephemeral one: tests).
        self.https_addresses: list[tuple[str, int]] = []
        self._https_socks: list[socket.socket] = []
        #: TLS handshakes under way on the HTTPS listener.
        self._handshakes: set[asyncio.Task] = set()
        #: Outside connections reset at accept because their source is banned.
        self.refused_blocked = 0
        #: ``(source ip) -> bool``: True for an address intrusion protection has banned (its
        #: requests are cut off unanswered); None: none.
        self.source_blocked: Callable[[str], bool] | None = None
        #: Called with ``(category, source ip)`` for an answer that counts as an intrusion-
        #: protection failure (seed 002 §10.9): 401 and 429 (authorization rate control) →
        #: ``http_proxy_authorization_failure``,
        #: 400 → ``http_proxy_protocol_violation``, 403/404 → ``http_proxy_resource_access_failure``.
        self.on_http_failure: Callable[[str, str], None] = lambda category, ip: None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg, t = self.cfg, self.cfg.tls
        loop = asyncio.get_running_loop()
        mtls = server_context(t.cert_file, t.key_file, t.ca_file, require_client_cert=True, min_version=t.min_version)
        self._tunnel_server = await loop.create_server(lambda: EdgeTunnelLink(self), cfg.sip.listen_ip,
                                                       self.mra.tunnel_port, ssl=mtls, reuse_address=True)
        outside = server_context(t.cert_file, t.key_file, t.ca_file, min_version=t.min_version)
        outside.verify_mode = ssl.CERT_NONE  # clients authenticate in HTTP, not with certificates
        outside.set_alpn_protocols(["http/1.1"])
        server = web.Server(self.handle, access_log=None, max_field_size=16384)
        self._runner = web.ServerRunner(server, access_log=None, handle_signals=False)
        await self._runner.setup()
        # Our own accept loop rather than an aiohttp site: a banned source is refused at
        # accept, before TLS (a site does the handshake first); the others get TLS and
        # then aiohttp's request handler.
        for ip in self.mra.https_listen_ips or [cfg.sip.listen_ip]:
            lsock = _listen(ip, self.mra.https_port)
            self._https_socks.append(lsock)
            self.https_addresses.append(lsock.getsockname()[:2])
            loop.add_reader(lsock.fileno(), self._accept, lsock, outside)
        self.events.emit("mra listening", https=[f"{ip}:{p}" for ip, p in self.https_addresses],
                         tunnel=f"{cfg.sip.listen_ip}:{self.mra.tunnel_port}")

    async def close(self) -> None:
        if self._tunnel_server is not None:
            self._tunnel_server.close()
        loop = asyncio.get_running_loop()
        for lsock in self._https_socks:
            if lsock.fileno() >= 0:
                loop.remove_reader(lsock.fileno())
                lsock.close()
        for task in list(self._handshakes):
            task.cancel()
        for link in list(self.links):
            link.abort("edge stopping")
        if self._runner is not None:
            if self._runner.server is not None:
                await self._runner.server.shutdown(1.0)
            await self._runner.cleanup()
        if self._tunnel_server is not None:
            await self._tunnel_server.wait_closed()

    def _accept(self, lsock: socket.socket, ctx: ssl.SSLContext) -> None:
        """The HTTPS listener is readable: accept up to 64 connections. A source
        intrusion protection has banned is reset at once (RST, no TLS work, no answer;
        seed 002 §10.9, issue 9 item 8); the others start their TLS handshake
        (``TLS_HANDSHAKE_TIMEOUT_S``) and then aiohttp serves them."""
        loop = asyncio.get_running_loop()
        for _ in range(64):
            try:
                csock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: pause, do not spin
                loop.remove_reader(lsock.fileno())
                loop.call_later(0.1, self._resume_accept, lsock, ctx)
                self.events.emit("accept failed", listener="https", cause=str(exc))
                return
            blocked = self.source_blocked
            if blocked is not None and blocked(addr[0]):
                try:
                    csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                csock.close()
                self.refused_blocked += 1
                continue
            csock.setblocking(False)
            runner = self._runner
            if runner is None or runner.server is None:
                csock.close()
                continue
            task = loop.create_task(loop.connect_accepted_socket(runner.server, csock, ssl=ctx,
                                                                 ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S))
            self._handshakes.add(task)
            task.add_done_callback(functools.partial(self._handshake_done, csock))

    def _handshake_done(self, csock: socket.socket, task: asyncio.Task) -> None:
        self._handshakes.discard(task)
        if task.cancelled() or task.exception() is not None:
            csock.close()  # failed or abandoned handshake: nothing else holds the socket

    def _resume_accept(self, lsock: socket.socket, ctx: ssl.SSLContext) -> None:
        if lsock in self._https_socks and lsock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(lsock.fileno(), self._accept, lsock, ctx)

    def _link_closed(self, link: TunnelLink, reason: str) -> None:
        if link in self.links:
            self.links.remove(link)
            if getattr(link, "authenticated", False):
                self.events.emit("mra tunnel disconnected", peer=link.peer, reason=reason,
                                 connections=len(self.ready_links()))

    def ready_links(self) -> list[EdgeTunnelLink]:
        """Authenticated tunnel connections that can take a new stream."""
        return [lk for lk in self.links if lk.authenticated and lk.tunnel.can_start()
                and lk.transport is not None and not lk.transport.is_closing()]

    def status(self) -> dict:
        """``{"state": "active"|"down", "connections": [peer addresses]}`` for reports."""
        ready = self.ready_links()
        return {"state": "active" if ready else "down", "connections": [lk.peer for lk in ready]}

    # -- one outside request -----------------------------------------------------------------------
    def _fail(self, status: int, reason: str | None, cause: str, request: web.BaseRequest) -> web.Response:
        self.events.emit("mra request failed", status=status, cause=cause, method=request.method,
                         client=request.remote, path=request.raw_path[:200])
        return web.Response(status=status, reason=reason, text=f"{status} {reason or ''}\n".replace(" \n", "\n"),
                            headers={"Cache-Control": "no-store", "Server": SERVER})

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Relay one outside request through the tunnel (see the module docstring for the
        edge's own answers)."""
        m = self.mra
        client = request.remote or ""
        if self.source_blocked is not None and self.source_blocked(client):
            if request.transport is not None:
                request.transport.abort()  # banned: no answer at all
            return web.Response(status=403)
        links = self.ready_links()
        if not links:
            return self._fail(502, NEXT_HOP_FAILED, "no MRA tunnel connection from the core", request)
        cl = request.content_length
        if cl is not None and cl > m.max_request_bytes:
            return self._fail(413, None, f"request body of {cl} bytes over mra.max_request_bytes", request)
        link = min(links, key=lambda lk: len(lk.exchanges))
        headers = forwardable_headers(request.headers.items())
        headers.append(("forwarded", f'for="{request.remote}";proto=https'))
        has_body = request.body_exists
        try:
            ex = link.open(request.method, request.raw_path, request.host, headers, end=not has_body)
        except Exception as exc:  # noqa: BLE001 - a stream the tunnel cannot take
            return self._fail(502, NEXT_HOP_FAILED, f"tunnel refused a stream: {exc}", request)
        pump = asyncio.ensure_future(self._pump_request(request, link, ex)) if has_body else None
        try:
            try:
                head = await asyncio.wait_for(asyncio.shield(ex.head), m.request_timeout_s)
            except asyncio.TimeoutError:
                link.finish(ex, reset=True)
                return self._fail(504, None, f"no response within {m.request_timeout_s:g} s", request)
            except _TooLarge:
                link.finish(ex, reset=True)
                return self._fail(413, None, "request body over mra.max_request_bytes", request)
            except (TunnelLost, StreamAborted) as exc:
                link.finish(ex, reset=True)
                return self._fail(502, NEXT_HOP_FAILED, f"tunnel: {exc}", request)
            category = _FAILURE_CATEGORIES.get(head.status)
            if category is not None:
                self.on_http_failure(category, client)
            return await self._relay_response(request, link, ex, head)
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            link.finish(ex, reset=not ex.done)

    async def _pump_request(self, request: web.BaseRequest, link: EdgeTunnelLink, ex: Exchange) -> None:
        total = 0
        try:
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    await link.send_body(ex, b"", end=True)
                    return
                total += len(chunk)
                if total > self.mra.max_request_bytes:
                    ex.fail(_TooLarge())
                    return
                await link.send_body(ex, chunk)
        except (TunnelLost, StreamAborted, _TooLarge):
            return
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            ex.fail(TunnelLost(f"client went away: {exc}"))

    async def _relay_response(self, request: web.BaseRequest, link: EdgeTunnelLink, ex: Exchange,
                              head: ResponseReceived) -> web.StreamResponse:
        m = self.mra
        headers = forwardable_headers(head.headers)
        length = next((v for k, v in headers if k == "content-length"), None)
        if length is not None and length.isdigit() and int(length) > m.max_response_bytes:
            link.finish(ex, reset=True)
            return self._fail(502, None, f"response of {length} bytes over mra.max_response_bytes", request)
        resp = web.StreamResponse(status=head.status)
        for k, v in headers:
            if k != "server":
                resp.headers.add(k, v)
        # Neither the inside service's software nor ours is named outside (topology hiding).
        resp.headers["Server"] = SERVER
        try:
            return await self._relay_body(request, link, ex, head, resp)
        except ConnectionError as exc:  # the client went away while we wrote to it
            self.events.emit("mra request failed", status=head.status, method=request.method, client=request.remote,
                             path=request.raw_path[:200], cause=f"client went away: {exc}")
            link.finish(ex, reset=True)
            return resp

    async def _relay_body(self, request: web.BaseRequest, link: EdgeTunnelLink, ex: Exchange, head: ResponseReceived,
                          resp: web.StreamResponse) -> web.StreamResponse:
        m = self.mra
        await resp.prepare(request)
        total = 0
        while True:
            try:
                piece = await asyncio.wait_for(ex.read(), m.request_timeout_s)
            except (asyncio.TimeoutError, TunnelLost, StreamAborted) as exc:
                self.events.emit("mra request failed", status=head.status, method=request.method, client=request.remote,
                                 path=request.raw_path[:200], cause=f"response body cut: {exc or 'stalled'}")
                link.finish(ex, reset=True)
                request.transport.abort() if request.transport else None
                return resp
            if piece is None:
                break
            total += len(piece)
            if total > m.max_response_bytes:
                self.events.emit("mra request failed", status=head.status, method=request.method, client=request.remote,
                                 path=request.raw_path[:200], cause="response body over mra.max_response_bytes")
                link.finish(ex, reset=True)
                request.transport.abort() if request.transport else None
                return resp
            await resp.write(piece)
            link.consumed(ex, len(piece))
        await resp.write_eof()
        return resp
