"""edgeway.config: node configuration models and the TOML loader (DESIGN §2)."""

from edgeway.config.load import ConfigError, load_config, parse_config
from edgeway.config.models import (
    BUILTIN_ZONES,
    ConfigProblems,
    Credential,
    DnsConfig,
    DnsZone,
    FloodConfig,
    HttpAllowRule,
    InternalServer,
    LimitsConfig,
    LogConfig,
    MediaConfig,
    MraConfig,
    MraDomain,
    NeighbourZone,
    NodeConfig,
    PolicyRule,
    SearchRule,
    SipConfig,
    TimerConfig,
    TlsConfig,
    Transform,
    TraversalClientZone,
    TraversalServerZone,
    UdsServer,
    ZoneConfig,
    split_hostport,
    zone_token,
)

__all__ = [
    "BUILTIN_ZONES", "ConfigError", "ConfigProblems", "Credential", "DnsConfig", "DnsZone", "FloodConfig", "LimitsConfig", "LogConfig",
    "MediaConfig", "MraConfig", "MraDomain", "UdsServer", "HttpAllowRule", "InternalServer", "NeighbourZone", "NodeConfig", "PolicyRule", "SearchRule", "SipConfig", "TimerConfig", "TlsConfig",
    "Transform", "TraversalClientZone", "TraversalServerZone", "ZoneConfig", "load_config", "parse_config",
    "split_hostport", "zone_token",
]
