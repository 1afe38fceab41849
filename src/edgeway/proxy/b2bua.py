"""Signalling side of the edge's B2BUA (seed 003 §2.3, §7.3; issue 3 item 4).

Engaged for a call when the two zones' media encryption modes differ. The dialog keeps
its Call-ID, tags, Session-ID and unknown headers (``Locus``, ``X-TAATag``…); what
changes is the Contact, which becomes an address of ours carrying a token
(``sip:b2b-<token>@<our ip>:<port>``) so that in-dialog requests come back through us
and can be sent to the real Contact. With parameter preservation on for both zones the
Contact's parameters (``call-type=squared``) and the Request-URI's parameters are kept;
with it off anywhere they are dropped (seed 003 §7.3). Session timers (RFC 4028): the
B2BUA asks for ``Session-Expires: 1800;refresher=uac`` and ``Min-SE: 500`` when the
INVITE has none (the values the seed's edge sends).

Pure functions over messages; the proxy keeps the token table.
"""

from __future__ import annotations

import secrets

from ..sip.message import Request, Response
from ..sip.uri import NameAddr, UriError, format_params, parse_name_addr

__all__ = ["CONTACT_PREFIX", "SESSION_EXPIRES", "MIN_SE", "rewrite_contact", "single_contact", "contact_token", "strip_ruri_params",
           "add_session_timer"]

#: User part prefix of the Contacts the B2BUA writes.
CONTACT_PREFIX = "b2b-"
#: RFC 4028 values the seed's edge B2BUA sends (seed 003 §2.3): seconds.
SESSION_EXPIRES = "1800;refresher=uac"
MIN_SE = "500"
#: Request-URI parameters kept even without parameter preservation.
_ALWAYS_KEPT = ("transport", "user", "lr")


def single_contact(msg: Request | Response) -> NameAddr | None:
    """The Contact of ``msg`` when it has exactly one usable one (not ``*``, not
    malformed), else None."""
    values = msg.headers.get_all("Contact")
    if len(values) != 1:
        return None
    try:
        na = parse_name_addr(values[0])
    except UriError:
        return None
    return na if na.uri is not None else None


def rewrite_contact(msg: Request | Response, our_hostport: str, transport: str, *, preserve: bool,
                    token: str | None = None) -> tuple[str, str] | None:
    """Replace the (single) Contact of ``msg`` by one of ours.

    ``our_hostport``: "ip:port" (str) the other side reaches us at; ``transport``
    "udp"/"tcp"/"tls"; ``token``: the token to put in the user part (default: a fresh
    random one; a call keeps one per party). Returns ``(token, original contact URI as
    str)`` or None when there is no usable Contact (``*``, several, malformed: left
    alone)."""
    na = single_contact(msg)
    if na is None:
        return None
    token = token or secrets.token_hex(8)
    params = dict(na.params) if preserve else {}
    params.pop("expires", None)
    new = NameAddr(uri=None, display=na.display, params=params)
    uri = f"sip:{CONTACT_PREFIX}{token}@{our_hostport};transport={transport}"
    text = (f"{na.display} " if na.display else "") + f"<{uri}>" + format_params(new.params)
    msg.headers.set("Contact", text)
    return token, str(na.uri)


def contact_token(user: str | None) -> str | None:
    """The token of a Request-URI user part written by :func:`rewrite_contact`, or None."""
    if user and user.startswith(CONTACT_PREFIX):
        return user[len(CONTACT_PREFIX):]
    return None


def strip_ruri_params(req: Request) -> None:
    """Drop Request-URI parameters other than transport/user/lr (parameter
    preservation off: the B2BUA may rewrite them, seed 003 §5)."""
    uri = req.ruri
    kept = {k: v for k, v in uri.params.items() if k.lower() in _ALWAYS_KEPT}
    if kept != uri.params:
        req.uri = str(uri.copy(params=kept))


def add_session_timer(req: Request) -> None:
    """Ask for session timers (RFC 4028 §7.1) when the INVITE carries none."""
    if req.headers.get("Session-Expires") is None:
        req.headers.add("Session-Expires", SESSION_EXPIRES)
    if req.headers.get("Min-SE") is None:
        req.headers.add("Min-SE", MIN_SE)
