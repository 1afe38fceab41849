"""A SIP user agent on the product's own stack (transactions, transport, SDP, SDES).

:class:`~edgeway.ua.agent.UserAgent` places and answers calls with RTP/SRTP media;
the lab's phones and ``edgeway call`` are instances of it. Modules: :mod:`.agent`
(the transaction user), :mod:`.call` (call results, dialog state), :mod:`.offer` (SDP
offer/answer), :mod:`.media` (RTP/RTCP endpoint).
"""

from .agent import UserAgent
from .call import CallResult, CallStats, MediaCounters

__all__ = ["UserAgent", "CallResult", "CallStats", "MediaCounters"]
