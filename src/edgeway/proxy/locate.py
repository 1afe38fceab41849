"""Locate (seed 003 §12.3 "Locate", catalogue case 31; issue 11 item 3): run the routing
pipeline for an alias from a source zone without placing a call, and say what each step
did. Pure: :func:`locate_plan` runs transforms → call policy → search rules on the node's
configuration; the node (:mod:`edgeway.node`) adds what only a running node knows — the
traversal zones' connections, the registrar's bindings and the DNS answers — through
:func:`target_step`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config.models import NodeConfig
from ..routing.search import Candidate
from ..sip.message import parse_message
from ..sip.uri import UriError
from .request import plan_initial

__all__ = ["LocateTarget", "LocateResult", "locate_plan"]


@dataclass(slots=True)
class LocateTarget:
    """One search-rule target: ``rule``, ``priority``, ``zone`` and its ``zone_type``
    (``neighbour``, ``dns``, ``traversal_client``/``traversal_server``, ``local``), the
    Request-URI the node would forward with, ``found`` once looked up, the ``hops``
    (``"transport:host:port"``) and ``detail`` lines (DNS queries and answers, bindings,
    the zone's connection state)."""

    rule: str
    priority: int
    zone: str
    zone_type: str
    ruri: str
    found: bool = False
    hops: list[str] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LocateResult:
    """What routing ``alias`` from ``source_zone`` would do: ``transformed`` the alias after
    transforms (``transforms`` says whether they changed it), ``policy`` ``"Proxy"`` or
    ``"Reject"`` with ``policy_trace`` lines, ``search`` the search log lines (seed 003 §6.4
    wording), ``targets`` in the order they would be tried, ``found`` when any target has a
    hop, ``error`` when the alias cannot be routed at all."""

    alias: str
    source_zone: str
    transformed: str = ""
    transforms: str = "Not Transformed"
    policy: str = "Proxy"
    policy_trace: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    targets: list[LocateTarget] = field(default_factory=list)
    error: str | None = None

    @property
    def found(self) -> bool:
        return any(t.found for t in self.targets)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["found"] = self.found
        return d


def _zone_type(cfg: NodeConfig, name: str) -> str:
    if name == "LocalZone":
        return "local"
    z = next((z for z in cfg.zones if z.name == name), None)
    return z.type if z is not None else "unknown"


def locate_plan(cfg: NodeConfig, alias: str, source_zone: str, source_alias: str = "") -> LocateResult:
    """Transforms, call policy and search rules for ``alias`` (``user@host`` or a SIP URI)
    arriving from ``source_zone`` (``"DefaultZone"``, ``"LocalZone"`` or a zone name), as an
    INVITE from ``source_alias`` would be routed. Never raises for str arguments."""
    res = LocateResult(alias, source_zone)
    uri = alias if alias.startswith(("sip:", "sips:")) else f"sip:{alias}"
    src = source_alias if source_alias.startswith(("sip:", "sips:")) else f"sip:{source_alias or 'locate@invalid'}"
    if any(c in uri + src for c in "\r\n<> "):
        res.error = "the alias must be one SIP address, without spaces or angle brackets"
        return res
    zones = {z.name for z in cfg.zones} | {"DefaultZone", "LocalZone"}
    if source_zone not in zones:
        res.error = f"unknown source zone {source_zone!r} (zones: {', '.join(sorted(zones))})"
        return res
    text = (f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKlocate\r\nMax-Forwards: 70\r\n"
            f"From: <{src}>;tag=locate\r\nTo: <{uri}>\r\nCall-ID: locate@edgeway\r\nCSeq: 1 INVITE\r\n"
            f"Content-Length: 0\r\n\r\n")
    try:
        req = parse_message(text.encode())
        plan = plan_initial(cfg, req, source_zone)  # type: ignore[arg-type]
    except (UriError, ValueError) as exc:
        res.error = f"the alias cannot be routed: {exc}"
        return res
    try:
        before = req.ruri.alias()  # type: ignore[union-attr]
    except UriError:
        before = alias
    res.transformed = plan.alias
    res.transforms = "Not Transformed" if plan.alias == before else f"Transformed to {plan.alias!r}"
    res.policy_trace = list(plan.policy_trace)
    if plan.rejection is not None:
        res.policy = f"Reject ({plan.rejection[0]} {plan.rejection[1]})"
        return res
    res.search = list(plan.log)
    for cand, ruri in plan.candidates:
        res.targets.append(_target(cfg, cand, ruri))
    return res


def _target(cfg: NodeConfig, cand: Candidate, ruri: str) -> LocateTarget:
    return LocateTarget(cand.rule, cand.priority, cand.zone, _zone_type(cfg, cand.zone), ruri)
