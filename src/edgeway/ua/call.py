"""Calls and dialogs of the user agent: what a call reports, and dialog state
(RFC 3261 §12) with the in-dialog requests built from it.

Sans-IO: dataclasses and pure functions. :func:`in_dialog_request` applies the route
set (loose or strict routing, RFC 3261 §12.2.1.1) on top of
:func:`edgeway.sip.dialog.build_in_dialog_request`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from ..sip.dialog import build_in_dialog_request
from ..sip.message import MAGIC_COOKIE, Request, Response
from ..sip.uri import UriError, parse_name_addr

__all__ = ["MediaCounters", "CallResult", "CallStats", "Dialog", "in_dialog_request", "uac_dialog", "uas_dialog",
           "new_branch", "new_tag", "hostport", "clean_reason"]


def hostport(host: str, port: int) -> str:
    """``host:port``, IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def new_branch() -> str:
    """A fresh RFC 3261 branch (magic cookie + 64 random bits, §8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag (40 random bits, RFC 3261 §19.3)."""
    return secrets.token_hex(5)


def clean_reason(text: str) -> str:
    """``text`` fit for a reason phrase: one line, at most 120 characters."""
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())[:120]


@dataclass(kw_only=True)
class MediaCounters:
    """Media and transport facts of one call, common to :class:`CallResult` and
    :class:`CallStats`.

    Packet counters are RTP/RTCP datagrams (with SRTP: the ones that decrypted).
    ``srtp`` is True when the call's media was SRTP (SDES-keyed; ``srtp_suite`` names
    the suite); ``srtp_auth_failures`` counts received packets dropped because their
    authentication tag did not verify, ``srtp_errors`` other unprotect failures
    (replays, malformed packets). ``transport`` is the INVITE's transport;
    ``tls_peer_names`` the names (CN, DNS SANs) in the certificate the TLS peer of the
    INVITE's connection presented. ``rtp_peer_received`` is how many of our RTP
    packets the far end said it received (its last RTCP report block about our SSRC),
    None when no report came.
    """

    rtp_sent: int = 0
    rtp_received: int = 0
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtp_lost: int = 0
    rtp_peer_received: int | None = None
    local_rtp: tuple[str, int] | None = None
    remote_rtp: tuple[str, int] | None = None
    rtp_source: tuple[str, int] | None = None
    srtp: bool = False
    srtp_suite: str | None = None
    srtp_auth_failures: int = 0
    srtp_errors: int = 0
    transport: str = ""
    tls_peer_names: list[str] = field(default_factory=list)


@dataclass
class CallResult(MediaCounters):
    """What :meth:`~edgeway.ua.agent.UserAgent.call` reports about one outgoing call.

    ``ok`` is True when the INVITE got a 2xx, media could be set up and the BYE was
    answered with a 2xx (or the far end hung up first). ``status``/``reason`` are the
    INVITE's final response (0 when no response at all was received; 408 after a
    timeout, 503 after a transport error). ``ladder`` has one line per SIP message
    sent or received for this call: ``"<offset> ms <→|←> <peer> (<transport>) <first
    line>"``, responses followed by their CSeq method in parentheses. ``setup_ms`` is
    INVITE sent → 2xx received. ``error`` is a human-readable explanation when ``ok``
    is False. Media fields: :class:`MediaCounters`.
    """

    call_id: str
    ok: bool = False
    status: int = 0
    reason: str = ""
    ladder: list[str] = field(default_factory=list)
    setup_ms: float | None = None
    error: str | None = None
    bye_status: int | None = None
    duration_ms: float = 0.0


@dataclass
class CallStats(MediaCounters):
    """Per-call record kept by the answering side (``ua.calls_received`` /
    ``ua.calls_answered``) so the lab report can print packets per leg.

    Packet counters are final once ``ended`` is True (they are refreshed when the
    call ends and by :meth:`~edgeway.ua.agent.UserAgent.refresh_stats`). ``sip_local``
    is our end of the flow the INVITE came on (with ``peer`` the far end): a registered
    client checks with it that the INVITE came down its registration's connection.
    Media fields: :class:`MediaCounters`.
    """

    call_id: str
    from_uri: str = ""
    to_uri: str = ""
    peer: str = ""
    sip_local: tuple[str, int] | None = None
    status: int | None = None
    answered: bool = False
    ended: bool = False
    end_reason: str = ""
    ladder: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Dialog:
    """Dialog state (RFC 3261 §12.1): ``role`` "uac"/"uas"; ``local_hdr``/``remote_hdr``
    the From/To values of requests this side sends (with tags); ``local_seq`` the last
    CSeq number sent; ``remote_target`` the peer's Contact URI (str); ``route_set``
    Route values (str name-addrs) in sending order; ``transport`` and ``flow`` (a
    :class:`~edgeway.sip.target.Flow`) where the dialog was set up. The rest is the
    agent's: call stats, media, events."""

    role: str
    call_id: str
    local_tag: str
    remote_tag: str
    local_hdr: str
    remote_hdr: str
    local_seq: int
    remote_target: str
    route_set: list[str]
    transport: str
    flow: Any
    contact_user: str
    invite_cseq: int = 0
    stats: CallStats | None = None
    media: Any = None
    acks: dict[int, Any] = field(default_factory=dict)
    ended: Any = None
    end_reason: str = ""
    offer_sent_in_2xx: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        """The dialog ID (Call-ID, local tag, remote tag), RFC 3261 §12."""
        return (self.call_id, self.local_tag, self.remote_tag)


def _contact_uri(msg: Request | Response, default: str) -> str:
    contact = msg.headers.get("Contact")
    try:
        return str(parse_name_addr(contact).uri) if contact else default
    except UriError:
        return default


def uac_dialog(invite: Request, resp: Response, flow: Any, contact_user: str) -> Dialog:
    """The dialog a 2xx (``resp``) to our ``invite`` creates (RFC 3261 §12.1.2):
    route set = Record-Route reversed, remote target = the 2xx's Contact."""
    return Dialog(role="uac", call_id=invite.call_id, local_tag=invite.from_tag or "", remote_tag=resp.to_tag or "",
                  local_hdr=invite.headers.get("From") or "", remote_hdr=resp.headers.get("To") or "",
                  local_seq=invite.cseq[0], remote_target=_contact_uri(resp, invite.uri),
                  route_set=list(reversed(resp.headers.get_all("Record-Route"))), transport=flow.transport, flow=flow,
                  contact_user=contact_user, invite_cseq=invite.cseq[0])


def uas_dialog(invite: Request, to_tag: str, flow: Any, contact_user: str, local_seq: int) -> Dialog:
    """The dialog our 2xx to ``invite`` creates (RFC 3261 §12.1.1): route set =
    Record-Route in order, remote target = the INVITE's Contact."""
    return Dialog(role="uas", call_id=invite.call_id, local_tag=to_tag, remote_tag=invite.from_tag or "",
                  local_hdr=f"{invite.headers.get('To')};tag={to_tag}", remote_hdr=invite.headers.get("From") or "",
                  local_seq=local_seq, remote_target=_contact_uri(invite, ""),
                  route_set=invite.headers.get_all("Record-Route"), transport=flow.transport, flow=flow,
                  contact_user=contact_user, invite_cseq=invite.cseq[0])


def in_dialog_request(d: Dialog, method: str, cseq: int, via: str) -> tuple[Request, str]:
    """A request inside dialog ``d`` and the URI (str) of its next hop (RFC 3261
    §12.2.1.1): with a loose router first in the route set the Request-URI is the
    remote target; a strict router goes into the Request-URI and the remote target
    to the end of the Route set. Raises UriError on a malformed first Route."""
    routes = list(d.route_set)
    ruri = next_hop = d.remote_target
    if routes:
        first = parse_name_addr(routes[0]).uri
        if first is None:
            raise UriError(f"bad Route {routes[0]!r}")
        next_hop = str(first)
        if "lr" not in first.params:  # strict router; strip what a Request-URI may not carry (§19.1.1)
            ruri = str(first.copy(params={k: v for k, v in first.params.items() if k != "method"}, headers=None))
            routes = routes[1:] + [f"<{d.remote_target}>"]
    req = build_in_dialog_request(method, ruri=ruri, route=routes, from_value=d.local_hdr, to_value=d.remote_hdr,
                                  call_id=d.call_id, cseq=cseq, via=via)
    return req, next_hop
