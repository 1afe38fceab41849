"""Shared by the STUN and TURN benches: turn a server's CPU samples into a rate."""

from __future__ import annotations


def analyse(samples: list[tuple[float, float, int]]) -> tuple[int, float, float]:
    """``samples``: ``(wall s, server CPU s, packets handled)`` taken while a load ran.
    Returns ``(packets, packets/s, CPU µs per packet)`` over the span in which the count
    moved (idle samples before and after are left out); NaNs when it never moved."""
    prog = [i for i in range(1, len(samples)) if samples[i][2] != samples[i - 1][2]]
    if not prog:
        return 0, float("nan"), float("nan")
    a, b = samples[prog[0] - 1], samples[prog[-1]]
    n = b[2] - a[2]
    return n, n / (b[0] - a[0]), (b[1] - a[1]) / n * 1e6


async def serve_samples(conn, count, report_extra=None) -> None:
    """In a bench's server process: sample ``(wall s, CPU s, count())`` every 10 ms and answer
    the parent over ``conn`` (a multiprocessing pipe): ``"reset"`` clears the samples,
    ``"report"`` sends them (with ``report_extra()`` as ``(samples, extra)`` when given), any
    other message ends the loop."""
    import asyncio
    import time

    samples: list[tuple[float, float, int]] = []
    loop = asyncio.get_running_loop()

    def tick() -> None:
        samples.append((time.monotonic(), time.process_time(), count()))
        loop.call_later(0.01, tick)

    tick()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "reset":
            samples.clear()
            conn.send("ok")
        elif cmd == "report":
            conn.send(list(samples) if report_extra is None else (list(samples), report_extra()))
        else:
            return


def run_loop(main, loop_kind: str) -> None:
    """Run coroutine function ``main`` on uvloop or asyncio's own loop."""
    import asyncio

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
