"""``edgeway reload -c NODE.toml``: a running node reads its configuration file again and
applies what changed without dropping calls or the traversal connection (issue 11 item 7;
:meth:`edgeway.node.Node.reload`). SIGHUP does the same. A file that fails validation is
refused whole and the running configuration stays."""

from __future__ import annotations

from pathlib import Path

import typer

from .blocked import _CONFIG, _SOCKET, _ask, _socket


def _raw_socket(config: Path | None) -> Path | None:
    """``control.socket`` read from the file without validating it: the file being reloaded
    may be the invalid one, and the running node is the one to say why."""
    import tomllib

    if config is None:
        return None
    try:
        sock = tomllib.loads(config.read_text()).get("control", {}).get("socket")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(sock) if isinstance(sock, str) and sock else None


def reload_command(config: Path | None = _CONFIG, socket_path: Path | None = _SOCKET) -> None:
    """Apply the node's changed configuration file; print what was applied and what needs
    a restart. Exit 0 when applied, 1 when refused, 2 when the node cannot be asked."""
    path = socket_path or _raw_socket(config) or _socket(config, socket_path)
    resp = _ask(path, "reload", timeout_s=30.0, refused="reload refused, the running configuration stays",
                refused_exit=1)
    if resp.get("unchanged"):
        typer.echo("no change")
        return
    typer.echo(f"applied: {', '.join(resp['applied']) or 'nothing'}")
    if resp["restart_needed"]:
        typer.echo(f"changed but needs a restart (running values kept): {', '.join(resp['restart_needed'])}")
