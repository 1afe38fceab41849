"""A SIP user agent on the product's stack: places and answers calls, sends and counts RTP.

:class:`UserAgent` is a small transaction user (RFC 3261 §8, §12–§15) over
:mod:`edgeway.sip.transaction` (every request and response goes through a client or
server transaction: Timers A–K, RFC 6026 Accepted state), :mod:`edgeway.transport.layer`
(UDP, TCP, TLS listeners and connections, connection reuse, CRLF keepalives),
:mod:`edgeway.ua.offer` (SDP offer/answer over :mod:`edgeway.sip.sdp`, SDES keys) and
:mod:`edgeway.ua.media` (RTP/RTCP/SRTP through ``loop.add_reader``). It is the phone
at both ends of the lab's calls and the caller of ``edgeway call``.

* **UAS** – answers INVITE with 100 Trying, 180 Ringing and 200 OK with an SDP answer
  (or an offer, for an INVITE without one), a Contact and a To tag; retransmits the 2xx
  over UDP until the ACK and hangs up with BYE when none comes within 64*T1 (§13.3.1.4);
  handles ACK, BYE, CANCEL (200, then 487 to the INVITE), OPTIONS, INFO, re-INVITE.
  ``answer_status`` / ``ring_seconds`` make it reject, or ring a while first.
* **UAC** – :meth:`UserAgent.call` sends an INVITE through an explicit next hop,
  CANCELs a call ringing past its timeout, ACKs a 2xx end to end through the route set
  (§12.1.2, §13.2.2.4; the transaction ACKs non-2xx finals hop by hop), exchanges RTP and
  RTCP, then sends BYE. :meth:`UserAgent.reinvite` refreshes the session (§14).
* **Registration** – :meth:`UserAgent.register` binds ``user@domain`` at a registrar
  through an outbound proxy (RFC 3261 §10.2, sans-IO in :mod:`edgeway.ua.register`):
  digest challenges (401/407, SHA-256 or MD5) answered once, refreshed before expiry
  in the background, removed with ``Expires: 0`` by :meth:`UserAgent.unregister` and
  :meth:`UserAgent.close`. Requests for the registration that arrive on its connection
  (the edge sends them down the client's flow, not to the Contact address) are
  answered on that connection like any other.
* **SRTP** – with ``srtp=True`` it offers ``RTP/SAVP`` with SDES keys and insists on an
  SRTP answer; as callee it rejects plain offers with 488. ``RTP/SAVP`` offers are always
  answered with SDES.

Every SIP message sent or received is written to a per-call *ladder* (lines
``"<ms> ms <→|←> <ip:port> (<transport>) <first line>"``, responses followed by their
CSeq method in parentheses). Malformed input never crashes the UA: a request whose head
could be read gets a 400. Times are seconds unless a name says ``_ms``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..diag.events import EventLog
from ..media.ports import PortAllocator
from ..media.srtp import UNENCRYPTED_SRTCP_SUPPORTED
from ..security.tls import client_context, server_context
from ..sip import sdes
from ..sip.message import ParseError, Request, Response, make_response
from ..sip.target import Flow, is_ip_literal
from ..sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    TimerConfig,
    Timeout,
    TransactionTable,
    TransportError,
)
from ..sip.uri import UriError, parse_name_addr, parse_uri
from ..transport.layer import Connection, Source, TransportLayer
from ..transport.layer import TransportError as SendFailed
from .call import (
    CallResult,
    CallStats,
    Dialog,
    clean_reason,
    hostport,
    in_dialog_request,
    new_branch,
    new_tag,
    uac_dialog,
    uas_dialog,
)
from .media import MediaEndpoint
from .offer import (
    OFFER_PTS,
    SdpInfo,
    accept_srtp_answer,
    answer_pts,
    build_sdp,
    first_audio_pt,
    offer_problem,
    parse_sdp,
    srtp_answer,
)
from .register import (
    DEFAULT_EXPIRES_S,
    Registered,
    Registration,
    RegistrationFailed,
    RegistrationResult,
    SendRegister,
    Unregistered,
)

__all__ = ["UserAgent"]

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
USER_AGENT = "Edgeway-UA"
#: RFC 3261 §17.1.2.2: cap of the 2xx retransmission interval (s).
T2 = 4.0
_STREAM = ("tcp", "tls")
#: Seconds :meth:`UserAgent.close` gives its un-registrations (``Expires: 0``).
UNREGISTER_ON_CLOSE_S = 2.0
_UNENC = UNENCRYPTED_SRTCP_SUPPORTED


class _Closed(Exception):
    """The UA was closed while a call was waiting on it."""


@dataclass(eq=False)
class _Tx:
    """The transaction user's slot on a transaction (``tx.tu``): where it sends, what
    it sent (to mark retransmissions), and per side: the responses a client waits
    for, or a server's To tag, call stats and answering task."""

    flow: Flow
    sent: set[int] = field(default_factory=set)
    queue: asyncio.Queue | None = None
    ack: tuple[Request, Flow] | None = None
    to_tag: str = field(default_factory=new_tag)
    stats: CallStats | None = None
    task: asyncio.Task | None = None


@dataclass
class _Failure:
    """What a client transaction's waiter gets instead of a response: ``status`` 408
    (Timer B/F) or 503 (transport error, RFC 3261 §17.1.4), ``detail`` text."""

    status: int
    detail: str


@dataclass(eq=False)
class _Reg:
    """A registration the agent keeps: its state machine, where it goes, what it reports,
    the connection it was made on and its refresher task."""

    machine: Registration
    proxy: tuple[str, int, str]
    t1: float
    result: RegistrationResult
    flow: Flow | None = None
    task: asyncio.Task | None = None


def _snapshot(result: RegistrationResult) -> RegistrationResult:
    """A copy of a registration's report that later rounds leave alone."""
    return dataclasses.replace(result, ladder=list(result.ladder), tls_peer_names=list(result.tls_peer_names))


class _Events(EventLog):
    """Keeps the cause of the last connect/TLS failure per peer for error messages."""

    def __init__(self, name: str):
        super().__init__(name, stream=None)
        self.label = name
        self.causes: dict[str, str] = {}

    def emit(self, event: str, **fields: Any) -> None:  # type: ignore[override]
        if event in ("tls handshake failed", "connect failed"):
            self.causes[str(fields.get("peer", ""))] = str(fields.get("cause", ""))
        log.debug("%s: %s %s", self.label, event, fields)


def _free_port(ip: str, stream: bool) -> int:
    """A port free for UDP (and TCP when ``stream``) on ``ip``."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for _ in range(20):
        with socket.socket(fam, socket.SOCK_DGRAM) as u:
            u.bind((ip, 0))
            port = u.getsockname()[1]
            if not stream:
                return port
            try:
                with socket.socket(fam, socket.SOCK_STREAM) as t:
                    t.bind((ip, port))
                return port
            except OSError:
                continue
    raise OSError(f"no free port on {ip}")


class UserAgent:
    """A SIP phone: answers every INVITE, places calls with :meth:`call`.

    Args:
        name: user part of its Contact and SDP ``o=`` user; also the log label.
        ip: local IP address for SIP (and, by default, media) sockets.
        port: SIP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
        transport: ``"udp"``, ``"tcp"``, ``"tls"``, ``"both"`` (= ``"udp+tcp"``) or
            ``"udp+tls"``. TLS without ``tls_cert`` is client only (no listener).
        domain: host part of the From URIs it sends.
        media_ip: address of RTP sockets and SDP ``c=`` (default ``ip``).
        rtp_port_base, rtp_port_range: the RTP port range (pairs never shared).
        timer_t1: RFC 3261 T1 (s) of its server transactions and 2xx retransmissions.
        resolver: ``async (host, port) -> (ip, port)`` for host names in URIs
            (default: the system resolver). IP literals are never resolved.
        tls_cert, tls_key: PEM certificate and key (TLS listener; client certificate).
        tls_ca: PEM CA bundle peers' certificates must chain to (default for outgoing
            connections: the system trust store).
        tls_require_client_cert: as TLS server, require a client certificate (mutual TLS).
        tls_server_name: refuse an outgoing TLS connection whose server certificate
            does not carry this name as CN or DNS SAN.
        srtp: offer SRTP (SDES) on calls placed, require it on calls answered.

    Raises ValueError for an unknown transport or missing TLS material.
    Public attributes: ``ring_seconds``, ``answer_status`` (200, or 3xx–6xx to reject);
    ``calls_received`` / ``calls_answered`` (Call-ID → :class:`CallStats`); ``log`` the
    last 2000 ladder lines of all calls.
    """

    def __init__(self, name: str, ip: str, port: int, *, transport: str = "udp", domain: str,
                 media_ip: str | None = None, rtp_port_base: int = 40000, rtp_port_range: int = 2000,
                 timer_t1: float = 0.5, resolver: Callable[[str, int], Awaitable[tuple[str, int]]] | None = None,
                 tls_cert: Any = None, tls_key: Any = None, tls_ca: Any = None,
                 tls_require_client_cert: bool = False, tls_server_name: str | None = None, srtp: bool = False):
        t = transport.lower().strip()
        parts = {x.strip() for x in ("udp+tcp" if t == "both" else t).replace(",", "+").split("+")}
        if not parts or not parts <= {"udp", "tcp", "tls"} or {"tcp", "tls"} <= parts:
            raise ValueError(f"transport must be 'udp', 'tcp', 'tls', 'both' or 'udp+tls', not {transport!r}")
        if (tls_cert is None) != (tls_key is None) and tls_key is not None:
            raise ValueError("tls_key needs tls_cert")
        if tls_require_client_cert and tls_ca is None:
            raise ValueError("tls_require_client_cert needs tls_ca")
        self._transports = parts
        self.name, self.ip, self.port, self.domain = name, ip, port, domain
        self.transport = "tls" if "tls" in parts else ("udp" if "udp" in parts and t != "tcp" else "tcp")
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self.tls_require_client_cert = tls_require_client_cert
        self.tls_server_name = tls_server_name
        self.srtp = srtp
        self.media_ip = media_ip or ip
        self.timer_t1 = timer_t1
        self.resolver = resolver
        self.ring_seconds = 0.0
        self.answer_status = 200
        self.calls_received: dict[str, CallStats] = {}
        self.calls_answered: dict[str, CallStats] = {}
        self.log: deque[str] = deque(maxlen=2000)
        self.media_sessions: set[MediaEndpoint] = set()
        self._ports = PortAllocator(self.media_ip, rtp_port_base, min(65535, rtp_port_base + rtp_port_range - 1))
        self._events = _Events(name)
        self.tl = TransportLayer(self._events)
        self.tl.on_message = lambda msg, src: self._dispatch(msg, src)
        self.tl.on_bad_message = self._on_bad_message
        self.tl.on_connection_closed = self._on_connection_closed
        self._client_ssl: Any = None
        self.table = TransactionTable()
        self._dialogs: dict[tuple[str, str, str], Dialog] = {}
        self._regs: dict[str, _Reg] = {}
        self._call_logs: dict[str, tuple[float, list[str]]] = {}
        self._ended_events: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t_start = 0.0
        self._started = self._closed = False

    def __repr__(self) -> str:
        return f"<UserAgent {self.name} {hostport(self.ip, self.port)} {'/'.join(sorted(self._transports))}>"

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> tuple[str, int]:
        """``(ip, port)`` the UA listens on."""
        return (self.ip, self.port)

    def uri(self, user: str | None = None) -> str:
        """``sip:<user>@<ip>:<port>``: a URI reaching this UA directly."""
        return f"sip:{user or self.name}@{hostport(self.ip, self.port)}"

    def connections(self) -> list[Connection]:
        """The TCP/TLS connections open now (accepted and opened)."""
        return list(self.tl.conns.values())

    async def start(self) -> None:
        """Bind the SIP listeners. Raises OSError (``ssl.SSLError`` included) when a
        socket cannot be bound or a certificate/key/CA file cannot be loaded."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._t_start = self._loop.time()
        stream = "tcp" if "tcp" in self._transports else ("tls" if "tls" in self._transports and self.tls_cert else None)
        try:
            if "tls" in self._transports:
                self._client_ssl = client_context(self.tls_cert, self.tls_key, self.tls_ca)
            if self.port == 0:
                self.port = _free_port(self.ip, stream is not None)
            if "udp" in self._transports:
                await self.tl.listen_udp(self.ip, self.port)
            if stream is not None:
                ctx = None
                if stream == "tls":
                    ctx = server_context(self.tls_cert, self.tls_key, self.tls_ca,
                                         require_client_cert=self.tls_require_client_cert)
                await self.tl.listen_stream(self.ip, self.port, tls=ctx)
        except BaseException:
            await self.close()
            raise
        self._started = True
        log.info("%s: listening on %s", self.name, self)

    async def close(self) -> None:
        """Close every socket, connection, media session, timer and task it opened.
        Pending :meth:`call` coroutines return promptly with an error result; no BYE is
        sent for dialogs still up. Registrations are removed first (``Expires: 0``, at
        most :data:`UNREGISTER_ON_CLOSE_S` seconds)."""
        if self._closed:
            return
        if self._regs and self._started:
            try:
                await asyncio.wait_for(self.unregister(), UNREGISTER_ON_CLOSE_S)
            except asyncio.TimeoutError:
                log.warning("%s: un-registration did not finish within %.1f s", self.name, UNREGISTER_ON_CLOSE_S)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for tx in self.table:
            if tx.is_client and isinstance(tx.tu, _Tx) and tx.tu.queue is not None:
                tx.tu.queue.put_nowait(None)
        for d in list(self._dialogs.values()):
            self._end_dialog(d, "UA closed")
        for m in list(self.media_sessions):
            m.close()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await self.tl.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> "UserAgent":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task failed", self.name, exc_info=task.exception())

    @property
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ transactions
    def _run(self, tx: Any, actions: list) -> None:
        """Carry out a transaction's actions, then re-arm the one timer."""
        ctx: _Tx = tx.tu
        for a in actions:
            if type(a) is Send:
                retransmit = id(a.data) in ctx.sent
                ctx.sent.add(id(a.data))
                try:
                    self._send(a.data, ctx.flow, retransmit)
                except (SendFailed, OSError) as exc:
                    log.debug("%s: send on %s failed: %s", self.name, ctx.flow, exc)
                    self._run(tx, tx.on_transport_error(self._now))
            elif type(a) is Deliver:
                self._deliver(tx, a.msg)
            elif type(a) is Timeout and ctx.queue is not None:
                ctx.queue.put_nowait(_Failure(408, f"Timer {a.timer}"))
            elif type(a) is TransportError and ctx.queue is not None:
                ctx.queue.put_nowait(_Failure(503, a.reason or f"{self._label(ctx.flow)} failed"))
            elif type(a) is Terminated:
                self.table.remove(tx)
        self._arm()

    def _arm(self) -> None:
        if self._closed or self._loop is None:
            return
        deadline = self.table.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        for tx, actions in self.table.due(self._now):
            self._run(tx, actions)
        self._arm()

    def _deliver(self, tx: Any, msg: Request | Response) -> None:
        ctx: _Tx = tx.tu
        if isinstance(msg, Response):
            if ctx.ack is not None and 200 <= msg.status < 300:  # 2xx retransmission: ACK again
                self._send(ctx.ack[0], ctx.ack[1], retransmit=True)
            elif ctx.queue is not None:
                ctx.queue.put_nowait(msg)
        elif msg.method == "ACK":
            self._on_ack(msg)
        else:
            self._on_request(tx, msg)

    def _client_tx(self, req: Request, flow: Flow, t1: float) -> Any:
        """Start a client transaction for ``req`` on ``flow``."""
        cls = ClientInviteTransaction if req.method == "INVITE" else ClientNonInviteTransaction
        tx = cls(req, reliable=flow.is_stream, timers=TimerConfig(t1=t1), now=self._now)
        tx.tu = _Tx(flow, queue=asyncio.Queue())
        self.table.add(tx)
        self._run(tx, tx.start(self._now))
        return tx

    async def _final(self, tx: Any, deadline: float) -> tuple[Response | _Failure | None, bool]:
        """Wait for ``tx``'s final response until ``deadline`` (loop time): ``(final or
        failure or None on deadline, provisional seen)``. Raises _Closed."""
        got_1xx = False
        while True:
            remaining = deadline - self._now
            if remaining <= 0:
                return None, got_1xx
            try:
                item = await asyncio.wait_for(tx.tu.queue.get(), remaining)
            except asyncio.TimeoutError:
                continue
            if item is None:
                raise _Closed()
            if isinstance(item, Response) and item.status < 200:
                got_1xx = True
                continue
            return item, got_1xx

    async def _non_invite(self, req: Request, flow: Flow, t1: float) -> Response | None:
        """Run a non-INVITE client transaction (Timers E/F, RFC 3261 §17.1.2): its final
        response, a 503 for a transport error, None after Timer F."""
        tx = self._client_tx(req, flow, t1)
        final, _ = await self._final(tx, self._now + 64 * t1 + 1.0)
        if isinstance(final, _Failure):
            return Response(503, "Service Unavailable") if final.status == 503 else None
        return final

    # ------------------------------------------------------------------ transport
    def _label(self, flow: Flow) -> str:
        return f"{hostport(*flow.remote)} ({flow.transport})"

    def _send(self, msg: Request | Response, flow: Flow, retransmit: bool = False) -> None:
        """Send ``msg`` on ``flow`` and trace it. Raises TransportError (OSError)."""
        if self._closed:
            raise SendFailed("UA closed")
        self._trace("→", msg, flow, retransmit)
        self.tl.send(flow, msg.to_bytes())

    def _trace(self, direction: str, msg: Request | Response, flow: Flow, retransmit: bool = False) -> None:
        if isinstance(msg, Request):
            first = f"{msg.method} {msg.uri}"
        else:
            try:
                method = msg.cseq[1]
            except ValueError:
                method = "?"
            first = f"{msg.status} {msg.reason} ({method})"
        t0, lines = self._call_logs.get(msg.call_id, (self._t_start, None))
        line = f"{(self._now - t0) * 1000:8.1f} ms {direction} {self._label(flow)} {first}"
        if retransmit:
            line += " [retransmission]"
        if lines is not None:
            lines.append(line)
        self.log.append(f"[{self.name}] {line}")
        log.debug("%s: %s", self.name, line)

    async def _resolve(self, host: str, port: int) -> tuple[str, int]:
        h = host.strip("[]")
        if is_ip_literal(h):
            return (h, port)
        if self.resolver is not None:
            return await self.resolver(h, port)
        infos = await asyncio.get_running_loop().getaddrinfo(h, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        return (infos[0][4][0], port)

    async def _flow_to(self, host: str, port: int, transport: str, fallback: Flow | None = None) -> Flow:
        """A flow to ``host:port``: UDP from the listener, or an open TCP/TLS connection
        (an existing one, ``fallback`` when it goes there, else a new one). Raises
        OSError naming the cause."""
        ip, port = await self._resolve(host, port)
        if transport not in _STREAM:
            return Flow("udp", (self.ip, self.port), (ip, port))
        conn = self.tl.find_connection(transport, ip, port)
        if conn is not None:
            return conn.flow
        if fallback is not None and fallback.transport == transport and fallback.conn_id in self.tl.by_id:
            return fallback
        try:
            conn = await self.tl.connect(transport, ip, port, local_ip=self.ip, ssl_ctx=self._client_ssl,
                                         verify_name=self.tls_server_name)
        except SendFailed as exc:
            cause = self._events.causes.get(f"{ip}:{port}")
            raise OSError(f"{exc}: {cause}" if cause else str(exc)) from None
        if conn.closed:
            raise OSError(f"{transport.upper()} connection to {hostport(ip, port)} closed: "
                          f"{conn.attrs.get('close_reason', 'by the peer')}")
        return conn.flow

    def _on_connection_closed(self, conn: Connection) -> None:
        """RFC 3261 §17.1.4: a client transaction whose connection is gone fails (503)."""
        reason = conn.attrs.get("close_reason") or self._events.causes.get(f"{conn.remote[0]}:{conn.remote[1]}") \
            or "closed"
        for tx in list(self.table):
            if tx.is_client and tx.tu.flow.conn_id == conn.id and tx.tu.ack is None:
                self._run(tx, [TransportError(f"{conn.transport.upper()} connection to {hostport(*conn.remote)} "
                                              f"lost before a final response: {reason}"), *tx.on_transport_error(self._now)])

    # ------------------------------------------------------------------ receive
    def _on_bad_message(self, exc: ParseError, src: Source) -> None:
        log.warning("%s: malformed message from %s:%s: %s", self.name, src.ip, src.port, exc.reason)
        req = exc.partial
        if isinstance(req, Request) and req.method != "ACK":
            try:
                self._send(make_response(req, 400, f"Bad Request ({clean_reason(exc.reason)})"), src.flow)
            except Exception:  # noqa: BLE001 - a 400 is best effort
                log.debug("%s: could not answer 400", self.name, exc_info=True)

    def _dispatch(self, msg: Request | Response, src: Any) -> None:
        """Every well-formed message from the transport (``src`` a Source): trace it and
        hand it to its transaction, or start a server transaction."""
        try:
            flow = src.flow
            now = self._now
            if isinstance(msg, Request) and msg.method == "INVITE" and msg.to_tag is None:
                self._call_logs.setdefault(msg.call_id, (now, []))
            self._trace("←", msg, flow)
            if isinstance(msg, Response):
                if len(msg.headers.get_all("Via")) != 1:  # RFC 3261 §8.1.3.3
                    return
                tx = self.table.find_client(msg)
                if tx is not None:
                    self._run(tx, tx.on_message(msg, now))
                return
            tx = self.table.find_server(msg)
            if tx is not None:
                self._run(tx, tx.on_message(msg, now))
            elif msg.method == "ACK":
                self._on_ack(msg)
            else:
                cls = ServerInviteTransaction if msg.method == "INVITE" else ServerNonInviteTransaction
                tx = cls(msg, reliable=flow.is_stream, timers=TimerConfig(t1=self.timer_t1), now=now)
                tx.tu = _Tx(flow)
                self.table.add(tx)
                self._run(tx, tx.start(now))
        except Exception:
            log.exception("%s: error handling %r; dropped", self.name, msg)

    def _respond(self, tx: Any, status: int, reason: str | None = None, *, body: bytes = b"",
                 extra: list[tuple[str, str]] | None = None, tag: bool = True) -> Response:
        extra = list(extra or []) + [("Server", f"{USER_AGENT}/{self.name}")]
        if body:
            extra.append(("Content-Type", "application/sdp"))
        resp = make_response(tx.request, status, reason, to_tag=tx.tu.to_tag if tag else None, body=body, extra=extra)
        self._run(tx, tx.send_response(resp, self._now))
        return resp

    def _reject(self, tx: Any, status: int, reason: str | None = None, extra: list[tuple[str, str]] | None = None) -> None:
        """A 3xx–6xx final to an INVITE (the transaction retransmits it, Timer G)."""
        self._respond(tx, status, reason, extra=extra)
        if tx.tu.stats is not None:
            tx.tu.stats.status = status
            self._finish_stats(tx.tu.stats, None, f"rejected {status}")

    def _contact(self, user: str, transport: str) -> str:
        uri = f"sip:{user}@{hostport(self.ip, self.port)}"
        return f"<{uri};transport={transport}>" if transport in _STREAM else f"<{uri}>"

    def _dialog_of(self, req: Request) -> Dialog | None:
        return self._dialogs.get((req.call_id, req.to_tag or "", req.from_tag or ""))

    def _on_request(self, tx: Any, req: Request) -> None:
        handler = {"INVITE": self._on_invite, "BYE": self._on_bye, "CANCEL": self._on_cancel,
                   "OPTIONS": self._on_options, "INFO": self._on_info}.get(req.method)
        if handler is None:
            self._respond(tx, 405, extra=[("Allow", ALLOW)])
        else:
            handler(tx, req)

    # ------------------------------------------------------------------ UAS
    def _on_invite(self, tx: Any, req: Request) -> None:
        if req.to_tag is not None:
            self._on_reinvite(tx, req)
            return
        t0, lines = self._call_logs.setdefault(req.call_id, (self._now, []))
        conn = self.tl.by_id.get(tx.tu.flow.conn_id)
        stats = CallStats(call_id=req.call_id, from_uri=str(req.from_.uri), to_uri=str(req.to.uri),
                          peer=self._label(tx.tu.flow), sip_local=tuple(tx.tu.flow.local), ladder=lines,
                          transport=tx.tu.flow.transport,
                          tls_peer_names=list(conn.peer_names) if conn is not None else [])
        tx.tu.stats = stats
        self.calls_received[req.call_id] = stats
        self._ended_events.setdefault(req.call_id, asyncio.Event())
        self._respond(tx, 100, tag=False)
        offer, problem = self._check_invite(req)
        if problem is not None:
            self._reject(tx, *problem)
            return
        tx.tu.task = self._spawn(self._answer(tx, req, stats, offer))

    def _check_invite(self, req: Request) -> tuple[SdpInfo | None, tuple | None]:
        """The INVITE's SDP offer (None without body) and why it must be rejected
        (``(status, reason, extra)``) or None."""
        require = req.headers.get("Require")
        if require:
            return None, (420, None, [("Unsupported", require)])
        contacts = req.headers.get_all("Contact")
        try:
            if len(contacts) != 1 or parse_name_addr(contacts[0]).uri is None:
                raise UriError("no Contact")
        except UriError:
            return None, (400, "Bad Request (INVITE needs exactly one Contact)", None)
        if not req.body:
            return None, None
        if req.content_type != "application/sdp":
            return None, (415, None, [("Accept", "application/sdp")])
        try:
            offer = parse_sdp(req.body)
        except ValueError as exc:
            return None, (488, f"Not Acceptable Here ({clean_reason(str(exc))})", None)
        if answer_pts(offer)[1] is None:
            return None, (488, "Not Acceptable Here (no common codec: PCMA/PCMU)", None)
        problem = offer_problem(offer, require_srtp=self.srtp, allow_unencrypted_srtcp=_UNENC)
        return offer, ((488, f"Not Acceptable Here ({problem})", None) if problem else None)

    async def _answer(self, tx: Any, req: Request, stats: CallStats, offer: SdpInfo | None) -> None:
        """Ring, then answer (or reject with ``answer_status``); the 2xx is retransmitted
        until the ACK."""
        media: MediaEndpoint | None = None
        try:
            rr = [("Record-Route", v) for v in req.headers.get_all("Record-Route")]
            contact = self._contact(self.name, tx.tu.flow.transport)
            self._respond(tx, 180, extra=rr + [("Contact", contact)])
            if self.ring_seconds > 0:
                await asyncio.sleep(self.ring_seconds)
            if not 200 <= self.answer_status < 300:
                self._reject(tx, self.answer_status)
                return
            media = self.open_media()
            body = self._session_answer(media, offer)
            d = uas_dialog(req, tx.tu.to_tag, tx.tu.flow, self.name, random.randrange(1, 10000))
            d.stats, d.media, d.offer_sent_in_2xx, d.ended = stats, media, offer is None, asyncio.Event()
            media = None  # owned by the dialog now
            self._dialogs[d.key] = d
            ev = d.acks.setdefault(d.invite_cseq, asyncio.Event())
            resp = self._respond(tx, 200, body=body, extra=rr + [("Contact", contact), ("Allow", ALLOW)])
            stats.status, stats.answered = 200, True
            self.calls_answered[req.call_id] = stats
            await self._reliable_2xx(d, tx.tu.flow, resp, ev)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: answering %s failed", self.name, req.call_id)
            if tx.final_response is None:
                self._reject(tx, 500, f"Server Internal Error ({clean_reason(str(exc))})")
        finally:
            if media is not None:
                media.close()

    def _session_answer(self, media: MediaEndpoint, offer: SdpInfo | None) -> bytes:
        """Our SDP for a new session: the answer to ``offer`` (media keyed), or an offer
        when the INVITE had none (the answer comes in the ACK)."""
        crypto = None
        if offer is not None:
            pts, send_pt = answer_pts(offer)
            media.set_remote(offer, send_pt)
            media.ptime = offer.ptime or 20
            keys = srtp_answer(offer, None, allow_unencrypted_srtcp=_UNENC)
            if keys is not None:
                theirs, ours = keys
                media.key_srtp(ours, theirs)
                crypto = [ours]
        else:
            pts = list(OFFER_PTS)
            if self.srtp:
                media.srtp_offer = crypto = sdes.make_offer(include_unencrypted_srtcp=_UNENC)
        return build_sdp(self.name, random.randrange(1, 2**31), self.media_ip, media.port, pts, media.ptime,
                         crypto=crypto)

    async def _reliable_2xx(self, d: Dialog, flow: Flow, resp: Response, ev: asyncio.Event) -> None:
        """Retransmit a 2xx over UDP (T1 doubling, capped at T2) until its ACK; none
        within 64*T1 ends the call with BYE (RFC 3261 §13.3.1.4)."""
        deadline = self._now + 64 * self.timer_t1
        interval = self.timer_t1
        while not ev.is_set() and not d.ended.is_set() and self._now < deadline:
            wait = min(interval, deadline - self._now) if flow.transport == "udp" else deadline - self._now
            try:
                await asyncio.wait_for(ev.wait(), max(0.0, wait))
            except asyncio.TimeoutError:
                if flow.transport == "udp" and self._now < deadline and not ev.is_set():
                    try:
                        self._send(resp, flow, retransmit=True)
                    except OSError:
                        pass
                    interval = min(2 * interval, T2)
        if not ev.is_set() and not d.ended.is_set():
            log.warning("%s: no ACK for the 2xx of %s; hanging up", self.name, d.call_id)
            d.acks.pop(resp.cseq[0], None)
            await self._send_bye(d, "no ACK")

    def _on_reinvite(self, tx: Any, req: Request) -> None:
        """A re-INVITE (RFC 3261 §14.2): new remote address/keys from its offer, our
        answer with the same port; the 2xx is retransmitted until the ACK."""
        d = self._dialog_of(req)
        if d is None or d.media is None:
            self._respond(tx, 481, tag=False)
            return
        media = d.media
        crypto = [media.srtp_ours] if media.srtp and media.srtp_ours else None
        if req.body:
            try:
                sdp = parse_sdp(req.body)
                problem = offer_problem(sdp, require_srtp=self.srtp, allow_unencrypted_srtcp=_UNENC)
                if problem is not None:
                    raise ValueError(problem)
                keys = srtp_answer(sdp, media.srtp_ours, allow_unencrypted_srtcp=_UNENC)
                if keys is not None:
                    media.key_srtp(keys[1], keys[0])
                    crypto = [keys[1]]
                else:
                    media.tx_srtp = media.rx_srtp = media.srtp_ours = media.srtp_theirs = None
                    crypto = None
                media.set_remote(sdp, answer_pts(sdp)[1])
            except ValueError as exc:
                self._respond(tx, 488, f"Not Acceptable Here ({clean_reason(str(exc))})", tag=False)
                return
        try:
            d.remote_target = str(parse_name_addr(req.headers.get("Contact") or "").uri or d.remote_target)
        except UriError:
            pass
        body = build_sdp(self.name, 1, self.media_ip, media.port, list(OFFER_PTS), media.ptime, crypto=crypto)
        ev = d.acks.setdefault(req.cseq[0], asyncio.Event())
        resp = self._respond(tx, 200, body=body, extra=[("Contact", self._contact(d.contact_user, d.transport))],
                             tag=False)
        self._spawn(self._reliable_2xx(d, tx.tu.flow, resp, ev))

    def _on_ack(self, req: Request) -> None:
        """An ACK for a 2xx (its own transaction, RFC 3261 §17.1.1.3): stops the 2xx
        retransmissions; carries the answer when we offered in the 2xx; starts media."""
        d = self._dialog_of(req)
        if d is None:
            log.debug("%s: ACK for no dialog dropped", self.name)
            return
        ev = d.acks.pop(req.cseq[0], None)
        if ev is not None:
            ev.set()
        media = d.media
        if media is None:
            return
        if d.offer_sent_in_2xx and media.remote is None and req.body:
            try:
                sdp = parse_sdp(req.body)
                keys = accept_srtp_answer(media.srtp_offer, sdp)
                if keys is not None:
                    media.key_srtp(*keys)
                    media.srtp_offer = None
                media.set_remote(sdp, first_audio_pt(sdp))
            except ValueError as exc:
                log.warning("%s: bad SDP answer in ACK: %s", self.name, exc)
        if d.role == "uas" and not media.started and req.cseq[0] == d.invite_cseq:
            media.start(None, media.ptime)

    def _on_bye(self, tx: Any, req: Request) -> None:
        d = self._dialog_of(req)
        if d is None:
            self._respond(tx, 481, tag=False)
            return
        self._end_dialog(d, "remote BYE")
        self._respond(tx, 200, tag=False)

    def _on_cancel(self, tx: Any, req: Request) -> None:
        """CANCEL (RFC 3261 §9.2): 200 to it, 487 to the INVITE when still unanswered."""
        inv = self.table.find_invite_for_cancel(req)
        if inv is None:
            self._respond(tx, 481, tag=False)
            return
        tx.tu.to_tag = inv.tu.to_tag
        self._respond(tx, 200)
        if inv.final_response is None:
            if inv.tu.task is not None:
                inv.tu.task.cancel()
            self._reject(inv, 487)

    def _on_options(self, tx: Any, req: Request) -> None:
        self._respond(tx, 200, tag=req.to_tag is None, extra=[("Allow", ALLOW), ("Accept", "application/sdp")])

    def _on_info(self, tx: Any, req: Request) -> None:
        self._respond(tx, 200 if self._dialog_of(req) is not None else 481, tag=False)

    # ------------------------------------------------------------------ dialogs
    def _via(self, transport: str) -> str:
        return f"SIP/2.0/{transport.upper()} {hostport(self.ip, self.port)};rport;branch={new_branch()}"

    async def _dialog_request(self, d: Dialog, method: str, cseq: int) -> tuple[Request, Flow]:
        """An in-dialog request and the flow to its next hop (RFC 3261 §12.2.1.1; a
        transport this UA does not speak falls back to the dialog's)."""
        req, next_hop = in_dialog_request(d, method, cseq, self._via(d.transport))
        if method != "ACK":
            req.headers.add("User-Agent", f"{USER_AGENT}/{self.name}")
        uri = parse_uri(next_hop)
        transport = (uri.transport or "").lower() or ("tls" if uri.scheme == "sips" else d.transport)
        if transport not in self._transports:
            transport = d.transport
        req.headers.replace_first("Via", self._via(transport))
        port = uri.port or (5061 if transport == "tls" else 5060)
        flow = await self._flow_to(uri.params.get("maddr") or uri.host, port, transport, fallback=d.flow)
        return req, flow

    async def _send_bye(self, d: Dialog, reason: str) -> Response | None:
        """BYE (RFC 3261 §15.1.1): its final response, None without one; the dialog ends."""
        if d.ended.is_set() or self._closed:
            return None
        if d.media is not None:
            d.media.stop()
        d.local_seq += 1
        try:
            bye, flow = await self._dialog_request(d, "BYE", d.local_seq)
            resp = await self._non_invite(bye, flow, self.timer_t1)
        except (OSError, UriError, _Closed) as exc:
            log.warning("%s: BYE for %s failed: %s", self.name, d.call_id, exc)
            resp = None
        self._end_dialog(d, f"local BYE ({reason})")
        return resp

    async def hangup(self, call_id: str) -> int | None:
        """Send BYE in every dialog of ``call_id``; the BYE's final status (None when
        there was no dialog or no answer)."""
        status = None
        for d in [d for d in self._dialogs.values() if d.call_id == call_id]:
            resp = await self._send_bye(d, "hangup")
            status = resp.status if resp is not None else status
        return status

    async def reinvite(self, call_id: str, timer_t1: float = 0.5) -> int | None:
        """Send a re-INVITE in the dialog of ``call_id`` offering the current session again
        (same port and keys, RFC 3261 §14.1) and ACK its 2xx; the final status, or None
        without a dialog or a final response."""
        d = next((x for x in self._dialogs.values() if x.call_id == call_id), None)
        if d is None or d.media is None:
            return None
        media = d.media
        d.local_seq += 1
        invite, flow = await self._dialog_request(d, "INVITE", d.local_seq)
        invite.headers.add("Contact", self._contact(d.contact_user, d.transport))
        invite.headers.add("Content-Type", "application/sdp")
        crypto = [media.srtp_ours] if media.srtp and media.srtp_ours else None
        if crypto:
            media.srtp_offer = crypto
        invite.body = build_sdp(d.contact_user, 1, self.media_ip, media.port, list(OFFER_PTS), media.ptime, crypto=crypto)
        tx = self._client_tx(invite, flow, timer_t1)
        final, _ = await self._final(tx, self._now + 64 * timer_t1)
        if not isinstance(final, Response):
            return None
        if 200 <= final.status < 300:
            ack, ack_flow = await self._dialog_request(d, "ACK", invite.cseq[0])
            self._send(ack, ack_flow)
            tx.tu.ack = (ack, ack_flow)
            try:
                answer = parse_sdp(final.body)
                keys = accept_srtp_answer(media.srtp_offer, answer)
                if keys is not None:
                    media.key_srtp(*keys)
                media.set_remote(answer, first_audio_pt(answer))
            except ValueError as exc:
                log.warning("%s: bad SDP answer to re-INVITE: %s", self.name, exc)
        media.srtp_offer = None
        return final.status

    def _end_dialog(self, d: Dialog, reason: str) -> None:
        if d.ended.is_set():
            return
        d.end_reason = reason
        d.ended.set()
        self._dialogs.pop(d.key, None)
        for ev in d.acks.values():
            ev.set()
        if d.media is not None:
            d.media.close()
        if d.stats is not None:
            self._finish_stats(d.stats, d.media, reason)

    def _finish_stats(self, stats: CallStats, media: MediaEndpoint | None, reason: str) -> None:
        if media is not None:
            media.fill(stats)
        stats.ended, stats.end_reason = True, reason
        ev = self._ended_events.get(stats.call_id)
        if ev is not None:
            ev.set()

    def refresh_stats(self) -> None:
        """Copy the live packet counters of calls still up into their CallStats."""
        for d in self._dialogs.values():
            if d.stats is not None and d.media is not None:
                d.media.fill(d.stats)

    async def wait_call_ended(self, call_id: str, timeout: float = 5.0) -> CallStats | None:
        """Wait until the answered or rejected call ``call_id`` has ended; its stats, or
        None on timeout or when this UA never saw that call."""
        ev = self._ended_events.setdefault(call_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.calls_received.get(call_id)

    # ------------------------------------------------------------------ media
    def open_media(self) -> MediaEndpoint:
        """A new media endpoint on a fresh RTP/RTCP port pair, reading. Raises
        OSError (:class:`~edgeway.media.ports.PortsExhausted` is not one: RuntimeError)."""
        pair = self._ports.allocate_pair()
        media = MediaEndpoint(pair, self.media_ip, self.name, self._media_closed)
        self.media_sessions.add(media)
        media.open()
        return media

    def _media_closed(self, media: MediaEndpoint) -> None:
        self.media_sessions.discard(media)
        self._ports.release(media.pair)

    # ------------------------------------------------------------------ registration
    @property
    def registrations(self) -> dict[str, RegistrationResult]:
        """Address-of-record → the latest report of each registration this UA holds."""
        return {aor: reg.result for aor, reg in self._regs.items()}

    async def register(self, user: str, domain: str, *, proxy: tuple[str, int, str], password: str,
                       username: str | None = None, expires: int = DEFAULT_EXPIRES_S,
                       timer_t1: float = 0.5) -> RegistrationResult:
        """Register ``sip:<user>@<domain>`` at its registrar through the outbound proxy
        ``proxy`` = ``(host, port, transport)`` (RFC 3261 §10.2; preloaded Route, Contact
        of this UA, ``Supported: path``), answering a digest challenge with ``username``
        (default ``user``) and ``password``. Returns once the first round ended: bound
        (``ok``) or why not (a snapshot; :attr:`registrations` has the live state). While bound the UA refreshes the binding before it expires
        (:func:`~edgeway.ua.register.refresh_after`); :meth:`unregister` and
        :meth:`close` remove it. The registration's requests and the requests sent to it
        use the connection it was made on. Never raises for network problems; raises
        ValueError for a transport it does not speak, RuntimeError when not started."""
        host, pport, ptrans = proxy[0], proxy[1], proxy[2].lower()
        if ptrans not in self._transports:
            raise ValueError(f"{self.name} does not speak {ptrans!r} (it uses {sorted(self._transports)})")
        if not self._started or self._closed:
            raise RuntimeError(f"{self.name} is not running")
        aor = f"sip:{user}@{domain}"
        old = self._regs.pop(aor, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        contact = self._contact(user, ptrans)[1:-1]
        route = f"<sip:{hostport(host, pport)};transport={ptrans};lr>"
        machine = Registration(aor, contact, password=password, username=username, expires=expires, route=[route],
                               user_agent=f"{USER_AGENT}/{self.name}")
        t0, lines = self._call_logs.setdefault(machine.call_id, (self._now, []))
        reg = _Reg(machine, (host, pport, ptrans), timer_t1,
                   RegistrationResult(aor=aor, contact=contact, call_id=machine.call_id, transport=ptrans,
                                      ladder=lines))
        self._regs[aor] = reg
        outcome = await self._reg_round(reg, machine.register(self._now))
        reg.result.duration_ms = (self._now - t0) * 1000
        if isinstance(outcome, Registered):
            reg.task = self._spawn(self._refresher(reg))
        return _snapshot(reg.result)

    async def unregister(self, aor: str | None = None) -> dict[str, RegistrationResult]:
        """Remove the binding of ``aor`` (default: every registration) with ``Expires: 0``
        (RFC 3261 §10.2.2) and stop refreshing it; each one's final report."""
        out = {}
        for key in [aor] if aor is not None else list(self._regs):
            reg = self._regs.pop(key, None)
            if reg is None:
                continue
            if reg.task is not None and reg.task is not asyncio.current_task():
                reg.task.cancel()
                await asyncio.wait([reg.task], timeout=1.0)
            action = reg.machine.unregister(self._now)
            if action is not None:
                await self._reg_round(reg, action)
            out[key] = _snapshot(reg.result)
        return out

    async def _refresher(self, reg: _Reg) -> None:
        """Refresh ``reg`` at its refresh time until it is removed or a round fails."""
        while True:
            deadline = reg.machine.next_deadline()
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, deadline - self._now))
            action = reg.machine.due(self._now)
            if action is not None:
                outcome = await self._reg_round(reg, action)
                if isinstance(outcome, RegistrationFailed):
                    log.warning("%s: refreshing %s failed: %s", self.name, reg.result.aor, outcome.detail)
                    return

    async def _reg_round(self, reg: _Reg, action: Any) -> Any:
        """Run one registration round (each REGISTER in a client transaction on the
        registration's connection) until the machine says Registered, Unregistered or
        RegistrationFailed; ``reg.result`` is updated. Raises nothing but CancelledError."""
        m, res = reg.machine, reg.result
        host, port, transport = reg.proxy
        last: Response | None = None
        while isinstance(action, SendRegister):
            req = action.request
            try:
                flow = await self._flow_to(host, port, transport, fallback=reg.flow)
            except (OSError, asyncio.TimeoutError) as exc:
                action = m.failed(503, f"transport error reaching {hostport(host, port)}/{transport}: {exc}")
                break
            if reg.flow is None or reg.flow.conn_id != flow.conn_id:
                reg.flow = flow
                conn = self.tl.by_id.get(flow.conn_id)
                res.local, res.remote = flow.local, flow.remote
                res.tls_peer_names = list(conn.peer_names) if conn is not None else []
            req.headers.add("Via", self._via(flow.transport), first=True)
            try:
                tx = self._client_tx(req, flow, reg.t1)
                final, _ = await self._final(tx, self._now + 64 * reg.t1 + 1.0)
            except _Closed:
                action = m.failed(503, "UA closed during the registration")
                break
            if isinstance(final, Response):
                last = final
                action = m.receive(final, self._now)
                if action is None:
                    action = m.failed(500, f"unexpected response {final.status} {final.reason}")
            elif isinstance(final, _Failure):
                action = m.failed(final.status, f"{'timeout (Timer F)' if final.status == 408 else 'transport error'}:"
                                                f" {final.detail}")
            else:
                action = m.failed(408, f"no final response to REGISTER within {64 * reg.t1 + 1.0:.1f} s")
        if last is not None:
            res.status, res.reason = last.status, last.reason
        res.challenges, res.algorithm = m.challenges, m.algorithm
        if isinstance(action, Registered):
            res.ok, res.error, res.expires, res.path = True, None, action.expires, action.path
        elif isinstance(action, Unregistered):
            res.ok, res.expires = False, 0
        elif isinstance(action, RegistrationFailed):
            res.ok, res.error = False, action.detail
            if last is None:
                res.status, res.reason = action.status, action.reason
        return action

    # ------------------------------------------------------------------ UAC
    async def call(self, target_uri: str, *, proxy: tuple[str, int, str], from_user: str,
                   media_seconds: float = 2.0, ptime_ms: int = 20, timer_t1: float = 0.5,
                   timeout_s: float | None = None, to_uri: str | None = None,
                   extra_headers: list[tuple[str, str]] | None = None) -> CallResult:
        """Place a call to ``target_uri`` through ``proxy`` = ``(host, port, transport)``.

        The INVITE transaction runs with T1 = ``timer_t1``; with no final response
        within ``timeout_s`` (default 64*T1) the result is 408, or, after a provisional,
        the call is CANCELled. On 2xx: ACK through the route set, ``media_seconds`` of
        RTP (``ptime_ms`` packets) and RTCP both ways, then BYE. Never raises for
        network problems (they are in the :class:`CallResult`); raises ValueError for a
        transport it does not speak, RuntimeError when not started."""
        host, pport, ptrans = proxy[0], proxy[1], proxy[2].lower()
        if ptrans not in self._transports:
            raise ValueError(f"{self.name} does not speak {ptrans!r} (it uses {sorted(self._transports)})")
        if not self._started or self._closed:
            raise RuntimeError(f"{self.name} is not running")
        call_id = f"{secrets.token_hex(10)}@{self.domain}"
        t0, lines = self._call_logs.setdefault(call_id, (self._now, []))
        result = CallResult(call_id=call_id, ladder=lines, transport=ptrans)
        media: MediaEndpoint | None = None
        d: Dialog | None = None
        try:
            media = self._open_call_media(result)
            flow = await self._call_flow(result, host, pport, ptrans) if media is not None else None
            if flow is not None:
                invite = self._build_invite(call_id, target_uri, to_uri, flow, from_user, media, ptime_ms, extra_headers)
                d = await self._uac_invite(result, invite, flow, media, timer_t1, timeout_s)
            if d is not None:
                await self._exchange_media(d, media, media_seconds, ptime_ms)
                await self._hang_up(result, d, timer_t1)
        except _Closed:
            result.ok, result.error = False, result.error or "UA closed during the call"
        except Exception as exc:  # a test tool reports, it does not crash
            log.exception("%s: call %s failed", self.name, call_id)
            result.ok, result.error = False, f"internal error: {exc!r}"
        finally:
            if d is not None:
                self._end_dialog(d, d.end_reason or "call finished")
            if media is not None:
                media.close()
                media.fill(result)
            result.duration_ms = (self._now - t0) * 1000
        return result

    def _open_call_media(self, result: CallResult) -> MediaEndpoint | None:
        try:
            return self.open_media()
        except (OSError, RuntimeError) as exc:
            result.status, result.reason, result.error = 500, "no media ports", f"RTP port allocation failed: {exc}"
            return None

    async def _call_flow(self, result: CallResult, host: str, port: int, transport: str) -> Flow | None:
        try:
            flow = await self._flow_to(host, port, transport)
        except (OSError, asyncio.TimeoutError) as exc:
            result.status, result.reason = 503, "Service Unavailable"
            result.error = f"transport error reaching {hostport(host, port)}/{transport}: {exc}"
            return None
        conn = self.tl.by_id.get(flow.conn_id)
        result.tls_peer_names = list(conn.peer_names) if conn is not None else []
        return flow

    def _build_invite(self, call_id: str, target_uri: str, to_uri: str | None, flow: Flow, from_user: str,
                      media: MediaEndpoint, ptime_ms: int, extra_headers: list[tuple[str, str]] | None) -> Request:
        """The initial INVITE (RFC 3261 §8.1.1) with our SDP offer (SDES keys with ``srtp``)."""
        invite = Request("INVITE", target_uri)
        h = invite.headers
        h.add("Via", self._via(flow.transport))
        h.add("Max-Forwards", "70")
        h.add("From", f'"{from_user}" <sip:{from_user}@{self.domain}>;tag={new_tag()}')
        h.add("To", f"<{to_uri or target_uri}>")
        h.add("Call-ID", call_id)
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self._contact(from_user, flow.transport))
        h.add("Allow", ALLOW)
        h.add("User-Agent", f"{USER_AGENT}/{self.name}")
        for n, v in extra_headers or []:
            h.add(n, v)
        h.add("Content-Type", "application/sdp")
        crypto = None
        if self.srtp:
            media.srtp_offer = crypto = sdes.make_offer(include_unencrypted_srtcp=_UNENC)
        invite.body = build_sdp(from_user, random.randrange(1, 2**31), self.media_ip, media.port, list(OFFER_PTS),
                                ptime_ms, crypto=crypto)
        return invite

    async def _uac_invite(self, result: CallResult, invite: Request, flow: Flow, media: MediaEndpoint,
                          t1: float, timeout_s: float | None) -> Dialog | None:
        """The INVITE transaction and its ACK: the confirmed dialog, or None (``result``
        says why)."""
        timeout = 64 * t1 if timeout_s is None else timeout_s
        started = self._now
        tx = self._client_tx(invite, flow, t1)
        final, got_1xx = await self._final(tx, started + timeout)
        cancelled = final is None and got_1xx
        if cancelled:
            final = await self._cancel(tx, invite, flow, t1)
        if not isinstance(final, Response):
            self.table.remove(tx)
            self._invite_failed(result, final, got_1xx, timeout, flow)
            return None
        result.status, result.reason = final.status, final.reason
        if final.status >= 300:  # the transaction has ACKed it
            result.error = (f"no answer within {timeout:.1f} s; cancelled ({final.status} {final.reason})" if cancelled
                            else f"call rejected: {final.status} {final.reason}")
            return None
        result.setup_ms = (self._now - started) * 1000
        d = await self._confirm(tx, invite, final, flow)
        d.media = media
        self._accept_answer(result, final, media)
        if cancelled:
            result.ok, result.error = False, "answered after CANCEL"
        return d

    async def _cancel(self, tx: Any, invite: Request, flow: Flow, t1: float) -> Response | _Failure | None:
        """CANCEL a ringing INVITE (RFC 3261 §9.1) and wait for its final response."""
        cancel = Request("CANCEL", invite.uri)
        for n in ("Via", "Route", "Max-Forwards", "From", "To", "Call-ID"):
            for v in invite.headers.get_all(n):
                cancel.headers.add(n, v)
        cancel.headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
        cancel.headers.add("User-Agent", f"{USER_AGENT}/{self.name}")
        await self._non_invite(cancel, flow, t1)
        final, _ = await self._final(tx, self._now + 64 * t1)
        return final

    def _invite_failed(self, result: CallResult, failure: _Failure | None, got_1xx: bool, timeout: float,
                       flow: Flow) -> None:
        if isinstance(failure, _Failure) and failure.status == 503:
            result.status, result.reason = 503, "Service Unavailable"
            result.error = f"transport error: {failure.detail}"
            return
        result.status, result.reason = 408, "Request Timeout"
        result.error = (f"no final response within {timeout:.1f} s; CANCEL got no 487 either" if got_1xx else
                        f"timeout: no response to INVITE from {self._label(flow)} within {timeout:.1f} s (Timer B)")

    async def _confirm(self, tx: Any, invite: Request, final: Response, flow: Flow) -> Dialog:
        """The dialog of a 2xx (RFC 3261 §12.1.2) and its ACK (§13.2.2.4), sent end to
        end through the route set and again for each retransmitted 2xx."""
        d = uac_dialog(invite, final, flow, parse_name_addr(invite.headers.get("Contact") or "").uri.user or self.name)
        d.ended = asyncio.Event()
        self._dialogs[d.key] = d
        ack, ack_flow = await self._dialog_request(d, "ACK", invite.cseq[0])
        self._send(ack, ack_flow)
        tx.tu.ack = (ack, ack_flow)
        return d

    def _accept_answer(self, result: CallResult, final: Response, media: MediaEndpoint) -> None:
        """Check the 2xx's SDP answer against our offer; point and key the media."""
        result.ok = True
        if not final.body or final.content_type != "application/sdp":
            result.ok, result.error = False, "2xx carried no SDP answer"
            return
        try:
            answer = parse_sdp(final.body)
            pt = first_audio_pt(answer)
            if pt is None or not any(pt == p for p, _ in OFFER_PTS):
                raise ValueError("no offered audio codec in the answer")
            keys = accept_srtp_answer(media.srtp_offer, answer)
            if keys is not None:
                media.key_srtp(*keys)
                media.srtp_offer = None
            media.set_remote(answer, pt)
        except ValueError as exc:
            result.ok, result.error = False, f"unusable SDP answer: {exc}"

    async def _exchange_media(self, d: Dialog, media: MediaEndpoint, seconds: float, ptime_ms: int) -> None:
        """RTP both ways for ``seconds``, or until the far end hangs up."""
        if seconds > 0 and media.remote is not None:
            media.start(seconds, ptime_ms)
            waits = [asyncio.ensure_future(media.done.wait()), asyncio.ensure_future(d.ended.wait())]
            try:
                await asyncio.wait(waits, timeout=seconds + 5.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        media.stop()

    async def _hang_up(self, result: CallResult, d: Dialog, t1: float) -> None:
        """BYE unless the far end hung up first; a BYE without 2xx fails the call."""
        if d.ended.is_set():
            return
        resp = await self._send_bye(d, "call complete")
        result.bye_status = resp.status if resp is not None else None
        if resp is None:
            result.ok, result.error = False, result.error or f"no final response to BYE within {64 * t1:.1f} s"
        elif resp.status >= 300:
            result.ok, result.error = False, result.error or f"BYE answered {resp.status} {resp.reason}"
