"""STUN Binding transactions for probing, sans-IO (RFC 8489, codec from ``aioice.stun``).

* :func:`binding_request` / :func:`binding_indication` build messages (RFC 8489 §3, §6.1).
* :func:`parse_binding_response` checks a datagram or framed message against the request:
  STUN header (magic cookie, §5), Binding method, the same transaction ID (§6.3), success or
  error class; it returns the XOR-MAPPED-ADDRESS (§14.2) of a success.
* :class:`UdpTransaction` is the client transaction over UDP (§6.2.1): retransmit at RTO,
  2·RTO, 4·RTO … (RTO 500 ms, the RFC's floor; Rc = 7 requests, Rm = 16), bounded by a probe timeout so a
  probe run stays short. Time is passed in (seconds, monotonic); no sockets.
* :class:`StreamFramer` cuts STUN messages out of a TCP/TLS byte stream (§6.2.2: over TCP and
  TLS STUN messages are sent back to back on the stream, no extra framing; the length comes
  from the 20-byte header).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aioice import stun

__all__ = [
    "HEADER_LENGTH", "MAX_MESSAGE", "RTO", "RC", "RM",
    "BindingResponse", "ProbeError", "StreamFramer", "UdpTransaction",
    "binding_indication", "binding_request", "parse_binding_response",
]

HEADER_LENGTH = 20
"""STUN header: type (2), length (2), magic cookie (4), transaction ID (12) octets (RFC 8489 §5)."""
MAX_MESSAGE = 2048
"""Largest STUN message accepted on a stream, octets. A Binding response is well under 200 octets;
RFC 8489 §6.2.1 caps UDP messages at the path MTU (576 octets for IPv4 when unknown)."""
RTO = 0.5
"""Initial retransmission timeout, seconds (RFC 8489 §6.2.1: configurable, "greater than or equal
to 500 ms"; we take the floor so a probe run stays short)."""
RC = 7
"""Requests sent per UDP transaction at most (RFC 8489 §6.2.1 default Rc)."""
RM = 16
"""After the last request wait Rm·RTO for a response (RFC 8489 §6.2.1 default Rm)."""
SOFTWARE = "edgeway probe"


class ProbeError(Exception):
    """A message that is not a usable answer to our request (says why)."""


def binding_request(transaction_id: bytes | None = None) -> stun.Message:
    """A Binding request with SOFTWARE and FINGERPRINT (RFC 8489 §14.14, §14.7). No credentials:
    media node discovery needs none, and coturn answers Binding without authentication."""
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=transaction_id,
                       attributes={"SOFTWARE": SOFTWARE})
    msg.add_fingerprint()
    return msg


def binding_indication() -> bytes:
    """A Binding indication: a keepalive the server does not answer (RFC 8489 §6.3.2; RFC 5245
    §10 uses it for ICE keepalives)."""
    msg = stun.Message(stun.Method.BINDING, stun.Class.INDICATION)
    msg.add_fingerprint()
    return bytes(msg)


@dataclass(frozen=True, slots=True)
class BindingResponse:
    """A matched answer. ``mapped`` is the XOR-MAPPED-ADDRESS (host, port) of a success (or the
    older MAPPED-ADDRESS), ``None`` when absent; ``error`` is ``(code, reason)`` of an error
    response, else ``None``."""

    transaction_id: bytes
    mapped: tuple[str, int] | None
    error: tuple[int, str] | None = None


def parse_binding_response(data: bytes, transaction_id: bytes) -> BindingResponse | None:
    """Parse ``data`` as the answer to the request ``transaction_id``.

    Returns ``None`` for a well-formed STUN message of another transaction (a late answer to an
    earlier sample: ignore it). Raises :class:`ProbeError` for bytes that are not STUN or not a
    Binding response.
    """
    if len(data) < HEADER_LENGTH or data[0] & 0xC0:
        raise ProbeError(f"not a STUN message ({len(data)} octets, first octet {data[:1].hex() or '-'})")
    if struct.unpack_from("!I", data, 4)[0] != stun.COOKIE:
        raise ProbeError("not a STUN message (no magic cookie 0x2112A442)")
    try:
        msg = stun.parse_message(data)
    except Exception as exc:  # aioice raises ValueError/struct.error/KeyError on bad attributes
        raise ProbeError(f"malformed STUN message: {exc}") from exc
    if msg.transaction_id != transaction_id:
        return None
    if msg.message_method != stun.Method.BINDING:
        raise ProbeError(f"answer is {msg.message_method.name}, not Binding")
    if msg.message_class == stun.Class.ERROR:
        code, reason = msg.attributes.get("ERROR-CODE", (0, "no ERROR-CODE"))
        return BindingResponse(msg.transaction_id, None, (int(code), str(reason)))
    if msg.message_class != stun.Class.RESPONSE:
        raise ProbeError(f"answer is a {msg.message_class.name}, not a response")
    mapped = msg.attributes.get("XOR-MAPPED-ADDRESS") or msg.attributes.get("MAPPED-ADDRESS")
    return BindingResponse(msg.transaction_id, (str(mapped[0]), int(mapped[1])) if mapped else None)


class UdpTransaction:
    """One Binding transaction over UDP (RFC 8489 §6.2.1), bounded by ``timeout``.

    Drive it with the clock: :meth:`start` returns the first datagram; call :meth:`on_timer` at
    :meth:`next_deadline` (it returns a retransmission, or ``None`` once the transaction is
    over); feed each received datagram to :meth:`receive`. ``rtt`` is measured from the *last*
    transmission before the answer (a lower bound when the answer was to an earlier copy;
    ``retransmits`` says how many copies were sent after the first).
    """

    def __init__(self, timeout: float, *, rto: float = RTO, rc: int = RC, rm: int = RM,
                 transaction_id: bytes | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        self.request = binding_request(transaction_id)
        self.data = bytes(self.request)
        self.timeout, self.rto, self.rc, self.rm = timeout, rto, rc, rm
        self.started = self.last_sent = self.deadline_at = 0.0
        self.sent = 0
        self.done = False
        self.response: BindingResponse | None = None
        self.rtt: float | None = None
        self.error: str | None = None
        self._next = 0.0

    @property
    def transaction_id(self) -> bytes:
        return self.request.transaction_id

    @property
    def retransmits(self) -> int:
        return max(0, self.sent - 1)

    def start(self, now: float) -> bytes:
        self.started = self.last_sent = now
        self.deadline_at = now + self.timeout
        self.sent = 1
        self._next = now + self.rto
        return self.data

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        return min(self._next, self.deadline_at)

    def on_timer(self, now: float) -> bytes | None:
        """A retransmission due at ``now``, or ``None``; sets ``done``/``error`` on timeout."""
        if self.done:
            return None
        if now >= self.deadline_at:
            self._fail(f"no answer in {self.timeout:g} s ({self.sent} request{'s' * (self.sent > 1)})")
            return None
        if now < self._next:
            return None
        if self.sent >= self.rc:
            self._fail(f"no answer to {self.sent} requests (RFC 8489 Rc)")
            return None
        self.sent += 1
        self.last_sent = now
        gap = self.rto * (2 ** (self.sent - 1))
        self._next = now + (gap if self.sent < self.rc else self.rm * self.rto)
        return self.data

    def receive(self, data: bytes, now: float) -> bool:
        """Feed a datagram; True when it completed the transaction. A datagram of another
        transaction is ignored; garbage is ignored too (UDP may carry anything) but remembered
        as the error if nothing better arrives."""
        if self.done:
            return False
        try:
            resp = parse_binding_response(data, self.transaction_id)
        except ProbeError as exc:
            self.error = str(exc)
            return False
        if resp is None:
            return False
        self.done, self.response, self.rtt = True, resp, now - self.last_sent
        if resp.error:
            self.error = f"error response {resp.error[0]} {resp.error[1]}"
        else:
            self.error = None
        return True

    def _fail(self, why: str) -> None:
        self.done = True
        self.error = why if self.error is None else f"{why}; also received: {self.error}"


class StreamFramer:
    """Cut STUN messages out of a TCP/TLS stream (RFC 8489 §6.2.2). ``feed`` returns complete
    messages; raises :class:`ProbeError` when the stream does not carry STUN."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self.max_message = max_message

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER_LENGTH:
            if self._buf[0] & 0xC0 or struct.unpack_from("!I", self._buf, 4)[0] != stun.COOKIE:
                head = bytes(self._buf[:16])
                raise ProbeError(f"stream does not carry STUN (starts {head!r})")
            length = HEADER_LENGTH + struct.unpack_from("!H", self._buf, 2)[0]
            if length > self.max_message:
                raise ProbeError(f"STUN message of {length} octets exceeds {self.max_message}")
            if len(self._buf) < length:
                break
            out.append(bytes(self._buf[:length]))
            del self._buf[:length]
        return out
