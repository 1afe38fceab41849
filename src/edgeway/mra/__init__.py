"""edgeway.mra: mobile and remote access (seed 002; issue 9). For now the HTTP allow list:
:mod:`edgeway.mra.allowlist` (rules, normalised matching, MRA path decoding) and
:mod:`edgeway.mra.allowlist_csv` (the seed 002 §8.7–§8.8 CSV rules and tests files).
Pure: no sockets, no asyncio, no clock. Imports ``config`` and the package's private
helpers only; nothing below imports ``mra``."""

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
