"""Run the lab: DNS in-process, edge and core as subprocesses, demo calls (DESIGN §5).

Typical use::

    async with Lab(Path("lab-run")) as lab:      # builds files, starts DNS, edge, core
        await lab.wait_traversal(15)             # both nodes report the zone up
        report = await lab.run_demo(media_seconds=3)
    report.render(Console())

The nodes run as ``python -m edgeway edge|core -c <workdir>/<node>.toml`` in
their own sessions, with stdout/stderr in ``<workdir>/<node>.stdout.log`` /
``<node>.stderr.log`` and their event logs in ``<workdir>/<node>.events.jsonl``.
:meth:`Lab.close` always stops them (SIGTERM, SIGKILL after 5 s); a finalizer
kills them too if a Lab is dropped without being closed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import edgeway
from edgeway.lab.dns_server import LabDnsServer
from edgeway.lab.report import (
    CallReport,
    LabReport,
    load_events,
    tls_classifications,
    traversal_history,
)
from edgeway.lab.topology import (
    CLOUD_DOMAIN,
    CLOUD_IP,
    CLOUD_SERVICE_FQDN,
    MTLS_PORT,
    ZONE_APEX,
    LabFiles,
    LabTopology,
)

__all__ = ["Lab", "LabError", "NODES", "STOP_GRACE_S"]

#: The node processes a lab runs.
NODES = ("edge", "core")
#: Seconds between SIGTERM and SIGKILL when stopping a node.
STOP_GRACE_S = 5.0
#: Event names of traversal zone state changes.
_UP, _DOWN = "traversal connected", "traversal disconnected"
#: The cloud calling service stand-in's user agent name (report label) and the
#: cloud-side user it calls as / is called at.
CLOUD_UA = "cloud"
CLOUD_USER = "carol"
#: The domain of cloud users called from inside: like Webex's
#: ``<org>.call.ciscospark.com``, a subdomain of the cloud domain — the edge's
#: "Hybrid outbound" search rule matches ``.*@.*\.cloud\.edgeway\.test`` and its
#: Modify DNS request then looks up ``_sips._tcp.callservice.cloud.edgeway.test``
#: instead of this name.
CLOUD_CALLEE_DOMAIN = f"lab.{CLOUD_DOMAIN}"


class LabError(RuntimeError):
    """The lab could not be set up or did not reach the expected state; the
    message says what, and includes the tail of the nodes' stderr and events."""


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [ln.rstrip("\n") for ln in fh.readlines()[-lines:]]
    except FileNotFoundError:
        return []


def _kill_all(procs: dict[str, subprocess.Popen]) -> None:
    """Synchronous last-resort stop (finalizer): SIGKILL whatever still runs."""
    for p in list(procs.values()):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass


class Lab:
    """A running lab in ``workdir``: lab DNS server (in this process), edge and core
    (subprocesses). Use as an async context manager, or call :meth:`start` and
    :meth:`close` yourself.

    Args:
        workdir: directory for the generated files and logs (created if missing).
        topology: the plan; default :class:`~edgeway.lab.topology.LabTopology()`.
        progress: called with a short line per set-up step (for CLIs).
        start_nodes: ``False`` builds the files and starts only the DNS server.

    Attributes:
        files: paths written by the topology (after :meth:`start`).
        dns: the running :class:`~edgeway.lab.dns_server.LabDnsServer`.
        procs: node name → :class:`subprocess.Popen` of the running nodes.
        started_at: node name → epoch time of the node's last start.
    """

    def __init__(
        self,
        workdir: Path | str,
        topology: LabTopology | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        start_nodes: bool = True,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.topology = topology or LabTopology()
        self.progress = progress or (lambda _msg: None)
        self.start_nodes = start_nodes
        self.files: LabFiles | None = None
        self.dns: LabDnsServer | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self._outputs: dict[str, list[IO[bytes]]] = {}
        self._finalizer = weakref.finalize(self, _kill_all, self.procs)

    # ------------------------------------------------------------------ lifecycle

    @property
    def pids(self) -> dict[str, int]:
        """Node name → PID of the node processes started (running or not)."""
        return {n: p.pid for n, p in self.procs.items()}

    async def start(self) -> None:
        """Write the lab files, start the DNS server and (unless ``start_nodes``
        is False) the edge and the core. On failure everything started is stopped.

        Raises:
            LabError: an address is in use or a node exits at once.
        """
        try:
            self.files = self.topology.build(self.workdir)
            self.progress(f"PKI, node configurations and DNS zone written to {self.workdir}")
            await self._start_dns()
            if self.start_nodes:
                self._check_ports()
                for node in NODES:
                    await self.start_node(node)
        except BaseException:
            await self.close()
            raise

    async def _start_dns(self) -> None:
        t = self.topology
        zones = [ZONE_APEX] if all(d.endswith("." + ZONE_APEX) for d in (t.domain, t.partner_domain)) \
            else [t.domain, t.partner_domain]
        self.dns = LabDnsServer(t.dns_records(), host=t.dns_ip, port=t.dns_port, zones=zones)
        try:
            await self.dns.start()
        except OSError as exc:
            self.dns = None
            raise LabError(f"cannot start the lab DNS server on {t.dns_ip}:{t.dns_port} (udp+tcp): {exc.strerror or exc}"
                           " — is another lab running?") from None
        self.progress(f"lab DNS server answering for {', '.join(zones)} on {t.dns_ip}:{self.dns.port} (udp+tcp)")

    def _check_ports(self) -> None:
        """Fail early, with a clear message, when a node's address is taken."""
        t = self.topology
        wanted = [(t.edge_ip, t.sip_port, "udp"), (t.edge_ip, t.sip_port, "tcp"), (t.edge_ip, t.tls_port, "tcp"),
                  (t.edge_ip, MTLS_PORT, "tcp"), (t.edge_ip, t.traversal_port, "tcp"), (t.core_ip, t.sip_port, "udp"),
                  (t.core_ip, t.sip_port, "tcp"), (t.core_ip, t.tls_port, "tcp")]
        for ip, port, proto in wanted:
            if not port:
                continue
            kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind) as s:
                if proto == "tcp":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((ip, port))
                except OSError as exc:
                    raise LabError(f"{ip}:{port}/{proto} is not available ({exc.strerror or exc})"
                                   " — is another lab or SIP server running?") from None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        src = str(Path(edgeway.__file__).resolve().parents[1])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _require_files(self) -> LabFiles:
        if self.files is None:
            raise LabError("the lab has not been built: call start() first")
        return self.files

    async def start_node(self, node: str) -> int:
        """Start ``"edge"`` or ``"core"`` (it must not be running); returns its PID.

        Raises:
            LabError: the process exited within the first 0.3 s (its stderr is quoted).
        """
        files = self._require_files()
        if node not in NODES:
            raise ValueError(f"unknown node {node!r}; expected one of {NODES}")
        old = self.procs.get(node)
        if old is not None and old.poll() is None:
            raise LabError(f"{node} is already running (pid {old.pid})")
        self._close_outputs(node)
        out = open(self.workdir / f"{node}.stdout.log", "ab")
        err = open(self.workdir / f"{node}.stderr.log", "ab")
        self._outputs[node] = [out, err]
        self.started_at[node] = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeway", node, "-c", str(files.config(node))],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(self.workdir),
            env=self._env(), start_new_session=True,
        )
        self.procs[node] = proc
        await asyncio.sleep(0.3)
        if proc.poll() is not None:
            raise LabError(f"{node} exited at once with status {proc.returncode}\n" + self.diagnostics(node))
        ip = self.topology.edge_ip if node == "edge" else self.topology.core_ip
        self.progress(f"{node} started on {ip} (pid {proc.pid})")
        return proc.pid

    async def stop_node(self, node: str, *, kill: bool = False, grace_s: float = STOP_GRACE_S) -> int | None:
        """Stop a node: SIGTERM (or SIGKILL at once with ``kill``), SIGKILL after
        ``grace_s``. Returns its exit status (None if it was not started)."""
        proc = self.procs.get(node)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                while proc.poll() is None:
                    await asyncio.sleep(0.05)
        self._close_outputs(node)
        return proc.returncode

    async def kill_core(self, *, graceful: bool = False) -> int | None:
        """Stop the core abruptly (SIGKILL; SIGTERM when ``graceful``), e.g. to
        test that the edge marks the traversal zone down. Returns its exit status."""
        return await self.stop_node("core", kill=not graceful)

    async def start_core(self) -> int:
        """Start the core again after :meth:`kill_core`; returns the new PID."""
        return await self.start_node("core")

    def _close_outputs(self, node: str) -> None:
        for fh in self._outputs.pop(node, []):
            try:
                fh.close()
            except OSError:
                pass

    async def close(self) -> None:
        """Stop both nodes (SIGTERM, then SIGKILL after 5 s) and the DNS server. Idempotent."""
        await asyncio.gather(*(self.stop_node(n) for n in list(self.procs)), return_exceptions=True)
        if self.dns is not None:
            await self.dns.close()
            self.dns = None

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ observation

    def events(self, node: str) -> list[dict[str, Any]]:
        """All events in ``node``'s JSON-lines event log (all runs of the node)."""
        files = self._require_files()
        return load_events(files.events(node))

    def zone_state(self, node: str, since: float | None = None) -> str | None:
        """``"connected"`` / ``"disconnected"`` from ``node``'s latest traversal
        event at or after ``since`` (default: the node's last start); None when
        there is none."""
        since = self.started_at.get(node, 0.0) if since is None else since
        last = None
        for e in self.events(node):
            if e.get("event") in (_UP, _DOWN) and float(e.get("ts", 0.0)) >= since:
                last = e
        if last is None:
            return None
        return "connected" if last["event"] == _UP else "disconnected"

    def diagnostics(self, node: str | None = None, lines: int = 15) -> str:
        """The tail of the nodes' stderr and event logs, for error messages."""
        out = []
        for n in [node] if node else list(NODES):
            proc = self.procs.get(n)
            status = "not started" if proc is None else (
                f"running (pid {proc.pid})" if proc.poll() is None else f"exited with status {proc.returncode}")
            out.append(f"--- {n}: {status}")
            err = _tail(self.workdir / f"{n}.stderr.log", lines)
            if err:
                out.append(f"--- {n} stderr (last {len(err)} lines):")
                out += ["  " + ln for ln in err]
            if self.files is not None:
                ev = _tail(self.files.events(n), lines)
                if ev:
                    out.append(f"--- {n} events (last {len(ev)} lines):")
                    out += ["  " + ln for ln in ev]
        return "\n".join(out)

    async def wait_zone_state(self, node: str, state: str, timeout_s: float = 10.0,
                              since: float | None = None) -> float:
        """Wait until ``node``'s latest traversal event (see :meth:`zone_state`)
        says ``state`` (``"connected"``/``"disconnected"``); returns the seconds
        waited.

        Raises:
            LabError: timeout, or the node process exited (with diagnostics).
        """
        t0 = time.monotonic()
        while True:
            if self.zone_state(node, since) == state:
                return time.monotonic() - t0
            proc = self.procs.get(node)
            if proc is not None and proc.poll() is not None:
                raise LabError(f"{node} exited (status {proc.returncode}) before the traversal zone was "
                               f"{state}\n" + self.diagnostics(node))
            if time.monotonic() - t0 >= timeout_s:
                raise LabError(f"{node}: traversal zone not {state} after {timeout_s:.1f} s\n" + self.diagnostics())
            await asyncio.sleep(0.1)

    async def wait_traversal(self, timeout_s: float = 15.0, since: float | None = None) -> float:
        """Wait until both edge and core log ``traversal connected`` newer than
        their last ``traversal disconnected`` (and newer than ``since``, default
        each node's last start). Returns the seconds waited.

        Raises:
            LabError: timeout or a node exited; includes the nodes' stderr and events.
        """
        t0 = time.monotonic()
        for node in NODES:
            left = max(0.0, timeout_s - (time.monotonic() - t0))
            await self.wait_zone_state(node, "connected", left, since)
        waited = time.monotonic() - t0
        self.progress(f"traversal zone connected (core → edge {self.topology.edge_ip}:{self.topology.traversal_port})"
                      f" after {waited:.1f} s")
        return waited

    # ------------------------------------------------------------------ the demo

    def cloud_user_agent(self) -> Any:
        """The cloud calling service stand-in: a :class:`~edgeway.lab.ua.LabUserAgent`
        named ``cloud`` on ``127.0.0.6:5062`` speaking mutual TLS with the
        certificate ``pki/cloud.pem`` (SAN ``callservice.<cloud domain>``), trusting
        the lab CA, requiring a client certificate, checking that the edge's
        certificate names the edge, and using SRTP (SDES) for all its media."""
        from edgeway.lab.ua import LabUserAgent

        files = self._require_files()
        pki = files.workdir / "pki"
        return LabUserAgent(
            CLOUD_UA, CLOUD_IP, MTLS_PORT, transport="tls", domain=CLOUD_DOMAIN,
            tls_cert=getattr(files, "cloud_cert", None) or pki / "cloud.pem",
            tls_key=getattr(files, "cloud_key", None) or pki / "cloud.key",
            tls_ca=files.ca, tls_require_client_cert=True, tls_server_name=self.topology.edge_fqdn, srtp=True,
        )

    async def run_demo(self, media_seconds: float = 3.0, *, call_timeout_s: float = 15.0,
                       hybrid: bool = True) -> LabReport:
        """Place the demonstration calls and report what happened.

        1. bob (outside, 127.0.0.5:5060/udp) calls ``sip:alice@corp.edgeway.test``:
           he locates the edge by RFC 3263 through the lab DNS (NAPTR → SRV → A)
           and sends to the first target he can use (bob listens on UDP only, so
           TLS/TCP targets are skipped).
        2. alice (inside, 127.0.0.4:5060/tcp, reached by the core's Call Control
           neighbour zone) calls ``sip:bob@partner.edgeway.test`` through the core
           (127.0.0.3:5060/tcp); the edge finds bob by DNS.

        With ``hybrid`` (default) two hybrid calls with the cloud calling service
        stand-in (:meth:`cloud_user_agent`, 127.0.0.6:5062, mutual TLS, SRTP):

        3. inbound: carol in the cloud calls ``sip:alice@corp.edgeway.test`` through
           the edge's mutual-TLS port 127.0.0.2:5062; the edge classifies the
           connection into the Hybrid Call Services DNS zone by the certificate's
           SAN, decrypts the SRTP and passes plain RTP through the core to alice.
        4. outbound: alice calls ``sip:carol@lab.cloud.edgeway.test`` through the core;
           the edge finds the cloud by DNS (Modify DNS request: SRV
           ``_sips._tcp.callservice.cloud.edgeway.test``), connects with mutual TLS
           and encrypts the media toward the cloud.

        Each call carries ``media_seconds`` of RTP both ways. Never raises for call
        failures: they are in the report.
        """
        from edgeway.lab.ua import LabUserAgent
        from edgeway.routing.resolver import make_resolver, resolve

        files = self._require_files()
        t = self.topology
        host_names = dict(t.host_names)
        if hybrid:
            host_names.setdefault(CLOUD_IP, CLOUD_UA)
        report = LabReport(workdir=self.workdir, host_names=host_names)
        bob = LabUserAgent("bob", t.partner_ip, t.partner_port, transport="udp", domain=t.partner_domain)
        alice = LabUserAgent("alice", t.call_control_ip, t.call_control_port, transport=t.call_control_transport,
                             domain=t.domain)
        uas = [bob, alice]
        cloud = None
        calls: list[dict[str, Any]] = []
        try:
            try:
                await bob.start()
                await alice.start()
                if hybrid:
                    cloud = self.cloud_user_agent()
                    uas.append(cloud)
                    await cloud.start()
            except (OSError, ValueError) as exc:
                report.error = f"cannot start the lab user agents: {exc}"
                return report
            self.progress(f"user agents up: bob {t.partner_ip}:{t.partner_port}/udp, "
                          f"alice {t.call_control_ip}:{t.call_control_port}/{t.call_control_transport}"
                          + (f", cloud {CLOUD_IP}:{MTLS_PORT}/tls (mutual TLS, SRTP)" if cloud else ""))

            # Call 1: outside → inside, edge located by RFC 3263.
            target1 = f"sip:{t.alice}"
            notes1: list[str] = []
            trace: list[tuple[str, str, str]] = []
            resolver = make_resolver([(t.dns_ip, self.dns.port if self.dns else t.dns_port)], 2.0)
            targets = await resolve(t.domain, None, None, False, resolver, trace=trace)
            usable = [x for x in targets if x.transport == "udp"]
            queries = [f"{ty} {n}" for n, ty, o in trace if "additional" not in o]
            notes1.append(f"bob: RFC 3263 via lab DNS ({', '.join(queries) or 'no queries'}) → "
                          + (", ".join(f"{x.transport}:{x.host}:{x.port}" for x in targets) or "no targets")
                          + (f"; bob uses udp:{usable[0].host}:{usable[0].port}" if usable else ""))
            result1 = None
            wall1: float | None = None
            if usable:
                self.progress(f"call 1: bob → {target1} via {usable[0].host}:{usable[0].port}/udp")
                wall1 = time.time()
                result1 = await bob.call(target1, proxy=(usable[0].host, usable[0].port, "udp"), from_user="bob",
                                         media_seconds=media_seconds, timeout_s=call_timeout_s)
            else:
                notes1.append("bob: no usable (udp) target for corp.edgeway.test — call not placed")
            stats1 = await self._callee_stats(alice, result1)
            calls.append({"title": "call 1: outside → inside (bob → alice)", "caller": "bob", "callee": "alice",
                          "target": target1, "result": result1, "stats": stats1, "wall": wall1, "notes": notes1})

            # Call 2: inside → outside, through the core.
            target2 = f"sip:{t.bob}"
            self.progress(f"call 2: alice → {target2} via core {t.core_ip}:{t.sip_port}/{t.call_control_transport}")
            wall2 = time.time()
            result2 = await alice.call(target2, proxy=(t.core_ip, t.sip_port, t.call_control_transport),
                                       from_user="alice", media_seconds=media_seconds, timeout_s=call_timeout_s)
            stats2 = await self._callee_stats(bob, result2)
            calls.append({"title": "call 2: inside → outside (alice → bob)", "caller": "alice", "callee": "bob",
                          "target": target2, "result": result2, "stats": stats2, "wall": wall2, "notes": []})

            if cloud is not None:
                # Call 3: cloud → edge (mutual TLS, SRTP) → core → alice (RTP).
                target3 = f"sip:{t.alice}"
                self.progress(f"call 3: {CLOUD_USER}@{CLOUD_DOMAIN} (cloud) → {target3} via edge "
                              f"{t.edge_ip}:{MTLS_PORT}/tls")
                wall3 = time.time()
                result3 = await cloud.call(target3, proxy=(t.edge_ip, MTLS_PORT, "tls"), from_user=CLOUD_USER,
                                           media_seconds=media_seconds, timeout_s=call_timeout_s)
                stats3 = await self._callee_stats(alice, result3)
                seen = ", ".join(dict.fromkeys(getattr(result3, "tls_peer_names", []) or [])) or "none"
                notes3 = [(f"cloud: mutual TLS to edge {t.edge_ip}:{MTLS_PORT}, presenting the certificate with SAN "
                           f"{CLOUD_SERVICE_FQDN}; the edge's certificate names: {seen} (required: {t.edge_fqdn})")]
                calls.append({"title": "call 3: hybrid inbound (cloud → edge → core → alice)", "caller": CLOUD_UA,
                              "callee": "alice", "target": target3, "result": result3, "stats": stats3,
                              "wall": wall3, "notes": notes3, "expect_srtp": {CLOUD_UA: True, "alice": False}})

                # Call 4: alice → core → edge → cloud (found by DNS, mutual TLS, SRTP).
                target4 = f"sip:{CLOUD_USER}@{CLOUD_CALLEE_DOMAIN}"
                self.progress(f"call 4: alice → {target4} via core {t.core_ip}:{t.sip_port}/"
                              f"{t.call_control_transport}")
                wall4 = time.time()
                result4 = await alice.call(target4, proxy=(t.core_ip, t.sip_port, t.call_control_transport),
                                           from_user="alice", media_seconds=media_seconds, timeout_s=call_timeout_s)
                stats4 = await self._callee_stats(cloud, result4)
                notes4 = []
                if stats4 is not None:
                    seen = ", ".join(dict.fromkeys(stats4.tls_peer_names)) or "none"
                    notes4.append(f"cloud: INVITE over {stats4.peer}; the edge's client certificate names: {seen}")
                calls.append({"title": "call 4: hybrid outbound (alice → core → edge → cloud)", "caller": "alice",
                              "callee": CLOUD_UA, "target": target4, "result": result4, "stats": stats4,
                              "wall": wall4, "notes": notes4, "expect_srtp": {"alice": False, CLOUD_UA: True}})
        finally:
            await asyncio.gather(*(ua.close() for ua in uas), return_exceptions=True)
        await asyncio.sleep(0.3)  # let the nodes write their last events (media closed)
        node_events = self.events("edge") + self.events("core")
        report.traversal = traversal_history(node_events)
        report.classifications = tls_classifications(node_events)
        for i, c in enumerate(calls):
            stats, result, wall = c["stats"], c["result"], c["wall"]
            callee_ladder = getattr(stats, "ladder", None) or []
            # events without a Call-ID belong to the call when logged between its start
            # and the next call's start
            end = wall + getattr(result, "duration_ms", 0.0) / 1000.0 + 0.5 if wall is not None else None
            later = [x["wall"] for x in calls[i + 1:] if x["wall"] is not None]
            if end is not None and later:
                end = min(end, later[0])
            report.calls.append(CallReport.build(
                c["title"], c["caller"], c["callee"], c["target"], result, stats, node_events,
                callee_ladder=callee_ladder, caller_t0=wall, host_names=host_names, notes=c["notes"],
                expect_srtp=c.get("expect_srtp"), window=(wall, end) if wall is not None and end is not None else None,
            ))
        report.notes.append(f"configs, certificates and logs: {files.workdir}")
        return report

    @staticmethod
    async def _callee_stats(ua: Any, result: Any) -> Any:
        """The callee's CallStats for ``result``'s Call-ID, once that call ended."""
        if result is None:
            return None
        cid = result.call_id
        wait = getattr(ua, "wait_call_ended", None)
        if wait is not None and cid in getattr(ua, "calls_received", {}):
            await wait(cid, 3.0)
        return ua.calls_answered.get(cid) or getattr(ua, "calls_received", {}).get(cid)
