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

__all__ = ["ResponseContext", "Branch", "Lane", "group_by_priority", "choose_best", "upstream_response", "FAILOVER_STATUSES", "NEXT_CANDIDATE_STATUSES"]

#: Statuses after which the next target of the same candidate (DNS target, another
#: traversal connection) is tried (RFC 3263 §4.3: transport error, timeout or 503).
FAILOVER_STATUSES = frozenset({408, 503})
#: Statuses after which the next search-rule candidate (progress "continue") is tried.
NEXT_CANDIDATE_STATUSES = frozenset({404, 408, 480, 503, 604})


class Lane:
    """One target being tried for a response context: a search-rule candidate (or the
    dialog's party) with its next hops still to try, one at a time (DNS fail-over,
    another traversal connection). Candidates of equal search-rule priority run in
    parallel lanes.

    ``cand`` the :class:`~edgeway.routing.search.Candidate` (None in dialog); ``ruri``
    the Request-URI (str) to forward with (None keeps the request's); ``hops``;
    ``waiting`` None, "dns", "connect" or "media"; ``last`` the last final status of
    this lane; ``done`` when nothing is left to try in it."""

    __slots__ = ("cand", "ruri", "hops", "waiting", "last", "done", "route")

    def __init__(self, cand: Any, ruri: str | None, hops: list[Hop] | None = None):
        self.cand = cand
        self.ruri = ruri
        self.hops: deque[Hop] = deque(hops or ())
        self.waiting: str | None = None
        self.last: int | None = None
        self.done = False
        #: The route set (Route values, top first) this lane's branches carry (a
        #: registration's Path), or () to keep the request's.
        self.route: tuple[str, ...] = ()


class Branch:
    """One client transaction of a response context (RFC 3261 §16.6).

    ``tx`` the client transaction, ``lane`` the target it belongs to, ``hop`` where it
    went, ``flow`` the flow it was sent on, ``request`` the request as forwarded;
    ``provisional`` once any 1xx arrived (a CANCEL may then be sent, §9.1);
    ``cancel_sent``; ``final`` the final response (or the one we synthesised: 408 on
    timeout, 503 on transport failure)."""

    __slots__ = ("ctx", "lane", "tx", "hop", "flow", "request", "provisional", "cancel_sent", "final", "failed_at",
                 "timer_c")

    def __init__(self, ctx: "ResponseContext | None", hop: Hop, flow: Flow, request: Any, lane: Lane | None = None):
        self.ctx = ctx
        self.lane = lane
        self.tx: Any = None
        self.hop = hop
        self.flow = flow
        self.request = request
        self.provisional = False
        self.cancel_sent = False
        self.final: Response | None = None
        #: When the branch failed locally (time, s), for recognising a late 2xx.
        self.failed_at: float | None = None
        #: Timer C deadline (s) of an INVITE branch (RFC 3261 §16.6 item 11), or None.
        self.timer_c: float | None = None

    @property
    def pending(self) -> bool:
        return self.final is None


class ResponseContext:
    """The state of one proxied server transaction (RFC 3261 §16.7).

    ``st`` the server transaction; ``req`` the request (after route processing);
    ``flow``/``ingress`` where it came from; ``call`` the call record for dialog-creating
    requests and in-dialog requests (None otherwise); ``groups`` the search-rule
    candidates still to try, grouped by priority (deque of lists of (Candidate,
    Request-URI)); ``lanes`` the targets being tried now; ``branches``; ``finals`` the
    non-2xx finals collected; ``final_sent``/``answered_2xx``; ``cancelled`` once a
    CANCEL matched; ``stop`` when no further branch may start (a 2xx or 6xx arrived)."""

    __slots__ = ("st", "req", "flow", "ingress", "call", "groups", "lanes", "branches", "finals", "final_sent",
                 "answered_2xx", "cancelled", "stop", "search", "dialog", "to_side", "from_side", "route_override",
                 "hidden_rr_tail", "rr_ours", "initial", "loop_hash", "inward", "stateless")

    def __init__(self, st: Any, req: Any, flow: Flow, ingress: str):
        self.st = st
        self.req = req
        self.flow = flow
        self.ingress = ingress
        self.call: Any = None
        self.groups: deque[list] = deque()
        self.lanes: list[Lane] = []
        self.branches: list[Branch] = []
        self.finals: list[Response] = []
        self.final_sent = False
        #: Answered without keeping the transaction when the answer is immediate (a UDP
        #: request from DefaultZone that no branch was started for).
        self.stateless = False
        self.answered_2xx = False
        self.cancelled = False
        self.stop = False
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
        #: The loop hash of the request (RFC 3261 §16.6 item 8), computed once.
        self.loop_hash: str | None = None
        #: On an edge: the request came from outside and was sent into a traversal zone
        #: (its responses go back out topology-hidden).
        self.inward = False

    @property
    def method(self) -> str:
        return self.req.method

    def pending_branches(self) -> list[Branch]:
        return [b for b in self.branches if b.final is None]

    def busy(self) -> bool:
        """True while a branch is pending or a lane waits for DNS, a connection or media."""
        return any(b.final is None for b in self.branches) or any(lane.waiting for lane in self.lanes)


def group_by_priority(candidates: list[tuple[Any, str]]) -> deque[list[tuple[Any, str]]]:
    """Consecutive candidates of equal search-rule priority grouped together: each group
    is searched in parallel, the groups one after the other (Expressway semantics)."""
    groups: deque[list[tuple[Any, str]]] = deque()
    for cand, ruri in candidates:
        if groups and groups[-1][0][0].priority == cand.priority:
            groups[-1].append((cand, ruri))
        else:
            groups.append([(cand, ruri)])
    return groups


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
