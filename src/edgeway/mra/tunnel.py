"""The MRA HTTPS tunnel between core and edge, sans-IO (seed 002 §5.4, §13.1; issue 9 item 1).

Who connects to whom: the **core** opens mutual-TLS connections to the edge's tunnel port
(default 2222) and is the HTTP/2 **server** on them; the **edge** is the HTTP/2 **client**
and sends each request that arrived on its HTTPS listener as one stream (RFC 9113 §5). So
the edge never opens a connection inward, and the core never accepts one from outside.

Before the edge sends any request on a new connection it checks the core's credentials
(on top of mutual TLS with the traversal zone's verify subject name): its first stream is
``GET /.edgeway/tunnel-auth`` with a fresh ``x-edgeway-nonce``; the core answers ``200``
with ``x-edgeway-auth: <username> <hex HMAC-SHA256(password, "edgeway-tunnel:" + nonce)>``,
which the edge checks against its credential store (the traversal zone's username).

Nothing here does I/O or reads a clock: :class:`EdgeTunnel` and :class:`CoreTunnel` take
bytes (:meth:`~_Tunnel.receive_data`) and calls, and return events; the bytes to write are
collected by :meth:`~_Tunnel.data_to_send`. The asyncio adapters are
:mod:`edgeway.mra.edge` and :mod:`edgeway.mra.core`.

Flow control (RFC 9113 §5.2) is how bodies stream without unbounded buffering: received
DATA is only credited back to the peer when the consumer calls :meth:`~_Tunnel.ack`
(after it wrote the bytes on), so at most one stream window (:data:`STREAM_WINDOW`) is
buffered per stream; outbound DATA waits in a per-stream buffer until the peer's window
allows it, and the adapter stops reading its source while :meth:`~_Tunnel.pending` is
above :data:`SEND_HIGH_WATER`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

__all__ = [
    "AUTH_PATH", "STREAM_WINDOW", "CONNECTION_WINDOW", "MAX_CONCURRENT_STREAMS", "SEND_HIGH_WATER",
    "HOP_BY_HOP", "auth_digest", "forwardable_headers",
    "TunnelEvent", "RequestReceived", "ResponseReceived", "DataReceived", "StreamEnded", "StreamReset",
    "Authenticated", "AuthFailed", "PingAcked", "TunnelClosed", "ProtocolFailure",
    "EdgeTunnel", "CoreTunnel",
]

#: Path of the edge's credential check (the first stream of every connection).
AUTH_PATH = "/.edgeway/tunnel-auth"
#: Receive window per stream in bytes (SETTINGS_INITIAL_WINDOW_SIZE, RFC 9113 §6.5.2): the most
#: body bytes buffered per stream on the receiving side. 256 KiB: a few TLS records' worth per
#: round trip on loopback/LAN; the RFC default 65,535 throttles bulk bodies.
STREAM_WINDOW = 256 * 1024
#: Receive window of the whole connection (raised with WINDOW_UPDATE on stream 0).
CONNECTION_WINDOW = 16 * 1024 * 1024
#: Streams the core accepts at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS; RFC 9113
#: §6.5.2 recommends no less than 100).
MAX_CONCURRENT_STREAMS = 1000
#: Bytes waiting in a stream's outbound buffer above which the adapter pauses its source.
SEND_HIGH_WATER = 64 * 1024
#: Connection-specific header fields that HTTP/2 forbids (RFC 9113 §8.2.2) and that never
#: cross a proxy (RFC 9110 §7.6.1), plus ``host`` (carried as ``:authority``).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer",
    "proxy-authenticate", "proxy-authorization", "host", "http2-settings",
})


def auth_digest(password: str, nonce: str) -> str:
    """Hex HMAC-SHA256 of ``"edgeway-tunnel:" + nonce`` keyed with ``password``."""
    return hmac.new(password.encode(), f"edgeway-tunnel:{nonce}".encode(), hashlib.sha256).hexdigest()


def forwardable_headers(headers, extra_drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``headers`` (pairs) with lower-case names, without HTTP/2 pseudo-headers, hop-by-hop
    fields (:data:`HOP_BY_HOP`), fields named in a ``Connection`` header, and ``extra_drop``."""
    pairs = [(str(k).lower(), str(v)) for k, v in headers]
    named = {t.strip().lower() for k, v in pairs if k == "connection" for t in v.split(",")}
    drop = HOP_BY_HOP | named | extra_drop
    return [(k, v) for k, v in pairs if not k.startswith(":") and k not in drop]


# ---- events -------------------------------------------------------------------------------------

@dataclass(slots=True)
class TunnelEvent:
    """Base of what :meth:`_Tunnel.receive_data` returns."""


@dataclass(slots=True)
class RequestReceived(TunnelEvent):
    """Core: a request head on ``stream_id``; ``ended`` when it has no body."""

    stream_id: int
    method: str
    path: str
    authority: str
    headers: list[tuple[str, str]]
    ended: bool


@dataclass(slots=True)
class ResponseReceived(TunnelEvent):
    """Edge: the response head of ``stream_id``; ``ended`` when it has no body."""

    stream_id: int
    status: int
    headers: list[tuple[str, str]]
    ended: bool


@dataclass(slots=True)
class DataReceived(TunnelEvent):
    """Body bytes on ``stream_id``; credit them back with :meth:`_Tunnel.ack` once consumed."""

    stream_id: int
    data: bytes
    ended: bool


@dataclass(slots=True)
class StreamEnded(TunnelEvent):
    """The peer finished its side of ``stream_id`` (END_STREAM without data)."""

    stream_id: int


@dataclass(slots=True)
class StreamReset(TunnelEvent):
    """The peer reset ``stream_id`` (RST_STREAM, RFC 9113 §6.4); ``code`` the error code."""

    stream_id: int
    code: int


@dataclass(slots=True)
class Authenticated(TunnelEvent):
    """Edge: the core proved it holds the password of ``username``; requests may flow."""

    username: str


@dataclass(slots=True)
class AuthFailed(TunnelEvent):
    """Edge: the core's credentials were refused; the connection is being closed."""

    reason: str


@dataclass(slots=True)
class PingAcked(TunnelEvent):
    """The peer answered a PING (RFC 9113 §6.7)."""


@dataclass(slots=True)
class TunnelClosed(TunnelEvent):
    """The peer sent GOAWAY (RFC 9113 §6.8); ``code`` its error code."""

    code: int


@dataclass(slots=True)
class ProtocolFailure(TunnelEvent):
    """The peer broke HTTP/2; a GOAWAY is queued and the connection must be closed."""

    reason: str


# ---- the common machine -----------------------------------------------------------------------

class _Tunnel:
    """One HTTP/2 connection of the tunnel (either side): flow-controlled outbound DATA,
    consumer-paced inbound credit, PING, reset and close."""

    def __init__(self, client_side: bool):
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client_side, header_encoding="utf-8", validate_inbound_headers=True))
        self._out: dict[int, bytearray] = {}
        self._end: set[int] = set()
        self.closed = False

    def _start(self, settings: dict | None = None) -> None:
        self.h2.local_settings = h2.settings.Settings(client=self.h2.config.client_side, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0, **(settings or {})})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    def data_to_send(self) -> bytes:
        """Bytes to write to the connection now (empty when nothing is due)."""
        return self.h2.data_to_send()

    def receive_data(self, data: bytes) -> list[TunnelEvent]:
        """Feed bytes read from the connection; returns what happened, in order."""
        try:
            raw = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.closed = True
            return [ProtocolFailure(str(exc) or type(exc).__name__)]
        out: list[TunnelEvent] = []
        for ev in raw:
            self._translate(ev, out)
        return out

    def _translate(self, ev: h2.events.Event, out: list[TunnelEvent]) -> None:
        if isinstance(ev, h2.events.DataReceived):
            if ev.data:
                out.append(DataReceived(ev.stream_id, ev.data, ev.stream_ended is not None))
            else:
                # An empty DATA frame (END_STREAM alone) still has flow-controlled padding.
                self.ack(ev.stream_id, ev.flow_controlled_length)
                if ev.stream_ended is not None:
                    out.append(StreamEnded(ev.stream_id))
            if ev.data and ev.flow_controlled_length > len(ev.data):
                self.ack(ev.stream_id, ev.flow_controlled_length - len(ev.data))  # padding
        elif isinstance(ev, h2.events.StreamEnded):
            pass  # reported with the DATA or HEADERS that carried END_STREAM
        elif isinstance(ev, h2.events.StreamReset):
            self._forget(ev.stream_id)
            out.append(StreamReset(ev.stream_id, int(ev.error_code)))
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._flush_all()
        elif isinstance(ev, h2.events.PingAckReceived):
            out.append(PingAcked())
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closed = True
            out.append(TunnelClosed(int(ev.error_code)))

    # -- outbound body ----------------------------------------------------------------------------
    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Queue body bytes for ``stream_id`` (and END_STREAM when ``end``); they leave as the
        peer's flow-control windows allow (see :meth:`pending`)."""
        if stream_id in self._end:
            raise ValueError(f"stream {stream_id}: body already ended")
        buf = self._out.setdefault(stream_id, bytearray())
        buf += data
        if end:
            self._end.add(stream_id)
        self._flush(stream_id)

    def pending(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` waiting for flow-control window."""
        buf = self._out.get(stream_id)
        return len(buf) if buf else 0

    def _flush_all(self) -> None:
        for sid in list(self._out):
            self._flush(sid)

    def _flush(self, stream_id: int) -> None:
        buf = self._out.get(stream_id)
        if buf is None:
            return
        try:
            ending = stream_id in self._end
            while buf:
                n = min(len(buf), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                if n <= 0:
                    return
                last = ending and n == len(buf)
                self.h2.send_data(stream_id, bytes(buf[:n]), end_stream=last)
                del buf[:n]
                if last:
                    self._forget(stream_id)
                    return
            if ending:
                self.h2.end_stream(stream_id)
                self._forget(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self._out.pop(stream_id, None)
        self._end.discard(stream_id)

    # -- inbound credit, reset, ping, close --------------------------------------------------------
    def ack(self, stream_id: int, n: int) -> None:
        """Credit ``n`` consumed body bytes of ``stream_id`` back to the peer (WINDOW_UPDATE)."""
        if n <= 0:
            return
        try:
            self.h2.acknowledge_received_data(n, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Abandon ``stream_id`` (RST_STREAM); no-op if it is already closed."""
        self._forget(stream_id)
        try:
            self.h2.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def ping(self, opaque: bytes) -> None:
        """Send a PING with 8 ``opaque`` bytes; :class:`PingAcked` follows when answered."""
        self.h2.ping(opaque)

    def close(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY; the adapter writes :meth:`data_to_send` and closes the connection."""
        if not self.closed:
            self.closed = True
            try:
                self.h2.close_connection(code)
            except h2.exceptions.ProtocolError:
                pass

    @property
    def open_streams(self) -> int:
        """Streams open on the connection, in both directions."""
        return self.h2.open_outbound_streams + self.h2.open_inbound_streams


# ---- edge: HTTP/2 client -----------------------------------------------------------------------

class EdgeTunnel(_Tunnel):
    """The edge's side of one tunnel connection: HTTP/2 client (RFC 9113 §3.4: it sends the
    connection preface), first checking the core's credentials.

    ``credentials`` the edge's credential store (username → password); ``username`` the only
    username the zone accepts; ``nonce`` a fresh random string for the credential check.
    """

    def __init__(self, credentials: dict[str, str], username: str, nonce: str):
        super().__init__(client_side=True)
        self.credentials = credentials
        self.username = username
        self.nonce = nonce
        self.authenticated = False
        self._auth_stream: int | None = None

    def initiate(self) -> None:
        """Queue the connection preface, SETTINGS and the credential check request."""
        self._start()
        self._auth_stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(self._auth_stream, [(":method", "GET"), (":scheme", "https"), (":authority", "edge"),
                                                 (":path", AUTH_PATH), ("x-edgeway-nonce", self.nonce)], end_stream=True)

    def can_start(self) -> bool:
        """Whether a new stream may be opened now (authenticated, not closing, below the
        core's SETTINGS_MAX_CONCURRENT_STREAMS)."""
        return (self.authenticated and not self.closed
                and self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams)

    def start_request(self, method: str, path: str, authority: str, headers: list[tuple[str, str]], end: bool) -> int:
        """Open a stream with a request head; returns its stream id. ``headers`` must already
        be forwardable (:func:`forwardable_headers`). Raises ``RuntimeError`` unless
        :meth:`can_start`."""
        if not self.can_start():
            raise RuntimeError("tunnel cannot take a new stream")
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", method), (":scheme", "https"), (":authority", authority or "edge"),
                                   (":path", path), *headers], end_stream=end)
        return sid

    def _translate(self, ev: h2.events.Event, out: list[TunnelEvent]) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            if ev.stream_id == self._auth_stream:
                self._check_auth(ev.headers, out)
                return
            status, headers = 0, []
            for k, v in ev.headers:
                if k == ":status":
                    status = int(v)
                elif not k.startswith(":"):
                    headers.append((k, v))
            out.append(ResponseReceived(ev.stream_id, status, headers, ev.stream_ended is not None))
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            pass  # 1xx: not relayed (the outside side answers 100-continue itself)
        elif isinstance(ev, h2.events.TrailersReceived):
            out.append(StreamEnded(ev.stream_id))  # trailers are not relayed
        elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == self._auth_stream:
            self.ack(ev.stream_id, ev.flow_controlled_length)
        else:
            super()._translate(ev, out)

    def _check_auth(self, headers: list[tuple[str, str]], out: list[TunnelEvent]) -> None:
        h = dict(headers)
        user, _, digest = (h.get("x-edgeway-auth") or "").partition(" ")
        password = self.credentials.get(user) if user == self.username else None
        if h.get(":status") == "200" and password is not None and hmac.compare_digest(digest, auth_digest(password, self.nonce)):
            self.authenticated = True
            out.append(Authenticated(user))
            return
        reason = (f"status {h.get(':status')}" if h.get(":status") != "200" else
                  f"username {user!r} is not the zone's" if user != self.username else
                  f"no credential for {user!r}" if password is None else "wrong password")
        out.append(AuthFailed(reason))
        self.close(h2.errors.ErrorCodes.REFUSED_STREAM)


# ---- core: HTTP/2 server -----------------------------------------------------------------------

class CoreTunnel(_Tunnel):
    """The core's side of one tunnel connection: HTTP/2 server on the connection the core
    opened. Answers the edge's credential check itself with ``username``/``password``."""

    def __init__(self, username: str, password: str):
        super().__init__(client_side=False)
        self.username = username
        self.password = password

    def initiate(self) -> None:
        """Queue the server's SETTINGS (RFC 9113 §3.4)."""
        self._start({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS})

    def _translate(self, ev: h2.events.Event, out: list[TunnelEvent]) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            pseudo, headers = {}, []
            for k, v in ev.headers:
                if k.startswith(":"):
                    pseudo[k] = v
                else:
                    headers.append((k, v))
            ended = ev.stream_ended is not None
            if pseudo.get(":path") == AUTH_PATH:
                nonce = dict(headers).get("x-edgeway-nonce", "")
                self.h2.send_headers(ev.stream_id, [(":status", "200"),
                                                    ("x-edgeway-auth", f"{self.username} {auth_digest(self.password, nonce)}")],
                                     end_stream=True)
                return
            out.append(RequestReceived(ev.stream_id, pseudo.get(":method", ""), pseudo.get(":path", ""),
                                       pseudo.get(":authority", ""), headers, ended))
        elif isinstance(ev, h2.events.TrailersReceived):
            out.append(StreamEnded(ev.stream_id))
        else:
            super()._translate(ev, out)

    def send_response(self, stream_id: int, status: int, headers: list[tuple[str, str]], end: bool = False) -> None:
        """Send the response head of ``stream_id`` (``headers`` forwardable, lower-case);
        ``end`` when there is no body. No-op if the edge already reset the stream."""
        try:
            self.h2.send_headers(stream_id, [(":status", str(status)), *headers], end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass
