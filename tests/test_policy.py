"""Call policy (seed 003 §6.5) and the issue-3 zone options in the configuration."""

from __future__ import annotations

import pytest

from edgeway.config import ConfigError, parse_config
from edgeway.config.models import PolicyRule
from edgeway.routing.policy import evaluate_policy

WEBEX = r".*@dmzlab\.call\.ciscospark\.com.*"


def test_swapped_rule_rejects_outbound_calls_to_the_cloud() -> None:
    """Seed 003 §6.5 / §14 case 28: Source .*, Destination the cloud domain, Reject."""
    rules = [PolicyRule(source=".*", destination=WEBEX, action="reject")]
    d = evaluate_policy("sip:5010@rtp.ciscotac.net", "sip:pstojano-test@dmzlab.call.ciscospark.com", rules)
    assert d.rejected and d.rule == 0
    assert d.trace[-2].endswith("matched") and d.trace[-1] == "CPL: <reject/>"


def test_corrected_rule_lets_outbound_calls_through() -> None:
    """§14 case 29: Source the cloud domain, Destination .* → on-prem callers proceed."""
    rules = [PolicyRule(source=WEBEX, destination=".*", action="reject")]
    out = evaluate_policy("sip:5010@rtp.ciscotac.net", "sip:pstojano-test@dmzlab.call.ciscospark.com", rules)
    assert not out.rejected and out.rule is None
    inbound = evaluate_policy("sip:x@dmzlab.call.ciscospark.com", "sip:jorobb@rtp.ciscotac.net", rules)
    assert inbound.rejected


def test_first_matching_rule_wins_and_localdomains_expands() -> None:
    rules = [
        PolicyRule(source=".*@%localdomains%", destination=".*", action="accept"),
        PolicyRule(source=".*", destination=".*", action="reject"),
    ]
    assert evaluate_policy("alice@corp.example", "bob@else.example", rules, ["corp.example"]).action == "accept"
    assert evaluate_policy("mallory@evil.example", "bob@else.example", rules, ["corp.example"]).action == "reject"


def test_whole_string_match() -> None:
    rules = [PolicyRule(source="alice", destination=".*", action="reject")]
    assert not evaluate_policy("alice@x", "b", rules).rejected


def _edge(**extra) -> dict:
    base = {"role": "edge", "name": "e", "sip": {"listen_ip": "127.0.0.2"}}
    base.update(extra)
    return base


def test_dns_zone_options_validate() -> None:
    cfg = parse_config(_edge(zones=[{"type": "dns", "name": "Hybrid Call Services DNS", "tls_verify_mode": True,
                                      "tls_verify_subject_name": "callservice.ciscospark.com",
                                      "inbound_classification": True, "modify_dns_request": True,
                                      "dns_request_domain": "callservice.ciscospark.com",
                                      "media_encryption": "on", "preloaded_routes": "accept",
                                      "parameter_preservation": True}]))
    z = cfg.zones[0]
    assert z.default_transport == "tls" and z.media_encryption == "on" and z.parameter_preservation
    with pytest.raises(ConfigError) as e:
        parse_config(_edge(zones=[{"type": "dns", "name": "D", "modify_dns_request": True}]))
    assert "zones[0].dns_request_domain" in str(e.value) and "modify_dns_request" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(_edge(zones=[{"type": "neighbour", "name": "N", "host": "h", "media_encryption": "maybe"}]))
    assert "zones[0]" in str(e.value) and "media_encryption" in str(e.value) and "'maybe'" in str(e.value)


def test_call_policy_regex_must_compile() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_edge(call_policy=[{"source": "(", "action": "reject"}]))
    assert "call_policy[0].source" in str(e.value)


def test_mtls_listener_settings() -> None:
    cfg = parse_config(_edge(sip={"listen_ip": "127.0.0.2", "mtls_enabled": True, "mtls_port": 5062}))
    assert cfg.sip.mtls_enabled and cfg.sip.mtls_port == 5062
    with pytest.raises(ConfigError) as e:
        parse_config(_edge(sip={"listen_ip": "127.0.0.2", "mtls_port": 0}))
    assert "sip.mtls_port = 0" in str(e.value)
