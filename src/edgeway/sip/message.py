"""SIP message parsing, validation and serialisation (RFC 3261 §7, §18.3, §20, §25).

Sans-IO in the style of h11: :func:`parse_message` takes the bytes of one datagram,
:class:`StreamFramer` cuts a byte stream into messages by Content-Length, and
``Message.to_bytes()`` serialises. Nothing here reads a clock or touches a socket.

Header values are kept as text (UTF-8, undecodable bytes kept through
``surrogateescape``) so that forwarding is lossless; typed views (:class:`Via`,
:class:`~edgeway.sip.uri.NameAddr`, CSeq…) are parsed once and cached on the message
(read-only for callers; see :class:`Message` for the contract). Multi-value headers
of the routing family (Via, Route, Record-Route, Contact, Path) are split into one
entry per element on parse, whether they arrived comma-joined on one line (as SIPp
and the cloud SBC of seed 003 §7.1 send them) or on several lines.

Speed (a node parses and writes ~14 messages per call): :class:`Headers` keeps a
lower-case key per entry so lookups are C-level list scans; the validator's parses
become the cached views; the plain forms of Via, name-addr, URI and parameters are
recognised by one compiled regex each and everything else goes to the careful
parsers, so every rejection and its reason text are those of the careful code;
repeated Via and name-addr texts are memoised in bounded tables (callers always get
fresh objects). ``tests/test_sip_fastpaths.py`` holds all of it to the parser as it
was before (``tests/sip_reference.py``); ``bench/parse_bench.py`` measures it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from .._ascii import ascii_uint, is_ascii_digits
from .uri import (
    _PARAMS,
    _TOK,
    NameAddr,
    Uri,
    UriError,
    _check_name_addr,
    _fast_params,
    format_params,
    is_token,
    parse_name_addr,
    parse_params,
    parse_uri,
    split_header_list,
    valid_host,
)

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_HEADERS",
    "STATUS_TOO_LARGE",
    "MAGIC_COOKIE",
    "ParseError",
    "Headers",
    "Message",
    "Request",
    "Response",
    "Via",
    "parse_message",
    "StreamFramer",
    "make_response",
    "REASON_PHRASES",
    "canonical_name",
]

#: Largest message accepted, head plus body, in bytes. 65,535 is the largest UDP
#: payload (RFC 768) and what Kamailio and SIPp use as their buffer size
#: (Kamailio's BUF_SIZE); a stream message larger than this is answered 513 Message
#: Too Large (RFC 3261 §21.5.14) when it is a request whose head can be read, and
#: closes the connection (framing can't be trusted).
MAX_MESSAGE_SIZE = 65535
#: Most header fields accepted in one message (h11 caps header count the same way;
#: Kamailio's parser has a fixed header table too). More is a 400.
MAX_HEADERS = 256
#: Status of a ParseError for a message over the size limits (RFC 3261 §21.5.14).
STATUS_TOO_LARGE = 513
#: RFC 3261 §8.1.1.7: branch values from RFC 3261 elements start with this.
MAGIC_COOKIE = "z9hG4bK"
_MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: "MUST be less than 2**31"
_MAX_UINT32 = 2**32 - 1

COMPACT_FORMS = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To",
    "v": "Via", "o": "Event", "r": "Refer-To", "b": "Referred-By", "u": "Allow-Events",
    "x": "Session-Expires", "a": "Accept-Contact", "j": "Reject-Contact",
    "d": "Request-Disposition", "y": "Identity", "n": "Identity-Info",
}
_KNOWN = [
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Route",
    "Record-Route", "Content-Length", "Content-Type", "Content-Encoding", "Subject",
    "Supported", "Require", "Proxy-Require", "Unsupported", "Allow", "Accept",
    "Expires", "Min-Expires", "User-Agent", "Server", "Warning", "Date", "Path",
    "Authorization", "WWW-Authenticate", "Proxy-Authenticate", "Proxy-Authorization",
    "Event", "Refer-To", "Referred-By", "Allow-Events", "Session-Expires", "Min-SE",
    "Session-ID", "Reason", "Retry-After", "Timestamp", "Service-Route", "RSeq", "RAck",
    "Accept-Contact", "Reject-Contact", "Request-Disposition", "Identity", "Identity-Info",
    "Organization", "Priority", "Call-Info", "Alert-Info", "Error-Info", "In-Reply-To",
    "Reply-To", "MIME-Version", "Content-Disposition", "Content-Language", "Accept-Encoding",
    "Accept-Language", "Record-Route", "Remote-Party-ID", "P-Asserted-Identity", "Locus",
]
_CANON = {n.lower(): n for n in _KNOWN}
_CANON.update({k: v for k, v in COMPACT_FORMS.items()})
#: Headers split into one entry per comma-separated element on parse.
LIST_HEADERS = frozenset({"via", "route", "record-route", "contact", "path", "service-route"})
#: Headers that may appear at most once (RFC 3261 §7.3.1, §20; RFC 4475 §3.3.1 multi01).
SINGLE_HEADERS = frozenset({"call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type"})

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    422: "Session Interval Too Small", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_DATE_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT$"
)
_VIA_PROTO_RE = re.compile(r"^\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/]+)\s+(.*)$", re.S)
_WS_RE = re.compile(r"[ \t]+")
_FOLD_RE = re.compile(r"\n[ \t]")
# The plain Via form (``SIP/2.0/UDP host[:port];params``, single SP, no LWS, no
# quotes); anything else goes to the careful parser.
_VIA_FAST_RE = re.compile(
    rf"SIP/2\.0/({_TOK}) ([A-Za-z0-9.\-_]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{{1,5}}))?({_PARAMS})"
)


#: Bound of the name → (canonical name, key) memo; when full, new names are
#: computed each time (hostile header names cost only speed, never memory).
_NAME_MEMO_MAX = 1024
_name_memo: dict[str, tuple[str, str]] = {}
#: Raw header-name texts (as cut from a header line, before stripping) already
#: checked to be tokens, with their (canonical name, key); bounded like above.
_raw_name_memo: dict[str, tuple[str, str]] = {}


def _name_key(name: str) -> tuple[str, str]:
    """``(canonical_name(name), its lower-case lookup key)``, memoised. Keys are
    interned so list scans mostly compare by identity."""
    ck = _name_memo.get(name)
    if ck is None:
        canon = _CANON.get(name.lower(), name)
        ck = (canon, sys.intern(canon.lower()))
        if len(_name_memo) < _NAME_MEMO_MAX:
            _name_memo[name] = ck
    return ck


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name: compact forms expanded, known names
    in their RFC spelling (``cseq`` → ``CSeq``, ``v`` → ``Via``), others unchanged."""
    return _name_key(name)[0]


class ParseError(ValueError):
    """A message is malformed.

    ``reason`` is a short operator-readable text, used in the reason phrase of the
    answer. ``status`` is the status to answer with: 400 (RFC 3261 §21.4.1), or
    :data:`STATUS_TOO_LARGE` (513, §21.5.14) when the message is over
    :data:`MAX_MESSAGE_SIZE`. ``partial`` is a :class:`Request` holding the start line
    and the Via/From/To/Call-ID/CSeq headers when those could be read (enough to form
    a response, RFC 3261 §8.2.6.2; for a malformed header section it holds only those
    headers), else None. ``fatal_for_stream`` is True when a stream's framing is lost
    and the connection must be closed after the answer (RFC 4475 §3.3.3 mcl01).
    """

    def __init__(self, reason: str, partial: "Request | None" = None, fatal_for_stream: bool = False, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.fatal_for_stream = fatal_for_stream
        self.status = status


#: View keys whose cached values are immutable (str, tuple), so a copy may share them.
_SHAREABLE_VIEWS = ("cseq", "call-id", "content-type")


class Headers:
    """An ordered, case-insensitive multimap of header fields.

    ``Headers()`` is empty; ``Headers(items)`` takes ``(name, value)`` pairs (lists or
    tuples) as they are, names not canonicalised. Entries added through
    :meth:`add`/:meth:`set` get the canonical name (see :func:`canonical_name`); the
    parser stores values as text without surrounding whitespace. Iterating yields
    ``(name, value)`` tuples in order.

    A name given to a lookup or edit matches entries whose name, lower-cased, equals
    the lower-cased canonical form of the given name (``v``, ``VIA`` and ``Via`` all
    find ``Via`` entries). Entries are kept as three parallel lists (names, lower-case
    keys, values), so lookups compare precomputed keys instead of lower-casing every
    entry on every call.

    Typed views that :class:`Message` caches (top Via, From, To, CSeq, Call-ID,
    Content-Type) live in this object, keyed by header key; every edit through this
    API (:meth:`set`, :meth:`add`, :meth:`remove`, :meth:`pop_first`,
    :meth:`replace_first`) drops the view of the header it touches, and assigning a
    new ``Headers`` to ``Message.headers`` starts from its own cache.
    """

    __slots__ = ("_names", "_keys", "_values", "_views")

    def __init__(self, items: "Iterable[Sequence[str]] | None" = None):
        self._names: list[str] = []
        self._keys: list[str] = []
        self._values: list[str] = []
        #: header key → cached typed view (see :class:`Message`).
        self._views: dict[str, object] = {}
        if items:
            for n, v in items:
                self._names.append(n)
                self._keys.append(sys.intern(n.lower()))
                self._values.append(v)

    @classmethod
    def _of(cls, names: list[str], keys: list[str], values: list[str]) -> "Headers":
        """A Headers owning the given parallel lists (parser and copy use)."""
        h = cls.__new__(cls)
        h._names, h._keys, h._values, h._views = names, keys, values, {}
        return h

    def __iter__(self) -> "Iterator[tuple[str, str]]":
        return zip(self._names, self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def copy(self) -> "Headers":
        """An independent copy (entries are immutable strings, so the lists are
        copied shallowly; only immutable cached views are carried over)."""
        h = Headers._of(self._names[:], self._keys[:], self._values[:])
        if self._views:
            for k in _SHAREABLE_VIEWS:
                v = self._views.get(k)
                if v is not None:
                    h._views[k] = v
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (any spelling, compact form accepted), or
        ``default`` when absent."""
        key = _name_key(name)[1]
        keys = self._keys
        if key in keys:
            return self._values[keys.index(key)]
        return default

    def get_all(self, name: str) -> list[str]:
        """All values of ``name`` in order (list headers: one element per entry);
        a new list, empty when absent."""
        key = _name_key(name)[1]
        keys = self._keys
        n = keys.count(key)
        if n == 0:
            return []
        values = self._values
        if n == 1:
            return [values[keys.index(key)]]
        out, i = [], -1
        for _ in range(n):  # n C-level searches, not a Python loop over every entry
            i = keys.index(key, i + 1)
            out.append(values[i])
        return out

    def count(self, name: str) -> int:
        """How many entries ``name`` has."""
        return self._keys.count(_name_key(name)[1])

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` entry by one entry ``value`` at the first one's place
        (appended when there was none)."""
        name, key = _name_key(name)
        keys = self._keys
        if self._views:
            self._views.pop(key, None)
        if key not in keys:
            self._names.append(name)
            keys.append(key)
            self._values.append(value)
            return
        i = keys.index(key)
        self._names[i] = name
        self._values[i] = value
        if keys.count(key) > 1:
            keep = [j for j in range(len(keys)) if j <= i or keys[j] != key]
            self._names = [self._names[j] for j in keep]
            self._values = [self._values[j] for j in keep]
            self._keys = [keys[j] for j in keep]

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Add an entry: at the end, or before the first entry of the same name when
        ``first`` (how a proxy pushes Via and Record-Route, RFC 3261 §16.6); a
        ``first`` Via with no Via yet goes to the top of the header block."""
        name, key = _name_key(name)
        if self._views:
            self._views.pop(key, None)
        keys = self._keys
        if first:
            if key in keys:
                i = keys.index(key)
            else:
                # Keep Via near the top of the header block for readability.
                i = 0 if key == "via" else len(keys)
            self._names.insert(i, name)
            keys.insert(i, key)
            self._values.insert(i, value)
            return
        self._names.append(name)
        keys.append(key)
        self._values.append(value)

    def remove(self, name: str) -> int:
        """Remove every ``name`` entry; returns how many were removed."""
        key = _name_key(name)[1]
        keys = self._keys
        n = keys.count(key)
        if n:
            if self._views:
                self._views.pop(key, None)
            keep = [j for j, k in enumerate(keys) if k != key]
            self._names = [self._names[j] for j in keep]
            self._values = [self._values[j] for j in keep]
            self._keys = [keys[j] for j in keep]
        return n

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first ``name`` entry (None when absent)."""
        key = _name_key(name)[1]
        keys = self._keys
        if key not in keys:
            return None
        if self._views:
            self._views.pop(key, None)
        i = keys.index(key)
        del keys[i], self._names[i]
        return self._values.pop(i)

    def replace_first(self, name: str, value: str) -> None:
        """Replace the value of the first ``name`` entry, keeping its name spelling
        (KeyError when absent)."""
        key = _name_key(name)[1]
        keys = self._keys
        if key not in keys:
            raise KeyError(name)
        if self._views:
            self._views.pop(key, None)
        self._values[keys.index(key)] = value

    def items(self) -> list[tuple[str, str]]:
        """The entries as a new list of ``(name, value)`` tuples."""
        return list(zip(self._names, self._values))


#: Bound of the memo of parsed Via values (see :meth:`Via.parse`); cleared when
#: full, so hostile input costs only speed.
_VIA_MEMO_MAX = 4096
_via_memo: "dict[str, Via]" = {}


@dataclass
class Via:
    """One Via element (RFC 3261 §20.42): ``SIP/2.0/<transport> host[:port];params``.

    ``transport`` upper-case str; ``host`` str (IPv6 with brackets); ``port`` int or
    None; ``params`` ordered dict, values None for flags (``rport`` without value), a
    :class:`~edgeway.sip.uri.Params` keeping every value when a name repeats.
    ``str(via)`` writes it back (single spaces, parameters in order).
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, value: str) -> "Via":
        """Parse one Via element; raises :class:`ParseError` when malformed (protocol
        not SIP/2.0, transport not a token, bad sent-by host or port, malformed or
        empty parameters).

        Returns a new object on every call. Successful parses are memoised by text
        (bounded: a request's Vias come back in each of its responses); a hit
        returns a copy of the remembered result."""
        if cls is not Via:
            return cls._parse(value)
        memo = _via_memo.get(value)
        if memo is not None:
            return Via(memo.transport, memo.host, memo.port, memo.params.copy(), memo.protocol)
        via = cls._parse(value)
        if len(_via_memo) >= _VIA_MEMO_MAX:
            _via_memo.clear()
        _via_memo[value] = Via(via.transport, via.host, via.port, via.params.copy(), via.protocol)
        return via

    @classmethod
    def _parse(cls, value: str) -> "Via":
        """Via.parse without the memo: the fast path, else the careful parser."""
        m = _VIA_FAST_RE.fullmatch(value)
        if m is not None:  # the plain form: SIP/2.0/UDP host:port;branch=...;rport
            transport, host, port_s, ptext = m.groups()
            if valid_host(host):
                port = None if port_s is None else int(port_s)
                if port is None or 0 < port < 65536:
                    return cls(transport.upper(), host, port, _fast_params(ptext) if ptext else {})
        return cls._parse_careful(value)

    @classmethod
    def _parse_careful(cls, value: str) -> "Via":
        """The full RFC 3261 §25.1 ``via-parm`` parser (LWS, case, IPv6, errors)."""
        m = _VIA_PROTO_RE.match(value)
        if not m:
            raise ParseError(f"malformed Via {value!r}")
        name, version, transport, rest = m.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise ParseError(f"Via protocol {name}/{version} is not SIP/2.0")
        if not is_token(transport):
            raise ParseError(f"malformed Via transport {transport!r}")
        sent_by, semi, ptext = rest.partition(";")
        sent_by = sent_by.strip()
        try:
            params = parse_params(ptext, where="Via") if semi else {}
        except UriError as exc:
            raise ParseError(str(exc)) from None
        if sent_by.startswith("["):
            close = sent_by.find("]")
            host, port_s = sent_by[: close + 1], sent_by[close + 2 :] if close + 1 < len(sent_by) else ""
        else:
            host, _, port_s = sent_by.partition(":")
        host, port_s = host.strip(), port_s.strip()
        if not host or not valid_host(host):
            raise ParseError(f"malformed Via sent-by {sent_by!r}")
        port = None
        if port_s:
            port = ascii_uint(port_s, 65535)
            if not port:
                raise ParseError(f"malformed Via port {port_s!r}")
        return cls(transport=transport.upper(), host=host, port=port, params=params)

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter (RFC 3261 §8.1.1.7), None when absent."""
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        """``host`` or ``host:port`` as sent."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


class Message:
    """Common part of :class:`Request` and :class:`Response`: ``headers``
    (:class:`Headers`) and ``body`` (bytes), plus typed accessors for the headers
    every message carries.

    Cached views: :meth:`top_via`, :attr:`from_`, :attr:`to`, :attr:`cseq`,
    :attr:`call_id`, :attr:`content_type` (and :attr:`Request.ruri`) parse their
    header once and return the same object until that header changes. The parser fills them while it validates, so reading them
    after :func:`parse_message` costs a dict lookup. The objects returned are shared:
    treat them as read-only. To change a header, build the new value and write it
    back with ``headers.replace_first``/``headers.set`` (or ``msg.uri = ...``), which
    drops the cached view; a later read parses the new text. Mutating a returned
    :class:`Via`/:class:`~edgeway.sip.uri.NameAddr`/:class:`~edgeway.sip.uri.Uri` in
    place changes what later reads of the same message return without changing the
    message's text. Copies (:meth:`Request.copy`, :meth:`Response.copy`) do not share
    mutable views. The body has no cached view: assigning ``body`` needs no
    invalidation.
    """

    headers: Headers
    body: bytes

    # -- typed views ---------------------------------------------------------
    @property
    def call_id(self) -> str:
        """The Call-ID value ("" when absent). Cached (a str)."""
        h = self.headers
        v = h._views.get("call-id")
        if v is None:
            v = h._views["call-id"] = h.get("Call-ID") or ""
        return v  # type: ignore[return-value]

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq; :class:`ParseError` (a ValueError)
        when CSeq is missing or its number is not ASCII digits in 0..2**31-1
        (RFC 3261 §8.1.1.5). Cached (a tuple, immutable)."""
        h = self.headers
        v = h._views.get("cseq")
        if v is None:
            num, _, method = (h.get("CSeq") or "").strip().partition(" ")
            v = h._views["cseq"] = (_parse_uint(num, "CSeq number", _MAX_CSEQ), method.strip())
        return v  # type: ignore[return-value]

    def top_via(self) -> Via:
        """The first Via element, parsed (cached: read-only, see :class:`Message`).
        Raises :class:`ParseError` when there is no Via or it is malformed."""
        h = self.headers
        v = h._views.get("via")
        if v is None:
            text = h.get("Via")
            if text is None:
                raise ParseError("no Via header")
            v = h._views["via"] = Via.parse(text)
        return v  # type: ignore[return-value]

    def push_via(self, via: Via) -> None:
        """Put ``via`` on top of the Via header set (how a proxy adds its own, RFC 3261
        §16.6 item 8) and keep it as the cached :meth:`top_via` view (read-only from
        then on)."""
        h = self.headers
        h.add("Via", str(via), first=True)
        h._views["via"] = via

    def vias(self) -> list[Via]:
        """Every Via element, parsed, in order (new objects, not cached); raises
        :class:`ParseError` on a malformed one."""
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    def _name_addr_view(self, key: str, name: str) -> NameAddr:
        h = self.headers
        v = h._views.get(key)
        if v is None:
            v = h._views[key] = parse_name_addr(h.get(name) or "")
        return v  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        """The From header, parsed (cached: read-only, see :class:`Message`); raises
        :class:`~edgeway.sip.uri.UriError` when missing or malformed."""
        return self._name_addr_view("from", "From")

    @property
    def to(self) -> NameAddr:
        """The To header, parsed (cached: read-only, see :class:`Message`); raises
        :class:`~edgeway.sip.uri.UriError` when missing or malformed."""
        return self._name_addr_view("to", "To")

    @property
    def from_tag(self) -> str | None:
        """The From ``tag`` parameter, None when absent."""
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        """The To ``tag`` parameter, None when absent."""
        return self.to.tag

    @property
    def content_type(self) -> str:
        """The media type of Content-Type, lower-cased, without parameters ("" when
        absent). Cached (a str)."""
        h = self.headers
        v = h._views.get("content-type")
        if v is None:
            v = h._views["content-type"] = (h.get("Content-Type") or "").split(";")[0].strip().lower()
        return v  # type: ignore[return-value]

    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise: start line, headers one per line in order (``Name: value``) with
        the first Content-Length set to the body's length (added at the end when
        absent, repeats dropped), blank line, body. Text is encoded as UTF-8 with
        ``surrogateescape``, so undecodable bytes received go out unchanged."""
        h = self.headers
        names = h._names
        body = self.body
        ncl = names.count("Content-Length")
        if ncl > 1 or not names:
            return self._to_bytes_careful()
        values = h._values
        if ncl:
            values = values.copy()
            values[names.index("Content-Length")] = str(len(body))
            tail = "\r\n\r\n"
        else:
            tail = f"\r\nContent-Length: {len(body)}\r\n\r\n"
        try:
            block = "\r\n".join(map(": ".join, zip(names, values)))
        except TypeError:  # a value that is not a str (set by a caller): format it
            return self._to_bytes_careful()
        head = self.start_line() + "\r\n" + block + tail
        return head.encode("utf-8", "surrogateescape") + body

    def _to_bytes_careful(self) -> bytes:
        lines = [self.start_line()]
        has_cl = False
        for n, v in self.headers:
            if n == "Content-Length":
                if has_cl:
                    continue
                v, has_cl = str(len(self.body)), True
            lines.append(f"{n}: {v}")
        if not has_cl:
            lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    def _semantic_headers(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self.headers if n != "Content-Length"]

    def __eq__(self, other: object) -> bool:
        """Same start line, same headers in the same order and same body.
        Content-Length is derived from the body, so it is not compared."""
        return (
            type(other) is type(self)
            and self.start_line() == other.start_line()  # type: ignore[attr-defined]
            and self._semantic_headers() == other._semantic_headers()  # type: ignore[attr-defined]
            and self.body == other.body  # type: ignore[attr-defined]
        )

    __hash__ = None  # type: ignore[assignment]


class Request(Message):
    """A SIP request: ``method`` (str, case-sensitive), ``uri`` (raw Request-URI text),
    ``headers``, ``body`` (bytes), ``version`` ("SIP/2.0")."""

    #: (Request-URI text, its parse): the :attr:`ruri` cache, checked against ``uri``.
    _ruri: "tuple[str, Uri] | None" = None

    def __init__(self, method: str, uri: str, headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0"):
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version

    @property
    def ruri(self) -> Uri:
        """The parsed Request-URI (raises UriError when malformed). Cached while
        ``uri`` keeps the same text: read-only, see :class:`Message`; to change the
        Request-URI assign a new string to ``uri``."""
        uri = self.uri
        c = self._ruri
        if c is not None and c[0] == uri:
            return c[1]
        u = parse_uri(uri)
        self._ruri = (uri, u)
        return u

    @property
    def branch(self) -> str | None:
        """The top Via's branch (ParseError when there is no valid top Via)."""
        return self.top_via().branch

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> "Request":
        """An independent copy: same start line, headers (their lists copied) and
        body; cached mutable views are not shared."""
        return Request(self.method, self.uri, self.headers.copy(), self.body, self.version)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response: ``status`` (int 100–699) and ``reason`` (str, may be empty;
    the standard phrase when given as None), ``headers``, ``body``, ``version``."""

    def __init__(self, status: int, reason: str | None = None, headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0"):
        self.status = status
        self.reason = REASON_PHRASES.get(status, "") if reason is None else reason
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> "Response":
        """An independent copy (see :meth:`Request.copy`)."""
        return Response(self.status, self.reason, self.headers.copy(), self.body, self.version)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ---------------------------------------------------------------------------
# parsing


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    idx = data.find(b"\r\n\r\n")
    if idx >= 0:
        return data[:idx], data[idx + 4 :]
    idx = data.find(b"\n\n")
    if idx >= 0:
        return data[:idx], data[idx + 2 :]
    return data, b""


def _unfold(head: str) -> list[str]:
    """Header lines with continuation lines (starting with SP/HT) joined (RFC 3261 §7.3.1)."""
    lines: list[str] = []
    for raw in re.split(r"\r?\n", head):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] = lines[-1] + " " + raw.strip()
        else:
            lines.append(raw)
    return lines


def _parse_start_line(line: str, headers: "Headers | None" = None) -> Request | Response:
    """The message that ``line`` starts, with ``headers`` (empty when None); raises
    :class:`ParseError` on a malformed request or status line."""
    if line.startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise ParseError("malformed status line")
        version, code = parts[0], parts[1]
        if version != "SIP/2.0":
            raise ParseError(f"unsupported version {version!r}")
        status = ascii_uint(code, 699) if len(code) == 3 else None
        if status is None or status < 100:
            raise ParseError(f"invalid status code {code[:20]!r}")
        return Response(status, parts[2] if len(parts) > 2 else "", headers, version=version)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError("malformed request line (exactly one SP between method, Request-URI and version)")
    method, uri, version = parts
    if not is_token(method):
        raise ParseError(f"invalid method {method[:32]!r}")
    if version != "SIP/2.0":
        raise ParseError(f"unsupported version {version[:16]!r}")
    return Request(method, uri, headers, version=version)


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _split_lines(head: str) -> tuple[list[str], bool]:
    """``(lines, folded)``: the header block's lines, split at CRLF or LF with
    continuation lines joined (the result of :func:`_unfold`, which runs only when
    there is folding), and whether any line was folded."""
    if _FOLD_RE.search(head):
        return _unfold(head), True
    lines = head.split("\r\n")
    if head.count("\n") != len(lines) - 1:  # some line ends in a bare LF
        return head.replace("\r\n", "\n").split("\n"), False
    return lines, False


def _parse_headers(lines: list[str], start: int = 0, ws: bool | None = None) -> Headers:
    """Header lines (from index ``start``) into :class:`Headers`: names canonicalised,
    values stripped with runs of SP/HT made one SP, list headers split into one
    entry per element. Raises :class:`ParseError` on a line that is not
    ``token ":" value``, an unterminated quote in a list header, or more than
    :data:`MAX_HEADERS` entries. ``ws`` False promises that no line holds a tab or
    two spaces in a row (then values are not searched for runs of SP/HT to fold);
    None: find out."""
    names: list[str] = []
    keys: list[str] = []
    values: list[str] = []
    add_name, add_key, add_value = names.append, keys.append, values.append
    memo = _raw_name_memo
    if ws is None:
        ws = any("\t" in line or "  " in line for line in lines[start:])
    for line in lines[start:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError(f"malformed header line {line[:40]!r}")
        ck = memo.get(name)
        if ck is None:
            stripped = name.strip()
            if not is_token(stripped):
                raise ParseError(f"malformed header line {line[:40]!r}")
            ck = _name_key(stripped)
            if len(memo) < _NAME_MEMO_MAX:
                memo[name] = ck
        canon, key = ck
        value = value.strip()
        if ws and ("\t" in value or "  " in value):
            value = _WS_RE.sub(" ", value)
        if key in LIST_HEADERS and value and ("," in value or '"' in value):
            try:
                elements = split_header_list(value)
            except UriError as exc:
                raise ParseError(f"{canon}: {exc}") from None
            for el in elements:
                add_name(canon)
                add_key(key)
                add_value(el)
        else:
            add_name(canon)
            add_key(key)
            add_value(value)
        if len(values) > MAX_HEADERS:
            raise ParseError("too many header fields")
    return Headers._of(names, keys, values)


def _parse_uint(text: str, what: str, limit: int) -> int:
    """``text`` (surrounding whitespace ignored) as an integer in 0..``limit``;
    ParseError unless it is 1 to 12 ASCII digits with a value in range."""
    t = text.strip()
    n = ascii_uint(t, limit) if len(t) <= 12 else None
    if n is None:
        raise ParseError(f"{what} {t[:24]!r} is not an integer in 0..{limit}")
    return n


#: The headers every request and response must carry (RFC 3261 §8.1.1), with keys.
_REQUIRED = (("Via", "via"), ("From", "from"), ("To", "to"), ("Call-ID", "call-id"), ("CSeq", "cseq"))


def _validate(msg: Request | Response) -> None:
    """Semantic checks of RFC 3261 §8.1.1, §20 and RFC 4475 §3.1.2 on a parsed message.

    The checks run in a fixed order and the first failure raises :class:`ParseError`.
    What they parse on the way (top Via, CSeq, From, To, Request-URI) is kept as the
    message's cached views (see :class:`Message`). Header values are read straight
    from the parallel lists (``values[keys.index(key)]`` is ``headers.get``).
    """
    h = msg.headers
    keys, values = h._keys, h._values
    for name in SINGLE_HEADERS:
        if keys.count(name) > 1:
            raise ParseError(f"repeated {canonical_name(name)} header", fatal_for_stream=(name == "content-length"))
    missing = [n for n, k in _REQUIRED if k not in keys]
    if missing:
        raise ParseError("missing " + ", ".join(missing))
    views = h._views
    vias = h.get_all("Via")
    views["via"] = Via.parse(vias[0])
    for v in vias[1:]:
        if v not in _via_memo:  # remembered values are known to parse
            Via.parse(v)
    cseq = values[keys.index("cseq")]
    num, _, method = cseq.strip().partition(" ")
    seq = _parse_uint(num, "CSeq number", _MAX_CSEQ)
    method = method.strip()
    if not is_token(method):
        raise ParseError(f"malformed CSeq {cseq!r}")
    if isinstance(msg, Request) and method != msg.method:
        raise ParseError(f"CSeq method {method!r} does not match request method {msg.method!r}")
    views["cseq"] = (seq, method)
    call_id = values[keys.index("call-id")]
    stripped = call_id.strip()
    if not stripped or " " in stripped:
        raise ParseError("malformed Call-ID")
    views["call-id"] = call_id
    if "max-forwards" in keys:
        _parse_uint(values[keys.index("max-forwards")], "Max-Forwards", 255)
    if "expires" in keys:
        _parse_uint(values[keys.index("expires")], "Expires", _MAX_UINT32)
    if "retry-after" in keys:
        ra = values[keys.index("retry-after")]
        _parse_uint(ra.split(";")[0].split("(")[0], "Retry-After", _MAX_UINT32)
    if "date" in keys:
        date = values[keys.index("date")]
        if not _DATE_RE.match(date):
            raise ParseError(f"malformed Date {date!r} (RFC 1123 date in GMT required)")
    try:
        views["from"] = parse_name_addr(values[keys.index("from")])
        views["to"] = parse_name_addr(values[keys.index("to")])
        if "route" in keys:
            for v in h.get_all("Route"):
                _check_name_addr(v)
        if "record-route" in keys:
            for v in h.get_all("Record-Route"):
                _check_name_addr(v)
        if "contact" in keys:
            for v in h.get_all("Contact"):
                _check_name_addr(v, allow_star=True)
    except UriError as exc:
        raise ParseError(str(exc)) from None
    if "warning" in keys:
        for w in h.get_all("Warning"):
            code = w.strip().split(" ", 1)[0]
            if len(code) != 3 or not is_ascii_digits(code):
                raise ParseError(f"malformed Warning code {code[:16]!r}")
    if isinstance(msg, Request):
        try:
            uri = msg.ruri
        except UriError as exc:
            raise ParseError(f"malformed Request-URI: {exc}") from None
        if uri.headers is not None:
            raise ParseError("Request-URI must not contain headers (RFC 3261 §19.1.5)")


def _content_length(h: Headers, too_large: int = 400) -> int | None:
    """The Content-Length value (None when absent); ParseError when it is not ASCII
    digits in 0..:data:`MAX_MESSAGE_SIZE`, with status ``too_large`` when it is a
    number over that limit."""
    cl = h.get("Content-Length")
    if cl is None:
        return None
    try:
        return _parse_uint(cl, "Content-Length", MAX_MESSAGE_SIZE)
    except ParseError as exc:
        if is_ascii_digits(cl.strip()):
            exc.status = too_large
        raise


def parse_message(data: bytes) -> Request | Response:
    """Parse one SIP message from the bytes of a datagram (RFC 3261 §18.3).

    When Content-Length is present the body is cut to it and anything after is
    ignored; a Content-Length larger than the bytes present is an error (400,
    RFC 3261 §18.3). Raises only :class:`ParseError`, whatever the bytes: ``partial``
    set when a response can be formed, ``status`` 513 for data over
    :data:`MAX_MESSAGE_SIZE` (then ``partial`` comes from the head in its first
    :data:`MAX_MESSAGE_SIZE` bytes).
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise ParseError(f"message larger than {MAX_MESSAGE_SIZE} bytes", _salvage_prefix(data.lstrip(b"\r\n"), MAX_MESSAGE_SIZE),
                         status=STATUS_TOO_LARGE)
    data = data.lstrip(b"\r\n")
    head, body = _split_head(data)
    msg, partial = _parse_head(head)
    try:
        cl = _content_length(msg.headers)
        if cl is not None:
            if cl > len(body):
                raise ParseError(f"Content-Length {cl} exceeds the {len(body)} body bytes received")
            body = body[:cl]
        msg.body = body
        _validate(msg)
    except ParseError as exc:
        exc.partial = partial
        raise
    return msg


_NO_HEADERS = Headers()
_REQUIRED_KEYS = frozenset(k for _, k in _REQUIRED)


def _salvage(lines: list[str]) -> Request | None:
    """A request that can carry a response to a message whose header section does not
    parse (a malformed line, too many fields, or cut at the size limit): the start
    line ``lines[0]`` and only the Via (every element, at most :data:`MAX_HEADERS`),
    From, To, Call-ID and CSeq headers (the first of each) among ``lines[1:]``,
    skipping every line that is not ``token ":" value``. None when the start line is
    not a valid request line or one of those headers is missing or empty."""
    if not lines:
        return None
    try:
        req = _parse_start_line(lines[0])
    except ParseError:
        return None
    if not isinstance(req, Request):
        return None
    names: list[str] = []
    keys: list[str] = []
    values: list[str] = []
    nvia = 0
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not is_token(name):
            continue
        canon, key = _name_key(name)
        value = value.strip()
        if key not in _REQUIRED_KEYS or not value:
            continue
        if key == "via":
            try:
                elements = split_header_list(value)
            except UriError:
                continue
            elements = [e for e in elements if e][: MAX_HEADERS - nvia]
            nvia += len(elements)
        elif key in keys:
            continue
        else:
            elements = [value]
        for e in elements:
            names.append(canon)
            keys.append(key)
            values.append(e)
    if not all(k in keys for k in _REQUIRED_KEYS):
        return None
    req.headers = Headers._of(names, keys, values)
    return req


def _salvage_prefix(data: bytes | bytearray, limit: int) -> Request | None:
    """:func:`_salvage` on the header section held in the first ``limit`` bytes of
    ``data`` (a message over the size limit): cut at the first empty line, else at
    the end of the last complete line."""
    data = bytes(data[:limit])
    head_end, _ = _find_head_end(data, 0)
    if head_end < 0:
        head_end = data.rfind(b"\n")
        if head_end < 0:
            return None
    lines, _ = _split_lines(_decode(data[:head_end]).rstrip("\r"))
    return _salvage(lines)


def _find_head_end(buf: bytes | bytearray, start: int) -> tuple[int, int]:
    """``(end of the header section, start of the body)`` for the first empty line of
    ``buf`` found at or after ``start`` (the empty line is LF or CRLF, after a line
    ending in LF or CRLF: RFC 3261 §7.5 tolerance of bare LF, as the datagram parser
    has); ``(-1, -1)`` when there is none yet. Two C-level searches: ``\n\r\n`` (which
    the usual CRLFCRLF contains), then ``\n\n`` before it."""
    a = buf.find(b"\n\r\n", start)
    b = buf.find(b"\n\n", start, a + 1) if a >= 0 else buf.find(b"\n\n", start)
    if b >= 0:
        return (b - 1 if b and buf[b - 1] == 13 else b), b + 2
    if a >= 0:
        return (a - 1 if a and buf[a - 1] == 13 else a), a + 3
    return -1, -1


def _parse_head(head: bytes) -> tuple[Request | Response, Request | None]:
    """``(message without body, partial)`` of a header section (start line and header
    lines, no empty line); ``partial`` is the message when it is a request carrying
    the headers a response needs, else None. ParseError on a malformed start line or
    header line (``partial`` then from :func:`_salvage`)."""
    text = _decode(head)
    lines, folded = _split_lines(text)
    if not lines or not lines[0]:
        raise ParseError("empty message")
    # Start-line errors come first; the placeholder never escapes (replaced at once,
    # and the message is dropped if the headers are malformed).
    msg = _parse_start_line(lines[0], _NO_HEADERS)
    # Runs of SP/HT can only be in values if the text has a tab or two SPs in a row,
    # or when unfolding joined lines (" " + continuation, after a trailing SP).
    ws = None if folded else ("\t" in text or "  " in text)
    try:
        msg.headers = _parse_headers(lines, 1, ws)
    except ParseError as exc:
        exc.partial = _salvage(lines)
        raise
    partial = None
    if isinstance(msg, Request):
        keys, values = msg.headers._keys, msg.headers._values
        if all(k in keys and values[keys.index(k)] for _, k in _REQUIRED):
            partial = msg
    return msg, partial


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    ``feed(data)`` takes the bytes just read (bytes-like) and returns a list of
    events: :class:`Request`/:class:`Response` objects, :class:`ParseError`
    instances for messages that were framed but are malformed (the stream goes on),
    the string ``"ping"`` for a CRLFCRLF keepalive (answer with ``b"\\r\\n"``,
    RFC 5626 §3.5.1) and ``"pong"`` for a lone CRLF. A bare LF before a start line is
    skipped (RFC 3261 §7.5). The header section ends at the first empty line, the
    lines ending in CRLF or LF. ``feed`` raises nothing for any input.

    When framing is lost the event is a ParseError with ``fatal_for_stream`` set
    (``status`` and ``partial`` as :class:`ParseError` describes, so the request can
    still be answered): no Content-Length (mandatory on streams, RFC 3261 §18.3),
    repeated or malformed Content-Length, a malformed start line or header line,
    a head or message over ``max_size`` bytes (status 513). The framer is then
    ``broken``: it buffers nothing and every later ``feed`` returns ``[]``; close the
    connection once the answer is written.

    Cost is linear in the bytes fed however they are split: the search for the end
    of the head resumes where the last one stopped, and a parsed head waits for its
    body without being parsed again.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE):
        self._buf = bytearray()
        self.max_size = max_size
        self.broken = False
        #: Where the search for the end of the head resumes in ``_buf``.
        self._scan = 0
        #: A parsed head waiting for its body: (message, partial, body start, end).
        self._pending: "tuple[Request | Response, Request | None, int, int] | None" = None

    def feed(self, data: bytes) -> list:
        if self.broken:
            return []
        try:
            return self._feed(data)
        except BaseException:
            self._stop()  # whatever went wrong, never buffer or parse again
            raise

    def _feed(self, data: bytes) -> list:
        buf = self._buf
        buf += data
        out: list = []
        max_size = self.max_size
        while buf:
            pending = self._pending
            if pending is not None:
                msg, partial, body_start, total = pending
                if len(buf) < total:
                    break
                self._pending = None
                msg.body = bytes(buf[body_start:total])
                del buf[:total]
                self._scan = 0
                try:
                    _validate(msg)
                    out.append(msg)
                except ParseError as exc:
                    exc.partial = partial
                    out.append(exc)
                continue
            first = buf[0]
            if first == 13:  # CR
                if buf.startswith(b"\r\n\r\n"):
                    del buf[:4]
                    out.append("ping")
                    self._scan = 0
                    continue
                if buf.startswith(b"\r\n"):
                    del buf[:2]
                    out.append("pong")
                    self._scan = 0
                    continue
                if len(buf) == 1:
                    break
            elif first == 10:  # a bare LF before a start line
                del buf[:1]
                self._scan = 0
                continue
            head_end, body_start = _find_head_end(buf, self._scan)
            if head_end < 0:
                self._scan = max(0, len(buf) - 3)
                if len(buf) > max_size:
                    out.append(self._fatal_exc(ParseError(
                        "header block larger than the message-size limit", _salvage_prefix(buf, max_size),
                        status=STATUS_TOO_LARGE)))
                break
            if head_end > max_size:
                out.append(self._fatal_exc(ParseError(
                    "header block larger than the message-size limit", _salvage_prefix(buf, max_size),
                    status=STATUS_TOO_LARGE)))
                break
            partial = None
            try:
                msg, partial = _parse_head(bytes(buf[:head_end]))
                ncl = msg.headers._names.count("Content-Length")
                if ncl > 1:
                    raise ParseError("repeated Content-Length on a stream")
                if not ncl:
                    raise ParseError("no Content-Length on a stream (RFC 3261 §18.3)")
                cl = _content_length(msg.headers, STATUS_TOO_LARGE)
            except ParseError as exc:
                if exc.partial is None:
                    exc.partial = partial
                out.append(self._fatal_exc(exc))
                break
            total = body_start + cl  # type: ignore[operator]
            if total > max_size:
                out.append(self._fatal_exc(ParseError("message larger than the message-size limit", partial,
                                                      status=STATUS_TOO_LARGE)))
                break
            self._pending = (msg, partial, body_start, total)
        return out

    def _stop(self) -> None:
        self.broken = True
        self._buf = bytearray()
        self._pending = None

    def _fatal_exc(self, exc: ParseError) -> ParseError:
        exc.fatal_for_stream = True
        self._stop()
        return exc


def make_response(req: Request, status: int, reason: str | None = None, *, to_tag: str | None = None, body: bytes = b"", extra: list[tuple[str, str]] | None = None) -> Response:
    """Build a response to ``req`` as a UAS or proxy does (RFC 3261 §8.2.6.2).

    Copies Via (all, in order), From, To, Call-ID and CSeq; adds ``to_tag`` to To
    when given and To has no tag yet; appends ``extra`` headers.
    """
    h = Headers()
    for v in req.headers.get_all("Via"):
        h.add("Via", v)
    h.add("From", req.headers.get("From") or "")
    to = req.headers.get("To") or ""
    if to_tag and status > 100:
        try:
            if parse_name_addr(to).tag is None:
                to = f"{to};tag={to_tag}"
        except UriError:
            pass
    h.add("To", to)
    h.add("Call-ID", req.headers.get("Call-ID") or "")
    h.add("CSeq", req.headers.get("CSeq") or "")
    for n, v in extra or []:
        h.add(n, v)
    return Response(status, reason, h, body)
