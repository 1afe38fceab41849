"""The core's MRA HTTPS side (seed 002 §5.4, §8; issue 9 items 1-3): it opens and keeps the
tunnel connections to the edge and answers the requests that come down them.

Connections: ``mra.tunnel_connections`` per edge peer (:meth:`NodeConfig.mra_tunnel_peers`,
default the traversal zone's peer hosts at ``mra.tunnel_port`` 2222), mutual TLS with the
node's certificate (the same client context as the traversal zone), HTTP/2 server on each
(:class:`~edgeway.mra.tunnel.CoreTunnel`), PING keepalive with the traversal zone's settings,
reconnect after the zone's ``retry_interval_s``.

Requests (one HTTP/2 stream each):

- ``/<base64(domain)>/get_edge_config…`` → :func:`~edgeway.mra.edge_config.answer_edge_config`;
- anything else is a proxied request: :meth:`Gate.decide <edgeway.mra.gate.Gate.decide>` (400
  undecodable, 404 domain not served, 403 blocked), then forwarded to the normalised URL the
  allow list returned, with aiohttp's client bound to the core's address; bodies stream both
  ways. The internal service not answering in ``mra.request_timeout_s`` → 504, unreachable → 502.

Deployments (seed 002 §3; issue 9 item 7): both kinds of request are answered for the
deployment of the domain in the path's first segment: ``get_edge_config`` lists that
deployment's UDS servers, a proxied request is checked against that deployment's rules, and
its credentials against that deployment's call control (its first UDS server), with access
tokens that are valid in that deployment only (seed 002 §3: the UCM resources a client
reaches are in the same deployment as its domain).
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from yarl import URL

from ..config.models import DEFAULT_DEPLOYMENT, NodeConfig, TraversalClientZone
from ..diag.events import EventLog
from .auth import TokenStore, basic_user
from .edge_config import answer_edge_config, is_edge_config_path
from .gate import Gate, gate_from_config
from .link import Exchange, StreamAborted, TunnelLink, TunnelLost
from .tunnel import CoreTunnel, RequestReceived, forwardable_headers

__all__ = ["CoreMra"]

#: Response body pieces read from the internal service at a time (bytes).
READ_CHUNK = 64 * 1024
#: Headers the core never forwards to an internal service (the edge's own view of the client).
_DROP_INWARD = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
#: Bodies of the core's refusals of a proxied request, by status.
_REFUSALS = {400: "400 Bad Request\n", 403: "403 Forbidden\n", 404: "404 Not Found: unknown domain\n"}


class CoreTunnelLink(TunnelLink):
    """One tunnel connection the core opened to an edge peer."""

    def __init__(self, owner: "CoreMra"):
        z = owner.zone
        super().__init__(z.keepalive_interval_s, z.probe_retry_count * z.probe_retry_interval_s, owner._link_closed)
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tunnel = CoreTunnel(self.owner.zone.username, self.owner.zone.password)
        self.tunnel.initiate()
        self._started()

    def _event(self, ev) -> None:
        if isinstance(ev, RequestReceived):
            ex = Exchange(ev.stream_id, self._loop)
            ex.head.set_result(ev)
            if ev.ended:
                ex.body.put_nowait(None)
            self.exchanges[ev.stream_id] = ex
            ex.task = self._loop.create_task(self.owner.serve(self, ex, ev))
        else:
            super()._event(ev)


class CoreMra:
    """The core's tunnel client and request handler. ``gate`` overrides the allow list
    (tests inject a fake before the allow-list module exists)."""

    def __init__(self, cfg: NodeConfig, events: EventLog, client_ssl: ssl.SSLContext, gate: Gate | None = None):
        z = cfg.mra_zone()
        if not isinstance(z, TraversalClientZone):
            raise RuntimeError("mra on a core needs its traversal_client zone (mra.tunnel_zone)")
        self.cfg = cfg
        self.mra = cfg.mra
        self.zone = z
        self.events = events
        self.client_ssl = client_ssl
        self.gate = gate or gate_from_config(cfg.mra)
        self.peers = cfg.mra_tunnel_peers()
        self.edge_host = cfg.mra.edge_hostname or (self.peers[0][0] if self.peers else cfg.sip.listen_ip)
        self.links: list[CoreTunnelLink] = []
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        m = cfg.mra
        #: Verified credentials and issued access tokens (issue 9 item 4), one store per
        #: deployment: a token issued for a domain of one deployment is unknown in another.
        self.tokens = {d: TokenStore(m.credentials_refresh_min * 60, m.credentials_cleanup_min * 60,
                                     m.max_authorizations, m.authorization_period_s) for d in m.deployment_names}

    # -- lifecycle ---------------------------------------------------------------------------------
    #: Maintenance mode (seed 002 §16): new requests get 503 while those under way finish.
    maintenance = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        t = self.cfg.tls
        inside_ssl = ssl.create_default_context(cafile=t.ca_file) if t.ca_file else ssl.create_default_context()
        connector = aiohttp.TCPConnector(local_addr=(self.cfg.sip.listen_ip, 0), ssl=inside_ssl, limit=0,
                                         limit_per_host=256, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                              skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"))
        for host, port in self.peers:
            for _ in range(self.mra.tunnel_connections):
                self._tasks.append(loop.create_task(self._client_loop(host, port)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for link in list(self.links):
            link.abort("core stopping")
        if self._session is not None:
            await self._session.close()

    def _link_closed(self, link: TunnelLink, reason: str) -> None:
        if link in self.links:
            self.links.remove(link)

    def status(self) -> dict:
        """``{"state", "connections"}`` of the tunnel, for reports."""
        live = [lk.peer for lk in self.links if lk.transport is not None and not lk.transport.is_closing()]
        return {"state": "active" if live else "down", "connections": live}

    async def _client_loop(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        peer = f"{host}:{port}"
        while True:
            try:
                _, link = await asyncio.wait_for(loop.create_connection(
                    lambda: CoreTunnelLink(self), host, port, ssl=self.client_ssl, server_hostname=host,
                    local_addr=(self.cfg.sip.listen_ip, 0)), self.cfg.limits.tls_handshake_timeout_s)
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                self.events.emit("mra tunnel connect failed", peer=peer, cause=str(exc) or type(exc).__name__)
            else:
                self.links.append(link)
                self.events.emit("mra tunnel opened", peer=peer, local=f"{self.cfg.sip.listen_ip}")
                reason = await link.closed
                self.events.emit("mra tunnel closed", peer=peer, reason=reason)
            await asyncio.sleep(self.zone.retry_interval_s)

    # -- one request -------------------------------------------------------------------------------
    async def serve(self, link: CoreTunnelLink, ex: Exchange, req: RequestReceived) -> None:
        """Answer one stream (see the module docstring)."""
        try:
            if self.maintenance:
                await self._drain(link, ex)
                self._reply(link, ex, 503, [("content-type", "text/plain"), ("retry-after", "300")],
                            b"503 Service Unavailable (maintenance mode)\n")
                return
            if is_edge_config_path(req.path):
                status, headers, body = answer_edge_config(self.mra, self.edge_host, req.method, req.path)
                await self._drain(link, ex)
                self._reply(link, ex, status, headers, body)
                return
            verdict = self.gate.decide(req.method, req.path)
            if verdict.status != 200 or verdict.url is None:
                self.events.emit("mra request blocked", status=verdict.status, method=req.method, path=req.path[:200],
                                 reason=verdict.reason, rule=verdict.rule, deployment=verdict.deployment)
                await self._drain(link, ex)
                text = _REFUSALS.get(verdict.status, f"{verdict.status} Forbidden\n").encode()
                self._reply(link, ex, verdict.status, [("content-type", "text/plain")], text)
                return
            headers, token, denial = await self._authorize(req, verdict.deployment or DEFAULT_DEPLOYMENT)
            if denial is not None:
                await self._drain(link, ex)
                self._reply(link, ex, *denial)
                return
            await self._forward(link, ex, req, verdict.url, headers, token)
        except (TunnelLost, StreamAborted):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one request must not take the link down
            self.events.emit("mra request failed", cause=f"{type(exc).__name__}: {exc}", path=req.path[:200])
            self._reply(link, ex, 500, [("content-type", "text/plain")], b"500 Internal Server Error\n")
        finally:
            link.finish(ex, reset=not ex.done)

    async def _drain(self, link: CoreTunnelLink, ex: Exchange) -> None:
        """Discard a request body we do not forward (crediting it back)."""
        while not ex.done:
            piece = await ex.read()
            if piece is None:
                return
            link.consumed(ex, len(piece))

    def _reply(self, link: CoreTunnelLink, ex: Exchange, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        headers = [*headers, ("content-length", str(len(body)))]
        link.tunnel.send_response(ex.sid, status, headers, end=not body)
        if body:
            link.tunnel.send_data(ex.sid, body, end=True)
        link.flush()
        ex.done = True

    async def _authorize(self, req: RequestReceived, deployment: str = DEFAULT_DEPLOYMENT
                         ) -> tuple[list[tuple[str, str]], str | None, tuple | None]:
        """Credentials of a proxied request for a domain of ``deployment`` (seed 002 §10, §3;
        issue 9 items 4, 7): the headers to forward, a newly issued access token (or None)
        and a denial ``(status, headers, body)`` (or None). Basic credentials are checked once
        against the deployment's call-control service (UDS, the first of its
        ``mra.uds_servers``) and rate-controlled per user (429); a bearer token Edgeway issued
        in that deployment stands for them (401 when unknown there or expired). Requests
        without credentials, or for a deployment without a UDS server, go as they are (the
        inside answers them)."""
        headers = forwardable_headers(req.headers, _DROP_INWARD)
        auth = next((v for k, v in headers if k == "authorization"), None)
        uds = self.mra.uds_addresses_of(deployment)
        if auth is None or not uds:
            return headers, None, None
        tokens = self.tokens[deployment]
        now = asyncio.get_running_loop().time()
        tokens.maybe_purge(now)
        scheme = auth.strip().partition(" ")[0].lower()
        if scheme == "bearer":
            grant = tokens.resolve(auth.strip().partition(" ")[2].strip(), now)
            if grant is None:
                return headers, None, (401, [("www-authenticate", 'Bearer error="invalid_token"')],
                                       b"401 Unauthorized: unknown or expired access token\n")
            return [(k, grant[1] if k == "authorization" else v) for k, v in headers], None, None
        user = basic_user(auth)
        if user is None or tokens.verified(auth, now) is not None:
            return headers, None, None
        if not tokens.allow_check(user, now):
            self.events.emit("mra authorization rate limited", user=user, limit=self.mra.max_authorizations,
                             period_s=self.mra.authorization_period_s, deployment=deployment)
            return headers, None, (429, [("retry-after", str(int(self.mra.authorization_period_s)))],
                                   b"429 Too Many Requests: authorization rate control\n")
        status = await self._check_credentials(user, auth, *uds[0])
        if status == 200:
            return headers, tokens.issue(user, auth, now), None
        if status == 401:
            return headers, None, (401, [("www-authenticate", 'Basic realm="edgeway"')], b"401 Unauthorized\n")
        return headers, None, (502, [], b"502 Bad Gateway: credentials could not be checked\n")

    async def _check_credentials(self, user: str, auth: str, host: str, port: int) -> int:
        """The verdict of the call-control service at ``host``:``port`` on ``auth`` for
        ``user`` (UDS user lookup): its status, or 502 when it cannot be asked."""
        assert self._session is not None
        scheme = next((srv.scheme for srv in self.mra.internal_servers
                       if srv.type == "call_control" and srv.host == host and srv.scheme), "https")
        url = f"{scheme}://{host}:{port}/cucm-uds/user/{user}"
        try:
            async with self._session.get(url, headers={"Authorization": auth},
                                         timeout=aiohttp.ClientTimeout(total=self.mra.request_timeout_s)) as resp:
                await resp.read()
                return resp.status
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return 502

    async def _forward(self, link: CoreTunnelLink, ex: Exchange, req: RequestReceived, url: str,
                       headers: list[tuple[str, str]] | None = None, token: str | None = None) -> None:
        assert self._session is not None
        m = self.mra
        if headers is None:
            headers = forwardable_headers(req.headers, _DROP_INWARD)

        async def body():
            while True:
                piece = await ex.read()
                if piece is None:
                    return
                link.consumed(ex, len(piece))
                yield piece

        has_body = not req.ended
        started = False
        timeout = aiohttp.ClientTimeout(total=None, connect=m.request_timeout_s, sock_read=m.request_timeout_s)
        try:
            async with self._session.request(req.method, URL(url, encoded=True), headers=headers,
                                             data=body() if has_body else None, allow_redirects=False,
                                             timeout=timeout, compress=None) as resp:
                out = forwardable_headers(resp.headers.items())
                if token is not None:
                    out.append(("x-edgeway-access-token", token))  # the client may use Bearer from now on
                link.tunnel.send_response(ex.sid, resp.status, out, end=False)
                started = True
                link.flush()
                while True:
                    piece = await resp.content.readany()
                    if not piece:
                        break
                    await link.send_body(ex, piece)
                await link.send_body(ex, b"", end=True)
                ex.done = True
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            cause = f"internal service silent for {m.request_timeout_s:g} s" if timed_out else f"{type(exc).__name__}: {exc}"
            self.events.emit("mra request failed", status=504 if timed_out else 502, url=url, cause=cause,
                             response_started=started)
            if started:  # the head is gone: cut the stream, the edge aborts its client connection
                link.finish(ex, reset=True)
            elif timed_out:
                self._reply(link, ex, 504, [("content-type", "text/plain")], b"504 Gateway Timeout\n")
            else:
                self._reply(link, ex, 502, [("content-type", "text/plain")], b"502 Bad Gateway\n")
