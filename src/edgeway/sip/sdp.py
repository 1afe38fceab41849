"""SDP session descriptions (RFC 4566), sans-IO, with the rewrite a media-anchoring
edge applies (RFC 3264 offer/answer rules for ports).

:meth:`SessionDescription.parse` reads a body (bytes or str, CRLF or LF line ends)
into typed fields — origin (``o=``), connection (``c=``), attributes (``a=``) and
the media sections (``m=``) — and keeps every other line (``i=``, ``b=``, ``t=``,
``k=``, unknown types…) verbatim in ``other``. :meth:`SessionDescription.to_bytes`
writes CRLF-terminated lines back in the order they were read, so a body that is
parsed and serialised without changes comes out byte for byte (apart from
whitespace inside ``o=``, ``c=`` and ``m=`` lines, which is normalised to single
spaces, numbers in ``v=``, ``sess-version`` and ``m=`` ports, which are written
without leading zeros, LF line ends, which become CRLF, and blank lines, which are
dropped). Lines added after parsing go where RFC 4566 §5 orders them.

Ports are ints (0–65535); ``sess-version`` is an int (0..2**64-1), ``sess-id`` is
kept as text. Numbers are ASCII digits only. Malformed SDP raises :class:`SdpError`
(and nothing else, whatever the text).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field

from .._ascii import ascii_uint

__all__ = [
    "SdpError",
    "Origin",
    "Connection",
    "MediaDescription",
    "SessionDescription",
    "DIRECTIONS",
    "ICE_ATTRIBUTES",
    "addrtype_for",
    "rewrite_for_relay",
    "scan_for_relay",
    "RelayScan",
]

#: The four direction attributes (RFC 4566 §6, RFC 3264 §5.1).
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: Attribute names removed by :func:`rewrite_for_relay` besides any ``ice-*``
#: (RFC 8839 §5): the relay anchors media, so the endpoint's candidates are useless.
ICE_ATTRIBUTES = frozenset({"candidate", "remote-candidates", "end-of-candidates"})

_LINE_RE = re.compile(r"^([A-Za-z])=(.*)$", re.S)
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# RFC 4566 §5 order of line types, used to place lines that were not in the input.
_SESSION_RANK = {k: i for i, k in enumerate("vosiuepcbtrzka")}
_MEDIA_RANK = {k: i for i, k in enumerate("micbka")}


#: Largest ``sess-version``, ``v=`` value and ``m=`` port count accepted: RFC 4566
#: §5.2 suggests an NTP timestamp for sess-version, so every value seen in practice
#: fits in 64 bits; a longer digit string is refused rather than converted (``int()``
#: itself refuses more than 4300 digits with a bare ValueError).
_MAX_NUMBER = 2**64 - 1


class SdpError(ValueError):
    """The SDP is malformed; ``str(exc)`` names the offending line and the rule."""


#: Bound of the :func:`addrtype_for` memo (relay and peer addresses repeat).
_ADDRTYPE_MEMO_MAX = 1024
_addrtype_memo: dict[str, str] = {}


def addrtype_for(address: str) -> str:
    """``"IP6"`` when ``address`` is an IPv6 literal (brackets allowed), else
    ``"IP4"`` (IPv4 literals and host names). Memoised (bounded)."""
    t = _addrtype_memo.get(address)
    if t is None:
        try:
            t = "IP6" if ipaddress.ip_address(address.strip("[]")).version == 6 else "IP4"
        except ValueError:
            t = "IP4"
        if len(_addrtype_memo) >= _ADDRTYPE_MEMO_MAX:
            _addrtype_memo.clear()
        _addrtype_memo[address] = t
    return t


@dataclass
class Origin:
    """The ``o=`` line (RFC 4566 §5.2): ``<username> <sess-id> <sess-version>
    <nettype> <addrtype> <unicast-address>``. ``sess_id`` is text (kept as sent),
    ``sess_version`` an int."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    address: str

    @classmethod
    def parse(cls, value: str) -> "Origin":
        """Parse the value of an ``o=`` line; raises :class:`SdpError` when it has
        not six fields or sess-version is not a non-negative integer."""
        parts = value.split()
        if len(parts) != 6:
            raise SdpError(f"malformed o= line {value!r}: expected 6 fields, got {len(parts)}")
        version = ascii_uint(parts[2], _MAX_NUMBER)
        if version is None:
            raise SdpError(f"malformed o= line {value!r}: sess-version {parts[2]!r} is not an integer")
        return cls(parts[0], parts[1], version, parts[3], parts[4], parts[5])

    def __str__(self) -> str:
        return f"{self.username} {self.sess_id} {self.sess_version} {self.nettype} {self.addrtype} {self.address}"


@dataclass
class Connection:
    """A ``c=`` line (RFC 4566 §5.7): ``<nettype> <addrtype> <connection-address>``.
    ``address`` keeps any multicast ``/ttl/count`` suffix as text."""

    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = ""

    @classmethod
    def parse(cls, value: str) -> "Connection":
        """Parse the value of a ``c=`` line; raises :class:`SdpError` when it has
        not three fields."""
        parts = value.split()
        if len(parts) != 3:
            raise SdpError(f"malformed c= line {value!r}: expected <nettype> <addrtype> <address>")
        return cls(*parts)

    @classmethod
    def for_address(cls, address: str) -> "Connection":
        """``IN IP4 <address>`` or ``IN IP6 <address>`` chosen by the address
        (IPv6 brackets removed)."""
        return cls("IN", addrtype_for(address), address.strip("[]"))

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


def _attr_line(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _parse_attr(value: str) -> tuple[str, str | None]:
    name, colon, val = value.partition(":")
    return (name, val if colon else None)


class _AttributesMixin:
    attributes: list[tuple[str, str | None]]

    def attribute_values(self, name: str) -> list[str | None]:
        """Values of every ``a=<name>`` in order (None for a flag attribute).
        Names compare case-sensitively (RFC 4566 §5.13)."""
        return [v for n, v in self.attributes if n == name]

    def get_attribute(self, name: str, default: str | None = None) -> str | None:
        """Value of the first ``a=<name>`` (None for a flag), ``default`` if absent."""
        for n, v in self.attributes:
            if n == name:
                return v
        return default

    def has_attribute(self, name: str) -> bool:
        return any(n == name for n, _ in self.attributes)

    def remove_attributes(self, *names: str) -> int:
        """Remove every attribute named in ``names``; returns how many went."""
        before = len(self.attributes)
        self.attributes[:] = [(n, v) for n, v in self.attributes if n not in names]
        return before - len(self.attributes)

    @property
    def direction(self) -> str | None:
        """The direction attribute at this level (the last one if several), or None."""
        found = None
        for n, v in self.attributes:
            if v is None and n in DIRECTIONS:
                found = n
        return found

    def set_direction(self, direction: str | None) -> None:
        """Replace the direction attribute at this level (None removes it); raises
        ValueError for a value not in :data:`DIRECTIONS`."""
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        idx = next((i for i, (n, v) in enumerate(self.attributes) if v is None and n in DIRECTIONS), None)
        self.attributes[:] = [(n, v) for n, v in self.attributes if not (v is None and n in DIRECTIONS)]
        if direction is not None:
            self.attributes.insert(len(self.attributes) if idx is None else idx, (direction, None))


def _emit(
    layout: list[tuple[str, str]],
    singles: dict[str, str | None],
    attributes: list[tuple[str, str | None]],
    other: list[tuple[str, str]],
    rank: dict[str, int],
) -> list[str]:
    """Lines in the parsed ``layout`` order; items without a slot are placed by
    RFC 4566 order (singles) or appended (attributes and other lines)."""
    out: list[str] = []
    done: set[str] = set()
    slotted = {letter for kind, letter in layout if kind == "single"}
    ai = oi = 0
    last = len(rank)

    def flush(before: int) -> None:
        for k, v in singles.items():
            if k not in done and v is not None and k not in slotted and rank.get(k, last) < before:
                out.append(f"{k}={v}")
                done.add(k)

    # Singles without a slot in the layout (added after parsing) are the only ones
    # flush() can write; without any, skip it (the common case: parse, edit, write).
    pending = any(v is not None and k not in slotted for k, v in singles.items())
    for kind, letter in layout:
        if pending:
            flush(rank.get(letter, last))
        if kind == "single":
            v = singles.get(letter)
            if letter not in done and v is not None:
                out.append(f"{letter}={v}")
                done.add(letter)
        elif kind == "attr":
            if ai < len(attributes):
                out.append(_attr_line(*attributes[ai]))
                ai += 1
        elif oi < len(other):
            out.append(f"{other[oi][0]}={other[oi][1]}")
            oi += 1
    flush(last + 1)
    for k in singles:  # singles with a slot that was skipped because it was None then
        if k not in done and singles[k] is not None:
            out.append(f"{k}={singles[k]}")
    out += [f"{t}={v}" for t, v in other[oi:]]
    out += [_attr_line(*a) for a in attributes[ai:]]
    return out


@dataclass
class MediaDescription(_AttributesMixin):
    """One media section (RFC 4566 §5.14): ``m=<media> <port>[/<port_count>]
    <proto> <fmt> ...`` and the lines under it.

    ``port`` int (0 = stream rejected or disabled, RFC 3264 §6); ``port_count`` int
    or None; ``fmts`` the format list as text (payload types for RTP);
    ``connection`` the media-level ``c=`` (None → the session-level one applies);
    ``attributes`` ``(name, value)`` pairs in order, value None for a flag
    (``a=sendonly``), text after the first ``:`` otherwise; ``other`` every other
    line (``i=``, ``b=``, ``k=``, a second ``c=``, unknown types) as ``(type,
    value)`` in order.
    """

    media: str
    port: int
    port_count: int | None
    proto: str
    fmts: list[str]
    connection: Connection | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    _layout: list[tuple[str, str]] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def parse_mline(cls, value: str) -> "MediaDescription":
        """A section with only its ``m=`` line parsed from ``value``. Raises
        :class:`SdpError` on fewer than three fields or a port (or port count) that
        is not an integer in range."""
        parts = value.split()
        if len(parts) < 3:
            raise SdpError(f"malformed m= line {value!r}: expected <media> <port> <proto> <fmt> ...")
        port_s, slash, count_s = parts[1].partition("/")
        port = ascii_uint(port_s, 65535)
        if port is None:
            raise SdpError(f"malformed m= line {value!r}: port {port_s!r} is not an integer in 0..65535")
        count = None
        if slash:
            count = ascii_uint(count_s, _MAX_NUMBER)
            if not count:
                raise SdpError(f"malformed m= line {value!r}: port count {count_s!r} is not a positive integer")
        return cls(parts[0], port, count, parts[2], parts[3:])

    @property
    def mline(self) -> str:
        """The value of the ``m=`` line."""
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([self.media, port, self.proto, *self.fmts])

    @property
    def is_rejected(self) -> bool:
        """True when the port is 0 (RFC 3264 §6)."""
        return self.port == 0

    @property
    def rtcp_attribute(self) -> tuple[int, Connection | None] | None:
        """``a=rtcp:<port> [<nettype> <addrtype> <address>]`` (RFC 3605) as
        ``(port, Connection or None)``; None when absent. Raises :class:`SdpError`
        when malformed."""
        if not self.has_attribute("rtcp"):
            return None
        value = self.get_attribute("rtcp")
        parts = (value or "").split()
        port = ascii_uint(parts[0], 65535) if parts else None
        if port is None or len(parts) not in (1, 4):
            raise SdpError(f"malformed a=rtcp:{value}: expected <port> [<nettype> <addrtype> <address>]")
        conn = Connection(*parts[1:]) if len(parts) == 4 else None
        return port, conn

    @property
    def crypto(self) -> list[str]:
        """The raw values of the ``a=crypto`` attributes (RFC 4568), in order."""
        return [v for n, v in self.attributes if n == "crypto" and v is not None]

    def lines(self) -> list[str]:
        """The section's lines (``m=`` first), without line ends."""
        singles = {"c": str(self.connection) if self.connection is not None else None}
        return [f"m={self.mline}"] + _emit(self._layout, singles, self.attributes, self.other, _MEDIA_RANK)


@dataclass
class SessionDescription(_AttributesMixin):
    """A parsed SDP body (RFC 4566).

    ``version`` the ``v=`` value (int, 0); ``origin`` the ``o=`` line or None when
    absent; ``session_name`` the ``s=`` value or None; ``connection`` the
    session-level ``c=`` or None; ``attributes`` the session-level ``a=`` lines as
    ``(name, value|None)``; ``media`` the :class:`MediaDescription` list in order;
    ``other`` every other session-level line (``i= u= e= p= b= t= r= z= k=``,
    unknown types) as ``(type, value)`` in order.
    """

    version: int = 0
    origin: Origin | None = None
    session_name: str | None = "-"
    connection: Connection | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    _layout: list[tuple[str, str]] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def parse(cls, data: bytes | str) -> "SessionDescription":
        """Parse an SDP body. Bytes are decoded as UTF-8 (undecodable bytes kept
        through ``surrogateescape``); lines may end in CRLF or LF; blank lines are
        skipped.

        Raises :class:`SdpError` when the first line is not ``v=``, ``v=`` is not an
        integer, a line is not ``<letter>=<value>`` (e.g. ``m =video``), or an
        ``o=``, ``c=`` or ``m=`` line is malformed (wrong field count, non-integer
        port or sess-version).
        """
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, (bytes, bytearray)) else data
        # Same lines as re.split(r"\r?\n"): every LF ends a line, a CR just before it goes.
        lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
        if not lines or not lines[0].startswith("v="):
            raise SdpError("SDP must start with a v= line")
        sdp = cls(session_name=None)
        media: MediaDescription | None = None
        seen: set[str] = set()
        for line in lines:
            # _LINE_RE, without a regex call per line: an ASCII letter, "=", the rest.
            if line[1:2] != "=" or line[0] not in _LETTERS:
                raise SdpError(f"malformed SDP line {line[:60]!r}: expected <type>=<value> with a one-letter type")
            t, v = line[0], line[2:]
            if t == "m":
                media = MediaDescription.parse_mline(v)
                sdp.media.append(media)
                continue
            if media is not None:
                if t == "c" and media.connection is None:
                    media.connection = Connection.parse(v)
                    media._layout.append(("single", "c"))
                elif t == "a":
                    media.attributes.append(_parse_attr(v))
                    media._layout.append(("attr", "a"))
                else:
                    media.other.append((t, v))
                    media._layout.append(("other", t))
                continue
            if t in "vosc" and t not in seen:
                seen.add(t)
                if t == "v":
                    version = ascii_uint(v.strip(), _MAX_NUMBER)
                    if version is None:
                        raise SdpError(f"malformed v= line {v!r}: not an integer")
                    sdp.version = version
                elif t == "o":
                    sdp.origin = Origin.parse(v)
                elif t == "s":
                    sdp.session_name = v
                else:
                    sdp.connection = Connection.parse(v)
                sdp._layout.append(("single", t))
            elif t == "a":
                sdp.attributes.append(_parse_attr(v))
                sdp._layout.append(("attr", "a"))
            else:
                sdp.other.append((t, v))
                sdp._layout.append(("other", t))
        return sdp

    def lines(self) -> list[str]:
        """All lines (session then media sections), without line ends."""
        singles = {
            "v": str(self.version),
            "o": str(self.origin) if self.origin is not None else None,
            "s": self.session_name,
            "c": str(self.connection) if self.connection is not None else None,
        }
        out = _emit(self._layout, singles, self.attributes, self.other, _SESSION_RANK)
        for m in self.media:
            out += m.lines()
        return out

    def to_bytes(self) -> bytes:
        """Serialise with CRLF after every line (RFC 4566 §5), UTF-8."""
        return ("\r\n".join(self.lines()) + "\r\n").encode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"

    def copy(self) -> "SessionDescription":
        """A deep copy, equal to ``copy.deepcopy(self)`` (an origin, connection or
        media section shared inside stays shared in the copy) but without deepcopy's
        generic machinery: the typed fields are copied directly. The lists of
        ``(name, value)`` tuples are copied; the tuples, which hold only str/None,
        are shared."""
        memo: dict[int, object] = {}
        new = _clone(self, memo)
        new.origin = _clone(self.origin, memo)
        new.connection = _clone(self.connection, memo)
        new.attributes = list(self.attributes)
        new.other = list(self.other)
        new._layout = list(self._layout)
        new.media = [_copy_media(m, memo) for m in self.media]
        return new

    @property
    def session_direction(self) -> str:
        """The session-level direction, ``"sendrecv"`` when none is given."""
        return self.direction or "sendrecv"

    def media_direction(self, media: MediaDescription | int) -> str:
        """The direction in effect for a media section (its own attribute, else the
        session's, else ``"sendrecv"``, RFC 4566 §6). ``media`` is the section or
        its index."""
        m = self.media[media] if isinstance(media, int) else media
        return m.direction or self.session_direction

    def connection_for(self, media: MediaDescription | int) -> Connection | None:
        """The ``c=`` in effect for a media section (its own, else the session's)."""
        m = self.media[media] if isinstance(media, int) else media
        return m.connection or self.connection


_COPIED_FIELDS = frozenset({
    "origin", "connection", "attributes", "other", "_layout", "media", "fmts",
    "username", "sess_id", "sess_version", "nettype", "addrtype", "address",
    "version", "session_name", "port", "port_count", "proto",
})


def _clone(obj, memo: dict[int, object]):
    """A copy of ``obj`` (None, Origin, Connection, a description) sharing its field
    values, the same object for the same original (as deepcopy's memo does); any
    attribute outside the dataclass fields is deep-copied."""
    if obj is None:
        return None
    done = memo.get(id(obj))
    if done is not None:
        return done
    new = object.__new__(type(obj))
    d = obj.__dict__
    new.__dict__.update(d)
    for k in d.keys() - _COPIED_FIELDS:
        new.__dict__[k] = copy.deepcopy(d[k], memo)
    memo[id(obj)] = new
    return new


def _copy_media(m: MediaDescription, memo: dict[int, object]) -> MediaDescription:
    done = memo.get(id(m))
    if done is not None:
        return done  # type: ignore[return-value]
    new = _clone(m, memo)
    new.fmts = list(m.fmts)
    new.connection = _clone(m.connection, memo)
    new.attributes = list(m.attributes)
    new.other = list(m.other)
    new._layout = list(m._layout)
    return new


def _is_ice(name: str) -> bool:
    return name in ICE_ATTRIBUTES or name.startswith("ice-")


def rewrite_for_relay(
    sdp: SessionDescription,
    address: str,
    ports: list[int | None],
    *,
    origin_address: str | None = None,
) -> SessionDescription:
    """A copy of ``sdp`` pointing the media at a relay (``sdp`` is not changed).

    * Every ``c=`` (session level, and media level where present; a media section
      with no ``c=`` gets one when the session has none) becomes ``IN IP4|IP6
      <address>``, the address type chosen by ``address`` (IPv6 brackets dropped);
      extra media-level ``c=`` lines are removed.
    * ``o=``: address (and address type) = ``origin_address`` or ``address``;
      ``sess-version`` incremented by one (the same input gives the same output, a
      changed offer with a bumped version gives a bumped one); ``sess-id`` copied.
    * ``m=`` port ``i`` becomes ``ports[i]`` (int 1–65535). A stream whose port is 0
      stays 0 whatever ``ports[i]`` is (RFC 3264 §6); a None entry sets the port to
      0 (the stream is not relayed). ``port_count`` is kept.
    * ``a=rtcp`` of a relayed stream becomes ``<port+1> IN IP4|IP6 <address>``
      (RFC 3605); on a port-0 stream it is removed, so no address leaks.
    * ICE attributes (``a=candidate``, ``a=remote-candidates``,
      ``a=end-of-candidates``, ``a=ice-*``) are removed at both levels.

    Raises ``ValueError`` when ``len(ports) != len(sdp.media)`` or a port is out of
    range.
    """
    if len(ports) != len(sdp.media):
        raise ValueError(f"{len(ports)} ports given for {len(sdp.media)} media sections")
    for p in ports:
        if p is not None and not 0 < p < 65536:
            raise ValueError(f"relay port {p} out of range 1..65535")
    out = sdp.copy()
    conn = Connection.for_address(address)
    if out.origin is not None:
        oaddr = origin_address or address
        out.origin.address = oaddr.strip("[]")
        out.origin.addrtype = addrtype_for(oaddr)
        out.origin.sess_version += 1
    if out.connection is not None:
        out.connection = Connection(conn.nettype, conn.addrtype, conn.address)
    out.attributes = [(n, v) for n, v in out.attributes if not _is_ice(n)]
    for m, port in zip(out.media, ports):
        if m.connection is not None or out.connection is None:
            m.connection = Connection(conn.nettype, conn.addrtype, conn.address)
        m.other = [(t, v) for t, v in m.other if t != "c"]
        m.attributes = [(n, v) for n, v in m.attributes if not _is_ice(n)]
        if m.port == 0 or port is None:
            m.port = 0
            m.remove_attributes("rtcp")
            continue
        m.port = port
        m.attributes = [
            (n, f"{port + 1} {conn}" if n == "rtcp" else v) for n, v in m.attributes
        ]
    return out


# ---------------------------------------------------------------------------
# The relay rewrite of a plain body without the object model (the hot path).


class RelayScan:
    """A body read for :func:`scan_for_relay`: per ``m=`` line its port, protocol,
    the connection address that applies to it (str or None) and the ``a=rtcp`` port
    (int or None); and enough of the lines to write the rewrite of
    :func:`rewrite_for_relay` without building a :class:`SessionDescription`.

    ``media`` is a list of ``(port, proto, address, rtcp_port)``. Use
    :meth:`rewrite` to produce the body."""

    __slots__ = ("media", "_session", "_sections")

    def __init__(self, media: list, session: list, sections: list):
        self.media = media
        self._session = session
        self._sections = sections

    def rewrite(self, address: str, ports: list[int | None]) -> bytes:
        """The same bytes as ``rewrite_for_relay(SessionDescription.parse(body),
        address, ports).to_bytes()``. Raises ValueError like it."""
        if len(ports) != len(self.media):
            raise ValueError(f"{len(ports)} ports given for {len(self.media)} media sections")
        for p in ports:
            if p is not None and not 0 < p < 65536:
                raise ValueError(f"relay port {p} out of range 1..65535")
        addrtype = addrtype_for(address)
        bare = address.strip("[]")
        conn = f"IN {addrtype} {bare}"
        out = _fill(self._session, lambda kind, v: (
            f"o={v[0]} {v[1]} {v[2] + 1} {v[3]} {addrtype} {bare}" if kind == "o" else f"c={conn}"), None)
        for (head, slots), (mport, _proto, _addr, _rtcp), port in zip(self._sections, self.media, ports):
            media, count, proto, fmts = head
            relayed = mport != 0 and port is not None
            p = port if relayed else 0
            pstr = str(p) if count is None else f"{p}/{count}"
            out.append(" ".join(["m=" + media, pstr, proto, *fmts]) if fmts else f"m={media} {pstr} {proto}")
            out += _fill(slots, lambda kind, v: f"c={conn}", f"rtcp:{p + 1} {conn}" if relayed else "")
        return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")


def _fill(slots: tuple, single, rtcp: str | None) -> list[str]:
    """Write one level's lines the way :func:`_emit` does after the relay rewrite:
    attribute and other lines keep their order but move up into the earlier slots of
    their kind when some were removed (ICE attributes, extra media ``c=`` lines, an
    ``a=rtcp`` of a stream that is not relayed). ``rtcp`` (media level): the new
    ``a=rtcp`` value, or "" to drop it; None at session level (left alone)."""
    layout, attrs, others, is_media = slots
    kept = []
    for a in attrs:
        name = a.partition(":")[0]
        if name in ICE_ATTRIBUTES or name.startswith("ice-"):
            continue
        if is_media and name == "rtcp":
            if rtcp:
                kept.append("a=" + rtcp)
            continue
        kept.append("a=" + a)
    out: list[str] = []
    ai = oi = 0
    for kind, v in layout:
        if kind == "a":
            if ai < len(kept):
                out.append(kept[ai])
                ai += 1
        elif kind == "x":
            if oi < len(others):
                out.append(others[oi])
                oi += 1
        elif kind in ("o", "c"):
            out.append(single(kind, v))
        else:
            out.append(v)
    return out


def scan_for_relay(data: bytes) -> RelayScan | None:
    """Read an SDP body for the relay rewrite, or None when it is not one the fast
    path takes (anything unusual, malformed or without a session-level ``c=``): then
    use :class:`SessionDescription` and :func:`rewrite_for_relay`, which also say what
    is wrong with a malformed body."""
    text = data.decode("utf-8", "surrogateescape")
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines or not lines[0].startswith("v="):
        return None
    session_layout: list = []
    s_attrs: list[str] = []
    s_others: list[str] = []
    seen: set[str] = set()
    session_addr: str | None = None
    sections: list = []
    media: list = []
    cur = None
    for line in lines:
        if line[1:2] != "=" or line[0] not in _LETTERS:
            return None
        t, v = line[0], line[2:]
        if t == "m":
            parts = v.split()
            if len(parts) < 3:
                return None
            port_s, slash, count_s = parts[1].partition("/")
            port = ascii_uint(port_s, 65535)
            count = ascii_uint(count_s, _MAX_NUMBER) if slash else None
            if port is None or (slash and not count):
                return None
            cur = {"layout": [], "attrs": [], "others": [], "c": None, "rtcp": None}
            sections.append(((parts[0], count, parts[2], parts[3:]), cur))
            media.append([port, parts[2]])
            continue
        if cur is not None:
            if t == "c" and cur["c"] is None:
                f = v.split()
                if len(f) != 3:
                    return None
                cur["c"] = f[2]
                cur["layout"].append(("c", None))
            elif t == "a":
                if v.partition(":")[0] == "rtcp" and cur["rtcp"] is None:
                    rp = v.partition(":")[2].split()
                    rtcp = ascii_uint(rp[0], 65535) if rp else None
                    if rtcp is None or len(rp) not in (1, 4):
                        return None
                    cur["rtcp"] = rtcp
                cur["attrs"].append(v)
                cur["layout"].append(("a", None))
            elif t == "c":
                cur["layout"].append(("x", None))  # an extra c=: removed by the rewrite
            else:
                cur["others"].append(line)
                cur["layout"].append(("x", None))
            continue
        if t in "vosc" and t not in seen:
            seen.add(t)
            if t == "v":
                version = ascii_uint(v.strip(), _MAX_NUMBER)
                if version is None:
                    return None
                session_layout.append(("v", f"v={version}"))
            elif t == "o":
                f = v.split()
                version = ascii_uint(f[2], _MAX_NUMBER) if len(f) == 6 else None
                if version is None:
                    return None
                session_layout.append(("o", (f[0], f[1], version, f[3])))
            elif t == "s":
                session_layout.append(("s", line))
            else:
                f = v.split()
                if len(f) != 3:
                    return None
                session_addr = f[2]
                session_layout.append(("c", None))
        elif t == "a":
            s_attrs.append(v)
            session_layout.append(("a", None))
        else:
            s_others.append(line)
            session_layout.append(("x", None))
    if session_addr is None:
        return None
    out_sections = []
    for (head, cur), m in zip(sections, media):
        m.append(cur["c"] or session_addr)
        m.append(cur["rtcp"])
        out_sections.append((head, (cur["layout"], cur["attrs"], cur["others"], True)))
    return RelayScan([tuple(m) for m in media], (session_layout, s_attrs, s_others, False), out_sections)
