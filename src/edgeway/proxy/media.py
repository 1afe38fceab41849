"""Media anchoring decisions for proxied calls (sans-IO): SDP rewriting and what the
relay must do, as data.

Side *a* is the caller's side of the initial INVITE, side *b* the callee's. Every SDP
body passing the node is rewritten so that the party receiving it sees the node's relay
address for that party's side (``c=``, ``o=``, ``m=`` ports, ``a=rtcp``); the address
inside the original SDP becomes the remote of the side it came from. A message's
direction is known from its From tag: requests from a and responses to b's requests
travel toward b.

Nothing here opens a socket. The planner says which ``m=`` lines still need a relay port
pair on each side (:meth:`MediaPlanner.missing`); the proxy core asks the driver for
them with an :class:`~edgeway.proxy.actions.AllocateMedia` action and records the
answer with :meth:`MediaPlanner.allocated`; :meth:`MediaPlanner.rewrite` then rewrites
the body and returns the relay instructions (:class:`~edgeway.proxy.actions.MediaRemote`,
:class:`~edgeway.proxy.actions.MediaCrypto`) for the driver to apply.

Traversal rule (DESIGN.md §1): on the edge the side facing a traversal zone is
*latch-only* (it never sends toward the core before the core's first packet); on the
core the side facing a traversal zone sends latch probes as soon as the edge's address
is known, so the inside firewall needs no inbound hole. With ``media.traversal_mux``
(seed 002 §7.2) the edge's side facing a traversal zone is on one shared RTP/RTCP pair
for every call (:meth:`MediaPlanner.mux`), demultiplexed by the core's relay address
that the core's SDP names; the core needs no change (each of its calls sends from its
own port, so the 5-tuples differ).

SRTP ↔ RTP interworking (seed 003 §2.3, §8): when the zones' media encryption modes
differ the planner rewrites ``m=`` lines between RTP/SAVP with SDES (RFC 4568) and
RTP/AVP and tells the relay the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.models import NodeConfig
from ..sip import sdes
from ..sip import sdp as sdpmod
from ..sip.message import Request, Response
from ..sip.sdes import CryptoAttribute, SdesError
from .actions import Event, MediaCrypto, MediaRemote

__all__ = ["MediaPlanner", "CallMedia", "StreamCrypto", "PROBE_INTERVAL_S", "PROBE_COUNT"]

_RTP_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"})
_SAVP_PROTOS = frozenset({"RTP/SAVP", "RTP/SAVPF"})

#: Seconds between latch probes the core sends toward the edge, and how many.
PROBE_INTERVAL_S = 0.5
PROBE_COUNT = 10


@dataclass
class StreamCrypto:
    """SDES interworking state of one ``m=`` line (RFC 4568 offer/answer).

    ``kind`` "encrypt": the offer was plain RTP and we offered SRTP (``offered``, our
    keys) toward ``srtp_side``; "decrypt": the offer from ``srtp_side`` was SRTP
    (``offered``, their keys) and we passed plain RTP on. ``answer`` keeps the SDES line
    we answered with (decrypt) so a repeated answer (183 then 200) is rewritten the same
    way without re-keying; ``done`` is set once the relay has its keys."""

    kind: str
    srtp_side: str
    offered: list[CryptoAttribute]
    answer: CryptoAttribute | None = None
    done: bool = False


def state_offerer(state: StreamCrypto) -> str:
    """The side ("a"/"b") that sent the offer a :class:`StreamCrypto` was made from."""
    return ("b" if state.srtp_side == "a" else "a") if state.kind == "encrypt" else state.srtp_side


@dataclass
class CallMedia:
    """Media state of one call: ``key`` (int, the relay's name for the call), the a-side
    From tag, the zones of both sides, the local RTP port of each side per ``m=`` line
    (``ports[i] = (a_port, b_port)``, None while not allocated) and the SDES
    interworking state per ``m=`` line."""

    key: int
    call_id: str
    a_tag: str | None
    a_zone: str
    b_zone: str
    ports: list[tuple[int, int] | None] = field(default_factory=list)
    crypto: dict[int, StreamCrypto] = field(default_factory=dict)
    released: bool = False


class MediaPlanner:
    """Media anchoring rules of one node.

    ``cfg``: node configuration (media address, zones, role); ``unencrypted_srtcp``:
    whether the SRTP library can do UNENCRYPTED_SRTCP (an answer may choose such a
    crypto line only then).
    """

    def __init__(self, cfg: NodeConfig, *, unencrypted_srtcp: bool = True):
        self.cfg = cfg
        m = cfg.media
        self.address = m.advertise_ip or m.ip or cfg.sip.advertise_ip or cfg.sip.listen_ip
        self.zone_types = {z.name: z.type for z in cfg.zones}
        self.zone_modes = {z.name: z.media_encryption for z in cfg.zones}
        self.role = cfg.role
        self.traversal_mux = cfg.role == "edge" and m.traversal_mux
        self.unencrypted_srtcp = unencrypted_srtcp

    # -- sides --------------------------------------------------------------------
    def is_traversal(self, zone: str) -> bool:
        return self.zone_types.get(zone) in ("traversal_server", "traversal_client")

    def latch_only(self, zone: str) -> bool:
        """True when the relay side facing ``zone`` must wait for the far end's first
        packet (the edge's side facing a traversal zone)."""
        return self.role == "edge" and self.is_traversal(zone)

    def mux(self, zone: str) -> bool:
        """True when the relay side facing ``zone`` goes on the shared multiplexed
        traversal pair (seed 002 §7.2): the edge's side facing a traversal zone, with
        ``media.traversal_mux`` on. Its SDP port is then the mux pair's for every
        call, so the core sends all traversal media to one pair; nothing else in the
        rewriting changes."""
        return self.traversal_mux and self.is_traversal(zone)

    def mode(self, zone: str) -> str:
        """Media encryption mode of a zone: off / on / force / auto (built-ins: auto)."""
        return self.zone_modes.get(zone, "auto")

    def interworking(self, call: CallMedia) -> bool:
        """True when the two sides' zones have different encryption modes (the node then
        acts as a B2BUA for the call)."""
        return self.mode(call.a_zone) != self.mode(call.b_zone)

    @staticmethod
    def toward(call: CallMedia, msg: Request | Response) -> str:
        """The side ("a"/"b") a message travels toward."""
        from_a = msg.from_tag == call.a_tag
        if isinstance(msg, Request):
            return "b" if from_a else "a"
        return "a" if from_a else "b"

    # -- offer/answer ---------------------------------------------------------------
    def parse(self, call: CallMedia, msg: Request | Response) -> sdpmod.SessionDescription | sdpmod.RelayScan | None:
        """The SDP body of ``msg`` read for anchoring, or None when it has none: a
        :class:`~edgeway.sip.sdp.RelayScan` (the fast path) when the body is plain and no
        SRTP interworking can apply to it, else a full
        :class:`~edgeway.sip.sdp.SessionDescription`. Raises SdpError."""
        if not msg.body or msg.content_type != "application/sdp":
            return None
        scan = sdpmod.scan_for_relay(msg.body)
        if scan is not None and self._plain(call, msg, scan):
            return scan
        return sdpmod.SessionDescription.parse(msg.body)

    def _plain(self, call: CallMedia, msg: Request | Response, scan: sdpmod.RelayScan) -> bool:
        """True when :meth:`_interwork` would leave every stream of ``scan`` alone."""
        if call.crypto:
            return False
        want = self.mode(call.a_zone if self.toward(call, msg) == "a" else call.b_zone)
        if want == "auto":
            return True
        for port, proto, _addr, _rtcp in scan.media:
            if port == 0 or proto not in _RTP_PROTOS:
                continue
            savp = proto in _SAVP_PROTOS
            if (not savp and want in ("on", "force")) or (savp and want == "off"):
                return False
        return True

    @staticmethod
    def _ports(desc: sdpmod.SessionDescription | sdpmod.RelayScan) -> list[int]:
        if isinstance(desc, sdpmod.RelayScan):
            return [m[0] for m in desc.media]
        return [m.port for m in desc.media]

    @classmethod
    def missing(cls, call: CallMedia, desc: sdpmod.SessionDescription | sdpmod.RelayScan) -> list[int]:
        """Indexes of the ``m=`` lines that need a relay port pair on each side."""
        have = call.ports
        return [i for i, port in enumerate(cls._ports(desc)) if port != 0 and (i >= len(have) or have[i] is None)]

    @staticmethod
    def allocated(call: CallMedia, ports: dict[int, tuple[int, int]]) -> None:
        """Record the local RTP ports ``{index: (a_port, b_port)}`` the relay opened."""
        for i, pair in ports.items():
            while len(call.ports) <= i:
                call.ports.append(None)
            call.ports[i] = pair

    def rewrite(self, call: CallMedia, msg: Request | Response, desc: sdpmod.SessionDescription | sdpmod.RelayScan) -> list:
        """Rewrite the body of ``msg`` (in place) toward its receiver and return the
        relay actions (remote addresses, latch probes, SRTP keys) and events.

        Every active ``m=`` line must have its ports (see :meth:`missing`)."""
        toward = self.toward(call, msg)
        source = "a" if toward == "b" else "b"
        src_zone = call.a_zone if source == "a" else call.b_zone
        probe = self.role == "core" and self.is_traversal(src_zone)
        actions: list = []
        if isinstance(desc, sdpmod.RelayScan):
            ports_out: list[int | None] = []
            for i, (port, _proto, ip, rtcp) in enumerate(desc.media):
                pair = call.ports[i] if i < len(call.ports) else None
                if port == 0 or pair is None:
                    ports_out.append(None)
                    continue
                if ip:
                    actions.append(MediaRemote(call.key, i, source, ip, port, rtcp, probe and ip not in ("0.0.0.0", "::")))
                ports_out.append(pair[0] if toward == "a" else pair[1])
            msg.body = desc.rewrite(self.address, ports_out)
            return actions
        ports: list[int | None] = []
        for i, m in enumerate(desc.media):
            pair = call.ports[i] if i < len(call.ports) else None
            if m.port == 0 or pair is None:
                ports.append(None)
                continue
            conn = m.connection or desc.connection
            ip = conn.address if conn is not None else None
            if ip:
                rtcp = m.rtcp_attribute
                actions.append(MediaRemote(call.key, i, source, ip, m.port, rtcp[0] if rtcp else None,
                                           probe and ip not in ("0.0.0.0", "::")))
            ports.append(pair[0] if toward == "a" else pair[1])
            try:
                actions += self._interwork(call, i, m, source, toward)
            except SdesError as exc:
                actions.append(Event("srtp interworking failed", {"call_id": call.call_id, "stream": i, "error": str(exc)}))
        msg.body = sdpmod.rewrite_for_relay(desc, self.address, ports).to_bytes()
        return actions

    def _interwork(self, call: CallMedia, i: int, m, source: str, toward: str) -> list:
        """Rewrite one ``m=`` line between SRTP (SDES) and RTP when the zone modes ask for
        it; key the relay once the answer is known."""
        state = call.crypto.get(i)
        if state is not None and source != state_offerer(state):
            # The answer (or a repeated one: 183 then 200) from the side we offered to.
            if state.kind == "encrypt":
                ours, theirs = sdes.accept_answer(state.offered, sdes.crypto_attributes(m, strict=True))
                sdes.to_avp(m)
                if state.done:
                    return []
                state.done = True
                return [MediaCrypto(call.key, i, source, theirs, ours),
                        Event("srtp keyed", {"call_id": call.call_id, "stream": i, "side": source, "suite": ours.suite, "tag": ours.tag})]
            out: list = []
            if state.answer is None:
                chosen = sdes.choose_answer(state.offered, allow_unencrypted_srtcp=self.unencrypted_srtcp)
                if chosen is None:
                    raise SdesError("no usable a=crypto in the offer")
                theirs, ours = chosen
                state.answer = ours
                state.done = True
                out = [MediaCrypto(call.key, i, toward, theirs, ours),
                       Event("srtp keyed", {"call_id": call.call_id, "stream": i, "side": toward, "suite": ours.suite, "tag": ours.tag})]
            sdes.to_savp(m, [state.answer])
            return out
        # An offer (initial or re-INVITE).
        if m.proto not in ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"):
            return []
        want = self.mode(call.a_zone if toward == "a" else call.b_zone)
        srtp_in = sdes.is_savp(m)
        if not srtp_in and want in ("on", "force"):
            offered = sdes.make_offer()
            sdes.to_savp(m, offered)
            call.crypto[i] = StreamCrypto("encrypt", toward, offered)
        elif srtp_in and want == "off":
            offered = sdes.crypto_attributes(m)
            sdes.to_avp(m)
            call.crypto[i] = StreamCrypto("decrypt", source, offered)
        else:
            call.crypto.pop(i, None)
        return []
