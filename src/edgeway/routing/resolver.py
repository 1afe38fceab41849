"""RFC 3263 "Locating SIP Servers": URI host → ordered list of (IP, port, transport).

Used by DNS zones (seed 003 §4.2) and anything else that sends to a SIP URI
whose host is a domain. All lookups go through a :class:`dns.asyncresolver.Resolver`
that the caller builds with :func:`make_resolver`; the system resolver and
``/etc/resolv.conf`` are never consulted.

The result is the *whole* ordered candidate list so the caller can fail over
to the next target on connect failure, timeout or 503 (RFC 3263 §4.3).
Nothing here raises for DNS failures or logs: an empty list means "could not
resolve hostname"; pass ``trace=[]`` to learn which queries were made and what
each returned (for the diagnostic event the caller emits).

The pure helpers :func:`order_srv` (RFC 2782 weighted selection) and
:func:`naptr_to_srv` (RFC 3263 §4.1) do no I/O.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Iterable, Sequence, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

__all__ = [
    "Target",
    "make_resolver",
    "order_srv",
    "naptr_to_srv",
    "resolve",
    "NAPTR_SERVICES",
    "SRV_PREFIX",
    "DEFAULT_PORTS",
]

#: NAPTR service field → our transport name (RFC 3263 §4.1, RFC 3261 §26.2.2).
NAPTR_SERVICES: dict[str, str] = {
    "SIPS+D2T": "tls",
    "SIP+D2T": "tcp",
    "SIP+D2U": "udp",
}
#: Transport → SRV owner-name prefix (RFC 3263 §4.1 last paragraph).
SRV_PREFIX: dict[str, str] = {
    "tls": "_sips._tcp",
    "tcp": "_sip._tcp",
    "udp": "_sip._udp",
}
#: Default ports when neither the URI nor SRV gives one (RFC 3261 §19.1.2).
DEFAULT_PORTS: dict[str, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}
#: SRV fallback order when there are no usable NAPTR records (most secure first).
SRV_FALLBACK_ORDER: tuple[str, ...] = ("tls", "tcp", "udp")


@dataclass(frozen=True)
class Target:
    """One place to send a request.

    Attributes:
        host: IP address literal (IPv6 without brackets).
        port: TCP/UDP port.
        transport: ``"udp"``, ``"tcp"`` or ``"tls"``.
        hostname: the DNS name this address came from (SRV target, or the URI
            host), without trailing dot; equals ``host`` for IP-literal URIs.
            Useful for SNI, logs and "Common-name=" in TLS error events.
    """

    host: str
    port: int
    transport: str
    hostname: str


# --------------------------------------------------------------------------- resolver


def make_resolver(
    nameservers: list[tuple[str, int]], timeout_s: float, *, cache: bool = False
) -> dns.asyncresolver.Resolver:
    """Build a stub resolver that talks only to ``nameservers``.

    Args:
        nameservers: ``[(ip, port), ...]``, e.g. ``[("127.0.0.1", 53053)]``.
        timeout_s: per-query lifetime in seconds (all retries and servers
            included); also the per-server timeout.
        cache: keep a TTL-honouring in-memory cache in the resolver.

    Returns:
        A :class:`dns.asyncresolver.Resolver` created with ``configure=False``
        (``/etc/resolv.conf`` is not read) and no search domains.

    Raises:
        ValueError: empty ``nameservers``, a non-IP address, or ``timeout_s <= 0``.
    """
    if not nameservers:
        raise ValueError("make_resolver: at least one nameserver is required")
    if timeout_s <= 0:
        raise ValueError(f"make_resolver: timeout_s must be > 0, got {timeout_s}")
    servers = []
    for ip, port in nameservers:
        ipaddress.ip_address(ip)  # raises ValueError for a hostname
        servers.append(dns.nameserver.Do53Nameserver(ip, int(port)))
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = servers
    r.search = []
    r.use_search_by_default = False
    r.lifetime = float(timeout_s)
    r.timeout = float(timeout_s)
    if cache:
        r.cache = dns.resolver.Cache()
    return r


# --------------------------------------------------------------------------- pure helpers

SrvTuple = TypeVar("SrvTuple", bound=Sequence)


def order_srv(records: Iterable[SrvTuple], rng: random.Random) -> list[SrvTuple]:
    """Order SRV records per RFC 2782 ("Usage rules").

    Args:
        records: ``(priority, weight, port, target)`` tuples (any sequence
            whose first two items are priority and weight).
        rng: source of randomness (seed it in tests).

    Returns:
        The same records, lowest priority first; within a priority, a
        weighted random permutation: repeatedly, the records not yet chosen
        (weight-0 ones placed first) get running weight sums, a number is
        drawn uniformly from ``0..sum`` inclusive, and the first record whose
        running sum is ≥ the number is taken. Weight-0 records are thus
        chosen last with high probability, but not never.
    """
    by_prio: dict[int, list[SrvTuple]] = {}
    for rec in records:
        by_prio.setdefault(int(rec[0]), []).append(rec)
    out: list[SrvTuple] = []
    for prio in sorted(by_prio):
        group = by_prio[prio]
        remaining = [r for r in group if int(r[1]) == 0] + [r for r in group if int(r[1]) != 0]
        while remaining:
            total = sum(int(r[1]) for r in remaining)
            pick = rng.randint(0, total)
            running = 0
            for i, rec in enumerate(remaining):
                running += int(rec[1])
                if running >= pick:
                    out.append(remaining.pop(i))
                    break
    return out


def naptr_to_srv(
    records: Iterable[Sequence],
    supported: Sequence[str] = ("SIPS+D2T", "SIP+D2T", "SIP+D2U"),
) -> list[tuple[str, str]]:
    """Select the NAPTR records that point at SIP SRV names (RFC 3263 §4.1).

    Args:
        records: ``(order, preference, flags, service, regexp, replacement)``
            tuples (strings; bytes are decoded), as in the zone-file form
            ``10 50 "s" "SIPS+D2T" "" _sips._tcp.example.com.``.
        supported: the service values we can use, e.g. only ``("SIPS+D2T",)``
            for a SIPS URI.

    Returns:
        ``[(transport, srv_name), ...]`` ordered by order then preference
        (both ascending; ties keep input order). Records are dropped when the
        flag is not ``S`` (RFC 3263 uses only terminal SRV rewrites), the
        service is not in ``supported``, or the replacement is empty / ``.``.
        ``srv_name`` has no trailing dot.
    """
    allowed = {s.upper() for s in supported}
    picked: list[tuple[int, int, int, str, str]] = []
    for idx, rec in enumerate(records):
        order, pref, flags, service, _regexp, replacement = rec[:6]
        flags_s = _text(flags).lower()
        service_s = _text(service).upper()
        repl = _text(replacement).rstrip(".")
        if flags_s != "s" or service_s not in allowed or not repl:
            continue
        transport = NAPTR_SERVICES.get(service_s)
        if transport is None:
            continue
        picked.append((int(order), int(pref), idx, transport, repl))
    picked.sort(key=lambda p: (p[0], p[1], p[2]))
    return [(t, name) for _o, _p, _i, t, name in picked]


def _text(v: object) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("ascii", "replace")
    if isinstance(v, dns.name.Name):
        return v.to_text(omit_final_dot=True)
    return str(v)


# --------------------------------------------------------------------------- resolve


class _Lookup:
    """One resolve() run: the resolver, the trace, and the give-up flag."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, trace: list | None) -> None:
        self.resolver = resolver
        self.trace = trace
        self.timed_out = False

    def _note(self, name: str, rdtype: str, outcome: str) -> None:
        if self.trace is not None:
            self.trace.append((name.rstrip("."), rdtype, outcome))

    async def query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """Answer with ≥1 record, or None. A timeout stops all later queries:
        the server is unreachable and waiting again would only delay failover."""
        if self.timed_out:
            return None
        try:
            qname = dns.name.from_text(name)
            ans = await self.resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            self._note(name, rdtype, "NXDOMAIN")
            return None
        except dns.exception.Timeout:
            self.timed_out = True
            self._note(name, rdtype, "timeout")
            return None
        except dns.resolver.NoNameservers:
            self._note(name, rdtype, "no answer from any nameserver (SERVFAIL/REFUSED)")
            return None
        except dns.exception.DNSException as exc:
            self._note(name, rdtype, f"error: {exc.__class__.__name__}")
            return None
        if ans.rrset is None or len(ans.rrset) == 0:
            self._note(name, rdtype, "no records")
            return None
        self._note(name, rdtype, f"{len(ans.rrset)} record(s)")
        return ans

    async def addresses(
        self, host: str, additional: Iterable | None, address_types: Sequence[str]
    ) -> list[str]:
        """A/AAAA of ``host``; uses additional-section records when present."""
        target = dns.name.from_text(host)
        out: list[str] = []
        if additional is not None:
            for want in address_types:
                t = dns.rdatatype.from_text(want)
                for rrset in additional:
                    if rrset.name == target and rrset.rdtype == t:
                        out.extend(rd.address for rd in rrset)
            if out:
                self._note(host, "/".join(address_types), f"{len(out)} from additional section")
                return out
        for want in address_types:
            ans = await self.query(host, want)
            if ans is not None:
                out.extend(rd.address for rd in ans.rrset)
        return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _dedupe(targets: Iterable[Target]) -> list[Target]:
    seen: set[tuple[str, int, str]] = set()
    out: list[Target] = []
    for t in targets:
        key = (t.host, t.port, t.transport)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


async def _srv_targets(
    lk: _Lookup, srv_name: str, transport: str, rng: random.Random, address_types: Sequence[str]
) -> tuple[bool, list[Target]]:
    """SRV lookup → ordered targets. ``found`` is True if any SRV record exists
    (including the RFC 2782 "." = service decidedly not available)."""
    ans = await lk.query(srv_name, "SRV")
    if ans is None:
        return False, []
    recs = [(rd.priority, rd.weight, rd.port, rd.target) for rd in ans.rrset]
    additional = ans.response.additional if ans.response is not None else None
    targets: list[Target] = []
    for _prio, _weight, port, target in order_srv(recs, rng):
        if target == dns.name.root:
            continue  # RFC 2782: "." means the service is not available here
        name = target.to_text()
        for ip in await lk.addresses(name, additional, address_types):
            targets.append(Target(ip, int(port), transport, name.rstrip(".")))
    return True, targets


async def _host_targets(
    lk: _Lookup, host: str, port: int, transport: str, address_types: Sequence[str]
) -> list[Target]:
    return [
        Target(ip, port, transport, host.rstrip("."))
        for ip in await lk.addresses(host, None, address_types)
    ]


def _select_transport(uri_transport: str | None, secure: bool) -> str | None:
    """URI transport parameter → our transport; None when absent, "" when unusable."""
    t = (uri_transport or "").strip().lower() or None
    if t is None:
        return None
    if secure:
        # RFC 3261 §26.2.2: sips:...;transport=tcp means TLS over TCP.
        return "tls" if t in ("tcp", "tls") else ""
    return t if t in DEFAULT_PORTS else ""


async def resolve(
    uri_host: str,
    uri_port: int | None,
    uri_transport: str | None,
    secure: bool,
    resolver: dns.asyncresolver.Resolver,
    *,
    default_transport: str = "tcp",
    rng: random.Random | None = None,
    srv_override_domain: str | None = None,
    address_types: Sequence[str] = ("A", "AAAA"),
    trace: list[tuple[str, str, str]] | None = None,
) -> list[Target]:
    """Resolve a SIP URI's host part to an ordered list of targets (RFC 3263 §4).

    Args:
        uri_host: host of the Request-URI (domain, IPv4, or ``[IPv6]``).
        uri_port: explicit URI port or ``None``.
        uri_transport: the URI's ``transport`` parameter (``udp``/``tcp``/
            ``tls``) or ``None``.
        secure: the URI is ``sips:``; only TLS targets are returned
            (``SIPS+D2T`` NAPTRs, ``_sips._tcp`` SRV).
        resolver: from :func:`make_resolver`.
        default_transport: transport when nothing else decides it (IP
            literal, explicit port, or A-record fallback on a ``sip:`` URI).
            RFC 3263 says UDP; Edgeway prefers TCP.
        rng: randomness for SRV weights (RFC 2782); seed it for repeatability.
        srv_override_domain: seed 003 §4.2 "Modify DNS request": ignore the
            URI host/port/transport and make exactly one SRV query,
            ``_sips._tcp.<domain>``, then A/AAAA of its targets; no NAPTR and
            no A fallback. The Request-URI itself is not changed (caller's job).
        address_types: which address records to use, in order of preference.
        trace: if a list is given, ``(name, type, outcome)`` is appended per
            query (outcome e.g. ``"2 record(s)"``, ``"NXDOMAIN"``,
            ``"timeout"``), for diagnostics.

    Returns:
        Targets in the order to try them; duplicates removed. Steps:

        1. IP literal → one target; port = ``uri_port`` or 5060 (5061 for TLS).
        2. Explicit port → A/AAAA of the host with that port (§4.2).
        3. Transport parameter given → SRV for that transport (§4.2), else 4.
        4. NAPTR of the host (§4.1), keeping supported ``S`` records in
           order/preference order → SRV of each replacement. With no usable
           NAPTR: SRV ``_sips._tcp``, ``_sip._tcp``, ``_sip._udp`` in that
           order (only ``_sips._tcp`` when ``secure``), all concatenated.
        5. SRV records ordered by :func:`order_srv`; each target's A/AAAA
           (additional section used when present) gives one target per address.
        6. No SRV at all → A/AAAA of the host with the default port (§4.2).
           An SRV answer of only ``.`` (RFC 2782) means "no service": no fallback.

        ``[]`` when nothing resolves (NXDOMAIN, no records, REFUSED, timeout)
        or when the transport parameter is unusable (e.g. ``sips`` with
        ``transport=udp``). A timeout ends the run: targets found so far are
        returned and no further queries are made.

    Raises:
        Nothing for DNS outcomes. ``ValueError`` for an unknown
        ``default_transport``.
    """
    if default_transport not in DEFAULT_PORTS:
        raise ValueError(f"resolve: default_transport {default_transport!r} not in {sorted(DEFAULT_PORTS)}")
    rng = rng if rng is not None else random.Random()
    lk = _Lookup(resolver, trace)
    if srv_override_domain:
        return await _modify_dns_request(lk, srv_override_domain, rng, address_types)
    host = uri_host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    transport = _select_transport(uri_transport, secure)
    if not host or transport == "":
        return []
    implied = transport or ("tls" if secure else default_transport)
    if _is_ip(host):
        return [Target(host, int(uri_port) if uri_port else DEFAULT_PORTS[implied], implied, host)]
    fqdn = host.rstrip(".") + "."
    if uri_port:
        return _dedupe(await _host_targets(lk, fqdn, int(uri_port), implied, address_types))
    if transport is not None:
        return await _transport_srv_then_host(lk, fqdn, transport, rng, address_types)
    any_srv, targets = await _naptr_srv(lk, fqdn, secure, rng, address_types)
    if not targets and not any_srv:
        any_srv, targets = await _fallback_srv(lk, fqdn, secure, rng, address_types)
    if any_srv:
        return _dedupe(targets)
    return _dedupe(await _host_targets(lk, fqdn, DEFAULT_PORTS[implied], implied, address_types))


async def _modify_dns_request(lk: _Lookup, domain: str, rng: random.Random, address_types: Sequence[str]) -> list[Target]:
    """Seed 003 §4.2 "Modify DNS request": exactly one ``_sips._tcp.<domain>`` SRV query."""
    domain = domain.strip().rstrip(".")
    _found, targets = await _srv_targets(lk, f"{SRV_PREFIX['tls']}.{domain}.", "tls", rng, address_types)
    return _dedupe(targets)


async def _transport_srv_then_host(lk: _Lookup, fqdn: str, transport: str, rng: random.Random,
                                   address_types: Sequence[str]) -> list[Target]:
    """Step 3 (RFC 3263 §4.2): SRV for the URI's transport, else A/AAAA of the host."""
    found, targets = await _srv_targets(lk, f"{SRV_PREFIX[transport]}.{fqdn}", transport, rng, address_types)
    if found:
        return _dedupe(targets)
    return _dedupe(await _host_targets(lk, fqdn, DEFAULT_PORTS[transport], transport, address_types))


async def _naptr_srv(lk: _Lookup, fqdn: str, secure: bool, rng: random.Random,
                     address_types: Sequence[str]) -> tuple[bool, list[Target]]:
    """Step 4 (RFC 3263 §4.1): NAPTR of the host → SRV of each supported replacement;
    (whether any SRV record exists, targets)."""
    supported = ("SIPS+D2T",) if secure else tuple(NAPTR_SERVICES)
    naptr = await lk.query(fqdn, "NAPTR")
    srv_names: list[tuple[str, str]] = []
    if naptr is not None:
        srv_names = naptr_to_srv(
            [(rd.order, rd.preference, rd.flags, rd.service, rd.regexp, rd.replacement) for rd in naptr.rrset],
            supported,
        )
    return await _srv_each(lk, [(t, srv_name + ".") for t, srv_name in srv_names], rng, address_types)


async def _fallback_srv(lk: _Lookup, fqdn: str, secure: bool, rng: random.Random,
                        address_types: Sequence[str]) -> tuple[bool, list[Target]]:
    """Step 4 without a usable NAPTR: ``_sips._tcp``, ``_sip._tcp``, ``_sip._udp`` (only
    ``_sips._tcp`` when ``secure``), all concatenated."""
    order = ("tls",) if secure else SRV_FALLBACK_ORDER
    return await _srv_each(lk, [(t, f"{SRV_PREFIX[t]}.{fqdn}") for t in order], rng, address_types)


async def _srv_each(lk: _Lookup, names: list[tuple[str, str]], rng: random.Random,
                    address_types: Sequence[str]) -> tuple[bool, list[Target]]:
    any_srv = False
    targets: list[Target] = []
    for t, name in names:
        found, ts = await _srv_targets(lk, name, t, rng, address_types)
        any_srv = any_srv or found
        targets.extend(ts)
    return any_srv, targets
