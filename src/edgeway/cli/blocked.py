"""``edgeway blocked list|unblock ADDR``: the addresses automated intrusion protection
has blocked on a running node, through its control socket (seed 002 §10.9: System >
Protection > Automated detection > Blocked addresses); ``edgeway maintenance on|off|status``
(seed 002 §16)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

blocked_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Addresses blocked by automated intrusion protection on a running node.")


def _socket(config: Path | None, socket_path: Path | None) -> Path:
    if socket_path is not None:
        return socket_path
    if config is None:
        typer.echo("give the node's configuration (-c) or its control socket (--socket)", err=True)
        raise typer.Exit(2)
    from ..config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    if not cfg.control.socket:
        typer.echo(f"{config}: control.socket is not set: the node has no control socket", err=True)
        raise typer.Exit(2)
    return Path(cfg.control.socket)


def _ask(path: Path, cmd: str, *, timeout_s: float = 5.0, refused: str = "the node refused",
         refused_exit: int = 2, **fields) -> dict:
    """Send control command ``cmd``; on no answer exit 2, on a refusal print ``refused:
    <why>`` and exit ``refused_exit``."""
    from ..diag.control import ControlError, request

    try:
        resp = request(path, cmd, timeout_s=timeout_s, **fields)
    except ControlError as exc:
        typer.echo(f"{exc} (is the node running?)", err=True)
        raise typer.Exit(2)
    if not resp.get("ok"):
        typer.echo(f"{refused}: {resp.get('error')}", err=True)
        raise typer.Exit(refused_exit)
    return resp


_CONFIG = typer.Option(None, "-c", "--config", help="the node's TOML configuration (for control.socket)")
_SOCKET = typer.Option(None, "--socket", help="the node's control socket")


@blocked_app.command("list")
def list_blocked(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET) -> None:
    """Print the blocked addresses: category, failures, time left."""
    resp = _ask(_socket(config, socket_path), "blocked")
    if not resp.get("intrusion_protection"):
        typer.echo("intrusion protection is off on this node")
        return
    table = Table("address", "category", "failures", "seconds left")
    for b in resp["blocked"]:
        table.add_row(b["address"], b["category"], str(b["failures"]), f"{b['seconds_left']:.0f}")
    Console().print(table if resp["blocked"] else "no blocked addresses")


@blocked_app.command("unblock")
def unblock(address: str, config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET) -> None:
    """Lift the block on ADDRESS (and forget its failures). Exit status 1 when it was not blocked."""
    resp = _ask(_socket(config, socket_path), "unblock", address=address)
    if resp.get("unblocked"):
        typer.echo(f"{address}: unblocked")
    else:
        typer.echo(f"{address}: was not blocked")
        raise typer.Exit(1)


maintenance_app = typer.Typer(add_completion=False, no_args_is_help=True,
                              help="Maintenance mode of a running node (seed 002 §16): new calls, registrations "
                                   "and MRA requests get 503 while those under way continue.")


def _maintenance(config: Path | None, socket_path: Path | None, on: bool | None) -> None:
    fields = {} if on is None else {"on": on}
    resp = _ask(_socket(config, socket_path), "maintenance", **fields)
    typer.echo(f"maintenance mode: {'on' if resp.get('maintenance') else 'off'}")


@maintenance_app.command("on")
def maintenance_on(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET) -> None:
    """Refuse new calls, registrations and MRA requests (503)."""
    _maintenance(config, socket_path, True)


@maintenance_app.command("off")
def maintenance_off(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET) -> None:
    """Accept new work again."""
    _maintenance(config, socket_path, False)


@maintenance_app.command("status")
def maintenance_status(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET) -> None:
    """Print whether maintenance mode is on."""
    _maintenance(config, socket_path, None)
