"""Tests for the port allocator's warm pool and its exhaustion handling.

Loopback only (127.0.0.22x); every socket, allocator pool, relay and child
process made here is closed or ended by the test; each async test is bounded
by asyncio timeouts and each child process by a subprocess timeout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from udputil import LOOP_KINDS, addr_of, nothing_on, port_range, recv, run, udp_sockets, uvloop
from edgeway.media import MediaRelay, PortAllocator, PortsExhausted
from edgeway.media import ports as ports_mod


RELAY_A, RELAY_B = "127.0.0.221", "127.0.0.222"
PARTY_A, PARTY_B, PARTY_X = "127.0.0.223", "127.0.0.224", "127.0.0.225"
SRC = str(Path(__file__).resolve().parents[1] / "src")





def can_bind(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
def udp() -> Iterator[Callable[..., socket.socket]]:
    with udp_sockets(PARTY_A) as make:
        yield make


@pytest.fixture
def fds_unchanged() -> Iterator[None]:
    """Fail the test if it leaves file descriptors open (list it before the
    fixtures that open sockets, so that it is torn down after them)."""
    if uvloop is not None:  # libuv opens two descriptors once per process
        run(lambda: asyncio.sleep(0), "uvloop")
    gc.collect()
    before = open_fds()
    yield
    gc.collect()  # event loops that were closed but not yet collected
    assert open_fds() == before


# --------------------------------------------------------------------------------------
# Warm pool


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_pool_refills_off_the_call_path_in_bounded_batches(kind, fds_unchanged):
    async def main():
        alloc = PortAllocator(RELAY_A, *port_range(64), refill_batch=2)
        try:
            alloc.pool_size = 8
            assert alloc.pooled == 0  # setting the target binds nothing synchronously
            seen = []
            for _ in range(10):
                await asyncio.sleep(0)
                seen.append(alloc.pooled)
            # At most refill_batch pairs per loop iteration, up to the target, no more.
            steps = [b - a for a, b in zip([0, *seen], seen)]
            assert max(steps) <= 2 and seen[-1] == 8 and max(seen) == 8
            ports = [p.rtp_port for p in alloc._pool]
            assert ports == sorted(ports)  # bound in the free queue's order

            # Allocation pops a pooled pair: no bind on the call path.
            binds = 0
            real_socket = alloc._socket

            def counting_socket():
                nonlocal binds
                binds += 1
                return real_socket()

            alloc._socket = counting_socket
            pairs = [alloc.allocate_pair() for _ in range(5)]
            assert binds == 0
            assert [p.rtp_port for p in pairs] == ports[:5]
            assert alloc.pooled == 3 and alloc.in_use == 5
            assert alloc.stats()["from_pool"] == 5 and alloc.stats()["bound_on_demand"] == 0
            await iterations(10)
            assert alloc.pooled == 8 and binds == 10  # refilled, two sockets per pair
            for p in pairs:
                alloc.release(p)
            await iterations(3)
            assert alloc.pooled == 8 and alloc.in_use == 0  # releases do not overfill it
            assert all(p.closed for p in pairs)  # released sockets are closed, not pooled
        finally:
            alloc.close()
        assert alloc.pooled == 0

    run(main, kind)


def test_pool_is_capped_trimmed_and_closed(fds_unchanged):
    async def main():
        lo, hi = port_range(16)
        alloc = PortAllocator(RELAY_A, lo, hi, pool_size=100)
        assert alloc.stats()["pool_target"] == 4  # at most a quarter of the range
        await iterations(5)
        assert alloc.pooled == 4
        kept = alloc.allocate_pair()
        await iterations(5)
        assert alloc.pooled == 3  # refills start below half the target
        extra = alloc.allocate_pair()
        assert alloc.pooled == 2
        alloc.release(extra)
        extra = alloc.allocate_pair()
        await iterations(5)
        assert alloc.pooled == 4  # ... and go up to the target
        alloc.release(extra)
        pooled_ports = [p.rtp_port for p in alloc._pool]
        alloc.pool_size = 1  # trimmed at once, newest first
        assert alloc.pooled == 1
        for port in pooled_ports[1:]:
            assert can_bind(RELAY_A, port) and can_bind(RELAY_A, port + 1)
        alloc.close()
        assert alloc.pooled == 0 and alloc.pool_size == 0
        assert can_bind(RELAY_A, pooled_ports[0])
        await iterations(3)
        assert alloc.pooled == 0  # closed: no more refills
        assert not kept.closed and alloc.in_use == 1  # pairs in use belong to their owner
        alloc.release(kept)
        assert alloc.free == alloc.capacity

    run(main)


def test_without_a_running_loop_pairs_are_bound_on_demand(fds_unchanged):
    alloc = PortAllocator(RELAY_A, *port_range(16), pool_size=4)
    assert alloc.pooled == 0
    pair = alloc.allocate_pair()
    assert alloc.pooled == 0 and alloc.stats()["bound_on_demand"] == 1
    assert alloc.warm() == 4  # explicit synchronous fill works without a loop
    alloc.release(pair)
    alloc.close()


def test_stale_datagrams_in_a_pooled_pair_never_reach_the_session(fds_unchanged, udp):
    """Anything sent to a pooled port before its session exists is discarded;
    otherwise its source would latch the new session (RFC 7362 §4)."""
    attacker, a_rtp, b_rtp = udp(PARTY_X), udp(PARTY_A), udp(PARTY_B)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop(), pool_size=4)
        a_alloc = PortAllocator(RELAY_A, *port_range(16))
        b_alloc = PortAllocator(RELAY_B, *port_range(16))
        try:
            assert relay.warm(a_alloc, b_alloc) == 8
            for alloc in (a_alloc, b_alloc):
                for pair in list(alloc._pool):
                    for port in (pair.rtp_port, pair.rtcp_port):
                        for _ in range(3):
                            attacker.sendto(b"stale", (alloc.ip, port))
            await asyncio.sleep(0.05)
            s = relay.open_session(a_alloc, b_alloc)
            assert a_alloc.stats()["from_pool"] == b_alloc.stats()["from_pool"] == 1
            assert a_alloc.stats()["stale_dropped"] == b_alloc.stats()["stale_dropped"] == 6
            la, lb = s.local("a"), s.local("b")
            s.set_remote("b", PARTY_B, addr_of(b_rtp)[1])
            a_rtp.sendto(b"real", (la.ip, la.rtp_port))
            assert await recv(b_rtp) == (b"real", (lb.ip, lb.rtp_port))
            await nothing_on(b_rtp)  # no "stale" after it
            st = s.stats()
            assert st["a"]["latched_rtp"] == addr_of(a_rtp)  # the party, not the attacker
            assert st["a_to_b"]["rtp_packets"] == 1 and st["dropped"] == 0
            assert st["b"]["latched_rtp"] is None
        finally:
            relay.close()
        assert a_alloc.pooled == b_alloc.pooled == 0  # the relay closed the pools

    run(main)


def test_a_late_packet_of_a_finished_call_never_reaches_the_next(fds_unchanged, udp):
    a_rtp, b_rtp = udp(PARTY_A), udp(PARTY_B)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop(), pool_size=4)
        a_alloc = PortAllocator(RELAY_A, *port_range(16))
        b_alloc = PortAllocator(RELAY_B, *port_range(16))
        try:
            relay.warm(a_alloc, b_alloc)
            first = relay.open_session(a_alloc, b_alloc)
            old = first.local("a")
            first.close()
            await iterations(5)
            nxt = relay.open_session(a_alloc, b_alloc)
            assert nxt.local("a").rtp_port != old.rtp_port
            nxt.set_remote("b", PARTY_B, addr_of(b_rtp)[1])
            a_rtp.sendto(b"late", (old.ip, old.rtp_port))  # to the finished call
            await nothing_on(b_rtp)
            assert nxt.stats()["b"]["latched_rtp"] is None
            assert nxt.stats()["a"]["latched_rtp"] is None
            assert relay.stats()["packets"] == 0
        finally:
            relay.close()

    run(main)


def test_relay_gives_its_pool_size_only_to_unconfigured_allocators(fds_unchanged):
    async def main():
        relay = MediaRelay(asyncio.get_running_loop(), pool_size=2)
        mine = PortAllocator(RELAY_A, *port_range(16))
        theirs = PortAllocator(RELAY_B, *port_range(16), pool_size=0)
        s = relay.open_session(mine, theirs)
        assert mine.pool_size == 2 and theirs.pool_size == 0
        await iterations(5)
        assert mine.pooled == 2 and theirs.pooled == 0
        s.close()
        relay.close()
        assert mine.pooled == 0 and mine.in_use == theirs.in_use == 0
        with pytest.raises(RuntimeError):
            relay.warm(mine)

    run(main)


def test_refill_errors_stay_out_of_the_event_loop(fds_unchanged):
    """A refill that cannot bind (address not local) records the error for
    stats; the call path raises it to the caller; the loop never sees it."""

    async def main():
        loop = asyncio.get_running_loop()
        errors: list = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        alloc = PortAllocator("192.0.2.1", *port_range(16), pool_size=4)  # TEST-NET-1
        await iterations(3)
        assert alloc.pooled == 0 and "192.0.2.1" in alloc.stats()["last_error"]
        with pytest.raises(OSError) as info:
            alloc.allocate_pair()
        assert not isinstance(info.value, PortsExhausted)
        assert alloc.free == alloc.capacity  # nothing lost on the way
        await iterations(3)
        alloc.close()
        assert errors == []

    run(main)


# --------------------------------------------------------------------------------------
# Exhaustion: fast and cheap


def _median_us(fn: Callable[[], object], n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with pytest.raises(PortsExhausted):
            fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times), max(times)


def test_whole_range_taken_by_other_sockets_fails_fast_without_probing(fds_unchanged, udp):
    lo, hi = port_range(2)  # 4 ports, all held by someone else
    for port in range(lo, hi + 1):
        udp(RELAY_A, port)
    alloc = PortAllocator(RELAY_A, lo, hi)
    t0 = time.perf_counter()
    with pytest.raises(PortsExhausted) as info:
        alloc.allocate_pair()
    first_ms = (time.perf_counter() - t0) * 1e3
    assert first_ms < 5.0
    assert f"{RELAY_A} in {lo}-{hi}" in str(info.value) and "taken by other processes" in str(info.value)
    assert alloc.taken == 2 and alloc.free == 0

    probes = _count_socket_calls(alloc)
    median_us, worst_us = _median_us(alloc.allocate_pair, 500)
    assert probes[0] == 0  # known without a scan: the taken pairs are not probed again
    assert median_us < 100 and worst_us < 5000, (median_us, worst_us)
    err = info.value
    assert err.reason == "taken" and (err.ip, err.port_min, err.port_max) == (RELAY_A, lo, hi)
    with pytest.raises(PortsExhausted) as again:
        alloc.allocate_pair()
    assert again.value.reason == "range" and "all 2 pairs" in str(again.value)


def _count_socket_calls(alloc: PortAllocator) -> list[int]:
    """Count the sockets ``alloc`` makes from now on (``[count]``, updated in place)."""
    probes = [0]
    real_socket = alloc._socket

    def counting_socket():
        probes[0] += 1
        return real_socket()

    alloc._socket = counting_socket
    return probes


def test_range_in_use_fails_in_constant_time(fds_unchanged):
    lo, hi = port_range(300)
    alloc = PortAllocator(RELAY_B, lo, hi)
    pairs = [alloc.allocate_pair() for _ in range(alloc.capacity)]
    try:
        probes = _count_socket_calls(alloc)
        median_us, worst_us = _median_us(alloc.allocate_pair, 500)
        assert probes[0] == 0
        assert median_us < 100 and worst_us < 5000, (median_us, worst_us)
        alloc.release(pairs.pop(0))  # recovery: a released pair is found at once
        pairs.append(alloc.allocate_pair())
        assert probes[0] == 2
    finally:
        for p in pairs:
            alloc.release(p)
    assert alloc.in_use == 0 and alloc.free == alloc.capacity


_HOLDER = textwrap.dedent(
    """
    import socket, sys
    held = []
    for port in map(int, sys.argv[2:]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((sys.argv[1], port))
        held.append(s)
    print("ready", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
    """
)


@pytest.fixture
def holder() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a child process that binds the given UDP ports until stopped."""
    procs: list[subprocess.Popen] = []

    def start(ip: str, ports: list[int]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, ip, *map(str, ports)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()


def test_ports_taken_by_another_process_are_skipped_and_retried_later(
    fds_unchanged, holder, monkeypatch
):
    lo, hi = port_range(64)
    # Another process holds the first 36 pairs (whole) and the RTCP port of pair 37.
    blocked = list(range(lo, lo + 72)) + [lo + 73]
    proc = holder(RELAY_A, blocked)
    monkeypatch.setattr(ports_mod, "TAKEN_RETRY_S", 0.2)
    alloc = PortAllocator(RELAY_A, lo, hi)
    pairs = []
    try:
        # Probing is bounded per call: the first call gives up after
        # CALL_PATH_BIND_ATTEMPTS attempts rather than sweeping the range.
        with pytest.raises(PortsExhausted) as info:
            alloc.allocate_pair()
        assert info.value.reason == "taken"
        assert alloc.taken == ports_mod.CALL_PATH_BIND_ATTEMPTS == 32
        pairs.append(alloc.allocate_pair())
        assert pairs[0].rtp_port == lo + 74
        assert alloc.taken == 37
        assert can_bind(RELAY_A, lo + 72)  # RTP socket of the half-taken pair was closed
        # Later calls start past the taken pairs: no re-probing on every call.
        taken_found = alloc.stats()["taken_found"]
        pairs += [alloc.allocate_pair() for _ in range(5)]
        assert alloc.stats()["taken_found"] == taken_found
        assert [p.rtp_port for p in pairs] == [lo + 74 + 2 * i for i in range(6)]

        stop(proc)  # the other process goes away; after the retry period the
        time.sleep(0.25)  # set-aside pairs are tried again
        rest = alloc.capacity - len(pairs)
        pairs += [alloc.allocate_pair() for _ in range(rest)]
        assert alloc.in_use == alloc.capacity and alloc.taken == 0
        assert sorted(p.rtp_port for p in pairs) == list(range(lo, hi, 2))
    finally:
        for p in pairs:
            alloc.release(p)


_EMFILE_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys, time
    from edgeway.media import MediaRelay, PortAllocator, PortsExhausted

    ip, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = {}

    def nfds():
        return len(os.listdir("/proc/self/fd"))

    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda _l, ctx: errors.append(str(ctx.get("message"))))
        relay = MediaRelay(loop, pool_size=8)
        a = PortAllocator(ip, lo, hi)
        base = nfds()
        # Room for a few sockets only; the pool's refill will hit the limit too.
        resource.setrlimit(resource.RLIMIT_NOFILE, (base + 6, base + 6))
        sessions = []
        try:
            while True:
                sessions.append(relay.open_session(a, a))
                await asyncio.sleep(0)
        except PortsExhausted as exc:
            out["reason"] = exc.reason
            out["message"] = str(exc)
            out["cause"] = type(exc.__cause__).__name__
        out["sessions"] = len(sessions)
        times, got = [], []
        for _ in range(200):
            t0 = time.perf_counter()
            try:
                got.append(a.allocate_pair())  # the failed session's pair freed 2 fds
            except PortsExhausted:
                times.append(time.perf_counter() - t0)
        times.sort()
        out["failures"] = len(times)
        out["median_us"] = times[len(times) // 2] * 1e6
        out["free_before_release"] = a.free
        for pair in got:
            a.release(pair)
        for _ in range(5):
            await asyncio.sleep(0)
        sessions.pop().close()  # recovery once descriptors are released
        sessions.append(relay.open_session(a, a))
        out["recovered"] = True
        relay.close()
        out["in_use_after"] = a.in_use
        out["pooled_after"] = a.pooled
        out["fds_leaked"] = nfds() - base
        out["loop_errors"] = errors
        out["free_after"] = a.free
        out["capacity"] = a.capacity

    asyncio.run(main())
    print(json.dumps(out))
    """
)


def test_emfile_raises_ports_exhausted_fast_and_recovers(fds_unchanged):
    lo, hi = port_range(64)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", _EMFILE_CHILD, RELAY_A, str(lo), str(hi)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["reason"] == "EMFILE" and out["cause"] == "OSError"
    assert f"{RELAY_A} in {lo}-{hi}" in out["message"] and "EMFILE" in out["message"]
    assert out["sessions"] >= 1 and out["failures"] >= 195
    assert out["median_us"] < 200, out["median_us"]  # one failed socket(), no sweep
    assert out["free_before_release"] > 50  # the range was not consumed by the failures
    assert out["recovered"]
    assert out["in_use_after"] == out["pooled_after"] == out["fds_leaked"] == 0
    assert out["free_after"] == out["capacity"]
    assert out["loop_errors"] == []


def test_relay_lifecycle_leaves_no_descriptor_open(fds_unchanged, udp):
    a_rtp, b_rtp = udp(PARTY_A), udp(PARTY_B)

    async def main():
        relay = MediaRelay(asyncio.get_running_loop())  # the default pool size
        a_alloc = PortAllocator(RELAY_A, *port_range(200))
        b_alloc = PortAllocator(RELAY_B, *port_range(200))
        sessions = []
        for i in range(40):
            s = relay.open_session(a_alloc, b_alloc, label=f"c{i}")
            sessions.append(s)
            if i % 3 == 0:
                sessions.pop(0).close()
            await asyncio.sleep(0)
        s = sessions[-1]
        s.set_remote("b", PARTY_B, addr_of(b_rtp)[1])
        a_rtp.sendto(b"ok", (s.local("a").ip, s.local("a").rtp_port))
        assert (await recv(b_rtp))[0] == b"ok"
        assert a_alloc.stats()["from_pool"] > 30
        relay.close()
        assert a_alloc.pooled == b_alloc.pooled == 0
        assert a_alloc.in_use == b_alloc.in_use == 0
        assert a_alloc.free == a_alloc.capacity and b_alloc.free == b_alloc.capacity

    run(main)


def test_refill_maps_a_taken_block_off_the_call_path(fds_unchanged, holder):
    """A call that gives up on a block of taken ports leaves the refill probing
    the rest in bounded ticks; a later call then gets a pooled pair."""
    lo, hi = port_range(128)
    holder(RELAY_A, list(range(lo, lo + 160)))  # the first 80 pairs

    async def main():
        alloc = PortAllocator(RELAY_A, lo, hi, pool_size=4, refill_batch=2)
        try:
            with pytest.raises(PortsExhausted):
                alloc.allocate_pair()  # the refill starts from the same block
            for _ in range(100):
                if alloc.pooled:
                    break
                await asyncio.sleep(0)
            assert alloc.taken == 80
            pair = alloc.allocate_pair()
            assert pair.rtp_port == lo + 160 and alloc.stats()["from_pool"] == 1
            alloc.release(pair)
        finally:
            alloc.close()

    run(main)
