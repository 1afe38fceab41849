"""``edgeway doctor -c NODE.toml``: check a node, its peers and the network (issue 11 item 5;
:mod:`edgeway.diag.doctor`). One line per finding: verdict, cause, fix. Exit status 1 when
any check failed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

_MARK = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "fail": "[red]✗[/red]"}


def doctor_command(
    config: Path = typer.Option(..., "--config", "-c", help="the node's configuration (TOML)"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as JSON"),
) -> None:
    """Check NODE's configuration, certificate, DNS, peers and host: each finding with its
    cause and its fix."""
    from rich.console import Console
    from rich.markup import escape

    from ..config import ConfigError, load_config
    from ..diag.doctor import run_doctor

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(f"{config}: {exc}", err=True)
        raise typer.Exit(2) from None
    findings = asyncio.run(run_doctor(cfg))
    failed = any(f.level == "fail" for f in findings)
    if as_json:
        typer.echo(json.dumps([f.as_dict() for f in findings], indent=1))
    else:
        con = Console(highlight=False, soft_wrap=True)
        for f in findings:
            line = f"{_MARK[f.level]} {f.check}: {escape(f.cause)}"
            if f.fix and f.level != "ok":
                line += f"\n    fix: {escape(f.fix)}"
            con.print(line)
        con.print(f"{cfg.role} {cfg.name!r}: {sum(f.level == 'fail' for f in findings)} failed, "
                  f"{sum(f.level == 'warn' for f in findings)} warnings, {sum(f.level == 'ok' for f in findings)} ok")
    raise typer.Exit(1 if failed else 0)
