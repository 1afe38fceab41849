"""The allow-list CSV files of seed 002 §8.7 (rules, Table 6) and §8.8 (tests, Table 7). Pure: text in, rows out.

Rules file, header exactly ``Url,Deployment,HttpMethods,MatchType,Description``:

* ``Url`` (required) ``protocol://host[:port][/path]``: http or https, DNS name or IP host,
  port 0–65535 (default 80/443), optional path (:func:`~edgeway.mra.allowlist.parse_rule_url`).
* ``Deployment`` (optional): required when more than one deployment exists, else empty
  (the default deployment); must name an existing deployment.
* ``HttpMethods`` (optional): comma-delimited, usually quoted (``"GET, PUT"``); empty = use
  the default methods.
* ``MatchType`` (optional): ``exact`` or ``prefix``; empty = ``prefix``.
* ``Description`` (optional), quoted when it has spaces.

Tests file, header exactly ``Url,ExpectedResult,Deployment,Description,HttpMethod``:
``Url`` (required, same grammar, a query allowed), ``ExpectedResult`` (required) ``allow`` or
``block``, ``Deployment`` (optional, default: the default deployment), ``Description``
(optional), ``HttpMethod`` (optional, exactly one method, default ``GET``).

Both: one row per line, commas between fields, double quotes around values with spaces or
commas (RFC 4180 quoting, :mod:`csv`); a UTF-8 BOM, blank lines and spaces after a comma are
ignored; trailing optional fields may be left out; more than five fields is an error. A bad
header is an error for the whole file (:class:`CsvFormatError`); a bad row is reported for
that row and the others still count.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgeway._httpurl import TargetError, normalise_url
from edgeway.mra.allowlist import DEFAULT_DEPLOYMENT, AllowList, AllowRule, Decision, RuleError, is_method_token

__all__ = [
    "RULES_HEADER", "TESTS_HEADER", "CsvFormatError", "RuleRow", "TestRow", "TestOutcome",
    "read_rules_csv", "read_tests_csv", "run_tests", "rules_to_toml", "deployments_named",
]

#: Column names of the rules file, in the required order (seed 002 §8.7 Table 6).
RULES_HEADER = ("Url", "Deployment", "HttpMethods", "MatchType", "Description")
#: Column names of the tests file, in the required order (seed 002 §8.8 Table 7).
TESTS_HEADER = ("Url", "ExpectedResult", "Deployment", "Description", "HttpMethod")


class CsvFormatError(ValueError):
    """The file as a whole is unusable (missing or wrong header, not CSV)."""


@dataclass(frozen=True, slots=True)
class RuleRow:
    """One data row of a rules file: ``line`` (1-based line number in the file), ``rule``
    when the row is valid, else None and ``reason`` says why."""

    line: int
    fields: tuple[str, ...]
    rule: AllowRule | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.rule is not None


@dataclass(frozen=True, slots=True)
class TestRow:
    """One data row of a tests file. ``error`` is non-empty when the row itself is invalid
    (then the other fields may be defaults)."""

    __test__ = False  # not a pytest class

    line: int
    url: str
    expected: str = "block"
    deployment: str = DEFAULT_DEPLOYMENT
    description: str = ""
    method: str = "GET"
    error: str = ""


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """A test row run against an allow list: ``passed`` when the decision (allowed → ``allow``,
    blocked or 400 → ``block``) equals the expected result; ``decision`` None for an invalid row."""

    __test__ = False

    test: TestRow
    decision: Decision | None
    passed: bool
    reason: str


def _rows(text: str, header: Sequence[str]) -> list[tuple[int, tuple[str, ...]]]:
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    out: list[tuple[int, tuple[str, ...]]] = []
    got_header = False
    try:
        for row in reader:
            if not any(f.strip() for f in row):
                continue
            cells = tuple(f.strip() for f in row)
            if not got_header:
                if cells != tuple(header):
                    raise CsvFormatError(f"line {reader.line_num}: the first line must be the header "
                                         f"{','.join(header)} (got {','.join(cells)})")
                got_header = True
                continue
            out.append((reader.line_num, cells))
    except csv.Error as exc:
        raise CsvFormatError(f"line {reader.line_num}: not valid CSV: {exc}") from None
    if not got_header:
        raise CsvFormatError(f"empty file: the first line must be the header {','.join(header)}")
    return out


def deployments_named(text: str, header: Sequence[str], column: str) -> list[str]:
    """Non-empty values of ``column`` in a CSV file with ``header``, in first-seen order
    (to infer the deployments when no node configuration is given). Raises :class:`CsvFormatError`."""
    idx = list(header).index(column)
    names = [cells[idx] for _, cells in _rows(text, header) if len(cells) > idx and cells[idx]]
    return list(dict.fromkeys(names))


def read_rules_csv(text: str, deployments: Sequence[str] = (DEFAULT_DEPLOYMENT,)) -> list[RuleRow]:
    """Parse a rules file (module docstring). ``deployments`` are the existing deployment
    names (the default deployment is always added). Raises :class:`CsvFormatError` for the
    header; every data row comes back as a :class:`RuleRow`, valid or with its reason."""
    known = list(dict.fromkeys([DEFAULT_DEPLOYMENT, *deployments]))
    out = []
    for line, cells in _rows(text, RULES_HEADER):
        try:
            out.append(RuleRow(line, cells, _rule_row(cells, known)))
        except RuleError as exc:
            out.append(RuleRow(line, cells, None, exc.reason))
    return out


def _rule_row(cells: tuple[str, ...], known: list[str]) -> AllowRule:
    if len(cells) > len(RULES_HEADER):
        raise RuleError(f"{len(cells)} fields; a rule has at most {len(RULES_HEADER)} ({','.join(RULES_HEADER)})")
    url, deployment, methods, match, description = cells + ("",) * (len(RULES_HEADER) - len(cells))
    if not url:
        raise RuleError("Url is required")
    if not deployment:
        if len(known) > 1:
            raise RuleError(f"Deployment is required when there is more than one deployment ({', '.join(known)})")
        deployment = DEFAULT_DEPLOYMENT
    elif deployment not in known:
        raise RuleError(f"Deployment {deployment!r} does not exist (known: {', '.join(known)})")
    match_type = match.lower() or "prefix"
    if match_type not in ("exact", "prefix"):
        raise RuleError(f"MatchType {match!r} must be exact or prefix")
    chosen = [m.strip() for m in methods.split(",")] if methods else None
    if chosen is not None and not all(chosen):
        raise RuleError(f"HttpMethods {methods!r} has an empty method")
    return AllowRule.from_url(url, match=match_type, methods=chosen, deployment=deployment, description=description)


def read_tests_csv(text: str, deployments: Sequence[str] = (DEFAULT_DEPLOYMENT,)) -> list[TestRow]:
    """Parse a tests file (module docstring). A row naming a deployment not in
    ``deployments`` (plus the default) is an invalid row. Raises :class:`CsvFormatError`."""
    known = set(deployments) | {DEFAULT_DEPLOYMENT}
    out = []
    for line, cells in _rows(text, TESTS_HEADER):
        if len(cells) > len(TESTS_HEADER):
            out.append(TestRow(line, cells[0], error=f"{len(cells)} fields; a test has at most {len(TESTS_HEADER)}"))
            continue
        url, expected, deployment, description, method = cells + ("",) * (len(TESTS_HEADER) - len(cells))
        error = ""
        if not url:
            error = "Url is required"
        elif expected.lower() not in ("allow", "block"):
            error = f"ExpectedResult {expected!r} must be allow or block"
        elif deployment and deployment not in known:
            error = f"Deployment {deployment!r} does not exist"
        elif method and not is_method_token(method):
            error = f"HttpMethod {method!r} must be exactly one HTTP method"
        else:
            try:
                normalise_url(url)
            except TargetError as exc:
                if "://" not in url or url.split("://", 1)[0].lower() not in ("http", "https"):
                    error = f"Url {url!r}: {exc.reason}"
        out.append(TestRow(line, url, expected.lower() or "block", deployment or DEFAULT_DEPLOYMENT,
                           description, method or "GET", error))
    return out


def run_tests(allow_list: AllowList, tests: Iterable[TestRow]) -> list[TestOutcome]:
    """Run each test against ``allow_list`` (:meth:`AllowList.check`). A URL the proxy would
    refuse with 400 counts as ``block``; an invalid row fails."""
    out = []
    for t in tests:
        if t.error:
            out.append(TestOutcome(t, None, False, t.error))
            continue
        d = allow_list.check(t.method, t.url, t.deployment)
        got = "allow" if d.allowed else "block"
        verdict = "as expected" if got == t.expected else f"expected {t.expected}"
        out.append(TestOutcome(t, d, got == t.expected, f"{got} ({d.status}: {d.reason}); {verdict}"))
    return out


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def rules_to_toml(rules: Iterable[AllowRule], deployments: Sequence[str] | None = None) -> str:
    """The rules as ``[[mra.allow_rules]]`` tables for a node configuration (URL in canonical
    form; ``methods`` left out for "use defaults", ``deployment`` for the default one). With
    ``deployments``, an ``[mra]`` table listing the non-default ones comes first."""
    lines: list[str] = []
    if deployments is not None:
        extra = [d for d in dict.fromkeys(deployments) if d != DEFAULT_DEPLOYMENT]
        lines += ["[mra]", f"deployments = [{', '.join(_toml(d) for d in extra)}]", ""]
    for r in rules:
        lines += ["[[mra.allow_rules]]", f"url = {_toml(r.url)}", f"match = {_toml(r.match)}"]
        if r.methods is not None:
            lines.append(f"methods = [{', '.join(_toml(m) for m in sorted(r.methods))}]")
        if r.deployment != DEFAULT_DEPLOYMENT:
            lines.append(f"deployment = {_toml(r.deployment)}")
        if r.description:
            lines.append(f"description = {_toml(r.description)}")
        lines.append("")
    return "\n".join(lines)
