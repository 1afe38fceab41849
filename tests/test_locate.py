"""Locate (issue 11 item 3; seed 003 §12.3, catalogue case 31): the routing pipeline for
an alias from a source zone, without placing a call — offline (:func:`locate_plan`) and on
a running node (``edgeway locate`` through its control socket, DNS answers included)."""

from __future__ import annotations

import json
import subprocess
import sys

from edgeway.config import parse_config
from edgeway.proxy.locate import locate_plan
from support.harness import LabUp


def _cfg(**extra):
    return parse_config({
        "role": "core", "name": "unit", "sip": {"listen_ip": "192.0.2.1", "domains": ["corp.test"]},
        "zones": [{"name": "CUCM", "type": "neighbour", "host": "192.0.2.9", "port": 5065, "transport": "tcp"},
                  {"name": "T", "type": "traversal_client", "peers": ["192.0.2.2:7001"], "username": "u", "password": "p"}],
        "search_rules": [
            {"name": "from edge only", "priority": 5, "mode": "any_alias", "source_zone": "T", "target_zone": "CUCM"},
            {"name": "local users", "priority": 10, "pattern_type": "suffix", "pattern": "@%localdomains%",
             "target_zone": "CUCM"},
            {"name": "shadowed", "priority": 20, "pattern_type": "suffix", "pattern": "@corp.test", "target_zone": "T"},
        ],
        **extra,
    })


def test_search_rules_in_the_seed_wording() -> None:
    res = locate_plan(_cfg(), "bob@corp.test", "DefaultZone")
    assert res.error is None and res.transforms == "Not Transformed" and res.policy == "Proxy"
    assert res.search[0] == "Search rule 'from edge only' ignored due to source filtering"
    assert [(t.rule, t.zone, t.zone_type) for t in res.targets] == [("local users", "CUCM", "neighbour")]
    assert not any("shadowed" in line for line in res.search)  # never reached: 'local users' stops the search
    res = locate_plan(_cfg(), "bob@corp.test", "T")
    assert res.targets[0].rule == "from edge only"


def test_transform_and_policy_steps() -> None:
    cfg = _cfg(transforms=[{"priority": 1, "pattern_type": "suffix", "pattern": "@old.test", "behaviour": "replace",
                            "replace": "@corp.test"}],
               call_policy=[{"source": "mallory@.*", "action": "reject"}])
    res = locate_plan(cfg, "bob@old.test", "DefaultZone")
    assert res.transforms == "Transformed to 'bob@corp.test'" and res.targets[0].ruri == "sip:bob@corp.test"
    res = locate_plan(cfg, "bob@corp.test", "DefaultZone", "mallory@evil.test")
    assert res.policy.startswith("Reject (403") and not res.targets


def test_bad_inputs_are_reported_not_raised() -> None:
    assert "unknown source zone" in locate_plan(_cfg(), "bob@corp.test", "Nowhere").error
    assert "one SIP address" in locate_plan(_cfg(), "bob@corp.test>\r\nX: y", "DefaultZone").error


def _locate(lab: LabUp, node: str, alias: str, zone: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "edgeway", "locate", alias, "--from", zone, "--json",
                          "-c", str(lab.workdir / f"{node}.toml")], capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout)


def test_locate_on_the_running_lab(lab: LabUp) -> None:
    # A DNS zone target: the NAPTR/SRV/A queries and the targets, as the node resolves them.
    code, res = _locate(lab, "edge", "bob@partner.edgeway.test", "Traversal Zone")
    [t] = res["targets"]
    assert code == 0 and t["zone_type"] == "dns" and t["found"]
    assert any(line.startswith("partner.edgeway.test NAPTR") for line in t["detail"]), t
    assert "udp:127.0.0.5:5060" in t["hops"]
    # The traversal zone: its connection from the core.
    code, res = _locate(lab, "edge", "alice@corp.edgeway.test", "DefaultZone")
    assert code == 0 and res["targets"][0]["zone_type"] == "traversal_server" and res["targets"][0]["hops"]
    # LocalZone with nobody registered: not found, and said so.
    code, res = _locate(lab, "core", "carol@remote.edgeway.test", "Call Control")
    assert code == 1 and res["targets"][0]["detail"] == ["0 registered binding(s) of sip:carol@remote.edgeway.test"]
    assert res["found"] is False
