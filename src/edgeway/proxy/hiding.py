"""Topology hiding on the edge (issue 6 item 4; DESIGN.md §1), pure functions.

Toward the outside, nothing the edge sends may name an inside address, the traversal
port or the core. For messages of a call crossing between a traversal zone (inside)
and any other zone (outside) the proxy core applies these rewrites on the way out and
undoes them on the way in:

* Via — a request leaving toward the outside carries only the edge's own Via; the
  rest is restored from the server transaction (:func:`keep_top_via`).
* Record-Route — the outside sees only the edge's outside entry; the entries of the
  inside (the core's and the edge's traversal-side one) are kept in the call's state
  and put back in responses going inside (:func:`find_entries`).
* Contact — the inside party's Contact is replaced by one of the edge's (see
  :mod:`edgeway.proxy.b2bua`), and requests sent to it are routed by dialog state.
* Call-ID and From/To URIs naming an IP address — replaced by values naming the edge
  (:func:`needs_mask`, :func:`masked_call_id`, :func:`masked_uri`,
  :func:`swap_uri`).
* Warning — the warn-agent of warnings from inside becomes the edge's address
  (:func:`rewrite_warning_agents`).
"""

from __future__ import annotations

import re
import secrets

from ..sip.message import Message
from ..sip.target import is_ip_literal
from ..sip.uri import Uri, UriError, parse_name_addr

__all__ = ["keep_top_via", "find_entries", "needs_mask", "masked_call_id", "masked_uri", "swap_uri",
           "rewrite_warning_agents"]

_IPV4_IN_TEXT = re.compile(r"(?<![0-9])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9])")


def keep_top_via(msg: Message) -> None:
    """Remove every Via but the top one (ours) from ``msg``."""
    vias = msg.headers.get_all("Via")
    if len(vias) > 1:
        msg.headers.set("Via", vias[0])


def find_entries(values: list[str], ours: tuple[str, ...]) -> int | None:
    """Index in the Record-Route ``values`` (name-addr str, top first) where our
    consecutive entries ``ours`` (as we inserted them, top first) start, or None when
    the far end did not echo them."""
    if not ours:
        return None
    first = ours[0]
    n = len(ours)
    for i, v in enumerate(values):
        if v == first and tuple(values[i:i + n]) == ours:
            return i
    return None


def needs_mask(text: str, own: frozenset[str]) -> bool:
    """True when ``text`` (a Call-ID or URI host) contains an IPv4 address or an IPv6
    reference other than the node's own addresses ``own``."""
    if "[" in text or text.count(":") >= 2:
        return True
    return any(m.group(0) not in own for m in _IPV4_IN_TEXT.finditer(text))


def masked_call_id(host: str) -> str:
    """A fresh Call-ID naming only ``host`` (the edge's outside address)."""
    return f"{secrets.token_hex(10)}@{host}"


def masked_uri(uri: Uri, host: str) -> Uri | None:
    """``uri`` with its host replaced by ``host`` and no port when the host is an IP
    literal (a name is left: a domain is not topology); None when nothing changes."""
    if not uri.is_sip or not is_ip_literal(uri.host):
        return None
    return uri.copy(host=host, port=None)


def swap_uri(msg: Message, name: str, old: str, new: str) -> bool:
    """In header ``name`` (From or To) of ``msg``, replace the URI ``old`` (str) by
    ``new`` keeping display name and parameters (the tag). True when changed."""
    value = msg.headers.get(name)
    if value is None or old not in value:
        return False
    try:
        na = parse_name_addr(value)
    except UriError:
        return False
    if na.uri is None or str(na.uri) != old:
        return False
    start = value.find(old)
    msg.headers.set(name, value[:start] + new + value[start + len(old):])
    return True


def rewrite_warning_agents(msg: Message, host: str) -> None:
    """Set the warn-agent of every Warning of ``msg`` (RFC 3261 §20.43) to ``host``."""
    values = msg.headers.get_all("Warning")
    if not values:
        return
    out = []
    for v in values:
        code, _, rest = v.partition(" ")
        _agent, _, text = rest.partition(" ")
        out.append(f"{code} {host} {text}" if text else v)
    msg.headers.remove("Warning")
    for v in out:
        msg.headers.add("Warning", v)
