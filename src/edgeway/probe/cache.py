"""The probe result cache, sans-IO: 2 hours, keyed by the local address.

Seed 004 ("Media Node Discovery"): "Probing is not part of the meeting setup, but is performed
when the Webex Teams app registers to the cloud and changes its network connection. The probing
data cache expiry is set to 2 hours."

An entry is stored per *probe set* (the nodes with their ports and the proxy, see
:func:`probe_set_key`) and remembers the local address the probe ran from and the wall-clock
time (seconds since the epoch; passed in, never read here). :meth:`ProbeCache.lookup` answers a
hit, or a miss with the reason: no entry, expired, or the local address changed (a new network:
probe again). The file form is JSON (:meth:`ProbeCache.to_json` / :meth:`ProbeCache.from_json`);
reading and writing the file is the caller's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["CACHE_LIFETIME", "CacheEntry", "ProbeCache", "probe_set_key"]

CACHE_LIFETIME = 2 * 3600.0
"""Seconds a probe result stays valid (seed 004: "cache expiry is set to 2 hours")."""
MAX_ENTRIES = 64
"""Probe sets kept in one cache file; the oldest go first (bounds the file)."""


def probe_set_key(nodes: list[tuple[str, int, int, int]], proxy: str | None, proxy_only: bool = False) -> str:
    """A stable key for what was probed: ``nodes`` as ``(host, udp, tcp, tls port)`` in the
    given order, and the proxy address without credentials (``host:port``)."""
    parts = [f"{h}/{u}/{t}/{s}" for h, u, t, s in nodes]
    return " ".join(parts) + (f" via {proxy}" if proxy else "") + (" proxy-only" if proxy_only else "")


@dataclass(slots=True)
class CacheEntry:
    """``results``: the probe results as dicts (:meth:`TransportResult.to_dict`)."""

    key: str
    local_address: str
    probed_at: float
    results: list[dict]

    def age(self, now: float) -> float:
        return now - self.probed_at


class ProbeCache:
    """Probe results by probe-set key, each valid :data:`CACHE_LIFETIME` seconds from the same
    local address."""

    def __init__(self, lifetime: float = CACHE_LIFETIME) -> None:
        self.lifetime = lifetime
        self.entries: dict[str, CacheEntry] = {}

    def lookup(self, key: str, local_address: str, now: float) -> tuple[CacheEntry | None, str]:
        """``(entry, why)``: the entry on a hit, else ``None`` and why it missed."""
        e = self.entries.get(key)
        if e is None:
            return None, "no cached probe for these nodes"
        if e.local_address != local_address:
            return None, f"local address changed from {e.local_address} to {local_address}"
        age = e.age(now)
        if age < 0:
            return None, "cached probe is from the future (clock changed)"
        if age >= self.lifetime:
            return None, f"cached probe expired ({age / 60:.0f} min old, lifetime {self.lifetime / 60:.0f} min)"
        return e, f"cached probe from {age / 60:.1f} min ago (valid {(self.lifetime - age) / 60:.0f} min more)"

    def store(self, key: str, local_address: str, now: float, results: list[dict]) -> CacheEntry:
        e = CacheEntry(key, local_address, now, results)
        self.entries.pop(key, None)
        self.entries[key] = e
        while len(self.entries) > MAX_ENTRIES:
            oldest = min(self.entries.values(), key=lambda x: x.probed_at)
            del self.entries[oldest.key]
        return e

    def to_json(self) -> str:
        return json.dumps({"version": 1, "entries": [
            {"key": e.key, "local_address": e.local_address, "probed_at": e.probed_at, "results": e.results}
            for e in self.entries.values()]}, indent=1)

    @classmethod
    def from_json(cls, text: str, lifetime: float = CACHE_LIFETIME) -> "ProbeCache":
        """Parse a cache file; an unreadable or foreign file gives an empty cache (the cache is
        only an optimisation, a bad file must not stop a probe)."""
        cache = cls(lifetime)
        try:
            data = json.loads(text)
            if data.get("version") != 1:
                return cache
            for d in data["entries"]:
                cache.entries[d["key"]] = CacheEntry(str(d["key"]), str(d["local_address"]),
                                                     float(d["probed_at"]), list(d["results"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(lifetime)
        return cache
