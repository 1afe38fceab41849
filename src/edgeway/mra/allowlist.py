"""The HTTP allow list of the core (seed 002 §8.5–§8.8; issue 9 item 3). Pure: no I/O, no clock.

A proxied request ``/<base64(domain)>/<http|https>/<host>/<port>/<path…>`` is decoded by
:func:`parse_proxied_path`, then :meth:`AllowList.check` decides on the **normalised** URL
(:func:`edgeway._httpurl.normalise_url`) and hands back the one URL the caller may forward.

Matching semantics (seed 002 §8.6–§8.8, catalogue §8.8 "inferred semantics"): a request is
allowed when some rule of the request's deployment has the same scheme, host and effective
port, its path equals the request path (``exact``) or is a **plain string prefix** of it
(``prefix``), and its methods contain the request method. Both sides are in canonical form,
so the comparison is a plain string comparison of ``scheme://host:port/path`` (the query
takes no part). Prefix is a string prefix, as the seed says ("you can use a partial path";
``/myPa`` allows ``/myPath1``, and ``/foo`` allows ``/foobar``): end a rule's path with ``/``
to limit it to one directory. No normalisation trick can leave the prefix: dot segments are
resolved, encoded separators refused, before the comparison, and the compared string is the
one forwarded.

Statuses: 200 allowed; 400 the target cannot be normalised (see :class:`TargetError`);
403 blocked, whether no rule covers the URL or the method is not allowed (seed 002 §21:
a blocked request is "403 Forbidden"; 405 would tell an outsider that the resource exists).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from edgeway._httpurl import DEFAULT_PORTS, NormalisedUrl, TargetError, normalise_url
from edgeway.config.models import DEFAULT_DEPLOYMENT

if TYPE_CHECKING:
    from edgeway.config.models import MraConfig

__all__ = [
    "DEFAULT_DEPLOYMENT", "DEFAULT_METHODS", "SERVER_TYPES", "AUTOMATIC_RULES",
    "AllowRule", "AllowList", "Decision", "ProxiedTarget", "TargetError", "RuleError",
    "parse_proxied_path", "parse_rule_url", "is_method_token", "automatic_rules",
]

#: The global default method set. The seed does not list the factory defaults; GET alone is the
#: narrowest set that lets the seed's examples give their stated results (§8.8: the "use defaults"
#: rule ``https://myServer4/myPath4`` allows GET and blocks POST; catalogue §23.23, §23.25).
DEFAULT_METHODS: tuple[str, ...] = ("GET",)

MatchType = Literal["exact", "prefix"]
ServerType = Literal["call_control", "presence", "voicemail", "tftp"]

#: Internal server types with automatic inbound rules (seed 002 §8.5 Table 3: Unified CM servers,
#: IM and Presence Service nodes, Unity Connection servers, TFTP).
SERVER_TYPES: tuple[str, ...] = ("call_control", "presence", "voicemail", "tftp")

#: Automatic inbound rule templates per server type: ``(scheme, port, path, match, methods)``.
#: The guide names the services and ports (seed 002 §8.3: UDS on UCM 8443, SOAP on IM&P 8443,
#: configuration files over HTTP 6970 / HTTPS 6972, visual voicemail on CUC 443) but not the rule
#: contents (catalogue §22 "GUIDE SILENT"); these paths and methods are Edgeway's choice.
AUTOMATIC_RULES: dict[str, tuple[tuple[str, int, str, MatchType, tuple[str, ...]], ...]] = {
    "call_control": (("https", 8443, "/cucm-uds/", "prefix", ("GET",)),),
    "presence": (("https", 8443, "/", "prefix", ("GET", "POST")),),
    "voicemail": (("https", 443, "/vmrest/", "prefix", ("GET", "POST", "PUT", "DELETE")),),
    "tftp": (("http", 6970, "/", "prefix", ("GET",)), ("https", 6972, "/", "prefix", ("GET",))),
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_method_token(method: str) -> bool:
    """True when ``method`` is an RFC 9110 §9.1 method token (methods are case-sensitive)."""
    return bool(_TOKEN.fullmatch(method))


class RuleError(ValueError):
    """A rule that cannot be built (bad URL, method, match type) or an edit the list refuses
    (changing or deleting an automatic rule, an unknown deployment). ``reason`` says which."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def parse_rule_url(url: str) -> NormalisedUrl:
    """Parse a rule's Url, ``protocol://host[:port][/path]`` (seed 002 §8.7 Table 6): scheme
    http/https, DNS name or IP host, port 0–65535 defaulting to 80/443, optional path. No
    user-info, query or fragment. Returns the canonical form; raises :class:`RuleError`."""
    try:
        norm = normalise_url(url.strip(), allow_port_zero=True)
    except TargetError as exc:
        raise RuleError(exc.reason) from None
    if "?" in url:
        raise RuleError("a rule's URL has no query")
    return norm


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One inbound allow-list rule (seed 002 §8.5 automatic, §8.6 editable).

    ``scheme``/``host``/``port``/``path`` are canonical (build from text with
    :meth:`from_url`); ``path`` is ``/`` when the rule's URL has none. ``methods`` None means
    "use defaults" (the list's :attr:`AllowList.default_methods` at check time). ``automatic``
    rules are generated from internal servers (``server_type`` says which) and cannot be
    edited or deleted."""

    scheme: str
    host: str
    port: int
    path: str = "/"
    match: MatchType = "prefix"
    methods: frozenset[str] | None = None
    deployment: str = DEFAULT_DEPLOYMENT
    description: str = ""
    automatic: bool = False
    server_type: str | None = None

    @classmethod
    def from_url(cls, url: str, *, match: str = "prefix", methods: Iterable[str] | None = None,
                 deployment: str = DEFAULT_DEPLOYMENT, description: str = "") -> AllowRule:
        """An editable rule from its Url text (:func:`parse_rule_url`); ``methods`` None =
        use defaults, otherwise RFC 9110 method tokens (at least one). Raises :class:`RuleError`."""
        norm = parse_rule_url(url)
        if match not in ("exact", "prefix"):
            raise RuleError(f"match type {match!r} must be exact or prefix")
        chosen = None if methods is None else _methods(methods)
        return cls(norm.scheme, norm.host, norm.port, norm.path, match, chosen, deployment, description)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """Canonical ``scheme://host:port/path``: what a request's normalised URL (query
        removed) must equal (exact) or start with (prefix)."""
        return NormalisedUrl(self.scheme, self.host, self.port, self.path).base

    @property
    def label(self) -> str:
        """Description, or the URL when there is none (for :attr:`Decision.rule`)."""
        return self.description or self.url

    def covers(self, base: str) -> bool:
        """Whether the rule's URL matches a canonical ``scheme://host:port/path``."""
        return base == self.url if self.match == "exact" else base.startswith(self.url)


def _methods(methods: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(m.strip() for m in methods if m.strip())
    if not chosen:
        raise RuleError("choose at least one method (or use defaults)")
    for m in sorted(chosen):
        if not is_method_token(m):
            raise RuleError(f"method {m!r} is not an HTTP method token")
        if m != m.upper():
            raise RuleError(f"method {m!r}: HTTP methods are case-sensitive, write {m.upper()!r}")
    return chosen


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request. ``status`` 200 (allowed), 403 (blocked) or 400 (cannot be
    normalised). ``rule`` labels the allowing rule (description or URL), or the rule whose
    method set refused the request; None otherwise. ``url`` is the normalised URL (None on
    400): when ``allowed``, the only URL the caller may forward."""

    allowed: bool
    status: int
    reason: str
    rule: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class ProxiedTarget:
    """A decoded MRA proxied path: ``domain`` (lower-case, from base64), normalised
    ``scheme``/``host``/``port``/``path`` and the ``query`` (``""`` when absent)."""

    domain: str
    scheme: str
    host: str
    port: int
    path: str
    query: str = ""

    @property
    def url(self) -> str:
        """The internal URL in canonical form (give it to :meth:`AllowList.check`)."""
        return NormalisedUrl(self.scheme, self.host, self.port, self.path, self.query).url


_B64 = re.compile(r"[A-Za-z0-9+/\-_]+={0,2}")
_DOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def parse_proxied_path(raw_path: str) -> ProxiedTarget:
    """Decode an MRA request target ``/<base64(domain)>/<http|https>/<host>/<port>[/<path…>][?query]``
    (origin-form, as sent to the edge's HTTPS listener; catalogue §22 [EXTERNAL]).

    The domain segment may be percent-encoded (``%3D`` padding) and uses the standard or
    URL-safe base64 alphabet, padding optional; it must decode to an ASCII DNS name. The
    scheme is ``http``/``https`` in any case; the host a DNS name, dotted-quad IPv4 or IPv6
    (bracketed or bare); the port 1–65535 in ASCII digits without leading zeros. The rest is
    the path, normalised by :func:`edgeway._httpurl.normalise_url` (it can never change the
    host or port: they are fixed segments before it).

    Raises :class:`TargetError` (the caller answers 400) for an absolute-form or ``*`` target,
    missing segments, bad base64, a bad domain, scheme, host or port, and every path the
    normaliser refuses."""
    if not isinstance(raw_path, str) or not raw_path.isascii():
        raise TargetError("request target contains non-ASCII characters")
    if not raw_path.startswith("/"):
        raise TargetError("request target must be origin-form: /<base64(domain)>/<scheme>/<host>/<port>/<path>")
    path, qmark, query = raw_path.partition("?")
    parts = path.split("/", 5)
    if len(parts) < 5:
        raise TargetError("request target needs /<base64(domain)>/<http|https>/<host>/<port>")
    _, b64, scheme, host, port = parts[:5]
    rest = "/" + parts[5] if len(parts) == 6 else "/"
    domain = _domain(b64)
    if scheme.lower() not in DEFAULT_PORTS:
        raise TargetError(f"scheme segment {scheme!r} is not http or https")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if not port:
        raise TargetError("empty port segment")
    if ":" in port or "@" in host or "/" in host:
        raise TargetError("host or port segment contains ':' or '@'")
    norm = normalise_url(f"{scheme}://{host}:{port}{rest}{qmark}{query}")
    return ProxiedTarget(domain, norm.scheme, norm.host, norm.port, norm.path, norm.query)


def _domain(segment: str) -> str:
    text = segment.replace("%3D", "=").replace("%3d", "=")
    if not _B64.fullmatch(text):
        raise TargetError("domain segment is not base64")
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise TargetError("domain segment is not valid base64") from None
    try:
        domain = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        raise TargetError("domain is not ASCII") from None
    if not _DOMAIN.fullmatch(domain):
        raise TargetError(f"decoded domain {domain!r} is not a DNS name")
    return domain


@dataclass
class AllowList:
    """The core's inbound HTTP allow list: automatic and editable rules, the global default
    method set and the deployments (``DEFAULT_DEPLOYMENT`` always first). Rules keep their
    order; the first rule covering the URL *and* allowing the method decides."""

    rules: list[AllowRule] = field(default_factory=list)
    default_methods: frozenset[str] = frozenset(DEFAULT_METHODS)
    deployments: tuple[str, ...] = (DEFAULT_DEPLOYMENT,)

    def __post_init__(self) -> None:
        self.default_methods = _methods(self.default_methods) if self.default_methods else frozenset()
        names = [DEFAULT_DEPLOYMENT] + [d for d in self.deployments if d != DEFAULT_DEPLOYMENT]
        self.deployments = tuple(dict.fromkeys(names))

    # ---- building -----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, mra: MraConfig) -> AllowList:
        """The allow list of an ``[mra]`` section: automatic rules for each internal server
        (:data:`AUTOMATIC_RULES`) in the server's deployment, then the editable ``allow_rules``
        in file order, each in its deployment (seed 002 §3, §8.5–§8.6)."""
        out = cls(default_methods=frozenset(mra.default_methods), deployments=tuple(mra.deployment_names))
        for server in mra.internal_servers:
            out.rules += automatic_rules(server.type, server.host, ports=server.ports, scheme=server.scheme,
                                         deployment=server.deployment)
        for r in mra.allow_rules:
            out.add(AllowRule.from_url(r.url, match=r.match, methods=r.methods, deployment=r.deployment,
                                       description=r.description))
        return out

    def add(self, rule: AllowRule) -> None:
        """Append an editable rule. Raises :class:`RuleError` for an automatic rule (seed 002
        §8.6: inbound rules can be added, automatic ones are generated) or an unknown deployment."""
        if rule.automatic:
            raise RuleError("automatic rules are generated from internal servers, not added")
        if rule.deployment not in self.deployments:
            raise RuleError(f"deployment {rule.deployment!r} does not exist")
        self.rules.append(rule)

    def remove(self, rule: AllowRule) -> None:
        """Delete an editable rule; :class:`RuleError` for an automatic one (seed 002 §8.5)."""
        if rule.automatic:
            raise RuleError("automatic rules cannot be deleted")
        self.rules.remove(rule)

    def replace_rule(self, old: AllowRule, new: AllowRule) -> None:
        """Edit an editable rule in place; :class:`RuleError` for an automatic one (seed 002 §8.5)."""
        if old.automatic or new.automatic:
            raise RuleError("automatic rules cannot be edited")
        if new.deployment not in self.deployments:
            raise RuleError(f"deployment {new.deployment!r} does not exist")
        self.rules[self.rules.index(old)] = new

    def set_default_methods(self, methods: Iterable[str]) -> None:
        """Replace the global default method set; every "use defaults" rule follows (seed 002
        §8.6). An empty set is allowed (the most secure setup: methods per rule)."""
        methods = list(methods)
        self.default_methods = _methods(methods) if methods else frozenset()

    def methods_of(self, rule: AllowRule) -> frozenset[str]:
        """The methods ``rule`` allows now (its own, or the current defaults)."""
        return self.default_methods if rule.methods is None else rule.methods

    # ---- deciding -----------------------------------------------------------------------------

    def check(self, method: str, target: str, deployment: str = DEFAULT_DEPLOYMENT) -> Decision:
        """Decide whether ``method`` on the internal URL ``target`` (absolute
        ``http(s)://host[:port][/path][?query]``, e.g. :attr:`ProxiedTarget.url`) is allowed for
        clients of ``deployment``. Never raises for str arguments: a target that cannot be
        normalised gives status 400 and ``url`` None."""
        try:
            norm = normalise_url(target)
        except TargetError as exc:
            return Decision(False, 400, f"cannot normalise target: {exc.reason}")
        if deployment not in self.deployments:
            return Decision(False, 403, f"unknown deployment {deployment!r}", url=norm.url)
        base, refused = norm.base, None
        for rule in self.rules:
            if rule.deployment != deployment or not rule.covers(base):
                continue
            if method in self.methods_of(rule):
                return Decision(True, 200, f"allowed by {rule.match} rule {rule.url}", rule.label, norm.url)
            refused = refused or rule
        if refused is not None:
            return Decision(False, 403, f"method {method!r} not allowed by rule {refused.url}", refused.label, norm.url)
        return Decision(False, 403, f"no rule of deployment {deployment!r} allows {base}", url=norm.url)

    def check_proxied(self, method: str, raw_path: str, deployment: str = DEFAULT_DEPLOYMENT) -> Decision:
        """:func:`parse_proxied_path` then :meth:`check`; a malformed path gives status 400."""
        try:
            target = parse_proxied_path(raw_path)
        except TargetError as exc:
            return Decision(False, 400, f"cannot decode proxied path: {exc.reason}")
        return self.check(method, target.url, deployment)


def automatic_rules(server_type: str, host: str, *, ports: Iterable[int] = (), scheme: str | None = None,
                    deployment: str = DEFAULT_DEPLOYMENT) -> list[AllowRule]:
    """The automatic inbound rules for one internal server (:data:`AUTOMATIC_RULES`). With
    ``ports``, each template's path and methods apply on those ports instead, with ``scheme``
    (default: the type's first template's scheme). Raises :class:`RuleError` for a bad host."""
    templates = AUTOMATIC_RULES[server_type]
    ports = list(ports)
    if ports:
        sch = scheme or templates[0][0]
        templates = tuple((sch, p, path, m, meth) for p in ports for _, _, path, m, meth in templates[:1])
    out = []
    for sch, port, path, match, methods in templates:
        rule = AllowRule.from_url(f"{sch}://{_bracket(host)}:{port}{path}", match=match, methods=methods,
                                  deployment=deployment, description=f"automatic: {server_type} {host}")
        out.append(replace(rule, automatic=True, server_type=server_type))
    return out


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
