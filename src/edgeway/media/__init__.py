"""edgeway.media: RTP/RTCP port allocation and the media relay (hot path).

See :mod:`edgeway.media.ports` (RFC 3550 §11 even/odd port pairs) and
:mod:`edgeway.media.relay` (symmetric-latching relay, RFC 4961), and
:mod:`edgeway.media.mux` (multiplexed traversal media: one shared port pair).
"""

from .mux import DemuxTable, MuxPair
from .ports import PortAllocator, PortPair, PortsExhausted
from .relay import LATCH_PROBE, Endpoint, MediaRelay, RelaySession

__all__ = [
    "LATCH_PROBE",
    "DemuxTable",
    "MuxPair",
    "Endpoint",
    "MediaRelay",
    "PortAllocator",
    "PortPair",
    "PortsExhausted",
    "RelaySession",
]
