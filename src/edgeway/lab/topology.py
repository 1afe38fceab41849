"""The lab plan (DESIGN §5): addresses, names, PKI, node configurations and DNS zone.

Everything lives on loopback: distinct ``127.0.0.x`` addresses stand in for
separate hosts (all of ``127/8`` is local on Linux), so the standard SIP ports
never collide::

    bob   (outside, partner.edgeway.test)   127.0.0.5:5060/udp
    edge  (DMZ)                             127.0.0.2  SIP 5060 udp/tcp, 5061 tls, traversal 7001
    core  (inside)                          127.0.0.3  SIP 5060 udp/tcp, 5061 tls
    alice (inside call control neighbour)   127.0.0.4:5060/tcp
    lab DNS (authoritative, edgeway.test)   127.0.0.10:5300 udp+tcp

:class:`LabTopology` holds the plan (every value overridable for tests) and
:meth:`LabTopology.build` writes the files a lab run needs into a work
directory, returning their paths as :class:`LabFiles`.
"""

from __future__ import annotations

import copy
import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeway.config import NodeConfig, parse_config
from edgeway.lab.dns_server import Record, records_from_text
from edgeway.security.pki import write_lab_pki

__all__ = [
    "EDGE_IP", "CORE_IP", "CALL_CONTROL_IP", "PARTNER_IP", "DNS_IP", "DNS_PORT", "INSIDE_DNS_IP",
    "SIP_PORT", "TLS_PORT", "TRAVERSAL_PORT", "ZONE_APEX", "CORP_DOMAIN", "PARTNER_DOMAIN",
    "EDGE_FQDN", "CORE_FQDN", "PARTNER_UA_FQDN", "ALICE", "BOB",
    "TRAVERSAL_ZONE", "DNS_ZONE", "CALL_CONTROL_ZONE", "TRAVERSAL_USERNAME", "HOST_NAMES",
    "LabTopology", "LabFiles", "dump_toml",
]

# ---- the fixed plan ----------------------------------------------------------------------------

#: Edge (DMZ) address: SIP towards the outside, traversal server.
EDGE_IP = "127.0.0.2"
#: Core (inside) address: SIP towards call control, traversal client.
CORE_IP = "127.0.0.3"
#: The inside call-control neighbour (alice's user agent stands in for it).
CALL_CONTROL_IP = "127.0.0.4"
#: The outside world (bob's user agent at ua.partner.edgeway.test).
PARTNER_IP = "127.0.0.5"
#: Lab DNS server address and port (UDP and TCP): the outside view.
DNS_IP = "127.0.0.10"
DNS_PORT = 5300
#: The inside view (split DNS, seed 002 §8.1, §12.2): the same zones plus
#: ``_cisco-uds._tcp``, which must not resolve outside. The core resolves here.
INSIDE_DNS_IP = "127.0.0.11"
#: SIP UDP/TCP port used by every lab host.
SIP_PORT = 5060
#: SIP TLS port of the nodes.
TLS_PORT = 5061
#: The lab's media nodes (issue 10 item 5; seed 004): name → (address, UDP served). media-b
#: does not listen on UDP, so ``edgeway probe`` falls back to TCP for it. STUN over UDP
#: and TCP on 5004; TLS on 5349 (seed 004 uses 443, which needs privileges).
MEDIA_NODES: dict[str, tuple[str, bool]] = {"media-a": ("127.0.0.12", True), "media-b": ("127.0.0.13", False)}
MEDIA_NODE_PORT = 5004
MEDIA_NODE_TLS_PORT = 5349
#: The edge's STUN/TURN ports (RFC 8656 §4: 3478 UDP/TCP, 5349 TLS).
TURN_PORT = 3478
TURN_TLS_PORT = 5349
#: Edge traversal server port (mutual TLS).
TRAVERSAL_PORT = 7001
#: DNS zone the lab server is authoritative for.
ZONE_APEX = "edgeway.test"
#: The enterprise's SIP domain (local to both nodes).
CORP_DOMAIN = "corp.edgeway.test"
#: The outside partner's SIP domain.
PARTNER_DOMAIN = "partner.edgeway.test"
EDGE_FQDN = f"edge.{CORP_DOMAIN}"
CORE_FQDN = f"core.{CORP_DOMAIN}"
PARTNER_UA_FQDN = f"ua.{PARTNER_DOMAIN}"
#: Inside user (registered nowhere; reached through the Call Control neighbour).
ALICE = f"alice@{CORP_DOMAIN}"
#: Outside user (reached by RFC 3263 lookup of partner.edgeway.test).
BOB = f"bob@{PARTNER_DOMAIN}"
#: The cloud calling service stand-in (issue 3): its SBC at 127.0.0.6 presents a
#: certificate with the SAN callservice.<cloud domain>; cloud-side users at 127.0.0.7.
CLOUD_IP = "127.0.0.6"
CLOUD_USER_IP = "127.0.0.7"
CLOUD_DOMAIN = "cloud.edgeway.test"
CLOUD_SERVICE_FQDN = f"callservice.{CLOUD_DOMAIN}"
CLOUD_SBC_FQDN = f"l2sip-a.{CLOUD_DOMAIN}"
MTLS_PORT = 5062
HYBRID_ZONE = "Hybrid Call Services DNS"
TRAVERSAL_ZONE = "Traversal Zone"
DNS_ZONE = "DNS Zone"
CALL_CONTROL_ZONE = "Call Control"
#: Username the core authenticates with on the traversal zone.
TRAVERSAL_USERNAME = "core"
#: Remote users (mobile and remote access) register through the edge to the core's
#: own registrar for this domain (issue 9 items 5–6).
REMOTE_DOMAIN = "remote.edgeway.test"
#: The registrar's lab user store: username → password.
REMOTE_USERS = {"carol": "carol-lab-secret", "dave": "dave-lab-secret"}
#: Remote users of this domain register through the edge and the core to the registrar
#: of call control ("SIP registrations on Unified CM", seed 002 §2.2): the core forwards
#: their REGISTERs to the Call Control zone, Contact rewritten or with Path (§2.3).
UCM_DOMAIN = "ucm.edgeway.test"
#: The remote (MRA) client of ``edgeway lab``'s demo: carol's phone, outside, over TLS.
REMOTE_UA_IP = "127.0.0.8"
#: Token the lab DNS publishes as TXT ``edgeway-site-verification=<token>`` on the corp
#: domain, for ``edgeway domain verify`` (seed 000: domain verification).
VERIFICATION_TOKEN = "edgeway-lab-7f3c2a"
#: Loopback address → lab host name, for ladders and reports.
HOST_NAMES: dict[str, str] = {
    EDGE_IP: "edge",
    CORE_IP: "core",
    CALL_CONTROL_IP: "alice",
    PARTNER_IP: "bob",
    DNS_IP: "dns",
}


# ---- a minimal TOML writer ---------------------------------------------------------------------

def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"dump_toml: cannot write {v!r}")
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Path):
        return json.dumps(str(v), ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"dump_toml: unsupported value type {type(v).__name__}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _dump_table(data: dict[str, Any], prefix: str, out: list[str]) -> None:
    for k, v in data.items():
        if v is None or isinstance(v, dict) or _is_table_array(v):
            continue
        out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in data.items():
        name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
        if isinstance(v, dict):
            out.append("")
            out.append(f"[{name}]")
            _dump_table(v, name, out)
        elif _is_table_array(v):
            for item in v:
                out.append("")
                out.append(f"[[{name}]]")
                _dump_table(item, name, out)


def dump_toml(data: dict[str, Any]) -> str:
    """Serialise a configuration dict to TOML text.

    Supports what node configurations use: strings, ints, floats, booleans,
    paths, lists of those, nested tables and arrays of tables. ``None`` values
    are left out (TOML has no null). ``tomllib.loads(dump_toml(d)) == d`` for
    such data (paths come back as strings).
    """
    out: list[str] = []
    _dump_table(data, "", out)
    return "\n".join(out).lstrip("\n") + "\n"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base``: dicts merge, anything else
    (lists included) replaces; a ``None`` value deletes the key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---- the plan ----------------------------------------------------------------------------------

@dataclass
class LabFiles:
    """Paths written by :meth:`LabTopology.build` (all inside ``workdir``).

    Attributes:
        workdir: the work directory.
        ca, ca_key: lab CA certificate and key (``pki/ca.pem``, ``pki/ca.key``).
        edge_cert, edge_key, core_cert, core_key: node chains (leaf + CA) and keys.
        edge_config, core_config: node TOML files.
        dns_zone: the zone in :func:`~edgeway.lab.dns_server.records_from_text` syntax.
        edge_events, core_events: where the nodes write their JSON-lines event logs.
        password: the traversal password (random per build unless fixed).
    """

    workdir: Path
    ca: Path
    ca_key: Path
    edge_cert: Path
    edge_key: Path
    core_cert: Path
    core_key: Path
    edge_config: Path
    core_config: Path
    dns_zone: Path
    edge_events: Path
    core_events: Path
    password: str
    #: Media node name → its configuration (``role = "media"``).
    media_configs: dict[str, Path] = field(default_factory=dict)

    def config(self, node: str) -> Path:
        """Configuration path of ``"edge"`` or ``"core"``."""
        return {"edge": self.edge_config, "core": self.core_config, **self.media_configs}[node]

    def events(self, node: str) -> Path:
        """Event-log path of ``"edge"`` or ``"core"``."""
        return {"edge": self.edge_events, "core": self.core_events}[node]


@dataclass
class LabTopology:
    """The lab plan; every field may be overridden (tests reuse the plan with
    shorter timers or extra settings).

    ``edge_overrides`` / ``core_overrides`` are deep-merged into the generated
    configuration dicts just before validation (dicts merge, lists replace,
    ``None`` deletes a key), e.g. ``{"log": {"level": "DEBUG"}}`` or
    ``{"timers": {"t1_ms": 100}}``. ``traversal_password`` ``None`` means a
    fresh random one per :meth:`build`. ``sip_messages`` is written into each
    node's ``[log]`` explicitly (the product default is off; the lab's report builds
    its ladders from the per-message ``sip message`` events, so the lab turns them
    on). ``max_events_per_s`` (lines per second per event type, 0 = no cap) is
    written too: the lab's default is no cap, because the report and the tests read
    every line of the event logs (a SIPp run at 20 calls/s logs several hundred ``sip message``
    lines per second per node, over the product's cap of 200); a lab run that checks
    the log bounds (issue 7 item 4) sets it, and ``sip_messages``, like a product
    node. Rotation (``log.max_bytes``) keeps the product default; set it through
    ``edge_overrides`` / ``core_overrides``.
    """

    edge_ip: str = EDGE_IP
    core_ip: str = CORE_IP
    call_control_ip: str = CALL_CONTROL_IP
    call_control_port: int = SIP_PORT
    call_control_transport: str = "tcp"
    partner_ip: str = PARTNER_IP
    partner_port: int = SIP_PORT
    dns_ip: str = DNS_IP
    dns_port: int = DNS_PORT
    inside_dns_ip: str = INSIDE_DNS_IP
    dns_timeout_s: float = 2.0
    sip_port: int = SIP_PORT
    tls_port: int = TLS_PORT
    traversal_port: int = TRAVERSAL_PORT
    domain: str = CORP_DOMAIN
    partner_domain: str = PARTNER_DOMAIN
    traversal_username: str = TRAVERSAL_USERNAME
    traversal_password: str | None = None
    keepalive_interval_s: float = 2.0
    probe_retry_count: int = 2
    probe_retry_interval_s: float = 1.0
    retry_interval_s: float = 1.0
    media_port_min: int = 36000
    media_port_max: int = 59999
    media_inactivity_timeout_s: float = 30.0
    log_level: str = "INFO"
    sip_messages: bool = True
    max_events_per_s: int = 0
    verification_token: str = VERIFICATION_TOKEN
    #: MRA HTTPS proxy (issue 9): the edge's HTTPS port, the tunnel port, and the internal web
    #: services stand-in (:mod:`edgeway.lab.webservice`) at ``call_control_ip``.
    mra: bool = True
    https_port: int = 8443
    mra_tunnel_port: int = 2222
    #: The core's "SIP Path headers" (seed 002 §2.3) for registrations it forwards to
    #: call control (``UCM_DOMAIN``): off = Contact rewritten.
    sip_path_headers: bool = False
    #: Start the media nodes of :data:`MEDIA_NODES` (``edgeway lab`` probes them).
    media_nodes: bool = True
    #: When set, each node serves its status page, JSON and metrics on ``<ip>:status_port``
    #: for this bearer token, or HTTP Basic ``admin`` with it as password (issue 11 item 6).
    status_token: str | None = None
    status_port: int = 8090
    edge_overrides: dict[str, Any] = field(default_factory=dict)
    core_overrides: dict[str, Any] = field(default_factory=dict)

    # -- derived names ------------------------------------------------------------------------

    @property
    def edge_fqdn(self) -> str:
        """``edge.<domain>``: the edge's DNS name and certificate CN."""
        return f"edge.{self.domain}"

    @property
    def core_fqdn(self) -> str:
        """``core.<domain>``: the core's certificate CN (the edge's verify subject name)."""
        return f"core.{self.domain}"

    @property
    def partner_fqdn(self) -> str:
        """``ua.<partner_domain>``: the outside user agent's host name."""
        return f"ua.{self.partner_domain}"

    @property
    def alice(self) -> str:
        """The inside user's address of record (no scheme)."""
        return f"alice@{self.domain}"

    @property
    def bob(self) -> str:
        """The outside user's address of record (no scheme)."""
        return f"bob@{self.partner_domain}"

    @property
    def host_names(self) -> dict[str, str]:
        """IP → lab host name (edge, core, alice, bob, dns; carol, the remote client, with MRA)."""
        names = {self.edge_ip: "edge", self.core_ip: "core", self.call_control_ip: "alice",
                 self.partner_ip: "bob", self.dns_ip: "dns"}
        if self.mra:
            names[REMOTE_UA_IP] = "carol"
        return names

    @property
    def dns_server(self) -> tuple[str, int]:
        """``(ip, port)`` of the lab DNS server."""
        return (self.dns_ip, self.dns_port)

    # -- contents -----------------------------------------------------------------------------

    def pki_plan(self) -> dict[str, dict]:
        """``nodes`` argument for :func:`~edgeway.security.pki.write_lab_pki`
        (serverAuth + clientAuth: traversal is mutual TLS)."""
        return {
            # collab-edge.<domain>: the MRA domain as a CollabEdgeDNS SAN (seed 002 §11.2).
            "edge": {"common_name": self.edge_fqdn, "dns_sans": [self.edge_fqdn, f"collab-edge.{self.domain}"],
                     "ip_sans": [self.edge_ip],
                     "server": True, "client": True},
            "core": {"common_name": self.core_fqdn, "dns_sans": [self.core_fqdn], "ip_sans": [self.core_ip],
                     "server": True, "client": True},
            # The cloud SBC stand-in: CN first, then SANs as seed 003 §3.2's cloud cert.
            "cloud": {"common_name": CLOUD_SBC_FQDN, "dns_sans": [CLOUD_SBC_FQDN, CLOUD_SERVICE_FQDN],
                      "ip_sans": [CLOUD_IP], "server": True, "client": True},
            **{name: {"common_name": f"{name}.{self.domain}", "ip_sans": [ip], "server": True, "client": False}
               for name, (ip, _udp) in (MEDIA_NODES.items() if self.media_nodes else ())},
        }

    def zone_text(self) -> str:
        """The lab DNS zone in :func:`~edgeway.lab.dns_server.records_from_text` syntax."""
        d, p = self.domain, self.partner_domain
        return (
            f"; Edgeway lab zone ({ZONE_APEX}); served by the in-process lab DNS server\n"
            f"$TTL 60\n"
            f"$ORIGIN {d}.\n"
            f"edge        A     {self.edge_ip}\n"
            f"core        A     {self.core_ip}\n"
            f'@           NAPTR 10 50 "s" "SIPS+D2T" "" _sips._tcp\n'
            f'@           NAPTR 20 50 "s" "SIP+D2T"  "" _sip._tcp\n'
            f'@           NAPTR 30 50 "s" "SIP+D2U"  "" _sip._udp\n'
            f"_sips._tcp  SRV   10 10 {self.tls_port} edge\n"
            f"_sip._tcp   SRV   10 10 {self.sip_port} edge\n"
            f"_sip._udp   SRV   10 10 {self.sip_port} edge\n"
            f'@           TXT   "edgeway-site-verification={self.verification_token}"\n'
            # MRA discovery (seed 002 §12.1). _cisco-uds._tcp is only in the inside view
            # (inside_zone_text): outside it must not resolve (§8.1, §12.2).
            f"_collab-edge._tls SRV 10 10 {self.https_port} edge\n"
            f"\n"
            f"$ORIGIN {p}.\n"
            f"ua          A     {self.partner_ip}\n"
            f'@           NAPTR 10 50 "s" "SIP+D2U"  "" _sip._udp\n'
            f'@           NAPTR 20 50 "s" "SIP+D2T"  "" _sip._tcp\n'
            f"_sip._udp   SRV   0 0 {self.partner_port} ua\n"
            f"_sip._tcp   SRV   0 0 {self.partner_port} ua\n"
            f"\n"
            f"$ORIGIN {d}.\n"
            f"_sips._tcp.mtls SRV 1 10 {MTLS_PORT} edge\n"
            f"\n"
            f"$ORIGIN {CLOUD_DOMAIN}.\n"
            f"l2sip-a     A     {CLOUD_IP}\n"
            f"_sips._tcp.callservice SRV 5 10 {MTLS_PORT} l2sip-a\n"
            f"_sips._tcp  SRV   5 10 {self.tls_port} l2sip-a\n"
        )

    def dns_records(self) -> list[Record]:
        """:meth:`zone_text` parsed into records for :class:`~edgeway.lab.dns_server.LabDnsServer`."""
        return records_from_text(self.zone_text())

    def inside_zone_text(self) -> str:
        """The inside view (split DNS): :meth:`zone_text` plus call control's name and the
        UDS SRV record ``_cisco-uds._tcp.<domain>`` (seed 002 §12.2), which only inside
        clients (and the core) may resolve."""
        from edgeway.lab.webservice import UDS_PORT

        return self.zone_text() + (
            f"\n$ORIGIN {self.domain}.\n"
            f"cucm        A     {self.call_control_ip}\n"
            f"_cisco-uds._tcp SRV 10 10 {UDS_PORT} cucm\n"
        )

    def inside_dns_records(self) -> list[Record]:
        """:meth:`inside_zone_text` parsed into records."""
        return records_from_text(self.inside_zone_text())

    def _common(self, node: str, workdir: Path, certs: dict[str, Path]) -> dict[str, Any]:
        ip = self.edge_ip if node == "edge" else self.core_ip
        # The status page for a browser (Basic admin:<token>) and for scripts (Bearer <token>).
        status = {"status": {"listen": f"{ip}:{self.status_port}", "token": self.status_token, "username": "admin",
                             "password": self.status_token}} if self.status_token else {}
        return {**status, 
            "role": node,
            "name": node,
            "sip": {"listen_ip": ip, "udp_port": self.sip_port, "tcp_port": self.sip_port,
                    "tls_port": self.tls_port, "domains": [self.domain]},
            "tls": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"]), "ca_file": str(certs["ca"])},
            "media": {"port_min": self.media_port_min, "port_max": self.media_port_max,
                      "inactivity_timeout_s": float(self.media_inactivity_timeout_s)},
            # The core resolves in the inside view, the edge in the outside one.
            "dns": {"servers": [f"{self.inside_dns_ip if node == 'core' else self.dns_ip}:{self.dns_port}"],
                    "timeout_s": float(self.dns_timeout_s)},
            "log": {"file": str(workdir / f"{node}.events.jsonl"), "level": self.log_level,
                    "sip_messages": self.sip_messages, "max_events_per_s": self.max_events_per_s},
            # ``edgeway blocked list -c lab-run/edge.toml`` (a Unix socket path has at most
            # 107 bytes: a deep work directory goes without).
            **({"control": {"socket": str(ctl)}} if len(str(ctl := workdir.resolve() / f"{node}.ctl")) < 100 else {}),
        }

    def media_config_data(self, name: str, workdir: Path, certs: dict[str, Path]) -> dict[str, Any]:
        """A media node's configuration (``role = "media"``: STUN, TURN and relay only)."""
        ip, udp = MEDIA_NODES[name]
        return {
            "role": "media", "name": name,
            "sip": {"listen_ip": ip, "udp_port": 0, "tcp_port": 0, "tls_port": 0},
            "tls": {"cert_file": str(certs["cert"]), "key_file": str(certs["key"]), "ca_file": str(certs["ca"])},
            "media": {"port_min": 50000, "port_max": 50999},
            "log": {"file": str(workdir / f"{name}.events.jsonl"), "level": self.log_level},
            "turn": {"enabled": True, "udp_ports": [MEDIA_NODE_PORT] if udp else [], "tcp_ports": [MEDIA_NODE_PORT],
                     "tls_ports": [MEDIA_NODE_TLS_PORT], "realm": self.domain, "denied_peer_ips": [],
                     "users": [{"username": u, "password": p} for u, p in REMOTE_USERS.items()]},
        }

    def edge_config_data(self, workdir: Path, certs: dict[str, Path], password: str) -> dict[str, Any]:
        """The edge's configuration as a TOML-ready dict (overrides applied).

        ``certs`` is the edge entry of :func:`write_lab_pki`'s result
        (``{"cert", "key", "ca"}``)."""
        data = self._common("edge", workdir, certs)
        data["sip"].update(mtls_enabled=True, mtls_port=MTLS_PORT)
        # The edge's public name: get_edge_config gives remote clients the SIP route
        # <sip:edge.<domain>:5061;transport=tls;lr>, which the edge must know as its own.
        data["sip"]["hostname"] = self.edge_fqdn
        data["credentials"] = [{"username": self.traversal_username, "password": password}]
        data["zones"] = [
            {"type": "traversal_server", "name": TRAVERSAL_ZONE, "port": self.traversal_port,
             "username": self.traversal_username, "tls_verify_subject_name": self.core_fqdn,
             "keepalive_interval_s": float(self.keepalive_interval_s),
             "probe_retry_count": self.probe_retry_count,
             "probe_retry_interval_s": float(self.probe_retry_interval_s),
             # Plain RTP inside: SRTP from outside is interworked by the edge B2BUA.
             "media_encryption": "off"},
            {"type": "dns", "name": DNS_ZONE, "default_transport": "udp"},
            {"type": "dns", "name": HYBRID_ZONE, "default_transport": "tls", "tls_verify_mode": True,
             "tls_verify_subject_name": CLOUD_SERVICE_FQDN, "inbound_classification": True,
             "modify_dns_request": True, "dns_request_domain": CLOUD_SERVICE_FQDN,
             "media_encryption": "on", "preloaded_routes": "accept", "parameter_preservation": True},
        ]
        if self.mra:
            data["mra"] = {"enabled": True, "domains": [self.domain], "https_port": self.https_port,
                           "tunnel_port": self.mra_tunnel_port}
            # STUN/TURN for remote clients (issue 10 items 2-3), advertised by the core's
            # get_edge_config; the lab's users; peers on loopback are allowed in the lab.
            data["turn"] = {"enabled": True, "udp_ports": [TURN_PORT], "tcp_ports": [TURN_PORT], "tls_ports": [TURN_TLS_PORT],
                            "realm": self.domain, "denied_peer_ips": [],
                            "users": [{"username": u, "password": p} for u, p in REMOTE_USERS.items()]}
        data["search_rules"] = [
            {"name": "Hybrid inbound", "priority": 5, "mode": "any_alias", "pattern_type": "prefix",
             "behaviour": "strip", "source_zone": HYBRID_ZONE, "target_zone": TRAVERSAL_ZONE, "progress": "stop"},
            {"name": "Hybrid outbound", "priority": 50, "pattern_type": "regex",
             # the cloud domain and its org subdomains (seed 003: <org>.call.ciscospark.com)
             "pattern": r".*@(.*\.)?" + CLOUD_DOMAIN.replace(".", "\\."), "source_zone": TRAVERSAL_ZONE,
             "target_zone": HYBRID_ZONE, "progress": "stop"},
            {"name": "Inbound to core", "priority": 10, "pattern_type": "regex",
             "pattern": ".*@%localdomains%", "target_zone": TRAVERSAL_ZONE, "progress": "stop"},
            {"name": "Remote registrations", "priority": 11, "pattern_type": "regex",
             "pattern": "(.*@)?(" + "|".join(d.replace(".", "\\.") for d in (REMOTE_DOMAIN, UCM_DOMAIN)) + ")",
             "target_zone": TRAVERSAL_ZONE, "progress": "stop"},
            {"name": "Outbound to DNS", "priority": 100, "pattern_type": "regex",
             "pattern": "(?!.*@%localdomains%$).*", "source_zone": TRAVERSAL_ZONE,
             "target_zone": DNS_ZONE, "progress": "stop"},
        ]
        return _merge(data, self.edge_overrides)

    def core_config_data(self, workdir: Path, certs: dict[str, Path], password: str) -> dict[str, Any]:
        """The core's configuration as a TOML-ready dict (overrides applied)."""
        data = self._common("core", workdir, certs)
        data["zones"] = [
            {"type": "neighbour", "name": CALL_CONTROL_ZONE, "host": self.call_control_ip,
             "port": self.call_control_port, "transport": self.call_control_transport},
            {"type": "traversal_client", "name": TRAVERSAL_ZONE,
             "peers": [f"{self.edge_ip}:{self.traversal_port}"], "port": self.traversal_port,
             "username": self.traversal_username, "password": password,
             "keepalive_interval_s": float(self.keepalive_interval_s),
             "probe_retry_count": self.probe_retry_count,
             "probe_retry_interval_s": float(self.probe_retry_interval_s),
             "retry_interval_s": float(self.retry_interval_s)},
        ]
        data["registrar"] = {"domains": [REMOTE_DOMAIN], "digest_algorithms": ["MD5"],  # baresip 1.0 (libre) gives up on a SHA-256 challenge
                             "users": [{"username": u, "password": p} for u, p in REMOTE_USERS.items()]}
        if self.mra:
            data["mra"] = self._core_mra()
        data["sip"]["path_headers"] = self.sip_path_headers
        data["search_rules"] = [
            {"name": "Registered remote users", "priority": 5, "pattern_type": "regex",
             "pattern": ".*@" + REMOTE_DOMAIN.replace(".", "\\."), "target_zone": "LocalZone", "progress": "stop"},
            {"name": "Remote registrations to call control", "priority": 6, "pattern_type": "regex",
             "pattern": "(.*@)?" + UCM_DOMAIN.replace(".", "\\."), "source_zone": TRAVERSAL_ZONE,
             "target_zone": CALL_CONTROL_ZONE, "progress": "stop"},
            {"name": "Inbound to call control", "priority": 10, "pattern_type": "regex",
             "pattern": ".*@%localdomains%", "source_zone": TRAVERSAL_ZONE,
             "target_zone": CALL_CONTROL_ZONE, "progress": "stop"},
            {"name": "Outbound via edge", "priority": 20, "pattern_type": "regex",
             "pattern": "(?!.*@%localdomains%$).*", "source_zone": CALL_CONTROL_ZONE,
             "target_zone": TRAVERSAL_ZONE, "progress": "stop"},
        ]
        return _merge(data, self.core_overrides)

    def _core_mra(self) -> dict[str, Any]:
        """The core's ``[mra]``: the edge's public name, the UDS server, and the stand-in's
        services as internal servers, so their automatic rules allow exactly the stand-in's
        paths."""
        from edgeway.lab.webservice import TFTP_PORT, UDS_PORT, VOICEMAIL_PORT

        ip = self.call_control_ip
        mra: dict[str, Any] = {"enabled": True, "domains": [self.domain], "https_port": self.https_port,
                               "tunnel_port": self.mra_tunnel_port, "edge_hostname": self.edge_fqdn,
                               "uds_servers": [f"{ip}:{UDS_PORT}"],
                               "turn_servers": [{"host": self.edge_fqdn, "udp_port": TURN_PORT, "tcp_port": TURN_PORT}],
                               "internal_servers": [
                                   {"type": "call_control", "host": ip, "ports": [UDS_PORT], "scheme": "http"},
                                   {"type": "tftp", "host": ip, "ports": [TFTP_PORT], "scheme": "http"},
                                   {"type": "voicemail", "host": ip, "ports": [VOICEMAIL_PORT], "scheme": "http"},
                               ]}
        return mra

    # -- writing ------------------------------------------------------------------------------

    def build(self, workdir: Path | str) -> LabFiles:
        """Write the lab's files into ``workdir`` (created if missing) and return their paths.

        Writes ``pki/`` (CA, edge and core certificates and keys), ``edge.toml``,
        ``core.toml`` and ``dns.zone``; removes stale ``*.events.jsonl`` logs (and their
        rotated ``.1``, ``.2`` … backups) so a run only sees its own events. Both configurations are validated with
        :func:`edgeway.config.parse_config` before being written.

        Raises:
            edgeway.config.ConfigError: an override made a configuration invalid.
        """
        wd = Path(workdir).resolve()
        wd.mkdir(parents=True, exist_ok=True)
        password = self.traversal_password or secrets.token_urlsafe(18)
        pki = write_lab_pki(wd / "pki", self.pki_plan())
        edge = self.edge_config_data(wd, pki["edge"], password)
        core = self.core_config_data(wd, pki["core"], password)
        parse_config(edge, str(wd / "edge.toml"))
        parse_config(core, str(wd / "core.toml"))
        header = "# Generated by `edgeway lab` (edgeway.lab.topology); rewritten on every run.\n"
        (wd / "edge.toml").write_text(header + dump_toml(edge), encoding="utf-8")
        (wd / "core.toml").write_text(header + dump_toml(core), encoding="utf-8")
        for p in (wd / "edge.toml", wd / "core.toml"):
            p.chmod(0o600)  # they hold the traversal password
        (wd / "dns.zone").write_text(self.zone_text(), encoding="utf-8")
        media_configs = {}
        for name in (MEDIA_NODES if self.media_nodes else ()):
            data = self.media_config_data(name, wd, pki[name])
            parse_config(data, str(wd / f"{name}.toml"))
            media_configs[name] = wd / f"{name}.toml"
            media_configs[name].write_text(header + dump_toml(data), encoding="utf-8")
            Path(data["log"]["file"]).unlink(missing_ok=True)
        logs = {}
        for node, data in (("edge", edge), ("core", core)):
            logs[node] = Path(data.get("log", {}).get("file") or wd / f"{node}.events.jsonl")
            logs[node].unlink(missing_ok=True)
            for rotated in logs[node].parent.glob(f"{logs[node].name}.*"):  # log.max_bytes backups
                if rotated.suffix[1:].isdigit():
                    rotated.unlink(missing_ok=True)
        return LabFiles(
            workdir=wd,
            ca=pki["edge"]["ca"],
            ca_key=wd / "pki" / "ca.key",
            edge_cert=pki["edge"]["cert"],
            edge_key=pki["edge"]["key"],
            core_cert=pki["core"]["cert"],
            core_key=pki["core"]["key"],
            edge_config=wd / "edge.toml",
            core_config=wd / "core.toml",
            dns_zone=wd / "dns.zone",
            edge_events=logs["edge"],
            core_events=logs["core"],
            password=password,
            media_configs=media_configs,
        )

    def node_config(self, files: LabFiles, node: str) -> NodeConfig:
        """Load and validate a written node configuration (``"edge"`` or ``"core"``)."""
        from edgeway.config import load_config

        return load_config(files.config(node))
