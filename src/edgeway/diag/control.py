"""A node's local control socket: one JSON object per line in, one per line out, over a
Unix-domain socket only the node's user can reach (mode 0600). Commands are names the
node registers with a handler ``(request dict) -> response dict``; an unknown command
or a handler error is answered ``{"ok": false, "error": ...}``. Used by ``edgeway
blocked list|unblock`` (issue 9 item 8); the status and reload commands of issue 11
belong here too.

Request: ``{"cmd": "<name>", ...}``. Response: ``{"ok": true, ...}`` or
``{"ok": false, "error": "<text>"}``. A line is at most :data:`MAX_LINE` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import inspect
from collections.abc import Callable
from typing import Any
from pathlib import Path

__all__ = ["ControlServer", "request", "ControlError", "MAX_LINE"]

MAX_LINE = 64 * 1024

#: ``(request) -> response``, or a coroutine function answering later (``locate`` looks
#: names up in DNS).
Handler = Callable[[dict], Any]


class ControlError(RuntimeError):
    """The control socket could not be reached or answered nonsense."""


class ControlServer:
    """Serves ``handlers`` (command name → handler) on the Unix socket ``path``."""

    def __init__(self, path: str | os.PathLike, handlers: dict[str, Handler]):
        self.path = Path(path)
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left over from a node that did not stop cleanly
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = self.answer(line)
                if inspect.isawaitable(answer):
                    try:
                        answer = {"ok": True, **await answer}
                    except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
                        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    def answer(self, line: bytes) -> Any:
        """The response to one request line (an awaitable of the handler's dict when the
        handler is a coroutine function)."""
        try:
            req = json.loads(line)
            cmd = req["cmd"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": 'a request is one JSON object with "cmd"'}
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r} (known: {', '.join(sorted(self.handlers))})"}
        try:
            out = handler(req)
            if inspect.isawaitable(out):
                return out
            return {"ok": True, **out}
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: str | os.PathLike, cmd: str, timeout_s: float = 5.0, **fields) -> dict:
    """Send one command to the control socket at ``path`` and return the response
    (blocking; for the command line). Raises ControlError when it cannot be reached."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(MAX_LINE)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(buf)
    except ValueError:
        raise ControlError(f"control socket {path}: not a JSON answer") from None
