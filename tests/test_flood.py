"""Per-source flood control (edgeway.security.flood.SourceTable), sans-IO."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeway.security.flood import BLOCK, BLOCKED, DROP, LIMIT, OK, SourceTable


def test_burst_then_one_limit_then_drops() -> None:
    t = SourceTable(10, 5, block_after_s=0)
    verdicts = [t.check("192.0.2.1", 0.0) for _ in range(8)]
    assert verdicts == [OK] * 5 + [LIMIT, DROP, DROP]
    assert t.stats == {"limited": 1, "dropped": 2, "blocks": 0}
    # Another source is not affected.
    assert t.check("192.0.2.2", 0.0) == OK


def test_refill_at_the_rate() -> None:
    t = SourceTable(10, 5, block_after_s=0)
    for _ in range(5):
        assert t.check("192.0.2.1", 0.0) == OK
    assert t.check("192.0.2.1", 0.05) == LIMIT  # half a token
    assert t.check("192.0.2.1", 0.15) == OK  # one token back after 0.1 s
    assert t.check("192.0.2.1", 0.15) == DROP  # same episode: no second 503


def test_episode_ends_after_a_quiet_second() -> None:
    t = SourceTable(10, 5, block_after_s=0)
    for _ in range(5):
        t.check("192.0.2.1", 0.0)
    assert t.check("192.0.2.1", 0.0) == LIMIT
    assert t.over_limit("192.0.2.1", 0.5)
    assert not t.over_limit("192.0.2.1", 1.5)
    assert t.check("192.0.2.1", 1.5) == OK  # ends the episode
    for _ in range(4):
        t.check("192.0.2.1", 1.5)
    assert t.check("192.0.2.1", 1.5) == LIMIT  # a new episode: one 503 again


def test_sustained_flood_blocks_then_unblocks() -> None:
    t = SourceTable(10, 5, block_after_s=2.0, block_s=3.0)
    now, seen = 0.0, []
    while now < 2.5:
        seen.append(t.check("192.0.2.9", now))
        now += 0.001  # 1,000 requests/s against a limit of 10/s
    assert seen.count(LIMIT) == 1 and seen.count(BLOCK) == 1
    assert seen[seen.index(BLOCK) + 1:] == [BLOCKED] * (len(seen) - seen.index(BLOCK) - 1)
    assert 2.0 <= seen.index(BLOCK) * 0.001 < 2.1
    assert t.blocked("192.0.2.9", 3.0) and list(t.blocked_sources(3.0)) == ["192.0.2.9"]
    # Under the limit, the admitted share stays at about the rate (plus the burst).
    assert 5 + 10 * 2.0 - 1 <= seen.count(OK) <= 5 + 10 * 2.1 + 1
    assert t.check("192.0.2.9", 2.0 + 3.0 + 0.1) == OK  # the block expired: a full bucket again
    assert not t.blocked("192.0.2.9", 5.2)


def test_exempt_networks_and_off() -> None:
    t = SourceTable(1, 1, exempt=["10.0.0.0/8", "2001:db8::/32"])
    assert all(t.check("10.1.2.3", 0.0) == OK for _ in range(50))
    assert all(t.check("2001:db8::1", 0.0) == OK for _ in range(50))
    assert len(t) == 0
    off = SourceTable(0, 1)
    assert all(off.check("192.0.2.1", 0.0) == OK for _ in range(50))


def test_table_is_bounded_and_keeps_blocked_sources_first() -> None:
    t = SourceTable(1, 2, block_after_s=0.5, block_s=100, max_sources=100)
    for i in range(10):
        t.check("198.51.100.1", i * 0.1)  # over its limit from the third on
    assert t.blocked("198.51.100.1", 1.0)
    for i in range(5000):  # spoofed sources, each seen once, long after
        t.check(f"10.{i // 250}.{i % 250}.1", 10.0 + i * 0.001)
        assert len(t) <= 100
    assert t.blocked("198.51.100.1", 50.0)  # unblocked entries went first


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 0.5)), max_size=300),
       st.floats(1, 100), st.floats(1, 50))
def test_admitted_never_exceeds_burst_plus_rate(events, rate, burst) -> None:
    """Over any run, each source is admitted at most burst + rate × elapsed requests."""
    t = SourceTable(rate, burst, block_after_s=1.0, block_s=1.0)
    now = 0.0
    admitted = [0, 0, 0, 0]
    for src, dt in events:
        now += dt
        if t.check(f"192.0.2.{src}", now) == OK:
            admitted[src] += 1
    for n in admitted:
        assert n <= max(burst, 1.0) + rate * now + 1
