"""Loopback UDP helpers shared by the relay and SRTP tests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable, Iterator

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a Linux dependency
    uvloop = None

#: The event loops the relay is tested on.
LOOP_KINDS = ["uvloop", "asyncio"] if uvloop is not None else ["asyncio"]


def run(coro_fn: Callable, kind: str = "uvloop", timeout: float = 5.0):
    """Run ``coro_fn()`` on a fresh event loop of the given kind, bounded."""
    factory = asyncio.new_event_loop
    if kind == "uvloop" and uvloop is not None:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro_fn(), timeout))


def port_range(n_pairs: int) -> tuple[int, int]:
    """A random even-aligned range of ``n_pairs`` RTP/RTCP pairs below the kernel's
    ephemeral ports."""
    base = random.randrange(20000, 30000 - 2 * n_pairs, 2)
    return base, base + 2 * n_pairs - 1


@contextlib.contextmanager
def udp_sockets(default_ip: str) -> Iterator[Callable[..., socket.socket]]:
    """A factory of non-blocking UDP sockets bound to ``default_ip`` (or the ip given),
    port 0 by default; every socket made is closed on exit."""
    opened: list[socket.socket] = []

    def make(ip: str = default_ip, port: int = 0) -> socket.socket:
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        opened.append(s)
        s.setblocking(False)
        s.bind((ip, port))
        return s

    try:
        yield make
    finally:
        for s in opened:
            s.close()


async def recv(sock: socket.socket, timeout: float = 1.0) -> tuple[bytes, tuple]:
    """Await one datagram on a non-blocking socket (works with any loop)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def on_readable() -> None:
        if fut.done():
            return
        try:
            fut.set_result(sock.recvfrom(65536))
        except BlockingIOError:
            pass

    loop.add_reader(sock.fileno(), on_readable)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(sock.fileno())


async def nothing_on(*socks: socket.socket, wait: float = 0.15) -> None:
    """Assert that none of ``socks`` receives anything within ``wait`` seconds."""
    await asyncio.sleep(wait)
    for s in socks:
        with pytest.raises(BlockingIOError):
            s.recvfrom(65536)


def addr_of(sock: socket.socket) -> tuple[str, int]:
    """``(host, port)`` a socket is bound to."""
    host, port = sock.getsockname()[:2]
    return host, port
