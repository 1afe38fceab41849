"""HTTPS requests/s through edge → tunnel → core → internal service (issue 9 item 10), loopback only.

Builds an edge and a core in separate processes (one core each: the edge relays, the core
forwards) on 127.0.24.12 / 127.0.24.13, an internal aiohttp service on 127.0.24.14:18180 in
this process's child, then runs ``--clients`` keep-alive HTTPS clients (aiohttp, in this
process) each sending GETs of a small body for ``--seconds`` (bounded by ``--max-requests``).
Prints requests/s, p50/p99 latency and errors. A number, not a test.

    flock /tmp/edgeway-loopback.lock python bench/https_bench.py [--clients 32] [--seconds 10] [--client h2load]

``--client h2load`` (Debian ``nghttp2-client``, HTTP/1.1 with ``--h1``; the default when it is
installed) loads the edge from a C client, so the two cores go to edge, core and internal
service rather than to a Python client; ``--client aiohttp`` keeps the load in this process
(and reports p50/p99). Either way the bench prints the CPU milliseconds the edge and the core
spent per request (``/proc/<pid>/stat``), which does not depend on the client.

Until the HTTP allow list (``edgeway.mra.allowlist``) is merged the core's gate is closed, so
this bench uses ``get_edge_config`` (answered by the core through the tunnel) unless
``--proxied`` is given and the allow list is present.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing as mp
import os
import re
import shutil
import ssl
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

EDGE_IP, CORE_IP, INTERNAL_IP = "127.0.24.12", "127.0.24.13", "127.0.24.14"
HTTPS_PORT, TUNNEL_PORT, TRAVERSAL_PORT, INTERNAL_PORT = 18443, 12222, 17001, 18180
DOMAIN = "bench.mra.test"
B64 = base64.b64encode(DOMAIN.encode()).decode()


def _configs(tmp: Path) -> tuple[dict, dict, Path]:
    from edgeway.security.pki import write_lab_pki

    certs = write_lab_pki(tmp / "pki", {"edge": {"common_name": f"edge.{DOMAIN}", "ip_sans": [EDGE_IP]},
                                        "core": {"common_name": f"core.{DOMAIN}", "ip_sans": [CORE_IP]}})

    def common(role, ip):
        c = certs[role]
        return {"role": role, "name": role,
                "sip": {"listen_ip": ip, "udp_port": 0, "tcp_port": 0, "tls_port": 0},
                "tls": {"cert_file": str(c["cert"]), "key_file": str(c["key"]), "ca_file": str(c["ca"])},
                "media": {"port_min": 42000, "port_max": 42999}, "log": {"file": str(tmp / f"{role}.jsonl")}}

    edge = common("edge", EDGE_IP)
    edge["credentials"] = [{"username": "core", "password": "pw"}]
    edge["zones"] = [{"type": "traversal_server", "name": "T", "port": TRAVERSAL_PORT, "username": "core",
                      "tls_verify_subject_name": f"core.{DOMAIN}"}]
    edge["mra"] = {"enabled": True, "domains": [DOMAIN], "https_port": HTTPS_PORT, "tunnel_port": TUNNEL_PORT}
    core = common("core", CORE_IP)
    core["zones"] = [{"type": "traversal_client", "name": "T", "peers": [f"{EDGE_IP}:{TRAVERSAL_PORT}"],
                      "username": "core", "password": "pw", "retry_interval_s": 0.5}]
    core["mra"] = {"enabled": True, "domains": [DOMAIN], "tunnel_port": TUNNEL_PORT, "uds_servers": [f"{INTERNAL_IP}:{INTERNAL_PORT}"],
                   "internal_servers": [{"type": "call_control", "host": INTERNAL_IP, "ports": [INTERNAL_PORT], "scheme": "http"}]}
    return edge, core, certs["edge"]["ca"]


def _run_node(data: dict, seconds: float) -> None:
    from edgeway.config import parse_config
    from edgeway.node import Node
    from edgeway.runtime import install_event_loop_policy

    install_event_loop_policy()

    async def main():
        node = Node(parse_config(data))
        await node.start()
        await asyncio.sleep(seconds)
        await node.close()

    prof_dir = os.environ.get("HTTPS_BENCH_PROFILE")  # a directory: <role>.prof (cProfile) per node
    if prof_dir:
        import cProfile
        import signal

        def stop(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        pr = cProfile.Profile()
        pr.enable()
        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            pass
        finally:
            pr.disable()
            pr.dump_stats(str(Path(prof_dir) / f"{data['role']}.prof"))
        return
    asyncio.run(main())


def _run_internal(seconds: float) -> None:
    from aiohttp import web

    async def user(request):
        return web.Response(text="<user>alice</user>", content_type="application/xml")

    async def main():
        app = web.Application()
        app.router.add_get("/cucm-uds/user/{u}", user)
        r = web.AppRunner(app, access_log=None)
        await r.setup()
        await web.TCPSite(r, INTERNAL_IP, INTERNAL_PORT).start()
        await asyncio.sleep(seconds)

    asyncio.run(main())


async def _load(ca: Path, path: str, clients: int, seconds: float, max_requests: int) -> tuple[list[float], int, int]:
    import aiohttp

    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    lat: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    url = f"https://{EDGE_IP}:{HTTPS_PORT}{path}"
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=clients)) as s:
        # warm-up: one request per client connection
        await asyncio.gather(*(s.get(url) for _ in range(clients)), return_exceptions=True)

        async def client():
            nonlocal errors
            while time.perf_counter() < deadline and len(lat) < max_requests:
                t0 = time.perf_counter()
                try:
                    async with s.get(url) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status != 200:
                            errors += 1
                except Exception:  # noqa: BLE001
                    errors += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    print(f"  statuses: {statuses}")
    return lat, errors, elapsed


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _h2load(path: str, clients: int, seconds: float) -> tuple[int, int, float, float]:
    """Run h2load (HTTP/1.1, keep-alive) for ``seconds``: (requests done, failures or
    non-2xx, elapsed s, mean ms per request)."""
    url = f"https://{EDGE_IP}:{HTTPS_PORT}{path}"
    out = subprocess.run(["h2load", "--h1", "-c", str(clients), "-D", str(int(seconds)), "--warm-up-time=1", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    ok2xx = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
    failed = int(re.search(r"(\d+) failed", out).group(1))
    elapsed = float(re.search(r"finished in ([\d.]+)s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    mean_ms = float("nan")
    if mean:
        v = mean.group(1)
        mean_ms = float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
    print(f"  h2load: {done} done, {ok2xx} 2xx, {failed} failed")
    return done, failed + max(0, done - ok2xx), elapsed, mean_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--proxied", action="store_true", help="proxied UDS GET (needs edgeway.mra.allowlist)")
    ap.add_argument("--client", choices=["h2load", "aiohttp"], default="h2load" if shutil.which("h2load") else "aiohttp",
                    help="load generator (default: h2load when installed)")
    a = ap.parse_args()
    from edgeway.config.models import MraConfig

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        edge, core, ca = _configs(tmp)
        if "internal_servers" not in MraConfig.model_fields:
            core["mra"].pop("internal_servers")
            if a.proxied:
                sys.exit("--proxied needs the HTTP allow list (edgeway.mra.allowlist) merged")
        life = a.seconds + 15
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_run_internal, args=(life,)), ctx.Process(target=_run_node, args=(edge, life)),
                 ctx.Process(target=_run_node, args=(core, life))]
        for p in procs:
            p.start()
        try:
            time.sleep(3.0)  # nodes up, tunnel connected
            path = (f"/{B64}/http/{INTERNAL_IP}/{INTERNAL_PORT}/cucm-uds/user/alice" if a.proxied
                    else f"/{B64}/get_edge_config?service_name=_cisco-uds")
            kind = "proxied GET (edge → tunnel → core → internal)" if a.proxied else "get_edge_config (edge → tunnel → core)"
            print(f"https_bench: {kind}, {a.clients} keep-alive clients ({a.client}), {a.seconds:g} s")
            cpu0 = {name: _cpu_s(p.pid) for name, p in (("edge", procs[1]), ("core", procs[2]))}
            if a.client == "h2load":
                n, errors, elapsed, mean_ms = _h2load(path, a.clients, a.seconds)
                lat = []
            else:
                lat, errors, elapsed = asyncio.run(_load(ca, path, a.clients, a.seconds, a.max_requests))
                n = len(lat)
            cpu = {name: _cpu_s(p.pid) - c for name, c in cpu0.items() for p in [procs[1] if name == "edge" else procs[2]]}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(5)
    per = ", ".join(f"{name} {cpu[name] * 1000 / max(n, 1):.3f}" for name in ("edge", "core"))
    if a.client == "h2load":
        print(f"  requests {n}, errors {errors}, {n / elapsed:.0f} req/s, mean {mean_ms:.1f} ms; CPU ms/request: {per}")
        return
    lat.sort()
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(n - 1, int(n * 0.99))] * 1000 if lat else float("nan")
    print(f"  requests {n}, errors {errors}, {n / elapsed:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
          f"CPU ms/request: {per}")


if __name__ == "__main__":
    main()
