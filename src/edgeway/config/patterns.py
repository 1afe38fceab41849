"""Alias pattern syntax shared by transforms, search rules and call policy (seed 003
§6): compiling and checking a pattern of type exact / prefix / suffix / regex with the
``%localdomains%`` macro.

It lives with the configuration because validating a configuration needs it; the
routing engine (:mod:`edgeway.routing.transforms`) applies the compiled patterns.
Pure functions; compiled patterns are cached.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from edgeway._ascii import ascii_uint

__all__ = ["LOCALDOMAINS", "PATTERN_TYPES", "expand_localdomains", "compile_pattern", "check_pattern"]

LOCALDOMAINS = "%localdomains%"
_MACRO = re.compile(re.escape(LOCALDOMAINS), re.IGNORECASE)
_GROUP_REF = re.compile(r"\\(?:([0-9]+)|g<([^>]*)>)")
PATTERN_TYPES = ("exact", "prefix", "suffix", "regex")


def _domains_alternation(local_domains: Iterable[str]) -> str:
    doms = [re.escape(d) for d in local_domains if d]
    return "(?:" + "|".join(doms) + ")" if doms else "(?!)"


def expand_localdomains(pattern: str, local_domains: Iterable[str]) -> str:
    """Return the regex ``pattern`` with every ``%localdomains%`` replaced by
    ``(?:dom1|dom2…)`` (escaped domains; ``(?!)`` if there are none)."""
    alt = _domains_alternation(local_domains)
    return _MACRO.sub(lambda _m: alt, pattern)


@functools.lru_cache(maxsize=1024)
def _compile(pattern_type: str, pattern: str, domains: tuple[str, ...]) -> re.Pattern[str]:
    if pattern_type == "regex":
        body = expand_localdomains(pattern, domains)
    elif pattern_type in ("exact", "prefix", "suffix"):
        alt = _domains_alternation(domains)
        body = alt.join(re.escape(part) for part in _MACRO.split(pattern))
        if pattern_type == "suffix":
            body = f"(?:{body})\\Z"
    else:
        raise ValueError(f"unknown pattern type {pattern_type!r}; expected one of {PATTERN_TYPES}")
    return re.compile(body, re.IGNORECASE)


def compile_pattern(pattern_type: str, pattern: str, local_domains: Iterable[str] = ()) -> re.Pattern[str]:
    """Compile (cached) a pattern of any type into a case-insensitive regex.

    Raises ``re.error`` for a bad regex and ``ValueError`` for an unknown type.
    Use :func:`match_pattern` to match with the right anchoring."""
    return _compile(pattern_type, pattern, tuple(local_domains))


def check_pattern(pattern_type: str, pattern: str, behaviour: str = "leave", replace: str = "") -> None:
    """Validate a pattern (and, for regex ``replace``, its group references).

    Used by the config models. Raises ``ValueError`` with a short rule text,
    e.g. ``"must be a valid regular expression (missing ), unterminated
    subpattern at position 0)"``."""
    try:
        rx = compile_pattern(pattern_type, pattern, ("example.com",))
    except re.error as exc:
        raise ValueError(f"must be a valid regular expression ({exc})") from None
    if pattern_type != "regex" or behaviour != "replace":
        return
    for num, name in _GROUP_REF.findall(replace):
        if num and ascii_uint(num, rx.groups) is None:
            raise ValueError(f"refers to group \\{num} but the pattern has {rx.groups} group(s)")
        if name and ascii_uint(name, rx.groups) is None and name not in rx.groupindex:
            raise ValueError(f"refers to unknown group <{name}>")
