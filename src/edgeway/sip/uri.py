"""SIP, SIPS and tel URIs and name-addr / addr-spec values (RFC 3261 §19.1, §25.1; RFC 3966).

Sans-IO: every function takes and returns ``str``; nothing here touches a socket.
Parsing keeps enough of the original text that ``str(parse_uri(s)) == s`` for any
URI this module accepts whose scheme is in lower case and whose port, if any, has no
leading zeros (repeated parameters included, see :class:`Params`), so a proxy forwards
what it received byte for byte unless it changes something on purpose.

Each parser first tries one compiled regex for the plain form (``sip:user@host:port;
params``, ``"Name" <sip:...>;tag=x``, ``;a=b;c``); only when that matches exactly does
it build the result itself, otherwise the careful character-level parser runs, which
alone decides unusual inputs and raises every error. Parsed name-addrs and host
validity are memoised in bounded tables (a hit returns a copy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._ascii import ascii_uint

__all__ = [
    "UriError",
    "Params",
    "Uri",
    "NameAddr",
    "parse_uri",
    "parse_name_addr",
    "parse_params",
    "format_params",
    "split_header_list",
    "unescape",
]


class UriError(ValueError):
    """A URI or name-addr is malformed; ``str(exc)`` says what rule it broke."""


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
#: The RFC 3261 §25.1 token characters, as a string for ``str.strip``.
_TOKEN_STR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9])?)*\.?$")
_IPV4_RE = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$")
_IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")
# Characters that may never appear unescaped inside a SIP URI (RFC 3261 §25.1).
_FORBIDDEN_RE = re.compile(r'[ \t\r\n<>"{}|\\^]')
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_LIST_SPECIALS_RE = re.compile(r"[<>,]")

# Fast paths. Each one recognises only a plain, common form whose result the
# careful parser below would give too, and declines (returns None) on anything
# else, so the careful parser still decides every unusual input and every error.
_TOK = r"[A-Za-z0-9\-.!%*_+`'~]+"
# Parameter values the fast paths take: printable ASCII without whitespace, quotes,
# ``;`` ``,`` ``=`` ``<`` ``>`` ``?`` ``@`` (the careful parser allows more; an ``@``
# or ``?`` in a URI parameter changes how the careful parser splits the URI).
_PVAL = r"[A-Za-z0-9\-.!%*_+`'~:\[\]/&$()]+"
_PARAMS = rf"(?:;{_TOK}(?:={_PVAL})?)*"
# A plain sip/sips URI: lower-case scheme, user without password, escapes are kept.
_SIP_FAST = (rf"(sips?):(?:([A-Za-z0-9\-.!~*'()&=+$%/_]+)@)?([A-Za-z0-9.\-_]+|\[[0-9A-Fa-f:.]+\])"
             rf"(?::([0-9]{{1,5}}))?({_PARAMS})")
_URI_FAST_RE = re.compile(_SIP_FAST)
# Parameters without the leading ``;`` (as parse_params takes them).
_PARAMS_FAST_RE = re.compile(rf"{_TOK}(?:={_PVAL})?{_PARAMS}")
_NAME_ADDR_FAST_RE = re.compile(
    rf'(?:("[^"\\]*") ?|({_TOK}(?: {_TOK})*) ?)?<{_SIP_FAST}>({_PARAMS})'
)
# addr-spec form: every parameter after the URI is a header parameter (RFC 3261 §20).
_ADDR_SPEC_FAST_RE = _URI_FAST_RE
#: Bound of the memo of :func:`valid_host` results (host texts repeat: peers,
#: our own addresses); when full it is cleared, so hostile input costs only speed.
_HOST_MEMO_MAX = 4096
_host_memo: dict[str, bool] = {}


def is_token(text: str) -> bool:
    """True when ``text`` is a non-empty RFC 3261 §25.1 token."""
    # strip() removes token characters from both ends: only an all-token text
    # becomes empty, any other character stops it (C speed, no per-character loop).
    return bool(text) and not text.strip(_TOKEN_STR)


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §19.1.4); invalid escapes are left as they are."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def valid_host(host: str) -> bool:
    """True for a hostname, an IPv4 address (each octet < 256) or a bracketed IPv6
    reference (RFC 3261 §25.1 ``host``). Results are memoised (bounded)."""
    ok = _host_memo.get(host)
    if ok is None:
        ok = _valid_host(host)
        if len(_host_memo) >= _HOST_MEMO_MAX:
            _host_memo.clear()
        _host_memo[host] = ok
    return ok


def _valid_host(host: str) -> bool:
    if _IPV4_RE.match(host):
        return all(int(p) < 256 for p in host.split("."))
    if host.startswith("["):
        return bool(_IPV6_RE.match(host))
    return bool(_HOSTNAME_RE.match(host))


class Params(dict):
    """Parameters in which a name repeats (``;a=1;a=2``): every ``(name, value)`` is
    kept, in order, and written back by :func:`format_params`; the dict view (lookup,
    ``in``, iteration, ``len``, ``items()``) holds each name once with its *first*
    value. The parsers return a plain dict when no name repeats, this otherwise.

    Editing through the dict API keeps both consistent: ``p[k] = v`` replaces every
    ``k`` by one ``(k, v)`` at the first one's place (appended when new); ``del``,
    ``pop`` and ``popitem`` remove every ``k``; ``copy()`` keeps the repeats.
    ``dict(p)`` and ``{**p}`` give the first values only. A Params equals another
    with the same pairs in the same order, and a plain dict only when no name repeats.
    """

    __slots__ = ("_pairs",)

    def __init__(self, pairs: "Iterable[tuple[str, str | None]]" = ()):
        super().__init__()
        self._pairs: list[tuple[str, str | None]] = list(pairs)
        for k, v in self._pairs:
            dict.setdefault(self, k, v)

    def all_items(self) -> list[tuple[str, str | None]]:
        """Every ``(name, value)`` in order, repeats included (a new list)."""
        return list(self._pairs)

    def get_all(self, name: str) -> list[str | None]:
        """Every value of ``name`` in order (empty when absent)."""
        return [v for k, v in self._pairs if k == name]

    def __setitem__(self, key: str, value: str | None) -> None:
        if key in self:
            i = next(j for j, (k, _) in enumerate(self._pairs) if k == key)
            self._pairs = [p for j, p in enumerate(self._pairs) if j == i or p[0] != key]
            self._pairs[i] = (key, value)
        else:
            self._pairs.append((key, value))
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self._pairs = [p for p in self._pairs if p[0] != key]

    _MISSING = object()

    def pop(self, key: str, default=_MISSING):  # type: ignore[override]
        if key in self:
            value = dict.__getitem__(self, key)
            del self[key]
            return value
        if default is Params._MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[str, str | None]:
        key, value = dict.popitem(self)
        self._pairs = [p for p in self._pairs if p[0] != key]
        return key, value

    def setdefault(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args, **kw) -> None:  # type: ignore[override]
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def __ior__(self, other):  # type: ignore[override]
        self.update(other)
        return self

    def clear(self) -> None:
        dict.clear(self)
        self._pairs = []

    def copy(self) -> "Params":  # type: ignore[override]
        return Params(self._pairs)

    def __reduce__(self):
        return (Params, (list(self._pairs),))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Params):
            return self._pairs == other._pairs
        if isinstance(other, dict):
            return len(self._pairs) == len(self) and dict.__eq__(self, other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Params({self._pairs!r})"


def _params_of(parts: list[str]) -> dict[str, str | None]:
    """``name[=value]`` texts as parameters: a plain dict, or :class:`Params` when a
    name repeats."""
    params: dict[str, str | None] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        params[name] = value if eq else None
    if len(params) != len(parts):
        return Params((n, v if eq else None) for n, eq, v in (p.partition("=") for p in parts))
    return params


def parse_params(text: str, *, where: str) -> dict[str, str | None]:
    """Parse ``;name[=value]`` parameters (the leading ``;`` already removed) into a
    dict of name → value (None for a flag), in order; a :class:`Params` when a name
    repeats (every value kept, lookups give the first).

    LWS around ``;`` and ``=`` is allowed (RFC 3261 §7.3.1); names keep their case,
    values may be quoted strings (kept with their quotes). An empty name raises
    :class:`UriError` naming ``where``.
    """
    if _PARAMS_FAST_RE.fullmatch(text):
        return _params_of(text.split(";"))
    return _parse_params_careful(text, where)


def _parse_params_careful(text: str, where: str) -> dict[str, str | None]:
    pairs: list[tuple[str, str | None]] = []
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
            elif " " in value or "\t" in value or '"' in value:
                raise UriError(f"malformed value for parameter {name!r} in {where}")
            pairs.append((name, value))
        else:
            pairs.append((name, None))
    params = dict(pairs)
    return params if len(params) == len(pairs) else Params(pairs)


def format_params(params: dict[str, str | None]) -> str:
    """Serialise parameters as ``;a=b;c`` (empty string for none); a :class:`Params`
    writes every pair, repeats included."""
    items = params._pairs if type(params) is Params else params.items()
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in items)


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
    """``text`` split at ``sep`` outside quoted strings; UriError on an unterminated one."""
    if '"' not in text:
        return text.split(sep)
    return _split_outside_quotes_careful(text, sep)


def _split_outside_quotes_careful(text: str, sep: str) -> list[str]:
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
    Elements are stripped of surrounding whitespace (an empty element stays, as
    ``""``). Raises :class:`UriError` on an unterminated quoted string.
    """
    if '"' not in value:
        if "," not in value:
            return [value.strip()]
        if "<" not in value:
            return [e.strip() for e in value.split(",")]
        return _split_list_unquoted(value)
    return _split_header_list_careful(value)


def _split_list_unquoted(value: str) -> list[str]:
    """:func:`split_header_list` for a value without quotes. When every piece
    between commas is either free of ``<`` or holds one ``<`` with a ``>`` after it
    (``<sip:a;lr>;p=1``), each piece ends at depth 0 (a ``>`` never takes the depth
    below 0), so every comma is outside brackets: split at all of them. Otherwise
    visit only the ``<``, ``>`` and ``,`` characters."""
    pieces = value.split(",")
    for p in pieces:
        lt = p.find("<")
        if lt >= 0 and (p.find(">", lt) < 0 or p.find("<", lt + 1) >= 0):
            break
    else:
        return [p.strip() for p in pieces]
    out: list[str] = []
    start = depth = 0
    for m in _LIST_SPECIALS_RE.finditer(value):
        c = m.group()
        if c == "<":
            depth += 1
        elif c == ">":
            if depth:
                depth -= 1
        elif not depth:
            i = m.start()
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return out


def _split_header_list_careful(value: str) -> list[str]:
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
    flags; a :class:`Params` keeping every value when a name repeats) and ``headers`` (the raw text after ``?``, or None). For tel: ``user`` is the
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
        d["params"] = self.params.copy()
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
    m = _URI_FAST_RE.fullmatch(text)
    if m is not None:
        uri = _uri_from_fast(m, 1)
        if uri is not None:
            return uri
    return _parse_uri_careful(text)


def _parse_uri_careful(text: str) -> Uri:
    if not text or _FORBIDDEN_RE.search(text):
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


def _fast_params(ptext: str) -> dict[str, str | None]:
    """Parameters matched by ``_PARAMS`` (``;a=b;c``, possibly empty) as parse_params
    gives them."""
    return _params_of(ptext[1:].split(";")) if ptext else {}


def _uri_from_fast(m: re.Match, g: int) -> Uri | None:
    """The Uri of a ``_SIP_FAST`` match whose groups start at ``g``; None when the
    host or port is out of range (the careful parser then says why)."""
    scheme, user, host, port_s, ptext = m.group(g, g + 1, g + 2, g + 3, g + 4)
    return _fast_uri(scheme, user, host, port_s, _fast_params(ptext) if ptext else {})


def _fast_uri(scheme: str, user: str | None, host: str, port_s: str | None, params: dict) -> Uri | None:
    """A Uri from fast-path pieces; None when the host or port is out of range."""
    if not valid_host(host):
        return None
    port = None
    if port_s is not None:
        port = int(port_s)
        if not 0 < port < 65536:
            return None
    return Uri(scheme, user, None, host, port, params)


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
        port = ascii_uint(port_s, 65535)
        if not port:
            raise UriError(f"URI {text!r} has an invalid port {port_s!r}")
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


#: Bound of the memo of parsed name-addr values (From/To/Contact/Route texts
#: repeat in every message of a dialog and across calls through the same
#: proxies); cleared when full, so hostile input costs only speed.
_NAME_ADDR_MEMO_MAX = 4096
_name_addr_memo: dict[str, NameAddr] = {}


def _clone_uri(u: Uri) -> Uri:
    return Uri(u.scheme, u.user, u.password, u.host, u.port, u.params.copy(), u.headers, u.opaque)


def _clone_name_addr(na: NameAddr) -> NameAddr:
    return NameAddr(_clone_uri(na.uri), na.display, na.params.copy(), na.star)  # type: ignore[arg-type]


def parse_name_addr(value: str, *, allow_star: bool = False) -> NameAddr:
    """Parse a name-addr or addr-spec header value (RFC 3261 §20.10, §25.1).

    Raises :class:`UriError` for: unbalanced quotes, a display name that is not tokens
    or a quoted string, whitespace just inside ``<``/``>``, an addr-spec form URI that
    holds ``?`` or ``,`` (those require angle brackets), empty or malformed parameters.

    Every call returns new objects (the caller may change them). Successful parses
    are memoised by text (bounded); a hit returns a copy of the remembered result.
    """
    memo = _name_addr_memo.get(value)
    if memo is not None:
        return _clone_name_addr(memo)
    na = _parse_name_addr(value, allow_star)
    if not na.star:  # "*" parses only when allowed: never remembered
        if len(_name_addr_memo) >= _NAME_ADDR_MEMO_MAX:
            _name_addr_memo.clear()
        _name_addr_memo[value] = _clone_name_addr(na)
    return na


def _check_name_addr(value: str, allow_star: bool = False) -> None:
    """Raise :class:`UriError` unless ``value`` parses with :func:`parse_name_addr`
    (cheaper when only validity matters: a remembered value costs a lookup)."""
    if value not in _name_addr_memo:
        parse_name_addr(value, allow_star=allow_star)


def _parse_name_addr(value: str, allow_star: bool) -> NameAddr:
    """parse_name_addr without the memo: the fast path, else the careful parser."""
    m = _NAME_ADDR_FAST_RE.fullmatch(value)
    if m is not None:
        uri = _uri_from_fast(m, 3)
        if uri is not None:
            ptext = m.group(8)
            return NameAddr(uri, m.group(1) or m.group(2), _fast_params(ptext) if ptext else {})
    else:
        m = _ADDR_SPEC_FAST_RE.fullmatch(value)
        if m is not None:
            ptext = m.group(5)
            uri = _uri_from_fast_bare(m)
            if uri is not None:
                return NameAddr(uri, None, _fast_params(ptext) if ptext else {})
    return _parse_name_addr_careful(value, allow_star)


def _uri_from_fast_bare(m: re.Match) -> Uri | None:
    """The Uri of an addr-spec ``_URI_FAST_RE`` match without its parameters (they
    are header parameters there)."""
    scheme, user, host, port_s = m.group(1, 2, 3, 4)
    return _fast_uri(scheme, user, host, port_s, {})


def _parse_name_addr_careful(value: str, allow_star: bool) -> NameAddr:
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
