"""STUN (RFC 8489) message helpers and the sans-IO Binding responder of the edge.

The message codec is ``aioice.stun`` (aiortc project): :func:`parse` wraps its
``parse_message`` and responses are built with its ``Message``.  What aioice does
not cover is added here on raw bytes, without touching aioice's tables:

- a raw TLV scan (:func:`scan`) that gives each attribute's type and offset, so
  that MESSAGE-INTEGRITY (RFC 8489 §14.5) and MESSAGE-INTEGRITY-SHA256 (§14.6)
  can be checked over the exact bytes that precede them, and unknown
  comprehension-required attributes can be answered 420 (§6.3.1.1);
- :func:`finish`, which appends MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT
  (§14.7) to an encoded message, and :func:`append_attr` for attributes aioice
  has no entry for (UNKNOWN-ATTRIBUTES, EVEN-PORT, RESERVATION-TOKEN, ...);
- classic RFC 3489 requests (no magic cookie: the 16-byte transaction ID spans
  the cookie field), answered with MAPPED-ADDRESS (RFC 3489 §11.2.1) as RFC 8489
  §12 asks of a server that serves old clients.

:class:`BindingResponder` answers Binding requests.  Its fast path
(:meth:`BindingResponder.respond`) builds the common unauthenticated success
response with ``struct`` directly: measured with ``bench/stun_bench.py``, going
through ``aioice.stun`` (parse + build + FINGERPRINT) costs ~14 µs of CPU per
response, this module's general path ~6 µs and the fast path ~1 µs, which decides whether one core can answer 50,000 requests/s.  Anything
else (credentials, unknown attributes, classic requests) takes the general path.

Units: addresses are ``(ip: str, port: int)``; ``now`` is Unix time in seconds
(``time.time()``, REST credentials carry Unix expiry times).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import socket
import struct
from typing import Any, NamedTuple

from aioice import stun as _aioice

__all__ = [
    "MAGIC_COOKIE", "HEADER_LEN", "Attr", "StunError", "is_stun", "scan", "parse",
    "append_attr", "finish", "check_integrity", "xor_address", "pack_address",
    "error_response", "BindingResponder", "Auth", "AuthResult", "long_term_key",
    "rest_password",
]

#: RFC 8489 §5: fixed value in bytes 4-7 of every RFC 5389/8489 message.
MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
#: RFC 8489 §5: the header is 20 bytes.
HEADER_LEN = 20
#: RFC 8489 §14.7: CRC-32 of the message XOR this value.
_FP_XOR = 0x5354554E

# Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 5780 §7).
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
SOURCE_ADDRESS = 0x0004
CHANGED_ADDRESS = 0x0005
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA = 0x0013
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
RESERVATION_TOKEN = 0x0022
SOFTWARE = 0x8022
FINGERPRINT = 0x8028

#: Comprehension-required attributes (type < 0x8000) this server understands;
#: any other one in a request is answered 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1).
#: DONT-FRAGMENT is left out on purpose: relay sockets do not set the DF bit, and RFC 8656
#: §7.2 says such a server treats it as an unknown comprehension-required attribute.
KNOWN_REQUIRED = frozenset({
    MAPPED_ADDRESS, USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, UNKNOWN_ATTRIBUTES,
    CHANNEL_NUMBER, LIFETIME, XOR_PEER_ADDRESS, DATA, REALM, NONCE,
    XOR_RELAYED_ADDRESS, REQUESTED_ADDRESS_FAMILY, EVEN_PORT, REQUESTED_TRANSPORT,
    MESSAGE_INTEGRITY_SHA256, PASSWORD_ALGORITHM, XOR_MAPPED_ADDRESS,
    RESERVATION_TOKEN, 0x0024, 0x0025,  # PRIORITY, USE-CANDIDATE (ICE, RFC 8445)
})

_HDR = struct.Struct("!HHI12s")
_TL = struct.Struct("!HH")


class Attr(NamedTuple):
    """One raw attribute: ``type``, ``start`` (offset of its 4-byte TLV header in
    the message) and ``value`` (bytes, without padding)."""

    type: int
    start: int
    value: bytes


class StunError(ValueError):
    """A datagram or stream chunk is not a well-formed STUN message."""


def is_stun(data: bytes) -> bool:
    """Whether ``data`` looks like one whole STUN message (RFC 8489 §5: top two
    bits 0, length a multiple of 4 that matches the data)."""
    n = len(data)
    return (n >= HEADER_LEN and data[0] < 0x40 and (data[3] & 3) == 0
            and ((data[2] << 8) | data[3]) == n - HEADER_LEN)


def scan(data: bytes) -> list[Attr]:
    """The attributes of a whole message in wire order (RFC 8489 §14: TLVs
    padded to 4 bytes).  Raises :class:`StunError` on a TLV that overruns."""
    out: list[Attr] = []
    pos = HEADER_LEN
    end = len(data)
    while pos < end:
        if pos + 4 > end:
            raise StunError("truncated attribute header")
        t, ln = _TL.unpack_from(data, pos)
        if pos + 4 + ln > end:
            raise StunError(f"attribute 0x{t:04x} overruns the message")
        out.append(Attr(t, pos, bytes(data[pos + 4:pos + 4 + ln])))
        pos += 4 + ((ln + 3) & ~3)
    return out


def parse(data: bytes) -> Any:
    """Decode with ``aioice.stun.parse_message`` (which also checks FINGERPRINT).
    Raises :class:`StunError` (unknown method, bad length or fingerprint)."""
    try:
        return _aioice.parse_message(bytes(data))
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise StunError(str(exc)) from None


def append_attr(msg: bytes, atype: int, value: bytes) -> bytes:
    """``msg`` with one more attribute (padded to 4 bytes) and its length fixed."""
    pad = -len(value) & 3
    body = msg[HEADER_LEN:] + _TL.pack(atype, len(value)) + value + b"\x00" * pad
    return msg[:2] + struct.pack("!H", len(body)) + msg[4:HEADER_LEN] + body


def _with_length(msg: bytes, length: int) -> bytes:
    return msg[:2] + struct.pack("!H", length) + msg[4:]


def finish(msg: bytes, key: bytes | None = None, *, sha256: bool = False, fingerprint: bool = True) -> bytes:
    """Append MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) or, with ``sha256``,
    MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, §14.6) when ``key`` is given, then
    FINGERPRINT (§14.7).  The length field covers each attribute as it is added."""
    if key is not None:
        if sha256:
            head = _with_length(msg, len(msg) - HEADER_LEN + 36)
            msg = head + _TL.pack(MESSAGE_INTEGRITY_SHA256, 32) + hmac.new(key, head, hashlib.sha256).digest()
        else:
            head = _with_length(msg, len(msg) - HEADER_LEN + 24)
            msg = head + _TL.pack(MESSAGE_INTEGRITY, 20) + hmac.new(key, head, hashlib.sha1).digest()
    if fingerprint:
        head = _with_length(msg, len(msg) - HEADER_LEN + 8)
        msg = head + _TL.pack(FINGERPRINT, 4) + struct.pack("!I", binascii.crc32(head) ^ _FP_XOR)
    return msg


def check_integrity(data: bytes, attrs: list[Attr], key: bytes) -> bool | None:
    """Check MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY (RFC 8489
    §14.5-14.6: HMAC over the message up to the attribute, with the length field
    counting up to and including it).  None: the message carries neither."""
    for a in attrs:
        if a.type == MESSAGE_INTEGRITY_SHA256 and len(a.value) == 32:
            head = _with_length(data[:a.start], a.start - HEADER_LEN + 36)
            return hmac.compare_digest(hmac.new(key, head, hashlib.sha256).digest(), a.value)
    for a in attrs:
        if a.type == MESSAGE_INTEGRITY and len(a.value) == 20:
            head = _with_length(data[:a.start], a.start - HEADER_LEN + 24)
            return hmac.compare_digest(hmac.new(key, head, hashlib.sha1).digest(), a.value)
    return None


def _ip_bytes(ip: str) -> tuple[int, bytes]:
    try:
        return 1, socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        return 2, socket.inet_pton(socket.AF_INET6, ip)


def pack_address(addr: tuple[str, int]) -> bytes:
    """MAPPED-ADDRESS value (RFC 8489 §14.1; RFC 3489 §11.2.1)."""
    fam, raw = _ip_bytes(addr[0])
    return struct.pack("!BBH", 0, fam, addr[1]) + raw


def xor_address(addr: tuple[str, int], tid: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS value (RFC 8489
    §14.2): port XOR the cookie's top 16 bits, address XOR cookie (+ transaction ID)."""
    fam, raw = _ip_bytes(addr[0])
    pad = _COOKIE_BYTES + tid
    x = bytes(b ^ pad[i] for i, b in enumerate(raw))
    return struct.pack("!BBH", 0, fam, addr[1] ^ (MAGIC_COOKIE >> 16)) + x


def unxor_address(value: bytes, tid: bytes) -> tuple[str, int]:
    """Decode an XOR-*-ADDRESS value; raises :class:`StunError`."""
    if len(value) not in (8, 20) or value[1] not in (1, 2) or len(value) != (8 if value[1] == 1 else 20):
        raise StunError("bad XOR address")
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    pad = _COOKIE_BYTES + tid
    raw = bytes(b ^ pad[i] for i, b in enumerate(value[4:]))
    fam = socket.AF_INET if value[1] == 1 else socket.AF_INET6
    return socket.inet_ntop(fam, raw), port


def header(mtype: int, tid: bytes) -> bytes:
    """A 20-byte header with an empty body (``tid``: 12 bytes)."""
    return _HDR.pack(mtype, 0, MAGIC_COOKIE, tid)


def response_type(method: int, error: bool = False) -> int:
    """RFC 8489 §5: success response class bits C1C0=10 (0x0100), error 11 (0x0110)."""
    return method | (0x0110 if error else 0x0100)


def error_response(method: int, tid: bytes, code: int, reason: str, extra: list[tuple[int, bytes]] = (),
                   key: bytes | None = None, sha256: bool = False, software: bytes | None = None) -> bytes:
    """An error response (RFC 8489 §14.8 ERROR-CODE), with ``extra`` attributes
    (type, value) in order, optional SOFTWARE, integrity and FINGERPRINT."""
    msg = header(response_type(method, True), tid)
    msg = append_attr(msg, ERROR_CODE, struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode())
    for t, v in extra:
        msg = append_attr(msg, t, v)
    if software:
        msg = append_attr(msg, SOFTWARE, software)
    return finish(msg, key, sha256=sha256)


# ---- long-term credentials (RFC 8489 §9.2) -------------------------------------------------------

def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 §9.2.2 (MD5 password algorithm): ``MD5(username ":" realm ":" password)``."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def rest_password(shared_secret: str, username: str) -> str:
    """Time-limited "TURN REST API" password, as coturn's ``use-auth-secret``:
    ``base64(HMAC-SHA1(shared_secret, username))`` where ``username`` is
    ``"<expiry Unix time>:<user>"``."""
    import base64

    return base64.b64encode(hmac.new(shared_secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


class AuthResult(NamedTuple):
    """Outcome of :meth:`Auth.check`: ``ok``; on success ``username`` and ``key``
    (bytes, the HMAC key for the response) and ``sha256`` (the request used
    MESSAGE-INTEGRITY-SHA256); on failure ``code``/``reason`` and the ``extra``
    attributes of the error response (REALM, NONCE)."""

    ok: bool
    username: str = ""
    key: bytes | None = None
    sha256: bool = False
    code: int = 0
    reason: str = ""
    extra: tuple[tuple[int, bytes], ...] = ()


class Auth:
    """Long-term credential mechanism (RFC 8489 §9.2) with stateless nonces.

    Args:
        realm: the REALM sent in 401/438 answers.
        users: static ``{username: password}``.
        shared_secret: when set, REST-style usernames ``"<expiry>:<user>"`` are
            accepted with the password :func:`rest_password` gives, until the
            expiry time (Unix seconds) passes.
        nonce_secret: HMAC key of the nonces (bytes).
        nonce_lifetime_s: seconds a nonce stays valid; after that 438 Stale Nonce.

    A nonce is ``<expiry hex>`` + 16 hex digits of HMAC(nonce_secret, expiry ":" client IP),
    so the server keeps no per-client state and a nonce is bound to its client's IP.
    """

    def __init__(self, realm: str, users: dict[str, str] | None = None, shared_secret: str | None = None,
                 nonce_secret: bytes = b"", nonce_lifetime_s: float = 600.0) -> None:
        import os

        self.realm = realm
        self.users = dict(users or {})
        self.shared_secret = shared_secret
        self.nonce_secret = nonce_secret or os.urandom(16)
        self.nonce_lifetime_s = nonce_lifetime_s
        self._keys: dict[str, bytes] = {}

    @property
    def configured(self) -> bool:
        """Whether any credential is configured."""
        return bool(self.users or self.shared_secret)

    def nonce(self, ip: str, now: float) -> bytes:
        exp = f"{int(now + self.nonce_lifetime_s):08x}"
        mac = hmac.new(self.nonce_secret, f"{exp}:{ip}".encode(), hashlib.sha256).hexdigest()[:16]
        return (exp + mac).encode()

    def _nonce_state(self, nonce: bytes, ip: str, now: float) -> str:
        """``"ok"``, ``"stale"`` (ours, expired) or ``"bad"`` (not ours / other IP)."""
        text = nonce.decode("ascii", "replace")
        exp, mac = text[:8], text[8:]
        want = hmac.new(self.nonce_secret, f"{exp}:{ip}".encode(), hashlib.sha256).hexdigest()[:16]
        if len(text) != 24 or not hmac.compare_digest(mac, want):
            return "bad"
        try:
            return "ok" if int(exp, 16) >= now else "stale"
        except ValueError:
            return "bad"

    def key_for(self, username: str, now: float) -> bytes | None:
        """The long-term key of ``username``, or None (unknown, or an expired REST name)."""
        pw = self.users.get(username)
        if pw is None and self.shared_secret:
            exp, sep, _ = username.partition(":")
            if not sep or not exp.isdigit() or int(exp) < now:
                return None
            pw = rest_password(self.shared_secret, username)
        if pw is None:
            return None
        key = self._keys.get(username)
        if key is None:
            key = long_term_key(username, self.realm, pw)
            if len(self._keys) < 10000:
                self._keys[username] = key
        return key

    def challenge(self, ip: str, now: float, code: int = 401, reason: str = "Unauthorized") -> AuthResult:
        return AuthResult(False, code=code, reason=reason,
                          extra=((REALM, self.realm.encode()), (NONCE, self.nonce(ip, now))))

    def check(self, data: bytes, attrs: list[Attr], ip: str, now: float) -> AuthResult:
        """RFC 8489 §9.2.4: no integrity → 401 + REALM + NONCE; missing USERNAME, REALM or
        NONCE → 400; a nonce not ours → 401; expired nonce → 438 + new NONCE; unknown
        user or bad HMAC → 401."""
        by = {a.type: a.value for a in attrs}
        has_mi = MESSAGE_INTEGRITY in by or MESSAGE_INTEGRITY_SHA256 in by
        if not has_mi:
            return self.challenge(ip, now)
        if USERNAME not in by or REALM not in by or NONCE not in by:
            return AuthResult(False, code=400, reason="Bad Request")
        state = self._nonce_state(by[NONCE], ip, now)
        if state == "stale":
            return self.challenge(ip, now, 438, "Stale Nonce")
        if state == "bad":
            return self.challenge(ip, now)
        username = by[USERNAME].decode("utf-8", "replace")
        key = self.key_for(username, now)
        if key is None or not check_integrity(data, attrs, key):
            return self.challenge(ip, now)
        return AuthResult(True, username=username, key=key, sha256=MESSAGE_INTEGRITY_SHA256 in by)


# ---- the Binding responder ---------------------------------------------------------------------

class BindingResponder:
    """Sans-IO STUN Binding server (RFC 8489 §6.3; RFC 3489 §8.2 for classic clients).

    Args:
        software: SOFTWARE attribute value for responses (empty: none).
        auth: long-term credentials (:class:`Auth`); with ``require_auth`` a Binding
            request must carry valid MESSAGE-INTEGRITY(-SHA256) (401 + REALM + NONCE
            otherwise).  Without ``require_auth`` a request that does carry integrity
            is still checked and its response is signed.

    Counters (ints): ``requests``, ``classic`` (RFC 3489 requests), ``errors`` (error
    responses sent), ``auth_failures``, ``dropped`` (not STUN, not a request, malformed).
    """

    def __init__(self, software: str = "Edgeway", auth: Auth | None = None, require_auth: bool = False) -> None:
        self.software = software.encode() if software else b""
        self.auth = auth
        self.require_auth = bool(require_auth and auth is not None)
        self.requests = 0
        self.classic = 0
        self.errors = 0
        self.auth_failures = 0
        self.dropped = 0
        sw = self.software
        self._sw_attr = (_TL.pack(SOFTWARE, len(sw)) + sw + b"\x00" * (-len(sw) & 3)) if sw else b""
        self._xor4: dict[str, bytes] = {}

    def respond(self, data: bytes, source: tuple[str, int], local: tuple[str, int], now: float) -> bytes | None:
        """The response to one datagram/message from ``source`` received on ``local``,
        or None (not a Binding request: dropped silently, RFC 8489 §6.3).

        Fast path: a modern request whose attributes are only SOFTWARE/FINGERPRINT,
        with no credentials required, is answered XOR-MAPPED-ADDRESS + SOFTWARE +
        FINGERPRINT without going through the codec."""
        n = len(data)
        if (not self.require_auth and n >= 20 and data[0] == 0 and data[1] == 1
                and data[4:8] == _COOKIE_BYTES and ((data[2] << 8) | data[3]) == n - 20):
            simple = n == 20
            if not simple and n <= 64:
                simple = True
                pos = 20
                while pos < n:
                    t = (data[pos] << 8) | data[pos + 1] if pos + 4 <= n else -1
                    if t != SOFTWARE and t != FINGERPRINT:
                        simple = False
                        break
                    ln = (data[pos + 2] << 8) | data[pos + 3]
                    if t == FINGERPRINT and (pos + 8 != n or ln != 4 or struct.unpack_from("!I", data, pos + 4)[0]
                                             != binascii.crc32(_with_length(data[:pos], pos - 12)) ^ _FP_XOR):
                        simple = False
                        break
                    pos += 4 + ((ln + 3) & ~3)
                if pos != n:
                    simple = False
            if simple:
                self.requests += 1
                ip, port = source[0], source[1]
                xip = self._xor4.get(ip)
                if xip is None:
                    fam, raw = _ip_bytes(ip)
                    if fam != 1:
                        xip = b""
                    else:
                        xip = bytes(b ^ _COOKIE_BYTES[i] for i, b in enumerate(raw))
                        if len(self._xor4) < 65536:
                            self._xor4[ip] = xip
                if xip:
                    sw = self._sw_attr
                    body_len = 12 + len(sw) + 8
                    msg = (b"\x01\x01" + struct.pack("!H", body_len) + data[4:20]
                           + b"\x00\x20\x00\x08\x00\x01" + struct.pack("!H", port ^ 0x2112) + xip + sw)
                    return msg + b"\x80\x28\x00\x04" + struct.pack("!I", binascii.crc32(msg) ^ _FP_XOR)
        return self.respond_general(data, source, local, now)

    def respond_general(self, data: bytes, source: tuple[str, int], local: tuple[str, int], now: float) -> bytes | None:
        """The general path (codec, credentials, classic clients, errors)."""
        n = len(data)
        if n < HEADER_LEN or data[0] >= 0x40 or ((data[2] << 8) | data[3]) != n - HEADER_LEN or data[3] & 3:
            self.dropped += 1
            return None
        mtype = (data[0] << 8) | data[1]
        if mtype != 0x0001:  # only Binding requests get answers; indications are ignored
            self.dropped += 1
            return None
        if data[4:8] != _COOKIE_BYTES:
            return self._classic(data, source, local)
        try:
            attrs = scan(data)
            parse(data)  # checks FINGERPRINT and the general layout
        except StunError:
            self.dropped += 1
            return None
        self.requests += 1
        tid = bytes(data[8:20])
        unknown = [a.type for a in attrs if a.type < 0x8000 and a.type not in KNOWN_REQUIRED]
        sw = self.software or None
        if unknown:
            self.errors += 1
            return error_response(1, tid, 420, "Unknown Attribute",
                                  [(UNKNOWN_ATTRIBUTES, b"".join(struct.pack("!H", t) for t in unknown))], software=sw)
        key = None
        sha256 = False
        has_mi = any(a.type in (MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256) for a in attrs)
        if self.auth is not None and (self.require_auth or has_mi):
            res = self.auth.check(data, attrs, source[0], now)
            if not res.ok:
                self.errors += 1
                if res.code != 401 or has_mi:
                    self.auth_failures += 1 if res.code in (400, 401) else 0
                return error_response(1, tid, res.code, res.reason, list(res.extra), software=sw)
            key, sha256 = res.key, res.sha256
        if any(a.type == CHANGE_REQUEST and len(a.value) == 4 and a.value[3] & 0x06 for a in attrs):
            # RFC 5780 §6.1: no alternate address here, so a change request cannot be honoured.
            self.errors += 1
            return error_response(1, tid, 420, "Unknown Attribute",
                                  [(UNKNOWN_ATTRIBUTES, struct.pack("!H", CHANGE_REQUEST))], key=key, sha256=sha256, software=sw)
        msg = header(0x0101, tid)
        msg = append_attr(msg, XOR_MAPPED_ADDRESS, xor_address(source, tid))
        if sw:
            msg = append_attr(msg, SOFTWARE, sw)
        return finish(msg, key, sha256=sha256)

    def _classic(self, data: bytes, source: tuple[str, int], local: tuple[str, int]) -> bytes | None:
        """RFC 3489 §8.2/§11.2: MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS (ours:
        no alternate address), the 16-byte transaction ID echoed, no FINGERPRINT.

        A CHANGE-REQUEST asking for another IP or port is not answered: this server has
        no alternate address, and an answer from the same address would make an RFC 3489
        client's NAT-type test believe its NAT lets anything in (§10.1 test II), where
        silence gives the cautious verdict."""
        try:
            attrs = scan(data)
        except StunError:
            self.dropped += 1
            return None
        if any(a.type == CHANGE_REQUEST and len(a.value) == 4 and a.value[3] & 0x06 for a in attrs):
            self.dropped += 1
            return None
        self.requests += 1
        self.classic += 1
        msg = b"\x01\x01\x00\x00" + bytes(data[4:20])
        msg = append_attr(msg, MAPPED_ADDRESS, pack_address(source))
        msg = append_attr(msg, SOURCE_ADDRESS, pack_address(local))
        msg = append_attr(msg, CHANGED_ADDRESS, pack_address(local))
        return msg
