"""Zone lookup and inbound classification (DESIGN §2; seed 003 §3.2, §5).

Pure functions over a :class:`~edgeway.config.NodeConfig`.
"""

from __future__ import annotations

import ipaddress

from dataclasses import dataclass

from edgeway.config.models import BUILTIN_ZONES, DnsZone, NeighbourZone, NodeConfig, ZoneConfig, zone_token

__all__ = ["classify_source", "classify_by_tls_identity", "TlsClassification", "zone_by_name", "zone_token"]


@dataclass(frozen=True)
class TlsClassification:
    """Result of inbound classification by TLS identity (seed 003 §3.2).

    ``zone``: the DNS zone matched, or None; ``identity``: the certificate identity that
    matched; ``candidates``: the identities tried, CN first then DNS SANs in certificate
    order, up to and including the first match (what the seed's log prints)."""

    zone: str | None
    identity: str | None
    candidates: tuple[str, ...]


def classify_by_tls_identity(cfg: NodeConfig, peer_names: list[str]) -> TlsClassification:
    """Map a TLS peer to the DNS zone whose ``tls_verify_subject_name`` it carries.

    Only zones with ``inbound_classification`` take part. Identities are tried in
    certificate order (CN, then SANs) and the search stops at the first identity
    that equals (case-insensitive, trailing dot ignored) some zone's subject name.
    """
    wanted: dict[str, str] = {}
    for z in cfg.zones:
        if isinstance(z, DnsZone) and z.inbound_classification and z.tls_verify_subject_name:
            wanted.setdefault(z.tls_verify_subject_name.lower().rstrip("."), z.name)
    tried: list[str] = []
    for name in peer_names:
        tried.append(name)
        zone = wanted.get(name.lower().rstrip("."))
        if zone is not None:
            return TlsClassification(zone, name, tuple(tried))
    return TlsClassification(None, None, tuple(tried))


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
