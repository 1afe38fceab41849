"""Probe results and the choice of the media node and transport, sans-IO.

The rules (seed 004, "Sending and Receiving Media", "Media Node Discovery"):

1. **Fallback order** — UDP, then TCP, then TLS, then a tunnel through an HTTP proxy
   (``proxy-tls``: CONNECT to the node's TLS port and TLS inside; then ``proxy-tcp``: CONNECT
   to the TCP port, plain STUN inside). Seed 004: "If the Webex Teams app fails to connect on
   UDP, it can fall back to traverse a firewall using TCP port 5004 and TLS port 443 ... The
   Webex Teams app also supports a media tunnel through an HTTP proxy ... where ... no other
   protocols succeed." UDP is preferred "because it has lower latency".
2. A (node, transport) is **usable** when at least one of its samples got a Binding success
   response. An error response or no answer is a failed sample.
3. The **best** is the usable (node, transport) with the smallest key
   ``(transport rank, lost samples, median RTT, minimum RTT, node order)``: the most preferred
   transport wins over a lower RTT on a less preferred one (a TCP or TLS media path suffers
   head-of-line blocking whatever its RTT); among equals the fewer losses, then the lower RTT,
   then the node listed first.
4. The proxy is **probed only when needed**: when no direct transport is usable on any node
   (:func:`needs_proxy`), or when the caller asks for the proxy only.

Every (node, transport) that is not the best gets one reason (:func:`choose`): why it failed,
why it was not tried, or why it lost.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

__all__ = [
    "DIRECT", "PROXY", "TRANSPORTS", "Choice", "Reason", "Sample", "TransportResult",
    "choose", "needs_proxy", "result_from_dict",
]

TRANSPORTS = ("udp", "tcp", "tls", "proxy-tls", "proxy-tcp")
"""All transports in fallback order (rule 1)."""
DIRECT = ("udp", "tcp", "tls")
PROXY = ("proxy-tls", "proxy-tcp")
RANK = {t: i for i, t in enumerate(TRANSPORTS)}


@dataclass(slots=True)
class Sample:
    """One Binding transaction. ``rtt`` in seconds when answered with success; ``error`` says
    why not; ``mapped`` is the XOR-MAPPED-ADDRESS ``"host:port"`` the node saw;
    ``retransmits`` counts UDP copies after the first (RFC 8489 §6.2.1)."""

    rtt: float | None = None
    error: str | None = None
    mapped: str | None = None
    retransmits: int = 0

    @property
    def ok(self) -> bool:
        return self.rtt is not None and self.error is None


@dataclass(slots=True)
class TransportResult:
    """All samples of one node over one transport. ``port`` is the node port probed (for the
    proxy transports: the port given to CONNECT). ``skipped`` is set, with the reason, when the
    transport was not probed at all. ``note`` carries facts worth showing (e.g. "TLS certificate
    not verified (--insecure)")."""

    node: str
    transport: str
    port: int
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None
    note: str | None = None

    @property
    def ok_rtts(self) -> list[float]:
        return [s.rtt for s in self.samples if s.ok]  # type: ignore[misc]

    @property
    def usable(self) -> bool:
        return bool(self.ok_rtts)

    @property
    def lost(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    @property
    def rtt_min(self) -> float | None:
        r = self.ok_rtts
        return min(r) if r else None

    @property
    def rtt_median(self) -> float | None:
        r = self.ok_rtts
        return statistics.median(r) if r else None

    @property
    def mapped(self) -> str | None:
        return next((s.mapped for s in self.samples if s.ok and s.mapped), None)

    @property
    def error(self) -> str | None:
        """Why the transport failed: the skip reason, else the most frequent sample error (first
        seen on a tie); ``None`` when usable."""
        if self.skipped:
            return self.skipped
        if self.usable:
            return None
        errors = [s.error or "no answer" for s in self.samples]
        if not errors:
            return "no samples"
        return max(errors, key=lambda e: (errors.count(e), -errors.index(e)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(reachable=self.usable, rtt_min_ms=_ms(self.rtt_min), rtt_median_ms=_ms(self.rtt_median),
                 lost=self.lost, error=self.error, mapped=self.mapped)
        return d


def result_from_dict(d: dict) -> TransportResult:
    """Inverse of :meth:`TransportResult.to_dict` (for the cache)."""
    return TransportResult(node=d["node"], transport=d["transport"], port=int(d["port"]),
                           samples=[Sample(**s) for s in d.get("samples", [])],
                           skipped=d.get("skipped"), note=d.get("note"))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def fmt_rtt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000.0:.2f} ms"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why ``node``/``transport`` is not the best. ``verdict`` is ``failed``, ``not tried`` or
    ``lost``."""

    node: str
    transport: str
    verdict: str
    text: str


@dataclass(slots=True)
class Choice:
    """The outcome of :func:`choose`. ``best`` is ``None`` when nothing is usable. ``fallback``
    explains, for the best node, why each more preferred transport was not used (empty when
    UDP won)."""

    best: TransportResult | None
    reasons: list[Reason]
    fallback: list[Reason]

    def headline(self) -> str:
        if self.best is None:
            return "no media node reachable over any transport"
        b = self.best
        text = (f"best: node {b.node} over {b.transport} (RTT min {fmt_rtt(b.rtt_min)}, "
                f"median {fmt_rtt(b.rtt_median)}, {len(b.samples) - b.lost}/{len(b.samples)} answered)")
        if self.fallback:
            text += "; fell back from " + ", ".join(
                f"{r.transport} ({r.text if r.verdict == 'failed' else f'{r.verdict}: {r.text}'})" for r in self.fallback)
        return text

    def to_dict(self) -> dict:
        return {
            "best": None if self.best is None else {
                "node": self.best.node, "transport": self.best.transport, "port": self.best.port,
                "rtt_min_ms": _ms(self.best.rtt_min), "rtt_median_ms": _ms(self.best.rtt_median)},
            "fallback": [asdict(r) for r in self.fallback],
            "reasons": [asdict(r) for r in self.reasons],
            "headline": self.headline(),
        }


def needs_proxy(results: list[TransportResult]) -> bool:
    """Rule 4: True when no direct transport (UDP, TCP, TLS) is usable on any node."""
    return not any(r.usable for r in results if r.transport in DIRECT)


def _key(r: TransportResult, order: dict[str, int]) -> tuple:
    return (RANK[r.transport], r.lost, r.rtt_median, r.rtt_min, order.get(r.node, len(order)))


def choose(results: list[TransportResult], nodes: list[str] | None = None) -> Choice:
    """Apply rules 1–3 to ``results``; ``nodes`` gives the node order for ties (default: order of
    first appearance). Pure: same input, same output."""
    order: dict[str, int] = {}
    for n in (nodes or []) + [r.node for r in results]:
        order.setdefault(n, len(order))
    usable = [r for r in results if r.usable]
    best = min(usable, key=lambda r: _key(r, order)) if usable else None
    reasons: list[Reason] = []
    for r in sorted(results, key=lambda r: (order[r.node], RANK[r.transport])):
        if r is best:
            continue
        if r.skipped:
            reasons.append(Reason(r.node, r.transport, "not tried", r.skipped))
        elif not r.usable:
            reasons.append(Reason(r.node, r.transport, "failed", r.error or "no answer"))
        else:
            reasons.append(Reason(r.node, r.transport, "lost", _why_lost(r, best)))  # type: ignore[arg-type]
    fallback = []
    if best is not None:
        fallback = [x for x in reasons if x.node == best.node and RANK[x.transport] < RANK[best.transport]]
    return Choice(best, reasons, fallback)


def _why_lost(r: TransportResult, best: TransportResult) -> str:
    here = f"reachable, median {fmt_rtt(r.rtt_median)}"
    if RANK[best.transport] < RANK[r.transport]:
        if best.node == r.node:
            return f"{here}, but {best.transport} is preferred (fallback order UDP → TCP → TLS → HTTP proxy)"
        return f"{here}, but node {best.node} is reachable over {best.transport}, which is preferred"
    if r.lost > best.lost:
        return f"{here}, but lost {r.lost}/{len(r.samples)} samples (best lost {best.lost})"
    if (r.rtt_median, r.rtt_min) != (best.rtt_median, best.rtt_min):
        return f"{here}, slower than {best.node} ({fmt_rtt(best.rtt_median)})"
    return f"{here}, same as {best.node}, which is listed first"
