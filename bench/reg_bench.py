#!/usr/bin/env python3
"""TLS registrations held through the edge, and re-registration after a core restart
(issue 9 item 10: "5,000 concurrent TLS registrations held through the edge with edge
RSS < 300 MiB, plus the time to re-register all of them after the core restarts").
Loopback only; a benchmark, not a test: it prints numbers, never pass/fail.

What runs
---------
An edge and a core from the lab plan (:class:`edgeway.lab.runner.Lab`: ``python -m
edgeway edge|core`` subprocesses, lab PKI, lab DNS in this process) on their own
addresses (edge 127.0.40.2, core 127.0.40.3), with the lab's remote-registration set-up:
a REGISTER for ``remote.edgeway.test`` arriving on the edge's TLS port 5061 matches the
edge's "Remote registrations" search rule, gets a Path entry whose flow token names the
client's connection and goes over the traversal zone to the core, whose own registrar
challenges it (401, digest) and binds it. The core's user store has ``--count`` users
``u00000`` … (password ``pw-<n>``).

``--count`` clients (this process, asyncio) each open a TLS connection (the lab CA
verified, server name the edge's) from a loopback source (``--per-source`` clients per
address from 127.0.41.1 on), REGISTER a distinct AOR (no credentials → 401 → REGISTER
with digest credentials, ``--digest`` SHA-256 or MD5, qop=auth → 200), at most
``--concurrency`` registrations (connect + handshake + both transactions) at once, and
keep their connections open. After ``--hold-s`` seconds holding them all the edge's and
the core's resident set size is read from ``/proc/<pid>/status`` (VmRSS; VmHWM is the
peak). Then the core is killed (SIGKILL: its registrar's bindings are in memory and are
lost), started again, and once both nodes log the traversal zone connected every client
REGISTERs again (challenge and credentials again: the new core's nonces differ) on its
still-open connection to the edge, ``--concurrency`` at once (``--reregister-concurrency``
5000: all at once, as after an outage every client's refresh timer may fire together).

Reachability (``--probe``, default 20): right after the restart, and again after the
re-registration, OPTIONS from the inside (the call-control address, TCP to the core's
5060) to sampled users: the core finds each by its binding and follows its Path over the
traversal zone, and the edge delivers it down the client's own connection (the flow token);
the client answers 200. Before the re-registration the new core has no bindings (404).

Numbers
-------
* registrations/s: successful registrations / (last 200 − start of the ramp).
* latency p50/p99: per registration, connect + TLS handshake + REGISTER/401/REGISTER/200
  (ramp); REGISTER/401/REGISTER/200 (re-registration).
* failures by cause: the final status of the REGISTER, ``timeout`` (no answer for
  ``TRANSACTION_TIMEOUT_S``), ``closed`` (the edge closed the connection), connect errors.
* RSS MiB of edge and core: before the ramp, held, and after re-registration; MiB per
  1,000 held registrations (edge, held − before); edge open descriptors.
* RSS again ``--settle-s`` (12) s after the re-registration: the node trims its heap
  every 10 s when it grew (:class:`edgeway.runtime.GcPolicy`).
* CPU seconds of edge, core and this process (the clients) during the ramp: all three
  share the machine's cores, so the rate is the whole loopback system's.
* core restart: SIGKILL → traversal zone connected again (both nodes' event times), and
  from then (including the bench's 0.1 s polling of the event log) until all clients
  re-registered.

Configuration the load needs (printed in the output)
----------------------------------------------------
* edge ``limits.max_proxied_registrations`` = max(2,500, count): 2,500 (seed 002 §1.7) is
  the default; the REGISTER for one more AOR gets 503.
* core ``registrar.users``: the count users; ``registrar.max_bindings`` = max(10,000, count).
* The edge's per-source caps are kept at their defaults by spreading the clients over
  ``count / per_source`` source addresses (50 per address by default: 100 addresses for
  5,000; as many remote clients reaching an edge from separate NATs). Only when
  ``--per-source`` is larger than the defaults allow does the bench raise
  ``limits.max_connections_per_source`` (default 256) and ``flood.burst`` /
  ``flood.requests_per_s`` (default 200 / 100 per s per address; a re-registration of
  every client of one address at once is 2 requests per client).
* ``intrusion_protection`` stays on with its defaults: the edge counts only failures it
  decides itself (traversal authentication, digest of its own registrar); the 401s here
  come from the core, whose intrusion protection is off (the seed's recommendation).
* log: ``sip_messages`` off and 200 lines/s per event type (the product defaults; the
  lab turns messages on for its ladders).
* ``limits.max_connections`` stays derived from the descriptor limit (the node raises its
  own RLIMIT_NOFILE to the hard limit; this process does the same for its clients).

Bounded: at most ``--deadline-s`` (default 270 s) overall; each transaction times out;
every process started (edge, core) is stopped by its PID at the end, on an error, Ctrl-C
or SIGTERM. Run it under the loopback lock::

    flock /tmp/edgeway-loopback.lock .venv/bin/python bench/reg_bench.py [--count 5000] [--concurrency 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import resource
import secrets
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from edgeway.lab.report import load_events
from edgeway.lab.runner import Lab
from edgeway.lab.topology import REMOTE_DOMAIN, LabTopology

EDGE_IP, CORE_IP, CALL_CONTROL_IP, PARTNER_IP, DNS_IP = "127.0.40.2", "127.0.40.3", "127.0.40.4", "127.0.40.5", "127.0.40.10"
FIRST_SOURCE = ipaddress.ip_address("127.0.41.1")
TLS_PORT = 5061
#: Seconds a client waits for the final response of one REGISTER (RFC 3261 Timer F, 64*T1).
TRANSACTION_TIMEOUT_S = 32.0
CONNECT_TIMEOUT_S = 20.0
#: Defaults of the edge this bench keeps unless --per-source needs more (see the docstring).
DEFAULT_PER_SOURCE_CAP = 256
DEFAULT_FLOOD_BURST = 200.0
EXPIRES_S = 3600
RSS_TARGET_MIB = 300
MAX_COUNT = 15_000
_CSEQ_RE = re.compile(rb"^(?:cseq)[ \t]*:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)
_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)
_WWW_RE = re.compile(r"^www-authenticate[ \t]*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)')
_HASH = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


# ---- /proc ----------------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MiB (empty when it is gone)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft < need:
        sys.exit(f"reg_bench: need {need} descriptors, RLIMIT_NOFILE allows {soft}")
    return soft


# ---- a registering client -------------------------------------------------------------------------

class Client:
    """One remote user agent: a TLS connection to the edge and its registration."""

    __slots__ = (
        "algorithm",
        "call_id",
        "closed_at",
        "cseq",
        "idx",
        "lport",
        "password",
        "reader",
        "requests_in",
        "src",
        "tag",
        "task",
        "user",
        "waiting",
        "writer",
    )

    def __init__(self, idx: int, src: str, algorithm: str):
        self.idx = idx
        self.src = src
        self.user = f"u{idx:05d}"
        self.password = f"pw-{idx}"
        self.algorithm = algorithm
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lport = 0
        self.call_id = f"{secrets.token_hex(8)}@{src}"
        self.tag = secrets.token_hex(4)
        self.cseq = 0
        self.waiting: dict[int, asyncio.Future] = {}
        self.closed_at: float | None = None
        self.task: asyncio.Task | None = None
        self.requests_in = 0

    async def connect(self, ctx: ssl.SSLContext, server_name: str) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(EDGE_IP, TLS_PORT, ssl=ctx, server_hostname=server_name, local_addr=(self.src, 0),
                                    ssl_handshake_timeout=CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S)
        self.lport = self.writer.get_extra_info("sockname")[1]
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                buf += data
                while True:
                    while buf[:2] == b"\r\n":  # CRLF keepalive answers (RFC 5626 §3.5.1)
                        del buf[:2]
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = bytes(buf[:end])
                    m = _CL_RE.search(head)
                    total = end + 4 + (int(m.group(1)) if m else 0)
                    if len(buf) < total:
                        break
                    del buf[:total]
                    self._dispatch(head)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        self.closed_at = time.monotonic()
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_result(("closed", None))

    def _dispatch(self, head: bytes) -> None:
        if not head.startswith(b"SIP/2.0 "):
            # A request for us (the reachability probe's OPTIONS, through core → edge → this
            # connection): answer 200 with the request's Via, From, To, Call-ID, CSeq.
            self.requests_in += 1
            keep = [ln for ln in head.decode("utf-8", "replace").split("\r\n")[1:]
                    if ln.split(":", 1)[0].strip().lower() in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")]
            keep = [f"{ln};tag={self.tag}" if ln.split(":", 1)[0].strip().lower() in ("to", "t") and ";tag=" not in ln
                    else ln for ln in keep]
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode())
            return
        status = int(head[8:11])
        if status < 200:
            return
        m = _CSEQ_RE.search(head)
        fut = self.waiting.get(int(m.group(1))) if m else None
        if fut is not None and not fut.done():
            fut.set_result((status, head.decode("utf-8", "replace")))

    def _register_bytes(self, auth: str | None) -> bytes:
        self.cseq += 1
        lines = [
            f"REGISTER sip:{REMOTE_DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/TLS {self.src}:{self.lport};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{REMOTE_DOMAIN}>;tag={self.tag}",
            f"To: <sip:{self.user}@{REMOTE_DOMAIN}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{self.user}@{self.src}:{self.lport};transport=tls>",
            f"Expires: {EXPIRES_S}",
            "Supported: path",
            "User-Agent: edgeway-reg-bench",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _transaction(self, auth: str | None) -> tuple[int | str, str | None]:
        if self.closed_at is not None or self.writer is None:
            return "closed", None
        data = self._register_bytes(auth)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.cseq] = fut
        try:
            self.writer.write(data)
            return await asyncio.wait_for(fut, TRANSACTION_TIMEOUT_S)
        except TimeoutError:
            return "timeout", None
        except (OSError, ssl.SSLError):
            return "closed", None
        finally:
            self.waiting.pop(self.cseq, None)

    def _authorization(self, head: str) -> str | None:
        chals = []
        for value in _WWW_RE.findall(head):
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() == "digest":
                chals.append({k.lower(): v[1:-1] if v.startswith('"') else v for k, v in _PARAM_RE.findall(rest)})
        chal = next((c for c in chals if c.get("algorithm", "MD5").upper() == self.algorithm), None)
        if chal is None:
            return None
        h = _HASH[self.algorithm]
        realm, nonce, uri = chal.get("realm", ""), chal.get("nonce", ""), f"sip:{REMOTE_DOMAIN}"
        cnonce, nc = secrets.token_hex(8), "00000001"
        ha1 = h(f"{self.user}:{realm}:{self.password}".encode()).hexdigest()
        ha2 = h(f"REGISTER:{uri}".encode()).hexdigest()
        resp = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        return (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}", '
                f'algorithm={self.algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"')

    async def register(self) -> int | str:
        """REGISTER → 401 → REGISTER with credentials; the final status (200 = bound) or
        ``timeout`` / ``closed`` / ``401 without <algorithm>``."""
        status, head = await self._transaction(None)
        if status != 401:
            return status
        auth = self._authorization(head or "")
        if auth is None:
            return f"401 without {self.algorithm}"
        status, _ = await self._transaction(auth)
        return status

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.transport.abort()


# ---- phases ---------------------------------------------------------------------------------------

def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


async def run_phase(clients: list[Client], concurrency: int, deadline: float, *, connect: tuple | None) -> dict:
    """Register every client (connecting first when ``connect`` = (ctx, server name)),
    ``concurrency`` at once; outcome counts, rate and latencies."""
    sem = asyncio.Semaphore(concurrency)
    outcome: Counter = Counter()
    lat: list[float] = []
    ok_times: list[float] = []
    t0 = time.monotonic()

    async def one(c: Client) -> None:
        async with sem:
            if time.monotonic() > deadline:
                outcome["not tried (deadline)"] += 1
                return
            t = time.monotonic()
            if connect is not None:
                try:
                    await c.connect(*connect)
                except TimeoutError:
                    outcome["connect timeout"] += 1
                    return
                except ssl.SSLError as exc:
                    outcome[f"TLS {exc.reason or type(exc).__name__}"] += 1
                    return
                except OSError as exc:
                    outcome[f"connect {os.strerror(exc.errno) if exc.errno else type(exc).__name__}"] += 1
                    return
            status = await c.register()
            outcome[str(status)] += 1
            if status == 200:
                now = time.monotonic()
                lat.append(now - t)
                ok_times.append(now)

    await asyncio.gather(*(one(c) for c in clients))
    ok = outcome.pop("200", 0)
    span = (max(ok_times) - t0) if ok_times else float("nan")
    return {"ok": ok, "failed": dict(outcome), "seconds": round(span, 3),
            "per_s": round(ok / span, 1) if ok_times else 0.0,
            "p50_ms": round(_pct(lat, 0.5) * 1000, 1) if lat else None,
            "p99_ms": round(_pct(lat, 0.99) * 1000, 1) if lat else None}


async def probe(clients: list[Client], sample: int, timeout_s: float = 10.0) -> dict:
    """Send OPTIONS from the inside (the call-control address, TCP to the core's 5060) to
    ``sample`` registered users: the core finds each by its binding, follows its Path over
    the traversal zone, and the edge delivers it down the client's own connection (the
    flow token). Counts the final statuses."""
    import random

    picks = random.Random(1).sample(clients, min(sample, len(clients)))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(CORE_IP, 5060, local_addr=(CALL_CONTROL_IP, 0)), CONNECT_TIMEOUT_S)
    lport = writer.get_extra_info("sockname")[1]
    statuses: Counter = Counter()
    try:
        for n, c in enumerate(picks, 1):
            msg = (f"OPTIONS sip:{c.user}@{REMOTE_DOMAIN} SIP/2.0\r\n"
                   f"Via: SIP/2.0/TCP {CALL_CONTROL_IP}:{lport};branch=z9hG4bK{secrets.token_hex(8)}\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:probe@corp.edgeway.test>;tag={secrets.token_hex(4)}\r\n"
                   f"To: <sip:{c.user}@{REMOTE_DOMAIN}>\r\nCall-ID: probe-{n}-{secrets.token_hex(6)}\r\n"
                   f"CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n")
            writer.write(msg.encode())
            status = "timeout"
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), end - time.monotonic())
                except TimeoutError:
                    break
                head = head.lstrip(b"\r\n")
                m = _CL_RE.search(head)
                if m and int(m.group(1)):
                    await reader.readexactly(int(m.group(1)))
                code = int(head[8:11]) if head.startswith(b"SIP/2.0 ") else 0
                cs = _CSEQ_RE.search(head)
                if code >= 200 and cs and int(cs.group(1)) == n:
                    status = str(code)
                    break
            statuses[status] += 1
    finally:
        writer.close()
    return dict(statuses)


def _traversal_up_ts(path: Path, since: float) -> float | None:
    ts = [float(e["ts"]) for e in load_events(path) if e.get("event") == "traversal connected" and float(e.get("ts", 0)) >= since]
    return max(ts) if ts else None


def memory(lab: Lab) -> dict:
    out = {}
    for node, pid in lab.pids.items():
        st = proc_status(pid)
        out[node] = {"rss_mib": round(st.get("VmRSS", float("nan")), 1), "hwm_mib": round(st.get("VmHWM", float("nan")), 1),
                     "fds": open_fds(pid), "cpu_s": round(cpu_seconds(pid), 2)}
    return out


def overrides(count: int, per_source: int, digest: str) -> tuple[dict, dict, list[str]]:
    """The edge and core configuration the load needs, and a line per setting saying why."""
    edge: dict = {"limits": {"max_proxied_registrations": max(2500, count)}}
    why = [f"edge limits.max_proxied_registrations = {max(2500, count)} (default 2500: one AOR more gets 503)"]
    if per_source > DEFAULT_PER_SOURCE_CAP:
        edge["limits"]["max_connections_per_source"] = per_source
        why.append(f"edge limits.max_connections_per_source = {per_source} (default {DEFAULT_PER_SOURCE_CAP} < --per-source)")
    if 2 * per_source > DEFAULT_FLOOD_BURST:
        edge["flood"] = {"burst": float(4 * per_source), "requests_per_s": float(2 * per_source)}
        why.append(f"edge flood.burst = {4 * per_source}, requests_per_s = {2 * per_source} (default 200 / 100 per s:"
                   f" a re-registration of all {per_source} clients of one address is {2 * per_source} requests)")
    else:
        why.append(f"edge [limits] per-source cap and [flood] per-source rate kept at their defaults: clients spread over"
                   f" {(count + per_source - 1) // per_source} source addresses, {per_source} each (<= 256 connections,"
                   f" {2 * per_source} requests at once <= burst 200)")
    why.append("edge [intrusion_protection] default (on): the 401s come from the core's registrar, which the edge does"
               " not count; the core's protection is off (default)")
    core: dict = {"registrar": {"users": [{"username": f"u{i:05d}", "password": f"pw-{i}"} for i in range(count)],
                                "digest_algorithms": ["SHA-256", "MD5"], "max_bindings": max(10_000, count)}}
    why.append(f"core registrar: {count} users, max_bindings = {max(10_000, count)}, digest SHA-256+MD5 offered"
               f" (client answers {digest})")
    why.append("both: log.sip_messages off, 200 lines/s per event type (product defaults; the lab turns messages on)")
    return edge, core, why


async def bench(a: argparse.Namespace, workdir: Path, result: dict) -> None:
    deadline = time.monotonic() + a.deadline_s
    edge_over, core_over, why = overrides(a.count, a.per_source, a.digest)
    result["config"] = why
    topo = LabTopology(edge_ip=EDGE_IP, core_ip=CORE_IP, call_control_ip=CALL_CONTROL_IP, partner_ip=PARTNER_IP,
                       dns_ip=DNS_IP, mra=False, sip_messages=False, max_events_per_s=200, retry_interval_s=1.0,
                       edge_overrides=edge_over, core_overrides=core_over)
    sources = [str(FIRST_SOURCE + k) for k in range((a.count + a.per_source - 1) // a.per_source)]
    clients = [Client(i, sources[i // a.per_source], a.digest) for i in range(a.count)]
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if a.json else (lambda m: print(m, flush=True))
    lab = Lab(workdir, topo, progress=lambda m: say(f"  {m}"))
    try:
        await lab.start()
        await lab.wait_traversal(30)
        result["pids"] = dict(lab.pids)
        await asyncio.sleep(1.0)
        result["memory_before"] = memory(lab)

        ctx = ssl.create_default_context(cafile=str(lab.files.ca))
        say(f"ramp: {a.count} clients from {len(sources)} addresses ({sources[0]} … {sources[-1]}), "
            f"{a.concurrency} at once → {EDGE_IP}:{TLS_PORT}")
        bench_cpu = time.process_time()
        result["ramp"] = await run_phase(clients, a.concurrency, deadline, connect=(ctx, topo.edge_fqdn))
        bench_cpu = time.process_time() - bench_cpu
        say(f"  {result['ramp']}")
        cpu_ramp = memory(lab)
        result["cpu_ramp_s"] = {n: round(cpu_ramp[n]["cpu_s"] - result["memory_before"][n]["cpu_s"], 2) for n in cpu_ramp}
        result["cpu_ramp_s"]["bench"] = round(bench_cpu, 2)
        await asyncio.sleep(min(a.hold_s, max(0.0, deadline - time.monotonic() - 60)))
        result["held_open"] = sum(1 for c in clients if c.writer is not None and c.closed_at is None)
        result["memory_held"] = memory(lab)
        say(f"  held {result['held_open']} connections; {result['memory_held']}")

        # core restart: SIGKILL, start again, wait for the traversal zone
        t_kill = time.time()
        await lab.kill_core()
        await asyncio.sleep(0.5)
        t_start = time.time()
        await lab.start_core()
        await lab.wait_traversal(min(60.0, max(5.0, deadline - time.monotonic() - 30)), since=t_start)
        up = [_traversal_up_ts(lab.files.events(n), t_start) for n in ("edge", "core")]
        t_back = max(u for u in up if u is not None)
        result["core_restart"] = {"kill_to_zone_up_s": round(t_back - t_kill, 3), "start_to_zone_up_s": round(t_back - t_start, 3),
                                  "new_core_pid": lab.pids["core"]}
        lag = time.time() - t_back  # from the zone being up to our noticing it in the event log
        alive = [c for c in clients if c.writer is not None and c.closed_at is None]
        if a.probe:  # the new core has no bindings: the same probe now finds nobody
            t_probe = time.monotonic()
            result["probe_before_reregister"] = await probe(alive, min(5, a.probe))
            say(f"  probe before re-registering (bindings lost with the old core): {result['probe_before_reregister']}")
            lag -= time.monotonic() - t_probe  # not part of the re-registration time
        result["open_after_restart"] = len(alive)
        say(f"core restarted (pid {lab.pids['core']}): zone up {t_back - t_start:.2f} s after start; "
            f"re-registering {len(alive)} clients")
        rereg = await run_phase(alive, a.reregister_concurrency or a.concurrency, deadline, connect=None)
        rereg["from_zone_up_s"] = round(rereg["seconds"] + lag, 3) if rereg["ok"] else None
        rereg["not_open"] = len(clients) - len(alive)
        result["reregister"] = rereg
        say(f"  {rereg}")
        await asyncio.sleep(1.0)
        result["memory_after"] = memory(lab)
        result["held_open_end"] = sum(1 for c in clients if c.writer is not None and c.closed_at is None)
        settle = min(a.settle_s, max(0.0, deadline - time.monotonic() - 20))
        if settle > 0:  # the node trims its heap every 10 s when RSS grew (edgeway.runtime)
            await asyncio.sleep(settle)
            result["memory_settled"] = memory(lab)
        if a.probe:
            result["probe"] = await probe([c for c in clients if c.closed_at is None], a.probe)
            result["requests_from_edge"] = sum(c.requests_in for c in clients)
            say(f"  reachability probe (OPTIONS from inside to {a.probe} users): {result['probe']}")
    finally:
        for c in clients:
            c.close()
        await asyncio.sleep(0.2)
        await lab.close()
        result["stopped"] = {n: p.poll() is not None for n, p in lab.procs.items()}


def report(a: argparse.Namespace, r: dict) -> None:
    def mib(phase: str, node: str, key: str = "rss_mib"):
        return r.get(phase, {}).get(node, {}).get(key)

    ramp, rr = r.get("ramp", {}), r.get("reregister", {})
    held_edge = mib("memory_held", "edge")
    before_edge = mib("memory_before", "edge")
    rows = [
        ("registrations (ramp)", f"{ramp.get('ok', 0)} / {a.count}"),
        ("registrations/s (ramp)", f"{ramp.get('per_s')} over {ramp.get('seconds')} s, {a.concurrency} at once"),
        ("ramp latency p50 / p99 ms", f"{ramp.get('p50_ms')} / {ramp.get('p99_ms')} (connect + TLS + 401 + 200)"),
        ("ramp failures", ", ".join(f"{k}: {v}" for k, v in ramp.get("failed", {}).items()) or "none"),
        ("ramp CPU s edge / core / clients", " / ".join(str(r.get("cpu_ramp_s", {}).get(k)) for k in ("edge", "core", "bench"))
         + f" ({os.cpu_count()} cores shared)"),
        ("connections held", f"{r.get('held_open')} (after {a.hold_s:g} s)"),
        ("edge RSS MiB before / held", f"{before_edge} / {held_edge} (peak {mib('memory_held', 'edge', 'hwm_mib')})"),
        ("edge RSS < 300 MiB", "yes" if held_edge is not None and held_edge < RSS_TARGET_MIB else "NO"),
        ("edge MiB per 1,000 registrations", f"{(held_edge - before_edge) * 1000 / max(1, ramp.get('ok', 0)):.1f}"
         if held_edge is not None and before_edge is not None else "-"),
        ("edge open descriptors (held)", f"{mib('memory_held', 'edge', 'fds')}"),
        ("core RSS MiB before / held", f"{mib('memory_before', 'core')} / {mib('memory_held', 'core')}"),
        ("core restart: kill → zone up s", (f"{r.get('core_restart', {}).get('kill_to_zone_up_s')}"
         f" (start → zone up {r.get('core_restart', {}).get('start_to_zone_up_s')})")),
        ("connections open after restart", f"{r.get('open_after_restart')}"),
        ("re-registered", f"{rr.get('ok', 0)} / {r.get('open_after_restart')}"),
        ("re-register time s (zone up → all)", (f"{rr.get('from_zone_up_s')} ({rr.get('per_s')} /s,"
         f" {a.reregister_concurrency or a.concurrency} at once,"
         f" p50 {rr.get('p50_ms')} ms, p99 {rr.get('p99_ms')} ms)")),
        ("re-register failures", ", ".join(f"{k}: {v}" for k, v in rr.get("failed", {}).items()) or "none"),
        ("edge / core RSS MiB after re-register", f"{mib('memory_after', 'edge')} / {mib('memory_after', 'core')}"),
        ("edge / core RSS MiB settled", (f"{mib('memory_settled', 'edge')} / {mib('memory_settled', 'core')}"
         f" ({a.settle_s:g} s later)")),
        ("connections open at the end", f"{r.get('held_open_end')}"),
        ("reachability right after restart", (f"OPTIONS inside → {min(5, a.probe)} users: {r.get('probe_before_reregister')}"
         " (the old core's bindings are gone)")),
        ("reachability after re-register", (f"OPTIONS inside → {a.probe} users: {r.get('probe')}"
         f" ({r.get('requests_from_edge')} arrived on the clients' connections)")),
        ("bench process RSS MiB (peak)", f"{r.get('bench_rss_mib')}"),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"reg_bench: {a.count} TLS registrations through edge {EDGE_IP}:{TLS_PORT} → core {CORE_IP} "
          f"(digest {a.digest}), {a.per_source} clients per source address")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    print("  configuration for this load:")
    for line in r.get("config", []):
        print(f"    - {line}")
    if r.get("error"):
        print(f"  ERROR: {r['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000, help="registrations (clients), default 5000")
    ap.add_argument("--concurrency", type=int, default=200, help="registrations in progress at once, default 200")
    ap.add_argument("--reregister-concurrency", type=int, default=0,
                    help="re-registrations in progress at once after the core restart (default: --concurrency)")
    ap.add_argument("--per-source", type=int, default=50, help="clients per loopback source address, default 50")
    ap.add_argument("--digest", choices=("SHA-256", "MD5"), default="SHA-256")
    ap.add_argument("--hold-s", type=float, default=5.0, help="seconds to hold all before reading RSS, default 5")
    ap.add_argument("--settle-s", type=float, default=12.0,
                    help="seconds after re-registering before RSS is read again (0 = not), default 12")
    ap.add_argument("--deadline-s", type=float, default=270.0, help="overall bound, default 270 s")
    ap.add_argument("--probe", type=int, default=20,
                    help="after re-registering, OPTIONS from inside to this many users (0 = none), default 20")
    ap.add_argument("--workdir", type=Path, help="keep the lab files and logs here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON (progress to stderr)")
    a = ap.parse_args()
    if not 1 <= a.count <= MAX_COUNT:
        ap.error(f"--count must be 1..{MAX_COUNT}")
    if a.concurrency < 1 or a.per_source < 1 or a.reregister_concurrency < 0:
        ap.error("--concurrency and --per-source must be positive")
    raise_nofile(a.count + 512)
    from edgeway.runtime import install_event_loop_policy

    install_event_loop_policy()
    result: dict = {"count": a.count, "concurrency": a.concurrency,
                    "reregister_concurrency": a.reregister_concurrency or a.concurrency, "per_source": a.per_source, "digest": a.digest}

    async def runner() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with tempfile.TemporaryDirectory(prefix="regbench-") as tmp:
            wd = a.workdir or Path(tmp)
            try:
                await asyncio.wait_for(bench(a, wd, result), a.deadline_s + 30)
            except TimeoutError:
                result["error"] = f"overall deadline ({a.deadline_s + 30:g} s) reached"
            except asyncio.CancelledError:
                result["error"] = "interrupted"
            except Exception as exc:  # noqa: BLE001  (report what we have, nodes are stopped)
                result["error"] = f"{type(exc).__name__}: {exc}"
        result["bench_rss_mib"] = round(proc_status(os.getpid()).get("VmHWM", float("nan")), 1)

    asyncio.run(runner())
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        report(a, result)
    if result.get("error"):
        sys.exit(1)


if __name__ == "__main__":
    main()
