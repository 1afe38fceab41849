"""``edgeway history searches|calls -c NODE.toml``: a running node's search history and call
history, newest first (seed 002 §1.7: the last 500 of each; seed 003 §12.3 "Search
History"; issue 11 item 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .blocked import _CONFIG, _SOCKET, _ask, _socket

history_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Search and call history of a running node (the last 500 of each).")

_LIMIT = typer.Option(20, "--limit", "-n", min=1, max=500, help="how many, newest first")
_JSON = typer.Option(False, "--json", help="print JSON")


def _items(config: Path | None, socket_path: Path | None, limit: int, kind: str, as_json: bool) -> list[dict] | None:
    """The node's ``kind`` history (newest first); printed as JSON (and None returned) with
    ``as_json``."""
    items = _ask(_socket(config, socket_path), "history", limit=limit)[kind]
    if as_json:
        typer.echo(json.dumps(items, indent=1))
        return None
    return items


def _when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}" if ts else "-"


@history_app.command("searches")
def searches(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET, limit: int = _LIMIT,
             as_json: bool = _JSON) -> None:
    """Each search: source zone, alias, every rule considered and its result, the target
    and the final reason."""
    items = _items(config, socket_path, limit, "searches", as_json)
    if items is None:
        return
    con = Console(highlight=False, soft_wrap=True)
    for s in items:
        verdict = f"[green]found[/green] → rule {s['rule']!r}, zone {s['zone']!r}" if s["found"] else \
            f"[red]not found[/red] ({escape(str(s.get('reason') or ''))}{'; ' + escape(s['detail']) if s.get('detail') else ''})"
        con.print(f"{_when(s['time'])} {s.get('method') or ''} {escape(str(s['alias']))} from {escape(str(s.get('src_zone')))}: "
                  f"{verdict}  [dim]{escape(s['call_id'])}[/dim]")
        for line in s["rules"] + s["policy"]:
            con.print(f"    {escape(line)}")
    if not items:
        con.print("no searches yet")


@history_app.command("calls")
def calls(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET, limit: int = _LIMIT,
          as_json: bool = _JSON) -> None:
    """Each call: source, aliases, zones, outcome, end reason, media counters per direction."""
    items = _items(config, socket_path, limit, "calls", as_json)
    if items is None:
        return
    con = Console(highlight=False, soft_wrap=True)
    for c in items:
        outcome = c["state"] + (f" {c['status']}" if c.get("status") else "") + \
            (f" ({c['end_reason']})" if c.get("end_reason") else "")
        con.print(f"{_when(c['start'])} {escape(str(c.get('src_alias')))} → {escape(str(c.get('dst_alias')))} "
                  f"from {escape(str(c.get('src_zone')))} ({c.get('src')}, {c.get('transport')}) via "
                  f"{', '.join(map(str, c['zones'])) or '-'}: {escape(outcome)}  [dim]{escape(c['call_id'])}[/dim]")
        m = c.get("media") or {}
        for d in ("a_to_b", "b_to_a"):
            if isinstance(m.get(d), dict):
                con.print(f"    {d}: {m[d].get('rtp_packets', 0)} RTP, {m[d].get('rtcp_packets', 0)} RTCP packets")
    if not items:
        con.print("no calls yet")
