"""Configuration models: one TOML file per node (DESIGN §2; seed 003 §5–§6).

Pydantic v2 models, strict types (TOML values are typed), unknown keys are
errors. Validation problems carry the key path, the value and the rule; see
:func:`edgeway.config.load.parse_config` for how they are reported.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgeway._ascii import ascii_uint
from edgeway._httpurl import TargetError, normalise_url
from edgeway.config.patterns import check_pattern

__all__ = [
    "BUILTIN_ZONES", "MISSING",
    "NodeConfig", "SipConfig", "TimerConfig", "TlsConfig", "MediaConfig", "DnsConfig", "LogConfig", "FloodConfig", "IntrusionConfig", "LimitsConfig",
    "Credential", "NeighbourZone", "TraversalServerZone", "TraversalClientZone", "DnsZone", "ZoneConfig",
    "Transform", "SearchRule", "PolicyRule", "ConfigProblems", "zone_token", "split_hostport",
    "MraConfig", "MraDomain", "UdsServer", "HttpAllowRule", "InternalServer", "DEFAULT_DEPLOYMENT", "TurnServer",
    "TurnConfig", "TurnUser",
]

#: Sentinel value in a problem tuple: the key is absent (printed without "= value").
MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()

#: Built-in zones that always exist and cannot be configured (seed 003 §5).
BUILTIN_ZONES = ("LocalZone", "DefaultZone")


class ConfigProblems(ValueError):
    """Raised inside model validators for cross-field problems.

    ``problems`` is a list of ``(key_path, value, rule)`` with ``key_path``
    relative to the model that raised (e.g. ``"search_rules[1].target_zone"``)
    and ``value`` :data:`MISSING` for an absent key.
    """

    def __init__(self, problems: list[tuple[str, Any, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{k}: {r}" if v is MISSING else f"{k} = {v!r}: {r}" for k, v, r in problems))


def zone_token(name: str) -> str:
    """Zone name with all whitespace removed, as used in Via ``ingress-zone=``
    / ``egress-zone=`` (seed 003 §5, §7.1): ``"Hybrid Call Services DNS"`` →
    ``"HybridCallServicesDNS"``."""
    return "".join(name.split())


def split_hostport(text: str, default_port: int) -> tuple[str, int]:
    """Parse ``"host"``, ``"host:port"``, a bare IPv6 address or
    ``"[v6]:port"`` into ``(host, port)``. Raises ``ValueError`` on bad
    syntax or a port outside 1..65535."""
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:] if end > 0 else "x"
        if rest and not rest.startswith(":"):
            raise ValueError("must be 'host', 'host:port' or '[ipv6]:port'")
        host, port = text[1:end], rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or any(c.isspace() for c in host):
        raise ValueError("must be 'host', 'host:port' or '[ipv6]:port' with a non-empty host")
    number = ascii_uint(port, 65535)
    if not number:
        raise ValueError("port must be between 1 and 65535")
    return host, number


# ---- constrained field types with readable rules ---------------------------------------------

def _rule(pred: Callable[[Any], bool], text: str) -> AfterValidator:
    def check(v: Any) -> Any:
        if not pred(v):
            raise ValueError(text)
        return v
    return AfterValidator(check)


def _between(lo: int, hi: int, note: str = "") -> AfterValidator:
    return _rule(lambda v: lo <= v <= hi, f"must be between {lo} and {hi}{note}")


def _ip(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None
    return v


def _hostport(v: str) -> str:
    split_hostport(v, 1)
    return v


def _log_level(v: str) -> str:
    if v.upper() not in logging.getLevelNamesMapping():
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return v.upper()


Port = Annotated[int, _between(1, 65535)]
PortOrOff = Annotated[int, _between(0, 65535, " (0 = disabled)")]
PosFloat = Annotated[float, _rule(lambda v: v > 0, "must be greater than 0")]
PosInt = Annotated[int, _rule(lambda v: v > 0, "must be greater than 0")]
NonNegInt = Annotated[int, _rule(lambda v: v >= 0, "must be 0 or greater")]
Text = Annotated[str, _rule(lambda v: v.strip() != "", "must not be empty")]
IpAddr = Annotated[str, AfterValidator(_ip)]
HostPort = Annotated[str, AfterValidator(_hostport)]
Priority = Annotated[int, _between(1, 65534)]
PatternType = Literal["exact", "prefix", "suffix", "regex"]
Behaviour = Literal["leave", "strip", "replace"]
Transport = Literal["udp", "tcp", "tls"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---- node-wide sections -----------------------------------------------------------------------

class SipConfig(_Model):
    """SIP listener. Ports are TCP/UDP port numbers; 0 disables that transport."""

    listen_ip: IpAddr
    advertise_ip: IpAddr | None = None
    """Address put in Via/Record-Route/Contact (NAT'd edge); defaults to ``listen_ip``."""
    udp_port: PortOrOff = 5060
    tcp_port: PortOrOff = 5060
    tls_port: PortOrOff = 5061
    domains: list[Text] = []
    """Local SIP domains; they make up ``%localdomains%``."""
    max_forwards_out: Annotated[int, _between(1, 255)] = 70
    mtls_enabled: bool = False
    """Mutual-TLS listener (edge, seed 003 §5 "Mutual TLS mode"): peers must present a
    certificate from a trusted CA. Separate from ``tls_port`` so clients without
    certificates keep working there."""
    mtls_port: Port = 5062
    """Mutual-TLS port (seed 003 §1: 5062)."""
    hostname: str | None = None
    """FQDN of this node, used in Record-Route when a zone's ``record_route_address_type``
    is ``hostname``."""
    path_headers: bool = False
    """Core: how a REGISTER from a traversal zone is forwarded to an inside registrar
    (seed 002 §2.3 "SIP Path headers", catalogue case 32). Off (default): each Contact is
    rewritten to an address of the core's own and mapped back, and the edge's Path is
    taken off. On: Contact is kept and the core adds its own Path entry (RFC 3327) on top
    of the edge's; needed for shared lines and multiple lines. See
    :mod:`edgeway.proxy.registrations`."""

    @property
    def public_ip(self) -> str:
        """Advertised address: ``advertise_ip`` or ``listen_ip``."""
        return self.advertise_ip or self.listen_ip


class TimerConfig(_Model):
    """RFC 3261 timers: T1/T2/T4 in milliseconds, Timer C in seconds."""

    t1_ms: PosInt = 500
    t2_ms: PosInt = 4000
    t4_ms: PosInt = 5000
    timer_c_s: PosInt = 180

    @model_validator(mode="after")
    def _t2_ge_t1(self) -> TimerConfig:
        if self.t2_ms < self.t1_ms:
            raise ConfigProblems([("t2_ms", self.t2_ms, f"must be >= t1_ms ({self.t1_ms})")])
        return self


class TlsConfig(_Model):
    """TLS material (PEM file paths) and the lowest accepted protocol version."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            other = "cert_file" if missing == "key_file" else "key_file"
            raise ConfigProblems([(missing, MISSING, f"must be set when tls.{other} is set")])
        return self


class MediaConfig(_Model):
    """Media relay: bind/advertised IP, UDP port range (inclusive; RTP on the
    even port, RTCP on the next odd one) and the idle timeout in seconds.
    When ``ip`` is not set, NodeConfig fills ``ip`` from ``sip.listen_ip`` and
    ``advertise_ip`` from ``sip.advertise_ip``.

    Multiplexed traversal media (seed 002 §7.2, §13.1; used by the **edge** only, a
    core ignores it): with ``traversal_mux`` on, the edge's relay side facing a
    traversal zone is, for every call, on one shared RTP/RTCP pair and the calls
    are told apart by the core's source address, so the inside firewall opens 2
    UDP ports toward the DMZ (12 with ``mux_pairs = 6``, Cisco's "large" system)
    instead of the whole range. ``mux_ports`` empty: the first ``mux_pairs`` pairs
    of the range (36000/36001 by default; 36000–36011 for 6) and the external
    range starts after them (36002–59999 / 36012–59999). ``mux_ports`` set (RTP
    ports, even, e.g. ``[2776]`` for Cisco's "configured demultiplexing ports"
    2776/2777): those pairs, which must lie outside the range, and the range is
    not shortened. Changing these needs a restart (the sockets are bound at start).
    """

    ip: IpAddr | None = None
    advertise_ip: IpAddr | None = None
    port_min: Annotated[int, _between(1024, 65535), _rule(lambda v: v % 2 == 0, "must be even")] = 36000
    port_max: Annotated[int, _between(1024, 65535)] = 59999
    inactivity_timeout_s: PosFloat = 60.0
    traversal_mux: bool = True
    mux_pairs: Annotated[int, _between(1, 6, " (1 = small/medium, 6 = large)")] = 1
    mux_ports: list[Annotated[int, _between(1024, 65534), _rule(lambda v: v % 2 == 0, "must be even (the RTP port; RTCP is the next one)")]] = []

    @model_validator(mode="after")
    def _range(self) -> MediaConfig:
        if self.port_min >= self.port_max:
            raise ConfigProblems([("port_max", self.port_max, f"must be greater than port_min ({self.port_min})")])
        probs = []
        ports = self.mux_ports
        if len(ports) > 6:
            probs.append(("mux_ports", ports, "must name at most 6 pairs"))
        if len(set(ports)) != len(ports):
            probs.append(("mux_ports", ports, "must not repeat a port"))
        for i, p in enumerate(ports):
            if self.port_min <= p + 1 and p <= self.port_max:
                probs.append((f"mux_ports[{i}]", p, (f"must lie outside the media range {self.port_min}-{self.port_max} "
                                                      "(leave mux_ports empty to use the first pairs of the range)")))
        if ports and "mux_pairs" in self.model_fields_set and self.mux_pairs != len(ports):
            probs.append(("mux_pairs", self.mux_pairs, f"must match the {len(ports)} pair(s) of mux_ports"))
        if self.traversal_mux and not ports and self.port_max - self.port_min + 1 < 2 * self.mux_pairs + 2:
            probs.append(("port_max", self.port_max,
                          f"leaves no media pair after the {self.mux_pairs} multiplexed pair(s) at port_min"))
        if probs:
            raise ConfigProblems(probs)
        return self

    def mux_rtp_ports(self) -> list[int]:
        """The RTP ports of the multiplexed traversal pairs (RTCP is each + 1)."""
        if self.mux_ports:
            return list(self.mux_ports)
        return [self.port_min + 2 * i for i in range(self.mux_pairs)]

    def relay_range(self, mux: bool) -> tuple[int, int]:
        """``(port_min, port_max)`` of the per-call relay ports: the range without the
        multiplexed pairs taken from its start when ``mux`` is in use."""
        if mux and not self.mux_ports:
            return self.port_min + 2 * self.mux_pairs, self.port_max
        return self.port_min, self.port_max

    @property
    def public_ip(self) -> str | None:
        """Address written into SDP: ``advertise_ip`` or ``ip``."""
        return self.advertise_ip or self.ip


def _dns_server(v: str) -> str:
    host, _ = split_hostport(v, 53)
    _ip(host)
    return v


class DnsConfig(_Model):
    """Resolvers (``"ip"``, ``"ip:port"`` or ``"[v6]:port"``; empty = system
    resolvers) and the per-query timeout in seconds."""

    servers: list[Annotated[str, AfterValidator(_dns_server)]] = []
    timeout_s: PosFloat = 2.0

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """``servers`` parsed to ``(ip, port)``; port defaults to 53."""
        return [split_hostport(s, 53) for s in self.servers]


#: Modules of the event log (issue 11 item 1; :func:`edgeway.diag.events.event_class`).
LOG_MODULES = ("sip", "tls", "zone", "traversal", "search", "policy", "call", "media", "dns", "http", "security",
               "registrar", "node")


class LogConfig(_Model):
    """Event log (:class:`~edgeway.diag.events.EventLog`): destination (``None`` =
    stderr), level name (normalised to upper case), whether every SIP message is
    logged, and the bounds that keep the log small on a loaded or attacked node
    (issue 7 item 4: during 5,000 INVITEs/s from one source for 10 s the log must grow
    by less than 5 MB; it grew by 81 MB when every message was logged, unrotated and
    uncapped)."""

    file: str | None = None
    level: Annotated[str, AfterValidator(_log_level)] = "INFO"
    #: One ``sip message`` event per SIP message sent or received (the hop-by-hop
    #: ladder). Off by default: on a loaded or attacked edge it is most of the log
    #: (every message and retransmission). The lab turns it on (its report builds the
    #: call ladders from these events).
    sip_messages: bool = False
    #: Bytes the log file may reach before it is rotated (``file`` → ``file.1`` …, as
    #: ``logging.handlers.RotatingFileHandler``); 0 = never rotate. Ignored for stderr.
    max_bytes: Annotated[int, _rule(lambda v: v == 0 or v >= 4096, "must be 0 (no rotation) or at least 4096 bytes")] = 50 << 20
    #: Rotated files kept (``file.1`` newest … ``file.<backup_count>`` oldest); 0 keeps
    #: none (the full file is emptied). Disk use is at most about
    #: ``max_bytes * (backup_count + 1)`` bytes.
    backup_count: Annotated[int, _between(0, 1000)] = 5
    #: Lines per second each event type may write (token bucket, burst the same number
    #: of lines); lines over it are counted, not written, and one ``events dropped``
    #: line per type and second says how many. 0 = no cap.
    max_events_per_s: Annotated[int, _between(0, 1_000_000, " (0 = no cap)")] = 200
    #: Level per module (``sip``, ``tls``, ``zone``, ``traversal``, ``search``, ``policy``,
    #: ``call``, ``media``, ``dns``, ``http``, ``security``, ``registrar``, ``node``);
    #: modules not listed use ``level``. Changeable at run time: ``edgeway log-level``.
    modules: dict[str, Annotated[str, AfterValidator(_log_level)]] = {}

    @field_validator("modules")
    @classmethod
    def _known_modules(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(LOG_MODULES))
        if unknown:
            raise ValueError(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(LOG_MODULES)}")
        return v


def _cidr(v: str) -> str:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 network such as 192.0.2.0/24") from None
    return v


NonNegFloat = Annotated[float, _rule(lambda v: v >= 0, "must be 0 or greater")]


class FloodConfig(_Model):
    """Per-source flood control of requests from sources no zone claims (DefaultZone;
    issue 7 item 3): ``requests_per_s`` (per source address, token bucket refill rate;
    0 = off) up to ``burst`` requests; the first request over the limit gets 503 with
    Retry-After, later ones are dropped (UDP) or refused 503 (connections); a source
    over its limit for ``block_after_s`` seconds (0 = never) is blocked for ``block_s``
    seconds. ``exempt``: networks never limited. ``max_sources``: addresses tracked.

    Defaults suit an edge with 2,500 registered clients: a client re-registers every
    few minutes and places a call now and then, so 100 requests/s per address (200
    at once) leaves room for a NAT with hundreds of phones behind one address."""

    requests_per_s: NonNegFloat = 100.0
    burst: PosFloat = 200.0
    block_after_s: NonNegFloat = 10.0
    block_s: PosFloat = 60.0
    exempt: list[Annotated[str, AfterValidator(_cidr)]] = []
    max_sources: Annotated[int, _between(16, 10_000_000)] = 100_000


class LimitsConfig(_Model):
    """Admission of inbound TCP/TLS connections (issue 7 item 1; the arithmetic and the
    reasons for each default are in :mod:`edgeway.transport.admission`).

    ``max_connections``: open inbound connections in all (connections being handshaken
    included). Unset: derived at start from the descriptor limit (which the node raises
    to its hard limit): limit − ``reserved_fds``, at most 25,000; a larger configured
    value is lowered to that and the start event says so. The core's traversal
    connections and outbound connections are not counted.
    ``max_connections_per_source``: open inbound connections per IPv4 address or IPv6
    /64 (default 256: an office behind one NAT address reaches the edge from it).
    ``tls_handshake_timeout_s``: seconds from accept for a TLS handshake (default 5;
    also outbound handshakes).
    ``pre_message_idle_s``: seconds from accept within which a connection must complete
    its first SIP message, however many bytes it sends (default 15; slowloris).
    ``flow_idle_s``: seconds an established connection may go without a complete
    message or CRLF keepalive (RFC 5626 §3.5.1) (default 3600: longer than a
    registration refresh).
    ``reserved_fds``: descriptors kept out of ``max_connections`` for media sockets,
    traversal and outbound connections and the process itself. Unset: 512 + the media
    port range's size, at most a quarter of the limit.
    ``max_proxied_registrations`` (edge): registrations of outside clients proxied to
    the inside at once (distinct address-of-record; default 2,500, seed 002 §1.7); a
    REGISTER for one more gets 503 with Retry-After.
    """

    max_connections: PosInt | None = None
    max_proxied_registrations: PosInt = 2500
    max_connections_per_source: PosInt = 256
    tls_handshake_timeout_s: PosFloat = 5.0
    pre_message_idle_s: PosFloat = 15.0
    flow_idle_s: PosFloat = 3600.0
    reserved_fds: NonNegInt | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LimitsConfig:
        problems = []
        if self.max_connections is not None and self.max_connections_per_source > self.max_connections:
            problems.append(("max_connections_per_source", self.max_connections_per_source,
                             f"must be <= max_connections ({self.max_connections})"))
        if self.tls_handshake_timeout_s >= self.pre_message_idle_s:
            problems.append(("tls_handshake_timeout_s", self.tls_handshake_timeout_s,
                             f"must be less than pre_message_idle_s ({self.pre_message_idle_s:g}), "
                             "which runs from accept and includes the handshake"))
        if self.flow_idle_s < self.pre_message_idle_s:
            problems.append(("flow_idle_s", self.flow_idle_s,
                             f"must be >= pre_message_idle_s ({self.pre_message_idle_s:g})"))
        if problems:
            raise ConfigProblems(problems)
        return self


IntrusionCategoryName = Literal["http_proxy_authorization_failure", "http_proxy_protocol_violation",
                                "http_proxy_resource_access_failure", "sip_authentication_failure",
                                "traversal_authentication_failure"]


class IntrusionCategory(_Model):
    """One intrusion-protection category: more than ``trigger_level`` failures from one
    address within ``detection_window_s`` seconds block it for ``ban_s`` seconds."""

    enabled: bool = True
    trigger_level: PosInt = 5
    detection_window_s: PosFloat = 600.0
    ban_s: PosFloat = 600.0


class IntrusionConfig(_Model):
    """Automated intrusion protection (seed 002 §10.9; issue 9 item 8). ``enabled``
    None = the seed's recommendation: on for an edge, off for a core. ``categories``
    overrides per category (the others keep their defaults: trigger level 5, 10 minute
    ban, all on except ``http_proxy_resource_access_failure``). ``exempt``: networks
    never blocked. A blocked address is refused at accept time, before TLS."""

    enabled: bool | None = None
    exempt: list[Annotated[str, AfterValidator(_cidr)]] = []
    categories: dict[IntrusionCategoryName, IntrusionCategory] = {}


class ControlConfig(_Model):
    """The node's local control socket (``edgeway blocked list|unblock``): a Unix-domain
    socket path, mode 0600; None = none."""

    socket: str | None = None


class StatusConfig(_Model):
    """The node's status page, JSON status API and Prometheus endpoint (issue 11 item 6;
    :mod:`edgeway.diag.status`). ``listen``: ``"ip:port"`` on the management address (None
    = off); every request needs HTTP Basic ``username``/``password`` or ``Authorization:
    Bearer <token>``, so at least one of them must be set."""

    listen: HostPort | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _protected(self) -> StatusConfig:
        if self.listen and not ((self.username and self.password) or self.token):
            raise ConfigProblems([("listen", self.listen, "needs username and password, or token: the status page is "
                                                          "never served unauthenticated")])
        if bool(self.username) != bool(self.password):
            raise ConfigProblems([("password" if self.username else "username", None,
                                   "username and password go together")])
        return self


class RegistrarUser(_Model):
    """One user of the node's own registrar (digest credentials)."""

    username: Text
    password: Text


class RegistrarConfig(_Model):
    """The node's own registrar (RFC 3261 §10; seed 002 §2.2; issue 9 item 6): REGISTERs
    for ``domains`` are answered by the node; its bindings are the targets of search
    rules whose target zone is LocalZone. ``users``: when any are given, every REGISTER
    must authenticate (digest SHA-256 or MD5, realm ``realm`` or the first domain).
    Expiry bounds in seconds; ``max_bindings`` over all users (503 beyond it)."""

    domains: list[Text] = []
    users: list[RegistrarUser] = []
    realm: str | None = None
    min_expires_s: PosInt = 60
    max_expires_s: PosInt = 3600
    default_expires_s: PosInt = 3600
    max_bindings: PosInt = 10_000
    digest_algorithms: Annotated[list[Literal["SHA-256", "MD5"]], Field(min_length=1)] = ["SHA-256", "MD5"]
    """Challenged in this order and accepted. RFC 8760 puts SHA-256 first; clients that
    reject a challenge list with an algorithm they do not know need ``["MD5"]``."""


class Credential(_Model):
    """One entry of the edge's local credential store (traversal auth)."""

    username: Text
    password: str


# ---- zones (seed 003 §5) -----------------------------------------------------------------------

MediaEncryption = Literal["off", "on", "auto", "force"]


class _ZoneBase(_Model):
    """Options every zone type has (seed 003 §5 zone model, issue 3 item 3).

    ``preloaded_routes``: ``accept`` routes an INVITE carrying Route headers on the
    Route host (with ``;lr``) as the alias and keeps the Request-URI; ``reject``
    answers 404 "Policy Response" before any search (seed 003 §2.5).
    ``parameter_preservation``: keep Request-URI and Contact parameters (e.g.
    ``call-type=squared``) through the B2BUA (seed 003 §7.3).
    ``media_encryption``: off (RTP only), on / force (SRTP only), auto (as offered);
    the edge's B2BUA interworks SRTP and RTP when two zones differ.
    ``record_route_address_type``: ``ip`` or ``hostname`` (``sip.hostname``).
    """

    name: Text
    preloaded_routes: Literal["accept", "reject"] = "accept"
    parameter_preservation: bool = False
    media_encryption: MediaEncryption = "auto"
    record_route_address_type: Literal["ip", "hostname"] = "ip"


class NeighbourZone(_ZoneBase):
    """Static SIP peer (e.g. Unified CM ``CUCM11`` at 192.168.1.21:5065).
    ``match_source``: inbound requests from ``host`` (IP, or TLS peer name)
    are classified into this zone."""

    type: Literal["neighbour"] = "neighbour"
    host: Text
    port: Port = 5060
    transport: Transport = "tcp"
    match_source: bool = True


class TraversalServerZone(_ZoneBase):
    """Edge side of the traversal pair: listens on ``port`` (TLS) for the core's
    traversal client, authenticated as ``username``, whose certificate must
    carry ``tls_verify_subject_name``. Keepalive/probe intervals in seconds."""

    type: Literal["traversal_server"] = "traversal_server"
    port: Port = 7001
    username: Text
    tls_verify_subject_name: Text
    keepalive_interval_s: PosFloat = 20.0
    probe_retry_count: PosInt = 5
    probe_retry_interval_s: PosFloat = 2.0


class TraversalClientZone(_ZoneBase):
    """Core side of the traversal pair: connects out to 1–6 edge ``peers``
    (``"host"`` or ``"host:port"``, default port ``port``). Intervals in
    seconds; ``retry_interval_s`` is the wait before reconnecting."""

    type: Literal["traversal_client"] = "traversal_client"
    peers: Annotated[list[HostPort], Field(min_length=1, max_length=6)]
    port: Port = 7001
    username: Text
    password: str
    keepalive_interval_s: PosFloat = 20.0
    probe_retry_count: PosInt = 5
    probe_retry_interval_s: PosFloat = 2.0
    retry_interval_s: PosFloat = 120.0

    @property
    def peer_addresses(self) -> list[tuple[str, int]]:
        """``peers`` parsed to ``(host, port)`` in configured order."""
        return [split_hostport(p, self.port) for p in self.peers]


class DnsZone(_ZoneBase):
    """Route by RFC 3263 DNS lookup of the Request-URI's domain (seed 003 §4, §5).

    ``tls_verify_mode``: check the peer certificate of outbound TLS connections
    against ``tls_verify_subject_name`` (CN or DNS SAN, certificate order, first
    match wins). ``inbound_classification``: a TLS connection whose peer
    certificate carries ``tls_verify_subject_name`` is classified into this zone
    (else it falls to DefaultZone). ``modify_dns_request`` with ``dns_request_domain``:
    one SRV query ``_sips._tcp.<domain>``, no NAPTR, Request-URI unchanged.
    """

    type: Literal["dns"] = "dns"
    default_transport: Transport = "tls"
    tls_verify_mode: bool = False
    tls_verify_subject_name: str | None = None
    inbound_classification: bool = False
    modify_dns_request: bool = False
    dns_request_domain: str | None = None

    @model_validator(mode="after")
    def _dns_options(self) -> "DnsZone":
        problems = []
        if self.modify_dns_request and not (self.dns_request_domain or "").strip():
            problems.append(("dns_request_domain", self.dns_request_domain, "is required when modify_dns_request is true"))
        if (self.tls_verify_mode or self.inbound_classification) and not (self.tls_verify_subject_name or "").strip():
            problems.append(("tls_verify_subject_name", self.tls_verify_subject_name,
                             "is required when tls_verify_mode or inbound_classification is true"))
        if problems:
            raise ConfigProblems(problems)
        return self


ZoneConfig = Annotated[
    Union[NeighbourZone, TraversalServerZone, TraversalClientZone, DnsZone], Field(discriminator="type")
]


# ---- transforms and search rules (seed 003 §6) ------------------------------------------------

class _PatternRules(_Model):
    """Validators shared by Transform and SearchRule (fields declared in the
    subclasses, ``pattern_type`` before ``pattern`` before ``replace``)."""

    @field_validator("pattern", check_fields=False)
    @classmethod
    def _pattern_ok(cls, v: str, info: ValidationInfo) -> str:
        if "pattern_type" in info.data:
            check_pattern(info.data["pattern_type"], v)
        return v

    @field_validator("replace", check_fields=False)
    @classmethod
    def _replace_ok(cls, v: str, info: ValidationInfo) -> str:
        d = info.data
        if "pattern" in d and "behaviour" in d and d.get("pattern_type") == "regex":
            check_pattern("regex", d["pattern"], d["behaviour"], v)
        return v


class Transform(_PatternRules):
    """Alias transform, applied before call policy and search rules; the
    first matching enabled one (lowest ``priority``) wins."""

    priority: Priority
    pattern_type: PatternType
    pattern: str
    behaviour: Behaviour = "leave"
    replace: str = ""
    enabled: bool = True


class SearchRule(_PatternRules):
    """Search rule (seed 003 §6.2). Lowest ``priority`` first; ``any_alias``
    matches every alias; ``source_zone`` (None = any) filters by the
    request's classified zone; ``progress`` stop ends the search after a match."""

    name: Text
    priority: Priority
    mode: Literal["any_alias", "alias_pattern_match"] = "alias_pattern_match"
    pattern_type: PatternType = "regex"
    pattern: str = ""
    behaviour: Behaviour = "leave"
    replace: str = ""
    progress: Literal["stop", "continue"] = "stop"
    source_zone: str | None = None
    target_zone: Text
    enabled: bool = True


class PolicyRule(_Model):
    """Call policy rule (seed 003 §6.5): ``source`` and ``destination`` are regexes
    matched against the whole source and destination aliases (``%localdomains%``
    expands); the first matching rule's ``action`` applies; no match = accept."""

    source: str = ".*"
    destination: str = ".*"
    action: Literal["accept", "reject"]

    @field_validator("source", "destination")
    @classmethod
    def _regex_ok(cls, v: str) -> str:
        check_pattern("regex", v)
        return v


# ---- mobile and remote access (seed 002; issue 9) ---------------------------------------------
# MraConfig keeps its blocks apart: listener, tunnel and discovery (issue 9 items 1-2), and the
# HTTP allow list (issue 9 item 3).

#: The deployment that always exists and cannot be deleted (seed 002 §3).
DEFAULT_DEPLOYMENT = "Default deployment"

_METHOD_TOKEN = Annotated[str, _rule(lambda v: bool(v) and v.isascii() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in v)
                                     and v == v.upper(), "must be an upper-case HTTP method token such as GET")]


def _rule_url(v: str) -> str:
    try:
        normalise_url(v, allow_port_zero=True)
    except TargetError as exc:
        raise ValueError(f"must be http(s)://host[:port][/path] ({exc.reason})") from None
    if "?" in v:
        raise ValueError("must be http(s)://host[:port][/path] (a rule's URL has no query)")
    return v


class HttpAllowRule(_Model):
    """An editable inbound HTTP allow-list rule (seed 002 §8.6 Table 5, §8.7 Table 6).

    ``url``: ``http(s)://host[:port][/path]``, port 0–65535 defaulting to 80/443, no
    user-info or query. ``match``: ``exact`` or ``prefix`` (seed §8.7: default prefix; prefix
    is a plain string prefix of the normalised path). ``methods``: None = use
    ``mra.default_methods``; otherwise the chosen HTTP methods (case-sensitive tokens).
    ``deployment``: one of ``mra.deployments`` (or the default deployment)."""

    url: Annotated[str, AfterValidator(_rule_url)]
    match: Literal["exact", "prefix"] = "prefix"
    methods: Annotated[list[_METHOD_TOKEN], Field(min_length=1)] | None = None
    deployment: Text = DEFAULT_DEPLOYMENT
    description: str = ""


class InternalServer(_Model):
    """An internal server whose type generates automatic inbound allow-list rules (seed 002
    §8.5): ``call_control`` (Unified CM: UDS), ``presence`` (IM and Presence), ``voicemail``
    (Unity Connection), ``tftp`` (configuration files over HTTP/HTTPS). ``ports`` empty = the
    type's default ports (see :data:`edgeway.mra.allowlist.AUTOMATIC_RULES`); otherwise the
    type's rule applies on these ports with ``scheme`` (default: the type's usual scheme).
    ``deployment``: the deployment the server belongs to (seed 002 §3, §4.1); its automatic
    rules are that deployment's. A host belongs to one deployment only (see :class:`MraConfig`)."""

    type: Literal["call_control", "presence", "voicemail", "tftp"]
    host: Text
    ports: list[Port] = []
    scheme: Literal["http", "https"] | None = None
    deployment: Text = DEFAULT_DEPLOYMENT

    @field_validator("host")
    @classmethod
    def _host_ok(cls, v: str) -> str:
        probe = f"[{v}]" if ":" in v and not v.startswith("[") else v
        try:
            normalise_url(f"https://{probe}/")
        except TargetError as exc:
            raise ValueError(f"must be a DNS name or IP address ({exc.reason})") from None
        return v


def _plain_entry(key: str, what: str) -> BeforeValidator:
    """A list entry written as a plain string stands for the table ``{<key> = "<string>"}``
    (so it belongs to the default deployment); a table is taken as it is."""

    def convert(v: Any) -> Any:
        if isinstance(v, str):
            return {key: v}
        if isinstance(v, (dict, BaseModel)):
            return v
        raise ValueError(f"must be a {what} (string) or a table {{{key} = ..., deployment = ...}}")
    return BeforeValidator(convert)


def _server_key(host: str) -> str:
    """The identity of an internal server in the deployment checks: its host, lower-case,
    without IPv6 brackets."""
    return host.strip("[]").lower()


class MraDomain(_Model):
    """One MRA (edge) domain (seed 002 §2.2, §8.1) and the deployment it belongs to (seed 002
    §3: a domain belongs to exactly one deployment). In ``mra.domains`` a plain string
    ``"a.example"`` means ``{name = "a.example"}``: the default deployment. ``name`` is
    compared case-insensitively, a trailing dot ignored (:attr:`key`)."""

    name: Text
    deployment: Text = DEFAULT_DEPLOYMENT

    @property
    def key(self) -> str:
        """``name`` lower-case without a trailing dot: what a decoded request domain is compared with."""
        return self.name.lower().rstrip(".")


class UdsServer(_Model):
    """An internal UDS (call control, Unified CM) server listed in ``get_edge_config`` for
    the clients of its deployment and asked to check their credentials (seed 002 §8.3: UDS
    on 8443; §12.2; §3: a node belongs to exactly one deployment). ``address`` ``"host"`` or
    ``"host:port"`` (default port 8443). In ``mra.uds_servers`` a plain string means
    ``{address = "..."}``: the default deployment."""

    address: HostPort
    deployment: Text = DEFAULT_DEPLOYMENT

    @property
    def host_port(self) -> tuple[str, int]:
        """``(host, port)``, port 8443 when the address has none."""
        return split_hostport(self.address, 8443)


class TurnServer(_Model):
    """A TURN server listed in ``get_edge_config`` (``turnEdgeServer``): ``host`` (name or
    address), ``udp_port`` and ``tcp_port`` (RFC 8656 default 3478; 0 = not offered)."""

    host: Text
    udp_port: PortOrOff = 3478
    tcp_port: PortOrOff = 3478


class MraConfig(_Model):
    """Mobile and remote access (seed 002). Off unless ``enabled``; no allow rules by
    default: every proxied request blocked.

    Listener, tunnel, discovery (issue 9 items 1-2; :mod:`edgeway.mra`):

    - ``enabled``: run the MRA HTTPS proxy (edge: the HTTPS listener and the tunnel
      listener; core: the tunnel connections and the request handler).
    - ``domains``: the UC (edge) domains served (seed 002 §8.1), each in one deployment (see
      Deployments below); a request (``get_edge_config`` or proxied) for any other domain is
      answered 404. At most 50 (seed 002 §1.7).
    - ``https_port`` (edge; default 8443, seed 002 §13.3) and ``https_listen_ips`` (edge;
      addresses the HTTPS listener binds, IPv4 and IPv6; empty = ``sip.listen_ip``). The
      core uses ``https_port`` as the edge's port in ``get_edge_config``.
    - ``tunnel_port``: the edge's tunnel listener (mutual TLS, default 2222, seed 002 §13.1).
    - ``tunnel_zone``: the traversal zone whose settings the tunnel shares: on the edge the
      core's TLS verify subject name, the username (its password from ``[[credentials]]``)
      and the keepalive settings; on the core the peers, username, password, keepalive and
      reconnect interval. None = the node's only traversal zone.
    - ``tunnel_peers`` (core): edge addresses ``"host"`` or ``"host:port"`` (default port
      ``tunnel_port``); empty = the hosts of the traversal zone's peers.
    - ``tunnel_connections`` (core): connections kept open to each peer (1-8); requests are
      multiplexed over them (HTTP/2, RFC 9113).
    - ``request_timeout_s``: seconds the edge waits for the response head (then ``504``) and,
      between two pieces of a body, for the next piece (then the exchange is aborted).
    - ``max_request_bytes`` / ``max_response_bytes``: body limits; over them the edge answers
      ``413`` / ``502`` (a response already under way is aborted).
    - ``edge_hostname`` (core): the edge's public name in ``get_edge_config`` (None = the first
      tunnel peer's host); ``edge_sip_tls_port``: its SIP TLS port there (5061).
    - ``uds_servers`` (core): internal UDS servers (:class:`UdsServer`, ``"host"`` or
      ``"host:port"``, default port 8443, seed 002 §8.3, §12.2), each in one deployment:
      ``get_edge_config`` lists those of the request's deployment, and the first of them
      checks the credentials of that deployment's clients.
    - ``turn_servers`` (core): TURN servers listed in ``get_edge_config``.

    HTTP allow list (issue 9 item 3; :class:`edgeway.mra.allowlist.AllowList.from_config`):
    ``default_methods`` the global default method set (seed 002 §8.6: changing it changes
    every rule that uses defaults; Edgeway's factory default is GET); ``allow_rules`` the
    editable inbound rules; ``internal_servers`` the servers automatic rules are generated
    for.

    Deployments (issue 9 item 7; seed 002 §3, §2.2 "Deployment", §8.6): a deployment encloses
    domains and internal servers; the clients of a domain see only their deployment's servers
    (``get_edge_config``) and rules (the allow list checks a proxied request with the
    deployment of the domain in its first path segment). ``deployments`` lists the extra
    deployment names; ``"Default deployment"`` always exists, need not be listed and cannot be
    removed; it holds every domain, server and rule that names no deployment. Membership is
    written on the member::

        [mra]
        deployments = ["Staging"]
        domains = ["corp.example",                                  # Default deployment
                   {name = "staging.example", deployment = "Staging"}]
        uds_servers = ["ucm.corp.example",                          # Default deployment
                       {address = "ucm.staging.example:8443", deployment = "Staging"}]

        [[mra.internal_servers]]
        type = "call_control"
        host = "ucm.staging.example"
        deployment = "Staging"                # its automatic rules belong to Staging

        [[mra.allow_rules]]
        url = "https://wiki.staging.example/"
        deployment = "Staging"

    Rules (each reported with its key, value and rule): deployment names are unique (case
    ignored); every ``deployment`` a member names exists; a domain is listed once (case and a
    trailing dot ignored), so it belongs to exactly one deployment; a server (a host of
    ``internal_servers`` or ``uds_servers``, case ignored) belongs to exactly one
    deployment (it may be listed several times in that one: several types, UDS)."""

    # -- listener, tunnel, discovery (issue 9 items 1-2) --
    enabled: bool = False
    domains: Annotated[list[Annotated[MraDomain, _plain_entry("name", "domain name")]], Field(max_length=50)] = []
    https_port: Port = 8443
    https_listen_ips: list[IpAddr] = []
    tunnel_port: Port = 2222
    tunnel_zone: str | None = None
    tunnel_peers: Annotated[list[HostPort], Field(max_length=6)] = []
    tunnel_connections: Annotated[int, _between(1, 8)] = 1
    request_timeout_s: PosFloat = 30.0
    max_request_bytes: PosInt = 10 << 20
    max_response_bytes: PosInt = 100 << 20
    edge_hostname: str | None = None
    edge_sip_tls_port: Port = 5061
    uds_servers: list[Annotated[UdsServer, _plain_entry("address", "\"host\" or \"host:port\"")]] = []
    turn_servers: list[TurnServer] = []
    # -- credentials and tokens (issue 9 item 4; seed 002 §10) --
    credentials_refresh_min: PosFloat = 480.0
    """Minutes an access token (and a verified credential) stays valid."""
    credentials_cleanup_min: PosFloat = 720.0
    """Minutes between purges of expired tokens."""
    max_authorizations: PosInt = 5
    """Credential checks per user against call control within ``authorization_period_s``;
    more get 429 (authorization rate control)."""
    authorization_period_s: PosFloat = 60.0

    # -- HTTP allow list (issue 9 item 3) --
    default_methods: list[_METHOD_TOKEN] = ["GET"]
    allow_rules: list[HttpAllowRule] = []
    internal_servers: list[InternalServer] = []
    deployments: list[Text] = []

    @property
    def uds_addresses(self) -> list[tuple[str, int]]:
        """Every ``uds_servers`` entry parsed to ``(host, port)`` (default port 8443), all
        deployments."""
        return [u.host_port for u in self.uds_servers]

    def uds_addresses_of(self, deployment: str) -> list[tuple[str, int]]:
        """The ``(host, port)`` of the UDS servers of ``deployment``, in file order."""
        return [u.host_port for u in self.uds_servers if u.deployment == deployment]

    @property
    def deployment_names(self) -> list[str]:
        """``"Default deployment"`` followed by the other configured deployments."""
        return list(dict.fromkeys([DEFAULT_DEPLOYMENT, *self.deployments]))

    @property
    def domain_names(self) -> list[str]:
        """The served domains (:attr:`MraDomain.key` form), every deployment."""
        return [d.key for d in self.domains]

    def deployment_of(self, domain: str) -> str | None:
        """The deployment of ``domain`` (compared case-insensitively, a trailing dot ignored);
        None when it is not one of ``domains`` (the caller answers 404)."""
        key = domain.lower().rstrip(".")
        return next((d.deployment for d in self.domains if d.key == key), None)

    @model_validator(mode="after")
    def _deployment_checks(self) -> "MraConfig":
        problems: list[tuple[str, Any, str]] = []
        seen: dict[str, int] = {}
        for i, d in enumerate(self.deployments):
            low = d.lower()
            if d != DEFAULT_DEPLOYMENT and low == DEFAULT_DEPLOYMENT.lower():
                problems.append((f"deployments[{i}]", d, f"clashes with the built-in {DEFAULT_DEPLOYMENT!r} (case ignored)"))
                continue
            if low in seen:
                first = self.deployments[seen[low]]
                problems.append((f"deployments[{i}]", d, "must be unique" + (
                    "" if first == d else f" (clashes with {first!r}, case ignored)")))
            seen.setdefault(low, i)
        known = set(self.deployment_names)
        members: list[tuple[str, list[Any]]] = [("domains", self.domains), ("uds_servers", self.uds_servers),
                                                ("internal_servers", self.internal_servers),
                                                ("allow_rules", self.allow_rules)]
        for key, items in members:
            for i, item in enumerate(items):
                if item.deployment not in known:
                    problems.append((f"{key}[{i}].deployment", item.deployment,
                                     "must be 'Default deployment' or one of mra.deployments"))
        domains: dict[str, int] = {}
        for i, d in enumerate(self.domains):
            j = domains.setdefault(d.key, i)
            if j != i:
                first = self.domains[j]
                where = ("already listed" if first.deployment == d.deployment
                         else f"already in deployment {first.deployment!r}")
                rule = (f"must be listed once: {where} at mra.domains[{j}] "
                        "(a domain belongs to exactly one deployment, seed 002 §3)")
                problems.append((f"domains[{i}]", d.name, rule))
        servers: dict[str, tuple[str, str]] = {}
        located = [(f"internal_servers[{i}]", s.host, s) for i, s in enumerate(self.internal_servers)]
        located += [(f"uds_servers[{i}]", s.host_port[0], s) for i, s in enumerate(self.uds_servers)]
        for where, host, item in located:
            first_dep, first_where = servers.setdefault(_server_key(host), (item.deployment, where))
            if first_dep == item.deployment:
                continue
            why = f"mra.{first_where} has server {host!r} in {first_dep!r} (a server belongs to exactly one deployment, seed 002 §3)"
            if "deployment" in item.model_fields_set:
                problems.append((f"{where}.deployment", item.deployment, f"puts a server in a second deployment: {why}"))
            elif isinstance(item, UdsServer):
                problems.append((where, item.address, f"is in {DEFAULT_DEPLOYMENT!r} (no deployment given) but {why}"))
            else:
                problems.append((f"{where}.host", item.host, f"is in {DEFAULT_DEPLOYMENT!r} (no deployment given) but {why}"))
        if problems:
            raise ConfigProblems(problems)
        return self


class TurnUser(_Model):
    """One long-term credential of the STUN/TURN server (RFC 8489 §9.2)."""

    username: Text
    password: Text


class TurnConfig(_Model):
    """STUN (RFC 8489) and TURN (RFC 8656) server of an edge (issue 10 items 2-3;
    :mod:`edgeway.turn`). Off unless ``enabled``.

    - ``listen_ip``: address the listeners bind (default ``sip.listen_ip``);
      ``udp_ports``/``tcp_ports``/``tls_ports``: one listener per port (RFC 8656 §4:
      3478 for UDP/TCP, 5349 for TLS; add 5004 or 443 for media nodes that clients reach
      only there; ``[]`` = none). TLS uses the node's ``[tls]`` certificate.
    - ``relay``: serve TURN allocations (off: STUN Binding only). Relayed transport
      addresses come from the node's media port range (``[media]``).
    - ``realm``, ``users`` (static long-term credentials) and/or ``shared_secret``
      (time-limited "TURN REST API" credentials as coturn's ``use-auth-secret``:
      username ``"<expiry Unix time>:<user>"``, password
      ``base64(HMAC-SHA1(shared_secret, username))``). TURN needs at least one.
    - ``stun_requires_auth``: Binding requests must carry MESSAGE-INTEGRITY(-SHA256)
      with these credentials (401 otherwise). Off: anyone may ask for their mapped address.
    - ``max_allocations`` (total) and ``max_allocations_per_user``: 486 past them.
    - ``default_lifetime_s`` / ``max_lifetime_s``: allocation lifetime (RFC 8656 §7.2:
      600 s default, requests capped at the max), seconds.
    - ``nonce_lifetime_s``: seconds a NONCE stays valid (438 Stale Nonce after).
    - ``denied_peer_ips``: CIDRs clients may not relay to (403 to CreatePermission and
      ChannelBind): by default this-network, loopback, multicast and broadcast; add the
      inside networks the edge can reach so TURN cannot be used to get behind it.
    """

    enabled: bool = False
    listen_ip: IpAddr | None = None
    udp_ports: list[Port] = [3478]
    tcp_ports: list[Port] = [3478]
    tls_ports: list[Port] = [5349]
    relay: bool = True
    realm: Text = "edgeway"
    users: list[TurnUser] = []
    shared_secret: str | None = None
    stun_requires_auth: bool = False
    max_allocations: PosInt = 1000
    max_allocations_per_user: PosInt = 10
    default_lifetime_s: PosInt = 600
    max_lifetime_s: PosInt = 3600
    nonce_lifetime_s: PosInt = 600
    denied_peer_ips: list[Annotated[str, AfterValidator(_cidr)]] = [
        "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128", "ff00::/8"]
    software: str = "Edgeway"

    @model_validator(mode="after")
    def _checks(self) -> TurnConfig:
        problems: list[tuple[str, Any, str]] = []
        if self.max_lifetime_s < self.default_lifetime_s:
            problems.append(("max_lifetime_s", self.max_lifetime_s,
                             f"must be >= default_lifetime_s ({self.default_lifetime_s})"))
        if self.enabled and (self.relay or self.stun_requires_auth) and not (self.users or self.shared_secret):
            problems.append(("users", [], "must hold a credential (or set shared_secret) when turn.enabled "
                                          "with relay or stun_requires_auth"))
        for key in ("udp_ports", "tcp_ports", "tls_ports"):
            ports = getattr(self, key)
            if len(set(ports)) != len(ports):
                problems.append((key, ports, "must not repeat a port"))
        if problems:
            raise ConfigProblems(problems)
        return self


# ---- the node ----------------------------------------------------------------------------------

class NodeConfig(_Model):
    """Whole configuration of one node (``role`` edge = DMZ, core = inside, media = a media
    node: STUN, TURN and relay only, the targets of ``edgeway probe``, seed 004).
    ``name`` appears in Warning/Server headers."""

    role: Literal["edge", "core", "media"]
    name: Text
    sip: SipConfig
    timers: TimerConfig = Field(default_factory=TimerConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    flood: FloodConfig = Field(default_factory=FloodConfig)
    intrusion_protection: IntrusionConfig = Field(default_factory=IntrusionConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    registrar: RegistrarConfig = Field(default_factory=RegistrarConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    credentials: list[Credential] = []
    zones: list[ZoneConfig] = []
    transforms: list[Transform] = []
    call_policy: list[PolicyRule] = []
    search_rules: list[SearchRule] = []
    mra: MraConfig = Field(default_factory=MraConfig)
    turn: TurnConfig = Field(default_factory=TurnConfig)

    @property
    def local_domains(self) -> list[str]:
        """The local SIP domains (``sip.domains``)."""
        return list(self.sip.domains)

    @property
    def zone_names(self) -> list[str]:
        """Configured zone names followed by the built-ins."""
        return [z.name for z in self.zones] + list(BUILTIN_ZONES)

    @model_validator(mode="after")
    def _cross_checks(self) -> NodeConfig:
        problems: list[tuple[str, Any, str]] = []
        tokens: dict[str, str] = {}
        forbidden = {"edge": "traversal_client", "core": "traversal_server", "media": None}[self.role]
        if self.role == "media":
            # A media node runs no SIP: STUN, TURN and the relay only (issue 10 item 5).
            if not self.turn.enabled:
                problems.append(("turn.enabled", self.turn.enabled, "must be true when role = 'media'"))
            for key in ("zones", "search_rules", "transforms", "call_policy"):
                if getattr(self, key):
                    problems.append((key, f"{len(getattr(self, key))} entries", "must be empty when role = 'media'"))
            if self.mra.enabled:
                problems.append(("mra.enabled", True, "must be false when role = 'media'"))
        for i, z in enumerate(self.zones):
            tok = zone_token(z.name)
            if tok in {zone_token(b) for b in BUILTIN_ZONES}:
                problems.append((f"zones[{i}].name", z.name, "is reserved for a built-in zone"))
            elif tok in tokens:
                problems.append((f"zones[{i}].name", z.name,
                                 f"must be unique (clashes with zone {tokens[tok]!r}, spaces ignored)"))
            tokens.setdefault(tok, z.name)
            if z.type == forbidden:
                problems.append((f"zones[{i}].type", z.type, f"is not allowed when role = {self.role!r}"))
        known = set(self.zone_names)
        for i, r in enumerate(self.search_rules):
            for key in ("source_zone", "target_zone"):
                val = getattr(r, key)
                if val is not None and val not in known:
                    problems.append((f"search_rules[{i}].{key}", val,
                                     "must name a configured zone or LocalZone/DefaultZone"))
        problems += self._mra_checks()
        if self.turn.enabled and self.role == "core":
            problems.append(("turn.enabled", True, "is only allowed when role = 'edge' or 'media' (the STUN/TURN server "
                                                   "faces the internet)"))
        if self.turn.enabled and self.turn.tls_ports and not (self.tls.cert_file and self.tls.key_file):
            problems.append(("turn.tls_ports", self.turn.tls_ports,
                             "need tls.cert_file and tls.key_file (or set turn.tls_ports = [])"))
        if problems:
            raise ConfigProblems(problems)
        if self.media.ip is None:
            self.media.ip = self.sip.listen_ip
            self.media.advertise_ip = self.media.advertise_ip or self.sip.advertise_ip
        return self

    def mra_zone(self) -> TraversalServerZone | TraversalClientZone | None:
        """The traversal zone the MRA tunnel shares settings with (``mra.tunnel_zone``, or
        the node's only traversal zone); None when there is none or it is ambiguous."""
        zones = [z for z in self.zones if isinstance(z, (TraversalServerZone, TraversalClientZone))]
        if self.mra.tunnel_zone is not None:
            zones = [z for z in zones if z.name == self.mra.tunnel_zone]
        return zones[0] if len(zones) == 1 else None

    def mra_tunnel_peers(self) -> list[tuple[str, int]]:
        """Core: the edge addresses the MRA tunnel connects to, ``(host, port)``."""
        if self.mra.tunnel_peers:
            return [split_hostport(p, self.mra.tunnel_port) for p in self.mra.tunnel_peers]
        z = self.mra_zone()
        return [(h, self.mra.tunnel_port) for h, _ in z.peer_addresses] if isinstance(z, TraversalClientZone) else []

    def _mra_checks(self) -> list[tuple[str, Any, str]]:
        m = self.mra
        if not m.enabled:
            return []
        kind = "traversal_server" if self.role == "edge" else "traversal_client"
        z = self.mra_zone()
        if z is None or z.type != kind:
            rule = (f"must name a {kind} zone" if m.tunnel_zone is not None
                    else f"must be set: the node has no single {kind} zone for the MRA tunnel to share")
            return [("mra.tunnel_zone", m.tunnel_zone if m.tunnel_zone is not None else MISSING, rule)]
        if self.role == "edge" and not any(c.username == z.username for c in self.credentials):
            return [("credentials", [c.username for c in self.credentials],
                     f"must hold the MRA tunnel zone's username {z.username!r} when mra.enabled")]
        if not (self.tls.cert_file and self.tls.ca_file):
            return [("tls.ca_file", self.tls.ca_file, "must be set with tls.cert_file when mra.enabled (mutual-TLS tunnel)")]
        return []
