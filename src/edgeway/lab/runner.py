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
#: At most this many seconds of RTP in the MRA call (the section adds little to ``make lab``).
MRA_MEDIA_S = 1.0


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
        self.inside_dns: LabDnsServer | None = None
        self.web = None  # the internal web services stand-in (edgeway.lab.webservice)
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
            if self.topology.mra:
                await self._start_web()
            if self.start_nodes:
                self._check_ports()
                for node in NODES:
                    await self.start_node(node)
                for node in self.files.media_configs:
                    await self.start_node(node)
        except BaseException:
            await self.close()
            raise

    async def _start_dns(self) -> None:
        t = self.topology
        zones = [ZONE_APEX] if all(d.endswith("." + ZONE_APEX) for d in (t.domain, t.partner_domain)) \
            else [t.domain, t.partner_domain]
        self.dns = await self._dns_view(t.dns_records(), t.dns_ip, t.dns_port, zones, "the lab DNS server")
        # Split DNS: the inside view adds _cisco-uds._tcp (seed 002 §12.2); the core uses it.
        self.inside_dns = await self._dns_view(t.inside_dns_records(), t.inside_dns_ip, self.dns.port, zones,
                                               "the lab's inside DNS view")
        self.progress(f"lab DNS server answering for {', '.join(zones)} on {t.dns_ip}:{self.dns.port} (udp+tcp), "
                      f"inside view on {t.inside_dns_ip}:{self.inside_dns.port}")

    @staticmethod
    async def _dns_view(records: list, ip: str, port: int, zones: list[str], what: str) -> LabDnsServer:
        """A started :class:`LabDnsServer`; LabError naming ``what`` when it cannot bind."""
        server = LabDnsServer(records, host=ip, port=port, zones=zones)
        try:
            await server.start()
        except OSError as exc:
            raise LabError(f"cannot start {what} on {ip}:{port} (udp+tcp): {exc.strerror or exc}"
                           " — is another lab running?") from None
        return server

    async def _start_web(self) -> None:
        """The internal web services stand-in behind the core (:mod:`edgeway.lab.webservice`)."""
        from edgeway.lab.webservice import LabWebService, TFTP_PORT, UDS_PORT, VOICEMAIL_PORT

        t = self.topology
        self.web = LabWebService(t.call_control_ip, t.domain)
        try:
            await self.web.start()
        except OSError as exc:
            self.web = None
            raise LabError(f"cannot start the internal web services on {t.call_control_ip} ports "
                           f"{UDS_PORT}/{TFTP_PORT}/{VOICEMAIL_PORT}: {exc.strerror or exc} — is another lab running?") from None
        self.progress(f"internal web services (UDS :{UDS_PORT}, TFTP-over-HTTP :{TFTP_PORT}, voicemail :{VOICEMAIL_PORT})"
                      f" on {t.call_control_ip}")

    def _check_ports(self) -> None:
        """Fail early, with a clear message, when a node's address is taken."""
        t = self.topology
        wanted = [(t.edge_ip, t.sip_port, "udp"), (t.edge_ip, t.sip_port, "tcp"), (t.edge_ip, t.tls_port, "tcp"),
                  (t.edge_ip, MTLS_PORT, "tcp"), (t.edge_ip, t.traversal_port, "tcp"), (t.core_ip, t.sip_port, "udp"),
                  (t.core_ip, t.sip_port, "tcp"), (t.core_ip, t.tls_port, "tcp")]
        if t.mra:
            wanted += [(t.edge_ip, t.https_port, "tcp"), (t.edge_ip, t.mra_tunnel_port, "tcp")]
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
        media = node in files.media_configs
        if node not in NODES and not media:
            raise ValueError(f"unknown node {node!r}; expected one of {NODES} or a media node")
        old = self.procs.get(node)
        if old is not None and old.poll() is None:
            raise LabError(f"{node} is already running (pid {old.pid})")
        self._close_outputs(node)
        out = open(self.workdir / f"{node}.stdout.log", "ab")
        err = open(self.workdir / f"{node}.stderr.log", "ab")
        self._outputs[node] = [out, err]
        self.started_at[node] = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeway", "media" if media else node, "-c", str(files.config(node))],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(self.workdir),
            env=self._env(), start_new_session=True,
        )
        self.procs[node] = proc
        await asyncio.sleep(0.3)
        if proc.poll() is not None:
            raise LabError(f"{node} exited at once with status {proc.returncode}\n" + self.diagnostics(node))
        from edgeway.lab.topology import MEDIA_NODES

        ip = MEDIA_NODES[node][0] if media else self.topology.edge_ip if node == "edge" else self.topology.core_ip
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
        if self.inside_dns is not None:
            await self.inside_dns.close()
            self.inside_dns = None
        if self.web is not None:
            await self.web.close()
            self.web = None

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
                       hybrid: bool = True, mra: bool = True) -> LabReport:
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

        Each call carries ``media_seconds`` of RTP both ways.

        With ``mra`` (default; the topology must have MRA on) the mobile and remote access
        section follows (:mod:`edgeway.lab.mra_demo`): carol's phone outside finds the edge
        by ``_collab-edge._tls`` SRV through the lab DNS, asks get_edge_config, makes allowed
        and blocked HTTPS requests through the edge, registers over TLS through edge and
        core, is called by alice (at most :data:`MRA_MEDIA_S` seconds of RTP) and
        un-registers. Never raises for call or step failures: they are in the report.
        """
        files = self._require_files()
        host_names = dict(self.topology.host_names)
        if hybrid:
            host_names.setdefault(CLOUD_IP, CLOUD_UA)
        report = LabReport(workdir=self.workdir, host_names=host_names)
        uas = self._demo_phones(hybrid)
        calls: list[dict[str, Any]] = []
        mra_run = None
        try:
            report.error = await self._start_phones(uas)
            if report.error:
                return report
            place = {"media_seconds": media_seconds, "timeout_s": call_timeout_s}
            calls.append(await self._call_outside_in(uas["bob"], uas["alice"], place))
            calls.append(await self._call_inside_out(uas["alice"], uas["bob"], place))
            if "cloud" in uas:
                calls.append(await self._call_cloud_in(uas["cloud"], uas["alice"], place))
                calls.append(await self._call_cloud_out(uas["alice"], uas["cloud"], place))
            if mra and self.topology.mra:
                mra_run = await self._mra_demo(uas["alice"], min(media_seconds, MRA_MEDIA_S), call_timeout_s)
        finally:
            await asyncio.gather(*(ua.close() for ua in uas.values()), return_exceptions=True)
        await asyncio.sleep(0.3)  # let the nodes write their last events (media closed)
        self._fill_report(report, calls, host_names)
        if mra_run is not None:
            report.mra = mra_run.report(self.events("edge") + self.events("core"), host_names)
        if files.media_configs:
            from edgeway.lab.probe_demo import run_probe_demo

            report.media = await run_probe_demo(files.ca)
        report.notes.append(f"configs, certificates and logs: {files.workdir}")
        return report

    async def _mra_demo(self, alice: Any, media_seconds: float, call_timeout_s: float) -> Any:
        """The MRA section (:func:`edgeway.lab.mra_demo.run_mra_demo`); a bug in it is a
        failed step, not a crashed demo."""
        from edgeway.lab.mra_demo import MraRun, run_mra_demo
        from edgeway.lab.report import MraStep

        try:
            return await run_mra_demo(self, alice, media_seconds=media_seconds, call_timeout_s=call_timeout_s,
                                      progress=self.progress)
        except Exception as exc:  # noqa: BLE001 - the report says what broke
            return MraRun(steps=[MraStep("mobile and remote access", False, f"FAILED: internal error: {exc!r}")])

    # Steps of run_demo: each call is a dict the report is built from ("title",
    # "caller", "callee", "target", "result", "stats", "wall", "notes", "expect_srtp").

    def _demo_phones(self, hybrid: bool) -> dict[str, Any]:
        """bob outside, alice inside, and the cloud stand-in when ``hybrid``."""
        from edgeway.lab.ua import LabUserAgent

        t = self.topology
        uas = {"bob": LabUserAgent("bob", t.partner_ip, t.partner_port, transport="udp", domain=t.partner_domain),
               "alice": LabUserAgent("alice", t.call_control_ip, t.call_control_port,
                                     transport=t.call_control_transport, domain=t.domain)}
        if hybrid:
            uas["cloud"] = self.cloud_user_agent()
        return uas

    async def _start_phones(self, uas: dict[str, Any]) -> str | None:
        """Start the phones; the error text when one cannot start."""
        t = self.topology
        try:
            for ua in uas.values():
                await ua.start()
        except (OSError, ValueError) as exc:
            return f"cannot start the lab user agents: {exc}"
        self.progress(f"user agents up: bob {t.partner_ip}:{t.partner_port}/udp, "
                      f"alice {t.call_control_ip}:{t.call_control_port}/{t.call_control_transport}"
                      + (f", cloud {CLOUD_IP}:{MTLS_PORT}/tls (mutual TLS, SRTP)" if "cloud" in uas else ""))
        return None

    async def place_call(self, caller: Any, callee: Any, target: str, proxy: tuple[str, int, str], from_user: str,
                         place: dict[str, Any]) -> dict[str, Any]:
        """One call (``place``: keyword arguments of ``caller.call``) and the callee's record
        of it, as a dict the report is built from."""
        wall = time.time()
        result = await caller.call(target, proxy=proxy, from_user=from_user, **place)
        stats = await self._callee_stats(callee, result)
        return {"caller": caller.name, "callee": callee.name, "target": target, "result": result, "stats": stats,
                "wall": wall, "notes": []}

    async def _call_outside_in(self, bob: Any, alice: Any, place: dict[str, Any]) -> dict[str, Any]:
        """Call 1: bob → alice, the edge located by RFC 3263 through the lab DNS."""
        from edgeway.routing.resolver import make_resolver, resolve

        t = self.topology
        target = f"sip:{t.alice}"
        trace: list[tuple[str, str, str]] = []
        resolver = make_resolver([(t.dns_ip, self.dns.port if self.dns else t.dns_port)], 2.0)
        targets = await resolve(t.domain, None, None, False, resolver, trace=trace)
        usable = [x for x in targets if x.transport == "udp"]
        queries = [f"{ty} {n}" for n, ty, o in trace if "additional" not in o]
        note = (f"bob: RFC 3263 via lab DNS ({', '.join(queries) or 'no queries'}) → "
                + (", ".join(f"{x.transport}:{x.host}:{x.port}" for x in targets) or "no targets")
                + (f"; bob uses udp:{usable[0].host}:{usable[0].port}" if usable else ""))
        if usable:
            self.progress(f"call 1: bob → {target} via {usable[0].host}:{usable[0].port}/udp")
            call = await self.place_call(bob, alice, target, (usable[0].host, usable[0].port, "udp"), "bob", place)
        else:
            call = {"caller": "bob", "callee": "alice", "target": target, "result": None, "stats": None,
                    "wall": None, "notes": []}
        call["notes"].insert(0, note)
        if not usable:
            call["notes"].append("bob: no usable (udp) target for corp.edgeway.test — call not placed")
        return {**call, "title": "call 1: outside → inside (bob → alice)"}

    async def _call_inside_out(self, alice: Any, bob: Any, place: dict[str, Any]) -> dict[str, Any]:
        """Call 2: alice → bob through the core; the edge finds bob by DNS."""
        t = self.topology
        target = f"sip:{t.bob}"
        self.progress(f"call 2: alice → {target} via core {t.core_ip}:{t.sip_port}/{t.call_control_transport}")
        call = await self.place_call(alice, bob, target, (t.core_ip, t.sip_port, t.call_control_transport), "alice", place)
        return {**call, "title": "call 2: inside → outside (alice → bob)"}

    async def _call_cloud_in(self, cloud: Any, alice: Any, place: dict[str, Any]) -> dict[str, Any]:
        """Call 3: cloud → edge (mutual TLS, SRTP) → core → alice (RTP)."""
        t = self.topology
        target = f"sip:{t.alice}"
        self.progress(f"call 3: {CLOUD_USER}@{CLOUD_DOMAIN} (cloud) → {target} via edge {t.edge_ip}:{MTLS_PORT}/tls")
        call = await self.place_call(cloud, alice, target, (t.edge_ip, MTLS_PORT, "tls"), CLOUD_USER, place)
        seen = ", ".join(dict.fromkeys(getattr(call["result"], "tls_peer_names", []) or [])) or "none"
        call["notes"].append(f"cloud: mutual TLS to edge {t.edge_ip}:{MTLS_PORT}, presenting the certificate with SAN "
                             f"{CLOUD_SERVICE_FQDN}; the edge's certificate names: {seen} (required: {t.edge_fqdn})")
        return {**call, "title": "call 3: hybrid inbound (cloud → edge → core → alice)",
                "expect_srtp": {CLOUD_UA: True, "alice": False}}

    async def _call_cloud_out(self, alice: Any, cloud: Any, place: dict[str, Any]) -> dict[str, Any]:
        """Call 4: alice → core → edge → cloud (found by DNS, mutual TLS, SRTP)."""
        t = self.topology
        target = f"sip:{CLOUD_USER}@{CLOUD_CALLEE_DOMAIN}"
        self.progress(f"call 4: alice → {target} via core {t.core_ip}:{t.sip_port}/{t.call_control_transport}")
        call = await self.place_call(alice, cloud, target, (t.core_ip, t.sip_port, t.call_control_transport), "alice", place)
        stats = call["stats"]
        if stats is not None:
            seen = ", ".join(dict.fromkeys(stats.tls_peer_names)) or "none"
            call["notes"].append(f"cloud: INVITE over {stats.peer}; the edge's client certificate names: {seen}")
        return {**call, "title": "call 4: hybrid outbound (alice → core → edge → cloud)",
                "expect_srtp": {"alice": False, CLOUD_UA: True}}

    def _fill_report(self, report: LabReport, calls: list[dict[str, Any]], host_names: dict[str, str]) -> None:
        """Zone history, TLS classifications and one CallReport per call from the nodes' events."""
        node_events = self.events("edge") + self.events("core")
        report.traversal = traversal_history(node_events)
        report.classifications = tls_classifications(node_events)
        for i, c in enumerate(calls):
            stats, result, wall = c["stats"], c["result"], c["wall"]
            # events without a Call-ID belong to the call when logged between its start
            # and the next call's start
            end = wall + getattr(result, "duration_ms", 0.0) / 1000.0 + 0.5 if wall is not None else None
            later = [x["wall"] for x in calls[i + 1:] if x["wall"] is not None]
            if end is not None and later:
                end = min(end, later[0])
            report.calls.append(CallReport.build(
                c["title"], c["caller"], c["callee"], c["target"], result, stats, node_events,
                callee_ladder=getattr(stats, "ladder", None) or [], caller_t0=wall, host_names=host_names,
                notes=c["notes"], expect_srtp=c.get("expect_srtp"),
                window=(wall, end) if wall is not None and end is not None else None,
            ))

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
