"""Response processing of a stateful proxy (RFC 3261 §16.7): the response context.

One :class:`ResponseContext` per proxied server transaction holds the request as
received (after §16.4 route processing), the flow and zone it came from, the targets
still to try, the branches (client transactions) started for it and the final
responses they returned. :func:`choose_best` picks the response sent upstream when no
branch succeeded (§16.7 step 6); :func:`upstream_response` rebuilds a downstream
response for the upstream side (§16.7 step 9: our Via removed, which here means the
upstream request's Via, From, To, Call-ID and CSeq restored).

Data and pure functions only; the proxy core drives them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..sip.message import Response
from ..sip.target import Flow, Hop
from ..sip.uri import UriError, parse_name_addr

__all__ = ["ResponseContext", "Branch", "choose_best", "upstream_response", "FAILOVER_STATUSES", "NEXT_CANDIDATE_STATUSES"]

#: Statuses after which the next target of the same candidate (DNS target, another
#: traversal connection) is tried (RFC 3263 §4.3: transport error, timeout or 503).
FAILOVER_STATUSES = frozenset({408, 503})
#: Statuses after which the next search-rule candidate (progress "continue") is tried.
NEXT_CANDIDATE_STATUSES = frozenset({404, 408, 480, 503, 604})


class Branch:
    """One client transaction of a response context (RFC 3261 §16.6).

    ``tx`` the client transaction, ``hop`` where it went, ``flow`` the flow it was sent
    on, ``request`` the request as forwarded; ``provisional`` once any 1xx arrived (a
    CANCEL may then be sent, §9.1); ``cancel_sent``; ``final`` the final response (or the
    one we synthesised: 408 on timeout, 503 on transport failure)."""

    __slots__ = ("ctx", "tx", "hop", "flow", "request", "provisional", "cancel_sent", "final", "failed_at", "timer_c")

    def __init__(self, ctx: "ResponseContext", hop: Hop, flow: Flow, request: Any):
        self.ctx = ctx
        self.tx: Any = None
        self.hop = hop
        self.flow = flow
        self.request = request
        self.provisional = False
        self.cancel_sent = False
        self.final: Response | None = None
        #: When the branch failed locally (time, s), for recognising a late 2xx.
        self.failed_at: float | None = None
        #: Timer C deadline (s) of an INVITE branch, None when not armed.
        self.timer_c: float | None = None

    @property
    def pending(self) -> bool:
        return self.final is None


class ResponseContext:
    """The state of one proxied server transaction (RFC 3261 §16.7).

    ``st`` the server transaction; ``req`` the request (after route processing);
    ``flow``/``ingress`` where it came from; ``call`` the call record for dialog-creating
    requests and in-dialog requests (None otherwise); ``candidates`` the search-rule
    targets still to try (deque of (Candidate, Request-URI)); ``hops`` the next hops of
    the current candidate still to try; ``branches``; ``finals`` the non-2xx finals
    collected; ``final_sent``/``answered_2xx``; ``cancelled`` once a CANCEL matched;
    ``stop`` when no further branch may start (a 2xx or 6xx arrived)."""

    __slots__ = ("st", "req", "flow", "ingress", "call", "candidates", "hops", "branches", "finals", "final_sent",
                 "answered_2xx", "cancelled", "stop", "waiting", "fwd_uri", "candidate", "search", "dialog", "to_side",
                 "from_side", "route_override", "hidden_rr_tail", "rr_ours", "initial", "attrs")

    def __init__(self, st: Any, req: Any, flow: Flow, ingress: str):
        self.st = st
        self.req = req
        self.flow = flow
        self.ingress = ingress
        self.call: Any = None
        self.candidates: deque = deque()
        self.hops: deque[Hop] = deque()
        self.branches: list[Branch] = []
        self.finals: list[Response] = []
        self.final_sent = False
        self.answered_2xx = False
        self.cancelled = False
        self.stop = False
        #: What the context waits for: None, "dns", "connect" or "media".
        self.waiting: str | None = None
        #: The Request-URI (str) of the current candidate; None keeps the request's.
        self.fwd_uri: str | None = None
        self.candidate: Any = None
        #: (alias after transforms, search log lines) of an initial request.
        self.search: tuple[str, list[str]] | None = None
        #: In-dialog requests: the dialog, and the side ("a"/"b") it goes to and comes from.
        self.dialog: Any = None
        self.to_side: str | None = None
        self.from_side: str | None = None
        #: In-dialog requests toward a side whose route set we keep: that route set.
        self.route_override: list[str] | None = None
        #: Record-Route entries kept back from the outside (topology hiding), to restore
        #: below ours in responses going back inside.
        self.hidden_rr_tail: list[str] = []
        #: Our Record-Route values in the forwarded request (str, as inserted).
        self.rr_ours: tuple[str, ...] = ()
        self.initial = False
        self.attrs: dict = {}

    @property
    def method(self) -> str:
        return self.req.method

    def pending_branches(self) -> list[Branch]:
        return [b for b in self.branches if b.final is None]


def _class(status: int) -> int:
    return status // 100


def choose_best(finals: list[Response]) -> Response | None:
    """The response to send upstream when every branch ended without a 2xx (RFC 3261
    §16.7 step 6): the first 6xx if any, else a response of the lowest class (the
    latest of that class: the most specific answer of the last target tried).
    None for an empty list."""
    if not finals:
        return None
    for r in finals:
        if r.status >= 600:
            return r
    lowest = min(_class(r.status) for r in finals)
    for r in reversed(finals):
        if _class(r.status) == lowest:
            return r
    return finals[-1]  # pragma: no cover


def _to_with_tag(req_to: str, resp_to: str | None) -> str:
    """The upstream To value: the request's, with the downstream response's tag when the
    request had none."""
    try:
        if parse_name_addr(req_to).tag is not None:
            return req_to
        tag = parse_name_addr(resp_to).tag if resp_to else None
    except UriError:
        return req_to
    return f"{req_to};tag={tag}" if tag else req_to


def upstream_response(resp: Response, req: Any) -> Response:
    """A copy of downstream response ``resp`` for the upstream side of request ``req``
    (RFC 3261 §16.7 step 9): the Via set, From, Call-ID and CSeq are the upstream
    request's and To is the request's with the response's tag. For a plain proxy this
    equals removing our top Via; where the node changed those headers downstream
    (topology hiding) it restores them."""
    up = resp.copy()
    h = up.headers
    rh = req.headers
    h.remove("Via")
    for v in reversed(rh.get_all("Via")):
        h.add("Via", v, first=True)
    h.set("From", rh.get("From") or "")
    h.set("To", _to_with_tag(rh.get("To") or "", resp.headers.get("To")))
    h.set("Call-ID", rh.get("Call-ID") or "")
    h.set("CSeq", rh.get("CSeq") or "")
    return up
