"""Where SIP messages go: flows, next hops, the response rule and flow tokens.

Sans-IO types shared by the transport layer, the traversal link and the proxy core
(they live here, below all three, so that none of them imports another for them):

* :class:`Flow` — one transport association (RFC 5626 §3 "flow"): the transport, the
  local and remote address and, for TCP/TLS, the connection's id. A UDP flow is the
  (local socket, remote address) pair. Flows are hashable values; a replaced connection
  is a different flow.
* :class:`Hop` — a concrete next hop (RFC 3263 target or a known flow) with the zone it
  belongs to and where it came from (``origin``), which the edge's connect guard checks.
* :func:`response_hop` — RFC 3261 §18.2.2 with RFC 3581: where a response goes when the
  flow its request came on is gone.
* :class:`FlowTokens` — RFC 5626 §5.2-style authenticated tokens naming a flow, used as
  the user part of the Record-Route entries a node inserts, so the node recognises its
  own entries whatever port they name and an outside party cannot forge one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from .message import Via

__all__ = ["Flow", "Hop", "response_hop", "FlowTokens", "is_ip_literal", "STREAM_TRANSPORTS"]

#: Connection-oriented transports (a flow is a connection).
STREAM_TRANSPORTS = frozenset({"tcp", "tls"})


@functools.lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """True when ``host`` (str, IPv6 with or without brackets) is an IP address."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Flow:
    """A transport association a message arrived on or leaves by (RFC 5626 §3).

    ``transport`` "udp"/"tcp"/"tls"; ``local`` and ``remote`` are ``(ip: str, port: int)``;
    ``conn_id`` the connection's id (int > 0) for TCP/TLS, 0 for UDP; ``listener`` the
    name of the listener the connection belongs to ("sip", "traversal", "mtls").
    """

    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    conn_id: int = 0
    listener: str = "sip"

    @property
    def is_stream(self) -> bool:
        return self.conn_id != 0

    def __str__(self) -> str:
        return f"{self.transport}:{self.remote[0]}:{self.remote[1]}" + (f"#{self.conn_id}" if self.conn_id else "")


@dataclass(frozen=True, slots=True)
class Hop:
    """A concrete next hop.

    ``transport`` "udp"/"tcp"/"tls", ``ip`` (str literal), ``port`` (int), ``zone`` the
    zone name it belongs to, ``flow`` a known flow to send on (None: send by address, a
    connection being found or opened), ``origin`` what chose it: "neighbour" or "dns"
    (a zone's own configuration or RFC 3263 lookup), "traversal" (a traversal zone's
    connection), "dialog" (a dialog's party), "via" (RFC 3261 §18.2.2 response
    fallback). ``verify_name``: for TLS, the name the peer certificate must carry
    (a DNS zone's TLS verify subject name).
    """

    transport: str
    ip: str
    port: int
    zone: str
    flow: Flow | None = None
    origin: str = "neighbour"
    verify_name: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """``(transport, ip, port)``: what a connection to this hop is looked up by."""
        return (self.transport, self.ip, self.port)

    def __str__(self) -> str:
        return f"{self.transport}:{self.ip}:{self.port}"


def response_hop(via: Via, zone: str) -> Hop | None:
    """Where a response goes when the flow its request came on is gone (RFC 3261
    §18.2.2, RFC 3581 §4): UDP to ``received`` (else sent-by host) and ``rport`` (else
    sent-by port, else 5060); TCP/TLS to the same address over a new connection.
    Returns None when the address is not an IP literal (a proxy never resolves a
    sent-by name through the system resolver) or the transport is unknown.
    ``origin`` of the hop is "via"."""
    transport = via.transport.lower()
    if transport not in ("udp", "tcp", "tls"):
        return None
    ip = via.params.get("received") or via.host
    if not ip or not is_ip_literal(ip):
        return None
    rport = via.params.get("rport")
    if rport:
        port = int(rport)
    else:
        port = via.port or (5061 if transport == "tls" else 5060)
    return Hop(transport, ip.strip("[]"), port, zone, origin="via")


class FlowTokens:
    """Authenticated flow tokens (RFC 5626 §5.2 style): ``ew<conn id hex>.<mac>``.

    ``secret`` (bytes, default 32 random bytes per process): tokens from another process
    or another node do not verify. ``encode(conn_id)`` returns the token (str, valid as a
    SIP URI user part); ``decode(text)`` returns the connection id (int) or None when the
    text is not a token this object made. The MAC is HMAC-SHA256 truncated to 48 bits.
    """

    PREFIX = "ew"

    def __init__(self, secret: bytes | None = None):
        self._key = secret if secret is not None else secrets.token_bytes(32)
        self._cache: dict[int, str] = {}

    def _mac(self, ident: str) -> str:
        return hmac.new(self._key, ident.encode(), hashlib.sha256).hexdigest()[:12]

    def encode(self, conn_id: int) -> str:
        tok = self._cache.get(conn_id)
        if tok is None:
            ident = f"{conn_id:x}"
            tok = f"{self.PREFIX}{ident}.{self._mac(ident)}"
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[conn_id] = tok
        return tok

    def decode(self, text: str | None) -> int | None:
        if not text or not text.startswith(self.PREFIX):
            return None
        ident, dot, mac = text[len(self.PREFIX):].partition(".")
        if not dot or not ident:
            return None
        try:
            conn_id = int(ident, 16)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(ident)):
            return None
        return conn_id
