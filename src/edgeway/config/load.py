"""Load and validate a node's TOML configuration file (DESIGN §2)."""

from __future__ import annotations

import tomllib
from os import PathLike
from typing import Any

from pydantic import ValidationError

from edgeway.config.models import MISSING as _MISSING
from edgeway.config.models import ConfigProblems, NodeConfig

__all__ = ["ConfigError", "load_config", "parse_config"]


class ConfigError(Exception):
    """Invalid or unreadable configuration; ``str(err)`` is the full message.

    From :func:`parse_config` the message is a header line naming the source
    followed by one line per problem, ``  <key path> = <value>: <rule>``, e.g.
    ``  zones[2].port = 70000: must be between 1 and 65535`` (no ``= value``
    for a missing key); ``problems`` holds the same as ``(key, value, rule)``
    tuples (value is ``None`` for a missing key)."""

    def __init__(self, message: str, problems: list[tuple[str, Any, str]] | None = None):
        super().__init__(message)
        self.problems = [(k, None if v is _MISSING else v, r) for k, v, r in problems or []]

    @classmethod
    def from_problems(cls, source: str, problems: list[tuple[str, Any, str]]) -> ConfigError:
        """Build the multi-line message described above."""
        lines = [f"invalid configuration in {source}:"]
        for key, value, rule in problems:
            lines.append(f"  {key}: {rule}" if value is _MISSING else f"  {key} = {value!r}: {rule}")
        return cls("\n".join(lines), problems)


def _path(loc: tuple[Any, ...], data: Any) -> str:
    """``('zones', 2, 'neighbour', 'port')`` → ``zones[2].port``: walk the input
    alongside ``loc`` and drop discriminated-union tags (the zone ``type``). A field of an
    entry written as a plain string (``mra.domains = ["a.example"]`` stands for
    ``{name = "a.example"}``) is reported as the entry itself: ``mra.domains[0]``."""
    out, node = "", data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, str):
            break
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        out += f".{part}" if out else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return out


def _join(base: str, rel: str) -> str:
    return f"{base}.{rel}" if base else rel


def _problems(exc: ValidationError, data: dict[str, Any]) -> list[tuple[str, Any, str]]:
    out: list[tuple[str, Any, str]] = []
    for err in exc.errors():
        key, ctx, kind = _path(err["loc"], data), err.get("ctx") or {}, err["type"]
        if isinstance(ctx.get("error"), ConfigProblems):
            out += [(_join(key, k), v, r) for k, v, r in ctx["error"].problems]
        elif kind == "missing":
            out.append((key, _MISSING, "is required"))
        elif kind == "extra_forbidden":
            out.append((key, err["input"], "is not a known key"))
        elif kind == "union_tag_invalid":
            out.append((_join(key, "type"), ctx["tag"], f"must be one of {ctx['expected_tags']}"))
        elif kind == "union_tag_not_found":
            out.append((_join(key, "type"), _MISSING, "is required"))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append((key, err["input"], msg[0].lower() + msg[1:] if msg[:1].isupper() else msg))
    return out


def parse_config(data: dict[str, Any], source: str = "<config>") -> NodeConfig:
    """Validate a decoded TOML document into a :class:`NodeConfig`.

    ``source`` names the document in error messages. Raises
    :class:`ConfigError` listing every problem (key path, value, rule)."""
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_problems(source, _problems(exc, data)) from None


def load_config(path: str | PathLike[str]) -> NodeConfig:
    """Read and validate the TOML file at ``path``. Raises
    :class:`ConfigError` when it cannot be read, is not valid TOML, or fails
    validation."""
    src = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {src}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {src}: {exc}") from None
    return parse_config(data, src)
