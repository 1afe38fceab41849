"""Transport layer behaviour over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest
import uvloop

from edgeway.transport.layer import TransportLayer

OPTIONS = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKstale1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\n"
    b"Call-ID: stale1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@contextlib.asynccontextmanager
async def _connected(discard: bool):
    """A TransportLayer connected to a plain listener: (layer, connection, the peer's
    socket, the messages delivered so far)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    tl = TransportLayer()
    got: list = []
    tl.on_message = lambda msg, src: got.append(msg)
    try:
        conn = await tl.connect("tcp", "127.0.0.1", srv.getsockname()[1])
        conn.discard_after_peer_close = discard
        peer, _ = srv.accept()
        yield tl, conn, peer, got
    finally:
        srv.close()
        await tl.close()


async def _until(pred, seconds: float = 1.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)


def _run(run, reset: bool, discard: bool) -> tuple[list, bool, str | None]:
    """The peer writes one request and (when ``reset``) resets the connection before the
    loop gets to read it. Returns what was delivered, whether the connection ended, and
    its close reason."""

    async def scenario():
        async with _connected(discard) as (_tl, conn, peer, got):
            # No await between these lines: the loop cannot read before the reset lands,
            # as when this process is stopped (SIGSTOP) while the peer gives up on it.
            peer.sendall(OPTIONS)
            if reset:
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            await _until(lambda: conn.closed)
            return got, conn.closed, conn.attrs.get("close_reason")

    return run(asyncio.wait_for(scenario(), 10))


@LOOPS
def test_data_behind_a_reset_is_discarded(run) -> None:
    got, closed, reason = _run(run, reset=True, discard=True)
    assert got == [] and closed
    assert reason and "discarded" in reason


@LOOPS
def test_data_behind_a_reset_is_read_without_the_flag(run) -> None:
    # The control: the same bytes are delivered when the connection does not ask for it,
    # so the test above cannot pass merely because the reset lost the data.
    got, closed, _ = _run(run, reset=True, discard=False)
    assert [m.method for m in got] == ["OPTIONS"] and closed


@LOOPS
def test_data_on_a_live_connection_is_read_with_the_flag(run) -> None:
    async def scenario():
        async with _connected(True) as (_tl, conn, peer, got):
            peer.sendall(OPTIONS)
            await _until(lambda: bool(got))
            alive = not conn.peer_gone()
            peer.close()
            return got, alive

    got, alive = run(asyncio.wait_for(scenario(), 10))
    assert [m.method for m in got] == ["OPTIONS"] and alive
