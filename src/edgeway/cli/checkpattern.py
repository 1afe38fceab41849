"""``edgeway check-pattern``: test one alias against one pattern offline (seed 003 §11
"Check pattern", Maintenance > Tools; issue 11 item 3), the way a transform or search rule
applies it. Prints "Succeeded" with the resulting alias, or "Failed" with why; exit status
0 or 1."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer


class PatternType(str, Enum):
    exact = "exact"
    prefix = "prefix"
    suffix = "suffix"
    regex = "regex"


class Behaviour(str, Enum):
    leave = "leave"
    strip = "strip"
    replace = "replace"


def check_pattern_command(
    alias: str = typer.Argument(..., help="the alias to test, e.g. bob@example.com"),
    pattern_type: PatternType = typer.Option(..., "--type", "-t", help="pattern type"),
    pattern: str = typer.Option(..., "--pattern", "-p", help="pattern string (%localdomains% allowed)"),
    behaviour: Behaviour = typer.Option(Behaviour.leave, "--behaviour", "-b", help="pattern behaviour"),
    replace: str = typer.Option("", "--replace", "-r", help="replace string (behaviour replace; \\1 for regex groups)"),
    local_domain: list[str] = typer.Option([], "--local-domain", help="a domain %localdomains% stands for (repeatable)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="take %localdomains% from this node's [sip] domains"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Test ALIAS against one pattern offline: Succeeded (and the alias after the
    behaviour) or Failed (and why)."""
    from ..routing.transforms import check_alias

    domains = list(local_domain)
    if config is not None:
        from ..config import ConfigError, load_config

        try:
            domains += load_config(config).sip.domains
        except ConfigError as exc:
            typer.echo(f"{config}: {exc}", err=True)
            raise typer.Exit(2) from None
    res = check_alias(alias, pattern_type.value, pattern, behaviour.value, replace, domains)
    if as_json:
        typer.echo(json.dumps({"alias": res.alias, "succeeded": res.succeeded, "result": res.result, "detail": res.detail}))
    elif res.succeeded:
        typer.echo(f"Succeeded: {res.detail}\nresult: {res.result}")
    else:
        typer.echo(f"Failed: {res.detail}")
    raise typer.Exit(0 if res.succeeded else 1)
