"""``edgeway call`` through a running ``edgeway lab up``, in each direction.

    outside 127.0.0.5 → edge 127.0.0.2:5060/udp ═ traversal ═ core → alice 127.0.0.4:5060/tcp
    inside  127.0.0.4 → core 127.0.0.3:5060/tcp ═ traversal ═ edge → bob 127.0.0.5:5060/udp

``lab up`` runs no phones, so each test answers with a :class:`~edgeway.ua.UserAgent`
in the test's event loop at the lab's address of the callee, and runs ``edgeway call``
as a process (its exit status is what is checked). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from edgeway.ua import UserAgent

INSIDE, OUTSIDE, EDGE, CORE = "127.0.0.4", "127.0.0.5", "127.0.0.2", "127.0.0.3"


async def _edgeway_call(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeway", "call", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "160"})
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except asyncio.TimeoutError:
        proc.kill()
        raise
    return proc.returncode, out.decode(errors="replace")


async def _call_with_callee(callee: UserAgent, *args: str, answer_status: int = 200) -> tuple[int, str, object]:
    callee.answer_status = answer_status
    async with callee:
        status, out = await _edgeway_call(*args)
        await asyncio.sleep(0.2)
        stats = next(iter(callee.calls_received.values()), None)
    return status, out, stats


def _assert_passed(status: int, out: str, stats) -> None:
    assert status == 0, out
    assert "PASS" in out and "200 OK (INVITE)" in out and "200 OK (BYE)" in out, out
    for first in ("→", "←"):
        assert f" {first} " in out, out
    assert stats is not None and stats.answered and stats.ended and stats.rtp_received > 0, stats


@pytest.mark.parametrize(("callee_args", "uri", "via", "transport", "bind", "caller"), [
    # outside → edge → core → alice (inside)
    (("alice", INSIDE, 5060, "tcp", "corp.edgeway.test"), "sip:alice@corp.edgeway.test", EDGE, "udp", OUTSIDE,
     ("bob", "partner.edgeway.test")),
    # inside → core → edge → bob (outside)
    (("bob", OUTSIDE, 5060, "udp", "partner.edgeway.test"), "sip:bob@partner.edgeway.test", CORE, "tcp", INSIDE,
     ("alice", "corp.edgeway.test")),
], ids=["outside-to-inside-through-the-edge", "inside-to-outside-through-the-core"])
def test_call_through_the_pair(lab, callee_args, uri, via, transport, bind, caller) -> None:
    name, ip, port, callee_transport, domain = callee_args
    callee = UserAgent(name, ip, port, transport=callee_transport, domain=domain)
    status, out, stats = asyncio.run(_call_with_callee(
        callee, uri, "--via", f"{via}:5060", "--transport", transport, "--bind", bind,
        "--from", caller[0], "--domain", caller[1], "--duration", "1.5"))
    _assert_passed(status, out, stats)
    assert f"{via}:5060 ({transport}) INVITE {uri}" in out, out
    assert "SRTP: no" in out


def test_rejected_call_exits_nonzero(lab) -> None:
    alice = UserAgent("alice", INSIDE, 5060, transport="tcp", domain="corp.edgeway.test")
    status, out, _stats = asyncio.run(_call_with_callee(
        alice, "sip:alice@corp.edgeway.test", "--via", f"{EDGE}:5060", "--bind", OUTSIDE, "--duration", "0.5",
        answer_status=486))
    assert status == 1, out
    assert "486 Busy Here" in out and "FAIL" in out, out
