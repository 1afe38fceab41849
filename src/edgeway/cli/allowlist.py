"""``edgeway allowlist import|test``: the HTTP allow-list CSV files of seed 002 §8.7–§8.8.

``import RULES.csv [-c node.toml]`` validates each rule row, prints pass/fail per row with the
reason, then prints the accepted rules as ``[[mra.allow_rules]]`` TOML for a node configuration.
Exit 0 when every row is accepted, 1 when a row is not, 2 when the file is unusable.

``test TESTS.csv [--rules RULES.csv] [-c node.toml]`` runs each test row against the allow list
(the node's ``[mra]`` section, plus the rules file's valid rules) and prints pass/fail per row.
Exit 0 only when every row gives its expected result.

Without ``-c`` the deployments are the default deployment plus every deployment the files name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

allowlist_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="HTTP allow list (MRA): import and test the seed 002 CSV files.")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"{path}: cannot read: {exc}", err=True)
        raise typer.Exit(2)


def _mra(config: Path | None):
    if config is None:
        return None
    from ..config import ConfigError, load_config

    try:
        return load_config(config).mra
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        style = "green" if r[1] == "pass" else "red"
        table.add_row(*(Text(cell, style=style if i == 1 else "") for i, cell in enumerate(r)))
    return table


@allowlist_app.command("import")
def import_rules(
    rules: Path = typer.Argument(..., help="rules CSV: Url,Deployment,HttpMethods,MatchType,Description"),
    config: Path = typer.Option(None, "-c", "--config", help="node TOML whose [mra] deployments the rules must use"),
) -> None:
    """Validate a rules CSV (seed 002 §8.7); print pass/fail per row and the accepted rules as TOML."""
    from ..mra.allowlist_csv import RULES_HEADER, CsvFormatError, deployments_named, read_rules_csv, rules_to_toml

    text, mra = _read(rules), _mra(config)
    try:
        deployments = mra.deployment_names if mra else deployments_named(text, RULES_HEADER, "Deployment")
        rows = read_rules_csv(text, deployments)
    except CsvFormatError as exc:
        typer.echo(f"{rules}: {exc}", err=True)
        raise typer.Exit(2)
    _console().print(_table(f"{rules}: {sum(r.ok for r in rows)} of {len(rows)} rules accepted",
                            ["line", "result", "Url", "rule / reason"],
                            [[str(r.line), "pass" if r.ok else "fail", r.fields[0] if r.fields else "",
                              f"{r.rule.match} {r.rule.url} [{r.rule.deployment}]" if r.rule else r.reason]
                             for r in rows]))
    accepted = [r.rule for r in rows if r.rule is not None]
    typer.echo("")
    typer.echo(rules_to_toml(accepted, None if mra else deployments).rstrip("\n"))
    if not all(r.ok for r in rows):
        raise typer.Exit(1)


@allowlist_app.command("test")
def test_rules(
    tests: Path = typer.Argument(..., help="tests CSV: Url,ExpectedResult,Deployment,Description,HttpMethod"),
    rules: Path = typer.Option(None, "--rules", help="rules CSV added after the node's rules"),
    config: Path = typer.Option(None, "-c", "--config", help="node TOML with the [mra] allow list"),
) -> None:
    """Run a tests CSV (seed 002 §8.8) against the allow list; exit 0 only when every row passes."""
    from ..mra.allowlist import AllowList
    from ..mra.allowlist_csv import (
        RULES_HEADER,
        TESTS_HEADER,
        CsvFormatError,
        deployments_named,
        read_rules_csv,
        read_tests_csv,
        run_tests,
    )

    if rules is None and config is None:
        typer.echo("give the rules: --rules RULES.csv and/or -c node.toml", err=True)
        raise typer.Exit(2)
    tests_text, mra = _read(tests), _mra(config)
    rules_text = _read(rules) if rules is not None else None
    try:
        if mra is not None:
            allow_list = AllowList.from_config(mra)
        else:
            named = deployments_named(rules_text, RULES_HEADER, "Deployment") if rules_text else []
            named += deployments_named(tests_text, TESTS_HEADER, "Deployment")
            allow_list = AllowList(deployments=tuple(named))
        problems = 0
        if rules_text is not None:
            for row in read_rules_csv(rules_text, allow_list.deployments):
                if row.rule is None:
                    problems += 1
                    typer.echo(f"{rules}: line {row.line}: rule skipped: {row.reason}", err=True)
                else:
                    allow_list.add(row.rule)
        outcomes = run_tests(allow_list, read_tests_csv(tests_text, allow_list.deployments))
    except CsvFormatError as exc:
        typer.echo(f"{exc}", err=True)
        raise typer.Exit(2)
    passed = sum(o.passed for o in outcomes)
    _console().print(_table(f"{tests}: {passed} of {len(outcomes)} tests passed ({len(allow_list.rules)} rules)",
                            ["line", "result", "test", "outcome"],
                            [[str(o.test.line), "pass" if o.passed else "fail",
                              f"{o.test.method} {o.test.url} [{o.test.deployment}] {o.test.description}".rstrip(),
                              o.reason] for o in outcomes]))
    if passed != len(outcomes) or problems:
        raise typer.Exit(1)
