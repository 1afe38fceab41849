"""The lab's user agent: :class:`edgeway.ua.UserAgent` under its lab name.

The lab's phones (bob outside, alice inside, the cloud stand-in) are
:class:`~edgeway.ua.agent.UserAgent` instances; this module keeps the names the lab
and its tests import.
"""

from ..ua.agent import UserAgent as LabUserAgent
from ..ua.call import CallResult, CallStats, MediaCounters
from ..ua.media import build_rtp_packet, parse_rtp_header
from ..ua.offer import SdpInfo, build_sdp, parse_sdp

__all__ = ["LabUserAgent", "CallResult", "CallStats", "MediaCounters", "build_rtp_packet", "parse_rtp_header",
           "build_sdp", "parse_sdp", "SdpInfo"]
