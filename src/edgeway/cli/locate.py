"""``edgeway locate ALIAS --from ZONE -c NODE.toml``: ask a running node how it would route
ALIAS arriving from ZONE, without placing a call (seed 003 §12.3 "Locate"; issue 11 item 3):
transforms, call policy, every search rule considered and its result, each target zone and
what the node knows of it (a neighbour's address, a traversal zone's connections, the
registrar's bindings, the DNS queries and answers)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .blocked import _CONFIG, _SOCKET, _ask, _socket


def locate_command(
    alias: str = typer.Argument(..., help="the alias to locate, e.g. bob@partner.example.com"),
    zone: str = typer.Option("DefaultZone", "--from", help="the source zone the request would arrive from"),
    source: str = typer.Option("", "--source-alias", help="the caller's alias (call policy)"),
    config: Path | None = _CONFIG,
    socket_path: Path | None = _SOCKET,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Route ALIAS from ZONE on a running node and print each step; exit 0 when a target
    was found, 1 when none, 2 when the node cannot be asked."""
    resp = _ask(_socket(config, socket_path), "locate", timeout_s=30.0, alias=alias, zone=zone, **{"from": source})
    res = resp["locate"]
    if as_json:
        typer.echo(json.dumps(res, indent=1))
        raise typer.Exit(0 if res["found"] else 1)
    con = Console(highlight=False, soft_wrap=True)
    con.print(f"Locate {escape(res['alias'])} from zone {escape(res['source_zone'])!r}")
    if res.get("error"):
        con.print(f"  [red]{escape(res['error'])}[/red]")
        raise typer.Exit(1)
    con.print(f"  Transforms: {escape(res['transforms'])} → {escape(res['transformed'])}")
    con.print(f"  Call policy: {escape(res['policy'])}")
    for line in res["policy_trace"]:
        con.print(f"    {escape(line)}")
    con.print("  Search rules:")
    for line in res["search"]:
        con.print(f"    {escape(line)}")
    for i, t in enumerate(res["targets"], 1):
        mark = "[green]Found[/green]" if t["found"] else "[red]Not found[/red]"
        con.print(f"  Target {i}: rule {escape(t['rule'])!r} (priority {t['priority']}) → zone {escape(t['zone'])!r} "
                  f"({t['zone_type']}), {escape(t['ruri'])}: {mark}")
        for line in t["detail"]:
            con.print(f"      {escape(line)}")
        for hop in t["hops"]:
            con.print(f"      → {escape(hop)}")
    con.print(f"  Found: {res['found']}")
    raise typer.Exit(0 if res["found"] else 1)
