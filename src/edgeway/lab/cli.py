"""``edgeway lab``: run the loopback demonstration, or keep a lab up for real clients.

* ``edgeway lab [--workdir DIR] [--media-seconds S] [--no-hybrid] [--no-mra]`` builds a
  fresh lab in ``DIR`` (default ``./lab-run``), places one call each way
  through the core/edge pair and, unless ``--no-hybrid``, one each way with the
  cloud calling service stand-in (127.0.0.6:5062, mutual TLS, SRTP on the cloud
  leg, plain RTP inside); unless ``--no-mra``, a remote client (carol, 127.0.0.8)
  finds the edge by SRV, makes HTTPS requests through it (get_edge_config, allowed,
  blocked), registers over TLS through edge and core and is called from inside. It
  prints the report and exits 0 only when every call, its media, (for the hybrid
  calls) its media encryption and every MRA step were as expected.
* ``edgeway lab up [--workdir DIR] [--call-control-transport tcp|tls] [--flood-limit N] [--no-ladder]`` starts DNS,
  edge and core, prints where to point clients, and runs until Ctrl-C / SIGTERM.
  The core reaches call control at 127.0.0.4:5060 over TCP, or with ``tls`` at
  127.0.0.4:5061 over TLS (whatever listens there needs a certificate of the
  lab CA, ``pki/ca.pem`` / ``pki/ca.key`` in the work directory).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
from enum import Enum
from pathlib import Path

import typer


from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgeway.config import LogConfig
from edgeway.runtime import install_event_loop_policy
from edgeway.lab.report import LabReport
from edgeway.lab.runner import Lab, LabError
from edgeway.lab.topology import (
    CLOUD_DOMAIN,
    CLOUD_IP,
    CLOUD_SERVICE_FQDN,
    HYBRID_ZONE,
    MTLS_PORT,
    SIP_PORT,
    TLS_PORT,
    TRAVERSAL_ZONE,
    LabTopology,
)

__all__ = ["lab_app", "fresh_workdir", "MARKER"]

lab_app = typer.Typer(
    invoke_without_command=True,
    add_completion=False,
    help="Loopback lab: private CA, lab DNS, edge 127.0.0.2, core 127.0.0.3, cloud stand-in 127.0.0.6;"
         " demo calls both ways, plain and hybrid (mutual TLS + SRTP).",
)

#: File that marks a directory as a lab work directory (safe to wipe and rebuild).
MARKER = ".edgeway-lab"
_DEFAULT_WORKDIR = Path("lab-run")




def fresh_workdir(path: Path) -> Path:
    """Empty (or create) ``path`` for a new lab run and mark it as a lab directory.

    A directory that already holds files is only wiped when it carries the
    :data:`MARKER` file of an earlier lab run, so a mistyped ``--workdir``
    never deletes anything else.

    Raises:
        LabError: ``path`` is a file, or a non-empty directory without the marker.
    """
    p = path.resolve()
    if p.exists() and not p.is_dir():
        raise LabError(f"{p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        if not (p / MARKER).exists():
            raise LabError(f"{p} is not empty and is not an earlier lab directory (no {MARKER} file); "
                           "choose another --workdir or empty it")
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    (p / MARKER).write_text("Edgeway lab work directory: rebuilt on every `edgeway lab` run.\n")
    return p


def _progress(console: Console):
    def say(msg: str) -> None:
        console.print(Text.assemble(("✓ ", "green"), msg), highlight=False, soft_wrap=True)
    return say


@lab_app.callback()
def lab(
    ctx: typer.Context,
    workdir: Path = typer.Option(_DEFAULT_WORKDIR, "--workdir", "-w",
                                 help="work directory (wiped and rebuilt; default ./lab-run)"),
    media_seconds: float = typer.Option(3.0, "--media-seconds", min=0.5, max=60.0,
                                        help="seconds of RTP per call"),
    traversal_timeout: float = typer.Option(20.0, "--traversal-timeout", min=1.0,
                                            help="seconds to wait for the traversal zone"),
    hybrid: bool = typer.Option(True, "--hybrid/--no-hybrid",
                                help="also place the two hybrid calls with the cloud stand-in"),
    mra: bool = typer.Option(True, "--mra/--no-mra",
                             help="also demonstrate mobile and remote access (SRV, HTTPS through the edge, "
                                  "a remote registration over TLS and a call to it)"),
) -> None:
    """Run the demonstration: a call outside → inside and one inside → outside, then a
    hybrid call cloud → inside and one inside → cloud (mutual TLS, SRTP on the cloud leg),
    then mobile and remote access: a remote client finds the edge, makes HTTPS requests
    through it, registers over TLS and is called from inside."""
    if ctx.invoked_subcommand is not None:
        return
    console = Console()
    install_event_loop_policy()
    try:
        report = asyncio.run(_demo(console, workdir, media_seconds, traversal_timeout, hybrid, mra))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; lab stopped[/yellow]")
        raise typer.Exit(130)
    report.render(console)
    raise typer.Exit(report.exit_code)


async def _demo(console: Console, workdir: Path, media_seconds: float, traversal_timeout: float,
                hybrid: bool = True, mra: bool = True) -> LabReport:
    say = _progress(console)
    try:
        wd = fresh_workdir(workdir)
    except LabError as exc:
        return LabReport(workdir=workdir.resolve(), error=str(exc))
    try:
        async with Lab(wd, progress=say) as lab:
            await lab.wait_traversal(traversal_timeout)
            return await lab.run_demo(media_seconds, hybrid=hybrid, mra=mra)
    except LabError as exc:
        return LabReport(workdir=wd, error=str(exc))


class CallControlTransport(str, Enum):
    """Transport of the core's Call Control neighbour zone in ``lab up``."""

    tcp = "tcp"
    tls = "tls"


@lab_app.command()
def up(
    workdir: Path = typer.Option(_DEFAULT_WORKDIR, "--workdir", "-w",
                                 help="work directory (wiped and rebuilt; default ./lab-run)"),
    traversal_timeout: float = typer.Option(20.0, "--traversal-timeout", min=1.0,
                                            help="seconds to wait for the traversal zone"),
    call_control_transport: CallControlTransport = typer.Option(
        CallControlTransport.tcp, "--call-control-transport",
        help="how the core reaches call control: tcp (127.0.0.4:5060) or tls (127.0.0.4:5061)"),
    flood_limit: float | None = typer.Option(
        None, "--flood-limit", min=0.0,
        help="requests/s per unknown source before flood control acts (0 = off; default: the product default). "
             "A load test from one address needs 0."),
    ladder: bool = typer.Option(
        True, "--ladder/--no-ladder",
        help="log every SIP message with no rate cap (the lab's ladder); --no-ladder logs as a product node does"),
    sip_path_headers: bool = typer.Option(
        False, "--sip-path-headers/--no-sip-path-headers",
        help="the core forwards remote registrations for ucm.edgeway.test to call control with its Path "
             "(seed 002 §2.3) instead of rewriting Contact"),
    status_token: str | None = typer.Option(
        None, "--status-token",
        help="serve each node's status page, /status.json and /metrics on <node ip>:8090, for this bearer token"),
) -> None:
    """Start DNS, edge and core and keep them running until Ctrl-C (no calls placed)."""
    console = Console()
    install_event_loop_policy()
    tls = call_control_transport is CallControlTransport.tls
    flood = {} if flood_limit is None else {"flood": {"requests_per_s": flood_limit}}
    topology = LabTopology(call_control_transport=call_control_transport.value,
                           call_control_port=TLS_PORT if tls else SIP_PORT,
                           edge_overrides=dict(flood), core_overrides=dict(flood), sip_path_headers=sip_path_headers,
                           status_token=status_token,
                           **({} if ladder else {"sip_messages": False, "max_events_per_s": LogConfig().max_events_per_s}))
    try:
        code = asyncio.run(_up(console, workdir, traversal_timeout, topology))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def _addresses(lab: Lab) -> Table:
    """Where to point clients, as a borderless two-column grid."""
    t = lab.topology
    files = lab.files
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("edge SIP", f"{t.edge_ip}:{t.sip_port} udp/tcp, {t.edge_ip}:{t.tls_port} tls  (outside clients)")
    table.add_row("traversal", f"{t.edge_ip}:{t.traversal_port} mutual TLS, zone {TRAVERSAL_ZONE!r} (core → edge)")
    table.add_row("hybrid", f"{t.edge_ip}:{MTLS_PORT} mutual TLS; certificates naming {CLOUD_SERVICE_FQDN} are"
                  f" zone {HYBRID_ZONE!r} (SRTP)")
    table.add_row("core SIP", f"{t.core_ip}:{t.sip_port} udp/tcp, {t.core_ip}:{t.tls_port} tls  (inside clients)")
    table.add_row("call control", f"{t.call_control_ip}:{t.call_control_port}/{t.call_control_transport} expected"
                  f" (the core sends *@{t.domain} here)")
    table.add_row("outside UA", f"{t.partner_ip}:{t.partner_port} (ua.{t.partner_domain}; the edge finds it by DNS)")
    table.add_row("cloud service", f"{CLOUD_IP}:{MTLS_PORT} tls expected (*@*.{CLOUD_DOMAIN}; the edge finds it by"
                  f" SRV _sips._tcp.{CLOUD_SERVICE_FQDN}; certificate pki/cloud.pem)")
    if t.mra:
        b64 = base64.b64encode(t.domain.encode()).decode()
        table.add_row("MRA HTTPS", f"https://{t.edge_fqdn}:{t.https_port} on {t.edge_ip} (SRV _collab-edge._tls.{t.domain});"
                      f" tunnel {t.edge_ip}:{t.mra_tunnel_port} mutual TLS (core → edge)")
        table.add_row("MRA try", f"curl --cacert {files.ca if files else 'ca.pem'} --resolve {t.edge_fqdn}:{t.https_port}:{t.edge_ip} "
                      f"'https://{t.edge_fqdn}:{t.https_port}/{b64}/get_edge_config?service_name=_cisco-uds'  ·  "
                      f"…/{b64}/http/{t.call_control_ip}/8443/cucm-uds/user/alice -u alice:alice-lab-pw")
    table.add_row("lab DNS", f"{t.dns_ip}:{t.dns_port} udp/tcp")
    table.add_row("domains", f"{t.domain} (local), {t.partner_domain} (outside)")
    table.add_row("users", f"sip:{t.alice} (inside), sip:{t.bob} (outside)")
    if files is not None:
        table.add_row("CA", str(files.ca))
        table.add_row("configs", f"{files.edge_config}  {files.core_config}")
        table.add_row("events", f"{files.edge_events}  {files.core_events}")
    return table


async def _up(console: Console, workdir: Path, traversal_timeout: float, topology: LabTopology) -> int:
    say = _progress(console)
    try:
        wd = fresh_workdir(workdir)
        async with Lab(wd, topology, progress=say) as lab:
            await lab.wait_traversal(traversal_timeout)
            console.rule("Edgeway lab is up")
            console.print(_addresses(lab))
            console.print("Press Ctrl-C to stop.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            watch = asyncio.ensure_future(_watch(lab, stop))
            try:
                await stop.wait()
            finally:
                watch.cancel()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            code = 0 if all(p.poll() is None for p in lab.procs.values()) else 1
            if code:
                console.print("[red]a node exited:[/red]")
                console.print(lab.diagnostics(), markup=False, highlight=False)
            console.print("stopping the lab…")
        console.print("[green]lab stopped[/green]")
        return code
    except LabError as exc:
        console.print(Text.assemble(("lab failed: ", "red"), str(exc)), highlight=False, soft_wrap=True)
        return 1


async def _watch(lab: Lab, stop: asyncio.Event) -> None:
    """End ``up`` when a node process dies."""
    while not stop.is_set():
        if any(p.poll() is not None for p in lab.procs.values()):
            stop.set()
            return
        await asyncio.sleep(0.5)
