"""Request processing of a proxy before forwarding (RFC 3261 §16.3–§16.5), pure.

* :func:`stamp_received` — ``received``/``rport`` on the top Via (RFC 3261 §18.2.1,
  RFC 3581 §4).
* :func:`validate` — §16.3 checks (416, 483, 420; 400 for a malformed Request-URI).
* :func:`is_loop` — §16.3 item 4 loop detection against our own Via branches.
* :func:`process_routes` — §16.4: undo a strict-routing previous hop, remove the top
  Route entries naming this node.
* :func:`plan_initial` — the target set of an initial request (§16.5) by the seeds'
  routing pipeline: transforms → call policy → search rules (seed 003 §6.1).

Nothing here reads a clock, opens a socket or keeps state between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.models import NodeConfig
from ..routing.policy import evaluate_policy
from ..routing.search import Candidate, plan_search
from ..routing.transforms import apply_transforms
from ..sip.message import ParseError, Request, Via
from ..sip.target import Flow
from ..sip.uri import Uri, UriError, parse_name_addr, parse_uri
from .checks import Rejection, check_request, loop_hash

__all__ = ["stamp_received", "validate", "is_loop", "process_routes", "RoutePlan", "plan_initial", "ruri_with_alias",
           "BRANCH_PREFIX"]

#: Prefix of every branch this node puts in its Via (RFC 3261 magic cookie + "ew").
BRANCH_PREFIX = "z9hG4bKew"


def stamp_received(req: Request, flow: Flow, ingress_token: str | None = None) -> None:
    """Add ``received`` (when the sent-by host differs from the source address) and
    fill ``rport`` when the client asked for it (RFC 3261 §18.2.1, RFC 3581 §4); with
    ``ingress_token``, tag the Via with ``ingress-zone=<token>`` (the zone the request
    came from, for the operator reading a trace). Raises ParseError on a malformed top
    Via."""
    via = req.top_via()
    ip, port = flow.remote
    rport = "rport" in via.params
    if via.host == ip and not rport and ingress_token is None:
        return
    params = dict(via.params)
    if via.host != ip or rport:
        params["received"] = ip
    if rport:
        params["rport"] = str(port)
    if ingress_token is not None:
        params["ingress-zone"] = ingress_token
    req.headers.replace_first("Via", str(Via(via.transport, via.host, via.port, params, via.protocol)))


def validate(req: Request) -> Rejection | None:
    """RFC 3261 §16.3 items 2, 3 and 6 (see :func:`~edgeway.proxy.checks.check_request`)."""
    return check_request(req, answer_options_mf0=False)


def is_loop(req: Request, our_hosts: frozenset[str], hash_: str | None = None) -> bool:
    """RFC 3261 §16.3 item 4: a Via of ours whose branch carries the loop hash of this
    request (``hash_`` when already computed; a spiral, where the request changed, has
    another hash and is not a loop)."""
    vias = req.headers.get_all("Via")
    if len(vias) < 2:
        return False
    wanted = BRANCH_PREFIX + (hash_ or loop_hash(req))
    for v in vias:
        if wanted not in v:
            continue
        try:
            via = Via.parse(v)
        except ParseError:
            continue
        if via.host in our_hosts and (via.branch or "").startswith(wanted):
            return True
    return False


def process_routes(req: Request, is_ours: Callable[[Uri], bool]) -> tuple[list[str], list[Uri]]:
    """RFC 3261 §16.4 on ``req`` (changed in place).

    A Request-URI naming us without ``lr`` while Route is present means the previous
    hop was a strict router: the last Route value becomes the Request-URI. Then every
    top Route entry naming this node is removed. Returns ``(remaining route URIs as
    str, our removed route URIs)``. Raises UriError/ParseError on malformed values."""
    routes = req.headers.get_all("Route")
    if not routes:
        return [], []
    ruri = req.ruri
    popped: list[Uri] = []
    if is_ours(ruri) and "lr" not in ruri.params:
        last = parse_name_addr(routes[-1])
        req.uri = str(last.uri)
        req.headers.remove("Route")
        for r in routes[:-1]:
            req.headers.add("Route", r)
        routes = routes[:-1]
        popped.append(ruri)
    while routes:
        na = parse_name_addr(routes[0])
        if na.uri is not None and is_ours(na.uri):
            req.headers.pop_first("Route")
            routes = routes[1:]
            popped.append(na.uri)
        else:
            break
    return [str(parse_name_addr(r).uri) for r in routes], popped


@dataclass
class RoutePlan:
    """The outcome of routing an initial request (seed 003 §6.1).

    ``alias`` the alias after transforms; ``candidates`` the search-rule targets in the
    order to try them, each with the Request-URI (str) to forward with; ``rejection``
    (status, reason, detail) when call policy refused the request; ``log`` the search
    log lines; ``policy_trace`` the call policy's log lines."""

    alias: str
    candidates: list[tuple[Candidate, str]] = field(default_factory=list)
    rejection: tuple[int, str, str] | None = None
    log: list[str] = field(default_factory=list)
    policy_trace: list[str] = field(default_factory=list)


def plan_initial(cfg: NodeConfig, req: Request, ingress: str, *, alias: str | None = None, keep_ruri: bool = False) -> RoutePlan:
    """Transforms → call policy → search rules for an initial request from zone
    ``ingress``. ``alias`` defaults to the Request-URI's; ``keep_ruri`` (preloaded
    routes) forwards with the Request-URI unchanged whatever the rules did to the
    alias. Raises UriError on a malformed Request-URI."""
    ruri = req.ruri
    alias = ruri.alias() if alias is None else alias
    domains = cfg.sip.domains
    transformed = apply_transforms(alias, cfg.transforms, domains)
    plan = RoutePlan(transformed)
    if cfg.call_policy:
        try:
            source = req.from_.uri
        except UriError:
            source = None
        decision = evaluate_policy(source.alias() if source is not None else "", transformed, cfg.call_policy, domains)
        plan.policy_trace = decision.trace
        if decision.rejected:
            plan.rejection = (403, "Forbidden", "Policy Response")
            return plan
    candidates, plan.log = plan_search(transformed, ingress, cfg.search_rules, domains)
    for cand in candidates:
        new_ruri = ruri if keep_ruri else ruri_with_alias(ruri, cand.alias)
        plan.candidates.append((cand, str(new_ruri)))
    return plan


def ruri_with_alias(ruri: Uri, alias: str) -> Uri:
    """The Request-URI after a transform/search rule changed the alias (``user@host``)."""
    if alias == ruri.alias():
        return ruri
    _user, at, _hostport = alias.rpartition("@")
    try:
        parsed = parse_uri(f"{ruri.scheme if ruri.is_sip else 'sip'}:{alias}")
    except UriError:
        return ruri
    if at:
        return ruri.copy(user=parsed.user, password=None, host=parsed.host, port=parsed.port)
    return ruri.copy(host=parsed.host, port=parsed.port)
