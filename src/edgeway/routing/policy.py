"""Call policy (seed 003 §6.5, "CPL"): ordered source × destination rules.

Applied after transforms and before search rules (seed 003 §6.1). Pure: aliases and
rules in, a decision out. Patterns are regexes matched against the whole alias
(``re.fullmatch``, case-insensitive) with ``%localdomains%`` expanded, like search rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .transforms import match_pattern

__all__ = ["PolicyDecision", "evaluate_policy"]


class PolicyRuleLike(Protocol):
    source: str
    destination: str
    action: str


@dataclass(frozen=True)
class PolicyDecision:
    """``action`` "accept"/"reject"; ``rule`` the index of the rule that matched (None:
    no rule matched, accepted by default); ``trace`` the seed's CPL log lines."""

    action: str
    rule: int | None
    trace: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return self.action == "reject"


def evaluate_policy(source: str, destination: str, rules: Sequence[PolicyRuleLike], local_domains: Sequence[str] = ()) -> PolicyDecision:
    """The first rule whose ``source`` matches ``source`` and ``destination`` matches
    ``destination`` decides; no rule matching (or no rules) accepts.

    ``source`` and ``destination`` are aliases as str (e.g. ``sip:alice@example.com``
    or ``alice@example.com``; write patterns with a leading ``.*`` to accept both).
    """
    trace = ["CPL: <routed>", "CPL: <rule-switch>"]
    for i, r in enumerate(rules):
        if match_pattern(source, "regex", r.source, local_domains) and match_pattern(destination, "regex", r.destination, local_domains):
            trace.append(f'CPL: <rule unauthenticated-origin="{r.source}" destination="{r.destination}"> matched')
            trace.append("CPL: <reject/>" if r.action == "reject" else "CPL: <proxy/>")
            return PolicyDecision(r.action, i, trace)
    trace.append("CPL: <proxy/>")
    return PolicyDecision("accept", None, trace)
