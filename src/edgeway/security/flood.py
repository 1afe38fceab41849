"""Per-source flood control: a token bucket of new requests per source address, an
over-limit episode, and blocking of sources that stay over their limit.

Sans-IO: :meth:`SourceTable.check` takes an address and the time (seconds, any
monotonic clock) and returns a verdict; the caller answers or drops. The node applies
it to requests from sources it does not know (DefaultZone: no configured zone claims
them, no authenticated connection carries them), the way an SBC's per-source rate
limiting and Expressway's automated intrusion protection (seed 002, "intrusion
protection": block an address after repeated failures for a period) work. Issue 7
item 3.

Verdicts (:data:`OK`, :data:`LIMIT`, :data:`DROP`, :data:`BLOCK`, :data:`BLOCKED`):

* ``OK`` — a token was taken: process the request.
* ``LIMIT`` — the first request over the limit in an episode: answer it ``503`` with
  ``Retry-After`` (statelessly), once, so a well-behaved client backs off.
* ``DROP`` — a later request of the same episode: drop it silently on UDP (a response
  to a spoofable source is an amplifier), answer ``503`` on a connection.
* ``BLOCK`` — the episode has lasted ``block_after_s``: the source is blocked for
  ``block_s`` (report it once); drop.
* ``BLOCKED`` — the source is blocked: drop (close its connection).

Memory is bounded: at most ``max_sources`` entries; when full, entries whose bucket
has refilled (indistinguishable from a new source) go first, then the oldest that are
not blocked.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["SourceTable", "OK", "LIMIT", "DROP", "BLOCK", "BLOCKED"]

OK = "ok"
LIMIT = "limit"
DROP = "drop"
BLOCK = "block"
BLOCKED = "blocked"

#: Seconds without an over-limit request after which an episode ends.
EPISODE_QUIET_S = 1.0


@dataclass(slots=True)
class _Source:
    tokens: float
    at: float
    over_since: float = -1.0
    last_over: float = -1.0
    blocked_until: float = -1.0
    dropped: int = 0


class SourceTable:
    """Token buckets of new requests per source address.

    ``rate`` requests per second refill each source's bucket up to ``burst``
    requests; 0 turns the whole table off (every verdict OK). ``block_after_s``
    seconds of continuous over-limit traffic block the source for ``block_s``
    seconds (``block_after_s`` 0: never block). ``exempt``: CIDR strings whose
    sources are never limited. ``max_sources``: bound on tracked addresses.

    ``stats`` counts ``limited`` (LIMIT verdicts), ``dropped`` (DROP, BLOCK and
    BLOCKED) and ``blocks`` (sources blocked).
    """

    def __init__(self, rate: float, burst: float, *, block_after_s: float = 10.0, block_s: float = 60.0,
                 exempt: list[str] | tuple[str, ...] = (), max_sources: int = 100_000):
        self.rate = float(rate)
        self.burst = float(max(burst, 1.0))
        self.block_after_s = float(block_after_s)
        self.block_s = float(block_s)
        self.max_sources = max(int(max_sources), 16)
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self._exempt_cache: dict[str, bool] = {}
        self._sources: dict[str, _Source] = {}
        self.stats = {"limited": 0, "dropped": 0, "blocks": 0}

    def __len__(self) -> int:
        return len(self._sources)

    def exempt(self, ip: str) -> bool:
        """Whether ``ip`` is in an exempt network (cached per address, bounded)."""
        if not self._exempt:
            return False
        hit = self._exempt_cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
                hit = any(addr in n for n in self._exempt)
            except ValueError:
                hit = False
            if len(self._exempt_cache) >= self.max_sources:
                self._exempt_cache.clear()
            self._exempt_cache[ip] = hit
        return hit

    def check(self, ip: str, now: float) -> str:
        """Count one new request from ``ip`` at ``now`` (seconds); the verdict."""
        if self.rate <= 0:
            return OK
        s = self._sources.get(ip)
        if s is None:
            if self._exempt and self.exempt(ip):
                return OK
            if len(self._sources) >= self.max_sources:
                self._prune(now)
            self._sources[ip] = _Source(self.burst - 1.0, now)
            return OK
        if s.blocked_until >= 0.0:
            if now < s.blocked_until:
                s.dropped += 1
                self.stats["dropped"] += 1
                return BLOCKED
            s.blocked_until = s.over_since = s.last_over = -1.0
            s.tokens, s.at = self.burst, now
        tokens = s.tokens + (now - s.at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        s.at = now
        if tokens >= 1.0:
            s.tokens = tokens - 1.0
            if s.over_since >= 0.0 and now - s.last_over >= EPISODE_QUIET_S:
                s.over_since = s.last_over = -1.0
            return OK
        s.tokens = tokens
        s.last_over = now
        if s.over_since < 0.0:
            s.over_since = now
            self.stats["limited"] += 1
            return LIMIT
        s.dropped += 1
        self.stats["dropped"] += 1
        if self.block_after_s > 0 and now - s.over_since >= self.block_after_s:
            s.blocked_until = now + self.block_s
            self.stats["blocks"] += 1
            return BLOCK
        return DROP

    def over_limit(self, ip: str, now: float) -> bool:
        """Whether ``ip`` is in an over-limit episode or blocked (it gets no response
        retransmissions)."""
        s = self._sources.get(ip)
        if s is None:
            return False
        if s.blocked_until >= 0.0 and now < s.blocked_until:
            return True
        return s.over_since >= 0.0 and now - s.last_over < EPISODE_QUIET_S

    def blocked(self, ip: str, now: float) -> bool:
        """Whether ``ip`` is blocked at ``now``."""
        s = self._sources.get(ip)
        return s is not None and s.blocked_until >= 0.0 and now < s.blocked_until

    def blocked_sources(self, now: float) -> dict[str, float]:
        """Blocked address → seconds of blocking left (for status reports)."""
        return {ip: s.blocked_until - now for ip, s in self._sources.items() if s.blocked_until > now}

    def _prune(self, now: float) -> None:
        """Make room: drop sources whose bucket has refilled and that are not blocked;
        if that frees less than a tenth of the table, drop the oldest entries too."""
        rate, burst = self.rate, self.burst
        idle = [ip for ip, s in self._sources.items()
                if s.blocked_until < now and s.tokens + (now - s.at) * rate >= burst]
        for ip in idle:
            del self._sources[ip]
        want = self.max_sources // 10 - len(idle)
        if want > 0:
            oldest = [ip for ip, s in self._sources.items() if s.blocked_until < now]
            for ip in oldest[:want]:
                del self._sources[ip]
            if len(self._sources) >= self.max_sources:  # all blocked: the oldest of those
                for ip in list(self._sources)[:want]:
                    del self._sources[ip]
