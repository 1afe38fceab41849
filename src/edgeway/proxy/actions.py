"""What the sans-IO proxy core asks its driver to do, as small immutable records.

The core (:class:`~edgeway.proxy.core.ProxyCore`) returns lists of these from every
call; the driver (:mod:`edgeway.proxy.driver`) carries them out and reports back
through the core's event methods (``resolved``, ``connected``, ``media_ready``,
``flow_closed``). DESIGN.md §8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sip.message import Request, Response
from ..sip.sdes import CryptoAttribute
from ..sip.target import Flow, Hop
from ..sip.uri import Uri

__all__ = ["Send", "Connect", "Resolve", "AllocateMedia", "MediaRemote", "MediaCrypto", "ReleaseMedia", "Event", "Action"]


@dataclass(frozen=True, slots=True)
class Send:
    """Serialise ``message`` and send it on ``flow`` (for UDP: from ``flow.local`` to
    ``flow.remote``; for TCP/TLS: on connection ``flow.conn_id``). ``log_call_id``: the
    Call-ID the ``sip message`` event carries when it differs from the message's own
    (a Call-ID hidden toward the outside is logged under the call's real one)."""

    flow: Flow
    message: Request | Response
    log_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a TCP/TLS connection to ``hop`` and report the result with
    ``core.connected(connect_id, flow_or_None, cause, now)``. The edge's driver refuses
    any hop whose ``origin`` is not one of its own DNS or neighbour zones."""

    connect_id: int
    hop: Hop


@dataclass(frozen=True, slots=True)
class Resolve:
    """Look ``uri`` up by RFC 3263 for ``zone`` (``default_transport`` when the URI and
    DNS say nothing) and report ``core.resolved(query_id, hops, now)``."""

    query_id: int
    uri: Uri
    zone: str
    default_transport: str


@dataclass(frozen=True, slots=True)
class AllocateMedia:
    """Open relay port pairs for call ``call_key``: for each ``m=`` index in ``streams``
    one pair on side a and one on side b (``latch_a``/``latch_b``: that side waits for
    the far end's first packet). Report ``core.media_ready(alloc_id, {index: (a_rtp_port,
    b_rtp_port)} or None, cause, now)``. ``label`` names the sessions in events.
    ``mux_a``/``mux_b``: that side goes on the node's shared multiplexed traversal pair
    (the edge toward the core, seed 002 §7.2) instead of a pair of its own; its port is
    then the mux pair's, the same for every call."""

    alloc_id: int
    call_key: int
    streams: tuple[int, ...]
    latch_a: bool
    latch_b: bool
    label: str
    mux_a: bool = False
    mux_b: bool = False


@dataclass(frozen=True, slots=True)
class MediaRemote:
    """The far end of ``side`` ("a"/"b") of stream ``index`` of call ``call_key`` is
    ``ip``:``rtp_port`` (RTCP at ``rtcp_port``, default ``rtp_port + 1``); ``probe``: send
    latch probes toward it (the core toward the edge)."""

    call_key: int
    index: int
    side: str
    ip: str
    rtp_port: int
    rtcp_port: int | None
    probe: bool


@dataclass(frozen=True, slots=True)
class MediaCrypto:
    """Key the SRTP side ``side`` of stream ``index``: packets arriving there are
    decrypted with ``inbound``, packets leaving there encrypted with ``outbound``."""

    call_key: int
    index: int
    side: str
    inbound: CryptoAttribute
    outbound: CryptoAttribute


@dataclass(frozen=True, slots=True)
class ReleaseMedia:
    """Close every relay session of call ``call_key`` (``reason``: bye, cancel,
    final-response, failed, shutdown); the driver emits ``media closed`` per session."""

    call_key: int
    call_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Event:
    """Emit event ``name`` with ``fields`` (dict) to the node's event log."""

    name: str
    fields: dict[str, Any]


Action = Send | Connect | Resolve | AllocateMedia | MediaRemote | MediaCrypto | ReleaseMedia | Event
