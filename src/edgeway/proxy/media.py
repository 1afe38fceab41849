"""Media anchoring for proxied calls: SDP rewriting plus relay sessions per call.

Side *A* is the caller's side of the initial INVITE, side *B* the callee's. Every
SDP body passing the node is rewritten so that the party receiving it sees the
node's relay address for that party's side (``c=``, ``o=``, ``m=`` ports,
``a=rtcp``); the address inside the original SDP becomes the remote of the side it
came from. A message's direction is known from its From tag: requests from A and
responses to B's requests travel toward B.

Traversal rule (DESIGN.md §1, issue 2 item 7): on the edge the side facing a
traversal zone is *latch-only* (it never sends toward the core before the core's
first packet); on the core the side facing a traversal zone sends latch probes as
soon as the edge's address is known, so the inside firewall needs no inbound hole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.models import NodeConfig
from ..diag.events import EventLog
from ..media.ports import PortAllocator, PortsExhausted
from ..media.relay import MediaRelay, RelaySession
from ..media.srtp import UNENCRYPTED_SRTCP_SUPPORTED, SrtpContext, SrtpError
from ..sip import sdes
from ..sip import sdp as sdpmod
from ..sip.message import Request, Response
from ..sip.sdes import CryptoAttribute, SdesError

__all__ = ["MediaAnchor", "CallMedia"]

#: Seconds between latch probes the core sends toward the edge, and how many.
PROBE_INTERVAL_S = 0.5
PROBE_COUNT = 10


@dataclass
class StreamCrypto:
    """SDES interworking state of one ``m=`` line (RFC 4568 offer/answer).

    ``kind`` "encrypt": the offer was plain RTP and we offered SRTP (``offered``,
    our keys) toward ``srtp_side``; "decrypt": the offer from ``srtp_side`` was SRTP
    (``offered``, their keys) and we passed plain RTP on. ``answer`` keeps the SDES
    line we answered with (decrypt) so a repeated answer (183 then 200) is rewritten
    the same way without re-keying; ``done`` is set once the relay has its keys."""

    kind: str
    srtp_side: str
    offered: list[CryptoAttribute]
    answer: CryptoAttribute | None = None
    done: bool = False


@dataclass
class CallMedia:
    """Media state of one call: the A-side From tag, the zones of both sides, one
    relay session per ``m=`` line (None for a rejected stream) and the SDES
    interworking state per ``m=`` line (None when SDP passes as offered)."""

    call_id: str
    a_tag: str | None
    a_zone: str
    b_zone: str
    sessions: list[RelaySession | None] = field(default_factory=list)
    crypto: dict[int, StreamCrypto] = field(default_factory=dict)


def state_offerer(state: StreamCrypto) -> str:
    """The side ("a"/"b") that sent the offer a :class:`StreamCrypto` was made from."""
    return ("b" if state.srtp_side == "a" else "a") if state.kind == "encrypt" else state.srtp_side


class MediaAnchor:
    """Owns the relay sessions of every call on a node.

    ``cfg``: node configuration (media ip, advertised ip, port range);
    ``relay``: the :class:`~edgeway.media.relay.MediaRelay`; ``events``: event log.
    """

    def __init__(self, cfg: NodeConfig, relay: MediaRelay, events: EventLog):
        self.cfg = cfg
        self.relay = relay
        self.events = events
        m = cfg.media
        self.alloc = PortAllocator(m.ip or cfg.sip.listen_ip, m.port_min, m.port_max)
        self.address = m.advertise_ip or m.ip or cfg.sip.listen_ip
        self.calls: dict[str, CallMedia] = {}
        self.zone_types = {z.name: z.type for z in cfg.zones}
        self.zone_modes = {z.name: z.media_encryption for z in cfg.zones}

    def _is_traversal(self, zone: str) -> bool:
        return self.zone_types.get(zone) in ("traversal_server", "traversal_client")

    def on_initial_invite(self, req: Request, a_zone: str, b_zone: str) -> None:
        """Remember the call's sides when the initial INVITE is forwarded."""
        if req.call_id in self.calls:
            return
        self.calls[req.call_id] = CallMedia(req.call_id, req.from_tag, a_zone, b_zone)

    def _toward(self, call: CallMedia, msg: Request | Response) -> str:
        from_a = msg.from_tag == call.a_tag
        if isinstance(msg, Request):
            return "b" if from_a else "a"
        return "a" if from_a else "b"

    def rewrite_message(self, msg: Request | Response) -> None:
        """Rewrite the SDP body of ``msg`` in place (no-op without SDP or call state).

        Raises :class:`~edgeway.sip.sdp.SdpError` on malformed SDP and
        :class:`~edgeway.media.ports.PortsExhausted` when no relay ports are free.
        """
        if not msg.body or msg.content_type != "application/sdp":
            return
        call = self.calls.get(msg.call_id)
        if call is None:
            return
        toward = self._toward(call, msg)
        source = "a" if toward == "b" else "b"
        desc = sdpmod.SessionDescription.parse(msg.body)
        ports: list[int | None] = []
        for i, m in enumerate(desc.media):
            while len(call.sessions) <= i:
                call.sessions.append(None)
            if m.port == 0:
                ports.append(None)
                continue
            sess = call.sessions[i]
            if sess is None or sess.closed:
                try:
                    sess = self.relay.open_session(
                        self.alloc, self.alloc,
                        a_latch_only=self._edge_latch(call.a_zone),
                        b_latch_only=self._edge_latch(call.b_zone),
                        label=f"{call.call_id}/{i}",
                    )
                except PortsExhausted:
                    self.events.emit("media ports exhausted", call_id=call.call_id)
                    raise
                call.sessions[i] = sess
            conn = m.connection or desc.connection
            ip = conn.address if conn is not None else None
            rtcp = m.rtcp_attribute
            if ip:
                sess.set_remote(source, ip, m.port, rtcp[0] if rtcp else None)
                zone = call.a_zone if source == "a" else call.b_zone
                if self.cfg.role == "core" and self._is_traversal(zone) and ip not in ("0.0.0.0", "::"):
                    sess.start_probing(source, PROBE_INTERVAL_S, PROBE_COUNT)
            ports.append(sess.local(toward).rtp_port)
            try:
                self._interwork(call, i, m, sess, source, toward)
            except (SdesError, SrtpError) as exc:
                self.events.emit("srtp interworking failed", call_id=call.call_id, stream=i, error=str(exc))
        new = sdpmod.rewrite_for_relay(desc, self.address, ports)
        msg.body = new.to_bytes()

    # -- SRTP <-> RTP (the edge B2BUA's media part, issue 3 item 4) -------------------
    def mode(self, zone: str) -> str:
        """Media encryption mode of a zone: off / on / force / auto (built-ins: auto)."""
        return self.zone_modes.get(zone, "auto")

    def interworking(self, call: CallMedia) -> bool:
        """True when the two sides' zones have different encryption modes (the edge
        then acts as a B2BUA for the call)."""
        return self.mode(call.a_zone) != self.mode(call.b_zone)

    def _interwork(self, call: CallMedia, i: int, m, sess: RelaySession, source: str, toward: str) -> None:
        """Rewrite one ``m=`` line between SRTP (SDES) and RTP when the zone modes ask
        for it, and key the relay once the answer is known."""
        state = call.crypto.get(i)
        if state is not None and source != state_offerer(state):
            # The answer (or a repeated one: 183 then 200) from the side we offered to.
            if state.kind == "encrypt":
                # SRTP answer to our SRTP offer: key the relay, pass plain RTP on.
                ours, theirs = sdes.accept_answer(state.offered, sdes.crypto_attributes(m, strict=True))
                if not state.done:
                    sess.set_crypto(source, inbound=SrtpContext.from_crypto(theirs, "inbound"),
                                    outbound=SrtpContext.from_crypto(ours, "outbound"))
                    state.done = True
                    self.events.emit("srtp keyed", call_id=call.call_id, stream=i, side=source, suite=ours.suite, tag=ours.tag)
                sdes.to_avp(m)
            else:
                # Plain answer to an SRTP offer we decrypt: answer SDES ourselves.
                if state.answer is None:
                    chosen = sdes.choose_answer(state.offered, allow_unencrypted_srtcp=UNENCRYPTED_SRTCP_SUPPORTED)
                    if chosen is None:
                        raise SdesError("no usable a=crypto in the offer")
                    theirs, ours = chosen
                    state.answer = ours
                    sess.set_crypto(toward, inbound=SrtpContext.from_crypto(theirs, "inbound"),
                                    outbound=SrtpContext.from_crypto(ours, "outbound"))
                    state.done = True
                    self.events.emit("srtp keyed", call_id=call.call_id, stream=i, side=toward, suite=ours.suite, tag=ours.tag)
                sdes.to_savp(m, [state.answer])
            return
        # An offer (initial or re-INVITE).
        if m.proto not in ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"):
            return
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

    def _edge_latch(self, zone: str) -> bool:
        return self.cfg.role == "edge" and self._is_traversal(zone)

    def release_call(self, call_id: str, reason: str) -> None:
        """Close the call's relay sessions (BYE, final non-2xx, CANCEL) and forget it."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        for s in call.sessions:
            if s is not None and not s.closed:
                st = s.stats()
                self.events.emit("media closed", call_id=call_id, reason=reason, session=s.label, stats=st)
                s.close(reason)

    def close(self) -> None:
        for cid in list(self.calls):
            self.release_call(cid, "shutdown")
