"""Seed 003 catalogue §14, routing cases through a running node (in-process, loopback):
preloaded routes on/off (25–27), call policy reject / corrected (28–29), search-rule
shadowing (19) and Modify DNS request on/off (13–14). The pure cases 19–24 are also
unit tests in test_routing.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from pathlib import Path

from edgeway.config import parse_config
from edgeway.diag.events import EventLog
from edgeway.lab.dns_server import LabDnsServer, records_from_text
from edgeway.node import Node
from edgeway.sip.message import parse_message

NODE, CUCM, CLOUD = "127.0.0.41", "127.0.0.42", "127.0.0.43"


def _config(**extra) -> dict:
    cfg = {
        "role": "core", "name": "core", "sip": {"listen_ip": NODE, "tls_port": 0, "domains": ["rtp.ciscotac.net"]},
        "timers": {"t1_ms": 50, "t2_ms": 400},
        "zones": [
            {"type": "neighbour", "name": "CUCM11", "host": CUCM, "port": 5065, "transport": "udp"},
            {"type": "neighbour", "name": "Cloud Side", "host": CLOUD, "port": 5060, "transport": "udp"},
        ],
        "search_rules": [
            {"name": "Hybrid Call Service Inbound Routing", "priority": 2, "pattern_type": "prefix",
             "pattern": "cucm.rtp.ciscotac.net", "target_zone": "CUCM11"},
        ],
    }
    for k, v in extra.items():
        if k == "zone_options":
            cfg["zones"][1].update(v)
        else:
            cfg[k] = v
    return cfg


def _invite(uri: str, *, route: str | None = None, to_domain: str | None = None) -> bytes:
    lines = [
        f"INVITE {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {CLOUD}:5060;branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f'From: "Caller" <sip:5010@{to_domain or "rtp.ciscotac.net"}>;tag={secrets.token_hex(4)}',
        f"To: <{uri}>",
        f"Call-ID: {secrets.token_hex(8)}@{CLOUD}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:caller@{CLOUD}:5060>",
    ]
    if route:
        lines.append(f"Route: {route}")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


async def _exchange(cfg: dict, tmp: Path, payload: bytes, *, dns: LabDnsServer | None = None) -> tuple[list, list, list[dict]]:
    """Start the node, send ``payload`` from CLOUD:5060, collect the responses to the
    client and the requests arriving at CUCM:5065 for 1 s; return them and the events."""
    log = tmp / "events.jsonl"
    node = Node(parse_config(cfg), EventLog("core", str(log)))
    await node.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((CLOUD, 5060))
    cucm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cucm.bind((CUCM, 5065))
    for s in (client, cucm):
        s.setblocking(False)
    responses, forwarded = [], []
    try:
        client.sendto(payload, (NODE, 5060))
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end:
            got = False
            for s, out in ((client, responses), (cucm, forwarded)):
                try:
                    out.append(parse_message(s.recv(65535)))
                    got = True
                except BlockingIOError:
                    pass
            if not got:
                await asyncio.sleep(0.01)
    finally:
        client.close()
        cucm.close()
        await node.close()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return responses, forwarded, events


def _final(responses) -> object:
    finals = [r for r in responses if r.status >= 200]
    assert finals, [r.status for r in responses]
    return finals[0]


def test_case25_preloaded_routes_off_gives_404_without_search(tmp_path: Path) -> None:
    cfg = _config(zone_options={"preloaded_routes": "reject"})
    resp, fwd, events = asyncio.run(_exchange(cfg, tmp_path, _invite("sip:jorobb@rtp.ciscotac.net", route="<sip:cucm.rtp.ciscotac.net;lr>")))
    final = _final(resp)
    assert final.status == 404 and final.headers.get("Warning") == f'399 {NODE} "Policy Response"'
    assert fwd == []
    searches = [e for e in events if e["event"] == "search completed"]
    assert searches and searches[0]["found"] is False and searches[0]["rule"] is None
    assert not any(e.get("log") for e in searches)  # no search-rule lines


def test_case26_preloaded_routes_on_routes_on_route_host(tmp_path: Path) -> None:
    resp, fwd, events = asyncio.run(_exchange(_config(), tmp_path, _invite("sip:jorobb@rtp.ciscotac.net", route="<sip:cucm.rtp.ciscotac.net;lr>")))
    assert len(fwd) >= 1
    inv = fwd[0]
    assert inv.method == "INVITE" and inv.uri == "sip:jorobb@rtp.ciscotac.net"  # Request-URI unchanged
    assert inv.headers.get_all("Route") == ["<sip:cucm.rtp.ciscotac.net;lr>"]  # Route kept
    search = next(e for e in events if e["event"] == "search completed")
    assert search["alias"] == "cucm.rtp.ciscotac.net;lr" and search["zone"] == "CUCM11"


def test_case27_own_route_entry_is_popped(tmp_path: Path) -> None:
    route = f"<sip:l2sip@{NODE}:5060;transport=udp;lr>,<sip:cucm.rtp.ciscotac.net;lr>"
    resp, fwd, events = asyncio.run(_exchange(_config(), tmp_path, _invite("sip:jorobb@rtp.ciscotac.net", route=route)))
    assert fwd and fwd[0].headers.get_all("Route") == ["<sip:cucm.rtp.ciscotac.net;lr>"]


WEBEX_DEST = "sip:pstojano-test@dmzlab.call.ciscospark.com"
WEBEX_RULE = {"name": "Webex Hybrid - to Webex Cloud", "priority": 101, "pattern": r".*@.*\.ciscospark\.com",
              "target_zone": "CUCM11"}


def test_case28_swapped_call_policy_rejects_with_403(tmp_path: Path) -> None:
    cfg = _config(call_policy=[{"source": ".*", "destination": r".*@dmzlab\.call\.ciscospark\.com.*", "action": "reject"}])
    cfg["search_rules"].append(WEBEX_RULE)
    resp, fwd, events = asyncio.run(_exchange(cfg, tmp_path, _invite(WEBEX_DEST)))
    final = _final(resp)
    assert final.status == 403 and final.headers.get("Warning") == f'399 {NODE} "Policy Response"'
    assert fwd == []
    search = next(e for e in events if e["event"] == "search completed")
    assert search["reason"] == "Forbidden" and "CPL: <reject/>" in search["cpl"]


def test_case29_corrected_call_policy_lets_the_call_through(tmp_path: Path) -> None:
    cfg = _config(call_policy=[{"source": r".*@dmzlab\.call\.ciscospark\.com.*", "destination": ".*", "action": "reject"}])
    cfg["search_rules"].append(WEBEX_RULE)
    resp, fwd, events = asyncio.run(_exchange(cfg, tmp_path, _invite(WEBEX_DEST)))
    assert fwd and fwd[0].uri == WEBEX_DEST


def test_case19_shadowed_rule_then_reprioritised(tmp_path: Path) -> None:
    to_dns = {"name": "to DNS", "priority": 100, "pattern": "(?!.*@%localdomains%.*$).*", "target_zone": "DNS"}
    cfg = _config(search_rules=[to_dns, WEBEX_RULE])
    cfg["zones"].append({"type": "dns", "name": "DNS"})
    (tmp_path / "a").mkdir()
    resp, fwd, events = asyncio.run(_exchange(cfg, tmp_path / "a", _invite(WEBEX_DEST)))
    assert fwd == [] and _final(resp).status == 404
    assert [e["rule"] for e in events if e["event"] == "search completed"][0] == "to DNS"
    cfg["search_rules"][1] = {**WEBEX_RULE, "priority": 99}
    (tmp_path / "b").mkdir()
    resp, fwd, events = asyncio.run(_exchange(cfg, tmp_path / "b", _invite(WEBEX_DEST)))
    assert fwd and [e["rule"] for e in events if e["event"] == "search completed"][0] == WEBEX_RULE["name"]


ZONE = """$ORIGIN edgeway.test.
@                              NAPTR 10 50 "s" "SIPS+D2T" "" _sips._tcp.dmzlab.cloud
_sips._tcp.dmzlab.cloud        SRV 5 10 5061 l2sip-a.cloud
_sips._tcp.callservice.cloud   SRV 5 10 5062 l2sip-a.cloud
_sips._tcp.callservice.cloud   SRV 5 10 5062 l2sip-b.cloud
l2sip-a.cloud                  A 127.0.0.45
l2sip-b.cloud                  A 127.0.0.46
"""


def _dns_case(tmp: Path, modify: bool) -> dict:
    async def run() -> list[dict]:
        dns = LabDnsServer(records_from_text(ZONE), host="127.0.0.47", port=0)
        await dns.start()
        try:
            cfg = _config(search_rules=[{"name": "to cloud", "priority": 10, "pattern": r".*@.*\.cloud\.edgeway\.test",
                                         "target_zone": "Hybrid DNS"}])
            cfg["dns"] = {"servers": [f"127.0.0.47:{dns.port}"], "timeout_s": 1.0}
            cfg["zones"].append({"type": "dns", "name": "Hybrid DNS", "modify_dns_request": modify,
                                 "dns_request_domain": "callservice.cloud.edgeway.test"})
            _, _, events = await _exchange(cfg, tmp, _invite("sip:user@dmzlab.cloud.edgeway.test"))
            return events
        finally:
            await dns.close()

    return next(e for e in asyncio.run(run()) if e["event"] == "dns resolved")


def test_case13_dns_zone_resolves_the_request_uri_domain(tmp_path: Path) -> None:
    ev = _dns_case(tmp_path, modify=False)
    assert ev["queries"][0].startswith("dmzlab.cloud.edgeway.test NAPTR")
    assert any(q.startswith("_sips._tcp.dmzlab.cloud.edgeway.test SRV") for q in ev["queries"])
    assert ev["targets"] == ["tls:127.0.0.45:5061"]


def test_case14_modify_dns_request_does_one_srv_query(tmp_path: Path) -> None:
    ev = _dns_case(tmp_path, modify=True)
    srv = [q for q in ev["queries"] if " SRV" in q or " NAPTR" in q]
    assert srv == [q for q in srv if q.startswith("_sips._tcp.callservice.cloud.edgeway.test SRV")] and len(srv) == 1
    assert sorted(ev["targets"]) == ["tls:127.0.0.45:5062", "tls:127.0.0.46:5062"]
