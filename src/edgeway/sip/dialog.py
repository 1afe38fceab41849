"""Dialog helpers (RFC 3261 §12): route sets and requests built inside a dialog.

Pure functions over parsed messages. Used by the proxy core when it has to act as
the caller's user agent toward a callee (clearing a call whose caller was already
refused, issue 6 item 5) and by user agents.
"""

from __future__ import annotations

from .message import Headers, Request, Response

__all__ = ["uac_route_set", "build_in_dialog_request", "ack_for_2xx", "bye_after_2xx"]


def uac_route_set(record_routes: list[str]) -> list[str]:
    """The route set a UAC derives from the Record-Route values of a 2xx or 1xx
    (RFC 3261 §12.1.2): the values in reverse order (name-addr text, unchanged)."""
    return list(reversed(record_routes))


def build_in_dialog_request(method: str, *, ruri: str, route: list[str], from_value: str, to_value: str, call_id: str,
                            cseq: int, via: str, max_forwards: int = 70, contact: str | None = None) -> Request:
    """A request inside a dialog (RFC 3261 §12.2.1.1): Request-URI = the remote
    target (``ruri``, str), one Route per route-set entry (loose routing assumed), From
    with the local tag, To with the remote tag, the dialog's Call-ID, ``cseq`` (int),
    one ``via`` (the whole Via value, str), no body."""
    h = Headers()
    h.add("Via", via)
    for r in route:
        h.add("Route", r)
    h.add("Max-Forwards", str(max_forwards))
    h.add("From", from_value)
    h.add("To", to_value)
    h.add("Call-ID", call_id)
    h.add("CSeq", f"{cseq} {method}")
    if contact:
        h.add("Contact", contact)
    h.add("Content-Length", "0")
    return Request(method, ruri, h)


def _dialog_target(resp: Response) -> str | None:
    from .uri import UriError, parse_name_addr

    try:
        contacts = resp.headers.get_all("Contact")
        return str(parse_name_addr(contacts[0]).uri) if contacts else None
    except UriError:
        return None


def ack_for_2xx(invite: Request, resp: Response, *, via: str, route: list[str]) -> Request | None:
    """The ACK a UAC sends for a 2xx to ``invite`` (RFC 3261 §13.2.2.4): CSeq number of
    the INVITE, Request-URI = the 2xx's Contact, ``route`` (the route set toward the
    UAS, str name-addrs). None when the 2xx has no usable Contact."""
    target = _dialog_target(resp)
    if target is None:
        return None
    return build_in_dialog_request("ACK", ruri=target, route=route, from_value=invite.headers.get("From") or "",
                                   to_value=resp.headers.get("To") or "", call_id=invite.call_id,
                                   cseq=invite.cseq[0], via=via)


def bye_after_2xx(invite: Request, resp: Response, *, via: str, route: list[str]) -> Request | None:
    """The BYE ending the dialog a 2xx to ``invite`` created (RFC 3261 §15.1.1),
    CSeq one above the INVITE's. None when the 2xx has no usable Contact."""
    target = _dialog_target(resp)
    if target is None:
        return None
    return build_in_dialog_request("BYE", ruri=target, route=route, from_value=invite.headers.get("From") or "",
                                   to_value=resp.headers.get("To") or "", call_id=invite.call_id,
                                   cseq=invite.cseq[0] + 1, via=via)
