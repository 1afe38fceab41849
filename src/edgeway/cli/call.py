"""``edgeway call``: place a test call through a live node and show what happened.

The operator's test call (the one every admin makes from a phone): a
:class:`~edgeway.ua.agent.UserAgent` sends an INVITE to the SIP URI through ``--via``
(or the URI's RFC 3263 targets), exchanges ``--duration`` seconds of RTP (SRTP with
``--srtp``), hangs up, and prints the SIP ladder and media counters. Exit status 0
only when the call succeeded: a 2xx, a BYE answered 2xx and RTP received both ways
(ours as reported by the far end's RTCP). 1 for a failed call, 2 for bad options.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["call_command", "call_succeeded"]


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not sep or "]" in port:
        host, port = text, ""
    host = host.strip("[]")
    if port and not port.isdigit():
        raise typer.BadParameter(f"{text!r}: port must be a number")
    return host, int(port) if port else default_port


def _local_ip_toward(host: str, port: int) -> str:
    """The source address the kernel picks toward ``host`` (no packet is sent)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


async def _next_hop(uri: str, transport: str | None, dns: str | None) -> tuple[str, int, str]:
    """RFC 3263: the first target of ``uri`` (``host, port, transport``). Raises
    typer.BadParameter when there is none."""
    from ..routing.resolver import make_resolver, resolve
    from ..sip.uri import parse_uri

    u = parse_uri(uri)
    if dns:
        resolver = make_resolver([_hostport(dns, 53)], 3.0)
    else:
        import dns.asyncresolver

        resolver = dns.asyncresolver.Resolver()
    targets = await resolve(u.host, u.port, transport or u.transport, u.scheme == "sips", resolver,
                            default_transport=transport or "udp")
    usable = [t for t in targets if transport is None or t.transport == transport]
    if not usable:
        raise typer.BadParameter(f"no RFC 3263 target for {u.host}" + (f" over {transport}" if transport else ""))
    return usable[0].host, usable[0].port, usable[0].transport


def call_succeeded(result) -> bool:
    """2xx, BYE answered 2xx (or the far end hung up), RTP both ways."""
    return (result.ok and 200 <= result.status < 300 and (result.bye_status is None or 200 <= result.bye_status < 300)
            and result.rtp_received > 0 and result.rtp_sent > 0 and bool(result.rtp_peer_received))


def _print(console: Console, uri: str, hop: tuple[str, int, str], result, srtp: bool) -> None:
    console.print(f"[bold]call[/] {uri} via {hop[0]}:{hop[1]}/{hop[2]}  (Call-ID {result.call_id})")
    console.print(f"  final response: {result.status} {result.reason}"
                  + (f", set-up {result.setup_ms:.1f} ms" if result.setup_ms is not None else "")
                  + (f", BYE {result.bye_status}" if result.bye_status is not None else ""))
    console.print("  SIP ladder:")
    for line in result.ladder:
        console.print(f"    {line}", markup=False, highlight=False)
    table = Table(title="media", title_justify="left")
    for col in ("direction", "RTP packets", "RTCP", "address"):
        table.add_column(col)
    local = f"{result.local_rtp[0]}:{result.local_rtp[1]}" if result.local_rtp else "-"
    remote = f"{result.remote_rtp[0]}:{result.remote_rtp[1]}" if result.remote_rtp else "-"
    peer = "?" if result.rtp_peer_received is None else str(result.rtp_peer_received)
    table.add_row("sent (far end received)", f"{result.rtp_sent} ({peer})", str(result.rtcp_sent), f"{local} → {remote}")
    source = f"{result.rtp_source[0]}:{result.rtp_source[1]}" if result.rtp_source else "-"
    table.add_row("received (lost)", f"{result.rtp_received} ({result.rtp_lost})", str(result.rtcp_received),
                  f"{source} → {local}")
    console.print(table)
    enc = f"yes ({result.srtp_suite}, {result.srtp_auth_failures} auth failures)" if result.srtp else "no"
    console.print(f"  SRTP: {enc}" + ("" if result.srtp or not srtp else " [red](asked for)[/]"))
    if result.tls_peer_names:
        console.print(f"  TLS peer certificate names: {', '.join(dict.fromkeys(result.tls_peer_names))}")
    if result.error:
        console.print(f"  [red]error:[/] {result.error}", highlight=False)
    ok = call_succeeded(result)
    console.print("[bold green]PASS[/]" if ok else "[bold red]FAIL[/]")


def call_command(
    uri: str = typer.Argument(..., help="SIP URI to call, e.g. sip:alice@corp.example.com"),
    via: str | None = typer.Option(None, "--via", help="next hop HOST:PORT (default: RFC 3263 for the URI's host)"),
    transport: str | None = typer.Option(None, "--transport", help="udp, tcp or tls (default: udp, tls for sips:)"),
    duration: float = typer.Option(3.0, "--duration", help="seconds of RTP each way (RTCP comes about once a second)"),
    srtp: bool = typer.Option(False, "--srtp", help="offer SRTP (SDES) and require it in the answer"),
    bind: str | None = typer.Option(None, "--bind", help="local IP[:PORT] (default: the address toward the next hop)"),
    from_user: str = typer.Option("edgeway-test", "--from", help="user part of our From and Contact"),
    domain: str | None = typer.Option(None, "--domain", help="host part of our From (default: the local IP)"),
    ca: Path | None = typer.Option(None, "--ca", help="TLS: PEM CA bundle the server must chain to (default: system)"),
    cert: Path | None = typer.Option(None, "--cert", help="TLS: client certificate (PEM) for mutual TLS"),
    key: Path | None = typer.Option(None, "--key", help="TLS: key of --cert"),
    server_name: str | None = typer.Option(None, "--server-name", help="TLS: name the server certificate must carry"),
    dns: str | None = typer.Option(None, "--dns", help="DNS server IP[:PORT] for RFC 3263 (default: system)"),
    timeout: float = typer.Option(15.0, "--timeout", help="seconds to wait for the answer"),
    rtp_port: int = typer.Option(40000, "--rtp-port", help="first local RTP port"),
) -> None:
    """Place a test call through a live node; print the ladder and media counters.

    Exit status 0 only on success: 2xx, BYE completed, RTP received both ways."""
    from ..ua import UserAgent

    if transport is not None and transport not in ("udp", "tcp", "tls"):
        raise typer.BadParameter("--transport must be udp, tcp or tls")
    if transport is None and uri.lower().startswith("sips:"):
        transport = "tls"
    console = Console(highlight=False)

    async def main() -> int:
        if via:
            host, port = _hostport(via, 5061 if transport == "tls" else 5060)
            hop = (host, port, transport or "udp")
        else:
            hop = await _next_hop(uri, transport, dns)
        if bind:
            ip, lport = _hostport(bind, 0)
        else:
            ip, lport = _local_ip_toward(hop[0], hop[1]), 0
        ua = UserAgent(from_user, ip, lport, transport=hop[2], domain=domain or ip, rtp_port_base=rtp_port,
                       tls_cert=cert, tls_key=key if cert else None, tls_ca=ca, tls_server_name=server_name, srtp=srtp)
        async with ua:
            result = await ua.call(uri, proxy=hop, from_user=from_user, media_seconds=duration, timeout_s=timeout)
        _print(console, uri, hop, result, srtp)
        return 0 if call_succeeded(result) else 1

    try:
        status = asyncio.run(main())
    except OSError as exc:
        console.print(f"[red]cannot place the call:[/] {exc}", highlight=False)
        raise typer.Exit(1)
    raise typer.Exit(status)
