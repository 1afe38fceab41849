"""``edgeway diag start | mark TEXT | stop -c NODE.toml``: a diagnostic capture on a running
node (issue 11 item 4; :mod:`edgeway.diag.capture`): the SIP messages as the node saw them,
in clear, in a pcap; the event log; marks; optionally a tcpdump of its ports; one archive."""

from __future__ import annotations

from pathlib import Path

import typer

from .blocked import _CONFIG, _SOCKET, _ask, _socket

diag_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Diagnostic capture on a running node: start, mark, stop.")


@diag_app.command("start")
def start(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET,
          directory: Path | None = typer.Option(None, "--dir", help="where the capture is written"),
          tcpdump: bool = typer.Option(False, "--tcpdump", help="also run tcpdump on the node's SIP ports")) -> None:
    """Start capturing."""
    fields: dict = {"tcpdump": tcpdump}
    if directory is not None:
        fields["dir"] = str(directory.resolve())
    resp = _ask(_socket(config, socket_path), "diag-start", **fields)
    typer.echo(f"capturing into {resp['dir']}" + (f" ({resp['tcpdump']})" if resp.get("tcpdump") else ""))


@diag_app.command("mark")
def mark(text: str = typer.Argument(..., help="the mark's text"), config: Path | None = _CONFIG,
         socket_path: Path | None = _SOCKET) -> None:
    """Put a mark in the capture and the event log."""
    _ask(_socket(config, socket_path), "diag-mark", text=text)
    typer.echo("marked")


@diag_app.command("stop")
def stop(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET) -> None:
    """Stop capturing and print the archive's path."""
    resp = _ask(_socket(config, socket_path), "diag-stop")
    typer.echo(f"{resp['messages']} SIP messages; archive: {resp['archive']}")
