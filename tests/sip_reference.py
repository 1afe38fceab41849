"""The SIP parser as it was before the fast paths (uri.py and message.py of commit
3d1db24, merged into one module, unchanged otherwise): the oracle that
tests/test_sip_fastpaths.py compares the current parser with. Not used by the
product. Change it only together with an intended change of parsing behaviour.
"""
# ruff: noqa

from __future__ import annotations

import re
from dataclasses import dataclass, field

class UriError(ValueError):
    """A URI or name-addr is malformed; ``str(exc)`` says what rule it broke."""


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
_TOKEN_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9])?)*\.?$")
_IPV4_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
_IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")
# Characters that may never appear unescaped inside a SIP URI (RFC 3261 §25.1).
_FORBIDDEN = set(" \t\r\n<>\"{}|\\^")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")


def is_token(text: str) -> bool:
    """True when ``text`` is a non-empty RFC 3261 §25.1 token."""
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §19.1.4); invalid escapes are left as they are."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def valid_host(host: str) -> bool:
    """True for a hostname, an IPv4 address or a bracketed IPv6 reference."""
    if _IPV4_RE.match(host):
        return all(int(p) < 256 for p in host.split("."))
    if host.startswith("["):
        return bool(_IPV6_RE.match(host))
    return bool(_HOSTNAME_RE.match(host))


def parse_params(text: str, *, where: str) -> dict[str, str | None]:
    """Parse ``;name[=value]`` parameters (the leading ``;`` already removed).

    LWS around ``;`` and ``=`` is allowed (RFC 3261 §7.3.1); names keep their case,
    values may be quoted strings (kept with their quotes). An empty name raises
    :class:`UriError` naming ``where``.
    """
    params: dict[str, str | None] = {}
    if not text.strip():
        raise UriError(f"empty parameter in {where}")
    for part in _split_outside_quotes(text, ";"):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not is_token(name):
            raise UriError(f"malformed parameter {part.strip()!r} in {where}")
        if eq:
            value = value.strip()
            if not value:
                raise UriError(f"parameter {name!r} has '=' but no value in {where}")
            if value.startswith('"'):
                end = _quoted_end(value, 0)
                if end != len(value):
                    raise UriError(f"unbalanced quotes in parameter {name!r} of {where}")
            elif any(c in " \t\"" for c in value):
                raise UriError(f"malformed value for parameter {name!r} in {where}")
            params[name] = value
        else:
            params[name] = None
    return params


def format_params(params: dict[str, str | None]) -> str:
    """Serialise parameters as ``;a=b;c`` (empty string for none)."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _quoted_end(text: str, start: int) -> int:
    """Index just after the quoted string starting at ``start``; -1 when unterminated."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return -1


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out, buf, i, n = [], [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = _quoted_end(text, i)
            if end < 0:
                raise UriError("unbalanced quotes")
            buf.append(text[i:end])
            i = end
            continue
        if c == sep:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    out.append("".join(buf))
    return out


def split_header_list(value: str) -> list[str]:
    """Split a comma-joined header value (Via, Route, Contact…) into its elements.

    Commas inside quoted strings and inside ``<...>`` do not split (RFC 3261 §7.3.1).
    Raises :class:`UriError` on an unterminated quoted string.
    """
    out, buf, i, n, depth = [], [], 0, len(value), 0
    while i < n:
        c = value[i]
        if c == '"':
            end = _quoted_end(value, i)
            if end < 0:
                raise UriError("unbalanced quotes")
            buf.append(value[i:end])
            i = end
            continue
        if c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        if c == "," and depth == 0:
            out.append("".join(buf).strip())
            buf = []
        else:
            buf.append(c)
        i += 1
    out.append("".join(buf).strip())
    return out


@dataclass
class Uri:
    """A parsed URI.

    ``scheme`` is lower-cased ("sip", "sips", "tel", or anything else for opaque URIs).
    For sip/sips: ``user`` (may be None), ``password``, ``host`` (str, IPv6 with
    brackets), ``port`` (int or None), ``params`` (ordered dict, values None for
    flags) and ``headers`` (the raw text after ``?``, or None). For tel: ``user`` is the
    number and ``params`` its parameters. Other schemes keep ``opaque``.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    opaque: str | None = None

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def alias(self) -> str:
        """The routing alias: the URI without scheme, parameters or headers (``user@host``)."""
        if self.scheme == "tel":
            return self.user or ""
        if not self.is_sip:
            return self.opaque or ""
        return f"{self.user}@{self.hostport}" if self.user is not None else self.hostport

    def copy(self, **changes) -> "Uri":
        d = dict(self.__dict__)
        d["params"] = dict(self.params)
        d.update(changes)
        return Uri(**d)

    def __str__(self) -> str:
        if self.is_sip:
            s = self.scheme + ":"
            if self.user is not None:
                s += self.user
                if self.password is not None:
                    s += ":" + self.password
                s += "@"
            s += self.hostport + format_params(self.params)
            if self.headers is not None:
                s += "?" + self.headers
            return s
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        return f"{self.scheme}:{self.opaque}"


def parse_uri(text: str) -> Uri:
    """Parse a URI string (no surrounding angle brackets or whitespace).

    Raises :class:`UriError` when the text is not a URI: bad scheme, whitespace or
    ``<>`` inside, empty or malformed host, bad port, empty parameter.
    """
    if not text or any(c in _FORBIDDEN for c in text):
        raise UriError(f"URI {text!r} contains whitespace, quotes or angle brackets")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme):
        raise UriError(f"URI {text!r} has no valid scheme")
    scheme = scheme.lower()
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise UriError(f"tel URI {text!r} has no number")
        return Uri(scheme="tel", user=number, params=parse_params(ptext, where=text) if ptext else {})
    if not rest:
        raise UriError(f"URI {text!r} is empty after the scheme")
    return Uri(scheme=scheme, opaque=rest)


def _parse_sip(scheme: str, rest: str, text: str) -> Uri:
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not userinfo:
            raise UriError(f"URI {text!r} has an empty user part")
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    headers = None
    q = rest.find("?")
    if q >= 0:
        rest, headers = rest[:q], rest[q + 1 :]
    hostport, semi, ptext = rest.partition(";")
    params = parse_params(ptext, where=text) if semi else {}
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise UriError(f"URI {text!r} has an unterminated IPv6 reference")
        host, portpart = hostport[: close + 1], hostport[close + 1 :]
        if portpart and not portpart.startswith(":"):
            raise UriError(f"URI {text!r} has junk after the IPv6 reference")
        port_s = portpart[1:] if portpart else None
    else:
        host, colon, port_s = hostport.partition(":")
        port_s = port_s if colon else None
    if not valid_host(host):
        raise UriError(f"URI {text!r} has an invalid host {host!r}")
    port = None
    if port_s is not None:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise UriError(f"URI {text!r} has an invalid port {port_s!r}")
        port = int(port_s)
    return Uri(scheme=scheme, user=user, password=password, host=host, port=port, params=params, headers=headers)


@dataclass
class NameAddr:
    """A From/To/Contact/Route/Record-Route value: ``display <uri>;params`` or ``uri;params``.

    ``display`` keeps its quotes when it was quoted; ``uri`` is the parsed :class:`Uri`;
    ``params`` are the header parameters (``tag``, ``expires``, ``lr`` belongs to the URI).
    ``star`` is True for the Contact value ``*``.
    """

    uri: Uri | None
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    star: bool = False

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.star:
            return "*"
        s = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        return s + format_params(self.params)


def parse_name_addr(value: str, *, allow_star: bool = False) -> NameAddr:
    """Parse a name-addr or addr-spec header value (RFC 3261 §20.10, §25.1).

    Raises :class:`UriError` for: unbalanced quotes, a display name that is not tokens
    or a quoted string, whitespace just inside ``<``/``>``, an addr-spec form URI that
    holds ``?`` or ``,`` (those require angle brackets), empty or malformed parameters.
    """
    v = value.strip()
    if allow_star and v == "*":
        return NameAddr(uri=None, star=True)
    display: str | None = None
    if v.startswith('"'):
        end = _quoted_end(v, 0)
        if end < 0:
            raise UriError("unbalanced quotes in display name")
        display = v[:end]
        v = v[end:].lstrip()
        if not v.startswith("<"):
            raise UriError("quoted display name not followed by <URI>")
    lt = v.find("<")
    if lt >= 0:
        if display is None:
            words = v[:lt].split()
            for w in words:
                if not is_token(w):
                    raise UriError(f"display name {v[:lt].strip()!r} must be tokens or a quoted string")
            display = " ".join(words) or None
        gt = v.find(">", lt)
        if gt < 0:
            raise UriError("missing '>' after URI")
        inner = v[lt + 1 : gt]
        if inner != inner.strip():
            raise UriError("whitespace inside <...> around the URI")
        uri = parse_uri(inner)
        after = v[gt + 1 :].strip()
        if after and not after.startswith(";"):
            raise UriError(f"unexpected text {after!r} after '>'")
        params = parse_params(after[1:], where="header parameters") if after else {}
        return NameAddr(uri=uri, display=display, params=params)
    uritext, semi, ptext = v.partition(";")
    uritext = uritext.strip()
    if "?" in uritext or "," in uritext:
        raise UriError("a URI with '?' or ',' must be enclosed in <...> (RFC 3261 §20)")
    uri = parse_uri(uritext)
    params = parse_params(ptext, where="header parameters") if semi else {}
    return NameAddr(uri=uri, params=params)


#: Largest message accepted, head plus body, in bytes. 65,535 is the largest UDP
#: payload (RFC 768) and what Kamailio and SIPp use as their buffer size; a stream
#: message larger than this closes the connection (framing can't be trusted).
MAX_MESSAGE_SIZE = 65535
#: Most header fields accepted in one message (h11 caps header count the same way).
MAX_HEADERS = 256
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
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT$"
)
_VIA_PROTO_RE = re.compile(r"^\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/]+)\s+(.*)$", re.S)
_WS_RE = re.compile(r"[ \t]+")


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name: compact forms expanded, known names
    in their RFC spelling (``cseq`` → ``CSeq``, ``v`` → ``Via``), others unchanged."""
    return _CANON.get(name.lower(), name)


class ParseError(ValueError):
    """A message is malformed.

    ``reason`` is a short operator-readable text, used as the 400 reason phrase.
    ``partial`` is the :class:`Request` parsed so far when a response can still be
    formed from it (start line and the Via/From/To/Call-ID/CSeq headers were read),
    else None. ``fatal_for_stream`` is True when a stream's framing is lost and the
    connection must be closed (RFC 4475 §3.3.3 mcl01).
    """

    def __init__(self, reason: str, partial: "Request | None" = None, fatal_for_stream: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.fatal_for_stream = fatal_for_stream


class Headers:
    """An ordered, case-insensitive multimap of header fields.

    Entries are ``[name, value]`` lists with the canonical name (see
    :func:`canonical_name`) and the value as text without surrounding whitespace.
    """

    __slots__ = ("_items",)

    def __init__(self, items: list[list[str]] | None = None):
        self._items: list[list[str]] = items if items is not None else []

    def __iter__(self):
        return ((n, v) for n, v in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> "Headers":
        return Headers([[n, v] for n, v in self._items])

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (any spelling, compact form accepted)."""
        key = canonical_name(name).lower()
        for n, v in self._items:
            if n.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """All values of ``name`` in order (list headers: one element per entry)."""
        key = canonical_name(name).lower()
        return [v for n, v in self._items if n.lower() == key]

    def count(self, name: str) -> int:
        return len(self.get_all(name))

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` entry by one entry ``value`` at the first one's place."""
        name = canonical_name(name)
        key = name.lower()
        for i, (n, _) in enumerate(self._items):
            if n.lower() == key:
                self._items[i] = [name, value]
                self._items[i + 1 :] = [e for e in self._items[i + 1 :] if e[0].lower() != key]
                return
        self._items.append([name, value])

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Add an entry: at the end, or before the first entry of the same name when
        ``first`` (how a proxy pushes Via and Record-Route, RFC 3261 §16.6)."""
        name = canonical_name(name)
        if first:
            key = name.lower()
            for i, (n, _) in enumerate(self._items):
                if n.lower() == key:
                    self._items.insert(i, [name, value])
                    return
            # Keep Via near the top of the header block for readability.
            self._items.insert(0 if key == "via" else len(self._items), [name, value])
            return
        self._items.append([name, value])

    def remove(self, name: str) -> int:
        """Remove every ``name`` entry; returns how many were removed."""
        key = canonical_name(name).lower()
        before = len(self._items)
        self._items = [e for e in self._items if e[0].lower() != key]
        return before - len(self._items)

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first ``name`` entry (None when absent)."""
        key = canonical_name(name).lower()
        for i, (n, v) in enumerate(self._items):
            if n.lower() == key:
                del self._items[i]
                return v
        return None

    def replace_first(self, name: str, value: str) -> None:
        """Replace the value of the first ``name`` entry (KeyError when absent)."""
        key = canonical_name(name).lower()
        for e in self._items:
            if e[0].lower() == key:
                e[1] = value
                return
        raise KeyError(name)

    def items(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self._items]


@dataclass
class Via:
    """One Via element (RFC 3261 §20.42): ``SIP/2.0/<transport> host[:port];params``.

    ``transport`` upper-case str; ``port`` int or None; ``params`` ordered, values
    None for flags (``rport`` without value).
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, value: str) -> "Via":
        """Parse one Via element; raises :class:`ParseError` when malformed."""
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
            if not port_s.isdigit() or not 0 < int(port_s) < 65536:
                raise ParseError(f"malformed Via port {port_s!r}")
            port = int(port_s)
        return cls(transport=transport.upper(), host=host, port=port, params=params)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


class Message:
    """Common part of :class:`Request` and :class:`Response`: ``headers`` and
    ``body`` (bytes), plus typed accessors for the headers every message carries."""

    headers: Headers
    body: bytes

    # -- typed views ---------------------------------------------------------
    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq."""
        num, _, method = (self.headers.get("CSeq") or "").strip().partition(" ")
        return int(num), method.strip()

    def top_via(self) -> Via:
        v = self.headers.get("Via")
        if v is None:
            raise ParseError("no Via header")
        return Via.parse(v)

    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self.headers.get("From") or "")

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self.headers.get("To") or "")

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise: start line, headers one per line with Content-Length set to
        the body's length, blank line, body."""
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
    """A SIP request: ``method`` (str, case-sensitive), ``uri`` (raw Request-URI text)."""

    def __init__(self, method: str, uri: str, headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0"):
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version

    @property
    def ruri(self) -> Uri:
        """The parsed Request-URI (raises UriError when malformed)."""
        return parse_uri(self.uri)

    @property
    def branch(self) -> str | None:
        return self.top_via().branch

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> "Request":
        return Request(self.method, self.uri, self.headers.copy(), self.body, self.version)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response: ``status`` (int 100–699) and ``reason`` (str, may be empty)."""

    def __init__(self, status: int, reason: str | None = None, headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0"):
        self.status = status
        self.reason = REASON_PHRASES.get(status, "") if reason is None else reason
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> "Response":
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


def _parse_start_line(line: str) -> Request | Response:
    if line.startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise ParseError("malformed status line")
        version, code = parts[0], parts[1]
        if version != "SIP/2.0":
            raise ParseError(f"unsupported version {version!r}")
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise ParseError(f"invalid status code {code[:20]!r}")
        return Response(int(code), parts[2] if len(parts) > 2 else "", version=version)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError("malformed request line (exactly one SP between method, Request-URI and version)")
    method, uri, version = parts
    if not is_token(method):
        raise ParseError(f"invalid method {method[:32]!r}")
    if version != "SIP/2.0":
        raise ParseError(f"unsupported version {version[:16]!r}")
    return Request(method, uri, version=version)


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _parse_headers(lines: list[str]) -> Headers:
    items: list[list[str]] = []
    for line in lines:
        if not line:
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not is_token(name):
            raise ParseError(f"malformed header line {line[:40]!r}")
        canon = canonical_name(name)
        value = _WS_RE.sub(" ", value.strip())
        if canon.lower() in LIST_HEADERS and value:
            try:
                elements = split_header_list(value)
            except UriError as exc:
                raise ParseError(f"{canon}: {exc}") from None
            for el in elements:
                items.append([canon, el])
        else:
            items.append([canon, value])
        if len(items) > MAX_HEADERS:
            raise ParseError("too many header fields")
    return Headers(items)


def _parse_uint(text: str, what: str, limit: int) -> int:
    t = text.strip()
    if not t.isdigit() or len(t) > 12 or int(t) > limit:
        raise ParseError(f"{what} {t[:24]!r} is not an integer in 0..{limit}")
    return int(t)


def _validate(msg: Request | Response) -> None:
    """Semantic checks of RFC 3261 §8.1.1, §20 and RFC 4475 §3.1.2 on a parsed message."""
    h = msg.headers
    for name in SINGLE_HEADERS:
        if h.count(name) > 1:
            raise ParseError(f"repeated {canonical_name(name)} header", fatal_for_stream=(name == "content-length"))
    missing = [n for n in ("Via", "From", "To", "Call-ID", "CSeq") if h.get(n) is None]
    if missing:
        raise ParseError("missing " + ", ".join(missing))
    for v in h.get_all("Via"):
        Via.parse(v)
    cseq = h.get("CSeq") or ""
    num, _, method = cseq.strip().partition(" ")
    _parse_uint(num, "CSeq number", _MAX_CSEQ)
    method = method.strip()
    if not is_token(method):
        raise ParseError(f"malformed CSeq {cseq!r}")
    if isinstance(msg, Request) and method != msg.method:
        raise ParseError(f"CSeq method {method!r} does not match request method {msg.method!r}")
    if not h.get("Call-ID", "").strip() or " " in h.get("Call-ID", "").strip():
        raise ParseError("malformed Call-ID")
    mf = h.get("Max-Forwards")
    if mf is not None:
        _parse_uint(mf, "Max-Forwards", 255)
    ex = h.get("Expires")
    if ex is not None:
        _parse_uint(ex, "Expires", _MAX_UINT32)
    ra = h.get("Retry-After")
    if ra is not None:
        _parse_uint(ra.split(";")[0].split("(")[0], "Retry-After", _MAX_UINT32)
    date = h.get("Date")
    if date is not None and not _DATE_RE.match(date):
        raise ParseError(f"malformed Date {date!r} (RFC 1123 date in GMT required)")
    try:
        for name in ("From", "To"):
            parse_name_addr(h.get(name) or "")
        for name in ("Route", "Record-Route"):
            for v in h.get_all(name):
                parse_name_addr(v)
        contacts = h.get_all("Contact")
        for v in contacts:
            parse_name_addr(v, allow_star=True)
    except UriError as exc:
        raise ParseError(str(exc)) from None
    for w in h.get_all("Warning"):
        code = w.strip().split(" ", 1)[0]
        if len(code) != 3 or not code.isdigit():
            raise ParseError(f"malformed Warning code {code[:16]!r}")
    if isinstance(msg, Request):
        try:
            uri = msg.ruri
        except UriError as exc:
            raise ParseError(f"malformed Request-URI: {exc}") from None
        if uri.headers is not None:
            raise ParseError("Request-URI must not contain headers (RFC 3261 §19.1.5)")


def _content_length(h: Headers) -> int | None:
    cl = h.get("Content-Length")
    if cl is None:
        return None
    return _parse_uint(cl, "Content-Length", MAX_MESSAGE_SIZE)


def parse_message(data: bytes) -> Request | Response:
    """Parse one SIP message from the bytes of a datagram (RFC 3261 §18.3).

    When Content-Length is present the body is cut to it and anything after is
    ignored; a Content-Length larger than the bytes present is an error.
    Raises :class:`ParseError` (with ``partial`` set when a 400 can be answered).
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise ParseError(f"message larger than {MAX_MESSAGE_SIZE} bytes")
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


def _parse_head(head: bytes) -> tuple[Request | Response, Request | None]:
    lines = _unfold(_decode(head))
    if not lines or not lines[0]:
        raise ParseError("empty message")
    msg = _parse_start_line(lines[0])
    try:
        msg.headers = _parse_headers(lines[1:])
    except ParseError:
        raise
    partial = None
    if isinstance(msg, Request) and all(msg.headers.get(n) for n in ("Via", "From", "To", "Call-ID", "CSeq")):
        partial = msg
    return msg, partial


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    ``feed(data)`` returns a list of events: :class:`Request`/:class:`Response`
    objects, :class:`ParseError` instances for messages that were framed but are
    malformed (the stream goes on), and the string ``"ping"`` for a CRLFCRLF
    keepalive (answer with ``b"\\r\\n"``, RFC 5626 §3.5.1) or ``"pong"`` for a lone CRLF.
    When framing is lost (no or repeated Content-Length, oversize message) the event
    is a ParseError with ``fatal_for_stream`` set and the framer stops: close the
    connection.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE):
        self._buf = bytearray()
        self.max_size = max_size
        self.broken = False

    def feed(self, data: bytes) -> list:
        if self.broken:
            return []
        self._buf += data
        out: list = []
        while self._buf:
            if self._buf.startswith(b"\r\n\r\n"):
                del self._buf[:4]
                out.append("ping")
                continue
            if self._buf.startswith(b"\r\n"):
                del self._buf[:2]
                out.append("pong")
                continue
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_size:
                    out.append(self._fatal("header block larger than the message-size limit"))
                break
            head = bytes(self._buf[:end])
            try:
                msg, partial = _parse_head(head)
                cls = [v for n, v in msg.headers if n == "Content-Length"]
                if len(cls) > 1:
                    raise ParseError("repeated Content-Length on a stream", partial, fatal_for_stream=True)
                cl = _content_length(msg.headers) if cls else 0
            except ParseError as exc:
                exc.fatal_for_stream = True
                out.append(self._fatal_exc(exc))
                break
            total = end + 4 + cl
            if total > self.max_size:
                out.append(self._fatal("message larger than the message-size limit"))
                break
            if len(self._buf) < total:
                break
            msg.body = bytes(self._buf[end + 4 : total])
            del self._buf[:total]
            try:
                _validate(msg)
                out.append(msg)
            except ParseError as exc:
                exc.partial = partial
                out.append(exc)
        return out

    def _fatal(self, reason: str) -> ParseError:
        return self._fatal_exc(ParseError(reason, fatal_for_stream=True))

    def _fatal_exc(self, exc: ParseError) -> ParseError:
        self.broken = True
        self._buf.clear()
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
