"""``edgeway log-level [MODULE LEVEL] -c NODE.toml``: show or change a running node's event
log level per module (issue 11 item 1): ``sip``, ``tls``, ``zone``, ``traversal``,
``search``, ``policy``, ``call``, ``media``, ``dns``, ``http``, ``security``, ``registrar``,
``node``; LEVEL is DEBUG, INFO, WARNING, ERROR, CRITICAL or ``default``."""

from __future__ import annotations

from pathlib import Path

import typer

from .blocked import _CONFIG, _SOCKET, _ask, _socket


def log_level_command(
    module: str | None = typer.Argument(None, help="module to change (omit to show the levels)"),
    level: str | None = typer.Argument(None, help="DEBUG, INFO, WARNING, ERROR, CRITICAL or default"),
    config: Path | None = _CONFIG,
    socket_path: Path | None = _SOCKET,
) -> None:
    """Show the node's log levels, or set MODULE to LEVEL at run time."""
    if module is not None and level is None:
        typer.echo("give a LEVEL for the module", err=True)
        raise typer.Exit(2)
    fields = {"module": module, "level": level} if module is not None else {}
    resp = _ask(_socket(config, socket_path), "log-level", **fields)
    mods = ", ".join(f"{m}={lv}" for m, lv in resp["modules"].items()) or "none"
    typer.echo(f"level {resp['level']}; modules set: {mods}")
