"""Strict normalisation of http/https URLs for the HTTP allow list (no other edgeway imports but ``_ascii``).

Lives below every layer so that :mod:`edgeway.config` can validate allow-rule URLs with the
same grammar :mod:`edgeway.mra.allowlist` matches with (``mra`` imports ``config``, never the
reverse). The public names are re-exported from :mod:`edgeway.mra`.

The rule of this module: a URL either normalises to **one** canonical string, or it is
refused with :class:`TargetError` (the caller answers 400 and forwards nothing). The
canonical form is ``scheme://host:port/path[?query]`` with

* ``scheme`` lower-case, ``http`` or ``https`` only (RFC 3986 §6.2.2.1);
* ``host`` a lower-case DNS name, a strict dotted-quad IPv4 address, or a bracketed IPv6
  address in :mod:`ipaddress`'s compressed form (RFC 3986 §3.2.2, §6.2.2.1);
* ``port`` always explicit, 1–65535, default 80/443 by scheme (RFC 3986 §6.2.3);
* ``path`` starting with ``/``: percent-encoded unreserved characters decoded, every other
  escape kept with upper-case hex (RFC 3986 §6.2.2.1–§6.2.2.2), repeated slashes collapsed,
  dot segments removed (RFC 3986 §5.2.4);
* ``query`` kept as sent (validated only: ASCII, no controls, well-formed escapes). It does
  not take part in matching (seed 002 §8.6: rules limit scope by scheme, host, port, path).

Refused (each would let a server behind the proxy see a different resource than the one
matched, or has more than one reading): non-ASCII or control characters, spaces, raw
backslashes, a fragment, user-info (``https://allowed@evil/``), ``%`` not followed by two
hex digits, encoded ``/`` ``\\`` ``;`` ``%`` (double encoding) and controls/NUL, encoded bytes
that are not valid UTF-8 (overlong forms such as ``%C0%AE``, surrogates), a ``;`` path
parameter on an empty or dot segment (``/a/..;/b``, which Tomcat resolves as ``..``),
numeric host forms other than a strict dotted quad (``127.1``, ``0x7f.0.0.1``,
``2130706433``, leading zeros), IPv6 zone identifiers, a trailing dot in a host name,
ports with leading zeros, non-ASCII digits, an empty port, 0 or above 65535.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from edgeway._ascii import ascii_uint

__all__ = ["TargetError", "NormalisedUrl", "normalise_url", "DEFAULT_PORTS", "remove_dot_segments"]

#: Default port per scheme (RFC 9110 §4.2.1–§4.2.2; seed 002 §8.6 "80 (http) and 443 (https)").
DEFAULT_PORTS = {"http": 80, "https": 443}

#: Longest URL accepted (characters). Far above any MRA client request; bounds the work per request.
MAX_URL_LENGTH = 8192

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Characters allowed raw in a path (RFC 3986 §3.3 pchar = unreserved / pct-encoded / sub-delims / ":" / "@", plus "/").
_PATH_RAW = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
#: Characters allowed raw in a query (RFC 3986 §3.4: pchar / "/" / "?").
_QUERY_RAW = _PATH_RAW | frozenset("?")
_HEX = frozenset("0123456789abcdefABCDEF")
#: Bytes whose escapes are refused: "/" "\" ";" "%" and every control (C0, DEL).
_REFUSED_ESCAPES = frozenset(b"/\\;%") | frozenset(range(0x20)) | {0x7F}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class TargetError(ValueError):
    """A URL or MRA path that cannot be normalised unambiguously; the caller answers 400
    and forwards nothing. ``reason`` is a short English sentence naming what was wrong."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class NormalisedUrl:
    """A normalised http/https URL. ``host`` is lower-case (IPv6 without brackets),
    ``port`` explicit, ``path`` starts with ``/``, ``query`` is ``""`` when absent
    (the ``?`` is not kept for an empty query)."""

    scheme: str
    host: str
    port: int
    path: str
    query: str = ""

    @property
    def authority(self) -> str:
        """``host:port`` with an IPv6 host in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def base(self) -> str:
        """``scheme://host:port/path`` (no query): the string allow rules match against."""
        return f"{self.scheme}://{self.authority}{self.path}"

    @property
    def url(self) -> str:
        """The canonical URL, query included: the only thing a proxy may forward."""
        return f"{self.base}?{self.query}" if self.query else self.base


#: URLs up to this many characters have their normalised form memoised (clients repeat
#: the same few targets; the bound keeps what hostile input can pin small).
_MEMO_MAX_LEN = 512


def normalise_url(url: str, *, allow_port_zero: bool = False) -> NormalisedUrl:
    """Normalise an absolute ``http``/``https`` URL (module docstring lists every step).

    ``allow_port_zero``: accept ``:0`` (seed 002 §8.7 lets a *rule* name port 0–65535;
    no request can use port 0, so such a rule never matches). Raises :class:`TargetError`.
    Pure: results for short URLs are memoised (4,096 entries, least recently used out).
    """
    if isinstance(url, str) and len(url) <= _MEMO_MAX_LEN:
        return _normalise_memo(url, allow_port_zero)
    return _normalise(url, allow_port_zero)


@functools.lru_cache(maxsize=4096)
def _normalise_memo(url: str, allow_port_zero: bool) -> NormalisedUrl:
    return _normalise(url, allow_port_zero)


def _normalise(url: str, allow_port_zero: bool) -> NormalisedUrl:
    if not isinstance(url, str):
        raise TargetError("URL must be text")
    if len(url) > MAX_URL_LENGTH:
        raise TargetError(f"URL longer than {MAX_URL_LENGTH} characters")
    if not url.isascii():
        raise TargetError("URL contains non-ASCII characters (they must be percent-encoded)")
    for ch in url:
        if ord(ch) < 0x21 or ord(ch) == 0x7F:
            raise TargetError("URL contains a control character or space")
    if "\\" in url:
        raise TargetError("URL contains a backslash")
    if "#" in url:
        raise TargetError("URL contains a fragment ('#')")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise TargetError("URL must be absolute: scheme://host[:port][/path]")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise TargetError(f"scheme {scheme!r} is not http or https")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:cut], rest[cut:]
    path, _, query = rest.partition("?")
    host, port = _authority(authority, scheme, allow_port_zero)
    return NormalisedUrl(scheme, host, port, _path(path), _query(query))


def _authority(authority: str, scheme: str, allow_port_zero: bool) -> tuple[str, int]:
    if "@" in authority:
        raise TargetError("URL contains user-info ('@' before the host)")
    if "%" in authority:
        raise TargetError("host contains a percent sign (escapes and IPv6 zone identifiers are refused)")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise TargetError("IPv6 literal without ']'")
        host, port_text = _ipv6(authority[1:end]), authority[end + 1:]
        if port_text and not port_text.startswith(":"):
            raise TargetError("junk after the IPv6 literal")
        has_port = bool(port_text)
        port_text = port_text[1:]
    else:
        host, has_port, port_text = authority.partition(":")
        has_port = bool(has_port)
        if ":" in port_text:
            raise TargetError("host contains ':' (an IPv6 address must be in brackets)")
        host = _host(host)
    if not has_port:
        return host, DEFAULT_PORTS[scheme]
    return host, _port(port_text, allow_port_zero)


def _port(text: str, allow_zero: bool) -> int:
    if not text:
        raise TargetError("empty port after ':'")
    if len(text) > 1 and text.startswith("0"):
        raise TargetError(f"port {text!r} has leading zeros")
    number = ascii_uint(text, 65535)
    if number is None:
        raise TargetError(f"port {text!r} is not a number between 0 and 65535 in ASCII digits")
    if number == 0 and not allow_zero:
        raise TargetError("port 0 cannot be connected to")
    return number


def _ipv6(text: str) -> str:
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise TargetError(f"{text!r} is not an IPv6 address") from None


def _host(text: str) -> str:
    """A lower-case DNS name or a strict dotted-quad IPv4 address (RFC 3986 §3.2.2; RFC 1123 §2.1)."""
    host = text.lower()
    if not host:
        raise TargetError("empty host")
    if len(host) > 253:
        raise TargetError("host name longer than 253 characters")
    last = host.rsplit(".", 1)[-1]
    if last.isdigit() or last.startswith("0x") or host.replace(".", "").isdigit():
        # Numeric forms that inet_aton() would read differently (127.1, 0x7f.1, 2130706433, 010.0.0.1).
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise TargetError(f"host {text!r} is neither a DNS name nor a dotted-quad IPv4 address") from None
    if host.endswith("."):
        raise TargetError(f"host {text!r} ends with a dot")
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            raise TargetError(f"host {text!r} is not a DNS name (label {label!r})")
    return host


def _decode(text: str, allowed_raw: frozenset[str], where: str) -> str:
    """Percent-escape pass (RFC 3986 §2.1, §6.2.2.1–§6.2.2.2): unreserved escapes decoded,
    other escapes kept with upper-case hex; escaped bytes ≥ 0x80 must be valid UTF-8."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "%":
            if ch not in allowed_raw:
                raise TargetError(f"{where} contains {ch!r}, which must be percent-encoded")
            out.append(ch)
            i += 1
            continue
        # A run of escapes: decoded together so multi-byte UTF-8 sequences can be checked.
        run = bytearray()
        while i < n and text[i] == "%":
            hx = text[i + 1:i + 3]
            if len(hx) != 2 or not set(hx) <= _HEX:
                raise TargetError(f"{where} has an invalid percent escape {text[i:i + 3]!r}")
            run.append(int(hx, 16))
            i += 3
        for b in run:
            if b in _REFUSED_ESCAPES:
                raise TargetError(f"{where} contains an encoded {chr(b)!r} (%{b:02X}), which is ambiguous")
        try:
            bytes(run).decode("utf-8", "strict")
        except UnicodeDecodeError:
            raise TargetError(f"{where} has percent-encoded bytes that are not valid UTF-8 (e.g. overlong)") from None
        for b in run:
            c = chr(b)
            out.append(c if b < 0x80 and c in _UNRESERVED else f"%{b:02X}")
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path (segments ``.`` and ``..``; ``..`` never climbs
    above the root). Repeated slashes must already be collapsed."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _path(path: str) -> str:
    decoded = _decode(path, _PATH_RAW, "path")
    decoded = re.sub(r"/{2,}", "/", decoded) if decoded else "/"
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    for seg in decoded.split("/"):
        if ";" in seg and seg.split(";", 1)[0] in ("", ".", ".."):
            raise TargetError(f"path segment {seg!r} has ';' parameters on an empty or dot segment")
    return remove_dot_segments(decoded)


def _query(query: str) -> str:
    if not query:
        return ""
    # Validate only: the query is forwarded as sent (a server decodes it, and '/' or ';' mean nothing there).
    i = 0
    while (i := query.find("%", i)) >= 0:
        hx = query[i + 1:i + 3]
        if len(hx) != 2 or not set(hx) <= _HEX:
            raise TargetError(f"query has an invalid percent escape {query[i:i + 3]!r}")
        if int(hx, 16) < 0x20 or int(hx, 16) == 0x7F:
            raise TargetError("query contains an encoded control character")
        i += 3
    bad = set(query) - _QUERY_RAW
    if bad:
        raise TargetError(f"query contains {sorted(bad)[0]!r}, which must be percent-encoded")
    return query
