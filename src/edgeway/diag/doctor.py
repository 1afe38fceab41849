"""``edgeway doctor``: check a node, its peers and the network, and say what is wrong in
operator words (issue 11 item 5). Each :class:`Finding` is one line: what was checked, a
verdict, the cause and the fix. Seed 002 §21 and seed 003 §12.4 (symptom → cause → fix)
are the reference; the rows a check covers are named in its docstring.

The checks on data (port ranges, certificates, host names) are pure functions; the checks
on the network (DNS through the node's own ``[dns] servers``, TCP and TLS to the peers the
node itself would connect to) are small coroutines. The edge is never made to connect
inward: its network checks are DNS only.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..config.models import NodeConfig
from ..security.tls import client_context, describe_handshake_error, peer_identities, subject_name_matches

__all__ = ["Finding", "check_port_ranges", "read_port_range", "read_reserved_ports", "check_certificate",
           "check_hostname", "check_dns", "check_peer", "run_doctor", "EXPIRY_WARN_DAYS"]

#: A certificate expiring within this many days is a warning.
EXPIRY_WARN_DAYS = 30
#: Seconds for each TCP connect, TLS handshake and DNS query.
NET_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report. ``check`` a short name (``"ports"``, ``"certificate"``,
    ``"dns"``, ``"peer"``, ``"hostname"``); ``level`` ``"ok"``, ``"warn"`` or ``"fail"``;
    ``cause`` what was found; ``fix`` what to do (empty when nothing)."""

    check: str
    level: str
    cause: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ ports


def read_port_range(path: str | Path = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int] | None:
    """The kernel's ephemeral port range ``(low, high)``, or None when it cannot be read."""
    try:
        lo, hi = Path(path).read_text().split()[:2]
        return int(lo), int(hi)
    except (OSError, ValueError):
        return None


def read_reserved_ports(path: str | Path = "/proc/sys/net/ipv4/ip_local_reserved_ports") -> list[tuple[int, int]]:
    """The kernel's reserved ports (never handed out as ephemeral ports) as inclusive ranges."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return []
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            out.append((int(lo), int(hi or lo)))
        except ValueError:
            continue
    return out


def check_port_ranges(media: tuple[int, int], ephemeral: tuple[int, int] | None,
                      reserved: list[tuple[int, int]] = ()) -> Finding:
    """The media port range (inclusive) against the kernel's ephemeral range: ports of the
    overlap not reserved can be taken by any outgoing connection, and a call then finds its
    relay port in use (stock Linux: 32768–60999 against 36000–59999)."""
    if ephemeral is None:
        return Finding("ports", "warn", "the kernel's ephemeral port range could not be read",
                       "check net.ipv4.ip_local_port_range by hand")
    lo, hi = max(media[0], ephemeral[0]), min(media[1], ephemeral[1])
    if lo > hi:
        return Finding("ports", "ok", f"media ports {media[0]}–{media[1]} are outside the ephemeral range "
                                      f"{ephemeral[0]}–{ephemeral[1]}")
    covered = any(a <= lo and hi <= b for a, b in reserved)
    if covered:
        return Finding("ports", "ok", f"media ports {media[0]}–{media[1]} overlap the ephemeral range "
                                      f"{ephemeral[0]}–{ephemeral[1]}, but {lo}–{hi} are reserved")
    return Finding("ports", "fail",
                   f"media ports {media[0]}–{media[1]} overlap the kernel's ephemeral range {ephemeral[0]}–{ephemeral[1]} "
                   f"({lo}–{hi}): outgoing connections can take relay ports and calls then fail to anchor media",
                   f"sysctl -w net.ipv4.ip_local_reserved_ports={media[0]}-{media[1]} "
                   f"(or move net.ipv4.ip_local_port_range below {media[0]})")


# ------------------------------------------------------------------------------ names


def check_hostname(hostname: str | None) -> Finding | None:
    """Seed 002 §21 row 8: a host name with an underscore breaks the tunnels; letters,
    digits, hyphens and dots only."""
    if not hostname:
        return None
    bad = sorted({c for c in hostname if not (c.isascii() and (c.isalnum() or c in "-."))})
    if bad:
        return Finding("hostname", "fail", f"host name {hostname!r} contains {''.join(bad)!r}",
                       "use letters, digits and hyphens only (seed 002 §21 row 8)")
    return Finding("hostname", "ok", f"host name {hostname!r} is valid")


# ------------------------------------------------------------------------------ configuration


def _sample_alias(rule) -> str | None:
    """An alias the rule's pattern should match, to test whether an earlier rule takes it
    first: the pattern itself for exact/prefix/suffix (a user or host added), a crude
    instance of a regex (``.*`` → ``a``, escapes and groups dropped); None when unsure."""
    p = rule.pattern
    if rule.pattern_type == "exact":
        return p
    if rule.pattern_type == "prefix":
        return p + "a@example.invalid"
    if rule.pattern_type == "suffix":
        return ("a" if p.startswith("@") else "a@") + p
    import re

    text = re.sub(r"\(\?[!=<][^)]*\)", "", p)  # lookarounds
    text = text.replace(".*", "a").replace(".+", "a")
    text = re.sub(r"\\(.)", r"\1", text)
    text = text.replace("(", "").replace(")", "").replace("?", "").replace("^", "").replace("$", "")
    return text if text and not any(c in text for c in "[]{}|*+") else None


def check_search_rules(cfg: NodeConfig) -> list[Finding]:
    """Seed 003 §12.4 row 15: a rule that an earlier rule with ``progress = stop`` takes
    every alias from (a catch-all at priority 100 shadowing the cloud rule at 101). Tested
    on an alias the later rule matches: when an earlier stopping rule from the same (or
    any) source zone matches it too, the later rule is shadowed for it."""
    from ..routing.transforms import match_pattern

    out = []
    rules = sorted((r for r in cfg.search_rules if r.enabled), key=lambda r: r.priority)
    domains = cfg.sip.domains
    for i, r in enumerate(rules):
        if r.mode == "any_alias":
            sample = "a@example.invalid"
        else:
            sample = _sample_alias(r)
            if sample is None or match_pattern(sample, r.pattern_type, r.pattern, domains) is None:
                continue
        for e in rules[:i]:
            if e.progress != "stop" or e.priority >= r.priority:
                continue
            if e.source_zone is not None and e.source_zone != r.source_zone:
                continue
            if e.mode == "any_alias" or match_pattern(sample, e.pattern_type, e.pattern, domains) is not None:
                out.append(Finding("search rules", "warn",
                                   f"search rule {r.name!r} (priority {r.priority}) is shadowed: {e.name!r} (priority "
                                   f"{e.priority}, stop) takes an alias such as {sample!r} first",
                                   f"give {r.name!r} a lower priority number than {e.priority} (seed 003 §12.4 row 15)"))
                break
    return out


def check_hybrid(cfg: NodeConfig) -> list[Finding]:
    """Seed 003 §12.4 rows 10–13 on a node with a cloud (hybrid) DNS zone — one with TLS
    verify mode on: the edge's mutual-TLS listener (5062) must be on, Modify DNS request
    should name the cloud's SRV domain, and preloaded routes and parameter preservation
    must be on along the path."""
    hybrid = [z for z in cfg.zones if z.type == "dns" and z.tls_verify_mode]
    if not hybrid:
        return []
    out = []
    if cfg.role == "edge" and any(z.inbound_classification for z in hybrid) and not cfg.sip.mtls_enabled:
        out.append(Finding("hybrid", "fail", "the cloud connects to the edge on mutual TLS (5062), but sip.mtls_enabled "
                                             "is off: the edge resets it right after SYN",
                           "set [sip] mtls_enabled = true, mtls_port = 5062 (seed 003 §12.4 row 10)"))
    for z in hybrid:
        if not z.modify_dns_request:
            out.append(Finding("hybrid", "warn", f"DNS zone {z.name!r}: Modify DNS request is off, so outbound calls look "
                                                 "up _sips._tcp.<the caller's cloud domain> (port 5061) instead of the "
                                                 "call service's mutual-TLS SRV",
                               f"set modify_dns_request = true, dns_request_domain = {z.tls_verify_subject_name!r} "
                               "(seed 003 §12.4 row 13)"))
    for z in cfg.zones:
        if z.type in ("traversal_client", "traversal_server") or z in hybrid:
            if z.preloaded_routes != "accept":
                out.append(Finding("hybrid", "fail", f"zone {z.name!r} rejects preloaded routes: the cloud's INVITEs carry "
                                                     "Route and get 404 Policy Response with no search",
                                   "set preloaded_routes = \"accept\" (seed 003 §12.4 row 11)"))
            if not z.parameter_preservation and z in hybrid:
                out.append(Finding("hybrid", "warn", f"zone {z.name!r} does not preserve Request-URI parameters "
                                                     "(call-type=squared is stripped: two toasts in the app)",
                                   "set parameter_preservation = true on every zone of the path (seed 003 §12.4 row 12)"))
    return out


# ------------------------------------------------------------------------------ certificates


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*ext.get_values_for_type(x509.DNSName), *(str(a) for a in ext.get_values_for_type(x509.IPAddress))]


def check_certificate(cert_file: str | Path, key_file: str | Path | None, ca_file: str | Path | None, *,
                      client_auth: bool, names: list[str | tuple[str, ...]] = (),
                      now: _dt.datetime | None = None) -> list[Finding]:
    """The node's certificate: it loads, its key matches, it is valid now and not about to
    expire (``EXPIRY_WARN_DAYS``), it has serverAuth (and clientAuth when ``client_auth``:
    traversal is mutual TLS, seed 002 §23 case 4), it chains to a CA of ``ca_file`` (what
    peers must trust; a self-signed certificate makes clients warn, seed 002 §21 row 5), and
    it carries each of ``names`` in its CN or SANs (an entry that is a tuple: any one of its
    names; seed 002 §11.2, §21 rows 5 and 13b)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    out: list[Finding] = []
    try:
        chain = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        return [Finding("certificate", "fail", f"{cert_file}: cannot be read as PEM certificates ({exc})",
                        "point tls.cert_file at the node's certificate chain (PEM)")]
    leaf = chain[0]
    subject = leaf.subject.rfc4514_string()
    if key_file is not None:
        try:
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
            if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
                    leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
                out.append(Finding("certificate", "fail", f"{key_file} is not the key of {subject}",
                                   "install the key that belongs to this certificate"))
        except (OSError, ValueError, TypeError) as exc:
            out.append(Finding("certificate", "fail", f"{key_file}: cannot be read as an unencrypted PEM key ({exc})",
                               "point tls.key_file at the certificate's private key"))
    if leaf.not_valid_before_utc > now:
        out.append(Finding("certificate", "fail", f"{subject} is not valid until {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                           "check the node's clock (NTP) or the certificate's dates"))
    days = (leaf.not_valid_after_utc - now).total_seconds() / 86400
    if days < 0:
        out.append(Finding("certificate", "fail", f"{subject} expired on {leaf.not_valid_after_utc:%Y-%m-%d} UTC",
                           "renew the certificate"))
    elif days < EXPIRY_WARN_DAYS:
        out.append(Finding("certificate", "warn", f"{subject} expires in {days:.0f} days", "renew it soon"))
    try:
        ekus = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        ekus = None  # no EKU extension: any purpose
    if ekus is not None:
        if ExtendedKeyUsageOID.SERVER_AUTH not in ekus:
            out.append(Finding("certificate", "fail", f"{subject} lacks the serverAuth extended key usage",
                               "re-issue it with serverAuth (TLS Web Server Authentication)"))
        if client_auth and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
            out.append(Finding("certificate", "fail",
                               f"{subject} lacks the clientAuth extended key usage, which mutual TLS (traversal) needs",
                               "re-issue it with clientAuth as well as serverAuth (seed 002 §23 case 4)"))
    out += _check_chain(chain, ca_file, subject)
    have = {n.lower().rstrip(".") for n in _sans(leaf)}
    cn = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    have |= {str(c).lower().rstrip(".") for c in cn}
    for name in names:
        alts = (name,) if isinstance(name, str) else tuple(name)
        if not any(a.lower().rstrip(".") in have for a in alts):
            out.append(Finding("certificate", "fail", f"{subject} does not name {' or '.join(alts)} "
                                                      f"(CN or SAN: {', '.join(sorted(have))})",
                               f"re-issue the certificate with {alts[-1]} as a subject alternative name (seed 002 §11.2)"))
    if not any(f.level == "fail" for f in out):
        out.append(Finding("certificate", "ok", f"{subject}: valid for {days:.0f} more days, names {', '.join(sorted(have))}"))
    return out


def _check_chain(chain: list[x509.Certificate], ca_file: str | Path | None, subject: str) -> list[Finding]:
    leaf = chain[0]
    if leaf.issuer == leaf.subject:
        return [Finding("certificate", "warn", f"{subject} is self-signed: clients will not trust it",
                        "use a certificate signed by a CA the peers trust (seed 002 §21 row 5)")]
    if ca_file is None:
        return []
    try:
        cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    except (OSError, ValueError) as exc:
        return [Finding("certificate", "fail", f"{ca_file}: cannot be read as PEM CA certificates ({exc})",
                        "point tls.ca_file at the CA bundle")]
    issuers = chain[1:] + cas
    cert = leaf
    for _ in range(8):
        parent = next((c for c in issuers if c.subject == cert.issuer and _signed_by(cert, c)), None)
        if parent is None:
            return [Finding("certificate", "fail", f"{subject} does not chain to a CA in {ca_file} "
                                                   f"(issuer {cert.issuer.rfc4514_string()})",
                            "add the issuing CA to tls.ca_file here and on every peer (untrusted CA)")]
        if parent in cas:
            return []
        if parent.subject == parent.issuer:  # a root the node does not trust
            return [Finding("certificate", "fail", f"{subject} does not chain to a CA in {ca_file} "
                                                   f"(its root is {parent.subject.rfc4514_string()})",
                            "add the issuing CA to tls.ca_file here and on every peer (untrusted CA)")]
        cert = parent
    return [Finding("certificate", "fail", f"{subject}: chain too long or looping", "check the chain file")]


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and unsupported key types
        return False


# ------------------------------------------------------------------------------ network


async def check_dns(servers: list[tuple[str, int]], name: str, rdtype: str, *, must_exist: bool,
                    why: str) -> Finding:
    """Look ``name`` up through the node's own DNS servers. ``must_exist``: a missing
    record fails (``why`` says what breaks); False: a record that exists fails (split DNS:
    ``_cisco-uds._tcp`` must not resolve outside, seed 002 §8.1, §12.2)."""
    import dns.exception
    import dns.resolver

    from ..routing.resolver import make_resolver

    resolver = make_resolver(servers, NET_TIMEOUT_S)
    try:
        answer = await resolver.resolve(name, rdtype)
        found = ", ".join(sorted(r.to_text() for r in answer))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        found = ""
    except dns.exception.DNSException as exc:
        return Finding("dns", "fail", f"{rdtype} {name}: no answer from {servers} ({type(exc).__name__})",
                       "check [dns] servers and that they answer from this node")
    if must_exist and not found:
        return Finding("dns", "fail", f"{rdtype} {name} does not exist", f"publish it: {why}")
    if not must_exist and found:
        return Finding("dns", "fail", f"{rdtype} {name} resolves from this node ({found})",
                       f"remove it from this DNS view: {why}")
    return Finding("dns", "ok", f"{rdtype} {name}: {found or 'absent, as it should be'}")


async def check_peer(host: str, port: int, what: str, ctx: ssl.SSLContext | None, *,
                     fix_port: str) -> list[Finding]:
    """TCP connect to ``host``:``port`` and, with ``ctx``, a TLS handshake (the node's own
    client identity and CA): refused, timed out, untrusted CA, wrong name and so on, each in
    words. The peer's certificate must name ``host``."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), NET_TIMEOUT_S)
    except asyncio.TimeoutError:
        return [Finding("peer", "fail", f"{what} {host}:{port}: TCP connect timed out after {NET_TIMEOUT_S:g} s "
                                        "(a firewall drops it, or the host is down)", fix_port)]
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            why = "connection refused: nothing listens there, or a firewall rejects it"
        else:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
        return [Finding("peer", "fail", f"{what} {host}:{port}: TCP connect failed ({why})", fix_port)]
    writer.close()
    if ctx is None:
        return [Finding("peer", "ok", f"{what} {host}:{port}: TCP reachable")]
    del reader, loop
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), NET_TIMEOUT_S)
    except asyncio.TimeoutError:
        return [Finding("peer", "fail", f"{what} {host}:{port}: TLS handshake timed out", "check the peer's TLS settings")]
    except (ssl.SSLError, OSError) as exc:
        return [Finding("peer", "fail", f"{what} {host}:{port}: TLS handshake failed: {describe_handshake_error(exc)}",
                        "both sides must trust each other's CA (tls.ca_file) and present certificates with "
                        "serverAuth and clientAuth")]
    sslobj = w.get_extra_info("ssl_object")
    names = peer_identities(sslobj)
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    ips = [n for n in _sans(x509.load_der_x509_certificate(der)) if n not in names] if der else []
    w.close()
    del r
    if not subject_name_matches(names, host) and host not in ips:
        return [Finding("peer", "fail", f"{what} {host}:{port}: its certificate names {', '.join(names) or 'nothing'}, "
                                        f"not {host}",
                        f"re-issue the peer's certificate with {host} as a SAN, or name it by one of its names")]
    return [Finding("peer", "ok", f"{what} {host}:{port}: TCP and TLS OK, certificate names "
                                  f"{', '.join(dict.fromkeys(names + ips))}")]


#: Clock offset (s) from a peer that is a warning, and one that fails (seed 002 §21 row 16:
#: nodes off NTP answer 403 to every request).
CLOCK_WARN_S = 5.0
CLOCK_FAIL_S = 60.0


def clock_finding(peer: str, skew_s: float) -> Finding:
    """The verdict on our clock being ``skew_s`` seconds ahead of ``peer``'s (negative: behind)."""
    words = f"this node's clock is {abs(skew_s):.0f} s {'ahead of' if skew_s > 0 else 'behind'} {peer}"
    if abs(skew_s) >= CLOCK_FAIL_S:
        return Finding("clock", "fail", words, "synchronise both nodes to NTP (seed 002 §21 row 16: 403 for every "
                                               "request, tokens and certificates judged at the wrong time)")
    if abs(skew_s) >= CLOCK_WARN_S:
        return Finding("clock", "warn", words, "synchronise both nodes to NTP")
    return Finding("clock", "ok", f"clock within {CLOCK_WARN_S:g} s of {peer}")


async def check_clock(host: str, port: int, ctx: ssl.SSLContext) -> Finding | None:
    """Our clock against the ``Date`` of an HTTPS answer from ``host``:``port`` (the edge's
    MRA listener; 1 s resolution); None when no dated answer comes back."""
    import email.utils

    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), NET_TIMEOUT_S)
        w.write(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(r.read(4096), NET_TIMEOUT_S)
        w.close()
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        return None
    now = _dt.datetime.now(_dt.timezone.utc)
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "date":
            try:
                then = email.utils.parsedate_to_datetime(value.strip())
            except (TypeError, ValueError):
                return None
            return clock_finding(f"{host}:{port}", (now - then).total_seconds())
    return None


def _running_state(cfg: NodeConfig) -> list[Finding]:
    """The running node's own view, through its control socket when it has one: each
    traversal zone active or down (seed 002 §21 row 20: "502 Next Hop Connection Failed"
    when the tunnel to C is down)."""
    from .control import ControlError, request

    if not cfg.control.socket:
        return []
    try:
        resp = request(cfg.control.socket, "status", timeout_s=NET_TIMEOUT_S)
    except ControlError:
        return [Finding("node", "warn", f"the node is not running (no answer on {cfg.control.socket})",
                        f"start it: edgeway {cfg.role} -c <file>")]
    if not resp.get("ok"):
        return []
    out = []
    for z in resp.get("zones", []):
        if z.get("type") not in ("traversal_client", "traversal_server"):
            continue
        if z.get("state") == "active":
            out.append(Finding("zone", "ok", f"traversal zone {z['name']!r} is active ({', '.join(z.get('connections') or [])})"))
        else:
            out.append(Finding("zone", "fail", f"traversal zone {z['name']!r} is {z.get('state')}",
                               "check the peer findings below, the credentials and the TLS verify subject name; "
                               "the zone's events say why it dropped (edgeway history, the event log)"))
    return out


async def run_doctor(cfg: NodeConfig, *, port_range_file: str = "/proc/sys/net/ipv4/ip_local_port_range",
                     reserved_file: str = "/proc/sys/net/ipv4/ip_local_reserved_ports") -> list[Finding]:
    """Every check that applies to node ``cfg``, in report order."""
    out: list[Finding] = []
    m = cfg.media
    out.append(check_port_ranges((m.port_min, m.port_max), read_port_range(port_range_file), read_reserved_ports(reserved_file)))
    h = check_hostname(cfg.sip.hostname)
    if h is not None:
        out.append(h)
    elif cfg.role == "edge" and cfg.mra.enabled:
        out.append(Finding("hostname", "fail", "MRA is enabled but [sip] hostname is not set: remote clients route their "
                                               "REGISTERs via the edge's name from get_edge_config, and the edge does not "
                                               "know that name as its own (404)",
                           "set [sip] hostname to the edge's FQDN (the core's mra.edge_hostname)"))
    out += check_search_rules(cfg)
    out += check_hybrid(cfg)
    traversal = [z for z in cfg.zones if z.type in ("traversal_client", "traversal_server")]
    t = cfg.tls
    names: list[str | tuple[str, ...]] = []
    if cfg.role == "edge" and cfg.mra.enabled:
        # The UC (registration) domains, as DNS or CollabEdgeDNS SANs (seed 002 §11.2).
        names += [(d, f"collab-edge.{d}") for d in cfg.mra.domain_names]
    if t.cert_file:
        out += check_certificate(t.cert_file, t.key_file, t.ca_file, client_auth=bool(traversal) or cfg.mra.enabled,
                                 names=names)
    servers = list(cfg.dns.nameservers)
    if servers:
        if cfg.role == "edge":
            for d in cfg.sip.domains:
                out.append(await check_dns(servers, f"_sips._tcp.{d}", "SRV", must_exist=True,
                                           why="business-to-business callers find the edge by it (RFC 3263)"))
        if cfg.mra.enabled:
            for dom in cfg.mra.domain_names:
                if cfg.role == "edge":
                    out.append(await check_dns(servers, f"_collab-edge._tls.{dom}", "SRV", must_exist=True,
                                               why="remote clients find the edge by it (seed 002 §12.1)"))
                    out.append(await check_dns(servers, f"_cisco-uds._tcp.{dom}", "SRV", must_exist=False,
                                               why="clients outside would try to reach UDS directly (seed 002 §8.1)"))
                else:
                    out.append(await check_dns(servers, f"_cisco-uds._tcp.{dom}", "SRV", must_exist=True,
                                               why="inside clients find call control's UDS by it (seed 002 §12.2)"))
    out += _running_state(cfg)
    if cfg.role == "core":
        ctx = client_context(t.cert_file, t.key_file, t.ca_file, min_version=t.min_version) if t.cert_file else None
        for z in traversal:
            for host, port in getattr(z, "peer_addresses", []):
                out += await check_peer(host, port, f"traversal zone {z.name!r} peer", ctx,
                                        fix_port=f"open TCP {port} from this core to the edge in the inside firewall, "
                                                 "and check the edge runs its traversal server zone on that port")
                if cfg.mra.enabled and ctx is not None:
                    clock = await check_clock(host, cfg.mra.https_port, ctx)
                    if clock is not None:
                        out.append(clock)
                if cfg.mra.enabled:
                    mport = cfg.mra.tunnel_port
                    out += await check_peer(host, mport, "MRA tunnel", ctx,
                                            fix_port=f"open TCP {mport} from this core to the edge "
                                                     "(seed 002 §13.1) and enable MRA on the edge")
    return out
