"""Sans-IO TURN server core (RFC 8656): allocations, permissions, channel bindings.

:class:`TurnCore` takes STUN messages from clients (bytes + the client's 5-tuple +
``now``) and returns actions; it opens no socket and reads no clock.  The asyncio
adapter (:mod:`edgeway.turn.server`) owns the sockets:

- ``Reply(key, data)``: send ``data`` to the client of 5-tuple ``key``;
- ``NeedRelay(request)``: an Allocate passed every check; the adapter takes a relay
  socket (from the media port pool) and calls :meth:`TurnCore.relay_ready` with its
  relayed transport address, which creates the allocation and returns the Reply;
- ``ToPeer(allocation, peer, data)``: a Send indication's DATA for a permitted peer;
- ``FreeRelay(allocation)``: an allocation ended (Refresh with LIFETIME 0, expiry,
  close of its client connection); the adapter closes the relay socket;
- ``ReleaseReservation(handle)``: a port held for a RESERVATION-TOKEN (EVEN-PORT R bit)
  was not redeemed in time; the adapter lets it go.

The relay hot path does not go through :meth:`TurnCore.handle`: the adapter asks
:meth:`TurnCore.channel_peer` (ChannelData from the client, RFC 8656 §12.5) and
:meth:`Allocation.frame_to_client` (data from a peer: ChannelData when the peer has
a channel, else a Data indication, §11.6/§12.6) directly, both O(1).

A *5-tuple key* is ``(transport, client (ip, port), server (ip, port))`` with
transport ``"udp"``, ``"tcp"`` or ``"tls"`` (RFC 8656 §2).  Times are Unix seconds
(``now``: ``time.time()``, so that REST credential expiry times compare directly);
lifetimes are seconds.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import stun as S
from .stun import Attr, Auth, AuthResult, BindingResponder, StunError

__all__ = [
    "TurnCore", "Allocation", "Reply", "NeedRelay", "ToPeer", "FreeRelay", "ReleaseReservation",
    "RESERVATION_LIFETIME_S",
    "PERMISSION_LIFETIME_S", "CHANNEL_LIFETIME_S", "CHANNEL_MIN", "CHANNEL_MAX", "DEFAULT_DENIED_PEERS",
]

#: Peer networks no permission may name by default (RFC 8656 §21.3.5 on abuse of the
#: relay to reach hosts it should not): "this network", loopback (the edge's own
#: services), multicast, limited broadcast and their IPv6 counterparts.  An edge
#: should add its inside networks (``[turn] denied_peer_ips``).
DEFAULT_DENIED_PEERS = ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128",
                        "ff00::/8")

#: RFC 8656 §9: a permission lasts 300 s unless refreshed.
PERMISSION_LIFETIME_S = 300.0
#: RFC 8656 §7.2: a port reserved by EVEN-PORT's R bit is kept about 30 s.
RESERVATION_LIFETIME_S = 30.0
#: RFC 8656 §12: a channel binding lasts 600 s unless refreshed.
CHANNEL_LIFETIME_S = 600.0
#: Channel numbers accepted in ChannelBind.  RFC 8656 §12 allows 0x4000 through 0x4FFF;
#: RFC 5766 allowed up to 0x7FFE and RFC 5766 clients still pick from there (coturn's
#: ``turnutils_uclient`` does), so those are accepted too: ChannelData framing (first
#: byte 0x40-0x7F) tells them apart from STUN all the same.
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFE
#: RFC 8656 §7.2: REQUESTED-TRANSPORT protocol number of UDP.
_UDP = 17

# methods (RFC 8656 §17)
ALLOCATE, REFRESH, SEND, DATA_IND, CREATE_PERMISSION, CHANNEL_BIND = 0x003, 0x004, 0x006, 0x007, 0x008, 0x009
_METHODS = {0x001: "binding", ALLOCATE: "allocate", REFRESH: "refresh", CREATE_PERMISSION: "create-permission",
            CHANNEL_BIND: "channel-bind"}

Key = tuple[str, tuple[str, int], tuple[str, int]]


class Reply(NamedTuple):
    """Send ``data`` to the client of 5-tuple ``key``."""
    key: Key
    data: bytes


class NeedRelay(NamedTuple):
    """Take a relay socket for an accepted Allocate and call :meth:`TurnCore.relay_ready`."""
    request: "_PendingAllocate"


class ToPeer(NamedTuple):
    """Send ``data`` from ``allocation``'s relayed transport address to ``peer``."""
    allocation: "Allocation"
    peer: tuple[str, int]
    data: bytes


class ReleaseReservation(NamedTuple):
    """A reservation (RFC 8656 §14.9) expired unredeemed: drop the adapter's ``handle``."""
    handle: Any


class FreeRelay(NamedTuple):
    """``allocation`` ended (``reason``: refresh, expired, closed, shutdown): release its relay."""
    allocation: "Allocation"
    reason: str


@dataclass(slots=True)
class _PendingAllocate:
    key: Key
    tid: bytes
    username: str
    hmac_key: bytes | None
    sha256: bool
    lifetime: float
    now: float
    #: EVEN-PORT with the R bit (RFC 8656 §14.6): reserve the next port and answer a token.
    reserve: bool = False
    #: The adapter's handle of a reservation this Allocate redeems (RESERVATION-TOKEN).
    reserved: Any = None


@dataclass(eq=False, slots=True)
class Allocation:
    """One allocation (RFC 8656 §2): its 5-tuple ``key``, ``username``, ``relayed``
    transport address ``(ip, port)``, ``expires`` (Unix s), ``permissions``
    ``{peer ip: expiry}``, ``channels`` ``{number: (peer, expiry)}`` and
    ``peer_channels`` ``{peer: number}``; counters ``to_peer_packets/bytes`` and
    ``to_client_packets/bytes``; ``ctx``: the adapter's (relay socket and sender)."""

    key: Key
    username: str
    relayed: tuple[str, int]
    expires: float
    hmac_key: bytes | None = None
    sha256: bool = False
    allocate_tid: bytes = b""
    allocate_response: bytes = b""
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, tuple[tuple[str, int], float]] = field(default_factory=dict)
    peer_channels: dict[tuple[str, int], int] = field(default_factory=dict)
    stream: bool = False
    to_peer_packets: int = 0
    to_peer_bytes: int = 0
    to_client_packets: int = 0
    to_client_bytes: int = 0
    dropped: int = 0
    ctx: Any = None
    _xpeer: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def permitted(self, ip: str, now: float) -> bool:
        """Whether a permission for ``ip`` is installed and not expired (RFC 8656 §9)."""
        exp = self.permissions.get(ip)
        return exp is not None and exp >= now

    def frame_to_client(self, peer: tuple[str, int], data: bytes, now: float) -> bytes | None:
        """What to send to the client for ``data`` received from ``peer`` on the relayed
        address (RFC 8656 §11.6 / §12.6), or None when no permission covers the peer
        (dropped, §9).  ChannelData (padded to 4 bytes on streams, §12.5) when the peer
        has a live channel, else a Data indication with XOR-PEER-ADDRESS and DATA."""
        exp = self.permissions.get(peer[0])
        if exp is None or exp < now:
            self.dropped += 1
            return None
        n = len(data)
        ch = self.peer_channels.get(peer)
        if ch is not None and self.channels[ch][1] >= now:
            if self.stream and n & 3:
                return struct.pack("!HH", ch, n) + data + b"\x00" * (4 - (n & 3))
            return struct.pack("!HH", ch, n) + data
        xp = self._xpeer.get(peer)
        tid = os.urandom(12)
        # XOR-PEER-ADDRESS depends on the transaction id only for IPv6; IPv4 is cached.
        if xp is None:
            xp = S.xor_address(peer, tid)
            if len(xp) == 8 and len(self._xpeer) < 1024:
                self._xpeer[peer] = xp
        elif len(xp) != 8:
            xp = S.xor_address(peer, tid)
        pad = -n & 3
        body = struct.pack("!HH", S.XOR_PEER_ADDRESS, len(xp)) + xp + struct.pack("!HH", S.DATA, n) + data + b"\x00" * pad
        return struct.pack("!HHI", 0x0017, len(body), S.MAGIC_COOKIE) + tid + body


class TurnCore:
    """The TURN server state machine (RFC 8656) with long-term credentials (RFC 8489 §9.2).

    Args:
        auth: credentials (:class:`~edgeway.turn.stun.Auth`); TURN requests other than
            Binding always need them (RFC 8656 §5).
        binding: the Binding responder used for Binding requests on TURN ports.
        default_lifetime_s: allocation lifetime when the request asks for less or
            nothing (RFC 8656 §7.2: 600 s).
        max_lifetime_s: cap on requested lifetimes (RFC 8656 §7.2: 3600 s).
        max_allocations: total allocations at once (486 past it).
        max_allocations_per_user: per username (486 past it).
        software: SOFTWARE attribute value in responses.
        denied_peers: CIDRs a CreatePermission or ChannelBind may not name (403
            Forbidden, RFC 8656 §10.2/§11.2); default :data:`DEFAULT_DENIED_PEERS`.

    Counters (ints): ``allocations_created``, ``allocations_deleted``,
    ``auth_failures``, ``quota_rejections``, ``requests``, ``errors``; relay
    counters are summed by :meth:`stats`.
    """

    def __init__(self, auth: Auth, binding: BindingResponder | None = None, *, default_lifetime_s: float = 600.0,
                 max_lifetime_s: float = 3600.0, max_allocations: int = 1000, max_allocations_per_user: int = 10,
                 software: str = "Edgeway", denied_peers: Any = DEFAULT_DENIED_PEERS) -> None:
        self.auth = auth
        self.binding = binding or BindingResponder(software)
        self.default_lifetime_s = default_lifetime_s
        self.max_lifetime_s = max_lifetime_s
        self.max_allocations = max_allocations
        self.max_allocations_per_user = max_allocations_per_user
        self.software = software.encode() if software else b""
        self.denied_peers = [ipaddress.ip_network(n, strict=False) for n in denied_peers]
        #: Permissions and channel bindings refused because the peer is in ``denied_peers``.
        self.denied = 0
        self.allocations: dict[Key, Allocation] = {}
        self.per_user: dict[str, int] = {}
        self.allocations_created = 0
        self.allocations_deleted = 0
        self.auth_failures = 0
        #: ``(client ip, username, error code)`` of the last authentication failure.
        self.last_auth_failure: tuple[str, str, int] = ("", "", 0)
        self.quota_rejections = 0
        self.requests = 0
        self.errors = 0
        self._closed_totals = [0, 0, 0, 0]
        self._pending: set[Key] = set()
        #: RESERVATION-TOKEN -> (expiry, adapter handle of the held port).
        self.reservations: dict[bytes, tuple[float, Any]] = {}

    # -- requests ----------------------------------------------------------------------------

    def handle(self, data: bytes, key: Key, now: float) -> list[Any]:
        """Process one STUN message from the client of 5-tuple ``key``; returns actions.
        Malformed messages and unknown methods are dropped (no action)."""
        if len(data) < S.HEADER_LEN:
            return []
        mtype = (data[0] << 8) | data[1]
        if mtype == 0x0001:
            out = self.binding.respond(data, key[1], key[2], now)
            return [Reply(key, out)] if out is not None else []
        if data[4:8] != b"\x21\x12\xa4\x42":
            return []
        try:
            attrs = S.scan(data)
        except StunError:
            return []
        method = mtype & 0x3EEF
        cls = mtype & 0x0110
        tid = bytes(data[8:20])
        if cls == 0x0010:  # indication
            if method == SEND:
                return self._send_indication(attrs, key, tid, now)
            return []
        if cls != 0x0000 or method not in _METHODS:
            return []
        self.requests += 1
        if any(a.type == S.FINGERPRINT for a in attrs):
            try:
                S.parse(data)  # aioice checks FINGERPRINT
            except StunError:
                return []
        unknown = [a.type for a in attrs if a.type < 0x8000 and a.type not in S.KNOWN_REQUIRED]
        if unknown:
            return self._error(key, method, tid, 420, "Unknown Attribute",
                               [(S.UNKNOWN_ATTRIBUTES, b"".join(struct.pack("!H", t) for t in unknown))])
        res = self.auth.check(data, attrs, key[1][0], now)
        if not res.ok:
            if any(a.type in (S.MESSAGE_INTEGRITY, S.MESSAGE_INTEGRITY_SHA256) for a in attrs) and res.code in (400, 401):
                self._auth_failed(key, attrs, res.code)
            return self._error(key, method, tid, res.code, res.reason, list(res.extra))
        alloc = self.allocations.get(key)
        if alloc is not None and alloc.username != res.username:
            # RFC 8656 §5: requests on an allocation use the credentials that created it.
            self._auth_failed(key, attrs, 441)
            return self._error(key, method, tid, 441, "Wrong Credentials")
        by = {a.type: a.value for a in attrs}
        if method == ALLOCATE:
            return self._allocate(alloc, by, key, tid, res, now)
        if alloc is None or alloc.expires < now:
            return self._error(key, method, tid, 437, "Allocation Mismatch", auth=res)
        if method == REFRESH:
            return self._refresh(alloc, by, key, tid, res, now)
        if method == CREATE_PERMISSION:
            return self._create_permission(alloc, attrs, key, tid, res, now)
        return self._channel_bind(alloc, by, key, tid, res, now)

    def _auth_failed(self, key: Key, attrs: list[Attr], code: int) -> None:
        user = next((a.value.decode("utf-8", "replace")[:128] for a in attrs if a.type == S.USERNAME), "")
        self.auth_failures += 1
        self.last_auth_failure = (key[1][0], user, code)

    def _error(self, key: Key, method: int, tid: bytes, code: int, reason: str,
               extra: list[tuple[int, bytes]] = (), auth: AuthResult | None = None) -> list[Any]:
        self.errors += 1
        k = auth.key if auth is not None else None
        sha = auth.sha256 if auth is not None else False
        return [Reply(key, S.error_response(method, tid, code, reason, list(extra), key=k, sha256=sha,
                                            software=self.software or None))]

    def _success(self, key: Key, method: int, tid: bytes, attrs: list[tuple[int, bytes]], res: AuthResult) -> Reply:
        msg = S.header(S.response_type(method), tid)
        for t, v in attrs:
            msg = S.append_attr(msg, t, v)
        if self.software:
            msg = S.append_attr(msg, S.SOFTWARE, self.software)
        return Reply(key, S.finish(msg, res.key, sha256=res.sha256))

    def _lifetime(self, by: dict[int, bytes]) -> float:
        v = by.get(S.LIFETIME)
        if v is None or len(v) != 4:
            return self.default_lifetime_s
        req = struct.unpack("!I", v)[0]
        if req == 0:
            return 0.0
        return float(min(max(req, self.default_lifetime_s), self.max_lifetime_s))

    def _allocate(self, alloc: Allocation | None, by: dict[int, bytes], key: Key, tid: bytes, res: AuthResult,
                  now: float) -> list[Any]:
        """RFC 8656 §7.2 checks, in its order."""
        if alloc is not None:
            if alloc.allocate_tid == tid:  # retransmission: same answer (§7.2 step 2)
                return [Reply(key, alloc.allocate_response)]
            return self._error(key, ALLOCATE, tid, 437, "Allocation Mismatch", auth=res)
        if key in self._pending:
            return []
        rt = by.get(S.REQUESTED_TRANSPORT)
        if rt is None or len(rt) != 4:
            return self._error(key, ALLOCATE, tid, 400, "Bad Request", auth=res)
        if rt[0] != _UDP:
            return self._error(key, ALLOCATE, tid, 442, "Unsupported Transport Protocol", auth=res)
        fam = by.get(S.REQUESTED_ADDRESS_FAMILY)
        if fam is not None and (len(fam) != 4 or fam[0] != 1):
            return self._error(key, ALLOCATE, tid, 440, "Address Family not Supported", auth=res)
        even = by.get(S.EVEN_PORT)
        token = by.get(S.RESERVATION_TOKEN)
        if token is not None and (even is not None or fam is not None):
            return self._error(key, ALLOCATE, tid, 400, "Bad Request", auth=res)  # §7.2 steps 5-6
        reserved = None
        if token is not None:
            entry = self.reservations.get(token)
            if entry is None or entry[0] < now:
                return self._error(key, ALLOCATE, tid, 508, "Insufficient Capacity", auth=res)
            reserved = entry[1]
        if len(self.allocations) + len(self._pending) >= self.max_allocations or \
                self.per_user.get(self.quota_name(res.username), 0) >= self.max_allocations_per_user:
            self.quota_rejections += 1
            return self._error(key, ALLOCATE, tid, 486, "Allocation Quota Reached", auth=res)
        lifetime = self._lifetime(by) or self.default_lifetime_s
        if token is not None:
            del self.reservations[token]
        self._pending.add(key)
        reserve = even is not None and len(even) >= 1 and bool(even[0] & 0x80)
        return [NeedRelay(_PendingAllocate(key, tid, res.username, res.key, res.sha256, lifetime, now,
                                           reserve, reserved))]

    def relay_ready(self, req: _PendingAllocate, relayed: tuple[str, int] | None, ctx: Any = None,
                    reservation: Any = None) -> list[Any]:
        """The adapter's answer to :class:`NeedRelay`: the relayed transport address
        (``None``: no port could be had, answered 508 Insufficient Capacity), its context
        object and, for ``req.reserve`` (EVEN-PORT R bit: the relayed port is even and the
        next one is held), the adapter's handle of the held port, which a later Allocate
        redeems with the RESERVATION-TOKEN answered here (RFC 8656 §7.2, §14.9).
        Returns the Reply (and creates the allocation)."""
        key = req.key
        self._pending.discard(key)
        res = AuthResult(True, req.username, req.hmac_key, req.sha256)
        if relayed is None:
            return self._error(key, ALLOCATE, req.tid, 508, "Insufficient Capacity", auth=res)
        alloc = Allocation(key, req.username, relayed, req.now + req.lifetime, req.hmac_key, req.sha256,
                           stream=key[0] != "udp", ctx=ctx)
        attrs = [
            (S.XOR_RELAYED_ADDRESS, S.xor_address(relayed, req.tid)),
            (S.LIFETIME, struct.pack("!I", int(req.lifetime))),
        ]
        if req.reserve and reservation is not None:
            token = os.urandom(8)
            self.reservations[token] = (req.now + RESERVATION_LIFETIME_S, reservation)
            attrs.append((S.RESERVATION_TOKEN, token))
        attrs.append((S.XOR_MAPPED_ADDRESS, S.xor_address(key[1], req.tid)))
        reply = self._success(key, ALLOCATE, req.tid, attrs, res)
        alloc.allocate_tid = req.tid
        alloc.allocate_response = reply.data
        self.allocations[key] = alloc
        q = self.quota_name(req.username)
        self.per_user[q] = self.per_user.get(q, 0) + 1
        self.allocations_created += 1
        return [reply]

    def _refresh(self, alloc: Allocation, by: dict[int, bytes], key: Key, tid: bytes, res: AuthResult,
                 now: float) -> list[Any]:
        """RFC 8656 §8: LIFETIME 0 deletes the allocation; else it is extended."""
        lifetime = self._lifetime(by)
        out: list[Any] = [self._success(key, REFRESH, tid, [(S.LIFETIME, struct.pack("!I", int(lifetime)))], res)]
        if lifetime == 0:
            out += self.delete(key, "refresh")
        else:
            alloc.expires = now + lifetime
        return out

    def _create_permission(self, alloc: Allocation, attrs: list[Attr], key: Key, tid: bytes, res: AuthResult,
                           now: float) -> list[Any]:
        """RFC 8656 §10: every XOR-PEER-ADDRESS gets (or refreshes) a 300 s permission."""
        peers = []
        for a in attrs:
            if a.type == S.XOR_PEER_ADDRESS:
                try:
                    peers.append(S.unxor_address(a.value, tid))
                except StunError:
                    return self._error(key, CREATE_PERMISSION, tid, 400, "Bad Request", auth=res)
        if not peers:
            return self._error(key, CREATE_PERMISSION, tid, 400, "Bad Request", auth=res)
        if any(":" in ip for ip, _ in peers):
            return self._error(key, CREATE_PERMISSION, tid, 443, "Peer Address Family Mismatch", auth=res)
        if any(self.peer_denied(ip) for ip, _ in peers):
            self.denied += 1
            return self._error(key, CREATE_PERMISSION, tid, 403, "Forbidden", auth=res)
        for ip, _ in peers:
            alloc.permissions[ip] = now + PERMISSION_LIFETIME_S
        return [self._success(key, CREATE_PERMISSION, tid, [], res)]

    def _channel_bind(self, alloc: Allocation, by: dict[int, bytes], key: Key, tid: bytes, res: AuthResult,
                      now: float) -> list[Any]:
        """RFC 8656 §11.2: number in range, one peer per number and one number per peer;
        the binding lasts 600 s and installs or refreshes the peer's permission."""
        ch = by.get(S.CHANNEL_NUMBER)
        xp = by.get(S.XOR_PEER_ADDRESS)
        if ch is None or len(ch) != 4 or xp is None:
            return self._error(key, CHANNEL_BIND, tid, 400, "Bad Request", auth=res)
        number = struct.unpack_from("!H", ch)[0]
        try:
            peer = S.unxor_address(xp, tid)
        except StunError:
            return self._error(key, CHANNEL_BIND, tid, 400, "Bad Request", auth=res)
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            return self._error(key, CHANNEL_BIND, tid, 400, "Bad Request", auth=res)
        if ":" in peer[0]:
            return self._error(key, CHANNEL_BIND, tid, 443, "Peer Address Family Mismatch", auth=res)
        if self.peer_denied(peer[0]):
            self.denied += 1
            return self._error(key, CHANNEL_BIND, tid, 403, "Forbidden", auth=res)
        bound = alloc.channels.get(number)
        if bound is not None and bound[0] != peer and bound[1] >= now:
            return self._error(key, CHANNEL_BIND, tid, 400, "Bad Request", auth=res)
        other = alloc.peer_channels.get(peer)
        if other is not None and other != number and alloc.channels[other][1] >= now:
            return self._error(key, CHANNEL_BIND, tid, 400, "Bad Request", auth=res)
        if other is not None and other != number:
            del alloc.channels[other]
        if bound is not None and bound[0] != peer:
            alloc.peer_channels.pop(bound[0], None)
        alloc.channels[number] = (peer, now + CHANNEL_LIFETIME_S)
        alloc.peer_channels[peer] = number
        alloc.permissions[peer[0]] = now + PERMISSION_LIFETIME_S
        return [self._success(key, CHANNEL_BIND, tid, [], res)]

    def _send_indication(self, attrs: list[Attr], key: Key, tid: bytes, now: float) -> list[Any]:
        """RFC 8656 §11.3: no reply ever; dropped without allocation, peer, data or permission."""
        alloc = self.allocations.get(key)
        if alloc is None:
            return []
        peer = data = None
        for a in attrs:
            if a.type == S.XOR_PEER_ADDRESS and peer is None:
                try:
                    peer = S.unxor_address(a.value, tid)
                except StunError:
                    return []
            elif a.type == S.DATA and data is None:
                data = a.value
        if peer is None or data is None or not alloc.permitted(peer[0], now):
            alloc.dropped += 1
            return []
        return [ToPeer(alloc, peer, data)]

    def quota_name(self, username: str) -> str:
        """Whom an allocation counts against for ``max_allocations_per_user``: the user
        part of a REST username (``"<expiry>:<user>"``), so that one user holding several
        time-limited names still has one quota; else the username itself."""
        if self.auth.shared_secret and username not in self.auth.users:
            exp, sep, user = username.partition(":")
            if sep and exp.isdigit():
                return user
        return username

    def peer_denied(self, ip: str) -> bool:
        """Whether ``ip`` is in one of ``denied_peers``."""
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.denied_peers)

    # -- hot path helpers --------------------------------------------------------------------

    def channel_peer(self, key: Key, number: int, now: float) -> tuple[Allocation, tuple[str, int]] | None:
        """The allocation and peer of channel ``number`` on 5-tuple ``key`` (ChannelData from
        the client, RFC 8656 §12.5), or None when unbound or expired (the data is dropped)."""
        alloc = self.allocations.get(key)
        if alloc is None:
            return None
        b = alloc.channels.get(number)
        if b is None or b[1] < now or alloc.permissions.get(b[0][0], 0.0) < now:
            alloc.dropped += 1
            return None
        return alloc, b[0]

    # -- lifecycle ---------------------------------------------------------------------------

    def delete(self, key: Key, reason: str) -> list[Any]:
        """Delete the allocation of ``key`` (if any); returns its FreeRelay."""
        alloc = self.allocations.pop(key, None)
        self._pending.discard(key)
        if alloc is None:
            return []
        q = self.quota_name(alloc.username)
        n = self.per_user.get(q, 1) - 1
        if n > 0:
            self.per_user[q] = n
        else:
            self.per_user.pop(q, None)
        self.allocations_deleted += 1
        t = self._closed_totals
        t[0] += alloc.to_peer_packets
        t[1] += alloc.to_peer_bytes
        t[2] += alloc.to_client_packets
        t[3] += alloc.to_client_bytes
        return [FreeRelay(alloc, reason)]

    def expire(self, now: float) -> list[Any]:
        """Delete expired allocations and forget expired permissions and channels
        (RFC 8656 §7, §9, §12); returns the FreeRelay actions.  Call about once a second."""
        out: list[Any] = []
        for token, (exp, handle) in list(self.reservations.items()):
            if exp < now:
                del self.reservations[token]
                out.append(ReleaseReservation(handle))
        for key, alloc in list(self.allocations.items()):
            if alloc.expires < now:
                out += self.delete(key, "expired")
                continue
            for ip, exp in list(alloc.permissions.items()):
                if exp < now:
                    del alloc.permissions[ip]
            for number, (peer, exp) in list(alloc.channels.items()):
                if exp < now:
                    del alloc.channels[number]
                    if alloc.peer_channels.get(peer) == number:
                        del alloc.peer_channels[peer]
        return out

    def stats(self) -> dict[str, int]:
        """Counters: ``allocations`` (open), ``allocations_created``/``_deleted``,
        ``auth_failures``, ``quota_rejections``, ``requests``, ``errors``, ``denied_peers``, and relayed
        ``to_peer_packets``/``_bytes``, ``to_client_packets``/``_bytes``, ``dropped``
        (over open and deleted allocations; dropped over open ones)."""
        t = list(self._closed_totals)
        dropped = 0
        for a in self.allocations.values():
            t[0] += a.to_peer_packets
            t[1] += a.to_peer_bytes
            t[2] += a.to_client_packets
            t[3] += a.to_client_bytes
            dropped += a.dropped
        return {
            "allocations": len(self.allocations), "allocations_created": self.allocations_created,
            "allocations_deleted": self.allocations_deleted, "auth_failures": self.auth_failures,
            "quota_rejections": self.quota_rejections, "requests": self.requests, "errors": self.errors,
            "denied_peers": self.denied,
            "to_peer_packets": t[0], "to_peer_bytes": t[1], "to_client_packets": t[2], "to_client_bytes": t[3],
            "dropped": dropped,
        }
