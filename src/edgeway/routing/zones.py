"""Zone lookup and inbound classification (DESIGN §2; seed 003 §3.2, §5).

Pure functions over a :class:`~edgeway.config.NodeConfig`.
"""

from __future__ import annotations

import ipaddress

from edgeway.config.models import BUILTIN_ZONES, NeighbourZone, NodeConfig, ZoneConfig, zone_token

__all__ = ["classify_source", "zone_by_name", "zone_token"]


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def zone_by_name(cfg: NodeConfig, name: str) -> ZoneConfig | None:
    """Return the configured zone called ``name``; ``None`` for the built-in
    ``LocalZone``/``DefaultZone``. Raises ``KeyError`` for an unknown name."""
    for z in cfg.zones:
        if z.name == name:
            return z
    if name in BUILTIN_ZONES:
        return None
    raise KeyError(name)


def classify_source(
    cfg: NodeConfig,
    *,
    transport: str,
    local_port: int,
    src_ip: str,
    tls_peer_names: list[str] | None = None,
    traversal_zone: str | None = None,
) -> str:
    """Return the zone name an inbound request belongs to.

    Order: ``traversal_zone`` (the traversal connection it arrived on) if
    given; else the first neighbour zone with ``match_source`` whose ``host``
    equals ``src_ip`` (IP comparison, so ``::1`` == ``0:0:0:0:0:0:0:1``) or,
    over TLS, is one of the verified ``tls_peer_names`` (case-insensitive);
    else ``"DefaultZone"``. ``transport`` is "udp"/"tcp"/"tls";
    ``local_port`` is the receiving port (reserved for per-port rules)."""
    if traversal_zone:
        return traversal_zone
    names = {n.lower() for n in tls_peer_names or ()} if transport == "tls" else set()
    for z in cfg.zones:
        if isinstance(z, NeighbourZone) and z.match_source:
            if z.host == src_ip or _same_ip(z.host, src_ip) or z.host.lower() in names:
                return z.name
    return "DefaultZone"
