"""HTTP allow list (issue 9 item 3; seed 002 §8.5–§8.8): normalisation, matching, CSV files, config, CLI."""

from __future__ import annotations

import base64
import dataclasses
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgeway.cli.main import app
from edgeway.config import ConfigError, parse_config
from edgeway.mra import (
    DEFAULT_DEPLOYMENT,
    AllowList,
    AllowRule,
    RuleError,
    TargetError,
    normalise_url,
    parse_proxied_path,
)
from edgeway.mra.allowlist_csv import CsvFormatError, read_rules_csv, read_tests_csv, rules_to_toml, run_tests
from edgeway.mra.gate import gate_from_config

DATA = pathlib.Path(__file__).parent / "data"
SEED_RULES = DATA / "seed002_allowlist_rules.csv"
SEED_TESTS = DATA / "seed002_allowlist_tests.csv"
SEED_DEPLOYMENTS = ("myDomain1", "myDomain200", "my deployment")


def seed_rules(deployments=SEED_DEPLOYMENTS):
    return read_rules_csv(SEED_RULES.read_text(), deployments)


# ---- seed 002 §8.7–§8.8 example files ---------------------------------------------------------

def test_seed_rules_file_gives_five_rules_as_the_guide_says():
    """Catalogue §23.26: 5 rules; rule 1 prefix by default, "First Rule"; rule 2 GET+PUT, exact,
    no description; rule 4 port 443 and rule 5 port 80 by default."""
    rows = seed_rules()
    assert [r.ok for r in rows] == [True] * 5, [r.reason for r in rows]
    r1, r2, r3, r4, r5 = (r.rule for r in rows)
    assert (r1.match, r1.description, r1.methods, r1.deployment) == ("prefix", "First Rule", frozenset({"GET"}), "myDomain1")
    assert (r2.match, r2.description, r2.methods, r2.port) == ("exact", "", frozenset({"GET", "PUT"}), 8000)
    assert r3.methods is None and r3.port == 8080
    assert (r4.scheme, r4.port, r4.path) == ("https", 443, "/myPath4")
    assert (r5.scheme, r5.port, r5.path) == ("http", 80, "/myPath5")


def test_seed_tests_file_defaults():
    """§8.8: no Deployment → the default deployment; no HttpMethod → GET (catalogue §23.29)."""
    rows = read_tests_csv(SEED_TESTS.read_text(), SEED_DEPLOYMENTS)
    assert [(t.expected, t.deployment, t.method, t.description) for t in rows] == [
        ("block", "my deployment", "GET", "a block test"),
        ("allow", "my deployment", "PUT", "an allow test"),
        ("allow", DEFAULT_DEPLOYMENT, "GET", ""),
        ("block", DEFAULT_DEPLOYMENT, "POST", ""),
    ]
    assert not any(t.error for t in rows)


def test_seed_example_files_taken_literally_contradict_each_other():
    """The guide's two examples use unrelated deployment names (rules in myDomain1/myDomain200,
    tests in "my deployment" and the default): taken literally, rows 3 and 4 (line numbers) cannot
    give their stated result under per-deployment rules (§3, §8.6). Recorded here, not hidden."""
    al = AllowList(deployments=SEED_DEPLOYMENTS)
    for row in seed_rules():
        al.add(row.rule)
    outcomes = run_tests(al, read_tests_csv(SEED_TESTS.read_text(), SEED_DEPLOYMENTS))
    assert [o.passed for o in outcomes] == [True, False, False, True]


def test_seed_example_files_give_the_stated_results_with_consistent_deployments():
    """With the rules' placeholder deployments named as the tests name them (myDomain1 → the
    default deployment, myDomain200 → "my deployment"), every stated result holds, including
    §8.8's last two rows: another scheme (so port 80) or a method outside the defaults → block."""
    rename = {"myDomain1": DEFAULT_DEPLOYMENT, "myDomain200": "my deployment"}
    al = AllowList(deployments=("my deployment",))
    for row in seed_rules():
        al.add(dataclasses.replace(row.rule, deployment=rename[row.rule.deployment]))
    outcomes = run_tests(al, read_tests_csv(SEED_TESTS.read_text(), ("my deployment",)))
    assert [o.passed for o in outcomes] == [True] * 4, [o.reason for o in outcomes]


# ---- catalogue §23.22–§23.29 --------------------------------------------------------------------

def test_exact_rule_23_22():
    al = AllowList(rules=[AllowRule.from_url("https://myServer1:8443/myPath1", match="exact", methods=["GET"])])
    assert al.check("GET", "https://myServer1:8443/myPath1").status == 200
    assert al.check("GET", "https://myServer1:8443/myPath1/x").status == 403
    assert al.check("POST", "https://myServer1:8443/myPath1").status == 403
    assert al.check("GET", "http://myServer1:8443/myPath1").status == 403


def test_prefix_rule_without_path_allows_every_path_on_the_host_23_24():
    al = AllowList(rules=[AllowRule.from_url("https://host/")])
    for path in ("/", "/a", "/a/b/c?x=y"):
        assert al.check("GET", f"https://host{path}").allowed
    assert not al.check("GET", "https://host:8443/a").allowed
    assert not al.check("GET", "https://hostx/a").allowed


def test_prefix_is_a_plain_string_prefix_as_the_seed_says():
    """Seed §8.6: with prefix match "you can use a partial path"."""
    al = AllowList(rules=[AllowRule.from_url("https://h/myPa"), AllowRule.from_url("https://h/dir/")])
    assert al.check("GET", "https://h/myPath1").allowed
    assert al.check("GET", "https://h/dir/x").allowed
    assert not al.check("GET", "https://h/dirx").allowed  # a trailing "/" limits the rule to a directory
    assert not al.check("GET", "https://h/dir").allowed


def test_default_methods_follow_the_global_set_23_25():
    chosen = AllowRule.from_url("https://a/", methods=["GET"])
    defaults = AllowRule.from_url("https://b/")
    al = AllowList(rules=[chosen, defaults])
    assert not al.check("PUT", "https://b/x").allowed
    al.set_default_methods(["GET", "PUT"])
    assert al.check("PUT", "https://b/x").allowed
    assert not al.check("PUT", "https://a/x").allowed
    al.set_default_methods([])
    assert not al.check("GET", "https://b/x").allowed and al.check("GET", "https://a/x").allowed


def test_methods_are_case_sensitive():
    al = AllowList(rules=[AllowRule.from_url("https://a/")])
    assert not al.check("get", "https://a/").allowed
    with pytest.raises(RuleError, match="case-sensitive"):
        AllowRule.from_url("https://a/", methods=["get"])


@pytest.mark.parametrize("row, reason", [
    ("https://h:70000/p,,,,", "between 0 and 65535"),
    ("ftp://h/p,,,,", "not http or https"),
    ("https://u@h/p,,,,", "user-info"),
    ("https://h/p?q=1,,,,", "no query"),
    ("https://h/p,,,fuzzy,", "exact or prefix"),
    ("https://h/p,,\"GET,,PUT\",,", "empty method"),
    (",,GET,,", "Url is required"),
    ("https://h/p,nowhere,,,", "does not exist"),
    ("https://h/p,,,,,extra", "at most 5"),
])
def test_bad_rule_rows_are_rejected_with_a_reason_23_27(row, reason):
    rows = read_rules_csv(f"Url,Deployment,HttpMethods,MatchType,Description\n{row}\nhttps://ok/,,,,\n")
    assert not rows[0].ok and reason in rows[0].reason
    assert rows[1].ok  # the other rows still count


def test_port_zero_is_accepted_in_a_rule_but_matches_nothing():
    rows = read_rules_csv("Url,Deployment,HttpMethods,MatchType,Description\nhttps://h:0/,,,,\n")
    assert rows[0].ok and rows[0].rule.port == 0
    assert AllowList(rules=[rows[0].rule]).check("GET", "https://h:0/").status == 400


@pytest.mark.parametrize("text", [
    "https://h/p,,,,\n",
    "Url,HttpMethods,Deployment,MatchType,Description\nhttps://h/p,,,,\n",
    "Url,Deployment,HttpMethods,MatchType\nhttps://h/p,,,\n",
    "",
])
def test_missing_or_reordered_header_rejects_the_file_23_27(text):
    with pytest.raises(CsvFormatError, match="header"):
        read_rules_csv(text)


def test_deployment_required_only_with_several_deployments_23_28():
    text = "Url,Deployment,HttpMethods,MatchType,Description\nhttps://h/p,,,,\n"
    assert read_rules_csv(text)[0].rule.deployment == DEFAULT_DEPLOYMENT
    row = read_rules_csv(text, ("Default deployment", "other"))[0]
    assert not row.ok and "required" in row.reason


def test_tests_file_rows_23_29():
    text = ("Url,ExpectedResult,Deployment,Description,HttpMethod\n"
            "https://h/p,maybe,,,\nhttps://h/p,allow,,,\"GET,PUT\"\nhttps://h/p,ALLOW,,,\n")
    rows = read_tests_csv(text)
    assert "allow or block" in rows[0].error and "one HTTP method" in rows[1].error
    assert rows[2].expected == "allow" and rows[2].method == "GET" and not rows[2].error


def test_rules_to_toml_round_trips_through_the_config():
    rules = [r.rule for r in seed_rules(("myDomain1", "myDomain200"))]
    doc = rules_to_toml(rules, ("myDomain1", "myDomain200"))
    import tomllib
    data = tomllib.loads(doc)
    cfg = parse_config({"role": "core", "name": "c", "sip": {"listen_ip": "127.0.0.1"}, **data})
    assert AllowList.from_config(cfg.mra).rules == rules


# ---- automatic rules and config -----------------------------------------------------------------

CORE = {"role": "core", "name": "c", "sip": {"listen_ip": "127.0.0.1"}}


def test_automatic_rules_from_internal_servers_cannot_be_edited_or_deleted():
    cfg = parse_config({**CORE, "mra": {
        "deployments": ["east"],
        "internal_servers": [{"type": "call_control", "host": "ucm1.corp"}, {"type": "tftp", "host": "ucm1.corp"},
                             {"type": "voicemail", "host": "CUC.corp", "deployment": "east"},
                             {"type": "presence", "host": "10.0.0.9", "ports": [8444]}],
        "allow_rules": [{"url": "https://photos.corp/pics/", "description": "Directory Photo Host"}]}})
    al = AllowList.from_config(cfg.mra)
    auto = [r for r in al.rules if r.automatic]
    assert {r.server_type for r in auto} == {"call_control", "tftp", "voicemail", "presence"}
    assert al.check("GET", "https://ucm1.corp:8443/cucm-uds/user/alice").allowed
    assert al.check("GET", "http://ucm1.corp:6970/SPDefault.cnf.xml").allowed
    assert al.check("GET", "https://ucm1.corp:6972/SPDefault.cnf.xml").allowed
    assert not al.check("GET", "https://ucm1.corp:8443/ccmadmin/").allowed
    assert not al.check("GET", "https://cuc.corp/vmrest/messages").allowed  # another deployment
    assert al.check("DELETE", "https://cuc.corp/vmrest/messages/1", "east").allowed
    assert al.check("POST", "https://10.0.0.9:8444/EPASSoap/service").allowed
    assert al.check("GET", "https://photos.corp/pics/alice.jpg").rule == "Directory Photo Host"
    with pytest.raises(RuleError, match="deleted"):
        al.remove(auto[0])
    with pytest.raises(RuleError, match="edited"):
        al.replace_rule(auto[0], AllowRule.from_url("https://x/"))
    with pytest.raises(RuleError):
        al.add(auto[0])
    editable = al.rules[-1]
    al.remove(editable)
    assert not al.check("GET", "https://photos.corp/pics/alice.jpg").allowed


def test_mra_config_defaults_and_problems():
    cfg = parse_config(CORE)
    assert cfg.mra.default_methods == ["GET"] and cfg.mra.allow_rules == [] and cfg.mra.deployment_names == [DEFAULT_DEPLOYMENT]
    assert not AllowList.from_config(cfg.mra).check("GET", "https://anything/").allowed
    with pytest.raises(ConfigError) as ei:
        parse_config({**CORE, "mra": {
            "default_methods": ["get"],
            "deployments": ["a", "a"],
            "allow_rules": [{"url": "ftp://h/"}, {"url": "https://h:99999/"}, {"url": "https://h/", "match": "glob"},
                            {"url": "https://h/", "deployment": "b"}, {"url": "https://h/", "methods": []}],
            "internal_servers": [{"type": "mail", "host": "h"}, {"type": "tftp", "host": "bad host"}]}})
    got = {(k, repr(v)) for k, v, _ in ei.value.problems}
    text = str(ei.value)
    assert ("mra.default_methods[0]", repr("get")) in got
    assert ("mra.allow_rules[0].url", repr("ftp://h/")) in got
    assert ("mra.allow_rules[1].url", repr("https://h:99999/")) in got
    assert ("mra.allow_rules[2].match", repr("glob")) in got
    assert ("mra.allow_rules[4].methods", repr([])) in got
    assert ("mra.internal_servers[0].type", repr("mail")) in got
    assert ("mra.internal_servers[1].host", repr("bad host")) in got
    assert "not http or https" in text and "upper-case HTTP method" in text
    # cross-field checks run once fields are valid
    with pytest.raises(ConfigError) as ei:
        parse_config({**CORE, "mra": {"deployments": ["a", "a"], "allow_rules": [{"url": "https://h/", "deployment": "b"}]}})
    assert {(k, v) for k, v, _ in ei.value.problems} == {("mra.deployments[1]", "a"), ("mra.allow_rules[0].deployment", "b")}


# ---- deployments: the gate checks a request with its domain's deployment (issue 9 item 7) -------

DEPLOYMENTS_TOML = """
role = "core"
name = "c"
[sip]
listen_ip = "127.0.0.1"
[mra]
deployments = ["Staging"]
domains = ["corp.example", {name = "staging.example", deployment = "Staging"}]
uds_servers = ["ucm.corp", {address = "ucm.staging", deployment = "Staging"}]
[[mra.internal_servers]]
type = "call_control"
host = "ucm.corp"
[[mra.internal_servers]]
type = "call_control"
host = "ucm.staging"
deployment = "Staging"
[[mra.allow_rules]]
url = "https://wiki.corp/"
[[mra.allow_rules]]
url = "https://wiki.staging/"
deployment = "Staging"
"""


def proxied(domain: str, url_tail: str) -> str:
    return f"/{b64(domain)}/https/{url_tail}"


def test_gate_checks_each_request_with_the_deployment_of_its_domain():
    """Seed 002 §3: a rule (automatic or editable) of one deployment never allows a request
    that arrives for a domain of another; a domain that is not served is 404."""
    import tomllib

    gate = gate_from_config(parse_config(tomllib.loads(DEPLOYMENTS_TOML)).mra)
    for domain, own, other, dep in (("corp.example", "corp", "staging", DEFAULT_DEPLOYMENT),
                                    ("STAGING.example", "staging", "corp", "Staging")):
        for tail in (f"ucm.{own}/8443/cucm-uds/user/alice", f"wiki.{own}/443/page"):
            v = gate.decide("GET", proxied(domain, tail))
            assert (v.status, v.deployment) == (200, dep), (domain, tail, v)
            assert v.url == "https://" + tail.replace("/", ":", 1)  # host:port/path, as the proxy forwards it
        for tail in (f"ucm.{other}/8443/cucm-uds/user/alice", f"wiki.{other}/443/page"):
            v = gate.decide("GET", proxied(domain, tail))
            assert (v.status, v.deployment, v.url) == (403, dep, None), (domain, tail, v)
            assert repr(dep) in v.reason
    v = gate.decide("GET", proxied("nowhere.example", "wiki.corp/443/page"))
    assert (v.status, v.url) == (404, None) and "nowhere.example" in v.reason
    assert gate.decide("GET", "/!!/https/wiki.corp/443/page").status == 400
    # an explicit deployment overrides the domain's (the allow-list tests of seed 002 §8.8)
    assert gate.decide("GET", proxied("corp.example", "wiki.staging/443/x"), "Staging").status == 200


def test_gate_with_plain_string_domains_behaves_as_before_deployments():
    """Backward compatibility: ``domains = ["a.example"]`` is the Default deployment, whose
    rules decide every request for it."""
    cfg = parse_config({**CORE, "mra": {"domains": ["a.example"], "uds_servers": ["ucm1"],
                                        "internal_servers": [{"type": "call_control", "host": "ucm1"}],
                                        "allow_rules": [{"url": "https://photos/"}]}})
    gate = gate_from_config(cfg.mra)
    assert gate.decide("GET", proxied("a.example", "ucm1/8443/cucm-uds/user/x")).status == 200
    assert gate.decide("GET", proxied("a.example", "photos/443/p.jpg")).deployment == DEFAULT_DEPLOYMENT
    assert gate.decide("POST", proxied("a.example", "photos/443/p.jpg")).status == 403
    assert gate.decide("GET", proxied("b.example", "photos/443/p.jpg")).status == 404


# ---- MRA proxied path ---------------------------------------------------------------------------

def b64(domain: str) -> str:
    return base64.b64encode(domain.encode()).decode()


def test_parse_proxied_path():
    t = parse_proxied_path(f"/{b64('example.com')}/https/UCM1.corp/8443/cucm-uds/user/alice?x=1")
    assert (t.domain, t.scheme, t.host, t.port, t.path, t.query) == ("example.com", "https", "ucm1.corp", 8443,
                                                                     "/cucm-uds/user/alice", "x=1")
    assert t.url == "https://ucm1.corp:8443/cucm-uds/user/alice?x=1"
    b = b64("corp.example.com")
    assert parse_proxied_path(f"/{b.rstrip('=')}/HTTP/10.0.0.1/6970").path == "/"
    assert parse_proxied_path(f"/{b.replace('=', '%3D')}/https/::1/443/x").host == "::1"
    assert parse_proxied_path(f"/{b}/https/[2001:DB8::1]/443/x").host == "2001:db8::1"


@pytest.mark.parametrize("raw", [
    "https://edge:8443/ZXhhbXBsZS5jb20=/https/h/443/x",  # absolute-form
    "*",
    "/ZXhhbXBsZS5jb20=/https/h",  # too few segments
    "/ZXhhbXBsZS5jb20=/https/h/",  # empty port
    "/!!!/https/h/443/x",  # not base64
    f"/{b64('bad domain')}/https/h/443/x",
    f"/{b64('example.com')}/ftp/h/443/x",
    f"/{b64('example.com')}/https/h/0/x",
    f"/{b64('example.com')}/https/h/65536/x",
    f"/{b64('example.com')}/https/h/0443/x",
    f"/{b64('example.com')}/https/h/４４３/x",
    f"/{b64('example.com')}/https/u@h/443/x",
    f"/{b64('example.com')}/https/h%2fevil/443/x",
    f"/{b64('example.com')}/https/h:8443/443/x",
    f"/{b64('example.com')}/https/h/443/a%2f..%2f..%2fb",
    f"/{b64('example.com')}/https/h/443/a\\..\\b",
    f"/{b64('example.com')}/https/h/443/a/..;/b",
    f"/{b64('example.com')}/https/h/443/a%00b",
    f"/{b64('example.com')}/https/[fe80::1%25eth0]/443/x",
])
def test_malformed_proxied_paths_raise_target_error(raw):
    with pytest.raises(TargetError):
        parse_proxied_path(raw)
    assert AllowList(rules=[AllowRule.from_url("https://h/")]).check_proxied("GET", raw).status == 400


# ---- hostile targets ----------------------------------------------------------------------------

HOSTILE_RULES = [
    AllowRule.from_url("https://ucm.corp:8443/cucm-uds/", methods=["GET"]),
    AllowRule.from_url("https://cuc.corp/vmrest/users", match="exact", methods=["GET"]),
    AllowRule.from_url("http://tftp.corp:6970/config/"),
    AllowRule.from_url("https://[2001:db8::5]:8443/api/"),
]

HOSTILE = [
    "https://ucm.corp:8443/cucm-uds/../ccmadmin/", "https://ucm.corp:8443/cucm-uds/%2e%2e/ccmadmin/",
    "https://ucm.corp:8443/cucm-uds/%2E%2E%2Fccmadmin", "https://ucm.corp:8443/cucm-uds/..%2fccmadmin",
    "https://ucm.corp:8443/cucm-uds/..%2Fccmadmin", "https://ucm.corp:8443/cucm-uds/..%5cccmadmin",
    "https://ucm.corp:8443/cucm-uds/..\\ccmadmin", "https://ucm.corp:8443/cucm-uds/..;/ccmadmin",
    "https://ucm.corp:8443/cucm-uds/.;/../ccmadmin", "https://ucm.corp:8443/cucm-uds/%2e%2e%3b/ccmadmin",
    "https://ucm.corp:8443/cucm-uds/%c0%ae%c0%ae/ccmadmin", "https://ucm.corp:8443/cucm-uds/%e0%80%ae%e0%80%ae/x",
    "https://ucm.corp:8443/cucm-uds/%252e%252e/ccmadmin", "https://ucm.corp:8443/cucm-uds/%00/../x",
    "https://ucm.corp:8443/cucm-uds/\x00/x", "https://ucm.corp:8443/cucm-uds/a\r\nHost: evil",
    "https://ucm.corp:8443//cucm-uds/../../ccmadmin", "https://ucm.corp:8443/cucm-uds//..//..//ccmadmin",
    "https://ucm.corp:8443/cucm-uds/%zz", "https://ucm.corp:8443/cucm-uds/%", "https://ucm.corp:8443/cucm-uds/%ed%a0%80",
    "HTTPS://UCM.CORP:8443/cucm-uds/../x", "hTtPs://ucm.corp:8443/CUCM-UDS/x",
    "https://ucm.corp:8443@evil.example/cucm-uds/x", "https://evil.example@ucm.corp:8443/cucm-uds/x",
    "https://ucm.corp:8443/cucm-uds/x@evil.example/", "https://ucm.corp:8443/cucm-uds/http://evil.example/",
    "https://ucm.corp:8443/cucm-uds/https:%2F%2Fevil.example/", "https://ucm.corp:8443#@evil.example/cucm-uds/",
    "https://ucm.corp:08443/cucm-uds/x", "https://ucm.corp:8443 /cucm-uds/x", "https://ucm.corp:+8443/cucm-uds/x",
    "https://ucm.corp:74979/cucm-uds/x", "https://ucm.corp:0/cucm-uds/x", "https://ucm.corp:/cucm-uds/x",
    "https://ucm.corp:８４４３/cucm-uds/x", "https://ucm.corp:８４４３/cucm-uds/x", "https://ucm.corp./cucm-uds/x",
    "https://ucm.corp:8443:8443/cucm-uds/x", "https://ucm%2ecorp:8443/cucm-uds/x", "https://ucm.corp\\@evil:8443/x",
    "https://ｕｃｍ.corp:8443/cucm-uds/x", "https://ucm.corp:8443/cucm-uds/é", "https://ucm.corp:8443/cucm-uds/ x",
    "https://cuc.corp/vmrest/users/", "https://cuc.corp/vmrest/users/../users2", "https://cuc.corp/vmrest/users;x",
    "https://cuc.corp/vmrest/./users/../../admin", "https://cuc.corp:443/vmrest//users", "http://cuc.corp:443/vmrest/users",
    "https://cuc.corp:80/vmrest/users", "https://cuc.corp/vmrest/users%2f..%2fadmin", "https://cuc.corp/vmrest/%75sers",
    "https://[2001:db8::5]:8443/api/../admin", "https://[2001:DB8:0:0:0:0:0:5]:8443/api/x", "https://[2001:db8::5%25eth0]:8443/api/x",
    "https://[2001:db8::5]/api/x", "https://2001:db8::5:8443/api/x", "https://[::ffff:10.0.0.1]:8443/api/x",
    "https://[2001:db8::5]:8443@evil/api/x", "https://[2001:db8::5:8443/api/x",
    "https://127.1:8443/cucm-uds/", "https://0x7f.0.0.1:8443/cucm-uds/", "https://2130706433:8443/cucm-uds/",
    "https://010.0.0.1:8443/cucm-uds/", "//ucm.corp:8443/cucm-uds/x", "/cucm-uds/x", "ucm.corp:8443/cucm-uds/x",
    "file:///etc/passwd", "gopher://ucm.corp:8443/cucm-uds/", "http://tftp.corp:6970/config/../../etc/passwd",
    "http://tftp.corp:6970/config/%2e%2e/%2e%2e/etc/passwd", "http://tftp.corp:6970/config/..%00/x",
    "http://tftp.corp:6970/config/%C0%AF../x", "http://tftp.corp:6970/conf%69g/x", "http://tftp.corp:6970/config",
]


def allowed_by_string(al: AllowList, method: str, url: str, deployment: str = DEFAULT_DEPLOYMENT) -> bool:
    """The oracle: some rule allows ``url`` by plain string comparison of canonical forms."""
    base = url.split("?", 1)[0]
    return any(r.deployment == deployment and method in al.methods_of(r)
               and (base == r.url if r.match == "exact" else base.startswith(r.url)) for r in al.rules)


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_targets_never_widen_a_rule(target):
    al = AllowList(rules=list(HOSTILE_RULES))
    d = al.check("GET", target)
    if d.status == 400:
        assert not d.allowed and d.url is None
        return
    norm = normalise_url(d.url)
    assert norm.url == d.url  # idempotent
    assert d.allowed == allowed_by_string(al, "GET", d.url)
    if d.allowed:
        # Whatever the trick, what is forwarded stays inside a rule: no dot segment, no encoded separator.
        assert "/../" not in norm.path and "%2F" not in d.url.upper() and "\\" not in d.url
        assert any(d.url.startswith(r.url) for r in HOSTILE_RULES)


def test_hostile_corpus_specific_outcomes():
    al = AllowList(rules=list(HOSTILE_RULES))
    status = {t: al.check("GET", t).status for t in HOSTILE}
    assert status["https://ucm.corp:8443/cucm-uds/../ccmadmin/"] == 403
    assert status["https://ucm.corp:8443/cucm-uds/..%2fccmadmin"] == 400
    assert status["https://ucm.corp:8443/cucm-uds/..;/ccmadmin"] == 400
    assert status["https://ucm.corp:8443/cucm-uds/%c0%ae%c0%ae/ccmadmin"] == 400
    assert status["https://ucm.corp:8443/cucm-uds/%252e%252e/ccmadmin"] == 400
    assert status["https://evil.example@ucm.corp:8443/cucm-uds/x"] == 400
    assert status["https://127.1:8443/cucm-uds/"] == 400
    assert status["https://[2001:DB8:0:0:0:0:0:5]:8443/api/x"] == 200
    assert status["https://cuc.corp/vmrest/%75sers"] == 200  # %75 is "u": unreserved, decoded
    assert status["https://cuc.corp/vmrest/users/"] == 403  # exact
    assert al.check("GET", "https://ucm.corp:8443/cucm-uds//x/./y/../z").url == "https://ucm.corp:8443/cucm-uds/x/z"


# ---- hypothesis ---------------------------------------------------------------------------------

HOSTS = ["ucm.corp", "UCM.corp", "cuc.corp", "10.0.0.1", "[2001:db8::1]", "h"]
SEGMENTS = ["a", "b", "cucm-uds", "vmrest", ".", "..", "", "%2e", "%2E%2e", "%2f", "%5c", "x;y", "..;", "%41",
            "%c0%ae", "%00", "~u", "a%20b", "%25", "\\", "@", ":", "é", "%C3%A9"]


@st.composite
def rule_sets(draw):
    rules = []
    for _ in range(draw(st.integers(1, 4))):
        scheme = draw(st.sampled_from(["http", "https"]))
        host = draw(st.sampled_from(HOSTS))
        port = draw(st.sampled_from(["", ":8443", ":80", ":443"]))
        path = "/" + "/".join(draw(st.lists(st.sampled_from(["a", "b", "cucm-uds", "vmrest", "p"]), max_size=3)))
        if draw(st.booleans()):
            path += "/"
        rules.append(AllowRule.from_url(f"{scheme}://{host}{port}{path}", match=draw(st.sampled_from(["exact", "prefix"])),
                                        methods=draw(st.sampled_from([None, ["GET"], ["GET", "POST"]]))))
    return AllowList(rules=rules)


@st.composite
def mutated_targets(draw, al: AllowList):
    rule = draw(st.sampled_from(al.rules))
    url = rule.url
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 5))
        if op == 0:
            url += "/" + draw(st.sampled_from(SEGMENTS))
        elif op == 1:
            url = url.replace("/", "//", 1) if draw(st.booleans()) else url + "//"
        elif op == 2:
            i = url.find("://") + 3
            url = url[:i].upper() + url[i:].swapcase() if i > 2 and draw(st.booleans()) else url.upper()
        elif op == 3:
            url = url.replace("://", "://" + draw(st.sampled_from(["u@", "u:p@", "evil.example@"])), 1)
        elif op == 4:
            cut = draw(st.integers(0, len(url)))
            url = url[:cut] + draw(st.sampled_from(["%", "%2e", "%2f", "/../", "/./", "\\", ";", "?q=1", "#f", ":0", "\x00"])) + url[cut:]
        else:
            url += "?" + draw(st.sampled_from(["a=1", "x=/../y", "%zz"]))
    return draw(st.sampled_from(["GET", "POST", "PUT"])), url


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_allowed_decisions_match_a_rule_by_string_and_normalise_idempotently(data):
    al = data.draw(rule_sets())
    method, target = data.draw(mutated_targets(al))
    d = al.check(method, target)
    if d.url is None:
        assert d.status == 400 and not d.allowed
        return
    assert normalise_url(d.url).url == d.url
    assert al.check(method, d.url) == d
    assert d.allowed == allowed_by_string(al, method, d.url)
    assert d.status == (200 if d.allowed else 403)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_normalise_arbitrary_text_never_crashes(text):
    for target in (text, "https://h/" + text, "https://" + text):
        try:
            n = normalise_url(target)
        except TargetError:
            continue
        assert normalise_url(n.url) == n
    try:
        parse_proxied_path("/" + text)
    except TargetError:
        pass


# ---- CLI ----------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_import_seed_rules_prints_rows_and_toml():
    res = runner.invoke(app, ["allowlist", "import", str(SEED_RULES)])
    assert res.exit_code == 0, res.output
    assert "5 of 5 rules accepted" in res.output
    assert '[[mra.allow_rules]]\nurl = "https://myserver1:8443/myPath1"' in res.output
    assert 'deployments = ["myDomain1", "myDomain200"]' in res.output


def test_cli_import_reports_bad_rows_and_files(tmp_path):
    bad = tmp_path / "rules.csv"
    bad.write_text("Url,Deployment,HttpMethods,MatchType,Description\nhttps://h:70000/,,,,\nhttps://ok/,,,,\n")
    res = runner.invoke(app, ["allowlist", "import", str(bad)])
    assert res.exit_code == 1 and "fail" in res.output and "65535" in res.output and 'url = "https://ok:443/"' in res.output
    bad.write_text("Url,Deployment\n")
    assert runner.invoke(app, ["allowlist", "import", str(bad)]).exit_code == 2


def test_cli_test_against_config_and_rules(tmp_path):
    node = tmp_path / "node.toml"
    node.write_text('role = "core"\nname = "c"\n[sip]\nlisten_ip = "127.0.0.1"\n[mra]\ndeployments = ["my deployment"]\n'
                    '[[mra.allow_rules]]\nurl = "http://myServer2:8000/myPath2"\nmatch = "exact"\n'
                    'methods = ["GET", "PUT"]\ndeployment = "my deployment"\n')
    rules = tmp_path / "rules.csv"
    rules.write_text("Url,Deployment,HttpMethods,MatchType,Description\nhttps://myServer4/myPath4,\"Default deployment\",,prefix,\"Fourth Rule\"\n")
    res = runner.invoke(app, ["allowlist", "test", str(SEED_TESTS), "--rules", str(rules), "-c", str(node)])
    assert res.output.count("│ pass ") == 4 and "4 of 4 tests passed" in res.output, res.output
    assert res.exit_code == 0
    res = runner.invoke(app, ["allowlist", "test", str(SEED_TESTS), "--rules", str(SEED_RULES)])
    assert res.exit_code == 1 and "2 of 4 tests passed" in res.output


def test_cli_import_and_test_with_the_deployments_of_a_config(tmp_path):
    """``-c node.toml`` with domains and servers in deployments: the rules file must name one of
    the config's deployments (several exist: Deployment is required, seed 002 §8.7), and the
    tests run against the config's automatic rules in their server's deployment."""
    node = tmp_path / "node.toml"
    node.write_text(DEPLOYMENTS_TOML)
    rules = tmp_path / "rules.csv"
    rules.write_text("Url,Deployment,HttpMethods,MatchType,Description\n"
                     "https://files.staging/,Staging,,prefix,Files\n"
                     "https://files.corp/,\"Default deployment\",,prefix,\n")
    res = runner.invoke(app, ["allowlist", "import", str(rules), "-c", str(node)])
    assert res.exit_code == 0 and "2 of 2 rules accepted" in res.output, res.output
    assert 'deployment = "Staging"' in res.output and "deployments =" not in res.output
    rules.write_text("Url,Deployment,HttpMethods,MatchType,Description\nhttps://files.staging/,,,,\n"
                     "https://files.staging/,West,,,\n")
    res = runner.invoke(app, ["allowlist", "import", str(rules), "-c", str(node)])
    assert res.exit_code == 1 and "0 of 2 rules accepted" in res.output and "required" in res.output
    assert "'West' does not exist" in res.output
    tests = tmp_path / "tests.csv"
    tests.write_text("Url,ExpectedResult,Deployment,Description,HttpMethod\n"
                     "https://ucm.staging:8443/cucm-uds/user/a,allow,Staging,automatic,GET\n"
                     "https://ucm.staging:8443/cucm-uds/user/a,block,,other deployment,GET\n"
                     "https://ucm.corp:8443/cucm-uds/user/a,allow,,automatic,GET\n"
                     "https://wiki.corp/x,block,Staging,other deployment,GET\n"
                     "https://wiki.staging/x,allow,Staging,editable,GET\n")
    res = runner.invoke(app, ["allowlist", "test", str(tests), "-c", str(node)])
    assert res.exit_code == 0 and "5 of 5 tests passed" in res.output, res.output
