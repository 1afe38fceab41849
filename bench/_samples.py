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
