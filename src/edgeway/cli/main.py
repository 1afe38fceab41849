"""The ``edgeway`` command line (typer): run a node, check a config, run the lab."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import typer

from ..runtime import GcPolicy, install_event_loop_policy

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Edgeway collaboration edge: core/edge traversal pair.")




def _load(path: Path, role: str | None):
    from ..config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    if role is not None and cfg.role != role:
        typer.echo(f"{path}: role = {cfg.role!r}, but this command runs the {role}", err=True)
        raise typer.Exit(2)
    return cfg


def run_node(cfg, config_path: str | None = None) -> None:
    """Run a node until SIGINT/SIGTERM; SIGHUP reloads ``config_path`` (issue 11 item 7)."""
    from ..node import Node

    install_event_loop_policy()

    async def main() -> None:
        node = Node(cfg, config_path=config_path)
        await node.start()
        loop = asyncio.get_running_loop()
        gc_policy = GcPolicy()
        gc_policy.start(loop)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def hup() -> None:
            try:
                node.reload_file()
            except ValueError:
                pass  # refused: the node logged why ("config reload refused")

        loop.add_signal_handler(signal.SIGHUP, hup)
        profile = os.environ.get("EDGEWAY_PROFILE")  # bench/: a cProfile dump of the running node
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        await stop.wait()
        if profile:
            prof.disable()
            prof.dump_stats(f"{profile}.{cfg.name}")
        gc_policy.stop()
        await node.close()

    asyncio.run(main())


@app.command()
def edge(config: Path = typer.Option(..., "-c", "--config", help="edge TOML configuration")) -> None:
    """Run an edge node (traversal server, DMZ side)."""
    run_node(_load(config, "edge"), str(config))


@app.command()
def core(config: Path = typer.Option(..., "-c", "--config", help="core TOML configuration")) -> None:
    """Run a core node (traversal client, inside)."""
    run_node(_load(config, "core"), str(config))


@app.command()
def media(config: Path = typer.Option(..., "-c", "--config", help="media node TOML configuration")) -> None:
    """Run a media node (STUN, TURN and relay only: a target of edgeway probe, seed 004)."""
    run_node(_load(config, "media"), str(config))


@app.command("check-config")
def check_config(config: Path) -> None:
    """Validate a node configuration; print every problem (key, value, rule)."""
    cfg = _load(config, None)
    typer.echo(f"{config}: OK ({cfg.role} {cfg.name!r}, {len(cfg.zones)} zones, {len(cfg.search_rules)} search rules)")


def _register_call() -> None:
    from .call import call_command

    app.command("call")(call_command)


_register_call()


def _register_check_pattern() -> None:
    from .checkpattern import check_pattern_command

    app.command("check-pattern")(check_pattern_command)


_register_check_pattern()


def _register_doctor() -> None:
    from .doctor import doctor_command

    app.command("doctor")(doctor_command)


_register_doctor()


def _register_locate() -> None:
    from .locate import locate_command

    app.command("locate")(locate_command)


_register_locate()


def _register_history() -> None:
    from .history import history_app

    app.add_typer(history_app, name="history")


_register_history()


def _register_reload() -> None:
    from .reload import reload_command

    app.command("reload")(reload_command)


_register_reload()


def _register_log_level() -> None:
    from .loglevel import log_level_command

    app.command("log-level")(log_level_command)


_register_log_level()


def _register_diag() -> None:
    from .diag import diag_app

    app.add_typer(diag_app, name="diag")


_register_diag()


def _register_domain() -> None:
    from .domain import domain_app

    app.add_typer(domain_app, name="domain")


_register_domain()


def _register_lab() -> None:
    from ..lab.cli import lab_app

    app.add_typer(lab_app, name="lab")


_register_lab()


def _register_blocked() -> None:
    from .blocked import blocked_app, maintenance_app

    app.add_typer(blocked_app, name="blocked")
    app.add_typer(maintenance_app, name="maintenance")


_register_blocked()


def _register_allowlist() -> None:
    from .allowlist import allowlist_app

    app.add_typer(allowlist_app, name="allowlist")


_register_allowlist()


def _register_probe() -> None:
    from .probe import probe_command

    app.command("probe")(probe_command)


_register_probe()
