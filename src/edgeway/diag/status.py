"""A node's status page, JSON status API and Prometheus endpoint (issue 11 item 6).

Served by aiohttp on ``[status] listen`` (the management address), every request checked
for HTTP Basic credentials or a bearer token (``[status]``; compared in constant time):

- ``GET /status.json``: ``{"node", "role", "time", "zones": [{"name", "type", "state",
  "connections", "reason"}], "registrations", "active_calls", "calls": [recent calls from
  the call history], "blocked": [...], "alarms": [{"severity", "text"}], "media": {...},
  "connections": {...}}``;
- ``GET /metrics``: Prometheus text (``prometheus_client``, a registry of this node's own,
  values read at scrape time: nothing is counted on the hot path but the events below);
- ``GET /``: an HTML page that reloads ``/status.json`` every 2 s and lists zones, calls,
  alarms and blocked addresses.

The node hands :class:`StatusSource` its parts; :func:`snapshot` is what both the JSON
and the page show. :class:`EventCounters` counts the events metrics need by cause (TLS
handshake failures) as they are emitted, with a bounded number of distinct causes.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["EventCounters", "StatusSource", "snapshot", "StatusServer", "PAGE"]

#: Distinct causes kept per counted event (label cardinality bound); others count as "other".
MAX_CAUSES = 50


class EventCounters:
    """Counts ``tls handshake failed`` by cause and ``traversal connected`` (reconnects)
    as events are emitted (an :attr:`EventLog.observer <edgeway.diag.events.EventLog>`)."""

    def __init__(self) -> None:
        self.tls_failures: dict[tuple[str, str], int] = {}
        self.traversal_connects = 0

    def record(self, event: str, fields: dict[str, Any]) -> None:
        if event == "tls handshake failed":
            cause = str(fields.get("cause") or "unknown")[:80]
            key = (str(fields.get("direction") or ""), cause)
            if key not in self.tls_failures and len(self.tls_failures) >= MAX_CAUSES:
                key = (key[0], "other")
            self.tls_failures[key] = self.tls_failures.get(key, 0) + 1
        elif event == "traversal connected":
            self.traversal_connects += 1


@dataclass
class StatusSource:
    """What a snapshot reads, each part optional (None when the node has none): the node's
    ``name`` and ``role``, the sans-IO proxy ``core``, the ``traversal`` service, the media
    ``relay``, the transport layer ``tl``, the ``history``, the ``intrusion`` protection,
    the event ``counters`` and ``now`` (the loop clock, for bans and bindings)."""

    name: str
    role: str
    zones: list[Any]
    core: Any = None
    traversal: Any = None
    relay: Any = None
    tl: Any = None
    history: Any = None
    intrusion: Any = None
    counters: EventCounters | None = None
    now: Callable[[], float] = time.monotonic


def snapshot(src: StatusSource) -> dict[str, Any]:
    """The node's status now (the shape is in the module docstring)."""
    now = src.now()
    trav = src.traversal.status() if src.traversal is not None else {}
    zones = []
    alarms = []
    for z in src.zones:
        entry: dict[str, Any] = {"name": z.name, "type": z.type}
        if z.name in trav:
            entry.update(state=trav[z.name]["state"], connections=trav[z.name]["connections"])
            if entry["state"] != "active":
                alarms.append({"severity": "error", "text": f"traversal zone {z.name!r} is {entry['state']}"})
        else:
            entry.update(state="configured", connections=[])
        zones.append(entry)
    core = src.core
    registrations = len(core.registrar) if core is not None and core.registrar is not None else 0
    active = len(core.calls) if core is not None else 0
    calls = [c for c in (src.history.call_list(50) if src.history is not None else [])]
    blocked = src.intrusion.blocked_list(now) if src.intrusion is not None else []
    if core is not None and core.maintenance:
        alarms.append({"severity": "warning", "text": "maintenance mode: new calls and registrations are refused"})
    media = src.relay.stats() if src.relay is not None else {}
    conns = src.tl.admission_status() if src.tl is not None and hasattr(src.tl, "admission_status") else {}
    return {"node": src.name, "role": src.role, "time": time.time(), "zones": zones, "registrations": registrations,
            "active_calls": active, "calls": calls, "blocked": blocked, "alarms": alarms, "media": media,
            "connections": conns}


class _Collector:
    """Prometheus metrics of one node, read at scrape time."""

    def __init__(self, src: StatusSource):
        self.src = src

    def collect(self):
        src = self.src
        core = src.core
        if core is not None:
            calls = CounterMetricFamily("edgeway_calls", "Calls by outcome since the node started", labels=["outcome"])
            for k, v in core.stats.items():
                calls.add_metric([k.removeprefix("calls_")], v)
            yield calls
            yield GaugeMetricFamily("edgeway_calls_active", "Calls the proxy holds now", value=len(core.calls))
            tx = GaugeMetricFamily("edgeway_transactions", "SIP transactions by kind", labels=["kind"])
            tx.add_metric(["all"], len(core.table))
            yield tx
            reg = len(core.registrar) if core.registrar is not None else 0
            yield GaugeMetricFamily("edgeway_registrations", "Bindings in the node's own registrar", value=reg)
        if src.traversal is not None:
            up = GaugeMetricFamily("edgeway_zone_up", "1 when the traversal zone is active", labels=["zone"])
            for name, st in src.traversal.status().items():
                up.add_metric([name], 1.0 if st["state"] == "active" else 0.0)
            yield up
        c = src.counters
        if c is not None:
            tls = CounterMetricFamily("edgeway_tls_handshake_failures", "TLS handshake failures by direction and cause",
                                      labels=["direction", "cause"])
            for (direction, cause), n in c.tls_failures.items():
                tls.add_metric([direction, cause], n)
            yield tls
            yield CounterMetricFamily("edgeway_traversal_connects", "Traversal zone (re)connections",
                                      value=c.traversal_connects)
        if src.relay is not None:
            st = src.relay.stats()
            yield GaugeMetricFamily("edgeway_media_sessions", "Open relay sessions", value=st.get("open_sessions", 0))
            yield CounterMetricFamily("edgeway_relay_packets", "Packets relayed", value=st.get("packets", 0))
            yield CounterMetricFamily("edgeway_relay_bytes", "Bytes relayed", value=st.get("bytes", 0))
            yield CounterMetricFamily("edgeway_relay_dropped", "Packets the relay dropped", value=st.get("dropped", 0))
            pools = [a.stats() for a in getattr(src.relay, "_allocators", [])]
            if pools:
                use = GaugeMetricFamily("edgeway_media_ports", "Media port pairs", labels=["state"])
                use.add_metric(["in_use"], sum(p["in_use"] for p in pools))
                use.add_metric(["capacity"], sum(p["capacity"] for p in pools))
                yield use
        if src.tl is not None and hasattr(src.tl, "admission_status"):
            a = src.tl.admission_status()
            yield GaugeMetricFamily("edgeway_connections_open", "Inbound connections counted against the caps",
                                    value=a.get("open", 0))
        if src.intrusion is not None:
            yield GaugeMetricFamily("edgeway_blocked_addresses", "Addresses intrusion protection blocks now",
                                    value=len(src.intrusion.blocked_list(src.now())))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Edgeway status</title>
<style>body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}.active{color:#080}.down,.error{color:#b00}
.warning{color:#a60}</style></head>
<body><h1 id="title">Edgeway</h1><p id="updated">loading…</p>
<h2>Alarms</h2><table id="alarms"><tr><th>severity</th><th>alarm</th></tr></table>
<h2>Zones</h2><table id="zones"><tr><th>zone</th><th>type</th><th>state</th><th>connections</th></tr></table>
<h2>Calls</h2><p id="summary"></p>
<table id="calls"><tr><th>start</th><th>from</th><th>to</th><th>source zone</th><th>zones</th><th>state</th>
<th>RTP a→b</th><th>RTP b→a</th></tr></table>
<h2>Blocked addresses</h2><table id="blocked"><tr><th>address</th><th>category</th><th>seconds left</th></tr></table>
<script>
function cell(tr, text, cls){const td=document.createElement('td');td.textContent=text;if(cls)td.className=cls;tr.appendChild(td);}
function fill(id, rows){const t=document.getElementById(id);while(t.rows.length>1)t.deleteRow(1);
  for(const r of rows){const tr=t.insertRow();for(const [v,c] of r)cell(tr,v,c);}}
async function refresh(){
  // location.origin: a page opened as http://user:pass@host/ must not fetch a URL with credentials in it
  try{const r=await fetch(location.origin+location.pathname.replace(/[^/]*$/,'')+'status.json',
                          {credentials:'same-origin',cache:'no-store'});
    if(!r.ok)throw new Error('HTTP '+r.status);const s=await r.json();
    document.getElementById('title').textContent='Edgeway '+s.role+' '+s.node;
    document.getElementById('updated').textContent='updated '+new Date(s.time*1000).toLocaleTimeString();
    fill('alarms', s.alarms.map(a=>[[a.severity,a.severity],[a.text]]));
    fill('zones', s.zones.map(z=>[[z.name],[z.type],[z.state,z.state],[z.connections.join(', ')]]));
    document.getElementById('summary').textContent=s.active_calls+' active call(s), '+s.registrations+' registration(s)';
    const pk=(m,d)=>m&&m[d]?String(m[d].rtp_packets):'';
    fill('calls', s.calls.map(c=>[[new Date(c.start*1000).toLocaleTimeString()],[c.src_alias||''],[c.dst_alias||''],
      [c.src_zone||''],[(c.zones||[]).join(', ')],[c.state],[pk(c.media,'a_to_b')],[pk(c.media,'b_to_a')]]));
    fill('blocked', s.blocked.map(b=>[[b.address],[b.category||''],[String(b.seconds_left||'')]]));
  }catch(e){document.getElementById('updated').textContent='status unavailable: '+e;}
}
refresh();setInterval(refresh,2000);
</script></body></html>
"""


class StatusServer:
    """The status endpoints of one node on ``host``:``port`` (aiohttp), protected by
    ``username``/``password`` (HTTP Basic) and/or ``token`` (Bearer)."""

    def __init__(self, src: StatusSource, host: str, port: int, *, username: str | None = None,
                 password: str | None = None, token: str | None = None):
        self.src = src
        self.host, self.port = host, port
        self._basic = f"{username}:{password}".encode() if username and password else None
        self._token = token.encode() if token else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(src))
        self._runner: web.AppRunner | None = None
        #: ``(ip, port)`` bound (port 0 in the config: an ephemeral one).
        self.address: tuple[str, int] | None = None

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        value = value.strip()
        if scheme.lower() == "basic" and self._basic is not None:
            try:
                given = base64.b64decode(value, validate=True)
            except ValueError:
                return False
            return hmac.compare_digest(given, self._basic)
        if scheme.lower() == "bearer" and self._token is not None:
            return hmac.compare_digest(value.encode(), self._token)
        return False

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if not self._authorized(request):
            return web.Response(status=401, text="401 Unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="edgeway status"'})
        return await handler(request)

    async def _json(self, request: web.Request) -> web.Response:
        return web.json_response(snapshot(self.src), headers={"Cache-Control": "no-store"}, dumps=_dumps)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._json)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.address = sock.getsockname()[:2]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)
