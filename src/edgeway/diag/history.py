"""Search history and call history (seed 002 §1.7: the last 500 of each per node; seed 003
§12.3 "Search History"; issue 11 item 2). Pure: fed the node's events as they are emitted
(:meth:`History.record`, before any log rate cap), read through the control socket
(``edgeway history searches|calls``).

A search entry is one ``search completed`` event: the source zone, the request's method,
the alias after transforms, every search rule considered and its result in the seed's
wording (matched / did not match / ignored due to source filtering), the target zone and
rule, found or not, and the final reason. A call entry gathers the events of one Call-ID:
source zone and address, the aliases, the transport, each target zone tried, the outcome
(connected / rejected with status and reason / cleared), the end reason and the media
counters and encryption per leg from ``media closed``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Any

__all__ = ["History", "HISTORY_SIZE", "EVENTS"]

#: Entries kept per history (seed 002 §1.7).
HISTORY_SIZE = 500
#: The events a history is built from.
EVENTS = frozenset({"search completed", "call attempted", "call connected", "call rejected", "call disconnected",
                    "call cleared", "media closed"})


class History:
    """The last ``size`` searches and calls of a node."""

    def __init__(self, size: int = HISTORY_SIZE):
        self.size = size
        self.searches: deque[dict] = deque(maxlen=size)
        self.calls: OrderedDict[str, dict] = OrderedDict()

    def record(self, event: str, fields: dict[str, Any], ts: float | None = None) -> None:
        """Take one event (name and fields as emitted); others are ignored."""
        if event not in EVENTS:
            return
        ts = time.time() if ts is None else ts
        cid = str(fields.get("call_id", ""))
        if event == "search completed":
            self.searches.append({
                "time": ts, "call_id": cid, "method": fields.get("method"), "src_zone": fields.get("src_zone"),
                "alias": fields.get("alias"), "rule": fields.get("rule"), "zone": fields.get("zone"),
                "found": bool(fields.get("found")), "reason": fields.get("reason") or ("found" if fields.get("found") else None),
                "detail": fields.get("detail"), "rules": list(fields.get("log") or []),
                "policy": list(fields.get("cpl") or []),
            })
            return
        call = self.calls.get(cid)
        if call is None:
            if event != "call attempted":
                return  # not a call this history saw begin (or already evicted)
            call = {"call_id": cid, "start": ts, "src_zone": fields.get("src_zone"), "src": fields.get("src"),
                    "src_alias": fields.get("src_alias"), "dst_alias": fields.get("dst_alias"),
                    "transport": fields.get("transport"), "state": "attempted", "zones": [], "end": None,
                    "end_reason": None, "status": None, "media": None}
            self.calls[cid] = call
            while len(self.calls) > self.size:
                self.calls.popitem(last=False)
            return
        if event == "call connected":
            call["state"] = "connected"
            call["zones"].append(fields.get("zone"))
        elif event == "call rejected":
            call.update(state="rejected", end=ts, status=fields.get("status"), end_reason=fields.get("reason"))
        elif event in ("call disconnected", "call cleared"):
            call.update(state="ended", end=ts, end_reason=fields.get("reason"))
        elif event == "media closed":
            st = fields.get("stats") or {}
            call["media"] = {k: st.get(k) for k in ("a_to_b", "b_to_a", "a", "b") if k in st}
            if call["end"] is None:
                call["end"] = ts

    def search_list(self, limit: int = HISTORY_SIZE) -> list[dict]:
        """The newest ``limit`` searches, newest first."""
        return list(reversed(self.searches))[:max(0, limit)]

    def call_list(self, limit: int = HISTORY_SIZE) -> list[dict]:
        """The newest ``limit`` calls, newest first."""
        return list(reversed(self.calls.values()))[:max(0, limit)]
