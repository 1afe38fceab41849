"""Config models and loader (DESIGN §2; seed 003 §5–§6)."""

from __future__ import annotations

import copy
import textwrap

import pytest

from edgeway.config import (
    ConfigError,
    DnsZone,
    NeighbourZone,
    NodeConfig,
    TraversalClientZone,
    TraversalServerZone,
    load_config,
    parse_config,
    split_hostport,
    zone_token,
)

EDGE_TOML = textwrap.dedent(r'''
    role = "edge"
    name = "amer-expressway01"

    [sip]
    listen_ip = "172.16.2.2"
    advertise_ip = "64.102.241.236"
    udp_port = 0
    tcp_port = 5060
    tls_port = 5061
    domains = ["rtp.ciscotac.net"]

    [timers]
    t1_ms = 500
    t2_ms = 4000
    timer_c_s = 180

    [tls]
    cert_file = "edge.crt"
    key_file = "edge.key"
    ca_file = "ca.pem"
    min_version = "1.2"

    [media]
    port_min = 36000
    port_max = 59999
    inactivity_timeout_s = 60

    [dns]
    servers = ["192.0.2.53", "192.0.2.54:5353", "[2001:db8::53]:53"]
    timeout_s = 1.5

    [log]
    level = "debug"

    [[credentials]]
    username = "hybridauth"
    password = "s3cret"

    [[zones]]
    type = "dns"
    name = "Hybrid Call Services DNS"
    default_transport = "tls"

    [[zones]]
    type = "traversal_server"
    name = "Hybrid Call Service Traversal"
    port = 7003
    username = "hybridauth"
    tls_verify_subject_name = "rtp12-tpdmz-118-VCSC.rtp.ciscotac.net"

    [[zones]]
    type = "dns"
    name = "DNS"

    [[transforms]]
    priority = 1
    pattern_type = "suffix"
    pattern = ";transport=tls"
    behaviour = "strip"

    [[search_rules]]
    name = "Webex Hybrid"
    priority = 15
    mode = "any_alias"
    pattern_type = "prefix"
    behaviour = "strip"
    source_zone = "Hybrid Call Services DNS"
    target_zone = "Hybrid Call Service Traversal"

    [[search_rules]]
    name = "to DNS"
    priority = 100
    pattern = '(?!.*@%localdomains%.*$).*'
    target_zone = "DNS"

    [[search_rules]]
    name = "Webex Hybrid - to Webex Cloud"
    priority = 101
    pattern = '.*@.*\.ciscospark\.com'
    source_zone = "Hybrid Call Service Traversal"
    target_zone = "Hybrid Call Services DNS"
''')

CORE = {
    "role": "core",
    "name": "rtp12-tpdmz-118-VCSC",
    "sip": {"listen_ip": "192.168.1.5", "domains": ["rtp.ciscotac.net"]},
    "zones": [
        {"type": "neighbour", "name": "CUCM11", "host": "192.168.1.21", "port": 5065},
        {"type": "traversal_client", "name": "Hybrid Call Service Traversal",
         "peers": ["amer-expressway01.ciscotac.net", "192.168.1.6:7003"], "port": 7003,
         "username": "hybridauth", "password": "s3cret"},
    ],
    "search_rules": [
        {"name": "as is local", "priority": 1, "mode": "any_alias", "progress": "continue",
         "target_zone": "LocalZone"},
        {"name": "Hybrid Call Service Inbound Routing", "priority": 2, "pattern_type": "prefix",
         "pattern": "cucm.rtp.ciscotac.net", "source_zone": "Hybrid Call Service Traversal",
         "target_zone": "CUCM11"},
    ],
}


def problems(data: dict) -> list[tuple]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "test.toml")
    assert str(ei.value).startswith("invalid configuration in test.toml:\n")
    return ei.value.problems


def edge_dict() -> dict:
    import tomllib
    return tomllib.loads(EDGE_TOML)


# ---- valid configs ----------------------------------------------------------------------------

def test_full_edge_config_loads(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(EDGE_TOML)
    cfg = load_config(path)
    assert cfg.role == "edge" and cfg.name == "amer-expressway01"
    assert cfg.sip.public_ip == "64.102.241.236"
    assert (cfg.sip.udp_port, cfg.sip.tcp_port, cfg.sip.tls_port) == (0, 5060, 5061)
    assert cfg.local_domains == ["rtp.ciscotac.net"]
    assert cfg.timers.t4_ms == 5000
    assert cfg.media.ip == "172.16.2.2" and cfg.media.public_ip == "64.102.241.236"
    assert cfg.dns.nameservers == [("192.0.2.53", 53), ("192.0.2.54", 5353), ("2001:db8::53", 53)]
    assert cfg.log.level == "DEBUG" and cfg.log.file is None
    # issue 7 item 4: bounded by default (no per-message events, rotation, rate cap)
    assert (cfg.log.sip_messages, cfg.log.max_bytes, cfg.log.backup_count, cfg.log.max_events_per_s) == (
        False, 50 << 20, 5, 200)
    assert cfg.credentials[0].username == "hybridauth"
    dns, ts, generic = cfg.zones
    assert isinstance(dns, DnsZone) and dns.default_transport == "tls"
    assert isinstance(ts, TraversalServerZone) and ts.port == 7003 and ts.keepalive_interval_s == 20
    assert (ts.probe_retry_count, ts.probe_retry_interval_s) == (5, 2)
    assert isinstance(generic, DnsZone) and generic.default_transport == "tls"  # issue 3: TLS is the DNS zone default
    assert cfg.transforms[0].behaviour == "strip"
    rules = cfg.search_rules
    assert [r.name for r in rules] == ["Webex Hybrid", "to DNS", "Webex Hybrid - to Webex Cloud"]
    assert rules[1].pattern_type == "regex" and rules[1].mode == "alias_pattern_match"
    assert rules[1].progress == "stop" and rules[1].source_zone is None
    assert cfg.zone_names[-2:] == ["LocalZone", "DefaultZone"]


def test_full_core_config():
    cfg = parse_config(CORE, "core.toml")
    assert cfg.role == "core"
    assert cfg.sip.public_ip == "192.168.1.5"
    assert cfg.media.ip == "192.168.1.5" and cfg.media.advertise_ip is None
    cucm, tc = cfg.zones
    assert isinstance(cucm, NeighbourZone)
    assert (cucm.host, cucm.port, cucm.transport, cucm.match_source) == ("192.168.1.21", 5065, "tcp", True)
    assert isinstance(tc, TraversalClientZone) and tc.retry_interval_s == 120
    assert tc.peer_addresses == [("amer-expressway01.ciscotac.net", 7003), ("192.168.1.6", 7003)]


@pytest.mark.parametrize("data", [edge_dict(), CORE], ids=["edge", "core"])
def test_round_trip(data):
    cfg = parse_config(copy.deepcopy(data))
    dumped = cfg.model_dump(exclude_none=True)  # TOML has no null
    again = parse_config(dumped)
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()


def test_minimal_defaults():
    cfg = parse_config({"role": "edge", "name": "e", "sip": {"listen_ip": "::1"}})
    assert (cfg.sip.udp_port, cfg.sip.tcp_port, cfg.sip.tls_port, cfg.sip.max_forwards_out) == (5060, 5060, 5061, 70)
    assert (cfg.timers.t1_ms, cfg.timers.t2_ms, cfg.timers.t4_ms, cfg.timers.timer_c_s) == (500, 4000, 5000, 180)
    assert cfg.tls.min_version == "1.2" and cfg.tls.cert_file is None
    assert (cfg.media.port_min, cfg.media.port_max, cfg.media.ip) == (36000, 59999, "::1")
    assert cfg.dns.nameservers == [] and cfg.dns.timeout_s == 2.0
    assert cfg.zones == [] and cfg.search_rules == [] and cfg.transforms == []
    # defaults are per instance (media.ip is filled in)
    other = parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "10.0.0.9"}})
    assert other.media.ip == "10.0.0.9" and cfg.media.ip == "::1"


def test_explicit_media_ip_is_not_overridden():
    cfg = parse_config({"role": "edge", "name": "e", "sip": {"listen_ip": "10.0.0.1", "advertise_ip": "203.0.113.1"},
                        "media": {"ip": "10.0.0.2"}})
    assert cfg.media.ip == "10.0.0.2" and cfg.media.public_ip == "10.0.0.2"


def test_zone_token():
    assert zone_token("Hybrid Call Service Traversal") == "HybridCallServiceTraversal"
    assert zone_token("Hybrid Call Services DNS") == "HybridCallServicesDNS"
    assert zone_token("CUCM11") == "CUCM11"


@pytest.mark.parametrize("text,expected", [
    ("host", ("host", 7001)), ("host:7003", ("host", 7003)), ("10.0.0.1:5", ("10.0.0.1", 5)),
    ("2001:db8::1", ("2001:db8::1", 7001)), ("[2001:db8::1]:99", ("2001:db8::1", 99)), ("[::1]", ("::1", 7001)),
])
def test_split_hostport(text, expected):
    assert split_hostport(text, 7001) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:70000", "host:x", "[::1]x", ":5060", "a b"])
def test_split_hostport_bad(text):
    with pytest.raises(ValueError):
        split_hostport(text, 7001)


# ---- errors: key path, value, rule ------------------------------------------------------------

def with_(path: str, value, base=None) -> dict:
    """Copy of the edge config with one key set; path like 'zones.1.port'."""
    data = copy.deepcopy(base if base is not None else edge_dict())
    node = data
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parents:
        node = node[p]
    node[last] = value
    return data


@pytest.mark.parametrize("path,value,key,rule", [
    ("zones.1.port", 70000, "zones[1].port", "must be between 1 and 65535"),
    ("sip.tls_port", -1, "sip.tls_port", "must be between 0 and 65535 (0 = disabled)"),
    ("sip.listen_ip", "example.com", "sip.listen_ip", "must be an IPv4 or IPv6 address"),
    ("sip.advertise_ip", "300.1.1.1", "sip.advertise_ip", "must be an IPv4 or IPv6 address"),
    ("sip.udp_port", "5060", "sip.udp_port", "input should be a valid integer"),
    ("sip.max_forwards_out", 0, "sip.max_forwards_out", "must be between 1 and 255"),
    ("timers.t1_ms", 0, "timers.t1_ms", "must be greater than 0"),
    ("timers.t2_ms", 400, "timers.t2_ms", "must be >= t1_ms (500)"),
    ("tls.min_version", "1.1", "tls.min_version", "input should be '1.2' or '1.3'"),
    ("media.port_min", 36001, "media.port_min", "must be even"),
    ("media.port_min", 80, "media.port_min", "must be between 1024 and 65535"),
    ("media.port_max", 36000, "media.port_max", "must be greater than port_min (36000)"),
    ("media.inactivity_timeout_s", 0, "media.inactivity_timeout_s", "must be greater than 0"),
    ("media.mux_pairs", 7, "media.mux_pairs", "must be between 1 and 6 (1 = small/medium, 6 = large)"),
    ("media.mux_ports", [2777], "media.mux_ports[0]", "must be even"),
    ("media.mux_ports", [36010], "media.mux_ports[0]", "must lie outside the media range 36000-59999"),
    ("dns.servers", ["dns.example"], "dns.servers[0]", "must be an IPv4 or IPv6 address"),
    ("dns.servers", ["192.0.2.1:99999"], "dns.servers[0]", "port must be between 1 and 65535"),
    ("log.level", "chatty", "log.level", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("log.max_bytes", 100, "log.max_bytes", "must be 0 (no rotation) or at least 4096 bytes"),
    ("log.backup_count", -1, "log.backup_count", "must be between 0 and 1000"),
    ("log.max_events_per_s", -5, "log.max_events_per_s", "must be between 0 and 1000000 (0 = no cap)"),
    ("log.sip_messages", "yes", "log.sip_messages", "input should be a valid boolean"),
    ("zones.0.default_transport", "sctp", "zones[0].default_transport", "input should be 'udp', 'tcp' or 'tls'"),
    ("zones.0.colour", "blue", "zones[0].colour", "is not a known key"),
    ("zones.0.type", "webex", "zones[0].type",
     "must be one of 'neighbour', 'traversal_server', 'traversal_client', 'dns'"),
    ("zones.1.name", "  ", "zones[1].name", "must not be empty"),
    ("search_rules.1.priority", 0, "search_rules[1].priority", "must be between 1 and 65534"),
    ("search_rules.1.priority", 65535, "search_rules[1].priority", "must be between 1 and 65534"),
    ("search_rules.1.progress", "maybe", "search_rules[1].progress", "input should be 'stop' or 'continue'"),
    ("search_rules.2.pattern", "(.*@", "search_rules[2].pattern", "must be a valid regular expression"),
    ("search_rules.1.target_zone", "Nowhere", "search_rules[1].target_zone",
     "must name a configured zone or LocalZone/DefaultZone"),
    ("search_rules.0.source_zone", "Hybrid Call Services  DNS", "search_rules[0].source_zone",
     "must name a configured zone or LocalZone/DefaultZone"),
    ("transforms.0.pattern_type", "glob", "transforms[0].pattern_type",
     "input should be 'exact', 'prefix', 'suffix' or 'regex'"),
    ("bogus", 1, "bogus", "is not a known key"),
    ("role", "proxy", "role", "input should be 'edge', 'core' or 'media'"),
])
def test_error_names_key_value_rule(path, value, key, rule):
    probs = problems(with_(path, value))
    assert len(probs) == 1, probs
    k, v, r = probs[0]
    assert k == key
    assert r.startswith(rule)
    got = value[0] if isinstance(value, list) else value
    assert v == got


def test_error_message_text():
    with pytest.raises(ConfigError) as ei:
        parse_config(with_("zones.1.port", 70000), "edge.toml")
    assert str(ei.value) == "invalid configuration in edge.toml:\n  zones[1].port = 70000: must be between 1 and 65535"


def test_several_errors_reported_together():
    data = with_("sip.udp_port", 99999)
    data["zones"][1]["port"] = 0
    del data["zones"][1]["username"]
    data["search_rules"][0]["pattern_type"] = "wildcard"
    keys = [k for k, _, _ in problems(data)]
    assert keys == ["sip.udp_port", "zones[1].port", "zones[1].username", "search_rules[0].pattern_type"]


def test_missing_keys():
    probs = problems({"role": "edge", "zones": [{"name": "x"}]})
    assert ("name", None, "is required") in probs
    assert ("sip", None, "is required") in probs
    assert ("zones[0].type", None, "is required") in probs
    with pytest.raises(ConfigError) as ei:
        parse_config({"role": "edge", "name": "e"}, "x.toml")
    assert "  sip: is required" in str(ei.value).splitlines()


def test_zone_names_unique_and_reserved():
    data = edge_dict()
    data["zones"] += [
        {"type": "dns", "name": "DNS"},
        {"type": "dns", "name": "HybridCallServicesDNS"},
        {"type": "dns", "name": "LocalZone"},
        {"type": "dns", "name": "Default Zone"},
    ]
    assert problems(data) == [
        ("zones[3].name", "DNS", "must be unique (clashes with zone 'DNS', spaces ignored)"),
        ("zones[4].name", "HybridCallServicesDNS",
         "must be unique (clashes with zone 'Hybrid Call Services DNS', spaces ignored)"),
        ("zones[5].name", "LocalZone", "is reserved for a built-in zone"),
        ("zones[6].name", "Default Zone", "is reserved for a built-in zone"),
    ]


def test_role_restricts_traversal_zone_types():
    edge = edge_dict()
    edge["zones"].append(copy.deepcopy(CORE["zones"][1]) | {"name": "TC"})
    assert problems(edge) == [("zones[3].type", "traversal_client", "is not allowed when role = 'edge'")]
    core = copy.deepcopy(CORE)
    core["zones"].append({"type": "traversal_server", "name": "TS", "username": "u", "tls_verify_subject_name": "x"})
    assert problems(core) == [("zones[2].type", "traversal_server", "is not allowed when role = 'core'")]


def test_builtin_zones_are_valid_targets_and_sources():
    data = edge_dict()
    data["search_rules"].append({"name": "from default", "priority": 5, "source_zone": "DefaultZone",
                                 "target_zone": "LocalZone", "mode": "any_alias"})
    assert parse_config(data).search_rules[-1].target_zone == "LocalZone"


def test_localdomains_regex_compiles_and_bad_one_is_reported():
    ok = with_("search_rules.1.pattern", r"(?!.*@%localdomains%.*$).*")
    assert parse_config(ok).search_rules[1].pattern.startswith("(?!")
    bad = with_("search_rules.1.pattern", r"(?!.*@%localdomains%.*$.*")
    (k, v, r), = problems(bad)
    assert (k, v) == ("search_rules[1].pattern", r"(?!.*@%localdomains%.*$.*")
    assert r.startswith("must be a valid regular expression (missing )")


def test_regex_replace_group_references_checked():
    rule = {"name": "r", "priority": 7, "pattern": r"(.*)@(?P<dom>.*)", "behaviour": "replace",
            "target_zone": "DNS"}
    data = edge_dict()
    data["search_rules"].append(rule | {"replace": r"\1@\g<dom>"})
    parse_config(data)
    data["search_rules"][-1]["replace"] = r"\3@x"
    assert problems(data) == [("search_rules[3].replace", r"\3@x",
                               "refers to group \\3 but the pattern has 2 group(s)")]
    data["search_rules"][-1]["replace"] = r"\g<user>"
    assert problems(data) == [("search_rules[3].replace", r"\g<user>", "refers to unknown group <user>")]


def test_traversal_client_peer_count_and_syntax():
    core = copy.deepcopy(CORE)
    core["zones"][1]["peers"] = []
    (k, v, r), = problems(core)
    assert (k, v) == ("zones[1].peers", []) and "at least 1" in r
    core["zones"][1]["peers"] = [f"e{i}" for i in range(7)]
    (k, v, r), = problems(core)
    assert k == "zones[1].peers" and "at most 6" in r
    core["zones"][1]["peers"] = ["ok", "bad:port"]
    assert problems(core) == [("zones[1].peers[1]", "bad:port", "port must be between 1 and 65535")]


def test_tls_cert_and_key_together():
    data = edge_dict()
    del data["tls"]["key_file"]
    assert problems(data) == [("tls.key_file", None, "must be set when tls.cert_file is set")]
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "e.toml")
    assert "  tls.key_file: must be set when tls.cert_file is set" in str(ei.value)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file .*nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("role = \n")
    with pytest.raises(ConfigError, match=r"invalid TOML in .*bad.toml"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('role = "edge"\nname = "e"\n[sip]\nlisten_ip = "1.2.3.4"\ntls_port = 65536\n')
    with pytest.raises(ConfigError) as ei:
        load_config(wrong)
    assert str(ei.value) == (f"invalid configuration in {wrong}:\n"
                             "  sip.tls_port = 65536: must be between 0 and 65535 (0 = disabled)")


def test_direct_construction_still_validates():
    with pytest.raises(ValueError, match="target_zone"):
        NodeConfig.model_validate({"role": "edge", "name": "e", "sip": {"listen_ip": "1.2.3.4"},
                                   "search_rules": [{"name": "r", "priority": 1, "target_zone": "X"}]})


# ---- MRA deployments (issue 9 item 7; seed 002 §3) ----------------------------------------------

MRA_TOML = textwrap.dedent('''
    role = "core"
    name = "c"
    [sip]
    listen_ip = "192.168.1.5"
    [mra]
    deployments = ["Staging"]
    domains = ["Corp.example", {name = "staging.example", deployment = "Staging"}]
    uds_servers = ["ucm.corp.example", {address = "ucm.staging.example:9443", deployment = "Staging"}]
    [[mra.internal_servers]]
    type = "call_control"
    host = "UCM.staging.example"
    deployment = "Staging"
    [[mra.internal_servers]]
    type = "tftp"
    host = "ucm.staging.example"
    deployment = "Staging"
''')


def mra_problems(mra: dict) -> set[tuple[str, object]]:
    """``(key, value)`` of every problem of a core config with this ``[mra]`` table."""
    with pytest.raises(ConfigError) as ei:
        parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "192.168.1.5"}, "mra": mra})
    return {(k, v) for k, v, _ in ei.value.problems}


def test_mra_domains_and_servers_belong_to_deployments(tmp_path):
    path = tmp_path / "core.toml"
    path.write_text(MRA_TOML)
    m = load_config(path).mra
    assert m.deployment_names == ["Default deployment", "Staging"]
    assert [(d.name, d.deployment) for d in m.domains] == [("Corp.example", "Default deployment"),
                                                          ("staging.example", "Staging")]
    assert m.domain_names == ["corp.example", "staging.example"]
    assert m.deployment_of("CORP.example.") == "Default deployment" and m.deployment_of("staging.example") == "Staging"
    assert m.deployment_of("elsewhere.example") is None
    assert m.uds_addresses_of("Default deployment") == [("ucm.corp.example", 8443)]
    assert m.uds_addresses_of("Staging") == [("ucm.staging.example", 9443)]
    assert m.uds_addresses_of("Nowhere") == []
    # the model dumps as tables and reads back the same
    assert parse_config(load_config(path).model_dump(exclude_none=True)).mra == m


def test_mra_plain_string_domains_and_uds_servers_mean_the_default_deployment():
    """Backward compatibility: the shape before deployments still loads, unchanged in meaning."""
    m = parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "192.168.1.5"},
                      "mra": {"domains": ["a.example", "b.example"], "uds_servers": ["ucm1", "[2001:db8::1]:9443"]}}).mra
    assert [(d.name, d.deployment) for d in m.domains] == [("a.example", "Default deployment"),
                                                          ("b.example", "Default deployment")]
    assert m.uds_addresses == m.uds_addresses_of("Default deployment") == [("ucm1", 8443), ("2001:db8::1", 9443)]
    assert m.deployment_names == ["Default deployment"]


def test_mra_default_deployment_always_exists_and_may_be_listed_once():
    m = parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "192.168.1.5"},
                      "mra": {"deployments": ["Default deployment", "East"],
                              "domains": [{"name": "a.example", "deployment": "Default deployment"}]}}).mra
    assert m.deployment_names == ["Default deployment", "East"]
    assert m.deployment_of("a.example") == "Default deployment"
    empty = parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "192.168.1.5"}, "mra": {"deployments": []}}).mra
    assert empty.deployment_names == ["Default deployment"]  # there is no way to remove it


@pytest.mark.parametrize("mra,expected", [
    # a deployment named twice (case ignored), or a second "Default deployment" in other case
    ({"deployments": ["East", "East"]}, {("mra.deployments[1]", "East")}),
    ({"deployments": ["East", "east"]}, {("mra.deployments[1]", "east")}),
    ({"deployments": ["default DEPLOYMENT"]}, {("mra.deployments[0]", "default DEPLOYMENT")}),
    # references to deployments that do not exist
    ({"domains": [{"name": "a.example", "deployment": "West"}]}, {("mra.domains[0].deployment", "West")}),
    ({"uds_servers": [{"address": "ucm", "deployment": "West"}]}, {("mra.uds_servers[0].deployment", "West")}),
    ({"internal_servers": [{"type": "tftp", "host": "ucm", "deployment": "West"}]},
     {("mra.internal_servers[0].deployment", "West")}),
    # a domain listed twice: in two deployments, or twice in one (case and trailing dot ignored)
    ({"deployments": ["East"], "domains": ["a.example", {"name": "A.example.", "deployment": "East"}]},
     {("mra.domains[1]", "A.example.")}),
    ({"domains": ["a.example", "a.example"]}, {("mra.domains[1]", "a.example")}),
    # a server in two deployments, across internal_servers and uds_servers (case ignored)
    ({"deployments": ["East"], "internal_servers": [{"type": "call_control", "host": "ucm", "deployment": "East"},
                                                    {"type": "tftp", "host": "UCM"}]},
     {("mra.internal_servers[1].host", "UCM")}),
    ({"deployments": ["East"], "internal_servers": [{"type": "call_control", "host": "ucm", "deployment": "East"}],
      "uds_servers": ["ucm:8443"]}, {("mra.uds_servers[0]", "ucm:8443")}),
    ({"deployments": ["East"], "uds_servers": ["[2001:db8::1]:8443"],
      "internal_servers": [{"type": "tftp", "host": "2001:DB8::1", "deployment": "East"}]},
     {("mra.uds_servers[0]", "[2001:db8::1]:8443")}),
    ({"deployments": ["East", "West"], "uds_servers": [{"address": "ucm", "deployment": "East"},
                                                      {"address": "ucm:9443", "deployment": "West"}]},
     {("mra.uds_servers[1].deployment", "West")}),
    # bad entries: named at the entry for a plain string, at the field for a table
    ({"domains": [""]}, {("mra.domains[0]", "")}),
    ({"domains": [7]}, {("mra.domains[0]", 7)}),
    ({"domains": [{"deployment": "Default deployment"}]}, {("mra.domains[0].name", None)}),
    ({"uds_servers": ["bad host"]}, {("mra.uds_servers[0]", "bad host")}),
    ({"uds_servers": [{"address": "ucm:0"}]}, {("mra.uds_servers[0].address", "ucm:0")}),
    ({"domains": [{"name": "a.example", "colour": "blue"}]}, {("mra.domains[0].colour", "blue")}),
])
def test_mra_deployment_problems_name_key_value_rule(mra, expected):
    assert mra_problems(mra) == expected


def test_mra_deployment_problem_messages_say_the_rule():
    with pytest.raises(ConfigError) as ei:
        parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "192.168.1.5"}, "mra": {
            "deployments": ["East"],
            "domains": ["a.example", {"name": "a.example", "deployment": "East"}, {"name": "b.example", "deployment": "Nowhere"}],
            "internal_servers": [{"type": "tftp", "host": "ucm", "deployment": "East"}],
            "uds_servers": [{"address": "ucm", "deployment": "Default deployment"}]}}, "core.toml")
    text = str(ei.value)
    assert ("  mra.domains[1] = 'a.example': must be listed once: already in deployment 'Default deployment' at "
            "mra.domains[0] (a domain belongs to exactly one deployment, seed 002 §3)") in text
    assert "  mra.domains[2].deployment = 'Nowhere': must be 'Default deployment' or one of mra.deployments" in text
    assert ("  mra.uds_servers[0].deployment = 'Default deployment': puts a server in a second deployment: "
            "mra.internal_servers[0] has server 'ucm' in 'East' (a server belongs to exactly one deployment, seed 002 §3)") in text


def test_mra_one_server_may_be_listed_several_times_in_one_deployment():
    m = parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "192.168.1.5"}, "mra": {
        "deployments": ["East"],
        "internal_servers": [{"type": "call_control", "host": "ucm", "deployment": "East"},
                             {"type": "tftp", "host": "UCM", "deployment": "East"}],
        "uds_servers": [{"address": "ucm:8443", "deployment": "East"}]}}).mra
    assert m.uds_addresses_of("East") == [("ucm", 8443)]


def test_traversal_mux_ports_and_relay_range():
    """Seed 002 §7.2: one mux pair at the start of the range by default (external range
    36002-59999), six for a large system (36012-59999), or configured demultiplexing
    ports outside the range (the range is then not shortened)."""
    m = parse_config(edge_dict(), "t.toml").media
    assert m.traversal_mux and m.mux_rtp_ports() == [36000] and m.relay_range(True) == (36002, 59999)
    assert m.relay_range(False) == (36000, 59999)
    large = parse_config(with_("media", {"port_min": 36000, "port_max": 59999, "mux_pairs": 6}), "t.toml").media
    assert large.mux_rtp_ports() == list(range(36000, 36012, 2)) and large.relay_range(True) == (36012, 59999)
    demux = parse_config(with_("media", {"mux_ports": [2776]}), "t.toml").media
    assert demux.mux_rtp_ports() == [2776] and demux.relay_range(True) == (36000, 59999)
    probs = problems(with_("media", {"mux_ports": [2776, 2778], "mux_pairs": 1}))
    assert probs == [("media.mux_pairs", 1, "must match the 2 pair(s) of mux_ports")]
    probs = problems(with_("media", {"port_min": 40000, "port_max": 40003, "mux_pairs": 2}))
    assert probs[0][0] == "media.port_max" and "no media pair after" in probs[0][2]
    off = parse_config(with_("media", {"port_min": 40000, "port_max": 40003, "mux_pairs": 2, "traversal_mux": False}), "t.toml")
    assert off.media.relay_range(False) == (40000, 40003)
