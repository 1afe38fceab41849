"""edgeway.mra: mobile and remote access (seed 002; issue 9).

- :mod:`edgeway.mra.allowlist` (rules, normalised matching, MRA path decoding) and
  :mod:`edgeway.mra.allowlist_csv` (the seed 002 §8.7–§8.8 CSV rules and tests files):
  pure, no sockets, no asyncio, no clock.
- :mod:`edgeway.mra.tunnel`: the core-initiated HTTP/2 tunnel, sans-IO.
- :mod:`edgeway.mra.edge`: the edge's HTTPS listener and tunnel listener (asyncio).
- :mod:`edgeway.mra.core`: the core's tunnel connections and request handler (asyncio).
- :mod:`edgeway.mra.edge_config`: the ``get_edge_config`` answer; :mod:`edgeway.mra.gate`:
  the one place proxied requests meet the allow list.

Nothing below ``mra`` imports it."""

from edgeway._httpurl import NormalisedUrl, normalise_url
from edgeway.mra.allowlist import (
    AUTOMATIC_RULES,
    DEFAULT_DEPLOYMENT,
    DEFAULT_METHODS,
    SERVER_TYPES,
    AllowList,
    AllowRule,
    Decision,
    ProxiedTarget,
    RuleError,
    TargetError,
    automatic_rules,
    parse_proxied_path,
    parse_rule_url,
)

__all__ = [
    "AUTOMATIC_RULES", "DEFAULT_DEPLOYMENT", "DEFAULT_METHODS", "SERVER_TYPES", "AllowList", "AllowRule", "Decision",
    "NormalisedUrl", "ProxiedTarget", "RuleError", "TargetError", "automatic_rules", "normalise_url",
    "parse_proxied_path", "parse_rule_url",
]
