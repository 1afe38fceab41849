"""Keepalive of a chosen media flow, sans-IO.

Seed 004: "The Webex Teams app or endpoint expects the firewall's NAT table entry to expire after
some time of inactivity and sends keepalives to maintain the connection ... Webex Teams requires
at least a 30-second timeout"; "The pinhole created in the firewall for this connection is
usually closed after 30 seconds if no packets are sent from inside". So a flow must carry an
outgoing packet at least every 30 s; any outgoing packet counts (media refreshes the pinhole as
well as a keepalive does), so a keepalive goes out only after ``interval`` seconds of silence.

The keepalive is a STUN Binding indication (RFC 8489 §6.3.2, no answer; as ICE does, RFC 8445
§11) or, with ``request=True``, a Binding request whose answer also proves the node is alive.
Time is passed in (seconds, monotonic).
"""

from __future__ import annotations

from .stun import binding_indication, binding_request

__all__ = ["DEFAULT_INTERVAL", "MAX_INTERVAL", "Keepalive"]

MAX_INTERVAL = 30.0
"""Seconds: the longest silence allowed on a flow (seed 004: pinholes close after 30 s)."""
DEFAULT_INTERVAL = 15.0
"""Seconds of silence before a keepalive: half of :data:`MAX_INTERVAL`, so one lost keepalive
over UDP still leaves the pinhole open (RFC 5626 §4.4.1 and ICE use 15 s for the same reason)."""


class Keepalive:
    """Decide when a flow needs a keepalive.

    ``note_sent(now)`` after every packet the flow sends; at :meth:`next_deadline` call
    :meth:`poll`, which returns the keepalive bytes to send (and counts them as sent) or
    ``None`` when the flow sent something recently.
    """

    def __init__(self, now: float, interval: float = DEFAULT_INTERVAL, *, request: bool = False) -> None:
        if not 0 < interval <= MAX_INTERVAL:
            raise ValueError(f"keepalive interval must be in (0, {MAX_INTERVAL:g}] s (seed 004), got {interval}")
        self.interval = interval
        self.request = request
        self.last_sent = now
        self.sent = 0

    def note_sent(self, now: float) -> None:
        self.last_sent = max(self.last_sent, now)

    def next_deadline(self) -> float:
        return self.last_sent + self.interval

    def poll(self, now: float) -> bytes | None:
        if now < self.next_deadline():
            return None
        self.last_sent = now
        self.sent += 1
        return bytes(binding_request()) if self.request else binding_indication()
