"""edgeway.mra: mobile and remote access (seed 002; issue 9).

- :mod:`edgeway.mra.tunnel`: the core-initiated HTTP/2 tunnel, sans-IO.
- :mod:`edgeway.mra.edge`: the edge's HTTPS listener and tunnel listener (asyncio).
- :mod:`edgeway.mra.core`: the core's tunnel connections and request handler (asyncio).
- :mod:`edgeway.mra.edge_config`: ``get_edge_config`` (pure).
- :mod:`edgeway.mra.gate`: the one place the core asks the HTTP allow list.

Imports ``config``, ``diag`` and ``security`` only; the node imports it.
"""
