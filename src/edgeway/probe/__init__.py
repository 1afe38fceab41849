"""Media node discovery, client side (seed 004, "Media Node Discovery" and "Media Connectivity").

A client sends STUN Binding requests (RFC 8489) to each media node over UDP (port 5004),
TCP (5004) and TLS (443), measures the round-trip time of several samples, and picks the node
and transport for media: UDP first, then TCP, then TLS, then a tunnel through an HTTP proxy
(CONNECT, RFC 9110 §9.3.6, with Basic authentication, RFC 7617). The result is cached for
2 hours, keyed by the local address (seed 004: "The probing data cache expiry is set to 2 hours";
the probe is repeated "when the app ... changes its network connection"). A chosen flow is kept
alive at least every 30 s (seed 004: "Webex Teams requires at least a 30-second timeout").

Sans-IO modules (no sockets, no clock reads; time is passed in): :mod:`.stun` (requests,
transactions, stream framing), :mod:`.choice` (results and the choice rules), :mod:`.cache`,
:mod:`.keepalive`. The asyncio adapter is :mod:`.client`.
"""
