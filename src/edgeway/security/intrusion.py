"""Automated intrusion protection: ban a source address after repeated failures of one
category (seed 002 §10.9, "Expressway Automated Intrusion Protection", which is
Fail2ban: more than *trigger level* failures from one address within the detection
window block that address for the ban duration; default more than 5 → 10 minutes).

Sans-IO: :meth:`IntrusionProtection.failure` records one failure of a category from
an address at a time (seconds, any monotonic clock) and says whether it blocked the
address; :meth:`IntrusionProtection.blocked` is what the transport asks at accept time
(before any TLS work) and before parsing a datagram. Categories (issue 9 item 8):

* ``http_proxy_authorization_failure`` — bad or expired credentials/token (on);
* ``http_proxy_protocol_violation`` — a request that is not valid HTTP or not a
  valid proxied target (on);
* ``http_proxy_resource_access_failure`` — a request the allow list refuses or that
  the inside answers 404; off by default: the seed warns it bans real clients;
* ``sip_authentication_failure`` — a SIP request that failed digest authentication (on);
* ``traversal_authentication_failure`` — a traversal client that failed the edge's
  credential check (on).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

__all__ = ["IntrusionProtection", "Category", "CATEGORIES", "DEFAULT_CATEGORIES"]

#: Category names (issue 9 item 8; seed 002 §10.9 UI names with underscores).
CATEGORIES = (
    "http_proxy_authorization_failure",
    "http_proxy_protocol_violation",
    "http_proxy_resource_access_failure",
    "sip_authentication_failure",
    "traversal_authentication_failure",
)


@dataclass(frozen=True)
class Category:
    """One category's rule: ``enabled``; more than ``trigger_level`` failures within
    ``detection_window_s`` seconds block the address for ``ban_s`` seconds."""

    enabled: bool = True
    trigger_level: int = 5
    detection_window_s: float = 600.0
    ban_s: float = 600.0


#: Seed 002 §10.9 defaults: all on with trigger level 5 and a 10-minute ban, except
#: resource access failure (bans clients after repeated 404s: "Client HTTPS Requests are
#: Dropped").
DEFAULT_CATEGORIES = {name: Category(enabled=name != "http_proxy_resource_access_failure") for name in CATEGORIES}


@dataclass
class _Ban:
    category: str
    until: float
    failures: int


@dataclass
class _Record:
    times: deque = field(default_factory=deque)


class IntrusionProtection:
    """Failure counts per (category, address) and the blocked addresses.

    ``categories``: name → :class:`Category` (missing names use the defaults);
    ``exempt``: CIDR strings never blocked. ``max_tracked`` bounds the failure records
    (oldest dropped first). ``stats`` counts ``failures``, ``blocks`` and ``refused``
    (checks answered "blocked").
    """

    def __init__(self, categories: dict[str, Category] | None = None, exempt: list[str] | tuple[str, ...] = (),
                 max_tracked: int = 100_000):
        cats = dict(DEFAULT_CATEGORIES)
        for name, cat in (categories or {}).items():
            if name not in cats:
                raise ValueError(f"unknown intrusion protection category {name!r} (one of {', '.join(CATEGORIES)})")
            cats[name] = cat
        self.categories = cats
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self.max_tracked = max(16, int(max_tracked))
        self._records: dict[tuple[str, str], _Record] = {}
        self._bans: dict[str, _Ban] = {}
        self.stats = {"failures": 0, "blocks": 0, "refused": 0}

    def exempt(self, ip: str) -> bool:
        """Whether ``ip`` is in an exempt network."""
        if not self._exempt:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self._exempt)

    def failure(self, category: str, ip: str, now: float) -> bool:
        """Record one failure of ``category`` from ``ip`` at ``now`` (seconds); True when
        this failure blocked the address. Raises ValueError for an unknown category."""
        cat = self.categories.get(category)
        if cat is None:
            raise ValueError(f"unknown intrusion protection category {category!r}")
        self.stats["failures"] += 1
        if not cat.enabled or self.exempt(ip) or self.blocked(ip, now):
            return False
        key = (category, ip)
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= self.max_tracked:
                self._records.pop(next(iter(self._records)))
            rec = self._records[key] = _Record()
        times = rec.times
        times.append(now)
        while times and times[0] <= now - cat.detection_window_s:
            times.popleft()
        if len(times) <= cat.trigger_level:
            return False
        self._bans[ip] = _Ban(category, now + cat.ban_s, len(times))
        del self._records[key]
        self.stats["blocks"] += 1
        return True

    def blocked(self, ip: str, now: float) -> bool:
        """Whether ``ip`` is blocked at ``now`` (an expired ban is forgotten here)."""
        ban = self._bans.get(ip)
        if ban is None:
            return False
        if now < ban.until:
            return True
        del self._bans[ip]
        return False

    def refuse(self, ip: str, now: float) -> bool:
        """:meth:`blocked`, counted in ``stats["refused"]`` when True (the accept-time
        and pre-parse check)."""
        if self._bans and self.blocked(ip, now):
            self.stats["refused"] += 1
            return True
        return False

    def blocked_list(self, now: float) -> list[dict]:
        """The blocked addresses: ``{"address", "category", "seconds_left", "failures"}``
        sorted by address."""
        return [{"address": ip, "category": b.category, "seconds_left": round(b.until - now, 1), "failures": b.failures}
                for ip, b in sorted(self._bans.items()) if b.until > now]

    def unblock(self, ip: str) -> bool:
        """Lift the ban on ``ip`` and forget its failures; True when it was blocked."""
        for key in [k for k in self._records if k[1] == ip]:
            del self._records[key]
        return self._bans.pop(ip, None) is not None
