"""The media node discovery section of ``edgeway lab`` (issue 10 item 5; seed 004): the
client side (:mod:`edgeway.probe`) probes the lab's media nodes (``role = "media"``,
:data:`~edgeway.lab.topology.MEDIA_NODES`) over UDP, TCP and TLS, picks the best, and — for
media-b, which does not listen on UDP — says that it fell back to TCP and why."""

from __future__ import annotations

from pathlib import Path

from edgeway.lab.report import MediaProbeReport, MraStep
from edgeway.lab.topology import MEDIA_NODE_PORT, MEDIA_NODE_TLS_PORT, MEDIA_NODES

__all__ = ["run_probe_demo"]


def _rows(results) -> list[str]:
    from edgeway.probe.choice import fmt_rtt

    out = []
    for r in results:
        if r.skipped:
            continue
        seen = len(r.samples) - r.lost
        state = (f"reachable, {seen}/{len(r.samples)} answered, RTT min {fmt_rtt(r.rtt_min)} median "
                 f"{fmt_rtt(r.rtt_median)}, mapped {r.mapped}" if r.usable else f"not reachable: {r.error}")
        out.append(f"{r.node:8} {r.transport:4} :{r.port:<5} {state}")
    return out


async def run_probe_demo(ca_file: Path, samples: int = 3, timeout_s: float = 1.0) -> MediaProbeReport:
    """Probe every lab media node, then media-b alone; never raises for probe failures."""
    from edgeway.probe.choice import choose
    from edgeway.probe.client import Node, ProbeConfig, probe_nodes

    cfg = ProbeConfig(samples=samples, timeout=timeout_s, ca_file=str(ca_file))
    nodes = [Node(name, ip, MEDIA_NODE_PORT, MEDIA_NODE_PORT, MEDIA_NODE_TLS_PORT) for name, (ip, _) in MEDIA_NODES.items()]
    report = MediaProbeReport()
    try:
        results = await probe_nodes(nodes, cfg)
    except Exception as exc:  # noqa: BLE001 - a bug here is a failed step, not a crashed demo
        report.steps.append(MraStep("probe of the media nodes", False, f"probe failed: {type(exc).__name__}: {exc}"))
        return report
    best = choose(results, [n.name for n in nodes])
    want = next(name for name, (_, udp) in MEDIA_NODES.items() if udp)
    ok = best.best is not None and best.best.node == want and best.best.transport == "udp"
    report.steps.append(MraStep(f"edgeway probe {' '.join(n.name for n in nodes)} (UDP {MEDIA_NODE_PORT}, "
                                f"TCP {MEDIA_NODE_PORT}, TLS {MEDIA_NODE_TLS_PORT})", ok, best.headline(),
                                _rows(results)))
    blocked = next(name for name, (_, udp) in MEDIA_NODES.items() if not udp)
    alone = choose([r for r in results if r.node == blocked], [blocked])
    ok = (alone.best is not None and alone.best.transport == "tcp"
          and any(r.transport == "udp" for r in alone.fallback))
    report.steps.append(MraStep(f"{blocked} alone (it does not listen on UDP)", ok, alone.headline()))
    return report
