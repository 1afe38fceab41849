"""``edgeway probe NODE...``: media node discovery from the client side (seed 004).

For each media node, STUN Binding requests over UDP (``--udp-port``, default 5004), TCP
(``--tcp-port``, 5004) and TLS (``--tls-port``, 443), ``--samples`` each; a reachability table
with RTT min/median, the best node and transport, and why every other one failed or lost. When no
direct transport answers and ``--proxy http://user:pass@host:port`` is given, the probe goes
through the HTTP proxy (CONNECT + Basic authentication) as the last fallback; ``--proxy-only``
skips the direct transports (a site that allows nothing but its proxy).

Results are cached for 2 hours per node set and local address (``--cache FILE``, default
``~/.cache/edgeway/probe.json``); ``--refresh`` probes again. ``--hold SECONDS`` keeps the chosen
flow open that long with a keepalive after every ``--keepalive`` seconds of silence (≤ 30 s).

Exit status: 0 when some node is reachable, 1 when none is, 2 for bad options.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import typer

__all__ = ["probe_command"]


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeway" / "probe.json"


def _load_cache(path: Path):
    from ..probe.cache import ProbeCache

    try:
        return ProbeCache.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return ProbeCache()


def _save_cache(path: Path, cache) -> str | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(cache.to_json(), encoding="utf-8")
        tmp.replace(path)
        return None
    except OSError as exc:
        return f"cache not written: {path}: {exc.strerror or exc}"


def _table(results, choice):
    from rich.table import Table
    from rich.text import Text

    from ..probe.choice import fmt_rtt

    table = Table(title="media node reachability (STUN Binding, RFC 8489)", title_justify="left")
    for col in ("node", "transport", "port", "reachable", "answered", "RTT min", "RTT median", "mapped address",
                "error / note"):
        table.add_column(col, overflow="fold")
    best = choice.best
    from ..probe.choice import PROXY, RANK

    order = {}
    for r in results:
        order.setdefault(r.node, len(order))
    shown = [r for r in results if not (r.transport in PROXY and r.skipped == "no --proxy given")]
    for r in sorted(shown, key=lambda r: (order[r.node], RANK[r.transport])):
        if r.skipped:
            reach, style = "not tried", "dim"
        elif r.usable:
            reach, style = "yes", "green"
        else:
            reach, style = "no", "red"
        mark = " ★" if r is best else ""
        detail = r.error or ""
        if r.note and r.usable:
            detail = f"{detail}; {r.note}" if detail else r.note
        table.add_row(r.node, r.transport + mark, str(r.port), Text(reach, style=style),
                      "-" if r.skipped else f"{len(r.samples) - r.lost}/{len(r.samples)}",
                      fmt_rtt(r.rtt_min), fmt_rtt(r.rtt_median), r.mapped or "-", detail)
    return table


def probe_command(
    nodes: list[str] = typer.Argument(..., help="media nodes: host or host:port (the port replaces --udp-port and --tcp-port)"),
    udp_port: int = typer.Option(5004, "--udp-port", min=1, max=65535, help="UDP port of the nodes (seed 004: 5004)"),
    tcp_port: int = typer.Option(5004, "--tcp-port", min=1, max=65535, help="TCP port of the nodes (seed 004: 5004)"),
    tls_port: int = typer.Option(443, "--tls-port", min=1, max=65535, help="TLS port of the nodes (seed 004: 443)"),
    samples: int = typer.Option(3, "--samples", min=1, max=20, help="Binding requests per node and transport"),
    timeout: float = typer.Option(1.0, "--timeout", min=0.05, max=30.0,
                                  help="seconds per request (UDP retransmits inside it, RFC 8489 §6.2.1) and per connect"),
    proxy: str = typer.Option(None, "--proxy", help="HTTP proxy, last fallback: http://user:pass@host:port (CONNECT, Basic auth)"),
    proxy_only: bool = typer.Option(False, "--proxy-only", help="probe only through --proxy (skip UDP, TCP and TLS)"),
    proxy_port: int = typer.Option(None, "--proxy-port", min=1, max=65535,
                                   help="node port to CONNECT to for TLS through the proxy (default: --tls-port)"),
    transports: str = typer.Option("udp,tcp,tls", "--transports", help="direct transports to probe, comma separated"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of the table"),
    cache_file: Path = typer.Option(None, "--cache", help="cache file (default ~/.cache/edgeway/probe.json)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="neither read nor write the cache"),
    refresh: bool = typer.Option(False, "--refresh", help="probe again even when the cache is valid"),
    ca_file: Path = typer.Option(None, "--ca-file", help="CA certificates (PEM) to verify the nodes' TLS certificates"),
    insecure: bool = typer.Option(False, "--insecure", help="do not verify TLS certificates (lab, self-signed coturn)"),
    hold: float = typer.Option(0.0, "--hold", min=0.0, max=3600.0,
                               help="keep the best flow open this many seconds, with keepalives"),
    keepalive: float = typer.Option(15.0, "--keepalive", min=0.01, max=30.0,
                                    help="seconds of silence before a keepalive on a held flow (≤ 30, seed 004)"),
) -> None:
    """Probe media nodes over UDP, TCP, TLS (and an HTTP proxy); pick the best node and transport."""
    from rich.console import Console

    from ..probe.cache import probe_set_key
    from ..probe.choice import DIRECT, choose, result_from_dict
    from ..probe.client import ProbeConfig, hold_flow, local_address_toward, parse_node, parse_proxy, probe_nodes

    try:
        parsed = [parse_node(n, udp_port, tcp_port, tls_port) for n in nodes]
        proxy_url = parse_proxy(proxy) if proxy else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc))
    if proxy_only and proxy_url is None:
        raise typer.BadParameter("--proxy-only needs --proxy")
    direct = tuple(t.strip().lower() for t in transports.split(",") if t.strip())
    bad = [t for t in direct if t not in DIRECT]
    if bad or not direct:
        raise typer.BadParameter(f"--transports: {', '.join(bad) or 'empty'}; choose from udp, tcp, tls")
    if ca_file is not None and not ca_file.is_file():
        raise typer.BadParameter(f"--ca-file {ca_file}: no such file")
    cfg = ProbeConfig(samples=samples, timeout=timeout, ca_file=str(ca_file) if ca_file else None, insecure=insecure,
                      proxy=proxy_url, proxy_port=proxy_port, proxy_only=proxy_only,
                      transports=tuple(t for t in DIRECT if t in direct))

    local = ",".join(sorted({local_address_toward(n.host, n.udp_port) for n in parsed}))
    key = probe_set_key([(n.host, n.udp_port, n.tcp_port, n.tls_port) for n in parsed],
                        proxy_url.address if proxy_url else None, proxy_only)
    # what changes a verdict belongs in the key: the transports, the CONNECT port, how TLS is verified
    tls_mode = "insecure" if insecure else f"ca={ca_file.resolve()}" if ca_file else "system-ca"
    key += f" transports={','.join(cfg.transports)} proxy-port={proxy_port or ''} tls={tls_mode}"
    cache_path = cache_file or _default_cache()
    cache = None if no_cache else _load_cache(cache_path)
    now = time.time()
    cache_note = "cache off (--no-cache)"
    entry = None
    if cache is not None:
        entry, cache_note = cache.lookup(key, local, now)
        if entry is not None and refresh:
            entry, cache_note = None, "re-probed on request (--refresh)"
    if entry is not None:
        results = [result_from_dict(d) for d in entry.results]
        source = "cache"
    else:
        results = asyncio.run(probe_nodes(parsed, cfg))
        source = "probe"
        if cache is not None:
            cache.store(key, local, now, [r.to_dict() for r in results])
            err = _save_cache(cache_path, cache)
            cache_note = f"{cache_note}; probed now" + (f"; {err}" if err else f", cached 2 h in {cache_path}")
    choice = choose(results, [n.name for n in parsed])

    held = None
    if hold > 0 and choice.best is not None:
        node = next(n for n in parsed if n.name == choice.best.node)
        held = asyncio.run(hold_flow(node, choice.best.transport, cfg, hold, keepalive))

    if as_json:
        out = {"local_address": local, "source": source, "cache": cache_note, "insecure": insecure,
               "results": [r.to_dict() for r in results], **choice.to_dict()}
        if held is not None:
            out["hold"] = {"seconds": hold, "keepalive_interval": keepalive, "sent": held.sent,
                           "answered": held.answered, "max_gap": round(held.max_gap, 3), "error": held.error}
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    else:
        console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
        console.print(f"local address {local}; {cache_note}", markup=False)
        if insecure:
            console.print("[yellow]warning:[/] TLS certificates are NOT verified (--insecure)")
        console.print(_table(results, choice))
        console.print(choice.headline(), markup=False, style="bold" if choice.best else "bold red", soft_wrap=True)
        for r in choice.reasons:
            if r.verdict != "not tried" or r.transport not in ("proxy-tls", "proxy-tcp") or proxy_url is not None:
                console.print(f"  {r.node} {r.transport}: {r.verdict}: {r.text}", markup=False, soft_wrap=True)
        if held is not None:
            console.print(f"held {choice.best.node} over {choice.best.transport} for {hold:g} s: "
                          f"{held.sent} keepalives (every ≤ {keepalive:g} s of silence), {held.answered} answered"
                          + (f"; error: {held.error}" if held.error else ""), markup=False)
    if choice.best is None:
        raise typer.Exit(1)
