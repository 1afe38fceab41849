"""Request and response checks a proxy makes before forwarding (RFC 3261 §16.3, §18.2.2).

Pure functions: a parsed message in, a verdict out. The proxy turns a verdict into
a response; nothing here builds sockets or reads clocks.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass

from ..sip.message import Request, Response, Via
from ..sip.uri import UriError

__all__ = ["Rejection", "check_request", "loop_hash", "response_next_hop_forbidden", "SUPPORTED_SCHEMES"]

#: URI schemes this proxy routes (RFC 3261 §16.3 item 2: others get 416).
SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})


@dataclass(frozen=True)
class Rejection:
    """Why a request is refused: ``status`` (int), ``reason`` (phrase, str) and extra
    headers to put in the response (list of (name, value))."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def check_request(req: Request, *, supported: frozenset[str] = frozenset(), answer_options_mf0: bool = True) -> Rejection | None:
    """The request validation of RFC 3261 §16.3, in its order.

    Returns a :class:`Rejection` or None when the request may be routed:
    unsupported Request-URI scheme → 416; Max-Forwards 0 → 483 (RFC 3261 §16.3
    item 3; OPTIONS with Max-Forwards 0 is left to the caller, which answers it
    as a UAS when ``answer_options_mf0``); unknown Proxy-Require option → 420 with
    ``Unsupported`` listing it (item 6).
    """
    try:
        uri = req.ruri
    except UriError as exc:
        return Rejection(400, f"Bad Request-URI ({exc})")
    if uri.scheme not in SUPPORTED_SCHEMES:
        return Rejection(416, "Unsupported URI Scheme")
    mf = req.headers.get("Max-Forwards")
    if mf is not None and int(mf) == 0 and req.method != "ACK":
        if not (answer_options_mf0 and req.method == "OPTIONS"):
            return Rejection(483, "Too Many Hops")
    unknown = []
    for value in req.headers.get_all("Proxy-Require"):
        for opt in value.split(","):
            opt = opt.strip()
            if opt and opt.lower() not in supported:
                unknown.append(opt)
    if unknown:
        return Rejection(420, "Bad Extension", (("Unsupported", ", ".join(unknown)),))
    return None


def loop_hash(req: Request) -> str:
    """A hash of the fields that change when a request loops back changed (RFC 3261
    §16.6 item 8, §16.3 item 4): Request-URI, From tag, To tag, Call-ID, CSeq number,
    Proxy-Require and Proxy-Authorization. Hex str, 16 characters."""
    h = req.headers
    text = "\0".join((
        req.uri,
        req.from_tag or "",
        req.to_tag or "",
        req.call_id,
        str(req.cseq[0]),
        ",".join(h.get_all("Proxy-Require")),
        ",".join(h.get_all("Proxy-Authorization")),
    ))
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _is_broadcast_or_unspecified(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if ip.version == 4:
        return ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255") or ip.is_multicast
    return ip.is_unspecified or ip.is_multicast


def response_next_hop_forbidden(via: Via) -> bool:
    """True when a response must not be sent to this Via's address (RFC 4475 §3.3.13
    bcast: never send to a broadcast, multicast or unspecified sent-by; drop it)."""
    host = via.params.get("received") or via.host
    return _is_broadcast_or_unspecified(host)


def response_is_for_us(resp: Response, our_branch_prefix: str) -> bool:
    """True when the top Via of ``resp`` carries one of our branches."""
    try:
        b = resp.top_via().branch or ""
    except Exception:  # noqa: BLE001
        return False
    return b.startswith(our_branch_prefix)
