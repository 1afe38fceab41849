"""Search-rule planning (seed 003 §6.2–§6.4, DESIGN §2 step 3).

Pure: given the (already transformed) alias and the source zone, work out
which targets to try, in order, and the ``network.search`` log lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgeway.routing.transforms import apply_pattern

__all__ = ["Candidate", "SearchLog", "SearchRuleLike", "plan_search"]


@dataclass(frozen=True)
class Candidate:
    """One target to try: the rule's ``name`` and ``priority``, the target
    ``zone`` name and the ``alias`` after the rule's behaviour."""

    rule: str
    priority: int
    zone: str
    alias: str


@dataclass
class SearchLog:
    """Collects search log lines in the seed's wording (seed 003 §6.4)."""

    lines: list[str] = field(default_factory=list)

    def ignored(self, rule: str) -> None:
        """``Search rule '<rule>' ignored due to source filtering``."""
        self.lines.append(f"Search rule '{rule}' ignored due to source filtering")

    def no_match(self, rule: str, alias: str) -> None:
        """``Search rule '<rule>' did not match destination alias '<alias>'``."""
        self.lines.append(f"Search rule '{rule}' did not match destination alias '{alias}'")

    def considering(self, c: Candidate) -> None:
        """``Considering search rule '<rule>' towards target '<zone>' at priority '<n>' with alias '<alias>'``."""
        self.lines.append(
            f"Considering search rule '{c.rule}' towards target '{c.zone}' "
            f"at priority '{c.priority}' with alias '{c.alias}'"
        )


class SearchRuleLike(Protocol):
    """Shape of a search rule (``edgeway.config.SearchRule`` satisfies it)."""

    name: str
    priority: int
    mode: str
    pattern_type: str
    pattern: str
    behaviour: str
    replace: str
    progress: str
    source_zone: str | None
    target_zone: str
    enabled: bool


def plan_search(
    alias: str, source_zone: str, rules: Sequence[SearchRuleLike], local_domains: Iterable[str] = ()
) -> tuple[list[Candidate], list[str]]:
    """Return ``(candidates, log_lines)`` for ``alias`` arriving from ``source_zone``.

    Enabled rules are taken by ascending priority (config order for ties).
    A rule with a ``source_zone`` other than ``source_zone`` is skipped
    ("ignored due to source filtering"). ``any_alias`` matches every alias
    (its behaviour still applies where the pattern matches);
    ``alias_pattern_match`` uses :func:`apply_pattern`. Each rule sees the
    original alias. A match adds a :class:`Candidate`; a matching ``stop``
    rule ends the list. The proxy tries the candidates in order; an empty
    list means 404 "Policy Response" (seed 003 §6.6)."""
    domains = tuple(local_domains)
    log, out = SearchLog(), []
    for r in sorted((r for r in rules if r.enabled), key=lambda r: r.priority):
        if r.source_zone is not None and r.source_zone != source_zone:
            log.ignored(r.name)
            continue
        new = apply_pattern(alias, r.pattern_type, r.pattern, r.behaviour, r.replace, domains)
        if new is None and r.mode == "any_alias":
            new = alias
        if new is None:
            log.no_match(r.name, alias)
            continue
        cand = Candidate(r.name, r.priority, r.target_zone, new)
        log.considering(cand)
        out.append(cand)
        if r.progress == "stop":
            break
    return out, log.lines
