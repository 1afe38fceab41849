"""Building the requests a proxy sends (RFC 3261 §16.6, §9.1), pure.

* :func:`new_branch` — a Via branch carrying the §16.6 item 8 loop hash.
* :func:`branch_request` — the copy of a request for one branch: Request-URI, Max-Forwards
  − 1, Record-Route entries on top, our Via on top (§16.6 items 1–8).
* :func:`record_route_entry` — one Record-Route value of ours, with a flow token as user
  part when the side it faces is a connection (RFC 5626 §5.3 style).
* :func:`cancel_for` — the CANCEL of a forwarded INVITE (RFC 3261 §9.1).
"""

from __future__ import annotations

import itertools
import secrets

from ..sip.message import Request, Via
from .checks import loop_hash
from .request import BRANCH_PREFIX

__all__ = ["new_branch", "branch_request", "record_route_entry", "cancel_for", "via_value"]

_counter = itertools.count(1)
_salt = secrets.token_hex(2)


def new_branch(req: Request, hash_: str | None = None) -> str:
    """A fresh branch (str) for a request forwarded from ``req``: the magic cookie, our
    prefix, the loop hash of ``req`` (RFC 3261 §16.6 item 8; ``hash_`` when already
    computed) and a per-process unique suffix."""
    return f"{BRANCH_PREFIX}{hash_ or loop_hash(req)}.{next(_counter):x}{_salt}"


def via_value(transport: str, ip: str, port: int, branch: str, zone_token: str) -> Via:
    """Our Via for a request leaving by ``transport`` from ``ip``:``port``, with
    ``rport`` (RFC 3581) and the egress zone (``egress-zone=<token>``)."""
    host = f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
    return Via(transport.upper(), host, port, {"branch": branch, "rport": None, "egress-zone": zone_token})


def record_route_entry(host: str, port: int, transport: str, token: str | None) -> str:
    """One Record-Route value of ours (name-addr, str): ``<sip:[token@]host:port;
    transport=...;lr>``. ``token`` (a flow token) names the connection of the side the
    entry faces, so the node finds that flow again for in-dialog requests."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    user = f"{token}@" if token else ""
    return f"<sip:{user}{host}:{port};transport={transport};lr>"


def branch_request(req: Request, *, ruri: str | None, via: Via, record_route: tuple[str, ...] = (),
                   default_max_forwards: int = 70) -> Request:
    """The request sent on one branch (RFC 3261 §16.6): a copy of ``req`` with the
    Request-URI ``ruri`` (None: unchanged), Max-Forwards decremented (or
    ``default_max_forwards`` when absent), the ``record_route`` values pushed on top in
    the order given (first ends on top) and ``via`` pushed on top."""
    fwd = req.copy()
    if ruri is not None:
        fwd.uri = ruri
    mf = fwd.headers.get("Max-Forwards")
    fwd.headers.set("Max-Forwards", str(int(mf) - 1) if mf is not None else str(default_max_forwards))
    for rr in reversed(record_route):
        fwd.headers.add("Record-Route", rr, first=True)
    fwd.push_via(via)
    return fwd


def cancel_for(invite: Request) -> Request:
    """The CANCEL of a forwarded ``invite`` (RFC 3261 §9.1): same Request-URI, top Via
    (same branch), Max-Forwards, From, To, Call-ID and Route; CSeq number with method
    CANCEL; no body."""
    c = Request("CANCEL", invite.uri)
    h = c.headers
    h.add("Via", invite.headers.get("Via") or "")
    for n in ("Max-Forwards", "From", "To", "Call-ID"):
        v = invite.headers.get(n)
        if v is not None:
            h.add(n, v)
    h.add("CSeq", f"{invite.cseq[0]} CANCEL")
    for r in invite.headers.get_all("Route"):
        h.add("Route", r)
    return c
