"""Transforms, search-rule planning and zone classification (seed 003 §6, §14 items 19–24, 30–31)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeway.config import NodeConfig, SearchRule, Transform, parse_config
from edgeway.routing.search import Candidate, SearchLog, plan_search
from edgeway.routing.transforms import (
    apply_pattern,
    apply_transforms,
    check_pattern,
    expand_localdomains,
    match_pattern,
)
from edgeway.routing.zones import classify_source, zone_by_name

LOCAL = ["rtp.ciscotac.net", "corp.edgeway.test"]
CATCH_ALL = r"(?!.*@%localdomains%.*$).*"
WEBEX = r".*@.*\.ciscospark\.com"
EXT = "pstojano-test@dmzlab.call.ciscospark.com"


def rule(name, priority, **kw) -> SearchRule:
    kw.setdefault("target_zone", "Z")
    return SearchRule(name=name, priority=priority, **kw)


# ---- pattern types x behaviours ---------------------------------------------------------------

@pytest.mark.parametrize("ptype,pattern,behaviour,replace,alias,expected", [
    # exact
    ("exact", "alice@corp.edgeway.test", "leave", "", "alice@corp.edgeway.test", "alice@corp.edgeway.test"),
    ("exact", "alice@corp.edgeway.test", "strip", "", "alice@corp.edgeway.test", ""),
    ("exact", "alice@corp.edgeway.test", "replace", "bob@x", "alice@corp.edgeway.test", "bob@x"),
    ("exact", "alice@corp.edgeway.test", "leave", "", "alice@corp.edgeway.test.evil", None),
    ("exact", "alice", "leave", "", "malice", None),
    ("exact", "Alice@Corp.Edgeway.Test", "leave", "", "alice@corp.edgeway.test", "alice@corp.edgeway.test"),
    # prefix
    ("prefix", "9", "leave", "", "9123@corp", "9123@corp"),
    ("prefix", "9", "strip", "", "9123@corp", "123@corp"),
    ("prefix", "9", "replace", "+1", "9123@corp", "+1123@corp"),
    ("prefix", "9", "strip", "", "8123@corp", None),
    ("prefix", "a.b", "leave", "", "axb", None),  # literal, not a regex
    ("prefix", "cucm.rtp.ciscotac.net", "leave", "", "cucm.rtp.ciscotac.net;lr", "cucm.rtp.ciscotac.net;lr"),
    ("prefix", "", "strip", "", "anything@x", "anything@x"),
    # suffix
    ("suffix", "@old.test", "leave", "", "bob@old.test", "bob@old.test"),
    ("suffix", "@old.test", "strip", "", "bob@old.test", "bob"),
    ("suffix", "@old.test", "replace", "@new.test", "bob@old.test", "bob@new.test"),
    ("suffix", "@old.test", "replace", "@new.test", "bob@old.test.x", None),
    ("suffix", ";lr", "strip", "", "cucm.rtp.ciscotac.net;lr", "cucm.rtp.ciscotac.net"),
    # regex (whole string)
    ("regex", WEBEX, "leave", "", EXT, EXT),
    ("regex", WEBEX, "leave", "", "bob@example.com", None),
    ("regex", WEBEX, "leave", "", EXT + ";x", None),
    ("regex", r"(.*)@old\.test", "replace", r"\1@new.test", "bob@old.test", "bob@new.test"),
    ("regex", r"(?P<u>.*)@(.*)", "replace", r"\2/\g<u>", "bob@x.y", "x.y/bob"),
    ("regex", r"\d+", "strip", "", "1234", ""),
    ("regex", r"\d+", "leave", "", "12a34", None),
    ("regex", r"ALICE@.*", "leave", "", "alice@x", "alice@x"),
])
def test_apply_pattern(ptype, pattern, behaviour, replace, alias, expected):
    assert apply_pattern(alias, ptype, pattern, behaviour, replace, LOCAL) == expected
    assert (match_pattern(alias, ptype, pattern, LOCAL) is not None) == (expected is not None)


def test_seed_check_pattern_recipe():
    # seed 003 §14 item 24
    assert match_pattern("cucm.rtp.ciscotac.net", "prefix", "cucm.rtp.ciscotac.net")
    assert match_pattern(EXT, "regex", WEBEX)
    assert match_pattern("bob@example.com", "regex", WEBEX) is None


def test_regex_is_whole_string_not_search():
    assert match_pattern("xx123yy", "regex", r"\d+") is None
    assert match_pattern("123", "regex", r"\d+").group(0) == "123"
    # alternation must be anchored as a whole too
    assert match_pattern("ab", "regex", "a|ab").group(0) == "ab"
    assert match_pattern("abc", "regex", "a|ab") is None


def test_unknown_type_and_behaviour():
    with pytest.raises(ValueError):
        match_pattern("a", "glob", "a")
    with pytest.raises(ValueError):
        apply_pattern("a", "exact", "a", "mangle")


# ---- %localdomains% ---------------------------------------------------------------------------

def test_expand_localdomains():
    assert expand_localdomains("x@%localdomains%", ["a.test", "b-c.test"]) == r"x@(?:a\.test|b\-c\.test)"
    assert expand_localdomains("%LocalDomains%", ["a"]) == "(?:a)"
    assert expand_localdomains("x@%localdomains%", []) == "x@(?!)"
    assert expand_localdomains(r"\1 no macro", ["a"]) == r"\1 no macro"


@pytest.mark.parametrize("alias,external", [
    ("jorobb@rtp.ciscotac.net", False),           # seed §14 item 20
    ("jorobb@RTP.ciscotac.net", False),
    ("alice@corp.edgeway.test", False),
    ("alice@corp.edgeway.test;transport=tls", False),
    (EXT, True),
    ("bob@example.com", True),
    ("bob@rtpXciscotac.net", True),               # the dot is escaped
    ("bob@rtp.ciscotac.net.evil.com", False),     # `.*$` after the domain: still local by this rule
    ("cucm.rtp.ciscotac.net", True),              # no '@' at all
])
def test_catch_all_negative_lookahead(alias, external):
    assert (match_pattern(alias, "regex", CATCH_ALL, LOCAL) is not None) is external


def test_catch_all_without_local_domains_matches_everything():
    assert match_pattern("jorobb@rtp.ciscotac.net", "regex", CATCH_ALL, []) is not None
    assert match_pattern("x@rtp.ciscotac.net", "regex", "x@%localdomains%", []) is None


@pytest.mark.parametrize("ptype,pattern,behaviour,replace,alias,expected", [
    ("exact", "alice@%localdomains%", "leave", "", "alice@corp.edgeway.test", "alice@corp.edgeway.test"),
    ("exact", "alice@%localdomains%", "leave", "", "alice@rtp.ciscotac.net", "alice@rtp.ciscotac.net"),
    ("exact", "alice@%localdomains%", "leave", "", "alice@other.test", None),
    ("suffix", "@%localdomains%", "strip", "", "bob@rtp.ciscotac.net", "bob"),
    ("suffix", "@%localdomains%", "replace", "@x.test", "bob@corp.edgeway.test", "bob@x.test"),
    ("suffix", "@%localdomains%", "strip", "", "bob@corp.edgeway.test.x", None),
    ("prefix", "%localdomains%;", "strip", "", "rtp.ciscotac.net;lr", "lr"),
    ("regex", r"(.*)@%localdomains%", "replace", r"\1", "carol@corp.edgeway.test", "carol"),
])
def test_localdomains_in_every_pattern_type(ptype, pattern, behaviour, replace, alias, expected):
    assert apply_pattern(alias, ptype, pattern, behaviour, replace, LOCAL) == expected


def test_check_pattern():
    check_pattern("regex", CATCH_ALL)
    check_pattern("prefix", "((( not a regex")
    with pytest.raises(ValueError, match="must be a valid regular expression"):
        check_pattern("regex", "(")
    with pytest.raises(ValueError, match=r"refers to group \\2"):
        check_pattern("regex", "(a)", "replace", r"\2")
    check_pattern("regex", "(a)", "leave", r"\2")  # replace string unused


# ---- transforms -------------------------------------------------------------------------------

def test_apply_transforms_first_match_by_priority():
    ts = [
        Transform(priority=20, pattern_type="suffix", pattern="@old.test", behaviour="replace", replace="@b.test"),
        Transform(priority=10, pattern_type="suffix", pattern="@old.test", behaviour="replace", replace="@a.test"),
        Transform(priority=5, pattern_type="prefix", pattern="sip:", behaviour="strip", enabled=False),
        Transform(priority=1, pattern_type="exact", pattern="nobody", behaviour="replace", replace="x"),
    ]
    assert apply_transforms("bob@old.test", ts, LOCAL) == "bob@a.test"   # only the first match applies
    assert apply_transforms("sip:bob@z", ts, LOCAL) == "sip:bob@z"       # disabled one skipped
    assert apply_transforms("nobody", ts, LOCAL) == "x"
    assert apply_transforms("other", [], LOCAL) == "other"


def test_apply_transforms_ties_keep_config_order():
    ts = [Transform(priority=1, pattern_type="regex", pattern=".*", behaviour="replace", replace=r"first"),
          Transform(priority=1, pattern_type="regex", pattern=".*", behaviour="replace", replace=r"second")]
    assert apply_transforms("a", ts) == "first"


# ---- search planning --------------------------------------------------------------------------

def edge_rules(webex_priority: int) -> list[SearchRule]:
    return [
        rule("Webex Hybrid", 15, mode="any_alias", pattern_type="prefix", behaviour="strip",
             source_zone="Hybrid Call Services DNS", target_zone="Hybrid Call Service Traversal"),
        rule("to DNS", 100, pattern=CATCH_ALL, target_zone="DNS"),
        rule("Webex Hybrid - to Webex Cloud", webex_priority, pattern=WEBEX,
             source_zone="Hybrid Call Service Traversal", target_zone="Hybrid Call Services DNS"),
    ]


def test_shadowing_catch_all_stops_before_webex_rule():
    # seed 003 §6.3 / §14 item 19
    cands, log = plan_search(EXT, "Hybrid Call Service Traversal", edge_rules(101), ["rtp.ciscotac.net"])
    assert cands == [Candidate("to DNS", 100, "DNS", EXT)]
    assert log == [
        "Search rule 'Webex Hybrid' ignored due to source filtering",
        f"Considering search rule 'to DNS' towards target 'DNS' at priority '100' with alias '{EXT}'",
    ]


def test_fixed_priority_webex_rule_considered_first():
    cands, log = plan_search(EXT, "Hybrid Call Service Traversal", edge_rules(99), ["rtp.ciscotac.net"])
    assert cands == [Candidate("Webex Hybrid - to Webex Cloud", 99, "Hybrid Call Services DNS", EXT)]
    assert log[-1] == ("Considering search rule 'Webex Hybrid - to Webex Cloud' towards target "
                       f"'Hybrid Call Services DNS' at priority '99' with alias '{EXT}'")


def test_inbound_from_cloud_any_alias_strip_empty_prefix():
    # seed §14 item 23: AnyAlias, empty prefix, Strip → alias unchanged
    alias = "jorobb@rtp.ciscotac.net"
    cands, log = plan_search(alias, "Hybrid Call Services DNS", edge_rules(101), ["rtp.ciscotac.net"])
    assert cands == [Candidate("Webex Hybrid", 15, "Hybrid Call Service Traversal", alias)]
    assert len(log) == 1


def test_local_alias_does_not_match_catch_all():
    cands, log = plan_search("jorobb@rtp.ciscotac.net", "DefaultZone", edge_rules(101), ["rtp.ciscotac.net"])
    assert cands == []
    assert log == [
        "Search rule 'Webex Hybrid' ignored due to source filtering",
        "Search rule 'to DNS' did not match destination alias 'jorobb@rtp.ciscotac.net'",
        "Search rule 'Webex Hybrid - to Webex Cloud' ignored due to source filtering",
    ]


def test_stop_versus_continue():
    # seed §14 item 21
    rules = [
        rule("Late", 60, mode="any_alias", target_zone="Late"),
        rule("DNS", 50, mode="any_alias", target_zone="DNS"),
        rule("Neighbor", 10, mode="any_alias", progress="continue", target_zone="Nbr"),
        rule("Local", 1, mode="any_alias", progress="continue", target_zone="LocalZone"),
    ]
    cands, _ = plan_search("a@b", "DefaultZone", rules, [])
    assert [(c.rule, c.zone) for c in cands] == [("Local", "LocalZone"), ("Neighbor", "Nbr"), ("DNS", "DNS")]
    rules[1] = rule("DNS", 50, mode="any_alias", progress="continue", target_zone="DNS")
    cands, _ = plan_search("a@b", "DefaultZone", rules, [])
    assert [c.rule for c in cands] == ["Local", "Neighbor", "DNS", "Late"]


def test_non_matching_stop_rule_does_not_stop():
    rules = [rule("only 9", 1, pattern_type="prefix", pattern="9", target_zone="PSTN"),
             rule("rest", 2, mode="any_alias", target_zone="DNS")]
    cands, log = plan_search("8000@x", "DefaultZone", rules, [])
    assert cands == [Candidate("rest", 2, "DNS", "8000@x")]
    assert log[0] == "Search rule 'only 9' did not match destination alias '8000@x'"


def test_each_rule_sees_original_alias_and_applies_its_behaviour():
    rules = [rule("strip 9", 1, pattern_type="prefix", pattern="9", behaviour="strip", progress="continue",
                  target_zone="PSTN"),
             rule("to sip", 2, pattern=r"9(\d+)@.*", behaviour="replace", replace=r"\1@gw.test", target_zone="GW"),
             rule("any strip", 3, mode="any_alias", pattern_type="prefix", pattern="0", behaviour="strip")]
    cands, _ = plan_search("9123@corp", "DefaultZone", rules, [])
    assert [c.alias for c in cands] == ["123@corp", "123@gw.test"]
    # any_alias with a non-matching prefix still matches, alias unchanged; with a matching one it strips
    assert plan_search("123", "X", rules[2:], [])[0] == [Candidate("any strip", 3, "Z", "123")]
    assert plan_search("0123", "X", rules[2:], [])[0] == [Candidate("any strip", 3, "Z", "123")]


def test_priority_ordering_ties_and_disabled():
    rules = [rule("b", 5, mode="any_alias", progress="continue", target_zone="B"),
             rule("a", 5, mode="any_alias", progress="continue", target_zone="A"),
             rule("off", 1, mode="any_alias", enabled=False, target_zone="Off"),
             rule("first", 2, mode="any_alias", progress="continue", target_zone="F")]
    cands, log = plan_search("x", "DefaultZone", rules, [])
    assert [c.rule for c in cands] == ["first", "b", "a"]
    assert not any("'off'" in line for line in log)


def test_source_filtering():
    # seed §14 item 22
    rules = [rule("ISDN Inbound", 1, mode="any_alias", source_zone="ISDN", target_zone="CUCM11"),
             rule("from B", 2, mode="any_alias", source_zone="B", target_zone="LocalZone")]
    cands, log = plan_search("x@y", "B", rules, [])
    assert cands == [Candidate("from B", 2, "LocalZone", "x@y")]
    assert log[0] == "Search rule 'ISDN Inbound' ignored due to source filtering"
    cands, _ = plan_search("x@y", "A", rules, [])
    assert cands == []


def test_core_preloaded_route_alias():
    # seed §6.3 / §14 items 26, 31: 'as is local' (continue) then prefix rule to CUCM11
    rules = [rule("as is local", 1, mode="any_alias", progress="continue", target_zone="LocalZone"),
             rule("Hybrid Call Service Inbound Routing", 2, pattern_type="prefix",
                  pattern="cucm.rtp.ciscotac.net", target_zone="CUCM11")]
    cands, log = plan_search("cucm.rtp.ciscotac.net;lr", "Hybrid Call Service Traversal", rules, [])
    assert [c.zone for c in cands] == ["LocalZone", "CUCM11"]
    assert log == [
        "Considering search rule 'as is local' towards target 'LocalZone' at priority '1' "
        "with alias 'cucm.rtp.ciscotac.net;lr'",
        "Considering search rule 'Hybrid Call Service Inbound Routing' towards target 'CUCM11' at priority '2' "
        "with alias 'cucm.rtp.ciscotac.net;lr'",
    ]


def test_search_log_wording():
    log = SearchLog()
    log.ignored("r")
    log.no_match("r", "a@b")
    log.considering(Candidate("r", 7, "Zone X", "a@b"))
    assert log.lines == ["Search rule 'r' ignored due to source filtering",
                         "Search rule 'r' did not match destination alias 'a@b'",
                         "Considering search rule 'r' towards target 'Zone X' at priority '7' with alias 'a@b'"]


def test_transform_then_search_from_config():
    # seed §14 item 30: transforms run before search rules
    cfg = parse_config({
        "role": "edge", "name": "e", "sip": {"listen_ip": "10.0.0.1", "domains": ["corp.edgeway.test"]},
        "zones": [{"type": "dns", "name": "DNS"}],
        "transforms": [{"priority": 1, "pattern_type": "suffix", "pattern": "@corp.example",
                        "behaviour": "replace", "replace": "@corp.edgeway.test"}],
        "search_rules": [{"name": "local", "priority": 1, "pattern": ".*@%localdomains%", "target_zone": "LocalZone"},
                         {"name": "to DNS", "priority": 100, "pattern": CATCH_ALL, "target_zone": "DNS"}],
    })
    alias = apply_transforms("bob@corp.example", cfg.transforms, cfg.local_domains)
    assert alias == "bob@corp.edgeway.test"
    assert plan_search(alias, "DefaultZone", cfg.search_rules, cfg.local_domains)[0] == [
        Candidate("local", 1, "LocalZone", "bob@corp.edgeway.test")]
    assert plan_search("bob@else.test", "DefaultZone", cfg.search_rules, cfg.local_domains)[0] == [
        Candidate("to DNS", 100, "DNS", "bob@else.test")]


# ---- zones ------------------------------------------------------------------------------------

@pytest.fixture
def core() -> NodeConfig:
    return parse_config({
        "role": "core", "name": "c", "sip": {"listen_ip": "192.168.1.5"},
        "zones": [
            {"type": "neighbour", "name": "CUCM11", "host": "192.168.1.21", "port": 5065},
            {"type": "neighbour", "name": "Quiet", "host": "192.168.1.22", "match_source": False},
            {"type": "neighbour", "name": "V6", "host": "2001:db8::1"},
            {"type": "neighbour", "name": "By Name", "host": "cms.corp.test", "transport": "tls"},
            {"type": "traversal_client", "name": "Hybrid Call Service Traversal", "peers": ["edge"],
             "username": "u", "password": "p"},
        ],
    })


def test_classify_source(core):
    kw = dict(transport="tcp", local_port=5060, tls_peer_names=None)
    assert classify_source(core, src_ip="192.168.1.21", traversal_zone=None, **kw) == "CUCM11"
    assert classify_source(core, src_ip="192.168.1.22", traversal_zone=None, **kw) == "DefaultZone"
    assert classify_source(core, src_ip="2001:db8:0::0:1", traversal_zone=None, **kw) == "V6"
    assert classify_source(core, src_ip="10.9.9.9", traversal_zone=None, **kw) == "DefaultZone"
    assert classify_source(core, src_ip="192.168.1.21", traversal_zone="Hybrid Call Service Traversal",
                           **kw) == "Hybrid Call Service Traversal"


def test_classify_source_by_tls_identity(core):
    assert classify_source(core, transport="tls", local_port=5061, src_ip="10.1.1.1",
                           tls_peer_names=["CMS.corp.test"], traversal_zone=None) == "By Name"
    # the name only counts over TLS (verified identity)
    assert classify_source(core, transport="tcp", local_port=5060, src_ip="10.1.1.1",
                           tls_peer_names=["cms.corp.test"], traversal_zone=None) == "DefaultZone"


def test_zone_by_name(core):
    assert zone_by_name(core, "CUCM11").port == 5065
    assert zone_by_name(core, "LocalZone") is None
    assert zone_by_name(core, "DefaultZone") is None
    with pytest.raises(KeyError):
        zone_by_name(core, "Nope")


# ---- properties -------------------------------------------------------------------------------

# printable ASCII without '%', so no text spells the %localdomains% macro (which is not literal)
alias_text = st.text(st.characters(codec="ascii", exclude_categories=("Cc",), exclude_characters="%"), max_size=30)


@given(prefix=alias_text, rest=alias_text)
def test_prop_prefix_strip_then_readd(prefix, rest):
    alias = prefix + rest
    stripped = apply_pattern(alias, "prefix", prefix, "strip")
    assert stripped == rest
    assert prefix + stripped == alias
    assert apply_pattern(alias, "prefix", prefix, "replace", prefix) == alias


@given(head=alias_text, suffix=alias_text)
def test_prop_suffix_strip_then_readd(head, suffix):
    alias = head + suffix
    stripped = apply_pattern(alias, "suffix", suffix, "strip")
    assert stripped == head
    assert stripped + suffix == alias
    assert apply_pattern(alias, "suffix", suffix, "leave") == alias


@given(alias=alias_text.filter(bool), data=st.data())
def test_prop_regex_never_matches_partial_string(alias, data):
    i = data.draw(st.integers(0, len(alias) - 1))
    j = data.draw(st.integers(i + 1, len(alias)))
    part = alias[i:j]
    literal = re.escape(part)
    full = match_pattern(alias, "regex", literal)
    assert (full is not None) == (part.lower() == alias.lower())
    if full is not None:
        assert full.span() == (0, len(alias))


@given(alias=alias_text)
def test_prop_exact_and_leave_are_identity(alias):
    assert apply_pattern(alias, "exact", alias, "leave") == alias
    assert apply_pattern(alias, "regex", ".*", "leave") == alias
    assert apply_pattern(alias, "regex", "(.*)", "replace", r"\1") == alias


def test_inbound_classification_by_tls_identity() -> None:
    """Seed 003 §3.2 / §14 case 5: identities tried CN first, then SANs in order; the
    first one equal to a zone's subject name wins and later ones are not tried."""
    from edgeway.config import parse_config
    from edgeway.routing.zones import classify_by_tls_identity

    cfg = parse_config({"role": "edge", "name": "e", "sip": {"listen_ip": "127.0.0.2"}, "zones": [
        {"type": "dns", "name": "Hybrid Call Services DNS", "tls_verify_subject_name": "callservice.ciscospark.com",
         "inbound_classification": True},
        {"type": "dns", "name": "Other", "tls_verify_subject_name": "l2sip-cfa-01.wbx2.com", "inbound_classification": False},
    ]})
    names = ["l2sip-cfa-01.ciscospark.com", "l2sip-cfa-01.wbx2.com", "CallService.ciscospark.com", "callservice.call.ciscospark.com"]
    got = classify_by_tls_identity(cfg, names)
    assert got.zone == "Hybrid Call Services DNS" and got.identity == "CallService.ciscospark.com"
    assert got.candidates == tuple(names[:3])
    none = classify_by_tls_identity(cfg, ["partner.example.com"])
    assert none.zone is None and none.candidates == ("partner.example.com",)
