"""The node's memory schedule (edgeway.runtime.GcPolicy)."""

from __future__ import annotations

import asyncio

from edgeway.runtime import GcPolicy, rss_bytes


def test_growth_triggers_a_full_collection_and_trim() -> None:
    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        g = GcPolicy(freeze_s=0.1, memory_check_s=0.2)
        g.start(loop)
        try:
            held = [bytearray(300) for _ in range(300_000)]  # ~100 MB alive at the check
            await asyncio.sleep(0.5)
            trims_while_grown = g.trims
            del held
            await asyncio.sleep(0.5)
            return trims_while_grown, g.trims
        finally:
            g.stop()

    during, after = asyncio.run(scenario())
    assert rss_bytes() > 0
    assert during >= 1  # growth over 10 % since start: collected and trimmed
    assert after >= during
