"""Alias pattern matching and transforms (seed 003 §6.1–§6.2, DESIGN §2 step 1).

Pure string functions. An *alias* is a Request-URI without its scheme, e.g.
``alice@corp.edgeway.test`` or ``cucm.rtp.ciscotac.net;lr``.

Pattern types (Expressway semantics, all case-insensitive):

* ``exact``  – the whole alias equals the pattern;
* ``prefix`` – the alias starts with the pattern;
* ``suffix`` – the alias ends with the pattern;
* ``regex``  – the pattern matches the WHOLE alias (``re.fullmatch``).

Behaviours: ``leave`` (alias unchanged), ``strip`` (remove the matched part:
the prefix, the suffix, or everything for exact/regex) and ``replace``
(prefix/suffix: put ``replace`` in place of the matched part; exact: the alias
becomes ``replace``; regex: ``match.expand(replace)``, so ``\\1``/``\\g<name>``
refer to groups).

The macro ``%localdomains%`` expands to ``(?:dom1|dom2…)`` built from the
``re.escape``'d local SIP domains (``(?!)``, matching nothing, when there are
none). In exact/prefix/suffix patterns it matches any one local domain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgeway.config.patterns import LOCALDOMAINS, PATTERN_TYPES, check_pattern, compile_pattern, expand_localdomains

__all__ = [
    "PatternCheck",
    "check_alias",
    "LOCALDOMAINS",
    "expand_localdomains",
    "compile_pattern",
    "check_pattern",
    "match_pattern",
    "apply_pattern",
    "apply_transforms",
    "TransformLike",
    "PATTERN_TYPES",
]

def match_pattern(
    alias: str, pattern_type: str, pattern: str, local_domains: Iterable[str] = ()
) -> re.Match[str] | None:
    """Match ``alias`` against a pattern; return the ``re.Match`` (always
    truthy, even for an empty prefix) or ``None``.

    exact/regex must match the whole alias; prefix matches at the start;
    suffix at the end (``m.start()`` is where the suffix begins)."""
    rx = compile_pattern(pattern_type, pattern, local_domains)
    if pattern_type in ("exact", "regex"):
        return rx.fullmatch(alias)
    if pattern_type == "prefix":
        return rx.match(alias)
    return rx.search(alias)


def apply_pattern(
    alias: str,
    pattern_type: str,
    pattern: str,
    behaviour: str = "leave",
    replace: str = "",
    local_domains: Iterable[str] = (),
) -> str | None:
    """Apply a pattern with its behaviour; return the new alias, or ``None``
    if the pattern does not match (see the module docstring for semantics).

    Raises ``ValueError`` for an unknown behaviour, ``re.error`` for a regex
    replace string with a bad group reference."""
    m = match_pattern(alias, pattern_type, pattern, local_domains)
    if m is None:
        return None
    if behaviour == "leave":
        return alias
    if behaviour not in ("strip", "replace"):
        raise ValueError(f"unknown behaviour {behaviour!r}")
    new = replace if behaviour == "replace" else ""
    if pattern_type == "regex" and behaviour == "replace":
        return m.expand(replace)
    return alias[: m.start()] + new + alias[m.end():]


class TransformLike(Protocol):
    """Shape of a transform (``edgeway.config.Transform`` satisfies it)."""

    priority: int
    pattern_type: str
    pattern: str
    behaviour: str
    replace: str
    enabled: bool


def apply_transforms(alias: str, transforms: Sequence[TransformLike], local_domains: Iterable[str] = ()) -> str:
    """Apply the first matching enabled transform (lowest priority number
    first, config order for ties) and return the resulting alias; the alias
    is returned unchanged when none matches (seed 003 §6.1)."""
    domains = tuple(local_domains)
    for t in sorted((t for t in transforms if t.enabled), key=lambda t: t.priority):
        out = apply_pattern(alias, t.pattern_type, t.pattern, t.behaviour, t.replace, domains)
        if out is not None:
            return out
    return alias


@dataclass(frozen=True, slots=True)
class PatternCheck:
    """Result of :func:`check_alias` (seed 003 §11 "Check pattern", Maintenance > Tools):
    ``succeeded`` when the pattern is valid and matches the alias; ``result`` the alias after
    the behaviour (None when it did not match or the pattern is invalid); ``detail`` the
    operator-facing sentence (why it failed, or what the behaviour did)."""

    succeeded: bool
    alias: str
    result: str | None
    detail: str


def check_alias(alias: str, pattern_type: str, pattern: str, behaviour: str = "leave", replace: str = "",
                local_domains: Iterable[str] = ()) -> PatternCheck:
    """Test one alias against one pattern offline, as a transform or search rule would apply
    it (:func:`apply_pattern`; ``%localdomains%`` expands to ``local_domains``). Never raises
    for str arguments: an invalid pattern or replace string is a failed check naming why."""
    if pattern_type not in PATTERN_TYPES:
        return PatternCheck(False, alias, None, f"unknown pattern type {pattern_type!r} (expected one of {', '.join(PATTERN_TYPES)})")
    if behaviour not in ("leave", "strip", "replace"):
        return PatternCheck(False, alias, None, f"unknown pattern behaviour {behaviour!r} (expected leave, strip or replace)")
    try:
        check_pattern(pattern_type, pattern, behaviour, replace)
    except ValueError as exc:
        return PatternCheck(False, alias, None, f"invalid pattern: it {exc}")
    try:
        out = apply_pattern(alias, pattern_type, pattern, behaviour, replace, local_domains)
    except (re.error, IndexError) as exc:
        return PatternCheck(False, alias, None, f"invalid replace string: {exc}")
    if out is None:
        anchor = {"exact": "the whole alias", "regex": "the whole alias", "prefix": "the start of the alias",
                  "suffix": "the end of the alias"}[pattern_type]
        return PatternCheck(False, alias, None, f"the {pattern_type} pattern does not match {anchor}")
    what = "alias left as it is" if behaviour == "leave" else f"alias becomes {out!r}"
    return PatternCheck(True, alias, out, f"matched; {what}")
