"""Search and call history (issue 11 item 2; seed 002 §1.7: the last 500 of each per node)."""

from __future__ import annotations

import json
import subprocess
import sys

from edgeway.diag.history import History
from support.harness import LabUp


def test_history_keeps_the_last_500_and_joins_a_calls_events() -> None:
    h = History()
    for i in range(600):
        h.record("search completed", {"call_id": f"c{i}", "src_zone": "DefaultZone", "method": "INVITE", "alias": f"a{i}@x",
                                      "rule": "r", "zone": "Z", "found": True,
                                      "log": ["Search rule 'x' ignored due to source filtering"]}, ts=float(i))
        h.record("call attempted", {"call_id": f"c{i}", "src_zone": "DefaultZone", "src": "192.0.2.1:5060",
                                    "src_alias": "bob@x", "dst_alias": f"sip:a{i}@x", "transport": "udp"}, ts=float(i))
    assert len(h.searches) == 500 and len(h.calls) == 500
    newest = h.search_list(2)
    assert [s["alias"] for s in newest] == ["a599@x", "a598@x"] and newest[0]["rules"][0].endswith("source filtering")
    h.record("call connected", {"call_id": "c599", "zone": "Traversal"}, ts=600.0)
    h.record("media closed", {"call_id": "c599", "stats": {"a_to_b": {"rtp_packets": 50}, "b_to_a": {"rtp_packets": 49}}}, ts=601.0)
    h.record("call disconnected", {"call_id": "c599", "reason": "bye"}, ts=602.0)
    h.record("call rejected", {"call_id": "c598", "status": 404, "reason": "Not Found"}, ts=603.0)
    h.record("call connected", {"call_id": "never-attempted", "zone": "Z"})  # not a call it saw begin
    c599, c598 = h.call_list(2)
    assert (c599["state"], c599["zones"], c599["end_reason"], c599["media"]["a_to_b"]["rtp_packets"]) == \
        ("ended", ["Traversal"], "bye", 50)
    assert (c598["state"], c598["status"]) == ("rejected", 404)
    assert "never-attempted" not in h.calls and "c0" not in h.calls  # evicted, oldest first


def test_history_of_a_running_node(lab: LabUp) -> None:
    # A call from call control to a domain nobody serves: the core's search goes to the
    # traversal zone, the edge finds nothing in DNS; both nodes remember it.
    subprocess.run([sys.executable, "-m", "edgeway", "call", "sip:nobody@nowhere.edgeway.test", "--via", "127.0.0.3:5060",
                    "--transport", "tcp", "--bind", "127.0.0.4", "--duration", "1"],
                   capture_output=True, text=True, timeout=60)

    def ask(node: str, what: str) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "edgeway", "history", what, "--json", "-c", str(lab.workdir / f"{node}.toml")],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    [core_search] = [s for s in ask("core", "searches") if s["alias"] == "nobody@nowhere.edgeway.test"][:1]
    assert core_search["src_zone"] == "Call Control" and core_search["found"] and core_search["zone"] == "Traversal Zone"
    assert any("Considering search rule 'Outbound via edge'" in line for line in core_search["rules"]), core_search
    edge_searches = [s for s in ask("edge", "searches") if s["alias"] == "nobody@nowhere.edgeway.test"]
    assert edge_searches and edge_searches[0]["src_zone"] == "Traversal Zone"
    [call] = [c for c in ask("core", "calls") if c["dst_alias"] == "sip:nobody@nowhere.edgeway.test"][:1]
    assert call["src_zone"] == "Call Control" and call["state"] == "rejected" and call["status"] >= 400, call
