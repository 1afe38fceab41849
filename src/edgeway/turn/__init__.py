"""STUN (RFC 8489) and TURN (RFC 8656) server of the edge (issue 10 items 2-3).

- :mod:`.stun`: STUN message helpers over ``aioice.stun`` and the sans-IO Binding
  responder (RFC 3489 classic clients included), long-term and REST credentials;
- :mod:`.allocations`: the sans-IO TURN core (allocations, permissions, channels);
- :mod:`.server`: thin asyncio adapters (UDP, TCP, TLS) and :func:`.server.start_from_config`.
"""
